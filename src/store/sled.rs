//! The embedded store: sled, one process per data directory.
//!
//! Multi-record operations are sled transactions across trees. Durability comes from one
//! flusher task that batches every write waiting for it into a single `flush` (group
//! commit): concurrent `flush_async` calls deadlock sled 0.34.7 (sled issue #1308), and
//! one flush for many writers is also what makes durable writes cheap. Each flush ends
//! with a real `fsync` of sled's files (`sled_files.rs`): acknowledged means on disk.
//!
//! Start reads no message bodies: what it repairs and releases is found through index
//! keys, and only the records a crash left halfway are read.
//!
//! A message's sealed content larger than 4 KiB ([`CONTENT_PART`]) is kept apart from its
//! record, in parts of that size: listings and index walks read small records only, and
//! no leaf of sled's cache holds more than a few parts (a leaf of whole contents near the
//! size limit stayed resident).

use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use serde::de::DeserializeOwned;

pub use super::sled_files::CommitCounts;
use super::sled_files::{Commits, SledFiles};
use super::{
    decode, encode, state_name, time_from_key, time_key, After, Record, Result, Store, StoreError,
    TokenStore,
};
use crate::auth::ApiKey;
use crate::crypto::Sealed;
use crate::directory::User;
use crate::notify::{Idempotency, MessageState, OutboxMessage};
use crate::settings::SmtpSettings;
use crate::tokens::{Purpose, RateWindow, Token};

const SETTINGS_KEY: &[u8] = b"smtp_settings";
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";
const KEY_CHECK: &[u8] = b"key_check";

// The outbox is one tree, so that a whole batch is one atomic `apply_batch`:
/// `m<id>` → message.
const MESSAGE: u8 = b'm';
/// `q<due time><id>` → (): pending messages by due time.
const DUE: u8 = b'q';
/// `o<organisation>\0<id>` → (): messages by organisation.
const BY_ORGANISATION: u8 = b'o';
/// `i<organisation>\0<key>` → idempotency record.
const IDEMPOTENCY: u8 = b'i';
/// `t<organisation>\0<state>\0<id>` → (): messages by organisation and state.
const BY_STATE: u8 = b't';
/// `s<batch>\0<id>` → the keys that queue a staged message (organisation index, due index).
const STAGED: u8 = b's';
/// `w<id>\0<n>` → (): a message whose record is being replaced; a crash leaves it, and
/// the next start puts the message's index entries in step with its record.
const REPLACING: u8 = b'w';
/// Locks that serialise the writes of one record (by message id, login or rate-limit
/// key) where a sled transaction would cost a log write and sync of its own.
const LOCKS: usize = 64;
/// `c<batch>` → (): a batch committed but not yet wholly queued.
const COMMITTED: u8 = b'c';
/// `b<id>\0<n>` → the `n`th part (`u32`, big-endian) of a message's sealed content, when
/// it is larger than one part; a smaller one stays in the record (as every content did
/// before).
const CONTENT: u8 = b'b';
/// Bytes of sealed content per part. sled keeps each leaf (up to 16 entries) whole in
/// its cache, and evicts a page only once enough pages of its shard of the cache were
/// used (256 shards): leaves of contents near the message size limit (16 × 1.4 MB) stayed
/// resident once written or read, whatever `--cache-mb` said. Measured on sled alone,
/// 256 MiB of content written then read back held 315 MiB in values of 1.4 MB, 278 MiB in
/// parts of 16 KiB, 102 MiB in parts of 4 KiB; and ListMessages over a thousand such
/// messages took the process to 1.4 GiB. A content of at most one part stays in its record
/// (most notifications): queuing and delivering it costs no more writes than before.
const CONTENT_PART: usize = 4096;
/// Staged messages queued by one write.
const QUEUE_CHUNK: usize = 1000;
/// Bytes of message records a page of the whole outbox holds at most (past its first).
const PAGE_BYTES: usize = 8 << 20;

fn commit_marker(batch: &str) -> Vec<u8> {
    key(COMMITTED, &[batch.as_bytes()])
}

fn staged_key(batch: &str, id: &str) -> Vec<u8> {
    key(STAGED, &[batch.as_bytes(), id.as_bytes()])
}

/// The index keys that queue a message: by organisation, by state, by due time.
fn index_keys(message: &OutboxMessage) -> impl Iterator<Item = Vec<u8>> {
    [
        Some(organisation_key(&message.organisation, &message.id)),
        Some(state_key(message)),
        due_key(message),
    ]
    .into_iter()
    .flatten()
}

/// What a staging entry holds: the index keys that queue the message, each behind its
/// length.
fn staged_value(message: &OutboxMessage) -> Vec<u8> {
    let mut value = Vec::new();
    for k in index_keys(message) {
        value.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_be_bytes());
        value.extend_from_slice(&k);
    }
    value
}

/// The index keys of a staging entry.
fn staged_keys(mut value: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    while value.len() >= 4 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&value[..4]);
        let end = (4 + u32::from_be_bytes(len) as usize).min(value.len());
        keys.push(value[4..end].to_vec());
        value = &value[end..];
    }
    keys
}

/// `t<organisation>\0<state>\0<id>`: messages by organisation and state.
fn state_key(message: &OutboxMessage) -> Vec<u8> {
    key(
        BY_STATE,
        &[
            message.organisation.as_bytes(),
            state_name(message.state).as_bytes(),
            message.id.as_bytes(),
        ],
    )
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part);
    }
    k
}

fn message_key(id: &str) -> Vec<u8> {
    key(MESSAGE, &[id.as_bytes()])
}

/// The prefix of the keys of a message's content parts.
fn content_prefix(id: &str) -> Vec<u8> {
    key(CONTENT, &[id.as_bytes(), b""])
}

/// Whether `content` stays in its message's record (else it is stored in parts).
fn inline(content: &Sealed) -> bool {
    content.stored_len() <= CONTENT_PART
}

/// A message's record: all of it, its content only when [`inline`].
fn record(message: &OutboxMessage) -> Vec<u8> {
    record_with(message, message.content.as_ref())
}

/// The record of `message` holding `content` when it is [`inline`], else none.
fn record_with(message: &OutboxMessage, content: Option<&Sealed>) -> Vec<u8> {
    let content = content.filter(|c| inline(c));
    if content == message.content.as_ref() {
        return encode(message);
    }
    encode(&OutboxMessage {
        content: content.cloned(),
        ..message.clone()
    })
}

/// The parts of `content`, with their keys, for message `id`.
fn content_parts<'a>(
    id: &'a str,
    content: &'a Sealed,
) -> impl Iterator<Item = (Vec<u8>, &'a [u8])> + 'a {
    let stored = content.as_stored().as_bytes();
    // An empty content is one empty part: no part means no content.
    let empty = stored.is_empty().then_some(stored);
    stored
        .chunks(CONTENT_PART)
        .chain(empty)
        .enumerate()
        .map(move |(n, part)| {
            let mut k = content_prefix(id);
            k.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
            (k, part)
        })
}

/// Adds to `writes` a new message: its record and its content's parts.
fn put_message(writes: &mut sled::Batch, message: &OutboxMessage) {
    writes.insert(message_key(&message.id), record(message));
    if let Some(content) = message.content.as_ref().filter(|c| !inline(c)) {
        for (k, part) in content_parts(&message.id, content) {
            writes.insert(k, part);
        }
    }
}

fn due_key(message: &OutboxMessage) -> Option<Vec<u8>> {
    message.due_at().map(|due| {
        let mut k = vec![DUE];
        k.extend_from_slice(&time_key(due));
        k.extend_from_slice(message.id.as_bytes());
        k
    })
}

fn organisation_key(organisation: &str, id: &str) -> Vec<u8> {
    key(BY_ORGANISATION, &[organisation.as_bytes(), id.as_bytes()])
}

fn idempotency_key(organisation: &str, k: &str) -> Vec<u8> {
    key(IDEMPOTENCY, &[organisation.as_bytes(), k.as_bytes()])
}

/// The keys after `prefix` + `after` (exclusive) that start with `prefix`.
fn scan_after(tree: &sled::Tree, prefix: Vec<u8>, after: Option<&str>) -> sled::Iter {
    match after {
        Some(after) => {
            let mut start = prefix.clone();
            start.extend_from_slice(after.as_bytes());
            let mut end = prefix;
            let last = end.len() - 1;
            end[last] += 1;
            tree.range((
                std::ops::Bound::Excluded(start),
                std::ops::Bound::Excluded(end),
            ))
        }
        None => tree.scan_prefix(prefix),
    }
}

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
    /// Quota tallies by key (`crate::notify::Tally`).
    tallies: sled::Tree,
    enqueue_lock: tokio::sync::Mutex<()>,
    locks: Vec<std::sync::Mutex<()>>,
    /// Numbers the intent keys of message replacements.
    swaps: std::sync::atomic::AtomicU64,
    /// The messages this process has claimed, as claimed: held in memory only (see
    /// `swap_message`), over their pending records.
    claims: std::sync::Mutex<std::collections::HashMap<String, OutboxMessage>>,
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
            meta: tree("meta")?,
            keys: tree("api_keys")?,
            key_digests: tree("api_key_digests")?,
            users: tree("users")?,
            user_organisations: tree("user_organisations")?,
            outbox: tree("outbox")?,
            tokens: tree("tokens_by_digest")?,
            login_tokens: tree("login_token_digests")?,
            token_purge: tree("token_purge_by_digest")?,
            rate_limits: tree("rate_limits")?,
            tallies: tree("quota_tallies")?,
            enqueue_lock: tokio::sync::Mutex::new(()),
            locks: (0..LOCKS).map(|_| std::sync::Mutex::new(())).collect(),
            swaps: std::sync::atomic::AtomicU64::new(0),
            claims: std::sync::Mutex::new(std::collections::HashMap::new()),
            records_read: std::sync::atomic::AtomicU64::new(0),
            db,
            flusher,
            flusher_task: Some(flusher_task),
            commits,
        };
        let migrated = store.migrate_tokens_by_id()?;
        if migrated > 0 {
            tracing::info!(migrated, "tokens moved to the by-digest layout");
        }
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

    /// Waits until every write made before the call is on disk.
    async fn durable(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.flusher
            .send((done, self.db.clone()))
            .map_err(|_| StoreError::Unavailable("the sled flusher stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the sled flusher stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

/// Scheduler rounds the flusher waits for more writers before it flushes.
const GATHER_ROUNDS: usize = 4;

/// A writer waiting for durability, and the database to flush. The flusher holds the
/// database only while it has waiters, so that dropping the store releases the directory
/// at once.
type FlushRequest = (oneshot::Sender<Result<(), String>>, sled::Db);

/// Flushes and syncs once for every batch of waiting writers, then wakes them all.
async fn group_commit(mut requests: mpsc::UnboundedReceiver<FlushRequest>, files: SledFiles) {
    let files = std::sync::Arc::new(std::sync::Mutex::new(files));
    while let Some((first, db)) = requests.recv().await {
        let mut waiters = vec![first];
        // Lets the writers that are ready to run reach this queue before the flush starts:
        // one flush then covers them all instead of the first few.
        for _ in 0..GATHER_ROUNDS {
            let before = waiters.len();
            while let Ok((more, _)) = requests.try_recv() {
                waiters.push(more);
            }
            if waiters.len() == before && before > 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let files = files.clone();
        let commit = move || {
            let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
            files.commit(&db)
        };
        let outcome = match tokio::task::spawn_blocking(commit).await {
            Ok(Ok(bytes)) => {
                tracing::debug!(waiters = waiters.len(), bytes, took = ?started.elapsed(), "flushed and synced");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("flush task failed: {e}")),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "sled flush or sync failed");
        }
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
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

#[async_trait]
impl Store for SledStore {
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
        self.meta.get(SETTINGS_KEY).map_err(unavailable)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.durable().await
    }

    async fn key_check(&self) -> Result<Option<crate::crypto::Sealed>> {
        self.meta
            .get(KEY_CHECK)
            .map_err(unavailable)?
            .map(|bytes| decode("key_check", &bytes))
            .transpose()
    }

    async fn set_key_check(&self, sealed: &crate::crypto::Sealed) -> Result<()> {
        self.meta
            .insert(KEY_CHECK, encode(sealed))
            .map_err(unavailable)?;
        self.durable().await
    }

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

    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> Result<bool> {
        let value = encode(key);
        let inserted = (&self.meta, &self.keys, &self.key_digests)
            .transaction(|(meta, keys, digests)| {
                if only_if_first && meta.get(BOOTSTRAPPED_KEY)?.is_some() {
                    return Ok(false);
                }
                meta.insert(BOOTSTRAPPED_KEY, b"1".as_slice())?;
                keys.insert(key.id.as_bytes(), value.as_slice())?;
                digests.insert(key.secret_digest.as_bytes(), key.id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(aborted)?;
        if inserted {
            self.durable().await?;
        }
        Ok(inserted)
    }

    async fn api_key_by_digest(&self, digest: &str) -> Result<Option<ApiKey>> {
        let Some(id) = self.key_digests.get(digest).map_err(unavailable)? else {
            return Ok(None);
        };
        self.keys
            .get(&id)
            .map_err(unavailable)?
            .map(|bytes| decode(&String::from_utf8_lossy(&id), &bytes))
            .transpose()
    }

    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> Result<Vec<ApiKey>> {
        let range = match after {
            Some(after) => self.keys.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.keys.iter(),
        };
        range
            .take(limit)
            .map(|entry| {
                let (id, bytes) = entry.map_err(unavailable)?;
                decode(&String::from_utf8_lossy(&id), &bytes)
            })
            .collect()
    }

    async fn revoke_api_key(&self, id: &str, organisation: Option<&str>) -> Result<Option<ApiKey>> {
        let revoked = self
            .keys
            .transaction(|keys| {
                let Some(bytes) = keys.get(id)? else {
                    return Ok(None);
                };
                let mut key: ApiKey =
                    decode(id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                if organisation.is_some_and(|o| o != key.organisation) {
                    return Ok(None);
                }
                key.revoked = true;
                keys.insert(id.as_bytes(), encode(&key))?;
                Ok(Some(key))
            })
            .map_err(aborted)?;
        if revoked.is_some() {
            self.durable().await?;
        }
        Ok(revoked)
    }

    async fn put_user(&self, user: &User) -> Result<()> {
        let value = encode(user);
        (&self.users, &self.user_organisations)
            .transaction(|(users, memberships)| {
                if let Some(old) = users.get(user.login.as_bytes())? {
                    let old: User =
                        decode(&user.login, &old).map_err(ConflictableTransactionError::Abort)?;
                    for organisation in &old.organisations {
                        memberships
                            .remove(key(0, &[organisation.as_bytes(), user.login.as_bytes()]))?;
                    }
                }
                for organisation in &user.organisations {
                    memberships.insert(
                        key(0, &[organisation.as_bytes(), user.login.as_bytes()]),
                        &[],
                    )?;
                }
                users.insert(user.login.as_bytes(), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(aborted)?;
        self.durable().await
    }

    async fn user(&self, login: &str) -> Result<Option<User>> {
        self.users
            .get(login.as_bytes())
            .map_err(unavailable)?
            .map(|bytes| decode(login, &bytes))
            .transpose()
    }

    async fn delete_user(&self, login: &str) -> Result<Option<User>> {
        let removed = (&self.users, &self.user_organisations)
            .transaction(|(users, memberships)| {
                let Some(old) = users.remove(login.as_bytes())? else {
                    return Ok(None);
                };
                let old: User = decode(login, &old).map_err(ConflictableTransactionError::Abort)?;
                for organisation in &old.organisations {
                    memberships.remove(key(0, &[organisation.as_bytes(), login.as_bytes()]))?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(Some(old))
            })
            .map_err(aborted)?;
        if removed.is_some() {
            self.durable().await?;
        }
        Ok(removed)
    }

    async fn list_users(
        &self,
        organisation: &str,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<User>> {
        let prefix = key(0, &[organisation.as_bytes(), b""]);
        let mut users = Vec::new();
        for entry in scan_after(&self.user_organisations, prefix.clone(), after).take(limit) {
            let (k, _) = entry.map_err(unavailable)?;
            let login = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(user) = self.user(&login).await? {
                users.push(user);
            }
        }
        Ok(users)
    }

    async fn stage_messages(&self, batch: &str, messages: &[OutboxMessage]) -> Result<()> {
        let mut writes = sled::Batch::default();
        for message in messages {
            put_message(&mut writes, message);
            writes.insert(staged_key(batch, &message.id), staged_value(message));
        }
        self.outbox.apply_batch(writes).map_err(unavailable)
    }

    async fn commit_batch(
        &self,
        batch: &str,
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let (chunk, staged) = self.queue_chunk(batch)?;
        if staged == 0 {
            // Discarded (or never staged): an empty write would succeed, and the request
            // acknowledge mail that does not exist.
            return Err(super::batch_gone(batch));
        }
        // Too large to queue in one write without holding every replaced page at once:
        // commit a marker, then queue chunk by chunk (finished at the next start after a
        // crash).
        let (commit, queue_after) = if staged == QUEUE_CHUNK {
            let mut marker = sled::Batch::default();
            marker.insert(commit_marker(batch), &[]);
            (marker, Some(chunk))
        } else {
            (chunk, None)
        };
        if let Some(first) = self.write_once(commit, idempotency).await? {
            self.discard_batch(batch).await?;
            return Ok(Some(first));
        }
        if let Some(first_chunk) = queue_after {
            self.outbox.apply_batch(first_chunk).map_err(unavailable)?;
            self.queue_committed(batch)?;
        }
        self.durable().await?;
        Ok(None)
    }

    async fn queue_messages(
        &self,
        batch: &str,
        messages: &[OutboxMessage],
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        if messages.len() > QUEUE_CHUNK {
            return super::stage_and_commit(self, batch, messages, idempotency).await;
        }
        if let ([message], None) = (messages, idempotency) {
            // One message and no key: nothing to keep atomic with it, so plain writes under
            // an intent (a sled batch would write and sync a log buffer of its own); a crash
            // midway is finished at the next open, like an interrupted swap.
            // The content before the record: a crash between them leaves parts without a
            // record, which the next open removes.
            let intent = self.replacing_key(&message.id);
            self.outbox.insert(&intent, &[]).map_err(unavailable)?;
            if let Some(content) = message.content.as_ref().filter(|c| !inline(c)) {
                for (k, part) in content_parts(&message.id, content) {
                    self.outbox.insert(k, part).map_err(unavailable)?;
                }
            }
            self.outbox
                .insert(message_key(&message.id), record(message))
                .map_err(unavailable)?;
            for index in index_keys(message) {
                self.outbox.insert(index, &[]).map_err(unavailable)?;
            }
            self.outbox.remove(&intent).map_err(unavailable)?;
            self.durable().await?;
            return Ok(None);
        }
        let mut writes = sled::Batch::default();
        for message in messages {
            put_message(&mut writes, message);
            for index in index_keys(message) {
                writes.insert(index, &[]);
            }
        }
        if let Some(first) = self.write_once(writes, idempotency).await? {
            return Ok(Some(first));
        }
        self.durable().await?;
        Ok(None)
    }

    /// Chunk by chunk, so that a batch of any size is forgotten in bounded memory: the
    /// batch was never committed, so a crash midway leaves the rest staged for the next
    /// start to forget. Contents go first, with plain writes: a sled batch holds every page
    /// it replaces until it ends, and the parts of a batch near its size limit (256 MiB)
    /// in one took the process past 2 GiB.
    async fn discard_batch(&self, batch: &str) -> Result<()> {
        let prefix = staged_key(batch, "");
        loop {
            let mut writes = sled::Batch::default();
            let mut staged = 0;
            for entry in self.outbox.scan_prefix(&prefix).keys().take(QUEUE_CHUNK) {
                let key = entry.map_err(unavailable)?;
                let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                self.remove_content(&id)?;
                writes.remove(message_key(&id));
                writes.remove(key);
                staged += 1;
            }
            if staged == 0 {
                return Ok(());
            }
            self.outbox.apply_batch(writes).map_err(unavailable)?;
        }
    }

    /// Batches carry no staging time on sled, whose staging is never shared: this is
    /// called at start, when every staged batch belongs to a dead process. Committed ones
    /// are queued, the others dropped.
    async fn recover_batches(&self, _before: SystemTime) -> Result<usize> {
        let mut batches = std::collections::BTreeSet::new();
        for entry in self.outbox.scan_prefix([STAGED]).keys() {
            let staged = entry.map_err(unavailable)?;
            let rest = &staged[1..];
            if let Some(split) = rest.iter().position(|b| *b == 0) {
                batches.insert(String::from_utf8_lossy(&rest[..split]).into_owned());
            }
        }
        for batch in &batches {
            if self
                .outbox
                .contains_key(commit_marker(batch))
                .map_err(unavailable)?
            {
                self.queue_committed(batch)?;
            } else {
                self.discard_batch(batch).await?;
            }
        }
        // Markers of batches queued whole just before a crash.
        for marker in self.outbox.scan_prefix([COMMITTED]).keys() {
            self.outbox
                .remove(marker.map_err(unavailable)?)
                .map_err(unavailable)?;
        }
        self.durable().await?;
        Ok(batches.len())
    }

    /// A first claim is held in memory, gone with the process; the claims on disk are those
    /// taken over once a lease ran out. They are found through the index by organisation
    /// and state, skipping from one organisation to the next, and only their records are
    /// read: the pending backlog's are not.
    async fn release_claims(&self, now: SystemTime) -> Result<usize> {
        let sending = state_name(MessageState::Sending).as_bytes();
        let mut released = 0;
        let mut from = vec![BY_STATE];
        while let Some(entry) = self.outbox.range(from.as_slice()..).keys().next() {
            let k = entry.map_err(unavailable)?;
            if k.first() != Some(&BY_STATE) {
                break;
            }
            let organisation = k[1..].split(|b| *b == 0).next().unwrap_or_default();
            let prefix = key(BY_STATE, &[organisation, sending, b""]);
            for entry in self.outbox.scan_prefix(&prefix).keys() {
                let k = entry.map_err(unavailable)?;
                let Some(claimed) = self.decode_message(&k[prefix.len()..])? else {
                    continue;
                };
                if claimed.state != MessageState::Sending {
                    continue;
                }
                let mut next = claimed.clone();
                next.release(now);
                next.version += 1;
                if self.replace_message(claimed.version, &next, false)? {
                    released += 1;
                }
            }
            // Past every key of this organisation: `t<organisation>\x01`.
            from = key(BY_STATE, &[organisation, b""]);
            if let Some(last) = from.last_mut() {
                *last = 1;
            }
        }
        Ok(released)
    }

    async fn purge_idempotency(&self, before: SystemTime) -> Result<usize> {
        let mut writes = sled::Batch::default();
        let mut count = 0;
        for entry in self.outbox.scan_prefix([IDEMPOTENCY]) {
            let (k, bytes) = entry.map_err(unavailable)?;
            let record: Idempotency = decode("idempotency", &bytes)?;
            if record.create_time < before {
                writes.remove(k);
                count += 1;
            }
        }
        self.outbox.apply_batch(writes).map_err(unavailable)?;
        Ok(count)
    }

    /// Plain writes under the message's lock, the index entries before the record: a crash
    /// between them leaves a record that no listing shows, and the next purge, which walks
    /// the records, removes it.
    async fn remove_message(&self, expected: u64, id: &str) -> Result<bool> {
        let _one_at_a_time = self.lock(id);
        let Some(stored) = self.decode_message(id.as_bytes())? else {
            return Ok(false);
        };
        let (version, _) = self.claim_of(id).unwrap_or((stored.version, stored.state));
        if version != expected {
            return Ok(false);
        }
        for index in index_keys(&stored) {
            self.outbox.remove(index).map_err(unavailable)?;
        }
        // The content before the record: a crash between them leaves a record that the
        // next purge removes.
        self.remove_content(id)?;
        self.outbox.remove(message_key(id)).map_err(unavailable)?;
        Ok(true)
    }

    async fn idempotency(&self, organisation: &str, k: &str) -> Result<Option<Idempotency>> {
        self.outbox
            .get(idempotency_key(organisation, k))
            .map_err(unavailable)?
            .map(|bytes| decode(k, &bytes))
            .transpose()
    }

    async fn message(&self, id: &str) -> Result<Option<OutboxMessage>> {
        self.current_message(id.as_bytes())?
            .map(|m| self.with_content(m))
            .transpose()
    }

    /// A claim (a swap not waited on from a pending state to `SENDING`) is held in memory:
    /// sled is opened by one process, so no other can take the message meanwhile, and a
    /// crash, which forgets the claim, leaves the message due at once instead of at the end
    /// of its lease. That halves the outbox writes of a delivery (docs/PERFORMANCE.md).
    ///
    /// Any other swap replaces the record with plain writes under this process's lock for
    /// the message: every sled transaction or batch seals and writes a log buffer, four
    /// `pwrite` + `sync_file_range` per delivered message. The index entries follow, new
    /// ones before old ones go, under an intent key that a crash leaves for
    /// [`SledStore::open`] to repair; readers skip entries that do not match their record.
    async fn swap_message(
        &self,
        expected: u64,
        message: &OutboxMessage,
        durable: bool,
    ) -> Result<bool> {
        let swapped = self.replace_message(expected, message, durable)?;
        if swapped && durable {
            self.durable().await?;
        }
        Ok(swapped)
    }

    async fn due_messages(&self, now: SystemTime, limit: usize) -> Result<Vec<OutboxMessage>> {
        let mut end = vec![DUE];
        end.extend_from_slice(&time_key(now + std::time::Duration::from_micros(1)));
        // Claims whose lease ran out, then pending records not claimed.
        let mut due: Vec<OutboxMessage> = self
            .claims_held()
            .values()
            .filter(|m| m.claimable(now))
            .cloned()
            .collect();
        for entry in self.outbox.range(vec![DUE]..end) {
            if due.len() >= limit {
                break;
            }
            let (k, _) = entry.map_err(unavailable)?;
            if self.is_claimed(&k[9..]) {
                continue;
            }
            if let Some(message) = self.decode_message(&k[9..])? {
                // An entry a swap has not removed yet: the message is due under another.
                if due_key(&message).as_deref() == Some(&k[..]) {
                    due.push(self.with_content(message)?);
                }
            }
        }
        due.sort_by_key(|m| m.due_at());
        due.truncate(limit);
        Ok(due)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>> {
        let claims = self.claims_held().values().filter_map(|m| m.due_at()).min();
        for entry in self.outbox.scan_prefix([DUE]).keys() {
            let k = entry.map_err(unavailable)?;
            if self.is_claimed(&k[9..]) {
                continue;
            }
            let mut time = [0u8; 8];
            time.copy_from_slice(&k[1..9]);
            let pending = time_from_key(time);
            return Ok(Some(claims.map_or(pending, |c| c.min(pending))));
        }
        Ok(claims)
    }

    /// Records only, contents kept apart. A page ends early once it holds [`PAGE_BYTES`] of
    /// records (those of earlier versions hold their content): the sweep, which runs at
    /// start, pages through the outbox.
    async fn all_messages(&self, after: After<'_>, limit: usize) -> Result<Vec<OutboxMessage>> {
        let (mut messages, mut read) = (Vec::new(), 0);
        for entry in scan_after(&self.outbox, vec![MESSAGE], after).take(limit) {
            let (k, bytes) = entry.map_err(unavailable)?;
            let id = String::from_utf8_lossy(&k[1..]);
            let mut message = match self.claimed(&id) {
                Some(claimed) => claimed,
                None => self.decode_record(&id, &bytes)?,
            };
            message.content = None;
            messages.push(message);
            read += bytes.len();
            if read >= PAGE_BYTES {
                break;
            }
        }
        Ok(messages)
    }

    async fn pending_of(&self, organisation: &str, at_most: u64) -> Result<u64> {
        // Claims held in memory are still indexed under the state they were claimed from.
        let mut count = 0;
        for state in [
            MessageState::Queued,
            MessageState::Retrying,
            MessageState::Sending,
        ] {
            let prefix = key(
                BY_STATE,
                &[organisation.as_bytes(), state_name(state).as_bytes(), b""],
            );
            for entry in self.outbox.scan_prefix(prefix).keys() {
                entry.map_err(unavailable)?;
                count += 1;
                if count >= at_most {
                    return Ok(count);
                }
            }
        }
        Ok(count)
    }

    async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<std::time::Duration>> {
        self.update_window(&self.tallies, key, |tally: &mut crate::notify::Tally| {
            tally.add(now, window, amount, limit)
        })
    }

    async fn pending_messages(&self) -> Result<usize> {
        let mut count = 0;
        for entry in self.outbox.scan_prefix([DUE]).keys() {
            entry.map_err(unavailable)?;
            count += 1;
        }
        Ok(count)
    }

    async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let prefix = match state {
            Some(state) => key(
                BY_STATE,
                &[organisation.as_bytes(), state_name(state).as_bytes(), b""],
            ),
            None => organisation_key(organisation, ""),
        };
        // Claims are listed under SENDING, not under the state of their records.
        let mut messages: Vec<OutboxMessage> = match state {
            Some(MessageState::Sending) => self
                .claims_held()
                .values()
                .filter(|m| m.organisation == organisation)
                .filter(|m| after.is_none_or(|after| m.id.as_str() > after))
                .map(without_content)
                .collect(),
            _ => Vec::new(),
        };
        let claims = messages.len();
        for entry in scan_after(&self.outbox, prefix.clone(), after) {
            if messages.len() >= limit + claims {
                break;
            }
            let (k, _) = entry.map_err(unavailable)?;
            if let Some(mut message) = self.current_message(&k[prefix.len()..])? {
                // An entry of the state a swap is moving the message out of.
                if state.is_none_or(|s| message.state == s) {
                    // Dropped as each is read: a page holds up to a thousand.
                    message.content = None;
                    messages.push(message);
                }
            }
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        messages.dedup_by(|a, b| a.id == b.id);
        messages.truncate(limit);
        Ok(messages)
    }
}

/// Whether a message in `state` has no content any more: it went out, or never will.
fn ends_content(state: MessageState) -> bool {
    matches!(state, MessageState::Sent | MessageState::Cancelled)
}

/// A copy of `message` without its content (see [`Store::list_messages`]).
fn without_content(message: &OutboxMessage) -> OutboxMessage {
    OutboxMessage {
        content: None,
        ..message.clone()
    }
}

/// The token trees of earlier versions, by id: moved at open by `migrate_tokens_by_id`.
const TREES_BY_ID: [&str; 4] = ["tokens", "token_digests", "login_tokens", "token_purge"];

fn purge_key(token: &Token) -> Vec<u8> {
    let mut k = time_key(token.purge_time()).to_vec();
    k.extend_from_slice(token.digest.as_bytes());
    k
}

#[async_trait]
impl TokenStore for SledStore {
    /// Plain writes under the login's lock, in an order a crash may cut anywhere: the
    /// purge entry first, the revocations, the login's list, and last the token, which
    /// makes it usable. A cut leaves nothing usable of a request that never answered: a
    /// purge entry, purged in its time, and a digest in the login's list, which readers
    /// skip and the login's next issue drops.
    async fn issue_token(&self, token: &Token, now: SystemTime) -> Result<u32> {
        let revoked = {
            let _login = self.lock(&token.login);
            self.token_purge
                .insert(purge_key(token), &[])
                .map_err(unavailable)?;
            let (mut digests, revoked) = self.revoke_where(&token.login, now, |t| {
                t.purpose == token.purpose && t.organisation == token.organisation
            })?;
            digests.push(token.digest.clone());
            self.login_tokens
                .insert(token.login.as_bytes(), encode(&digests))
                .map_err(unavailable)?;
            self.tokens
                .insert(token.digest.as_bytes(), encode(token))
                .map_err(unavailable)?;
            revoked
        };
        self.durable().await?;
        Ok(revoked)
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<Token>> {
        self.token(digest)
    }

    /// A plain write under the login's lock (issue, revoke and purge take it around
    /// their transactions): a sled transaction would write and sync a log buffer of its
    /// own before the group commit's flush.
    async fn swap_token(&self, expected: u64, token: &Token) -> Result<bool> {
        {
            let _login = self.lock(&token.login);
            let Some(stored) = self.token(&token.digest)? else {
                return Ok(false);
            };
            if stored.version != expected {
                return Ok(false);
            }
            self.tokens
                .insert(token.digest.as_bytes(), encode(token))
                .map_err(unavailable)?;
        }
        self.durable().await?;
        Ok(true)
    }

    async fn tokens_of(&self, login: &str) -> Result<Vec<Token>> {
        let mut tokens = Vec::new();
        for digest in self.digests_of(login)? {
            if let Some(token) = self.token(&digest)? {
                tokens.push(token);
            }
        }
        Ok(tokens)
    }

    async fn revoke_tokens(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
        now: SystemTime,
    ) -> Result<u32> {
        let (_, revoked) = {
            let _login = self.lock(login);
            self.revoke_where(login, now, |t| {
                purpose.is_none_or(|p| t.purpose == p)
                    && organisation.is_none_or(|o| t.organisation == o)
            })?
        };
        if revoked > 0 {
            self.durable().await?;
        }
        Ok(revoked)
    }

    async fn purge_tokens(&self, now: SystemTime, limit: usize) -> Result<u32> {
        let end = time_key(now);
        let due: Vec<sled::IVec> = self
            .token_purge
            .range(..end.as_slice())
            .take(limit)
            .map(|entry| entry.map(|(k, _)| k).map_err(unavailable))
            .collect::<Result<_>>()?;
        let mut purged = 0;
        for key in due {
            let digest = String::from_utf8_lossy(&key[8..]).into_owned();
            let login = self.token(&digest)?.map(|t| t.login).unwrap_or_default();
            let _login = self.lock(&login);
            (&self.tokens, &self.login_tokens, &self.token_purge)
                .transaction(|(tokens, login_tokens, purge)| {
                    purge.remove(&key)?;
                    let Some(bytes) = tokens.remove(digest.as_bytes())? else {
                        return Ok(());
                    };
                    let token: Token =
                        decode(&digest, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    if let Some(list) = login_tokens.get(token.login.as_bytes())? {
                        let mut digests: Vec<String> = decode(&token.login, &list)
                            .map_err(ConflictableTransactionError::Abort)?;
                        digests.retain(|d| *d != digest);
                        if digests.is_empty() {
                            login_tokens.remove(token.login.as_bytes())?;
                        } else {
                            login_tokens.insert(token.login.as_bytes(), encode(&digests))?;
                        }
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(aborted)?;
            purged += 1;
        }
        if purged > 0 {
            self.durable().await?;
        }
        Ok(purged)
    }

    async fn purge_rate_limits(&self, before: SystemTime) -> Result<usize> {
        let idle = |bytes: &[u8]| -> Result<bool> {
            let window: RateWindow = decode("rate_limit", bytes)?;
            Ok(window.hits.iter().all(|t| *t < before))
        };
        let mut count = 0;
        for entry in self.rate_limits.iter() {
            let (k, bytes) = entry.map_err(unavailable)?;
            if !idle(&bytes)? {
                continue;
            }
            // Checked again under the key's lock: a hit may have come meanwhile.
            let _key = self.lock(&String::from_utf8_lossy(&k));
            if let Some(bytes) = self.rate_limits.get(&k).map_err(unavailable)? {
                if idle(&bytes)? {
                    self.rate_limits.remove(&k).map_err(unavailable)?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    async fn hit_rate_limit(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        limit: u32,
    ) -> Result<Option<std::time::Duration>> {
        self.update_window(&self.rate_limits, key, |hits: &mut RateWindow| {
            hits.hit(now, window, limit)
        })
    }
}

impl SledStore {
    /// Changes the window record `key` of `tree` (a rate window, a quota tally) under its
    /// lock, unless `change` refuses: then how long until it would not.
    fn update_window<W: Record + DeserializeOwned + Default>(
        &self,
        tree: &sled::Tree,
        key: &str,
        change: impl FnOnce(&mut W) -> Result<(), std::time::Duration>,
    ) -> Result<Option<std::time::Duration>> {
        let _key = self.lock(key);
        let mut window: W = match tree.get(key.as_bytes()).map_err(unavailable)? {
            Some(bytes) => decode(key, &bytes)?,
            None => W::default(),
        };
        match change(&mut window) {
            Ok(()) => {
                tree.insert(key.as_bytes(), encode(&window))
                    .map_err(unavailable)?;
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }

    /// Applies `writes` with the idempotency key `key` added to them, unless the key was
    /// used before: then nothing is written and the key's first use is returned. The check
    /// and the write are one step (sled serves one process); waiting for durability is the
    /// caller's, after the lock, so that concurrent requests share a flush.
    async fn write_once(
        &self,
        mut writes: sled::Batch,
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let _one_at_a_time = match key {
            Some(k) => {
                let guard = self.enqueue_lock.lock().await;
                if let Some(first) = self.idempotency(&k.organisation, &k.key).await? {
                    return Ok(Some(first));
                }
                writes.insert(idempotency_key(&k.organisation, &k.key), encode(k));
                Some(guard)
            }
            None => None,
        };
        self.outbox.apply_batch(writes).map_err(unavailable)?;
        Ok(None)
    }

    /// The token stored under `digest`.
    fn token(&self, digest: &str) -> Result<Option<Token>> {
        self.tokens
            .get(digest.as_bytes())
            .map_err(unavailable)?
            .map(|bytes| decode(digest, &bytes))
            .transpose()
    }

    /// The digests in the login's list (some may be of tokens a crash left unwritten).
    fn digests_of(&self, login: &str) -> Result<Vec<String>> {
        match self
            .login_tokens
            .get(login.as_bytes())
            .map_err(unavailable)?
        {
            Some(bytes) => decode(login, &bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Revokes the login's tokens active at `now` that `matches`, with plain writes: the
    /// caller holds the login's lock. The digests of the login's tokens that exist, and
    /// how many it revoked.
    fn revoke_where(
        &self,
        login: &str,
        now: SystemTime,
        matches: impl Fn(&Token) -> bool,
    ) -> Result<(Vec<String>, u32)> {
        let mut existing = Vec::new();
        let mut revoked = 0;
        for digest in self.digests_of(login)? {
            let Some(mut token) = self.token(&digest)? else {
                continue;
            };
            if matches(&token) && token.revoke(now) {
                self.tokens
                    .insert(digest.as_bytes(), encode(&token))
                    .map_err(unavailable)?;
                revoked += 1;
            }
            existing.push(digest);
        }
        Ok((existing, revoked))
    }

    /// Moves tokens from the layout of earlier versions (by id, with a digest index) to
    /// the one by digest: every write is idempotent and the old trees are dropped last,
    /// so an interrupted move is done again at the next open. How many tokens it moved.
    fn migrate_tokens_by_id(&self) -> Result<usize> {
        let names = self.db.tree_names();
        if !TREES_BY_ID
            .iter()
            .any(|old| names.iter().any(|n| n == old.as_bytes()))
        {
            return Ok(0);
        }
        let old = self.db.open_tree("tokens").map_err(unavailable)?;
        let mut lists: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut moved = 0;
        for entry in old.iter() {
            let (id, bytes) = entry.map_err(unavailable)?;
            let token: Token = decode(&String::from_utf8_lossy(&id), &bytes)?;
            self.tokens
                .insert(token.digest.as_bytes(), bytes)
                .map_err(unavailable)?;
            self.token_purge
                .insert(purge_key(&token), &[])
                .map_err(unavailable)?;
            lists.entry(token.login).or_default().push(token.digest);
            moved += 1;
        }
        for (login, digests) in lists {
            self.login_tokens
                .insert(login.as_bytes(), encode(&digests))
                .map_err(unavailable)?;
        }
        self.db.flush().map_err(unavailable)?;
        for name in TREES_BY_ID {
            self.db.drop_tree(name).map_err(unavailable)?;
        }
        self.db.flush().map_err(unavailable)?;
        Ok(moved)
    }

    /// [`Store::swap_message`] but for the wait for durability: a claim (not `durable`, to
    /// `SENDING` from a pending state) is held in memory, anything else replaces the record
    /// and moves its index entries under an intent.
    fn replace_message(
        &self,
        expected: u64,
        message: &OutboxMessage,
        durable: bool,
    ) -> Result<bool> {
        let _one_at_a_time = self.lock(&message.id);
        let key = message_key(&message.id);
        let Some(stored) = self.outbox.get(&key).map_err(unavailable)? else {
            return Ok(false);
        };
        let stored = self.decode_record(&message.id, &stored)?;
        let claim = self.claim_of(&message.id);
        let (version, state) = claim.unwrap_or((stored.version, stored.state));
        if version != expected {
            return Ok(false);
        }
        if !durable && message.state == MessageState::Sending && state != MessageState::Sending {
            self.claims_held()
                .insert(message.id.clone(), message.clone());
            return Ok(true);
        }
        // The content ends with the states that drop it; else it is kept, or replaced when
        // the message brings another (a re-seal), or moved into parts from a record of an
        // earlier version. A message without content (read from a listing or an index
        // walk) leaves it as it is. Parts can only exist when the record holds none.
        let ends = ends_content(message.state);
        let content = message
            .content
            .as_ref()
            .or(stored.content.as_ref())
            .filter(|_| !ends);
        if let Some(content) = content.filter(|c| !inline(c)) {
            if self.content_of(&message.id)?.as_ref() != Some(content) {
                self.put_content(&message.id, content)?;
            }
        }
        let intent = self.replacing_key(&message.id);
        self.outbox.insert(&intent, &[]).map_err(unavailable)?;
        self.outbox
            .insert(key, record_with(message, content))
            .map_err(unavailable)?;
        // On failure the intent stays, for the next start to repair.
        self.move_indexes(&stored, message)?;
        let parts_left = stored.content.is_none() && (ends || content.is_some_and(inline));
        if parts_left {
            self.remove_content(&message.id)?;
        }
        self.outbox.remove(&intent).map_err(unavailable)?;
        if claim.is_some() {
            self.claims_held().remove(&message.id);
        }
        Ok(true)
    }

    /// A message's content, joined from its parts; `None` when it has none (sent,
    /// cancelled, or a record of an earlier version, which holds it).
    fn content_of(&self, id: &str) -> Result<Option<Sealed>> {
        let (mut stored, mut parts) = (Vec::new(), 0);
        for part in self.outbox.scan_prefix(content_prefix(id)).values() {
            stored.extend_from_slice(&part.map_err(unavailable)?);
            parts += 1;
        }
        if parts == 0 {
            return Ok(None);
        }
        String::from_utf8(stored)
            .map(|s| Some(Sealed::from_stored(s)))
            .map_err(|_| StoreError::Corrupt {
                key: id.to_string(),
                reason: "a message's content is not the text it was stored as".into(),
            })
    }

    /// `message` with its content, when its record (of this version) holds none.
    fn with_content(&self, mut message: OutboxMessage) -> Result<OutboxMessage> {
        if message.content.is_none() {
            message.content = self.content_of(&message.id)?;
        }
        Ok(message)
    }

    /// Replaces a message's content in one write: a crash never leaves parts of two.
    fn put_content(&self, id: &str, content: &Sealed) -> Result<()> {
        let mut writes = sled::Batch::default();
        let mut parts = 0;
        for (k, part) in content_parts(id, content) {
            writes.insert(k, part);
            parts += 1;
        }
        for old in self
            .outbox
            .scan_prefix(content_prefix(id))
            .keys()
            .skip(parts)
        {
            writes.remove(old.map_err(unavailable)?);
        }
        self.outbox.apply_batch(writes).map_err(unavailable)
    }

    /// Removes a message's content (plain writes: a crash midway leaves parts that the
    /// next open, or the next removal, takes away).
    fn remove_content(&self, id: &str) -> Result<()> {
        for part in self.outbox.scan_prefix(content_prefix(id)).keys() {
            self.outbox
                .remove(part.map_err(unavailable)?)
                .map_err(unavailable)?;
        }
        Ok(())
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

    fn replacing_key(&self, id: &str) -> Vec<u8> {
        let n = self
            .swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        key(REPLACING, &[id.as_bytes(), &n.to_be_bytes()])
    }

    /// Moves a message's index entries from `old` to `new` (its record already replaced):
    /// the new entries first, so that the message is never missing from an index.
    fn move_indexes(&self, old: &OutboxMessage, new: &OutboxMessage) -> Result<()> {
        let (old_due, new_due) = (due_key(old), due_key(new));
        let state_changed = old.state != new.state;
        if old_due != new_due {
            if let Some(k) = &new_due {
                self.outbox.insert(k, &[]).map_err(unavailable)?;
            }
        }
        if state_changed {
            self.outbox
                .insert(state_key(new), &[])
                .map_err(unavailable)?;
        }
        if old_due != new_due {
            if let Some(k) = old_due {
                self.outbox.remove(k).map_err(unavailable)?;
            }
        }
        if state_changed {
            self.outbox.remove(state_key(old)).map_err(unavailable)?;
        }
        Ok(())
    }

    /// Puts the index entries of messages whose replacement (or single-message queuing) a
    /// crash interrupted in step with their records. Runs at open, before anything reads
    /// the outbox.
    fn repair_interrupted_swaps(&self) -> Result<usize> {
        let mut ids = std::collections::BTreeSet::new();
        let mut intents = Vec::new();
        for entry in self.outbox.scan_prefix([REPLACING]).keys() {
            let intent = entry.map_err(unavailable)?;
            let rest = &intent[1..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            ids.insert(String::from_utf8_lossy(&rest[..end]).into_owned());
            intents.push(intent);
        }
        if intents.is_empty() {
            return Ok(0);
        }
        let mut due_keys = std::collections::BTreeMap::new();
        for id in &ids {
            let Some(message) = self.decode_message(id.as_bytes())? else {
                // A single message whose queuing stopped before its record was written.
                self.remove_content(id)?;
                continue;
            };
            if ends_content(message.state) {
                // A swap to SENT or CANCELLED that stopped before its content was removed.
                self.remove_content(id)?;
            }
            for state in MessageState::ALL {
                let mut other = message.clone();
                other.state = state;
                if state == message.state {
                    self.outbox
                        .insert(state_key(&other), &[])
                        .map_err(unavailable)?;
                } else {
                    self.outbox.remove(state_key(&other)).map_err(unavailable)?;
                }
            }
            if let Some(due) = due_key(&message) {
                self.outbox.insert(&due, &[]).map_err(unavailable)?;
            }
            self.outbox
                .insert(organisation_key(&message.organisation, id), &[])
                .map_err(unavailable)?;
            due_keys.insert(id.clone(), due_key(&message));
        }
        for entry in self.outbox.scan_prefix([DUE]).keys() {
            let k = entry.map_err(unavailable)?;
            let id = String::from_utf8_lossy(&k[9..]).into_owned();
            if due_keys
                .get(&id)
                .is_some_and(|due| due.as_deref() != Some(&k[..]))
            {
                self.outbox.remove(&k).map_err(unavailable)?;
            }
        }
        for intent in intents {
            self.outbox.remove(intent).map_err(unavailable)?;
        }
        self.db.flush().map_err(unavailable)?;
        Ok(ids.len())
    }

    /// The write that queues up to [`QUEUE_CHUNK`] staged messages of `batch`, and how many.
    fn queue_chunk(&self, batch: &str) -> Result<(sled::Batch, usize)> {
        let mut writes = sled::Batch::default();
        let mut staged = 0;
        for entry in self
            .outbox
            .scan_prefix(staged_key(batch, ""))
            .take(QUEUE_CHUNK)
        {
            let (key, value) = entry.map_err(unavailable)?;
            for index in staged_keys(&value) {
                writes.insert(index, &[]);
            }
            writes.remove(key);
            staged += 1;
        }
        Ok((writes, staged))
    }

    /// Queues a committed batch chunk by chunk, then drops its marker.
    fn queue_committed(&self, batch: &str) -> Result<()> {
        loop {
            let (writes, staged) = self.queue_chunk(batch)?;
            if staged == 0 {
                break;
            }
            self.outbox.apply_batch(writes).map_err(unavailable)?;
        }
        self.outbox
            .remove(commit_marker(batch))
            .map_err(unavailable)?;
        Ok(())
    }

    /// The claims of this process (see `swap_message`).
    fn claims_held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, OutboxMessage>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The message as this process claimed it, if it did.
    fn claimed(&self, id: &str) -> Option<OutboxMessage> {
        self.claims_held().get(id).cloned()
    }

    /// The version and state of this process's claim on `id`, if it holds one.
    fn claim_of(&self, id: &str) -> Option<(u64, MessageState)> {
        self.claims_held().get(id).map(|c| (c.version, c.state))
    }

    fn is_claimed(&self, id: &[u8]) -> bool {
        self.claims_held()
            .contains_key(String::from_utf8_lossy(id).as_ref())
    }

    /// The message as readers see it: as claimed, or as stored.
    fn current_message(&self, id: &[u8]) -> Result<Option<OutboxMessage>> {
        match self.claimed(&String::from_utf8_lossy(id)) {
            Some(claimed) => Ok(Some(claimed)),
            None => self.decode_message(id),
        }
    }

    /// The record as stored (a claim of this process aside).
    fn decode_message(&self, id: &[u8]) -> Result<Option<OutboxMessage>> {
        let id = String::from_utf8_lossy(id);
        self.outbox
            .get(message_key(&id))
            .map_err(unavailable)?
            .map(|bytes| self.decode_record(&id, &bytes))
            .transpose()
    }

    /// Every message record read goes through here, counted: see [`SledStore::records_read`].
    fn decode_record(&self, id: &str, bytes: &[u8]) -> Result<OutboxMessage> {
        self.records_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        decode(id, bytes)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let _ = self.db.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::notify::message::sample;
    use crate::tokens::sample as token_sample;

    /// A store in `dir` holding one queued message; the message; it as a sender claims it;
    /// the time of both.
    async fn one_queued(dir: &Path) -> (SledStore, OutboxMessage, OutboxMessage, SystemTime) {
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

    /// A claim is held in memory: readers see it, the next due time is its lease's end,
    /// and nothing of it is written, so a crash leaves the message due again at once.
    #[tokio::test]
    async fn a_claim_is_held_in_memory_and_forgotten_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queued, claimed, now) = one_queued(dir.path()).await;
        let stored = || store.outbox.get(message_key("m1")).unwrap().unwrap();
        let before = stored();
        assert!(store
            .swap_message(queued.version, &claimed, false)
            .await
            .unwrap());
        assert_eq!(stored(), before, "the record is not rewritten");
        let seen = store.message("m1").await.unwrap().unwrap();
        assert_eq!(
            (seen.state, seen.version),
            (MessageState::Sending, claimed.version)
        );
        assert!(store.due_messages(now, 10).await.unwrap().is_empty());
        assert_eq!(
            store.next_due().await.unwrap(),
            Some(now + Duration::from_secs(60)),
            "due again when the lease runs out, not now"
        );
        assert_eq!(store.pending_messages().await.unwrap(), 1);
        assert!(
            !store
                .swap_message(queued.version, &claimed, false)
                .await
                .unwrap(),
            "claimed once"
        );
        store.close().await.unwrap();

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let due = store.due_messages(now, 10).await.unwrap();
        assert_eq!(due.len(), 1, "due again at once after a restart");
        assert_eq!(
            (due[0].state, due[0].version),
            (MessageState::Queued, queued.version)
        );
    }

    /// An outcome recorded over a claim is written from the stored record, and the claim
    /// is let go.
    #[tokio::test]
    async fn an_outcome_replaces_the_claim_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queued, claimed, now) = one_queued(dir.path()).await;
        assert!(store
            .swap_message(queued.version, &claimed, false)
            .await
            .unwrap());
        let mut sent = claimed.clone();
        sent.finish(crate::notify::Attempt::Sent, now, 0.0);
        sent.version += 1;
        assert!(store
            .swap_message(claimed.version, &sent, false)
            .await
            .unwrap());
        assert!(store.claimed("m1").is_none());
        store.close().await.unwrap();

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let seen = store.message("m1").await.unwrap().unwrap();
        assert_eq!((seen.state, seen.attempts), (MessageState::Sent, 1));
        assert_eq!(store.next_due().await.unwrap(), None);
        let listed = store
            .list_messages("acme", Some(MessageState::Sent), None, 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
    }

    /// A crash in the middle of replacing a message's record: the record is new, its
    /// index entries still the old ones. The next open moves them.
    #[tokio::test]
    async fn index_entries_a_crash_left_behind_are_repaired_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, claimed, now) = one_queued(dir.path()).await;
        // What swap_message writes before it moves the index entries.
        store.outbox.insert(store.replacing_key("m1"), &[]).unwrap();
        store
            .outbox
            .insert(message_key("m1"), encode(&claimed))
            .unwrap();
        assert!(
            store.due_messages(now, 10).await.unwrap().is_empty(),
            "an entry that does not match its record is skipped"
        );
        store.close().await.unwrap();

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let state = |s| store.list_messages("acme", Some(s), None, 10);
        assert_eq!(state(MessageState::Sending).await.unwrap().len(), 1);
        assert!(state(MessageState::Queued).await.unwrap().is_empty());
        assert!(store.due_messages(now, 10).await.unwrap().is_empty());
        let later = now + Duration::from_secs(61);
        assert_eq!(store.due_messages(later, 10).await.unwrap().len(), 1);
        assert_eq!(
            store.pending_messages().await.unwrap(),
            1,
            "the old entry is gone"
        );
        assert!(store.outbox.scan_prefix([REPLACING]).next().is_none());
    }

    /// A message's content is kept apart from its record, in parts, and joined again when
    /// read: listings and index walks read small records only. Its parts go when it is
    /// sent; a record of an earlier version, content inline, is read whole and moved into
    /// parts by its next change.
    #[tokio::test]
    async fn content_is_kept_in_parts_apart_from_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let content = Sealed::from_stored("c".repeat(CONTENT_PART * 2 + 10));
        let mut queued = sample("m1", now);
        queued.content = Some(content.clone());
        store
            .queue_messages("b", std::slice::from_ref(&queued), None)
            .await
            .unwrap();
        let record = store.outbox.get(message_key("m1")).unwrap().unwrap();
        let stored: OutboxMessage = decode("m1", &record).unwrap();
        assert_eq!(stored.content, None, "the record holds no content");
        let parts = |store: &SledStore| store.outbox.scan_prefix(content_prefix("m1")).count();
        assert_eq!(parts(&store), 3);
        let mut small = sample("m9", now);
        small.content = Some(Sealed::from_stored("s".repeat(CONTENT_PART)));
        store
            .queue_messages("b9", std::slice::from_ref(&small), None)
            .await
            .unwrap();
        let record = store.outbox.get(message_key("m9")).unwrap().unwrap();
        let stored: OutboxMessage = decode("m9", &record).unwrap();
        assert_eq!(
            stored.content, small.content,
            "one part's worth stays in the record"
        );
        assert!(store
            .outbox
            .scan_prefix(content_prefix("m9"))
            .next()
            .is_none());
        let read = store.message("m1").await.unwrap().unwrap();
        assert_eq!(read.content.as_ref(), Some(&content));
        let due = store.due_messages(now, 10).await.unwrap();
        assert_eq!(due[0].content.as_ref(), Some(&content));

        // A change from a listing (no content) keeps it; sending drops it.
        let mut retrying = store.list_messages("acme", None, None, 10).await.unwrap()[0].clone();
        assert_eq!(retrying.content, None);
        retrying.state = MessageState::Retrying;
        retrying.version += 1;
        assert!(store.swap_message(0, &retrying, true).await.unwrap());
        let read = store.message("m1").await.unwrap().unwrap();
        assert_eq!(read.content.as_ref(), Some(&content));
        let mut sent = read.clone();
        sent.finish(crate::notify::Attempt::Sent, now, 0.0);
        sent.version += 1;
        assert!(store.swap_message(1, &sent, true).await.unwrap());
        assert_eq!(parts(&store), 0);
        assert_eq!(store.message("m1").await.unwrap().unwrap().content, None);

        // A record of an earlier version, with its content inline.
        let mut legacy = sample("m2", now);
        legacy.content = Some(content.clone());
        store
            .outbox
            .insert(message_key("m2"), encode(&legacy))
            .unwrap();
        for index in index_keys(&legacy) {
            store.outbox.insert(index, &[]).unwrap();
        }
        let read = store.message("m2").await.unwrap().unwrap();
        assert_eq!(read.content.as_ref(), Some(&content));
        let queued = store.list_messages("acme", Some(MessageState::Queued), None, 10);
        let mut retrying = queued.await.unwrap().remove(0);
        retrying.state = MessageState::Retrying;
        retrying.version += 1;
        assert!(store.swap_message(0, &retrying, true).await.unwrap());
        let record = store.outbox.get(message_key("m2")).unwrap().unwrap();
        assert_eq!(
            decode::<OutboxMessage>("m2", &record).unwrap().content,
            None
        );
        let read = store.message("m2").await.unwrap().unwrap();
        assert_eq!(read.content.as_ref(), Some(&content), "moved into parts");
        let listed = store.list_messages("acme", None, None, 10).await.unwrap();
        assert!(listed.iter().all(|m| m.content.is_none()));
    }

    /// A crash while one message was queued, after its content and before its record: the
    /// next open removes the parts.
    #[tokio::test]
    async fn content_a_crash_left_without_its_record_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let content = Sealed::from_stored("c".repeat(CONTENT_PART + 1));
        store.outbox.insert(store.replacing_key("m3"), &[]).unwrap();
        for (k, part) in content_parts("m3", &content) {
            store.outbox.insert(k, part).unwrap();
        }
        store.close().await.unwrap();

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        assert!(store.outbox.scan_prefix([CONTENT]).next().is_none());
        assert!(store.message("m3").await.unwrap().is_none());
    }

    /// A crash while one message was queued with plain writes: its record is there, its
    /// index entries are not. The next open writes them: the message was as good as queued.
    #[tokio::test]
    async fn a_message_whose_queuing_a_crash_interrupted_is_queued_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        store.outbox.insert(store.replacing_key("m2"), &[]).unwrap();
        store
            .outbox
            .insert(message_key("m2"), encode(&sample("m2", now)))
            .unwrap();
        assert!(store
            .list_messages("acme", None, None, 10)
            .await
            .unwrap()
            .is_empty());
        store.close().await.unwrap();

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        assert_eq!(
            store
                .list_messages("acme", None, None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        let queued = store.list_messages("acme", Some(MessageState::Queued), None, 10);
        assert_eq!(queued.await.unwrap().len(), 1);
        assert_eq!(store.due_messages(now, 10).await.unwrap().len(), 1);
    }

    /// A crash after the commit of a large batch, before its last chunk was queued: the
    /// next start queues the rest; a batch never committed is dropped.
    #[tokio::test]
    async fn a_batch_committed_but_not_wholly_queued_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let committed: Vec<_> = (0..2500)
            .map(|n| sample(&format!("c{n:05}"), now))
            .collect();
        store.stage_messages("committed", &committed).await.unwrap();
        let abandoned: Vec<_> = (0..10).map(|n| sample(&format!("a{n:05}"), now)).collect();
        store.stage_messages("abandoned", &abandoned).await.unwrap();
        // What commit_batch writes first, then one chunk of three.
        store
            .outbox
            .insert(commit_marker("committed"), &[])
            .unwrap();
        let (chunk, queued) = store.queue_chunk("committed").unwrap();
        assert_eq!(queued, QUEUE_CHUNK);
        store.outbox.apply_batch(chunk).unwrap();
        assert_eq!(store.pending_messages().await.unwrap(), QUEUE_CHUNK);

        assert_eq!(store.recover_batches(now).await.unwrap(), 2);
        assert_eq!(store.pending_messages().await.unwrap(), 2500);
        assert_eq!(store.all_messages(None, 5000).await.unwrap().len(), 2500);
        assert!(store.outbox.scan_prefix([COMMITTED]).next().is_none());
        assert!(store.outbox.scan_prefix([STAGED]).next().is_none());
    }

    /// An acknowledged write waited for a real sync of sled's files begun after it: for
    /// each of many concurrent writers, a group commit that began once its write was made
    /// had synced the files (its count moves only once `fdatasync` returned) before the
    /// writer was answered. And the writers shared commits: one sync per batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_acknowledged_write_waited_for_a_sync_begun_after_it() {
        const WRITERS: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path(), 16 << 20).unwrap());
        let before = store.commits();
        let all_ready = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|n| {
                let (store, all_ready) = (store.clone(), all_ready.clone());
                tokio::spawn(async move {
                    all_ready.wait().await;
                    store
                        .users
                        .insert(format!("user{n}"), b"written".as_slice())
                        .unwrap();
                    // Every commit that begins from now on began after the write.
                    let made = store.commits();
                    store.durable().await.unwrap();
                    let answered = store.commits();
                    assert!(
                        answered.synced > made.begun,
                        "writer {n} answered after {} synced commits; commit {} began after \
                         its write",
                        answered.synced,
                        made.begun + 1
                    );
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let after = store.commits();
        assert_eq!(after.begun, after.synced, "every commit ended synced");
        let commits = after.synced - before.synced;
        assert!(
            commits <= WRITERS as u64 / 2,
            "{commits} commits for {WRITERS} concurrent writers: group commit shares them"
        );
    }

    /// The notifier over `store`, as the server builds it.
    fn notifier_over(
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
            store,
            settings,
            clock,
            std::sync::Arc::new(tokio::sync::Notify::new()),
            crate::metrics::Metrics::new(),
        )
    }

    /// Start on a backlog reads no pending message's record: what the server runs at start
    /// on this store (recovery of batches, release of claims) walks index keys and reads
    /// only the records a dead process left claimed. It read every pending record, sealed
    /// content included, before (2,002 reads here): a large backlog ran each restart out
    /// of memory.
    #[tokio::test]
    async fn start_reads_only_the_records_a_crash_left_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        for chunk in 0..2 {
            let batch: Vec<_> = (0..1000)
                .map(|n| sample(&format!("p{chunk}{n:04}"), now))
                .collect();
            store
                .queue_messages(&format!("b{chunk}"), &batch, None)
                .await
                .unwrap();
        }
        // Claims on disk: a claim taken over once its lease ran out is written.
        for id in ["p00001", "p10001"] {
            let queued = store.message(id).await.unwrap().unwrap();
            let mut claimed = queued.clone();
            claimed.claim("dead", now, Duration::from_secs(60));
            claimed.version += 1;
            assert!(store
                .swap_message(queued.version, &claimed, true)
                .await
                .unwrap());
        }
        store
            .stage_messages("abandoned", &[sample("a1", now)])
            .await
            .unwrap();
        store.close().await.unwrap();

        let store = std::sync::Arc::new(SledStore::open(dir.path(), 16 << 20).unwrap());
        let notify = notifier_over(&store, dir.path(), now);
        assert_eq!(notify.recover_batches(now).await.unwrap(), 1);
        assert_eq!(notify.release_claims().await.unwrap(), 2);
        assert!(
            store.records_read() <= 4,
            "start read {} message records; only the 2 claimed ones (found, then replaced) \
             may be read",
            store.records_read()
        );
        let released = store.message("p10001").await.unwrap().unwrap();
        assert_eq!(released.due_at(), Some(now), "due again at once");
        assert_eq!(store.pending_messages().await.unwrap(), 2000);
        assert!(store.message("a1").await.unwrap().is_none());
    }

    /// A store written by an earlier version: tokens by id, a digest index, the login's
    /// list of ids, the purge index by id, all in JSON. Opening it moves them to the layout
    /// by digest.
    #[tokio::test]
    async fn tokens_of_the_layout_by_id_are_moved_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (first, second) = (
            token_sample("tok_1", "d1", "alice", now),
            token_sample("tok_2", "d2", "alice", now),
        );
        {
            let db = sled::open(dir.path().join("sled")).unwrap();
            let [tokens, digests, lists, purge] =
                TREES_BY_ID.map(|name| db.open_tree(name).unwrap());
            for t in [&first, &second] {
                tokens
                    .insert(t.id.as_bytes(), serde_json::to_vec(t).unwrap())
                    .unwrap();
                digests
                    .insert(t.digest.as_bytes(), t.id.as_bytes())
                    .unwrap();
                let mut k = time_key(t.purge_time()).to_vec();
                k.extend_from_slice(t.id.as_bytes());
                purge.insert(k, &[]).unwrap();
            }
            lists
                .insert("alice", serde_json::to_vec(&["tok_1", "tok_2"]).unwrap())
                .unwrap();
            db.flush().unwrap();
        }

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        assert_eq!(store.token_by_digest("d2").await.unwrap(), Some(second));
        let ids: Vec<String> = store
            .tokens_of("alice")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["tok_1", "tok_2"]);
        let names = store.db.tree_names();
        for old in TREES_BY_ID {
            assert!(!names.iter().any(|n| n == old.as_bytes()), "{old} dropped");
        }
        // Purged by digest in its time, from every tree.
        let later = first.purge_time() + Duration::from_secs(1);
        assert_eq!(store.purge_tokens(later, 10).await.unwrap(), 2);
        assert!(store.tokens_of("alice").await.unwrap().is_empty());
        assert!(store.login_tokens.is_empty());
        store.close().await.unwrap();

        // Opened again: nothing left to move.
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        assert_eq!(store.migrate_tokens_by_id().unwrap(), 0);
        store.close().await.unwrap();
    }

    /// A crash cut an issue after the login's list and before the token: the digest in
    /// the list leads nowhere; readers skip it and the login's next issue drops it.
    #[tokio::test]
    async fn a_digest_a_crash_left_in_a_login_s_list_is_skipped_then_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        store
            .login_tokens
            .insert("bob", encode(&vec!["never-written"]))
            .unwrap();
        assert!(store.tokens_of("bob").await.unwrap().is_empty());
        store
            .issue_token(&token_sample("tok_b", "db", "bob", now), now)
            .await
            .unwrap();
        assert_eq!(store.digests_of("bob").unwrap(), ["db"]);
        store.close().await.unwrap();
    }

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
