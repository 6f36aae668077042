//! Moving a store's records out of it and into another: what `mailroom export`, `import`
//! and `migrate` carry (the commands themselves are `server::portability`).
//!
//! A record travels as the domain holds it ([`Portable`], one variant per kind), not as a
//! backend stores it: sled and etcd keep tokens, message contents and large idempotency
//! records in layouts of their own, so a file written from one is read into the other.
//! Secrets travel as they are stored: sealed under the master key (the SMTP password and
//! keys, message contents, the key check) or as digests (API keys, tokens). [`Snapshot`]
//! is the port each backend implements (`store/sled/snapshot.rs`, `store/etcd/snapshot.rs`);
//! [`file`] is the export file's format; [`secrets`] checks that a master key opens every
//! sealed value of a record.
//!
//! An import may be cut anywhere (a crash, SIGKILL): it marks the store first
//! ([`Snapshot::set_import_mark`], the digest of the file), writes records whose every write
//! is a plain put (writing one again changes nothing), and clears the mark last. A store
//! marked is refused by the server, and `import` of the same file finishes the job.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::auth::ApiKey;
use crate::crypto::Sealed;
use crate::directory::User;
use crate::notify::{Idempotency, OutboxMessage};
use crate::ports::{Result, StoreError};
use crate::quota::Tally;
use crate::settings::SmtpSettings;
use crate::templates::{LocaleSettings, TemplateOverride};
use crate::tokens::{RateWindow, Token};

pub mod file;
pub mod secrets;

/// A kind of record, in the order an export writes them and an import reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The value sealed with the master key that proves a key opens the store.
    KeyCheck,
    /// The SMTP settings, with their revision (the etag).
    Settings,
    /// API keys: their secrets as SHA-256 digests.
    ApiKey,
    /// Users of the Directory.
    User,
    /// Overrides of the built-in emails (an organisation's, the platform's).
    EmailTemplate,
    /// Organisations' default locales.
    LocaleSettings,
    /// Password-reset and invitation tokens: their secrets as SHA-256 digests.
    Token,
    /// The issue-rate windows of token rate limits.
    RateWindow,
    /// The quota tallies of organisations.
    QuotaTally,
    /// Idempotency keys' first uses.
    Idempotency,
    /// Outbox messages, their contents sealed.
    Message,
}

impl Kind {
    /// Every kind, in the order of the file.
    pub const ALL: [Kind; 11] = [
        Kind::KeyCheck,
        Kind::Settings,
        Kind::ApiKey,
        Kind::User,
        Kind::EmailTemplate,
        Kind::LocaleSettings,
        Kind::Token,
        Kind::RateWindow,
        Kind::QuotaTally,
        Kind::Idempotency,
        Kind::Message,
    ];

    /// The kind's name in the file and in what the commands print.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KeyCheck => "key_check",
            Kind::Settings => "settings",
            Kind::ApiKey => "api_key",
            Kind::User => "user",
            Kind::EmailTemplate => "email_template",
            Kind::LocaleSettings => "locale_settings",
            Kind::Token => "token",
            Kind::RateWindow => "rate_window",
            Kind::QuotaTally => "quota_tally",
            Kind::Idempotency => "idempotency",
            Kind::Message => "message",
        }
    }
}

/// A record stored under a key of its own choosing (rate windows, quota tallies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Keyed<T> {
    /// The key it is stored under.
    pub key: String,
    /// The record.
    pub value: T,
}

/// One record of a store, as the domain holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum Portable {
    /// See [`Kind::KeyCheck`].
    KeyCheck(Sealed),
    /// See [`Kind::Settings`] (boxed: the largest record by far).
    Settings(Box<SmtpSettings>),
    /// See [`Kind::ApiKey`].
    ApiKey(ApiKey),
    /// See [`Kind::User`].
    User(User),
    /// See [`Kind::EmailTemplate`].
    EmailTemplate(TemplateOverride),
    /// See [`Kind::LocaleSettings`].
    LocaleSettings(LocaleSettings),
    /// See [`Kind::Token`].
    Token(Token),
    /// See [`Kind::RateWindow`].
    RateWindow(Keyed<RateWindow>),
    /// See [`Kind::QuotaTally`].
    QuotaTally(Keyed<Tally>),
    /// See [`Kind::Idempotency`].
    Idempotency(Idempotency),
    /// See [`Kind::Message`] (with its content).
    Message(OutboxMessage),
}

impl Portable {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Portable::KeyCheck(_) => Kind::KeyCheck,
            Portable::Settings(_) => Kind::Settings,
            Portable::ApiKey(_) => Kind::ApiKey,
            Portable::User(_) => Kind::User,
            Portable::EmailTemplate(_) => Kind::EmailTemplate,
            Portable::LocaleSettings(_) => Kind::LocaleSettings,
            Portable::Token(_) => Kind::Token,
            Portable::RateWindow(_) => Kind::RateWindow,
            Portable::QuotaTally(_) => Kind::QuotaTally,
            Portable::Idempotency(_) => Kind::Idempotency,
            Portable::Message(_) => Kind::Message,
        }
    }
}

/// Records per kind.
pub type Counts = BTreeMap<Kind, u64>;

/// Where an export hands each record.
pub type Sink<'a> = dyn FnMut(Portable) -> Result<()> + Send + 'a;

/// What a backend does for export and import. Each method works in memory bounded by one
/// record (or one chunk of records) whatever the store holds.
#[async_trait]
pub trait Snapshot: Send + Sync {
    /// Hands every record of the store to `sink`, kind by kind in the order of
    /// [`Kind::ALL`], as of one moment: sled must be stopped; etcd is read at one revision.
    /// Messages of batches not yet committed (requests still running, or abandoned) are
    /// left out: they were never acknowledged.
    async fn export(&self, sink: &mut Sink<'_>) -> Result<()>;

    /// Whether the store holds anything (its import mark aside).
    async fn holds_records(&self) -> Result<bool>;

    /// Removes everything the store holds, its import mark aside.
    async fn remove_all(&self) -> Result<()>;

    /// Writes `records` (of any kinds), each with its index entries, as they were
    /// exported. Writing a record again leaves the store as writing it once. Durable when
    /// it returns.
    async fn restore(&self, records: &[Portable]) -> Result<()>;

    /// Holds the store for one import until released (or dropped: then within seconds):
    /// another import meanwhile is refused, so that two never interleave their writes. A
    /// store only one process can open (sled locks its directory) needs nothing more.
    async fn lock_import(&self) -> Result<ImportLock> {
        Ok(ImportLock::none())
    }

    /// The mark of an import under way (what it imports), if any.
    async fn import_mark(&self) -> Result<Option<String>>;

    /// Sets (`Some`) or clears (`None`) the mark of an import under way. Durable.
    async fn set_import_mark(&self, mark: Option<&str>) -> Result<()>;
}

/// An import's hold on its store ([`Snapshot::lock_import`]).
pub struct ImportLock {
    /// What keeps the hold alive; stopped when dropped.
    keeping: Option<tokio::task::JoinHandle<()>>,
    /// What lets it go at once.
    release: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl ImportLock {
    /// No hold: the store is this process's alone.
    pub fn none() -> Self {
        Self {
            keeping: None,
            release: None,
        }
    }

    /// A hold that `keeping` keeps alive and `release` lets go.
    pub fn held(
        keeping: tokio::task::JoinHandle<()>,
        release: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            keeping: Some(keeping),
            release: Some(Box::pin(release)),
        }
    }

    /// Lets the store go at once.
    pub async fn release(mut self) {
        if let Some(keeping) = self.keeping.take() {
            keeping.abort();
        }
        if let Some(release) = self.release.take() {
            release.await;
        }
    }
}

impl Drop for ImportLock {
    fn drop(&mut self) {
        if let Some(keeping) = &self.keeping {
            keeping.abort();
        }
    }
}

/// A store marked by an import that did not finish: what the server says at start.
pub fn interrupted(mark: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "an import into this store did not finish (file digest {mark}): run `mailroom \
         import` again with the same file to finish it, or `mailroom import --replace` with \
         another"
    ))
}
