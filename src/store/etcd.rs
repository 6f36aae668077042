//! The shared store: etcd, for several mailroom replicas on one state (`--store etcd`).
//!
//! Every record lives under `--etcd-prefix` in the stores' encoding (`store::encode`), keyed
//! like the sled store's trees.
//! Operations that must be atomic are etcd transactions guarded by the `mod_revision` of
//! what they read (optimistic compare-and-swap, retried on conflict). Every etcd write is
//! durable (raft and fsync) before it answers.
//!
//! etcd limits a transaction to 128 operations (`--max-txn-ops`) and a request to 1.5 MiB,
//! so a large outbox batch cannot be queued in one transaction. Its messages are staged
//! first (`outbox/m/`, with a `outbox/b/<batch>/` entry listing the index keys that will
//! queue each); the commit is one transaction that turns the staging record
//! (`outbox/s/<batch>`) into a commit marker (`outbox/c/<batch>`) together with the
//! idempotency key, after which the index entries are written in chunks. A replica that
//! dies between the two leaves the marker, and [`Store::recover_batches`] on any replica
//! finishes the job; a batch never committed is dropped the same way. A small batch is
//! committed and queued in one transaction. An idempotency record of more than
//! [`IDS_INLINE`] messages keeps their ids apart (`outbox/ii/<batch>/`), written before the
//! commit and named by the record.
//!
//! The settings and API keys are watched: another replica's change reaches
//! [`Store::changes`] as it happens.
//!
//! The connection may be TLS (etcd's CA, a client certificate) and authenticated as an etcd
//! user: [`EtcdSecurity`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures_util::future::try_join_all;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tracing::Instrument;
use zeroize::Zeroizing;

use super::{
    decode, encode, state_name, time_key, After, Changed, Record, Result, Store, StoreError,
    TokenStore,
};
use crate::auth::ApiKey;
use crate::crypto::Sealed;
use crate::directory::User;
use crate::notify::{Idempotency, MessageState, OutboxMessage};
use crate::settings::SmtpSettings;
use crate::tokens::{Purpose, RateWindow, Token};

/// Operations per transaction: below etcd's default `--max-txn-ops` of 128.
const MAX_OPS: usize = 120;
/// Bytes of values per transaction: below etcd's default request limit of 1.5 MiB.
const MAX_BYTES: usize = 1024 * 1024;
/// Transactions of one batch written at once.
const PARALLEL_WRITES: usize = 4;
/// Messages a batch may hold to be committed and queued in one transaction.
const ONE_TXN_BATCH: usize = 32;
/// Optimistic transactions retried on conflict before giving up.
const CAS_ATTEMPTS: usize = 64;
/// Message ids an idempotency record holds itself; a larger batch's ids (100,000 are about
/// 3.3 MB, over etcd's request limit) are stored apart, in parts of this many.
const IDS_INLINE: usize = 1000;
/// What an idempotency record holds in place of ids stored apart, before the batch's name.
/// Message ids start with `msg_`.
const IDS_APART: &str = "@batch:";
/// Entries read at once when a sweep walks a prefix: one response may carry at most what
/// the client decodes (4 MiB), and an idempotency record up to about 33 KB.
const SCAN_PAGE: usize = 64;
/// The most one response of the key-value service may carry. tonic's default, 4 MiB, held
/// fewer than three messages near the size limit (a record of up to 1.5 MiB, etcd's request
/// limit): delivery's claim of 16 such messages, or a page of them listed, failed whole.
const RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Message records read in one transaction when a listing reads them (at most 48 MiB):
/// one group at a time, each message without its content once decoded.
const MESSAGES_READ: usize = 32;

/// How mailroom reaches etcd beyond its endpoints. The default, plain text and no user, is
/// etcd's own default: fit for an etcd that only this host can reach.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    /// Speak TLS to every endpoint.
    pub tls: Option<EtcdTls>,
    /// Authenticate as this user (etcd's `auth enable`).
    pub user: Option<EtcdUser>,
}

/// TLS to etcd.
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// PEM certificates of the CA that signed etcd's; `None`: the public web roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key shown to etcd (its `--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

/// An etcd user and its password.
#[derive(Clone)]
pub struct EtcdUser {
    /// The user's name.
    pub name: String,
    /// Its password.
    pub password: Zeroizing<String>,
}

impl EtcdSecurity {
    /// `options` with this TLS and user.
    fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = &self.tls {
            let config = match &tls.ca_pem {
                Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(ca)),
                None => {
                    TlsOptions::new().trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
                }
            };
            options = options.with_tls(match &tls.identity {
                Some((cert, key)) => config.identity(Identity::from_pem(cert, key.as_slice())),
                None => config,
            });
        }
        if let Some(user) = &self.user {
            // etcd forgets a token after 5 idle minutes (its --auth-token-ttl), when the
            // user's password is set, and across a restart from a snapshot: without a new
            // one on refusal, every request would fail until mailroom restarts.
            options = options
                .with_user(user.name.as_str(), user.password.as_str())
                .with_auto_token_refresh(true);
        }
        options
    }
}

/// The etcd store.
pub struct EtcdStore {
    kv: KvClient,
    prefix: String,
    changes: broadcast::Sender<Changed>,
    /// [`Store::watch_epoch`]: 0 while the watch is not established.
    epoch: Arc<AtomicU64>,
    watcher: tokio::task::JoinHandle<()>,
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` as `security` says, keeping state under
    /// `prefix`; every request fails after `timeout`. Must be called within a Tokio
    /// runtime: it starts the watch on the settings and API keys.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        security: &EtcdSecurity,
    ) -> Result<Self> {
        let options = security.apply(
            ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_timeout(timeout)
                .with_keep_alive(Duration::from_secs(10), timeout)
                // A member cut off from the leader answers nothing more: a watch on it would
                // stay open and silent while changes are missed.
                .with_require_leader(true),
        );
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let store_prefix = prefix.to_string();
        let (changes, _) = broadcast::channel(64);
        let epoch = Arc::new(AtomicU64::new(0));
        let watcher = tokio::spawn(
            watch_cached(
                client.clone(),
                store_prefix.clone(),
                changes.clone(),
                epoch.clone(),
            )
            .instrument(tracing::info_span!("etcd_watch")),
        );
        let store = Self {
            kv: client.kv_client().max_decoding_message_size(RESPONSE_BYTES),
            prefix: store_prefix,
            changes,
            epoch,
            watcher,
        };
        store.ping().await?;
        Ok(store)
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    fn message_key(&self, id: &str) -> String {
        self.key(&format!("outbox/m/{id}"))
    }

    fn staging_key(&self, batch: &str) -> String {
        self.key(&format!("outbox/s/{batch}"))
    }

    fn commit_marker(&self, batch: &str) -> String {
        self.key(&format!("outbox/c/{batch}"))
    }

    fn batch_prefix(&self, batch: &str) -> String {
        self.key(&format!("outbox/b/{batch}/"))
    }

    fn idempotency_key(&self, organisation: &str, key: &str) -> String {
        self.key(&format!("outbox/i/{organisation}\0{key}"))
    }

    /// Where the message ids of `batch` are stored apart from its idempotency record.
    fn ids_prefix(&self, batch: &str) -> String {
        self.key(&format!("outbox/ii/{batch}/"))
    }

    fn due_key(&self, message: &OutboxMessage) -> Option<String> {
        message.due_at().map(|due| {
            self.key(&format!(
                "outbox/q/{}{}",
                hex::encode(time_key(due)),
                message.id
            ))
        })
    }

    fn state_key(&self, message: &OutboxMessage) -> String {
        self.key(&format!(
            "outbox/t/{}\0{}\0{}",
            message.organisation,
            state_name(message.state),
            message.id
        ))
    }

    /// The index keys that queue `message`: by organisation, by state, by due time.
    fn index_keys(&self, message: &OutboxMessage) -> Vec<String> {
        let mut keys = vec![
            self.key(&format!(
                "outbox/o/{}\0{}",
                message.organisation, message.id
            )),
            self.state_key(message),
        ];
        keys.extend(self.due_key(message));
        keys
    }

    fn token_key(&self, id: &str) -> String {
        self.key(&format!("tokens/{id}"))
    }

    fn login_tokens_key(&self, login: &str) -> String {
        self.key(&format!("login_tokens/{login}"))
    }

    fn member_key(&self, organisation: &str, login: &str) -> String {
        self.key(&format!("members/{organisation}\0{login}"))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut response = self.kv.clone().get(key, None).await.map_err(unavailable)?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// How many keys start with `prefix` (etcd counts them; nothing is read).
    async fn count_prefix(&self, prefix: String) -> Result<u64> {
        let options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_count_only();
        let response = self
            .kv
            .clone()
            .get(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }

    /// Changes the window record `key` (a rate window, a quota tally) by compare-and-swap,
    /// unless `change` refuses: then how long until it would not.
    async fn update_window<W: Record + DeserializeOwned + Default>(
        &self,
        key: &str,
        change: impl Fn(&mut W) -> std::result::Result<(), Duration>,
    ) -> Result<Option<Duration>> {
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.read::<W>(key).await?;
            let rev = stored.as_ref().map(|(_, rev)| *rev);
            let mut window = stored.map(|(w, _)| w).unwrap_or_default();
            if let Err(wait) = change(&mut window) {
                return Ok(Some(wait));
            }
            let txn = Txn::new()
                .when([unchanged(key, rev)])
                .and_then([put(key, encode(&window))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(None);
            }
        }
        Err(contention("a rate limit or quota"))
    }

    /// A record and the revision it was last written at (for a compare-and-swap).
    async fn read<T: Record + DeserializeOwned>(&self, key: &str) -> Result<Option<(T, i64)>> {
        self.get(key)
            .await?
            .map(|kv| Ok((decode(key, kv.value())?, kv.mod_revision())))
            .transpose()
    }

    /// The entries under `prefix` after `prefix` + `after` (exclusive), at most `limit`
    /// (0: all), in key order.
    async fn range(&self, prefix: &str, after: After<'_>, limit: usize) -> Result<Vec<KeyValue>> {
        let start = match after {
            Some(after) => format!("{prefix}{after}\0"),
            None => prefix.to_string(),
        };
        self.range_to(&start, prefix_end(prefix), limit).await
    }

    async fn range_to(&self, start: &str, end: Vec<u8>, limit: usize) -> Result<Vec<KeyValue>> {
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut response = self
            .kv
            .clone()
            .get(start, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(response.take_kvs())
    }

    /// Several keys read at once, in order; `None` for those absent.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let reads = keys.chunks(MAX_OPS).map(|chunk| async move {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let response = self.txn(Txn::new().and_then(ops)).await?;
            Ok::<_, StoreError>(
                response
                    .op_responses()
                    .into_iter()
                    .map(|r| match r {
                        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
        });
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    /// Records whose keys end in the ids of `index` entries (after `skip` bytes of key).
    async fn records_of<T: Record + DeserializeOwned>(
        &self,
        index: &[KeyValue],
        skip: usize,
        record_key: impl Fn(&str) -> String,
    ) -> Result<Vec<(T, i64)>> {
        let keys: Vec<String> = index
            .iter()
            .map(|kv| record_key(&String::from_utf8_lossy(&kv.key()[skip..])))
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        for (key, kv) in keys.iter().zip(self.get_many(&keys).await?) {
            if let Some(kv) = kv {
                records.push((decode(key, kv.value())?, kv.mod_revision()));
            }
        }
        Ok(records)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.kv.clone().txn(txn).await.map_err(unavailable)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.kv
            .clone()
            .put(key, value, None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Runs the operations in transactions of at most [`MAX_OPS`] operations and
    /// [`MAX_BYTES`], a few at once. Not atomic as a whole.
    async fn write_chunked(&self, ops: Vec<(TxnOp, usize)>) -> Result<()> {
        let mut chunks: Vec<Vec<TxnOp>> = vec![Vec::new()];
        let mut bytes = 0;
        for (op, size) in ops {
            let current = chunks.last_mut().expect("one chunk at least");
            if current.len() == MAX_OPS || (bytes + size > MAX_BYTES && !current.is_empty()) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            chunks.last_mut().expect("one chunk at least").push(op);
        }
        for group in chunks.chunks(PARALLEL_WRITES) {
            let writes = group
                .iter()
                .filter(|ops| !ops.is_empty())
                .map(|ops| self.txn(Txn::new().and_then(ops.clone())));
            try_join_all(writes).await?;
        }
        Ok(())
    }

    /// Writes the index entries of a committed batch, chunk by chunk, then its marker.
    /// Each chunk removes the staging entries it queued, guarded by their revisions, so
    /// that two replicas finishing the same batch never queue a message twice.
    async fn queue_committed(&self, batch: &str) -> Result<()> {
        let prefix = self.batch_prefix(batch);
        let per_txn = MAX_OPS / 4;
        loop {
            let staged = self.range(&prefix, None, per_txn * PARALLEL_WRITES).await?;
            if staged.is_empty() {
                break;
            }
            let writes = staged.chunks(per_txn).map(|chunk| async move {
                let mut compares = Vec::with_capacity(chunk.len());
                let mut ops = Vec::with_capacity(chunk.len() * 4);
                for entry in chunk {
                    compares.push(Compare::mod_revision(
                        entry.key(),
                        CompareOp::Equal,
                        entry.mod_revision(),
                    ));
                    let keys: Vec<String> =
                        decode(&String::from_utf8_lossy(entry.key()), entry.value())?;
                    ops.extend(keys.into_iter().map(|k| TxnOp::put(k, Vec::new(), None)));
                    ops.push(TxnOp::delete(entry.key(), None));
                }
                self.txn(Txn::new().when(compares).and_then(ops)).await
            });
            try_join_all(writes).await?;
        }
        self.txn(Txn::new().and_then([TxnOp::delete(self.commit_marker(batch), None)]))
            .await?;
        Ok(())
    }

    /// Deletes `entries`, each if still at the revision read, with the keys that go with it.
    async fn delete_unchanged(&self, entries: Vec<StaleEntry>) -> Result<usize> {
        let mut deleted = 0;
        // Two operations at the most for each: the entry and what goes with it.
        for chunk in entries.chunks(MAX_OPS / 2) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|e| Compare::mod_revision(e.key.clone(), CompareOp::Equal, e.revision))
                .collect();
            let mut ops = Vec::with_capacity(chunk.len() * 2);
            for e in chunk {
                ops.push(TxnOp::delete(e.key.clone(), None));
                if let Some(prefix) = &e.with_prefix {
                    ops.push(delete_prefix(prefix));
                }
            }
            if self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded()
            {
                deleted += chunk.len();
            }
        }
        Ok(deleted)
    }

    /// The idempotency record to commit for `batch`: `record` itself, or, when its ids are
    /// too many for one etcd request, a record naming the batch, once the ids are written
    /// apart (under the batch's name: two requests racing with one key never mix them).
    async fn ids_apart(&self, batch: &str, record: &Idempotency) -> Result<Idempotency> {
        let ids = &record.queued.message_ids;
        if ids.len() <= IDS_INLINE {
            return Ok(record.clone());
        }
        let prefix = self.ids_prefix(batch);
        let parts = ids
            .chunks(IDS_INLINE)
            .enumerate()
            .map(|(n, part)| {
                let value = encode(&part);
                let size = value.len();
                (put(format!("{prefix}{n:08}"), value), size)
            })
            .collect();
        self.write_chunked(parts).await?;
        let mut pointer = record.clone();
        pointer.queued.message_ids = vec![format!("{IDS_APART}{batch}")];
        Ok(pointer)
    }

    /// `record` with its ids, read back if they are stored apart.
    async fn with_ids(&self, mut record: Idempotency) -> Result<Idempotency> {
        let Some(batch) = apart(&record) else {
            return Ok(record);
        };
        let prefix = self.ids_prefix(&batch);
        let mut ids = Vec::with_capacity(record.queued.recipients as usize);
        let mut after = None;
        loop {
            let parts = self.next_page(&prefix, &mut after).await?;
            if parts.is_empty() {
                record.queued.message_ids = ids;
                return Ok(record);
            }
            for part in &parts {
                let key = String::from_utf8_lossy(part.key());
                ids.extend(decode::<Vec<String>>(&key, part.value())?);
            }
        }
    }

    /// The next [`SCAN_PAGE`] entries under `prefix` after `after`, which moves to the last
    /// of them; empty at the end.
    async fn next_page(&self, prefix: &str, after: &mut Option<String>) -> Result<Vec<KeyValue>> {
        let page = self.range(prefix, after.as_deref(), SCAN_PAGE).await?;
        if let Some(last) = page.last() {
            *after = Some(String::from_utf8_lossy(&last.key()[prefix.len()..]).into_owned());
        }
        Ok(page)
    }

    /// Walks the entries under `prefix` a page at a time and deletes those `verdict`
    /// finds stale, each if unchanged since it was read and in one transaction with the
    /// keys that go with it. How many entries it deleted.
    async fn sweep(
        &self,
        prefix: &str,
        mut verdict: impl FnMut(&KeyValue) -> Result<Verdict>,
    ) -> Result<usize> {
        let (mut after, mut deleted) = (None, 0);
        loop {
            let page = self.next_page(prefix, &mut after).await?;
            if page.is_empty() {
                return Ok(deleted);
            }
            let mut old = Vec::new();
            for kv in page {
                if let Verdict::Stale { with_prefix } = verdict(&kv)? {
                    old.push(StaleEntry {
                        key: kv.key().to_vec(),
                        revision: kv.mod_revision(),
                        with_prefix,
                    });
                }
            }
            deleted += self.delete_unchanged(old).await?;
        }
    }

    /// Deletes the ids of `batch` stored apart, if any.
    async fn forget_ids(&self, batch: &str) -> Result<()> {
        let prefix = self.ids_prefix(batch);
        self.txn(Txn::new().and_then([delete_prefix(&prefix)]))
            .await?;
        Ok(())
    }
}

/// Deletes every key under `prefix`.
fn delete_prefix(prefix: &str) -> TxnOp {
    TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
}

/// What a sweep does with an entry.
enum Verdict {
    Keep,
    /// Delete it, and the keys under `with_prefix` with it.
    Stale {
        with_prefix: Option<String>,
    },
}

/// An entry a sweep deletes, if still at `revision`, with the keys under `with_prefix`.
struct StaleEntry {
    key: Vec<u8>,
    revision: i64,
    with_prefix: Option<String>,
}

/// The batch whose ids `record` names in their place, if it does.
fn apart(record: &Idempotency) -> Option<String> {
    match record.queued.message_ids.as_slice() {
        [only] => only.strip_prefix(IDS_APART).map(str::to_string),
        _ => None,
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A compare that holds while the key is as read: at `revision`, or still absent.
fn unchanged(key: &str, revision: Option<i64>) -> Compare {
    match revision {
        Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    }
}

fn put(key: impl Into<Vec<u8>>, value: Vec<u8>) -> TxnOp {
    TxnOp::put(key, value, None)
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn contention(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} kept changing under {CAS_ATTEMPTS} attempts to update it"
    ))
}

/// Time as 16 hex digits: sorts like the time.
fn hex_time(t: SystemTime) -> String {
    hex::encode(time_key(t))
}

fn time_of_hex(hex_time: &[u8]) -> Option<SystemTime> {
    let mut bytes = [0u8; 8];
    hex::decode_to_slice(hex_time.get(..16)?, &mut bytes).ok()?;
    Some(super::time_from_key(bytes))
}

/// Follows changes to the settings and the API keys into `changes`. After a broken watch,
/// reports both as changed once it watches again (changes in between were missed).
/// `epoch` is 0 until etcd confirmed both watches, and from then a number no earlier
/// watch had: what was cached under another epoch may have missed a change.
async fn watch_cached(
    mut client: Client,
    prefix: String,
    changes: broadcast::Sender<Changed>,
    epoch: Arc<AtomicU64>,
) {
    let settings = format!("{prefix}meta/smtp_settings");
    let keys = format!("{prefix}keys/");
    let mut resumed = false;
    let mut watches: u64 = 0;
    loop {
        epoch.store(0, Ordering::Release);
        let watched = async {
            let mut stream = client.watch(settings.as_str(), None).await?;
            stream
                .watch(keys.as_str(), Some(WatchOptions::new().with_prefix()))
                .await?;
            Ok::<_, etcd_client::Error>(stream)
        }
        .await;
        let mut stream = match watched {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch etcd; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if resumed {
            let _ = changes.send(Changed::SmtpSettings);
            let _ = changes.send(Changed::ApiKeys);
        }
        resumed = true;
        // The stream opens before etcd creates the watches: until both are confirmed, a
        // change could still be missed.
        let mut created = 0;
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    // etcd refuses a watch (an expired auth token, a compacted revision)
                    // with a response both created and canceled: the watch is then gone.
                    if response.canceled() {
                        tracing::warn!(reason = %response.cancel_reason(), "etcd cancelled the watch; watching again");
                        break;
                    }
                    if response.created() {
                        created += 1;
                        if created == 2 {
                            watches += 1;
                            epoch.store(watches, Ordering::Release);
                        }
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let change = if kv.key().starts_with(keys.as_bytes()) {
                            Changed::ApiKeys
                        } else {
                            Changed::SmtpSettings
                        };
                        let _ = changes.send(change);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the etcd watch broke; watching again");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn exclusive(&self) -> bool {
        false
    }

    fn changes(&self) -> Option<broadcast::Receiver<Changed>> {
        Some(self.changes.subscribe())
    }

    fn watch_epoch(&self) -> Option<u64> {
        match self.epoch.load(Ordering::Acquire) {
            0 => None,
            epoch => Some(epoch),
        }
    }

    async fn ping(&self) -> Result<()> {
        let options = GetOptions::new().with_keys_only();
        self.kv
            .clone()
            .get(self.key("meta/key_check"), Some(options))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn key_check(&self) -> Result<Option<Sealed>> {
        Ok(self
            .read(&self.key("meta/key_check"))
            .await?
            .map(|(v, _)| v))
    }

    async fn set_key_check(&self, sealed: &Sealed) -> Result<()> {
        self.put(&self.key("meta/key_check"), encode(sealed)).await
    }

    async fn smtp_settings(&self) -> Result<Option<SmtpSettings>> {
        Ok(self
            .read(&self.key("meta/smtp_settings"))
            .await?
            .map(|(v, _)| v))
    }

    async fn swap_smtp_settings(&self, expected: u64, settings: &SmtpSettings) -> Result<bool> {
        let key = self.key("meta/smtp_settings");
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

    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> Result<bool> {
        let bootstrapped = self.key("meta/bootstrapped");
        let compares = if only_if_first {
            vec![unchanged(&bootstrapped, None)]
        } else {
            Vec::new()
        };
        let txn = Txn::new().when(compares).and_then([
            put(bootstrapped, b"1".to_vec()),
            put(self.key(&format!("keys/{}", key.id)), encode(key)),
            put(
                self.key(&format!("key_digests/{}", key.secret_digest)),
                key.id.clone().into_bytes(),
            ),
        ]);
        Ok(self.txn(txn).await?.succeeded())
    }

    async fn api_key_by_digest(&self, digest: &str) -> Result<Option<ApiKey>> {
        let Some(id) = self
            .get(&self.key(&format!("key_digests/{digest}")))
            .await?
        else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(id.value()).into_owned();
        Ok(self
            .read(&self.key(&format!("keys/{id}")))
            .await?
            .map(|(k, _)| k))
    }

    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> Result<Vec<ApiKey>> {
        self.range(&self.key("keys/"), after, limit)
            .await?
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    async fn revoke_api_key(&self, id: &str, organisation: Option<&str>) -> Result<Option<ApiKey>> {
        let key = self.key(&format!("keys/{id}"));
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut api_key, rev)) = self.read::<ApiKey>(&key).await? else {
                return Ok(None);
            };
            // A key's organisation never changes: checked once read.
            if organisation.is_some_and(|o| o != api_key.organisation) {
                return Ok(None);
            }
            api_key.revoked = true;
            let txn = Txn::new()
                .when([unchanged(&key, Some(rev))])
                .and_then([put(key.as_str(), encode(&api_key))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(Some(api_key));
            }
        }
        Err(contention("the API key"))
    }

    async fn put_user(&self, user: &User) -> Result<()> {
        let key = self.key(&format!("users/{}", user.login));
        for _ in 0..CAS_ATTEMPTS {
            let old = self.read::<User>(&key).await?;
            // One operation per key: etcd refuses a transaction that names a key twice.
            let before: &[String] = old.as_ref().map_or(&[], |(u, _)| &u.organisations);
            let mut ops: Vec<TxnOp> = before
                .iter()
                .filter(|o| !user.organisations.contains(o))
                .map(|o| TxnOp::delete(self.member_key(o, &user.login), None))
                .collect();
            for organisation in &user.organisations {
                ops.push(put(self.member_key(organisation, &user.login), Vec::new()));
            }
            ops.push(put(key.as_str(), encode(user)));
            let txn = Txn::new()
                .when([unchanged(&key, old.map(|(_, rev)| rev))])
                .and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(());
            }
        }
        Err(contention("the user"))
    }

    async fn user(&self, login: &str) -> Result<Option<User>> {
        Ok(self
            .read(&self.key(&format!("users/{login}")))
            .await?
            .map(|(u, _)| u))
    }

    async fn delete_user(&self, login: &str) -> Result<Option<User>> {
        let key = self.key(&format!("users/{login}"));
        for _ in 0..CAS_ATTEMPTS {
            let Some((old, rev)) = self.read::<User>(&key).await? else {
                return Ok(None);
            };
            let mut ops: Vec<TxnOp> = old
                .organisations
                .iter()
                .map(|organisation| TxnOp::delete(self.member_key(organisation, login), None))
                .collect();
            ops.push(TxnOp::delete(key.as_str(), None));
            let txn = Txn::new().when([unchanged(&key, Some(rev))]).and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(Some(old));
            }
        }
        Err(contention("the user"))
    }

    async fn list_users(
        &self,
        organisation: &str,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<User>> {
        let prefix = self.member_key(organisation, "");
        let members = self.range(&prefix, after, limit).await?;
        let users = self
            .records_of(&members, prefix.len(), |login| {
                self.key(&format!("users/{login}"))
            })
            .await?;
        Ok(users.into_iter().map(|(u, _)| u).collect())
    }

    async fn stage_messages(&self, batch: &str, messages: &[OutboxMessage]) -> Result<()> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        let staging = self.staging_key(batch);
        let prefix = self.batch_prefix(batch);
        self.put(&staging, hex_time(first.create_time).into_bytes())
            .await?;
        let mut ops = Vec::with_capacity(messages.len() * 2);
        for message in messages {
            let value = encode(message);
            let size = value.len();
            ops.push((put(self.message_key(&message.id), value), size));
            let keys = encode(&self.index_keys(message));
            let size = keys.len();
            ops.push((put(format!("{prefix}{}", message.id), keys), size));
        }
        self.write_chunked(ops).await
    }

    async fn commit_batch(
        &self,
        batch: &str,
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let staging = self.staging_key(batch);
        let idempotency_key = idempotency.map(|k| self.idempotency_key(&k.organisation, &k.key));
        let staged = self
            .range(&self.batch_prefix(batch), None, ONE_TXN_BATCH + 1)
            .await?;
        if staged.is_empty() {
            // Dropped as abandoned (or never staged): a transaction with nothing to queue
            // would succeed, and the request acknowledge mail that does not exist.
            return Err(super::batch_gone(batch));
        }
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        if let (Some(key), Some(record)) = (&idempotency_key, idempotency) {
            compares.push(unchanged(key, None));
            ops.push(put(
                key.as_str(),
                encode(&self.ids_apart(batch, record).await?),
            ));
        }
        let in_one = staged.len() <= ONE_TXN_BATCH;
        // Dropped between the read above and this transaction: the staging key is gone.
        compares.push(Compare::create_revision(
            staging.as_str(),
            CompareOp::Greater,
            0,
        ));
        ops.push(TxnOp::delete(staging.as_str(), None));
        if in_one {
            for entry in &staged {
                let keys: Vec<String> =
                    decode(&String::from_utf8_lossy(entry.key()), entry.value())?;
                ops.extend(keys.into_iter().map(|k| put(k, Vec::new())));
            }
            ops.push(delete_prefix(&self.batch_prefix(batch)));
        } else {
            let started = self.get(&staging).await?.map(|kv| kv.value().to_vec());
            ops.push(put(self.commit_marker(batch), started.unwrap_or_default()));
        }
        let mut otherwise = Vec::new();
        if let Some(key) = &idempotency_key {
            otherwise.push(TxnOp::get(key.as_str(), None));
        }
        let response = self
            .txn(Txn::new().when(compares).and_then(ops).or_else(otherwise))
            .await?;
        if !response.succeeded() {
            let first = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                _ => None,
            });
            return match first {
                Some(kv) => {
                    let first = decode(&String::from_utf8_lossy(kv.key()), kv.value())?;
                    self.discard_batch(batch).await?;
                    Ok(Some(self.with_ids(first).await?))
                }
                None => {
                    self.forget_ids(batch).await?;
                    Err(super::batch_gone(batch))
                }
            };
        }
        if !in_one {
            self.queue_committed(batch).await?;
        }
        Ok(None)
    }

    async fn queue_messages(
        &self,
        batch: &str,
        messages: &[OutboxMessage],
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let values: Vec<Vec<u8>> = messages.iter().map(encode).collect();
        let bytes: usize = values.iter().map(Vec::len).sum();
        if messages.len() * 4 + 1 > MAX_OPS || bytes > MAX_BYTES {
            return super::stage_and_commit(self, batch, messages, idempotency).await;
        }
        let mut ops = Vec::with_capacity(messages.len() * 4 + 1);
        for (message, value) in messages.iter().zip(values) {
            ops.push(put(self.message_key(&message.id), value));
            ops.extend(
                self.index_keys(message)
                    .into_iter()
                    .map(|k| put(k, Vec::new())),
            );
        }
        let Some(record) = idempotency else {
            self.txn(Txn::new().and_then(ops)).await?;
            return Ok(None);
        };
        let key = self.idempotency_key(&record.organisation, &record.key);
        ops.push(put(key.as_str(), encode(record)));
        let txn = Txn::new()
            .when([unchanged(&key, None)])
            .and_then(ops)
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(None);
        }
        self.idempotency(&record.organisation, &record.key).await
    }

    async fn discard_batch(&self, batch: &str) -> Result<()> {
        let staging = self.staging_key(batch);
        self.txn(Txn::new().and_then([TxnOp::delete(staging.as_str(), None)]))
            .await?;
        self.forget_ids(batch).await?;
        let prefix = self.batch_prefix(batch);
        loop {
            let staged = self.range(&prefix, None, MAX_OPS * 8).await?;
            if staged.is_empty() {
                return Ok(());
            }
            let ops = staged
                .iter()
                .flat_map(|entry| {
                    let id = String::from_utf8_lossy(&entry.key()[prefix.len()..]).into_owned();
                    [
                        (TxnOp::delete(self.message_key(&id), None), 0),
                        (TxnOp::delete(entry.key(), None), 0),
                    ]
                })
                .collect();
            self.write_chunked(ops).await?;
        }
    }

    async fn recover_batches(&self, before: SystemTime) -> Result<usize> {
        let started_before = |kv: &KeyValue| time_of_hex(kv.value()).is_none_or(|t| t < before);
        let mut recovered = 0;
        let staging = self.key("outbox/s/");
        for kv in self.range(&staging, None, 0).await? {
            if started_before(&kv) {
                let batch = String::from_utf8_lossy(&kv.key()[staging.len()..]).into_owned();
                self.discard_batch(&batch).await?;
                recovered += 1;
            }
        }
        let committed = self.key("outbox/c/");
        for kv in self.range(&committed, None, 0).await? {
            if started_before(&kv) {
                let batch = String::from_utf8_lossy(&kv.key()[committed.len()..]).into_owned();
                self.queue_committed(&batch).await?;
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    async fn purge_idempotency(&self, before: SystemTime) -> Result<usize> {
        // A record goes with the ids it keeps apart, in one transaction: a crash between
        // the two would leave ids nothing names.
        self.sweep(&self.key("outbox/i/"), |kv| {
            let record: Idempotency = decode("idempotency", kv.value())?;
            Ok(if record.create_time < before {
                Verdict::Stale {
                    with_prefix: apart(&record).map(|batch| self.ids_prefix(&batch)),
                }
            } else {
                Verdict::Keep
            })
        })
        .await
    }

    async fn remove_message(&self, expected: u64, id: &str) -> Result<bool> {
        let key = self.message_key(id);
        let Some((stored, rev)) = self.read::<OutboxMessage>(&key).await? else {
            return Ok(false);
        };
        if stored.version != expected {
            return Ok(false);
        }
        let mut ops: Vec<TxnOp> = self
            .index_keys(&stored)
            .into_iter()
            .map(|k| TxnOp::delete(k, None))
            .collect();
        ops.push(TxnOp::delete(key.as_str(), None));
        let txn = Txn::new().when([unchanged(&key, Some(rev))]).and_then(ops);
        Ok(self.txn(txn).await?.succeeded())
    }

    async fn idempotency(&self, organisation: &str, key: &str) -> Result<Option<Idempotency>> {
        match self.read(&self.idempotency_key(organisation, key)).await? {
            Some((record, _)) => Ok(Some(self.with_ids(record).await?)),
            None => Ok(None),
        }
    }

    async fn message(&self, id: &str) -> Result<Option<OutboxMessage>> {
        Ok(self.read(&self.message_key(id)).await?.map(|(m, _)| m))
    }

    async fn swap_message(
        &self,
        expected: u64,
        message: &OutboxMessage,
        _durable: bool,
    ) -> Result<bool> {
        let key = self.message_key(&message.id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((stored, rev)) = self.read::<OutboxMessage>(&key).await? else {
                return Ok(false);
            };
            if stored.version != expected {
                return Ok(false);
            }
            let mut ops = Vec::new();
            let (old_due, new_due) = (self.due_key(&stored), self.due_key(message));
            if old_due != new_due {
                ops.extend(old_due.map(|k| TxnOp::delete(k, None)));
                ops.extend(new_due.map(|k| put(k, Vec::new())));
            }
            if stored.state != message.state {
                ops.push(TxnOp::delete(self.state_key(&stored), None));
                ops.push(put(self.state_key(message), Vec::new()));
            }
            ops.push(put(key.as_str(), encode(message)));
            let txn = Txn::new().when([unchanged(&key, Some(rev))]).and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(contention("the message"))
    }

    async fn due_messages(&self, now: SystemTime, limit: usize) -> Result<Vec<OutboxMessage>> {
        let prefix = self.key("outbox/q/");
        let end = format!("{prefix}{}", hex_time(now + Duration::from_micros(1)));
        let entries = self.range_to(&prefix, end.into_bytes(), limit).await?;
        let skip = prefix.len() + 16;
        let keys: Vec<String> = entries
            .iter()
            .map(|kv| self.message_key(&String::from_utf8_lossy(&kv.key()[skip..])))
            .collect();
        let mut due = Vec::with_capacity(entries.len());
        for ((entry, key), record) in entries.iter().zip(&keys).zip(self.get_many(&keys).await?) {
            let record = match record {
                Some(record) => {
                    let message: OutboxMessage = decode(key, record.value())?;
                    if self.due_key(&message).as_deref().map(str::as_bytes) == Some(entry.key()) {
                        due.push(message);
                        continue;
                    }
                    Some(record.mod_revision())
                }
                None => None,
            };
            // An entry that no longer matches its message (queued again by a recovering
            // replica after the message moved on) is dropped, not followed.
            let txn = Txn::new()
                .when([unchanged(key, record)])
                .and_then([TxnOp::delete(entry.key(), None)]);
            self.txn(txn).await?;
        }
        Ok(due)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>> {
        let prefix = self.key("outbox/q/");
        let first = self.range(&prefix, None, 1).await?;
        Ok(first
            .first()
            .and_then(|kv| time_of_hex(&kv.key()[prefix.len()..])))
    }

    /// The keys first, then the records a group at a time (as [`Store::list_messages`]):
    /// one response of 500 messages near the size limit would be 700 MB.
    async fn all_messages(&self, after: After<'_>, limit: usize) -> Result<Vec<OutboxMessage>> {
        let prefix = self.key("outbox/m/");
        let start = match after {
            Some(after) => format!("{prefix}{after}\0"),
            None => prefix.clone(),
        };
        let options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_keys_only();
        let keys = self
            .kv
            .clone()
            .get(start, Some(options))
            .await
            .map_err(unavailable)?
            .take_kvs();
        let mut messages = Vec::with_capacity(keys.len());
        for group in keys.chunks(MESSAGES_READ) {
            let records = self
                .records_of::<OutboxMessage>(group, prefix.len(), |id| self.message_key(id))
                .await?;
            messages.extend(
                records
                    .into_iter()
                    .map(|(m, _)| OutboxMessage { content: None, ..m }),
            );
        }
        Ok(messages)
    }

    async fn pending_of(&self, organisation: &str, _at_most: u64) -> Result<u64> {
        // etcd counts a range for us: three requests, whatever the backlog.
        let counts = [
            MessageState::Queued,
            MessageState::Retrying,
            MessageState::Sending,
        ]
        .map(|state| {
            let prefix = self.key(&format!("outbox/t/{organisation}\0{}\0", state_name(state)));
            self.count_prefix(prefix)
        });
        Ok(try_join_all(counts).await?.into_iter().sum())
    }

    async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<Duration>> {
        let key = self.key(&format!("quota_tallies/{key}"));
        self.update_window(&key, |tally: &mut crate::notify::Tally| {
            tally.add(now, window, amount, limit)
        })
        .await
    }

    async fn pending_messages(&self) -> Result<usize> {
        let count = self.count_prefix(self.key("outbox/q/")).await?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let prefix = match state {
            Some(state) => self.key(&format!("outbox/t/{organisation}\0{}\0", state_name(state))),
            None => self.key(&format!("outbox/o/{organisation}\0")),
        };
        let entries = self.range(&prefix, after, limit).await?;
        let mut messages = Vec::with_capacity(entries.len());
        // A group of records at a time, each dropping its content as it is decoded: a page
        // of a thousand messages near the size limit is 1.4 GB with their contents.
        for group in entries.chunks(MESSAGES_READ) {
            let records = self
                .records_of::<OutboxMessage>(group, prefix.len(), |id| self.message_key(id))
                .await?;
            messages.extend(
                records
                    .into_iter()
                    .map(|(m, _)| OutboxMessage { content: None, ..m })
                    .filter(|m| state.is_none_or(|s| m.state == s)),
            );
        }
        Ok(messages)
    }
}

impl EtcdStore {
    /// The login's token ids and tokens, with the revisions read.
    async fn login_tokens(
        &self,
        login: &str,
    ) -> Result<(Vec<String>, Option<i64>, Vec<(Token, i64)>)> {
        let key = self.login_tokens_key(login);
        let (ids, rev) = match self.read::<Vec<String>>(&key).await? {
            Some((ids, rev)) => (ids, Some(rev)),
            None => (Vec::new(), None),
        };
        let keys: Vec<String> = ids.iter().map(|id| self.token_key(id)).collect();
        let mut tokens = Vec::with_capacity(ids.len());
        for (key, kv) in keys.iter().zip(self.get_many(&keys).await?) {
            if let Some(kv) = kv {
                tokens.push((decode(key, kv.value())?, kv.mod_revision()));
            }
        }
        Ok((ids, rev, tokens))
    }

    /// Revokes, in one transaction with `extra`, the login's tokens active at `now` that
    /// `matches`; retried while they change. How many it revoked.
    async fn revoke_where(
        &self,
        login: &str,
        now: SystemTime,
        matches: impl Fn(&Token) -> bool,
        extra: impl Fn(Vec<String>) -> Vec<TxnOp>,
    ) -> Result<u32> {
        let list = self.login_tokens_key(login);
        for _ in 0..CAS_ATTEMPTS {
            let (ids, list_rev, tokens) = self.login_tokens(login).await?;
            let mut compares = vec![unchanged(&list, list_rev)];
            let mut ops = extra(ids);
            let mut revoked = 0;
            for (mut token, rev) in tokens {
                if matches(&token) && token.revoke(now) {
                    let key = self.token_key(&token.id);
                    compares.push(unchanged(&key, Some(rev)));
                    ops.push(put(key, encode(&token)));
                    revoked += 1;
                }
            }
            if ops.is_empty() {
                return Ok(0);
            }
            if self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(revoked);
            }
        }
        Err(contention("the login's tokens"))
    }
}

#[async_trait]
impl TokenStore for EtcdStore {
    async fn issue_token(&self, token: &Token, now: SystemTime) -> Result<u32> {
        let list = self.login_tokens_key(&token.login);
        self.revoke_where(
            &token.login,
            now,
            |t| t.purpose == token.purpose && t.organisation == token.organisation,
            |mut ids| {
                ids.push(token.id.clone());
                vec![
                    put(self.token_key(&token.id), encode(token)),
                    put(
                        self.key(&format!("token_digests/{}", token.digest)),
                        token.id.clone().into_bytes(),
                    ),
                    put(
                        self.key(&format!(
                            "token_purge/{}{}",
                            hex_time(token.purge_time()),
                            token.id
                        )),
                        Vec::new(),
                    ),
                    put(list.as_str(), encode(&ids)),
                ]
            },
        )
        .await
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<Token>> {
        let Some(id) = self
            .get(&self.key(&format!("token_digests/{digest}")))
            .await?
        else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(id.value()).into_owned();
        Ok(self.read(&self.token_key(&id)).await?.map(|(t, _)| t))
    }

    async fn swap_token(&self, expected: u64, token: &Token) -> Result<bool> {
        let key = self.token_key(&token.id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((stored, rev)) = self.read::<Token>(&key).await? else {
                return Ok(false);
            };
            if stored.version != expected {
                return Ok(false);
            }
            let txn = Txn::new()
                .when([unchanged(&key, Some(rev))])
                .and_then([put(key.as_str(), encode(token))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(contention("the token"))
    }

    async fn tokens_of(&self, login: &str) -> Result<Vec<Token>> {
        let (_, _, tokens) = self.login_tokens(login).await?;
        Ok(tokens.into_iter().map(|(t, _)| t).collect())
    }

    async fn revoke_tokens(
        &self,
        login: &str,
        purpose: Option<Purpose>,
        organisation: Option<&str>,
        now: SystemTime,
    ) -> Result<u32> {
        self.revoke_where(
            login,
            now,
            |t| {
                purpose.is_none_or(|p| t.purpose == p)
                    && organisation.is_none_or(|o| t.organisation == o)
            },
            |_| Vec::new(),
        )
        .await
    }

    async fn purge_tokens(&self, now: SystemTime, limit: usize) -> Result<u32> {
        let prefix = self.key("token_purge/");
        let end = format!("{prefix}{}", hex_time(now));
        let due = self.range_to(&prefix, end.into_bytes(), limit).await?;
        let mut purged = 0;
        for entry in due {
            let id = String::from_utf8_lossy(&entry.key()[prefix.len() + 16..]).into_owned();
            let token_key = self.token_key(&id);
            let mut compares = vec![unchanged(&token_key, None)];
            let mut ops = vec![TxnOp::delete(entry.key(), None)];
            if let Some((token, rev)) = self.read::<Token>(&token_key).await? {
                let list = self.login_tokens_key(&token.login);
                let (mut ids, list_rev) = match self.read::<Vec<String>>(&list).await? {
                    Some((ids, rev)) => (ids, Some(rev)),
                    None => (Vec::new(), None),
                };
                ids.retain(|i| *i != id);
                compares = vec![unchanged(&token_key, Some(rev)), unchanged(&list, list_rev)];
                ops.push(TxnOp::delete(token_key.as_str(), None));
                ops.push(TxnOp::delete(
                    self.key(&format!("token_digests/{}", token.digest)),
                    None,
                ));
                ops.push(if ids.is_empty() {
                    TxnOp::delete(list.as_str(), None)
                } else {
                    put(list.as_str(), encode(&ids))
                });
            }
            // A token that changed meanwhile is left for the next sweep.
            if self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded()
            {
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn purge_rate_limits(&self, before: SystemTime) -> Result<usize> {
        self.sweep(&self.key("rate_limits/"), |kv| {
            let window: RateWindow = decode("rate_limit", kv.value())?;
            Ok(if window.hits.iter().all(|t| *t < before) {
                Verdict::Stale { with_prefix: None }
            } else {
                Verdict::Keep
            })
        })
        .await
    }

    async fn hit_rate_limit(
        &self,
        key: &str,
        now: SystemTime,
        window: Duration,
        limit: u32,
    ) -> Result<Option<Duration>> {
        let key = self.key(&format!("rate_limits/{key}"));
        self.update_window(&key, |hits: &mut RateWindow| hits.hit(now, window, limit))
            .await
    }
}
