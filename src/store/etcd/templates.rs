//! Overrides of the built-in emails and organisations' locale settings (`templates/`,
//! `locale_settings/`), each write a transaction guarded by the key's revision.

use async_trait::async_trait;
use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use serde::de::DeserializeOwned;

use super::keys::prefix_end;
use super::kv::*;
use super::EtcdStore;
use crate::notify::EmailKind;
use crate::store::keyspace;
use crate::store::{decode, encode, Record, Result};
use crate::templates::{Customisation, LocaleSettings, TemplateOverride, TemplateStore};

impl EtcdStore {
    /// Writes `new` at `key` (deletes it with `None`) if the stored record's version is
    /// still `expected` (0: absent) and no write came in between.
    async fn swap_versioned<T: Record + DeserializeOwned>(
        &self,
        key: &str,
        expected: u64,
        new: Option<Vec<u8>>,
        version: impl Fn(&T) -> u64,
    ) -> Result<bool> {
        let stored = self.read::<T>(key).await?;
        let current = stored.as_ref().map_or(0, |(record, _)| version(record));
        if current != expected {
            return Ok(false);
        }
        let write = match new {
            Some(value) => put(key, value),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new()
            .when([unchanged(key, stored.map(|(_, revision)| revision))])
            .and_then([write]);
        Ok(self.txn(txn).await?.succeeded())
    }
}

#[async_trait]
impl TemplateStore for EtcdStore {
    async fn email_override(
        &self,
        scope: &str,
        kind: EmailKind,
        locale: &str,
    ) -> Result<Option<TemplateOverride>> {
        let key = keyspace::email_template(self, scope, kind.name(), locale);
        Ok(self.read(&key).await?.map(|(record, _)| record))
    }

    async fn email_overrides(&self, scope: &str) -> Result<Vec<TemplateOverride>> {
        let prefix = keyspace::email_template(self, scope, "", "");
        // At most one per kind and language: 24 records.
        self.range(&prefix, None, 0)
            .await?
            .iter()
            .map(|kv| decode(&prefix, kv.value()))
            .collect()
    }

    async fn email_customisation(
        &self,
        organisation: &str,
        kind: EmailKind,
    ) -> Result<Customisation> {
        // One round trip: an email's sending waits for it.
        let locale_key = keyspace::locale_settings(self, organisation);
        let own = keyspace::email_template(self, organisation, kind.name(), "");
        let platform = keyspace::email_template(self, "", kind.name(), "");
        let under = |prefix: &str| {
            TxnOp::get(
                prefix,
                Some(GetOptions::new().with_range(prefix_end(prefix))),
            )
        };
        let response = self
            .txn(Txn::new().and_then([
                TxnOp::get(locale_key.as_str(), None),
                under(&own),
                under(&platform),
            ]))
            .await?;
        let mut found: Vec<Vec<KeyValue>> = response
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut get) => get.take_kvs(),
                _ => Vec::new(),
            })
            .collect();
        let decode_all = |kvs: Vec<KeyValue>, key: &str| -> Result<Vec<TemplateOverride>> {
            kvs.iter().map(|kv| decode(key, kv.value())).collect()
        };
        let platform = decode_all(found.pop().unwrap_or_default(), &platform)?;
        let own = decode_all(found.pop().unwrap_or_default(), &own)?;
        let locale = match (organisation, found.pop().unwrap_or_default().first()) {
            ("", _) | (_, None) => None,
            (_, Some(kv)) => Some(decode(&locale_key, kv.value())?),
        };
        Ok(Customisation {
            locale,
            own,
            platform,
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
        let key = keyspace::email_template(self, scope, kind.name(), locale);
        self.swap_versioned(&key, expected, new.map(encode), |o: &TemplateOverride| {
            o.version
        })
        .await
    }

    async fn locale_settings(&self, organisation: &str) -> Result<Option<LocaleSettings>> {
        let key = keyspace::locale_settings(self, organisation);
        Ok(self.read(&key).await?.map(|(record, _)| record))
    }

    async fn swap_locale_settings(&self, expected: u64, settings: &LocaleSettings) -> Result<bool> {
        let key = keyspace::locale_settings(self, &settings.organisation);
        self.swap_versioned(
            &key,
            expected,
            Some(encode(settings)),
            |s: &LocaleSettings| s.version,
        )
        .await
    }
}
