//! TheHive's account-change emails (since 5.2): the password was changed, the password was
//! reset, the email address was changed (told to the old and the new address).

use std::str::FromStr;

use lettre::message::Mailbox;
use lettre::Address;

use super::builtin::{EmailKind, EmailValue, EmailValues};
use super::email::OutgoingEmail;
use super::{NotifyError, NotifyService};
use crate::validation::{self, Violations};

/// Which account change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// The password was changed.
    PasswordChanged,
    /// The password was reset.
    PasswordReset,
    /// The email address was changed.
    EmailChanged,
}

impl NoticeKind {
    /// The built-in email of this notice.
    pub fn email(self) -> EmailKind {
        match self {
            NoticeKind::PasswordChanged => EmailKind::PasswordChanged,
            NoticeKind::PasswordReset => EmailKind::PasswordResetNotice,
            NoticeKind::EmailChanged => EmailKind::EmailChanged,
        }
    }
}

impl NotifyService {
    /// TheHive's account-change email to a directory user of `organisation`; an email
    /// change is told to `previous_email` too. The ids of the queued messages.
    pub async fn send_account_notice(
        &self,
        kind: Option<NoticeKind>,
        login: &str,
        organisation: &str,
        previous_email: &str,
    ) -> Result<Vec<String>, NotifyError> {
        let mut v = Violations::new();
        if kind.is_none() {
            v.add(
                "kind",
                "is required: PASSWORD_CHANGED, PASSWORD_RESET or EMAIL_CHANGED",
            );
        }
        let login = v
            .check("login", crate::directory::canonical_login(login))
            .unwrap_or_default();
        let login = login.as_str();
        let previous = match (kind, previous_email.is_empty()) {
            (Some(NoticeKind::EmailChanged), true) => {
                v.add("previous_email", "is required for EMAIL_CHANGED");
                None
            }
            (_, true) => None,
            (_, false) => v.check(
                "previous_email",
                Address::from_str(previous_email)
                    .map_err(|e| format!("is not an email address ({e})")),
            ),
        };
        v.into_result(()).map_err(NotifyError::Invalid)?;
        let kind = kind.expect("checked above");
        let found = self.users.user(login).await?;
        let user = crate::directory::member_of(found, login, organisation)?
            .ok_or_else(|| NotifyError::NoUser(login.to_string()))?;
        let address = user
            .address()
            .ok_or_else(|| NotifyError::NoUser(login.to_string()))?;
        let settings = self.configured().await?;
        let now = self.clock.now();
        let name = if user.name.is_empty() {
            &user.login
        } else {
            &user.name
        };
        let values: EmailValues = [
            ("name", EmailValue::from(name.as_str())),
            ("login", user.login.as_str().into()),
            ("organisation", organisation.into()),
            ("time", EmailValue::Time(now)),
            ("previous", previous_email.into()),
            ("current", address.to_string().into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let rendered = self
            .render_email(organisation, kind.email(), &user.locale, &values)
            .await?;
        let mut recipients = vec![address];
        if kind == NoticeKind::EmailChanged {
            recipients.extend(previous.filter(|p| !recipients.contains(p)));
        }
        let mut messages = Vec::new();
        for to in recipients {
            let outgoing = OutgoingEmail {
                organisation,
                from: settings.from.mailbox(),
                to: Mailbox::new(None, to),
                subject: &rendered.subject,
                text: &rendered.text,
                html: rendered.html.as_deref(),
            };
            messages.push(
                outgoing
                    .seal(self.settings.master_key(), now)
                    .map_err(|e| {
                        NotifyError::Invalid(validation::violation("login", e.to_string()))
                    })?,
            );
        }
        let ids = messages.iter().map(|m| m.id.clone()).collect();
        self.enqueue_built(messages).await?;
        Ok(ids)
    }
}
