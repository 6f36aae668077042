//! How both backends queue a batch behind [`BatchWriter`]: parts written ahead as *staged*
//! (invisible), then one atomic commit; a batch that never needed a part written ahead goes
//! in one write. The backends implement the steps ([`Staging`]); the order of the steps
//! lives here, once.

use async_trait::async_trait;

use crate::notify::{BatchWriter, Idempotency, OutboxMessage};
use crate::ports::Result;

/// The steps of queuing a batch, as a backend takes them.
#[async_trait]
pub(crate) trait Staging: Send + Sync {
    /// Writes `messages` as part of batch `batch`, not yet queued. A large part is written
    /// in chunks (bounded memory) and still queued in one atomic write by the commit.
    async fn stage_messages(&self, batch: &str, messages: &[OutboxMessage]) -> Result<()>;

    /// Queues every message staged in `batch`, with `key` when given, in one atomic,
    /// durable write; when `key` was used before, discards the batch instead and answers
    /// the key's first use; a batch with nothing staged any more is
    /// [`crate::notify::batch_gone`].
    async fn commit_batch(
        &self,
        batch: &str,
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>>;

    /// Queues `messages` (few enough to hold in memory) as batch `batch`, with `key` when
    /// given, in one write where the backend can.
    async fn queue_messages(
        &self,
        batch: &str,
        messages: &[OutboxMessage],
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>>;

    /// Forgets the messages staged in `batch`.
    async fn discard_batch(&self, batch: &str) -> Result<()>;
}

/// Stages then commits: how a backend queues a batch too large for one of its writes.
pub(crate) async fn stage_and_commit<S: Staging + ?Sized>(
    store: &S,
    batch: &str,
    messages: &[OutboxMessage],
    key: Option<&Idempotency>,
) -> Result<Option<Idempotency>> {
    store.stage_messages(batch, messages).await?;
    store.commit_batch(batch, key).await
}

/// A batch being written to a backend that stages.
pub(crate) struct StagedBatch<'a, S: ?Sized> {
    store: &'a S,
    batch: String,
    /// Whether a part was staged: the commit then queues what is staged.
    staged: bool,
}

impl<'a, S: Staging + ?Sized> StagedBatch<'a, S> {
    pub(crate) fn boxed(store: &'a S, batch: &str) -> Box<dyn BatchWriter + 'a> {
        Box::new(Self {
            store,
            batch: batch.to_owned(),
            staged: false,
        })
    }
}

#[async_trait]
impl<S: Staging + ?Sized> BatchWriter for StagedBatch<'_, S> {
    async fn write(&mut self, messages: &[OutboxMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        self.staged = true;
        self.store.stage_messages(&self.batch, messages).await
    }

    async fn commit(
        self: Box<Self>,
        last: &[OutboxMessage],
        key: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        if self.staged {
            stage_and_commit(self.store, &self.batch, last, key).await
        } else {
            self.store.queue_messages(&self.batch, last, key).await
        }
    }

    async fn abandon(self: Box<Self>) -> Result<()> {
        if self.staged {
            self.store.discard_batch(&self.batch).await?;
        }
        Ok(())
    }
}
