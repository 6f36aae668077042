//! Rendering a notification's templates into a message: the parts every recipient shares,
//! the checks every rendered header passes (one line, one mailbox, no CR or LF), and the
//! sealed message.

use std::str::FromStr;
use std::sync::Arc;

use lettre::message::Mailbox;
use lettre::Address;
use serde_json::Value;

use super::email::OutgoingEmail;
use super::template::{BodyFormat, Data, Templates};
use super::text::html_to_text;
use super::{Notification, NotifyError, NotifyService, OutboxMessage};
use crate::directory::User;
use crate::settings::SmtpSettings;
use crate::validation::{self, Violations};

/// What a notification's message holds besides its recipient, rendered.
pub(super) struct Parts {
    pub(super) from: Mailbox,
    pub(super) subject: String,
    pub(super) text: String,
    pub(super) html: Option<String>,
}

impl NotifyService {
    /// Renders what a notification's message holds besides its recipient: sender, subject
    /// and body over `data`, or every violation.
    pub(super) fn render_parts(
        &self,
        n: &Notification,
        settings: &SmtpSettings,
        templates: &Templates,
        data: &Data,
    ) -> Result<Parts, Violations> {
        let mut v = Violations::new();
        let from = if n.from.is_empty() {
            Some(settings.from.mailbox())
        } else {
            templates
                .render("from", data)
                .map_err(|e| v.absorb(&e))
                .ok()
                .and_then(|from| {
                    let from = mailbox(&from).and_then(|m| settings.check_sender(&m).map(|()| m));
                    v.check("from", from)
                })
        };
        let subject = templates
            .render("subject", data)
            .map_err(|e| v.absorb(&e))
            .ok()
            .and_then(|s| v.check("subject", header_value(s)));
        let body = templates
            .render("body", data)
            .map_err(|e| v.absorb(&e))
            .ok();
        let (Some(from), Some(subject), Some(body)) = (from, subject, body) else {
            return Err(v);
        };
        let (text, html) = match n.format {
            BodyFormat::Text => (body, None),
            BodyFormat::Html => {
                // Part of the request's render time (once per recipient in SendToUsers).
                let started = std::time::Instant::now();
                let text = html_to_text(&body);
                data.spend(started.elapsed());
                (text, Some(body))
            }
        };
        Ok(Parts {
            from,
            subject,
            text,
            html,
        })
    }

    /// Builds and seals the message of `parts` to `to`.
    pub(super) fn build(
        &self,
        n: &Notification,
        parts: &Parts,
        to: Mailbox,
    ) -> Result<OutboxMessage, Violations> {
        let built = OutgoingEmail {
            organisation: &n.organisation,
            from: parts.from.clone(),
            to,
            subject: &parts.subject,
            text: &parts.text,
            html: parts.html.as_deref(),
        };
        built
            .seal(self.settings.master_key(), self.clock.now())
            .map_err(|e| validation::violation("body", format!("cannot build the message: {e}")))
    }

    /// Compiles a notification's templates (and `recipients`, `to[i]` fields), through
    /// this service's cache.
    pub(super) fn compile(
        &self,
        n: &Notification,
        recipients: &[(String, &str)],
    ) -> Result<Arc<Templates>, NotifyError> {
        let mut fields: Vec<(&str, &str)> = vec![("subject", &n.subject), ("body", &n.body)];
        if !n.from.is_empty() {
            fields.push(("from", &n.from));
        }
        fields.extend(recipients.iter().map(|(f, t)| (f.as_str(), *t)));
        self.templates
            .compile(&fields, n.format)
            .map_err(NotifyError::Invalid)
    }
}

pub(super) fn check_notification(n: &Notification) -> Violations {
    let mut v = Violations::new();
    v.check(
        "organisation",
        validation::text(&n.organisation, true, crate::auth::ORGANISATION_MAX),
    );
    if n.subject.is_empty() {
        v.add("subject", "is required");
    }
    if n.body.is_empty() {
        v.add("body", "is required");
    }
    v.check(
        "idempotency_key",
        validation::text(&n.idempotency_key, false, 200),
    );
    v
}

pub(super) fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// The longest rendered header value (sender, recipient, subject), in bytes: the longest
/// line RFC 5322 allows (§2.1.1). Each is kept in the clear beside the sealed message and
/// answered by ListMessages, a thousand at a time.
pub const MAX_HEADER_BYTES: usize = 998;

/// A rendered header value: refused when it holds CR or LF (header injection), or is
/// longer than [`MAX_HEADER_BYTES`].
pub(super) fn header_value(value: String) -> Result<String, String> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(format!(
            "rendered to {} bytes; a header value holds at most {MAX_HEADER_BYTES}",
            value.len()
        ));
    }
    if has_line_break(&value) {
        return Err("rendered to a value with CR or LF, which would start a new header".into());
    }
    if value.chars().any(char::is_control) {
        return Err("rendered to a value with control characters".into());
    }
    Ok(value)
}

/// A rendered sender or recipient: exactly one mailbox, no line breaks.
pub(super) fn mailbox(value: &str) -> Result<Mailbox, String> {
    let value = header_value(value.trim().to_string())?;
    if value.is_empty() {
        return Err("rendered to an empty address".into());
    }
    Mailbox::from_str(&value)
        .map_err(|e| format!("rendered to {value:?}, which is not one mailbox ({e})"))
}

pub(super) fn user_value(user: &User, address: &Address) -> Value {
    serde_json::json!({
        "login": user.login,
        "name": user.name,
        "email": address.to_string(),
        "organisations": user.organisations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_headers_are_at_most_one_line_long() {
        let longest = "s".repeat(MAX_HEADER_BYTES);
        assert_eq!(header_value(longest.clone()), Ok(longest.clone()));
        let why = header_value(longest + "s").expect_err("too long");
        assert!(why.contains("at most 998"), "{why}");
        let address = format!("{}@example.com", "a".repeat(MAX_HEADER_BYTES));
        assert!(mailbox(&address)
            .expect_err("too long")
            .contains("at most 998"));
    }
}
