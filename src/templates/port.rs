//! The templates' port: where overrides and organisations' locale settings are kept
//! (`store::sled`, `store::etcd`).

use async_trait::async_trait;

use super::{Customisation, LocaleSettings, TemplateOverride};
use crate::notify::EmailKind;
use crate::ports::Result;

/// Overrides of the built-in emails and organisations' locale settings. Each method is
/// atomic and each write durable.
#[async_trait]
pub trait TemplateStore: Send + Sync {
    /// The override of `kind` in `locale` for `scope` (an organisation, or empty for the
    /// platform).
    async fn email_override(
        &self,
        scope: &str,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Option<TemplateOverride>>;

    /// Every override of `scope` (at most one per kind and language).
    async fn email_overrides(&self, scope: &str) -> Result<Vec<TemplateOverride>>;

    /// Writes `new` (or, with `None`, removes the override of `kind` in `locale` for
    /// `scope`) if the stored override's version is still `expected` (0: none stored).
    /// `Ok(false)` when another write came first.
    async fn swap_email_override(
        &self,
        scope: &str,
        kind: EmailKind,
        locale: &str,
        expected: u64,
        new: Option<&TemplateOverride>,
    ) -> Result<bool>;

    /// What an email `kind` to a recipient of `organisation` (empty: the platform's view)
    /// may use, read at once (sending an email reads it): the organisation's locale
    /// settings, and its and the platform's overrides of `kind` in every language.
    async fn email_customisation(
        &self,
        organisation: &str,
        kind: EmailKind,
    ) -> Result<Customisation>;

    /// An organisation's locale settings.
    async fn locale_settings(&self, organisation: &str) -> Result<Option<LocaleSettings>>;

    /// Writes an organisation's locale settings if the stored version is still `expected`
    /// (0: none stored). `Ok(false)` when another write came first.
    async fn swap_locale_settings(&self, expected: u64, settings: &LocaleSettings) -> Result<bool>;
}
