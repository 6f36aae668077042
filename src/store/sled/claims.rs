//! Claims held in memory: a swap to `SENDING` from a pending state, not waited on, is kept
//! here rather than written (sled is opened by one process, so no other can take the
//! message meanwhile); a crash forgets it and leaves the message due at once.

use super::SledStore;
use crate::notify::{MessageState, OutboxMessage};

impl SledStore {
    /// The claims of this process (see `swap_message`).
    pub(super) fn claims_held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, OutboxMessage>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The message as this process claimed it, if it did.
    pub(super) fn claimed(&self, id: &str) -> Option<OutboxMessage> {
        self.claims_held().get(id).cloned()
    }

    /// The version and state of this process's claim on `id`, if it holds one.
    pub(super) fn claim_of(&self, id: &str) -> Option<(u64, MessageState)> {
        self.claims_held().get(id).map(|c| (c.version, c.state))
    }

    pub(super) fn is_claimed(&self, id: &[u8]) -> bool {
        self.claims_held()
            .contains_key(String::from_utf8_lossy(id).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::sled::keys::message_key;
    use crate::store::sled::testing::one_queued;

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
}
