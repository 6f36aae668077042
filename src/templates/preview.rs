//! PreviewEmail for the built-in emails: one rendered as it would be sent to a recipient
//! (the same template, language, values and composition), with sample values for those
//! not given. Nothing is queued or sent.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use lettre::message::Mailbox;
use serde_json::{Map, Value};

use super::{kind_and_lang_free, Scope, TemplateError, TemplateService};
use crate::locale::Lang;
use crate::notify::email::{compose, new_message_id};
use crate::notify::{builtin, EmailKind, EmailValue, EmailValues};
use crate::validation::{self, Violations};

/// Where a preview comes from when SMTP was never configured.
pub const PREVIEW_FROM: &str = "mailroom@example.com";
/// The sample recipient.
pub const SAMPLE_TO: &str = "ana.example@example.com";

/// A preview of a built-in email.
#[derive(Clone, Debug, Default)]
pub struct PreviewRequest {
    /// Which email (`None`: unspecified).
    pub kind: Option<EmailKind>,
    /// The recipient's own locale (BCP 47; empty for the organisation's default).
    pub locale: String,
    /// Values given, by name; the kind's samples for the others.
    pub values: Map<String, Value>,
    /// The recipient (`addr` or `Name <addr>`); a sample when empty.
    pub to: String,
}

/// A rendered email, as it would be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previewed {
    /// The language chosen.
    pub lang: Option<Lang>,
    /// Subject.
    pub subject: String,
    /// Text part.
    pub text: String,
    /// HTML part, when there is one.
    pub html: Option<String>,
    /// The message's headers as composed (name, value), in order.
    pub headers: Vec<(String, String)>,
}

/// A preview's sender and recipient, and when.
pub struct Preview {
    /// Sender.
    pub from: Mailbox,
    /// Recipient.
    pub to: Mailbox,
    /// The message's date.
    pub now: SystemTime,
}

impl Preview {
    /// Composes `subject`, `text` and `html` as a sent message would be, and answers its
    /// parts and headers.
    pub fn compose(
        &self,
        lang: Option<Lang>,
        subject: String,
        text: String,
        html: Option<String>,
    ) -> Result<Previewed, Violations> {
        let message_id = new_message_id(self.from.email.domain());
        let message = compose(
            self.from.clone(),
            self.to.clone(),
            &subject,
            &text,
            html.as_deref(),
            &message_id,
            self.now,
        )
        .map_err(|e| validation::violation("to", e.to_string()))?;
        Ok(Previewed {
            lang,
            subject,
            text,
            html,
            headers: headers(&message),
        })
    }
}

/// The recipient of a preview: `to`, or the sample.
pub fn recipient(to: &str) -> Result<Mailbox, Violations> {
    let to = if to.is_empty() { SAMPLE_TO } else { to };
    Mailbox::from_str(to)
        .map_err(|e| validation::violation("to", format!("is not a mailbox ({e})")))
}

/// The headers of an RFC 5322 message, unfolded.
pub fn headers(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }
    headers
}

impl TemplateService {
    /// `request`'s email as `scope`'s recipient would get it (see the module's doc).
    pub async fn preview(
        &self,
        scope: &Scope,
        request: &PreviewRequest,
        from: Option<Mailbox>,
    ) -> Result<Previewed, TemplateError> {
        let mut v = Violations::new();
        let kind = kind_and_lang_free(request.kind, &mut v);
        v.check("locale", crate::locale::tag(&request.locale));
        let to = recipient(&request.to).map_err(|e| v.absorb(&e)).ok();
        let now = self.clock.now();
        let organisation = match scope {
            Scope::Organisation(org) => org.as_str(),
            Scope::Platform => "acme",
        };
        let values = kind.and_then(|kind| {
            given(kind, &request.values, samples(kind, organisation, now))
                .map_err(|e| v.absorb(&e))
                .ok()
        });
        let (Some(kind), Some(to), Some(values)) = (kind, to, values) else {
            return Err(TemplateError::Invalid(v));
        };
        v.into_result(()).map_err(TemplateError::Invalid)?;
        let chosen = self.choose(scope, kind, &request.locale).await?;
        let lang = chosen.lang;
        let email = self
            .threads
            .render(scope.key(), move || builtin::render(&chosen, &values))
            .await?
            .map_err(TemplateError::Invalid)?;
        let preview = Preview {
            from: from.unwrap_or_else(|| Mailbox::from_str(PREVIEW_FROM).expect("a mailbox")),
            to,
            now,
        };
        preview
            .compose(Some(lang), email.subject, email.text, email.html)
            .map_err(TemplateError::Invalid)
    }
}

/// The sample values of `kind` (what a preview renders with when not given).
pub fn samples(kind: EmailKind, organisation: &str, now: SystemTime) -> EmailValues {
    let validity = match kind {
        EmailKind::Invitation => Duration::from_secs(86_400),
        _ => Duration::from_secs(600),
    };
    let link = match kind {
        EmailKind::Invitation => "https://thehive.example.com/invitation?token=mri_SAMPLE",
        _ => "https://thehive.example.com/reset?token=mrr_SAMPLE",
    };
    let all: [(&str, EmailValue); 14] = [
        ("name", "Ana Example".into()),
        ("login", "ana.example@example.com".into()),
        ("link", link.into()),
        ("validity", EmailValue::Length(validity)),
        ("expires", EmailValue::Time(now + validity)),
        ("time", EmailValue::Time(now)),
        ("previous", "ana.old@example.com".into()),
        ("current", "ana.example@example.com".into()),
        ("host", "smtp.example.com".into()),
        ("port", "587".into()),
        ("security", "STARTTLS (required)".into()),
        ("helo", "mailroom.example.com".into()),
        ("username", "soc@example.com".into()),
        ("sender", "SOC <soc@example.com>".into()),
    ];
    let own = kind.own_values();
    let mut values: EmailValues = all
        .into_iter()
        .filter(|(name, _)| own.contains(name))
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    values.insert("organisation".into(), organisation.into());
    values
}

/// `samples` with the values `given` in their place, each checked: one of the kind's
/// values, a time as RFC 3339 or epoch milliseconds, a length of time in seconds.
fn given(
    kind: EmailKind,
    given: &Map<String, Value>,
    mut values: EmailValues,
) -> Result<EmailValues, Violations> {
    let mut v = Violations::new();
    for (name, value) in given {
        let field = format!("values.{name}");
        if !kind.values().any(|k| k == name) || matches!(name.as_str(), "platform" | "locale") {
            v.add(
                field,
                format!(
                    "is not a value of {}: {}",
                    kind.name(),
                    kind.values()
                        .filter(|k| !matches!(*k, "platform" | "locale"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        }
        let parsed = match (EmailKind::value_type(name), value) {
            (builtin::ValueType::Text, Value::String(s)) => Ok(EmailValue::Text(s.clone())),
            (builtin::ValueType::Text, Value::Number(n)) => Ok(EmailValue::Text(n.to_string())),
            (builtin::ValueType::Text, Value::Bool(b)) => Ok(EmailValue::Text(b.to_string())),
            (builtin::ValueType::Time, value) => time(value).map(EmailValue::Time),
            (builtin::ValueType::Length, Value::Number(n)) => n
                .as_u64()
                .filter(|s| *s <= 366 * 86_400)
                .map(|s| EmailValue::Length(Duration::from_secs(s)))
                .ok_or_else(|| "must be a whole number of seconds, at most a year".to_string()),
            (builtin::ValueType::Length, _) => Err("must be a whole number of seconds".to_string()),
            (builtin::ValueType::Text, _) => Err("must be a string".to_string()),
        };
        if let Some(value) = v.check(&field, parsed) {
            if let EmailValue::Text(s) = &value {
                if let Err(why) = validation::text(s, false, 2048) {
                    v.add(format!("values.{name}"), why);
                    continue;
                }
            }
            values.insert(name.clone(), value);
        }
    }
    v.into_result(values)
}

/// A time given as RFC 3339 or epoch milliseconds.
fn time(value: &Value) -> Result<SystemTime, String> {
    let millis = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            // From 1970, as epoch milliseconds can say.
            return chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(SystemTime::from)
                .filter(|t| *t >= SystemTime::UNIX_EPOCH)
                .ok_or_else(|| {
                    "must be an RFC 3339 time from 1970 on (2026-01-31T08:00:00Z)".to_string()
                });
        }
        _ => None,
    };
    // Up to the year 9999, as RFC 3339 can write it.
    const LAST: u64 = 253_402_300_799_999;
    millis
        .and_then(|ms| u64::try_from(ms).ok())
        .filter(|ms| *ms <= LAST)
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .ok_or_else(|| {
            "must be an RFC 3339 time or epoch milliseconds up to the year 9999".to_string()
        })
}
