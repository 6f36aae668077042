//! The settings' port: where the SMTP settings are kept (`store::sled`, `store::etcd`).
//! Settings are cached in memory ([`crate::cache`]), so the port extends [`Backend`] for
//! its watch epoch: what another replica changed is never served from the cache.

use async_trait::async_trait;

use super::SmtpSettings;
use crate::ports::{Backend, Result};

/// The SMTP settings of the store. Each method is atomic and each write durable.
#[async_trait]
pub trait SettingsStore: Backend {
    /// The SMTP settings, when ever saved.
    async fn smtp_settings(&self) -> Result<Option<SmtpSettings>>;

    /// Replaces the SMTP settings if their stored revision is still `expected_revision`
    /// (0: never saved). `Ok(false)` when another write came first.
    async fn swap_smtp_settings(
        &self,
        expected_revision: u64,
        settings: &SmtpSettings,
    ) -> Result<bool>;
}
