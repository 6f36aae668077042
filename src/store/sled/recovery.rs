//! What start repairs before anything reads the store, from index keys only (no message
//! body is read): index entries a crash left halfway through a replacement, batches staged
//! or committed but not wholly queued, and claims a dead process left on disk.

use std::time::SystemTime;

use super::content::ends_content;
use super::keys::*;
use super::{unavailable, SledStore};
use crate::notify::MessageState;
use crate::store::batch::Staging;
use crate::store::{state_name, Result};

impl SledStore {
    /// Settles the batches staged before `before`, or by a process that is gone: committed
    /// ones are queued, the others dropped. A batch this process is staging carries the
    /// creation time of its first message, in memory ([`SledStore::staging_started`]);
    /// one on disk without it was left by a process that died, since sled lets one
    /// process at a time open the store.
    pub(super) async fn recover_batches(&self, before: SystemTime) -> Result<usize> {
        self.settle_batches(Some(before)).await
    }

    /// Settles every batch staged or committed halfway, this process's included: for an
    /// export, which runs in a process that stages nothing (sled locks its directory).
    pub(super) async fn settle_every_batch(&self) -> Result<usize> {
        self.settle_batches(None).await
    }

    /// Settles the batches staged before `before` (with none, every batch), or by a
    /// process that is gone. How many.
    async fn settle_batches(&self, before: Option<SystemTime>) -> Result<usize> {
        let abandoned = |batch: &str| {
            let staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
            match (before, staging.get(batch)) {
                (Some(before), Some(started)) => *started < before,
                _ => true,
            }
        };
        let mut batches = std::collections::BTreeSet::new();
        for entry in self.outbox.scan_prefix([STAGED]).keys() {
            let staged = entry.map_err(unavailable)?;
            let rest = &staged[1..];
            if let Some(split) = rest.iter().position(|b| *b == 0) {
                let batch = String::from_utf8_lossy(&rest[..split]);
                if !batches.contains(batch.as_ref()) && abandoned(&batch) {
                    batches.insert(batch.into_owned());
                }
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
        let prefix = [COMMITTED];
        for marker in self.outbox.scan_prefix(prefix).keys() {
            let marker = marker.map_err(unavailable)?;
            if abandoned(&String::from_utf8_lossy(&marker[prefix.len()..])) {
                self.outbox.remove(marker).map_err(unavailable)?;
            }
        }
        self.durable().await?;
        Ok(batches.len())
    }

    /// Notes that this process stages `batch`, whose first message was made at `created`.
    pub(super) fn staging_started(&self, batch: &str, created: SystemTime) {
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        staging.entry(batch.to_owned()).or_insert(created);
    }

    /// Notes that `batch` is committed or discarded: no longer being staged.
    pub(super) fn staging_ended(&self, batch: &str) {
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        staging.remove(batch);
    }

    /// A first claim is held in memory, gone with the process; the claims on disk are those
    /// taken over once a lease ran out. They are found through the index by organisation
    /// and state, skipping from one organisation to the next, and only their records are
    /// read: the pending backlog's are not.
    pub(super) async fn release_claims(&self, now: SystemTime) -> Result<usize> {
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

    /// Puts the index entries of messages whose replacement (or single-message queuing) a
    /// crash interrupted in step with their records. Runs at open, before anything reads
    /// the outbox.
    pub(super) fn repair_interrupted_swaps(&self) -> Result<usize> {
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
            let id = String::from_utf8_lossy(&k[DUE_ID_AT..]).into_owned();
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
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::crypto::Sealed;
    use crate::notify::message::sample;
    use crate::store::encode;
    use crate::store::sled::content::{content_parts, CONTENT_PART};
    use crate::store::sled::outbox::QUEUE_CHUNK;
    use crate::store::sled::testing::{notifier_over, one_queued};

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
        store.close().await.unwrap();

        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        assert_eq!(store.recover_batches(now).await.unwrap(), 2);
        assert_eq!(store.pending_messages().await.unwrap(), 2500);
        assert_eq!(store.all_messages(None, 5000).await.unwrap().len(), 2500);
        assert!(store.outbox.scan_prefix([COMMITTED]).next().is_none());
        assert!(store.outbox.scan_prefix([STAGED]).next().is_none());
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
}
