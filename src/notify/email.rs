//! An email made into an outbox message: composed as RFC 5322 and sealed under the master
//! key, for notifications, token emails and account notices alike.

use std::time::SystemTime;

use lettre::message::Mailbox;

use super::{MessageState, OutboxMessage, CONTENT_PURPOSE};
use crate::crypto::{self, MasterKey};

/// A rendered email, ready to seal into the outbox.
pub struct OutgoingEmail<'a> {
    /// The organisation sending it.
    pub organisation: &'a str,
    /// Sender.
    pub from: Mailbox,
    /// Recipient.
    pub to: Mailbox,
    /// Subject.
    pub subject: &'a str,
    /// Text body.
    pub text: &'a str,
    /// HTML body, when there is one.
    pub html: Option<&'a str>,
}

/// The largest message, as sent, that is queued: a notification, not a file transfer.
/// Sealed, it stays within one etcd request (1.5 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why an email could not be made into an outbox message.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// lettre refused to build it.
    #[error(transparent)]
    Build(#[from] lettre::error::Error),
    /// It came out too large.
    #[error("the message comes to {0} bytes; at most {MAX_MESSAGE_BYTES} are queued")]
    TooLarge(usize),
}

impl OutgoingEmail<'_> {
    /// The outbox message: a fresh id and Message-ID, the content sealed.
    pub fn seal(&self, key: &MasterKey, now: SystemTime) -> Result<OutboxMessage, SealError> {
        let message_id = new_message_id(self.from.email.domain());
        let content = compose(
            self.from.clone(),
            self.to.clone(),
            self.subject,
            self.text,
            self.html,
            &message_id,
            now,
        )?;
        if content.len() > MAX_MESSAGE_BYTES {
            return Err(SealError::TooLarge(content.len()));
        }
        Ok(OutboxMessage {
            id: crypto::time_ordered_id("msg_", now),
            organisation: self.organisation.to_string(),
            from: self.from.to_string(),
            envelope_from: self.from.email.to_string(),
            to: self.to.email.to_string(),
            subject: self.subject.to_string(),
            content: Some(key.seal_bytes(CONTENT_PURPOSE, &content)),
            message_id_header: message_id,
            state: MessageState::Queued,
            attempts: 0,
            last_error: String::new(),
            last_smtp_code: 0,
            create_time: now,
            window_start: now,
            next_attempt_time: now,
            sent_time: None,
            lease: None,
            version: 0,
        })
    }
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
