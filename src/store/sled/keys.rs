//! How the sled store writes the keys of the shared keyspace ([`crate::store::keyspace`]):
//! each family in its tree, those of the outbox tree behind their prefix byte, a time as
//! [`crate::store::time_key`] (eight bytes, big-endian). And the keys only sled has:
//! staging entries, replacement intents, content parts.

use std::time::SystemTime;

use crate::notify::{MessageState, OutboxMessage};
use crate::store::keyspace::{self, sled_only, Encoding, Family};
use crate::store::time_key;
use crate::tokens::Token;

pub(super) use sled_only::{CONTENT, REPLACING, STAGED};

/// The keyspace as sled writes it: the key within the family's tree.
pub(super) struct Sled;

impl Encoding for Sled {
    type Key = Vec<u8>;
    fn begin(&self, family: Family) -> Vec<u8> {
        family.byte.into_iter().collect()
    }
    fn push(key: &mut Vec<u8>, text: &str) {
        key.extend_from_slice(text.as_bytes());
    }
    fn push_time(key: &mut Vec<u8>, time: SystemTime) {
        key.extend_from_slice(&time_key(time));
    }
}

/// The byte a family's keys start with in the outbox tree.
const fn byte(family: Family) -> u8 {
    match family.byte {
        Some(byte) => byte,
        None => panic!("a family of the outbox tree has a prefix byte"),
    }
}

/// The prefix bytes of the outbox tree, for walks that read keys as bytes.
pub(super) const MESSAGE: u8 = byte(keyspace::MESSAGES);
pub(super) const DUE: u8 = byte(keyspace::DUE);
pub(super) const IDEMPOTENCY: u8 = byte(keyspace::IDEMPOTENCY);
pub(super) const BY_STATE: u8 = byte(keyspace::BY_STATE);
pub(super) const COMMITTED: u8 = byte(keyspace::COMMITTED);

/// Bytes of a due index key before the message id: the prefix byte and the time.
pub(super) const DUE_ID_AT: usize = 9;

pub(super) fn commit_marker(batch: &str) -> Vec<u8> {
    keyspace::committed(&Sled, batch)
}

/// The index keys that queue a message: by organisation, by state, by due time.
pub(super) fn index_keys(message: &OutboxMessage) -> Vec<Vec<u8>> {
    keyspace::index_keys(&Sled, message)
}

/// `t<organisation>\0<state>\0<id>`: the message's entry by organisation and state.
pub(super) fn state_key(message: &OutboxMessage) -> Vec<u8> {
    keyspace::by_state(&Sled, &message.organisation, message.state, &message.id)
}

/// The prefix of the keys of `organisation`'s messages in `state`.
pub(super) fn state_prefix(organisation: &str, state: MessageState) -> Vec<u8> {
    keyspace::by_state(&Sled, organisation, state, "")
}

pub(super) fn message_key(id: &str) -> Vec<u8> {
    keyspace::message(&Sled, id)
}

pub(super) fn due_key(message: &OutboxMessage) -> Option<Vec<u8>> {
    keyspace::due(&Sled, message)
}

pub(super) fn organisation_key(organisation: &str, id: &str) -> Vec<u8> {
    keyspace::by_organisation(&Sled, organisation, id)
}

pub(super) fn idempotency_key(organisation: &str, k: &str) -> Vec<u8> {
    keyspace::idempotency(&Sled, organisation, k)
}

pub(super) fn purge_key(token: &Token) -> Vec<u8> {
    keyspace::token_purge(&Sled, token.purge_time(), &token.digest)
}

pub(super) fn staged_key(batch: &str, id: &str) -> Vec<u8> {
    key(STAGED, &[batch.as_bytes(), id.as_bytes()])
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

/// The prefix of the keys of a message's content parts.
pub(super) fn content_prefix(id: &str) -> Vec<u8> {
    key(CONTENT, &[id.as_bytes(), b""])
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
