//! The SMTP settings and the master key's check (`meta/`).

use async_trait::async_trait;
use etcd_client::Txn;

use super::kv::*;
use super::{contention, EtcdStore, CAS_ATTEMPTS};
use crate::crypto::Sealed;
use crate::settings::SettingsStore;
use crate::settings::SmtpSettings;
use crate::store::keyspace::{self};
use crate::store::{encode, Result};

impl EtcdStore {
    pub(super) async fn key_check(&self) -> Result<Option<Sealed>> {
        Ok(self
            .read(&keyspace::meta(self, keyspace::KEY_CHECK))
            .await?
            .map(|(v, _)| v))
    }

    pub(super) async fn set_key_check(&self, sealed: &Sealed) -> Result<()> {
        self.put(&keyspace::meta(self, keyspace::KEY_CHECK), encode(sealed))
            .await
    }
}

#[async_trait]
impl SettingsStore for EtcdStore {
    async fn smtp_settings(&self) -> Result<Option<SmtpSettings>> {
        Ok(self
            .read(&keyspace::meta(self, keyspace::SMTP_SETTINGS))
            .await?
            .map(|(v, _)| v))
    }

    async fn swap_smtp_settings(&self, expected: u64, settings: &SmtpSettings) -> Result<bool> {
        let key = keyspace::meta(self, keyspace::SMTP_SETTINGS);
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.read::<SmtpSettings>(&key).await?;
            let revision = stored.as_ref().map_or(0, |(s, _)| s.revision);
            if revision != expected {
                return Ok(false);
            }
            let txn = Txn::new()
                .when([unchanged(&key, stored.map(|(_, rev)| rev))])
                .and_then([put(key.as_str(), encode(settings))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(contention("the SMTP settings"))
    }
}
