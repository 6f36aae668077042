//! How the sled store names its keys: the trees, the prefix bytes of the outbox tree's
//! entries, and one function per key. Time in a key is [`crate::store::time_key`]: eight
//! bytes, big-endian, so that keys sort by time.
//!
//! The outbox is one tree, so that a whole batch is one atomic `apply_batch`.

use crate::notify::OutboxMessage;
use crate::store::{state_name, time_key};
use crate::tokens::Token;

/// `m<id>` → message.
pub(super) const MESSAGE: u8 = b'm';

/// `q<due time><id>` → (): pending messages by due time.
pub(super) const DUE: u8 = b'q';

/// `o<organisation>\0<id>` → (): messages by organisation.
pub(super) const BY_ORGANISATION: u8 = b'o';

/// `i<organisation>\0<key>` → idempotency record.
pub(super) const IDEMPOTENCY: u8 = b'i';

/// `t<organisation>\0<state>\0<id>` → (): messages by organisation and state.
pub(super) const BY_STATE: u8 = b't';

/// `s<batch>\0<id>` → the keys that queue a staged message (organisation index, due index).
pub(super) const STAGED: u8 = b's';

/// `w<id>\0<n>` → (): a message whose record is being replaced; a crash leaves it, and
/// the next start puts the message's index entries in step with its record.
pub(super) const REPLACING: u8 = b'w';

/// `c<batch>` → (): a batch committed but not yet wholly queued.
pub(super) const COMMITTED: u8 = b'c';

/// `b<id>\0<n>` → the `n`th part (`u32`, big-endian) of a message's sealed content, when
/// it is larger than one part; a smaller one stays in the record (as every content did
/// before).
pub(super) const CONTENT: u8 = b'b';

pub(super) fn commit_marker(batch: &str) -> Vec<u8> {
    key(COMMITTED, &[batch.as_bytes()])
}

pub(super) fn staged_key(batch: &str, id: &str) -> Vec<u8> {
    key(STAGED, &[batch.as_bytes(), id.as_bytes()])
}

/// The index keys that queue a message: by organisation, by state, by due time.
pub(super) fn index_keys(message: &OutboxMessage) -> impl Iterator<Item = Vec<u8>> {
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
pub(super) fn staged_value(message: &OutboxMessage) -> Vec<u8> {
    let mut value = Vec::new();
    for k in index_keys(message) {
        value.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_be_bytes());
        value.extend_from_slice(&k);
    }
    value
}

/// The index keys of a staging entry.
pub(super) fn staged_keys(mut value: &[u8]) -> Vec<Vec<u8>> {
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
pub(super) fn state_key(message: &OutboxMessage) -> Vec<u8> {
    key(
        BY_STATE,
        &[
            message.organisation.as_bytes(),
            state_name(message.state).as_bytes(),
            message.id.as_bytes(),
        ],
    )
}

pub(super) fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part);
    }
    k
}

pub(super) fn message_key(id: &str) -> Vec<u8> {
    key(MESSAGE, &[id.as_bytes()])
}

/// The prefix of the keys of a message's content parts.
pub(super) fn content_prefix(id: &str) -> Vec<u8> {
    key(CONTENT, &[id.as_bytes(), b""])
}

pub(super) fn due_key(message: &OutboxMessage) -> Option<Vec<u8>> {
    message.due_at().map(|due| {
        let mut k = vec![DUE];
        k.extend_from_slice(&time_key(due));
        k.extend_from_slice(message.id.as_bytes());
        k
    })
}

pub(super) fn organisation_key(organisation: &str, id: &str) -> Vec<u8> {
    key(BY_ORGANISATION, &[organisation.as_bytes(), id.as_bytes()])
}

pub(super) fn idempotency_key(organisation: &str, k: &str) -> Vec<u8> {
    key(IDEMPOTENCY, &[organisation.as_bytes(), k.as_bytes()])
}

/// The keys after `prefix` + `after` (exclusive) that start with `prefix`.
pub(super) fn scan_after(tree: &sled::Tree, prefix: Vec<u8>, after: Option<&str>) -> sled::Iter {
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

pub(super) fn purge_key(token: &Token) -> Vec<u8> {
    let mut k = time_key(token.purge_time()).to_vec();
    k.extend_from_slice(token.digest.as_bytes());
    k
}
