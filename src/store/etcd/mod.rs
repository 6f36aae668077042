//! The shared store: etcd, for several mailroom replicas on one state (`--store etcd`).
//!
//! Every record lives under `--etcd-prefix` in the stores' encoding (`store::encode`), keyed
//! by the layout both stores share (`store::keyspace`).
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
//! dies between the two leaves the marker, and [`OutboxStore::recover_batches`] on any replica
//! finishes the job; a batch never committed is dropped the same way. A small batch is
//! committed and queued in one transaction. An idempotency record of more than
//! `IDS_INLINE` messages keeps their ids apart (`outbox/ii/<batch>/`), written before the
//! commit and named by the record.
//!
//! The settings and API keys are watched: another replica's change reaches
//! [`Backend::changes`] as it happens.
//!
//! The connection may be TLS (etcd's CA, a client certificate) and authenticated as an etcd
//! user: [`EtcdSecurity`].
//!
//! Where things are:
//! - this file: [`EtcdStore`], connecting, and the [`Store`] trait, each method forwarded
//!   to its concern;
//! - `security.rs`: TLS and the etcd user;
//! - `keys.rs`: the key of every record and index under the prefix;
//! - `kv.rs`: reads, ranges, transactions chunked under etcd's limits, sweeps;
//! - `watch.rs`: the watch that reports other replicas' changes;
//! - `settings.rs` and `accounts.rs`: the SMTP settings and key check, API keys and users;
//! - `batches.rs`: staging, committing, discarding and recovering batches;
//! - `idempotency.rs`: idempotency records, their ids kept apart when many;
//! - `outbox.rs`: reading, replacing, removing and counting messages;
//! - `windows.rs`: rate-limit windows and quota tallies;
//! - `tokens.rs`: the [`TokenStore`](super::TokenStore);
//! - `snapshot.rs`: export (at one revision) and import (the
//!   [`Snapshot`](crate::snapshot::Snapshot) port).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};
use tokio::sync::broadcast;
use tracing::Instrument;

pub use security::{EtcdSecurity, EtcdTls, EtcdUser};

use super::batch::StagedBatch;
use super::{keyspace, After, Backend, Changed, OutboxStore, Result, Store, StoreError};
use crate::crypto::Sealed;
use crate::notify::{BatchWriter, Idempotency, MessageState, OutboxMessage};
use watch::watch_cached;

mod accounts;
mod batches;
mod idempotency;
mod keys;
mod kv;
mod outbox;
mod security;
mod settings;
mod snapshot;
mod templates;
mod tokens;
mod watch;
mod windows;

/// Optimistic transactions retried on conflict before giving up.
const CAS_ATTEMPTS: usize = 64;

/// The most one response of the key-value service may carry. tonic's default, 4 MiB, held
/// fewer than three messages near the size limit (a record of up to 1.5 MiB, etcd's request
/// limit): delivery's claim of 16 such messages, or a page of them listed, failed whole.
const RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The etcd store.
pub struct EtcdStore {
    kv: KvClient,
    /// Leases: an import's hold on the prefix (`snapshot.rs`).
    leases: etcd_client::LeaseClient,
    prefix: String,
    changes: broadcast::Sender<Changed>,
    /// [`Backend::watch_epoch`]: 0 while the watch is not established.
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
            leases: client.lease_client(),
            prefix: store_prefix,
            changes,
            epoch,
            watcher,
        };
        store.ping().await?;
        Ok(store)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn contention(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} kept changing under {CAS_ATTEMPTS} attempts to update it"
    ))
}

/// Each method is written next to what it touches (see the module's list).
#[async_trait]
impl Backend for EtcdStore {
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
            .get(keyspace::meta(self, keyspace::KEY_CHECK), Some(options))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn key_check(&self) -> Result<Option<Sealed>> {
        EtcdStore::key_check(self).await
    }

    async fn set_key_check(&self, sealed: &Sealed) -> Result<()> {
        EtcdStore::set_key_check(self, sealed).await
    }
}

#[async_trait]
impl OutboxStore for EtcdStore {
    fn enqueue<'a>(&'a self, batch: &str) -> Box<dyn BatchWriter + 'a> {
        StagedBatch::boxed(self, batch)
    }

    async fn recover_batches(&self, before: SystemTime) -> Result<usize> {
        EtcdStore::recover_batches(self, before).await
    }

    async fn release_claims(&self, now: SystemTime) -> Result<usize> {
        EtcdStore::release_claims(self, now).await
    }

    async fn purge_idempotency(&self, before: SystemTime) -> Result<usize> {
        EtcdStore::purge_idempotency(self, before).await
    }

    async fn remove_message(&self, expected: u64, id: &str) -> Result<bool> {
        EtcdStore::remove_message(self, expected, id).await
    }

    async fn idempotency(&self, organisation: &str, key: &str) -> Result<Option<Idempotency>> {
        EtcdStore::idempotency(self, organisation, key).await
    }

    async fn message(&self, id: &str) -> Result<Option<OutboxMessage>> {
        EtcdStore::message(self, id).await
    }

    async fn replace_message(&self, expected: u64, message: &OutboxMessage) -> Result<bool> {
        EtcdStore::swap_message(self, expected, message, true).await
    }

    async fn claim_message(&self, expected: u64, message: &OutboxMessage) -> Result<bool> {
        EtcdStore::swap_message(self, expected, message, false).await
    }

    async fn settle_message(&self, expected: u64, message: &OutboxMessage) -> Result<bool> {
        EtcdStore::swap_message(self, expected, message, false).await
    }

    async fn due_messages(&self, now: SystemTime, limit: usize) -> Result<Vec<OutboxMessage>> {
        EtcdStore::due_messages(self, now, limit).await
    }

    async fn next_due(&self) -> Result<Option<SystemTime>> {
        EtcdStore::next_due(self).await
    }

    async fn all_messages(&self, after: After<'_>, limit: usize) -> Result<Vec<OutboxMessage>> {
        EtcdStore::all_messages(self, after, limit).await
    }

    async fn pending_of(&self, organisation: &str, at_most: u64) -> Result<u64> {
        EtcdStore::pending_of(self, organisation, at_most).await
    }

    async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<std::time::Duration>> {
        EtcdStore::tally(self, key, now, window, amount, limit).await
    }

    async fn pending_messages(&self) -> Result<usize> {
        EtcdStore::pending_messages(self).await
    }

    async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        EtcdStore::list_messages(self, organisation, state, after, limit).await
    }
}
