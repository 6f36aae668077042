//! Overrides of the built-in emails and organisations' locale settings: the `templates`
//! tree, each write a compare-and-swap on its one key.

use async_trait::async_trait;

use super::keys::Sled;
use super::{unavailable, SledStore};
use crate::notify::EmailKind;
use crate::store::keyspace;
use crate::store::{decode, encode, Result};
use crate::templates::{Customisation, LocaleSettings, TemplateOverride, TemplateStore};

impl SledStore {
    /// The overrides whose keys start with `prefix`.
    fn overrides_under(&self, prefix: &[u8]) -> Result<Vec<TemplateOverride>> {
        self.templates
            .scan_prefix(prefix)
            .map(|entry| {
                let (_, bytes) = entry.map_err(unavailable)?;
                decode("email_template", &bytes)
            })
            .collect()
    }

    /// Replaces the record at `key` by `new` (removes it with `None`) if the version
    /// `version` reads from the stored one is still `expected` (0: absent).
    async fn swap_versioned(
        &self,
        key: &[u8],
        expected: u64,
        new: Option<Vec<u8>>,
        version: impl Fn(&[u8]) -> Result<u64>,
    ) -> Result<bool> {
        let tree = &self.templates;
        let stored = tree.get(key).map_err(unavailable)?;
        let current = stored.as_deref().map(&version).transpose()?.unwrap_or(0);
        if current != expected {
            return Ok(false);
        }
        let swapped = tree
            .compare_and_swap(key, stored, new)
            .map_err(unavailable)?
            .is_ok();
        if swapped {
            self.durable().await?;
        }
        Ok(swapped)
    }
}

#[async_trait]
impl TemplateStore for SledStore {
    async fn email_override(
        &self,
        scope: &str,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Option<TemplateOverride>> {
        let key = keyspace::email_template(&Sled, scope, kind.name(), locale);
        self.templates
            .get(&key)
            .map_err(unavailable)?
            .map(|bytes| decode("email_template", &bytes))
            .transpose()
    }

    async fn email_overrides(&self, scope: &str) -> Result<Vec<TemplateOverride>> {
        self.overrides_under(&keyspace::email_template(&Sled, scope, "", ""))
    }

    async fn email_customisation(
        &self,
        organisation: &str,
        kind: EmailKind,
    ) -> Result<Customisation> {
        let locale = match organisation {
            "" => None,
            org => self.locale_settings(org).await?,
        };
        Ok(Customisation {
            locale,
            own: self.overrides_under(&keyspace::email_template(
                &Sled,
                organisation,
                kind.name(),
                "",
            ))?,
            platform: self.overrides_under(&keyspace::email_template(
                &Sled,
                "",
                kind.name(),
                "",
            ))?,
        })
    }

    async fn swap_email_override(
        &self,
        scope: &str,
        kind: EmailKind,
        locale: &str,
        expected: u64,
        new: Option<&TemplateOverride>,
    ) -> Result<bool> {
        let key = keyspace::email_template(&Sled, scope, kind.name(), locale);
        self.swap_versioned(&key, expected, new.map(encode), |bytes| {
            Ok(decode::<TemplateOverride>("email_template", bytes)?.version)
        })
        .await
    }

    async fn locale_settings(&self, organisation: &str) -> Result<Option<LocaleSettings>> {
        let key = keyspace::locale_settings(&Sled, organisation);
        self.templates
            .get(&key)
            .map_err(unavailable)?
            .map(|bytes| decode("locale_settings", &bytes))
            .transpose()
    }

    async fn swap_locale_settings(&self, expected: u64, settings: &LocaleSettings) -> Result<bool> {
        let key = keyspace::locale_settings(&Sled, &settings.organisation);
        self.swap_versioned(&key, expected, Some(encode(settings)), |bytes| {
            Ok(decode::<LocaleSettings>("locale_settings", bytes)?.version)
        })
        .await
    }
}
