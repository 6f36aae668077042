//! Mail: everything that speaks SMTP. [`connection`] opens a lettre connection from the
//! settings, stage by stage, with the TLS policy of [`tls`]; [`probe`] runs
//! `TestSmtpSettings` over one; [`delivery`] keeps one per sender to deliver the outbox;
//! [`oauth2`] gets and keeps the access tokens of XOAUTH2 logins; [`template`] renders
//! notifications.

use std::time::SystemTime;

use crate::crypto::CryptoError;

pub mod connection;
pub mod delivery;
pub mod oauth2;
pub mod probe;
pub mod sandbox;
pub mod template;
pub mod tls;

/// Errors of building a connection from the settings.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A stored secret cannot be opened.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The TLS parameters cannot be built.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A time as RFC 3339 in UTC, for humans reading an email.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new `Message-ID` header value: random, at the sender's domain.
pub fn new_message_id(domain: &str) -> String {
    format!("<{}@{}>", crate::crypto::random_id("mr"), domain)
}

/// Builds an RFC 5322 message: text only, or text and HTML alternatives.
pub fn compose(
    from: lettre::message::Mailbox,
    to: lettre::message::Mailbox,
    subject: &str,
    text: &str,
    html: Option<&str>,
    message_id: &str,
    date: SystemTime,
) -> Result<Vec<u8>, lettre::error::Error> {
    use lettre::message::{header::ContentType, MultiPart};
    let builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .message_id(Some(message_id.to_string()))
        .date(date);
    // Line ends made CRLF here, in one pass: lettre inserts each missing CR into the
    // string, moving the rest of it each time, and a body of 1 MiB in short lines took a
    // tenth of a second a message.
    let message = match html {
        Some(html) => {
            builder.multipart(MultiPart::alternative_plain_html(crlf(text), crlf(html)))?
        }
        None => builder.header(ContentType::TEXT_PLAIN).body(crlf(text))?,
    };
    Ok(message.formatted())
}

/// `text` with every line feed not already after a carriage return made CRLF.
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut after_cr = false;
    for c in text.chars() {
        if c == '\n' && !after_cr {
            out.push('\r');
        }
        out.push(c);
        after_cr = c == '\r';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_feeds_become_crlf_once() {
        assert_eq!(crlf("a\nb\r\nc\n\n\rd"), "a\r\nb\r\nc\r\n\r\n\rd");
        assert_eq!(crlf("\n"), "\r\n");
        assert_eq!(crlf(""), "");
    }
}
