//! Export and import ([`Snapshot`]): every record read from its tree, tokens through each
//! login's list (so that an import rebuilds the lists in the order they were issued);
//! records written back with plain inserts, each with its index entries, then one group
//! commit per chunk.

use async_trait::async_trait;

use super::accounts::BOOTSTRAPPED_KEY;
use super::content::put_message;
use super::keys::*;
use super::settings::{KEY_CHECK, SETTINGS_KEY};
use super::{unavailable, SledStore};
use crate::settings::SettingsStore;
use crate::snapshot::{Keyed, Portable, Sink, Snapshot};
use crate::store::keyspace::{self, IMPORTING};
use crate::store::{decode, encode, Result};
use crate::tokens::Token;

const IMPORT_MARK: &[u8] = IMPORTING.as_bytes();

impl SledStore {
    /// Every tree of the store.
    fn trees(&self) -> [&sled::Tree; 12] {
        [
            &self.meta,
            &self.keys,
            &self.key_digests,
            &self.users,
            &self.user_organisations,
            &self.outbox,
            &self.tokens,
            &self.login_tokens,
            &self.token_purge,
            &self.rate_limits,
            &self.tallies,
            &self.templates,
        ]
    }

    /// Every `(key, record)` of `tree` under `prefix`, the key after the prefix as text.
    fn records<T: crate::store::Record + serde::de::DeserializeOwned>(
        tree: &sled::Tree,
        prefix: &[u8],
        mut each: impl FnMut(String, T) -> Result<()>,
    ) -> Result<()> {
        for entry in tree.scan_prefix(prefix) {
            let (k, bytes) = entry.map_err(unavailable)?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let record = decode(&key, &bytes)?;
            each(key, record)?;
        }
        Ok(())
    }

    fn restore_token(&self, token: &Token) -> Result<()> {
        let mut digests = self.digests_of(&token.login)?;
        if !digests.contains(&token.digest) {
            digests.push(token.digest.clone());
            self.login_tokens
                .insert(token.login.as_bytes(), encode(&digests))
                .map_err(unavailable)?;
        }
        self.token_purge
            .insert(purge_key(token), &[])
            .map_err(unavailable)?;
        self.tokens
            .insert(token.digest.as_bytes(), encode(token))
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl Snapshot for SledStore {
    /// The store is this process's alone (sled locks its directory), so what it reads is
    /// one moment's. Batches a crash left halfway are settled first, as a start would.
    async fn export(&self, sink: &mut Sink<'_>) -> Result<()> {
        self.settle_every_batch().await?;
        if let Some(check) = self.key_check().await? {
            sink(Portable::KeyCheck(check))?;
        }
        if let Some(settings) = self.smtp_settings().await? {
            sink(Portable::Settings(Box::new(settings)))?;
        }
        Self::records(&self.keys, b"", |_, key| sink(Portable::ApiKey(key)))?;
        Self::records(&self.users, b"", |_, user| sink(Portable::User(user)))?;
        let overrides = keyspace::email_template(&Sled, "", "", "");
        let overrides = &overrides[..1];
        Self::records(&self.templates, overrides, |_, o| {
            sink(Portable::EmailTemplate(o))
        })?;
        let locales = keyspace::locale_settings(&Sled, "");
        Self::records(&self.templates, &locales[..1], |_, settings| {
            sink(Portable::LocaleSettings(settings))
        })?;
        Self::records(&self.login_tokens, b"", |_, digests: Vec<String>| {
            for digest in digests {
                if let Some(token) = self.token(&digest)? {
                    sink(Portable::Token(token))?;
                }
            }
            Ok(())
        })?;
        Self::records(&self.rate_limits, b"", |key, value| {
            sink(Portable::RateWindow(Keyed { key, value }))
        })?;
        Self::records(&self.tallies, b"", |key, value| {
            sink(Portable::QuotaTally(Keyed { key, value }))
        })?;
        Self::records(&self.outbox, &[IDEMPOTENCY], |_, record| {
            sink(Portable::Idempotency(record))
        })?;
        for entry in self.outbox.scan_prefix([MESSAGE]) {
            let (k, bytes) = entry.map_err(unavailable)?;
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            let message = self.with_content(self.decode_record(&id, &bytes)?)?;
            sink(Portable::Message(message))?;
        }
        Ok(())
    }

    async fn holds_records(&self) -> Result<bool> {
        for tree in self.trees() {
            for key in tree.iter().keys() {
                if key.map_err(unavailable)? != IMPORT_MARK || tree.name() != self.meta.name() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn remove_all(&self) -> Result<()> {
        let mark = self.meta.get(IMPORT_MARK).map_err(unavailable)?;
        for tree in self.trees() {
            tree.clear().map_err(unavailable)?;
        }
        if let Some(mark) = mark {
            self.meta.insert(IMPORT_MARK, mark).map_err(unavailable)?;
        }
        self.durable().await
    }

    async fn restore(&self, records: &[Portable]) -> Result<()> {
        for record in records {
            match record {
                Portable::KeyCheck(check) => {
                    self.meta
                        .insert(KEY_CHECK, encode(check))
                        .map_err(unavailable)?;
                }
                Portable::Settings(settings) => {
                    self.meta
                        .insert(SETTINGS_KEY, encode(settings.as_ref()))
                        .map_err(unavailable)?;
                }
                Portable::ApiKey(key) => {
                    self.meta
                        .insert(BOOTSTRAPPED_KEY, b"1".as_slice())
                        .map_err(unavailable)?;
                    self.key_digests
                        .insert(key.secret_digest.as_bytes(), key.id.as_bytes())
                        .map_err(unavailable)?;
                    self.keys
                        .insert(key.id.as_bytes(), encode(key))
                        .map_err(unavailable)?;
                }
                Portable::User(user) => {
                    for organisation in &user.organisations {
                        self.user_organisations
                            .insert(keyspace::member(&Sled, organisation, &user.login), &[])
                            .map_err(unavailable)?;
                    }
                    self.users
                        .insert(user.login.as_bytes(), encode(user))
                        .map_err(unavailable)?;
                }
                Portable::Token(token) => self.restore_token(token)?,
                Portable::EmailTemplate(o) => {
                    let key = keyspace::email_template(&Sled, &o.scope, o.kind.name(), &o.locale);
                    self.templates.insert(key, encode(o)).map_err(unavailable)?;
                }
                Portable::LocaleSettings(settings) => {
                    self.templates
                        .insert(
                            keyspace::locale_settings(&Sled, &settings.organisation),
                            encode(settings),
                        )
                        .map_err(unavailable)?;
                }
                Portable::RateWindow(window) => {
                    self.rate_limits
                        .insert(window.key.as_bytes(), encode(&window.value))
                        .map_err(unavailable)?;
                }
                Portable::QuotaTally(tally) => {
                    self.tallies
                        .insert(tally.key.as_bytes(), encode(&tally.value))
                        .map_err(unavailable)?;
                }
                Portable::Idempotency(record) => {
                    self.outbox
                        .insert(
                            idempotency_key(&record.organisation, &record.key),
                            encode(record),
                        )
                        .map_err(unavailable)?;
                }
                Portable::Message(message) => {
                    // Index entries first: one without its record is skipped by readers
                    // (and written again by the rerun that finishes the import).
                    let mut writes = sled::Batch::default();
                    for index in index_keys(message) {
                        writes.insert(index, &[]);
                    }
                    put_message(&mut writes, message);
                    self.outbox.apply_batch(writes).map_err(unavailable)?;
                }
            }
        }
        self.durable().await
    }

    async fn import_mark(&self) -> Result<Option<String>> {
        Ok(self
            .meta
            .get(IMPORT_MARK)
            .map_err(unavailable)?
            .map(|mark| String::from_utf8_lossy(&mark).into_owned()))
    }

    async fn set_import_mark(&self, mark: Option<&str>) -> Result<()> {
        match mark {
            Some(mark) => self.meta.insert(IMPORT_MARK, mark.as_bytes()),
            None => self.meta.remove(IMPORT_MARK),
        }
        .map_err(unavailable)?;
        self.durable().await
    }
}
