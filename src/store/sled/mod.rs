//! The embedded store: sled, one process per data directory.
//!
//! Multi-record operations are sled transactions across trees, or batches on the outbox
//! tree. Durability comes from one flusher task that batches every write waiting for it
//! into a single `flush` (group commit, `flusher.rs`), which ends with a real `fsync` of
//! sled's files (`files.rs`): acknowledged means on disk.
//!
//! Start reads no message bodies: what it repairs and releases (`recovery.rs`) is found
//! through index keys, and only the records a crash left halfway are read.
//!
//! Where things are:
//! - this file: [`SledStore`], opening it (waiting for sled to let go of the directory's
//!   lock), closing it, and the [`Store`] trait, each method forwarded to its concern;
//! - `keys.rs`: the trees and the keys of every record and index;
//! - `flusher.rs` and `files.rs`: the group commit and the sync of sled's files;
//! - `settings.rs` and `accounts.rs`: the SMTP settings and key check, API keys and users;
//! - `templates.rs`: overrides of the built-in emails, organisations' locale settings;
//! - `outbox.rs`: queuing batches, replacing messages and their index entries, reading them;
//! - `content.rs`: a message's sealed content, apart from its record when large;
//! - `claims.rs`: claims held in memory;
//! - `windows.rs`: rate-limit windows and quota tallies;
//! - `tokens.rs`: the [`TokenStore`](super::TokenStore);
//! - `snapshot.rs`: export and import (the [`Snapshot`](crate::snapshot::Snapshot) port);
//! - `recovery.rs`: crash repair, batches and claims left by a dead process.

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use sled::transaction::TransactionError;
use tokio::sync::mpsc;
use tracing::Instrument;

pub use files::CommitCounts;
use files::{Commits, SledFiles};
use flusher::{group_commit, FlushRequest};

use super::batch::StagedBatch;
use super::{keyspace, After, Backend, OutboxStore, Result, Store, StoreError};
use crate::crypto::Sealed;
use crate::notify::{BatchWriter, Idempotency, MessageState, OutboxMessage};

mod accounts;
mod claims;
mod content;
mod files;
mod flusher;
mod keys;
mod outbox;
mod recovery;
mod settings;
mod snapshot;
mod templates;
mod tokens;
mod windows;

/// Locks that serialise the writes of one record (by message id, login or rate-limit
/// key) where a sled transaction would cost a log write and sync of its own.
const LOCKS: usize = 64;

/// The sled store.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    keys: sled::Tree,
    key_digests: sled::Tree,
    users: sled::Tree,
    user_organisations: sled::Tree,
    outbox: sled::Tree,
    /// Tokens by digest.
    tokens: sled::Tree,
    /// Each login's token digests, in a list.
    login_tokens: sled::Tree,
    /// Purge time and digest of every token.
    token_purge: sled::Tree,
    rate_limits: sled::Tree,
    /// Quota tallies by key (`crate::quota::Tally`).
    tallies: sled::Tree,
    /// Email template overrides and locale settings (`templates.rs`).
    templates: sled::Tree,
    enqueue_lock: tokio::sync::Mutex<()>,
    locks: Vec<std::sync::Mutex<()>>,
    /// Numbers the intent keys of message replacements.
    swaps: std::sync::atomic::AtomicU64,
    /// The messages this process has claimed, as claimed: held in memory only (see
    /// `swap_message`), over their pending records.
    claims: std::sync::Mutex<std::collections::HashMap<String, OutboxMessage>>,
    /// The batches this process is staging, with the creation time of their first message
    /// (what etcd stores beside a staged batch): a staged batch on disk that is not here
    /// was left by a process that is gone (`recovery.rs`).
    staging: std::sync::Mutex<std::collections::HashMap<String, SystemTime>>,
    /// Message records read (with their sealed content) since open.
    records_read: std::sync::atomic::AtomicU64,
    flusher: mpsc::UnboundedSender<FlushRequest>,
    flusher_task: Option<tokio::task::JoinHandle<()>>,
    /// The flusher's count of group commits, and its failure.
    commits: std::sync::Arc<Commits>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, caching at most about `cache_bytes` of it in
    /// memory (sled's default is 1 GiB). Must be called within a Tokio runtime: it starts
    /// the flusher task.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(cache_bytes);
        let db = open_when_released(&config).map_err(unavailable)?;
        let files = SledFiles::open(&dir.join("sled"))
            .map_err(|e| StoreError::Unavailable(format!("syncing the store's files: {e}")))?;
        let commits = files.commits();
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        let (flusher, requests) = mpsc::unbounded_channel();
        let flusher_task = tokio::spawn(
            group_commit(requests, files).instrument(tracing::info_span!("sled_flusher")),
        );
        let store = Self {
            meta: tree(keyspace::META.tree)?,
            keys: tree(keyspace::API_KEYS.tree)?,
            key_digests: tree(keyspace::API_KEY_DIGESTS.tree)?,
            users: tree(keyspace::USERS.tree)?,
            user_organisations: tree(keyspace::MEMBERS.tree)?,
            outbox: tree(keyspace::MESSAGES.tree)?,
            tokens: tree(keyspace::sled_only::TOKENS_BY_DIGEST)?,
            login_tokens: tree(keyspace::LOGIN_TOKENS.tree)?,
            token_purge: tree(keyspace::TOKEN_PURGE.tree)?,
            rate_limits: tree(keyspace::RATE_LIMITS.tree)?,
            tallies: tree(keyspace::QUOTA_TALLIES.tree)?,
            templates: tree(keyspace::EMAIL_TEMPLATES.tree)?,
            enqueue_lock: tokio::sync::Mutex::new(()),
            locks: (0..LOCKS).map(|_| std::sync::Mutex::new(())).collect(),
            swaps: std::sync::atomic::AtomicU64::new(0),
            claims: std::sync::Mutex::new(std::collections::HashMap::new()),
            staging: std::sync::Mutex::new(std::collections::HashMap::new()),
            records_read: std::sync::atomic::AtomicU64::new(0),
            db,
            flusher,
            flusher_task: Some(flusher_task),
            commits,
        };
        let repaired = store.repair_interrupted_swaps()?;
        if repaired > 0 {
            tracing::info!(
                repaired,
                "index entries of messages a crash left halfway repaired"
            );
        }
        Ok(store)
    }

    /// Flushes and closes the store, releasing its directory for another process.
    pub async fn close(mut self) -> Result<()> {
        self.durable().await?;
        let task = self.flusher_task.take();
        // Dropping the store drops the flusher's channel: the task ends, and with it the
        // last handle on the database.
        drop(self);
        if let Some(task) = task {
            task.await
                .map_err(|e| StoreError::Unavailable(format!("the sled flusher failed: {e}")))?;
        }
        Ok(())
    }

    /// How many message records (each with its sealed content) this store has read since
    /// it was opened: what start must keep independent of the backlog (a test counts them).
    pub fn records_read(&self) -> u64 {
        self.records_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The group commits so far: each began after every write of its batch was made, and
    /// its writers were answered only once it was synced (a test checks both).
    pub fn commits(&self) -> CommitCounts {
        self.commits.counts()
    }

    /// This process's lock for `what` (a message id, a login, a rate-limit key): the
    /// compare-and-swap of single records written without a sled transaction.
    fn lock(&self, what: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        what.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % LOCKS as u64).unwrap_or(0);
        self.locks[stripe].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long opening waits for the directory's lock to be let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens the database, waiting up to [`LOCK_WAIT`] for its lock: sled's own threads let go
/// of it a moment after the last handle is dropped (spacejam/sled#1234), so a store opened
/// again at once (a restart, a test) may find it still held. A directory in use by another
/// running process stays locked, and opening it fails after the wait.
fn open_when_released(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn aborted<E: std::fmt::Display>(e: TransactionError<E>) -> StoreError {
    match e {
        TransactionError::Abort(e) => StoreError::Unavailable(e.to_string()),
        TransactionError::Storage(e) => unavailable(e),
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let _ = self.db.flush();
    }
}
/// Each method is written next to what it touches (see the module's list).
#[async_trait]
impl Backend for SledStore {
    fn exclusive(&self) -> bool {
        true
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<super::Changed>> {
        None
    }

    /// Fails for good once a sync has failed (see `SledFiles::commit`): health then says
    /// `NOT_SERVING`, and a restart recovers from what is on disk.
    async fn ping(&self) -> Result<()> {
        if let Some(failed) = self.commits.failure() {
            return Err(StoreError::Unavailable(failed.to_string()));
        }
        self.meta.get(settings::SETTINGS_KEY).map_err(unavailable)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.durable().await
    }
}

#[async_trait]
impl Store for SledStore {
    async fn key_check(&self) -> Result<Option<Sealed>> {
        SledStore::key_check(self).await
    }

    async fn set_key_check(&self, sealed: &Sealed) -> Result<()> {
        SledStore::set_key_check(self, sealed).await
    }
}

#[async_trait]
impl OutboxStore for SledStore {
    fn enqueue<'a>(&'a self, batch: &str) -> Box<dyn BatchWriter + 'a> {
        StagedBatch::boxed(self, batch)
    }

    async fn recover_batches(&self, before: SystemTime) -> Result<usize> {
        SledStore::recover_batches(self, before).await
    }

    async fn release_claims(&self, now: SystemTime) -> Result<usize> {
        SledStore::release_claims(self, now).await
    }

    async fn purge_idempotency(&self, before: SystemTime) -> Result<usize> {
        SledStore::purge_idempotency(self, before).await
    }

    async fn remove_message(&self, expected: u64, id: &str) -> Result<bool> {
        SledStore::remove_message(self, expected, id).await
    }

    async fn idempotency(&self, organisation: &str, key: &str) -> Result<Option<Idempotency>> {
        SledStore::idempotency(self, organisation, key).await
    }

    async fn message(&self, id: &str) -> Result<Option<OutboxMessage>> {
        SledStore::message(self, id).await
    }

    async fn replace_message(&self, expected: u64, message: &OutboxMessage) -> Result<bool> {
        SledStore::swap_message(self, expected, message, true).await
    }

    async fn claim_message(&self, expected: u64, message: &OutboxMessage) -> Result<bool> {
        SledStore::swap_message(self, expected, message, false).await
    }

    async fn settle_message(&self, expected: u64, message: &OutboxMessage) -> Result<bool> {
        SledStore::swap_message(self, expected, message, false).await
    }

    async fn due_messages(&self, now: SystemTime, limit: usize) -> Result<Vec<OutboxMessage>> {
        SledStore::due_messages(self, now, limit).await
    }

    async fn next_due(&self) -> Result<Option<SystemTime>> {
        SledStore::next_due(self).await
    }

    async fn all_messages(&self, after: After<'_>, limit: usize) -> Result<Vec<OutboxMessage>> {
        SledStore::all_messages(self, after, limit).await
    }

    async fn pending_of(&self, organisation: &str, at_most: u64) -> Result<u64> {
        SledStore::pending_of(self, organisation, at_most).await
    }

    async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<std::time::Duration>> {
        SledStore::tally(self, key, now, window, amount, limit).await
    }

    async fn pending_messages(&self) -> Result<usize> {
        SledStore::pending_messages(self).await
    }

    async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        SledStore::list_messages(self, organisation, state, after, limit).await
    }
}

/// What the tests of several files share.
#[cfg(test)]
mod testing {
    use std::path::Path;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::SledStore;
    use crate::notify::message::sample;
    use crate::notify::OutboxMessage;
    use crate::store::batch::Staging;
    use crate::store::Store;

    /// A store in `dir` holding one queued message; the message; it as a sender claims it;
    /// the time of both.
    pub(super) async fn one_queued(
        dir: &Path,
    ) -> (SledStore, OutboxMessage, OutboxMessage, SystemTime) {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let queued = sample("m1", now);
        let store = SledStore::open(dir, 16 << 20).unwrap();
        store
            .queue_messages("b", std::slice::from_ref(&queued), None)
            .await
            .unwrap();
        let mut claimed = queued.clone();
        claimed.claim("w", now, Duration::from_secs(60));
        claimed.version += 1;
        (store, queued, claimed, now)
    }

    /// The notifier over `store`, as the server builds it.
    pub(super) fn notifier_over(
        store: &std::sync::Arc<SledStore>,
        dir: &Path,
        now: SystemTime,
    ) -> crate::notify::NotifyService {
        let store: std::sync::Arc<dyn Store> = store.clone();
        let clock = crate::clock::Clock::manual(now);
        let key = crate::crypto::MasterKey::load_or_create(&dir.join("master.key")).unwrap();
        let settings = crate::settings::SettingsService::new(
            store.clone(),
            std::sync::Arc::new(key),
            clock.clone(),
        );
        crate::notify::NotifyService::new(
            store.clone(),
            store,
            settings,
            clock,
            std::sync::Arc::new(crate::notify::MailQueued::new()),
            crate::metrics::Metrics::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory held by a live store stays locked: opening it again fails (after the
    /// wait). Once the store is closed, it opens at once, though sled's threads may hold
    /// the lock a moment longer.
    #[tokio::test]
    async fn a_store_opens_once_its_directory_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let Err(StoreError::Unavailable(e)) = SledStore::open(dir.path(), 16 << 20) else {
            panic!("opened a directory in use");
        };
        assert!(e.contains("could not acquire lock"), "{e}");
        store.close().await.unwrap();
        for _ in 0..3 {
            let store = SledStore::open(dir.path(), 16 << 20).unwrap();
            store.close().await.unwrap();
        }
    }
}
