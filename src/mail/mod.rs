//! Mail: everything that speaks SMTP. [`connection`] opens a lettre connection from the
//! settings, stage by stage, with the TLS policy of [`tls`]; [`probe`] runs
//! `TestSmtpSettings` over one; [`delivery`] keeps one per sender to deliver the outbox;
//! the access tokens of XOAUTH2 logins come from `settings::oauth2`. What is sent is made in
//! `notify` (templates, composing, sealing): this module only carries it.

use crate::crypto::CryptoError;

pub mod connection;
pub mod delivery;
pub mod probe;
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
