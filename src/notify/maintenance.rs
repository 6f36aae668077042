//! What the background jobs and the start ask of the outbox: purges, batch recovery,
//! claims released after a crash, and the re-seal of a master-key rotation.

use std::time::{Duration, SystemTime};

use super::{NotifyError, NotifyService, OutboxMessage, CONTENT_PURPOSE, KEEP_IDEMPOTENCY};

impl NotifyService {
    /// Forgets idempotency keys first used more than a week ago. How many.
    pub async fn purge_idempotency(&self) -> Result<usize, NotifyError> {
        let now = self.clock.now();
        let before = now.checked_sub(KEEP_IDEMPOTENCY).unwrap_or(now);
        Ok(self.outbox.purge_idempotency(before).await?)
    }

    /// Forgets the finished messages (`SENT`, `DEAD`, `CANCELLED`) queued, or last requeued,
    /// more than `retention` ago; a zero `retention` keeps them. How many.
    pub async fn purge_messages(&self, retention: Duration) -> Result<usize, NotifyError> {
        let now = self.clock.now();
        let Some(before) = now.checked_sub(retention).filter(|_| !retention.is_zero()) else {
            return Ok(0);
        };
        let (mut after, mut purged) = (None, 0);
        loop {
            let page = self.next_page(&mut after).await?;
            if page.is_empty() {
                return Ok(purged);
            }
            for message in &page {
                // Ids follow the queuing time: the rest of the outbox is younger.
                if message.create_time >= before {
                    return Ok(purged);
                }
                if message.due_at().is_none()
                    && message.window_start < before
                    && self
                        .outbox
                        .remove_message(message.version, &message.id)
                        .await?
                {
                    purged += 1;
                }
            }
        }
    }

    /// The next page of the whole outbox, in id order, after `after`, which moves to its
    /// last message; empty at the end.
    pub(super) async fn next_page(
        &self,
        after: &mut Option<String>,
    ) -> Result<Vec<OutboxMessage>, NotifyError> {
        let page = self.outbox.all_messages(after.as_deref(), 500).await?;
        if let Some(last) = page.last() {
            *after = Some(last.id.clone());
        }
        Ok(page)
    }

    /// Settles the batches of requests that stopped halfway, staged or committed before
    /// `before` (see [`OutboxStore::recover_batches`](super::OutboxStore::recover_batches)). How many batches.
    pub async fn recover_batches(&self, before: SystemTime) -> Result<usize, NotifyError> {
        Ok(self.outbox.recover_batches(before).await?)
    }

    /// Makes every claimed message due now: for a store only this process can open, the
    /// claims found at start belong to a process that died. Returns how many. The store
    /// finds them by its indexes: start reads none of the backlog's bodies.
    pub async fn release_claims(&self) -> Result<usize, NotifyError> {
        Ok(self.outbox.release_claims(self.clock.now()).await?)
    }

    /// Seals every message's content again with the master key's sealing key (after a
    /// rotation). How many. Each page re-sealed is made durable and logged before the next:
    /// a rotation of a large outbox shows its progress, and one interrupted (killed, or the
    /// store failing) keeps what it did; the keyring still opens the rest, and running it
    /// again finishes it.
    pub async fn reseal(&self) -> Result<usize, NotifyError> {
        let key = self.settings.master_key();
        let (mut after, mut count) = (None, 0);
        loop {
            let page = self.next_page(&mut after).await?;
            if page.is_empty() {
                break;
            }
            // A page holds no contents: each is read with its message, one at a time.
            for listed in page {
                let Some(message) = self.outbox.message(&listed.id).await? else {
                    continue;
                };
                let Some(sealed) = &message.content else {
                    continue;
                };
                let content = key.open_bytes(CONTENT_PURPOSE, sealed)?;
                let mut next = message.clone();
                next.content = Some(key.seal_bytes(CONTENT_PURPOSE, &content));
                next.version += 1;
                if self.outbox.settle_message(message.version, &next).await? {
                    count += 1;
                }
            }
            self.outbox.flush().await?;
            tracing::info!(resealed = count, "message contents re-sealed so far");
        }
        Ok(count)
    }
}
