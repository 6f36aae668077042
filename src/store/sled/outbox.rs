//! The outbox: queuing batches (staged, committed, discarded), replacing a message and
//! moving its index entries, and reading messages by id, due time, organisation and state.
//! Multi-record writes are sled batches on the one outbox tree; a single record's
//! compare-and-swap is plain writes under this process's lock for it, with an intent key
//! that a crash leaves for [`super::recovery`] to finish.

use std::time::SystemTime;

use super::content::*;
use super::keys::*;
use super::{unavailable, SledStore};
use crate::notify::{Idempotency, MessageState, OutboxMessage};
use crate::store::batch::{stage_and_commit, Staging};
use crate::store::keyspace;
use crate::store::{decode, encode, time_from_key, After, Result};

/// Staged messages queued by one write.
pub(super) const QUEUE_CHUNK: usize = 1000;

/// Bytes of message records a page of the whole outbox holds at most (past its first).
pub(super) const PAGE_BYTES: usize = 8 << 20;

#[async_trait::async_trait]
impl Staging for SledStore {
    async fn stage_messages(&self, batch: &str, messages: &[OutboxMessage]) -> Result<()> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        self.staging_started(batch, first.create_time);
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
        let committed = self.commit_staged(batch, idempotency).await;
        // Whatever came of it, the batch is no longer being staged: what a failed commit
        // left on disk is abandoned, and recovered as such.
        self.staging_ended(batch);
        committed
    }

    async fn queue_messages(
        &self,
        batch: &str,
        messages: &[OutboxMessage],
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        if messages.len() > QUEUE_CHUNK {
            return stage_and_commit(self, batch, messages, idempotency).await;
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
        self.staging_ended(batch);
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
}

impl SledStore {
    /// Queues what is staged in `batch` ([`Staging::commit_batch`]).
    async fn commit_staged(
        &self,
        batch: &str,
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let (chunk, staged) = self.queue_chunk(batch)?;
        if staged == 0 {
            // Discarded (or never staged): an empty write would succeed, and the request
            // acknowledge mail that does not exist.
            return Err(crate::notify::batch_gone(batch));
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

    pub(super) async fn purge_idempotency(&self, before: SystemTime) -> Result<usize> {
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
    pub(super) async fn remove_message(&self, expected: u64, id: &str) -> Result<bool> {
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

    pub(super) async fn idempotency(
        &self,
        organisation: &str,
        k: &str,
    ) -> Result<Option<Idempotency>> {
        self.outbox
            .get(idempotency_key(organisation, k))
            .map_err(unavailable)?
            .map(|bytes| decode(k, &bytes))
            .transpose()
    }

    pub(super) async fn message(&self, id: &str) -> Result<Option<OutboxMessage>> {
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
    pub(super) async fn swap_message(
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

    pub(super) async fn due_messages(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let end = keyspace::due_at(&Sled, now + std::time::Duration::from_micros(1));
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
            if self.is_claimed(&k[DUE_ID_AT..]) {
                continue;
            }
            if let Some(message) = self.decode_message(&k[DUE_ID_AT..])? {
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

    pub(super) async fn next_due(&self) -> Result<Option<SystemTime>> {
        let claims = self.claims_held().values().filter_map(|m| m.due_at()).min();
        for entry in self.outbox.scan_prefix([DUE]).keys() {
            let k = entry.map_err(unavailable)?;
            if self.is_claimed(&k[DUE_ID_AT..]) {
                continue;
            }
            let mut time = [0u8; 8];
            time.copy_from_slice(&k[1..DUE_ID_AT]);
            let pending = time_from_key(time);
            return Ok(Some(claims.map_or(pending, |c| c.min(pending))));
        }
        Ok(claims)
    }

    /// Records only, contents kept apart. A page ends early once it holds [`PAGE_BYTES`] of
    /// records (those of earlier versions hold their content): the sweep, which runs at
    /// start, pages through the outbox.
    pub(super) async fn all_messages(
        &self,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
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

    pub(super) async fn pending_of(&self, organisation: &str, at_most: u64) -> Result<u64> {
        // Claims held in memory are still indexed under the state they were claimed from.
        let mut count = 0;
        for state in [
            MessageState::Queued,
            MessageState::Retrying,
            MessageState::Sending,
        ] {
            let prefix = state_prefix(organisation, state);
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

    pub(super) async fn pending_messages(&self) -> Result<usize> {
        let mut count = 0;
        for entry in self.outbox.scan_prefix([DUE]).keys() {
            entry.map_err(unavailable)?;
            count += 1;
        }
        Ok(count)
    }

    pub(super) async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let prefix = match state {
            Some(state) => state_prefix(organisation, state),
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

    /// Applies `writes` with the idempotency key `key` added to them, unless the key was
    /// used before: then nothing is written and the key's first use is returned. The check
    /// and the write are one step (sled serves one process); waiting for durability is the
    /// caller's, after the lock, so that concurrent requests share a flush.
    pub(super) async fn write_once(
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

    /// The replacement behind [`crate::notify::OutboxStore::replace_message`] and its kin: a
    /// claim (not `durable`, to `SENDING` from a pending state) is held in memory, anything
    /// else replaces the record and moves its index entries under an intent.
    pub(super) fn replace_message(
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

    pub(super) fn replacing_key(&self, id: &str) -> Vec<u8> {
        let n = self
            .swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        key(REPLACING, &[id.as_bytes(), &n.to_be_bytes()])
    }

    /// Moves a message's index entries from `old` to `new` (its record already replaced):
    /// the new entries first, so that the message is never missing from an index.
    pub(super) fn move_indexes(&self, old: &OutboxMessage, new: &OutboxMessage) -> Result<()> {
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

    /// The write that queues up to [`QUEUE_CHUNK`] staged messages of `batch`, and how many.
    pub(super) fn queue_chunk(&self, batch: &str) -> Result<(sled::Batch, usize)> {
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
    pub(super) fn queue_committed(&self, batch: &str) -> Result<()> {
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

    /// The message as readers see it: as claimed, or as stored.
    pub(super) fn current_message(&self, id: &[u8]) -> Result<Option<OutboxMessage>> {
        match self.claimed(&String::from_utf8_lossy(id)) {
            Some(claimed) => Ok(Some(claimed)),
            None => self.decode_message(id),
        }
    }

    /// The record as stored (a claim of this process aside).
    pub(super) fn decode_message(&self, id: &[u8]) -> Result<Option<OutboxMessage>> {
        let id = String::from_utf8_lossy(id);
        self.outbox
            .get(message_key(&id))
            .map_err(unavailable)?
            .map(|bytes| self.decode_record(&id, &bytes))
            .transpose()
    }

    /// Every message record read goes through here, counted: see [`SledStore::records_read`].
    pub(super) fn decode_record(&self, id: &str, bytes: &[u8]) -> Result<OutboxMessage> {
        self.records_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        decode(id, bytes)
    }
}
