//! What the domain and the store share, and nothing else: the errors of a store, paging,
//! the change notices of a shared store, and [`Backend`], what every backend tells about
//! itself (durability, health, whether other processes write to it).
//!
//! Each domain module defines the narrow store trait it needs next to its records
//! (`settings::SettingsStore`, `auth::ApiKeyStore`, `directory::UserStore`,
//! `tokens::TokenStore`, `notify::OutboxStore`); `store/` implements them for sled and etcd.
//! This module sits between the two so that neither imports the other's side: the domain
//! imports no backend, and `store` imports only the domain's records and ports (and these).
//! It imports nothing of the crate.

use async_trait::async_trait;

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or cannot be reached; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read back.
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A cached part of the store that another process changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The SMTP settings.
    SmtpSettings,
    /// An API key (created or revoked).
    ApiKeys,
}

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where paging resumes: the last key returned, exclusive.
pub type After<'a> = Option<&'a str>;

/// What a backend tells about itself, whatever records it holds: the ports that cache
/// (settings, API keys), flush (the outbox) or pace themselves on it (delivery) extend it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Whether only this process can use the store (sled locks its directory): then claims
    /// found at start belong to a dead process.
    fn exclusive(&self) -> bool;

    /// Changes made by other processes to what this one caches (settings, API keys);
    /// `None` when no other process can write to the store.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Changed>>;

    /// Whether what this process caches of the store (API keys) can be served now: `None`
    /// while changes by other processes might not reach [`Backend::changes`] (etcd's watch
    /// not yet established, or broken); otherwise a number that differs from any earlier
    /// one whenever changes may have been missed in between, so that nothing cached before
    /// is served. A store no other process writes is always `Some(0)`.
    fn watch_epoch(&self) -> Option<u64> {
        Some(0)
    }

    /// Answers when the store is reachable (health).
    async fn ping(&self) -> Result<()>;

    /// Makes every earlier write durable (shutdown).
    async fn flush(&self) -> Result<()>;
}
