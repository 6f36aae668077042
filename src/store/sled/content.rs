//! A message's sealed content: kept in its record when small, else apart from it in parts
//! of [`CONTENT_PART`] bytes (`b<id>\0<n>`), joined again when the message is read with
//! its content. Listings and index walks then read small records only, and no leaf of
//! sled's cache holds more than a few parts (a leaf of whole contents near the size limit
//! stayed resident).

use super::keys::*;
use super::{unavailable, SledStore};
use crate::crypto::Sealed;
use crate::notify::{MessageState, OutboxMessage};
use crate::store::{encode, Result, StoreError};

/// Bytes of sealed content per part. sled keeps each leaf (up to 16 entries) whole in
/// its cache, and evicts a page only once enough pages of its shard of the cache were
/// used (256 shards): leaves of contents near the message size limit (16 × 1.4 MB) stayed
/// resident once written or read, whatever `--cache-mb` said. Measured on sled alone,
/// 256 MiB of content written then read back held 315 MiB in values of 1.4 MB, 278 MiB in
/// parts of 16 KiB, 102 MiB in parts of 4 KiB; and ListMessages over a thousand such
/// messages took the process to 1.4 GiB. A content of at most one part stays in its record
/// (most notifications): queuing and delivering it costs no more writes than before.
pub(super) const CONTENT_PART: usize = 4096;

/// Whether `content` stays in its message's record (else it is stored in parts).
pub(super) fn inline(content: &Sealed) -> bool {
    content.stored_len() <= CONTENT_PART
}

/// A message's record: all of it, its content only when [`inline`].
pub(super) fn record(message: &OutboxMessage) -> Vec<u8> {
    record_with(message, message.content.as_ref())
}

/// The record of `message` holding `content` when it is [`inline`], else none.
pub(super) fn record_with(message: &OutboxMessage, content: Option<&Sealed>) -> Vec<u8> {
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
pub(super) fn content_parts<'a>(
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
pub(super) fn put_message(writes: &mut sled::Batch, message: &OutboxMessage) {
    writes.insert(message_key(&message.id), record(message));
    if let Some(content) = message.content.as_ref().filter(|c| !inline(c)) {
        for (k, part) in content_parts(&message.id, content) {
            writes.insert(k, part);
        }
    }
}

/// Whether a message in `state` has no content any more: it went out, or never will.
pub(super) fn ends_content(state: MessageState) -> bool {
    matches!(state, MessageState::Sent | MessageState::Cancelled)
}

/// A copy of `message` without its content (see [`crate::notify::OutboxStore::list_messages`]).
pub(super) fn without_content(message: &OutboxMessage) -> OutboxMessage {
    OutboxMessage {
        content: None,
        ..message.clone()
    }
}

impl SledStore {
    /// A message's content, joined from its parts; `None` when it has none (sent,
    /// cancelled, or a record of an earlier version, which holds it).
    pub(super) fn content_of(&self, id: &str) -> Result<Option<Sealed>> {
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
    pub(super) fn with_content(&self, mut message: OutboxMessage) -> Result<OutboxMessage> {
        if message.content.is_none() {
            message.content = self.content_of(&message.id)?;
        }
        Ok(message)
    }

    /// Replaces a message's content in one write: a crash never leaves parts of two.
    pub(super) fn put_content(&self, id: &str, content: &Sealed) -> Result<()> {
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
    pub(super) fn remove_content(&self, id: &str) -> Result<()> {
        for part in self.outbox.scan_prefix(content_prefix(id)).keys() {
            self.outbox
                .remove(part.map_err(unavailable)?)
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::notify::message::sample;
    use crate::store::batch::Staging;
    use crate::store::decode;

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
}
