//! The outbox's port: what notifications and delivery need of a store, implemented by
//! `store::sled` and `store::etcd`. A request's messages are handed to the store as they are
//! rendered, in bounded parts, and queued in one atomic, durable write
//! ([`OutboxStore::enqueue`], [`BatchWriter`]); the quota's tallies and the idempotency keys
//! are kept with the outbox.

use std::time::SystemTime;

use async_trait::async_trait;

use super::{Idempotency, MessageState, OutboxMessage};
use crate::ports::{After, Backend, Result, StoreError};

/// The outbox: its messages, their idempotency keys and the quota's tallies. Each method
/// is atomic; each write answers once durable unless it says otherwise.
#[async_trait]
pub trait OutboxStore: Backend {
    /// Starts writing batch `batch`: the messages of one request, queued together in one
    /// atomic, durable write when [`BatchWriter::commit`] is called, and invisible to delivery
    /// and to listing until then. How the store gets there (parts written ahead, a marker,
    /// chunks finished after a crash) is its own business.
    fn enqueue<'a>(&'a self, batch: &str) -> Box<dyn BatchWriter + 'a>;

    /// Settles the batches whose writer stopped halfway: forgets those staged before
    /// `before` and never committed, and finishes queuing committed ones (a store that
    /// queues a large batch in several writes after its atomic commit). On a store only
    /// this process can open, called at start with the current time: every staged batch
    /// then belongs to a dead process. How many batches.
    async fn recover_batches(&self, before: SystemTime) -> Result<usize>;

    /// On an [`exclusive`](crate::ports::Backend::exclusive) store, at start: makes every claim stored by
    /// the process that died due at `now`, reading no record but the claimed ones (start
    /// must not read the backlog's bodies). How many. A shared store's claims come back
    /// when their leases run out: by default, none is released.
    async fn release_claims(&self, _now: SystemTime) -> Result<usize> {
        Ok(0)
    }

    /// Forgets idempotency keys first used before `before`. How many.
    async fn purge_idempotency(&self, before: SystemTime) -> Result<usize>;

    /// Forgets a message and its index entries if its stored version is still `expected`.
    /// `Ok(false)` when it changed or is gone.
    async fn remove_message(&self, expected: u64, id: &str) -> Result<bool>;

    /// The first use of an idempotency key.
    async fn idempotency(&self, organisation: &str, key: &str) -> Result<Option<Idempotency>>;

    /// One message.
    async fn message(&self, id: &str) -> Result<Option<OutboxMessage>>;

    /// Replaces a message if its stored version is still `expected_version`, keeping the
    /// due index in step with [`OutboxMessage::due_at`]; answers once the write is durable.
    /// `Ok(false)` when it changed or is gone. (An operator's retry or cancel.)
    async fn replace_message(&self, expected_version: u64, message: &OutboxMessage)
        -> Result<bool>;

    /// [`OutboxStore::replace_message`] for a claim of a pending message, or a claim's
    /// renewal (`message` is `SENDING`, with its lease): a store only this process opens may
    /// hold it in memory only, where every reader of the store sees it and a crash forgets it,
    /// leaving the message due again at once.
    async fn claim_message(&self, expected_version: u64, message: &OutboxMessage) -> Result<bool>;

    /// [`OutboxStore::replace_message`] for what needs no wait for the disk: the outcome of an
    /// attempt (a crash before it is on disk sends the message again: at least once) or a
    /// content re-sealed under a new key (followed by [`Backend::flush`]). Durable with the
    /// store's next flush.
    async fn settle_message(&self, expected_version: u64, message: &OutboxMessage) -> Result<bool>;

    /// Messages due at `now` (pending, or with an expired lease), earliest first.
    async fn due_messages(&self, now: SystemTime, limit: usize) -> Result<Vec<OutboxMessage>>;

    /// When the earliest pending message is due.
    async fn next_due(&self) -> Result<Option<SystemTime>>;

    /// Every message in id order after `after`, at most `limit`, without their content
    /// (as [`OutboxStore::list_messages`]): the sweep walks the whole outbox, from start on, and
    /// key rotation reads each content with [`OutboxStore::message`].
    async fn all_messages(&self, after: After<'_>, limit: usize) -> Result<Vec<OutboxMessage>>;

    /// How many messages of `organisation` are pending (queued, retrying or claimed),
    /// counting no further than `at_most` (the quota: a count bounded in time).
    async fn pending_of(&self, organisation: &str, at_most: u64) -> Result<u64>;

    /// Adds `amount` to the tally `key` at `now` unless its total over `window` would pass
    /// `limit` (see [`super::Tally`]); else how long until it would fit.
    async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<std::time::Duration>>;

    /// How many messages are pending (queued, retrying or claimed).
    async fn pending_messages(&self) -> Result<usize>;

    /// Messages of an organisation (in `state`, when given) in id order, after `after`, at
    /// most `limit`, **without their content** (`content` is `None`): a listing never
    /// needs a body, and a page of a thousand messages near the size limit held with their
    /// bodies came to 1.4 GB. sled keeps contents apart from records and reads none; etcd
    /// drops each as its record is decoded. [`OutboxStore::message`] and
    /// [`OutboxStore::due_messages`] read messages with their content: a listed message is never
    /// the base of a replacement ([`OutboxStore::replace_message`] and its kin).
    async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>>;
}

/// A batch being written ([`OutboxStore::enqueue`]). Dropped without
/// [`BatchWriter::commit`] or [`BatchWriter::abandon`] (a request cancelled halfway), what it
/// wrote stays invisible and is forgotten by [`OutboxStore::recover_batches`].
#[async_trait]
pub trait BatchWriter: Send + Sync {
    /// Takes the next part of the batch (bounded by the caller, a few MiB): the store may
    /// write it now, still invisible.
    async fn write(&mut self, messages: &[OutboxMessage]) -> Result<()>;

    /// Queues every message written and `last`, with `key` when given, in one atomic,
    /// durable write (one write of the store when nothing was written before). When `key`
    /// was used before, queues nothing and answers the key's first use. A batch whose
    /// written parts are gone (dropped as abandoned while its request was still running) is
    /// [`batch_gone`]: nothing may be acknowledged for it.
    async fn commit(
        self: Box<Self>,
        last: &[OutboxMessage],
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>>;

    /// Forgets what was written (a request that failed halfway).
    async fn abandon(self: Box<Self>) -> Result<()>;
}

/// What [`BatchWriter::commit`] answers for a batch whose staged messages are gone:
/// the request failed (`UNAVAILABLE`, retried with a new batch), never an acknowledgement.
pub fn batch_gone(batch: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "batch {batch} was dropped before it was committed (staged too long ago)"
    ))
}
