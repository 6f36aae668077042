//! The SMTP settings and the master key's check: the `meta` tree.

use async_trait::async_trait;
use sled::transaction::ConflictableTransactionError;

use super::{aborted, unavailable, SledStore};
use crate::settings::SettingsStore;
use crate::settings::SmtpSettings;
use crate::store::keyspace;
use crate::store::{decode, encode, Result};

pub(super) const SETTINGS_KEY: &[u8] = keyspace::SMTP_SETTINGS.as_bytes();

pub(super) const KEY_CHECK: &[u8] = keyspace::KEY_CHECK.as_bytes();

impl SledStore {
    pub(super) async fn key_check(&self) -> Result<Option<crate::crypto::Sealed>> {
        self.meta
            .get(KEY_CHECK)
            .map_err(unavailable)?
            .map(|bytes| decode("key_check", &bytes))
            .transpose()
    }

    pub(super) async fn set_key_check(&self, sealed: &crate::crypto::Sealed) -> Result<()> {
        self.meta
            .insert(KEY_CHECK, encode(sealed))
            .map_err(unavailable)?;
        self.durable().await
    }
}

#[async_trait]
impl SettingsStore for SledStore {
    async fn smtp_settings(&self) -> Result<Option<SmtpSettings>> {
        self.meta
            .get(SETTINGS_KEY)
            .map_err(unavailable)?
            .map(|bytes| decode("smtp_settings", &bytes))
            .transpose()
    }

    async fn swap_smtp_settings(&self, expected: u64, settings: &SmtpSettings) -> Result<bool> {
        let value = encode(settings);
        let swapped = self
            .meta
            .transaction(|meta| {
                let stored = meta.get(SETTINGS_KEY)?;
                let revision = match stored {
                    Some(bytes) => {
                        decode::<SmtpSettings>("smtp_settings", &bytes)
                            .map_err(ConflictableTransactionError::Abort)?
                            .revision
                    }
                    None => 0,
                };
                if revision != expected {
                    return Ok(false);
                }
                meta.insert(SETTINGS_KEY, value.as_slice())?;
                Ok(true)
            })
            .map_err(aborted)?;
        if swapped {
            self.durable().await?;
        }
        Ok(swapped)
    }
}
