//! Whether a master key opens every sealed value of a record: what `import` checks of the
//! whole file before it writes anything, so that a wrong key is refused while the store is
//! still untouched.

use crate::crypto::{MasterKey, KEY_CHECK_PURPOSE};
use crate::notify::CONTENT_PURPOSE;

use super::Portable;

/// The first sealed value of `record` that `key` does not open, named; `None` when it
/// opens them all (or the record holds none).
pub fn unopened(record: &Portable, key: &MasterKey) -> Option<String> {
    match record {
        Portable::KeyCheck(sealed) => key
            .open(KEY_CHECK_PURPOSE, sealed)
            .err()
            .map(|_| "the store's key check".to_string()),
        Portable::Settings(settings) => {
            let fields: [(&str, bool); 4] = [
                ("password", settings.password(key).is_err()),
                ("tls.client_key", settings.client_key_pem(key).is_err()),
                (
                    "auth.oauth2.client_secret",
                    settings.oauth2_client_secret(key).is_err(),
                ),
                (
                    "auth.oauth2.private_key",
                    settings.oauth2_private_key(key).is_err(),
                ),
            ];
            fields
                .iter()
                .find(|(_, failed)| *failed)
                .map(|(field, _)| format!("the SMTP settings' {field}"))
        }
        Portable::Message(message) => message.content.as_ref().and_then(|sealed| {
            key.open_bytes(CONTENT_PURPOSE, sealed)
                .err()
                .map(|_| format!("the content of message {}", message.id))
        }),
        Portable::ApiKey(_)
        | Portable::User(_)
        | Portable::EmailTemplate(_)
        | Portable::LocaleSettings(_)
        | Portable::Token(_)
        | Portable::RateWindow(_)
        | Portable::QuotaTally(_)
        | Portable::Idempotency(_) => None,
    }
}
