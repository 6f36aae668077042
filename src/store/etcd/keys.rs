//! How the etcd store writes the keys of the shared keyspace ([`crate::store::keyspace`]):
//! every family under `--etcd-prefix` at its path, a time as 16 hex digits ([`hex_time`]),
//! which sort like the time. And the keys only etcd has: staging records and entries, ids
//! kept apart, tokens by id.

use std::time::SystemTime;

use super::EtcdStore;
use crate::notify::{MessageState, OutboxMessage};
use crate::store::keyspace::{self, etcd_only, Encoding, Family};
use crate::store::time_key;

/// The keyspace as etcd writes it: under the store's prefix.
impl Encoding for EtcdStore {
    type Key = String;
    fn begin(&self, family: Family) -> String {
        format!("{}{}", self.prefix, family.etcd)
    }
    fn push(key: &mut String, text: &str) {
        key.push_str(text);
    }
    fn push_time(key: &mut String, time: SystemTime) {
        key.push_str(&hex_time(time));
    }
}

impl EtcdStore {
    pub(super) fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    pub(super) fn message_key(&self, id: &str) -> String {
        keyspace::message(self, id)
    }

    pub(super) fn staging_key(&self, batch: &str) -> String {
        self.key(&format!("{}{batch}", etcd_only::STAGING))
    }

    pub(super) fn commit_marker(&self, batch: &str) -> String {
        keyspace::committed(self, batch)
    }

    pub(super) fn batch_prefix(&self, batch: &str) -> String {
        self.key(&format!("{}{batch}/", etcd_only::BATCH))
    }

    pub(super) fn idempotency_key(&self, organisation: &str, key: &str) -> String {
        keyspace::idempotency(self, organisation, key)
    }

    /// Where the message ids of `batch` are stored apart from its idempotency record.
    pub(super) fn ids_prefix(&self, batch: &str) -> String {
        self.key(&format!("{}{batch}/", etcd_only::IDS_APART))
    }

    pub(super) fn due_key(&self, message: &OutboxMessage) -> Option<String> {
        keyspace::due(self, message)
    }

    pub(super) fn state_key(&self, message: &OutboxMessage) -> String {
        keyspace::by_state(self, &message.organisation, message.state, &message.id)
    }

    /// The prefix of the keys of `organisation`'s messages in `state`.
    pub(super) fn state_prefix(&self, organisation: &str, state: MessageState) -> String {
        keyspace::by_state(self, organisation, state, "")
    }

    /// The index keys that queue `message`: by organisation, by state, by due time.
    pub(super) fn index_keys(&self, message: &OutboxMessage) -> Vec<String> {
        keyspace::index_keys(self, message)
    }

    pub(super) fn token_key(&self, id: &str) -> String {
        self.key(&format!("{}{id}", etcd_only::TOKENS))
    }

    pub(super) fn token_digest_key(&self, digest: &str) -> String {
        self.key(&format!("{}{digest}", etcd_only::TOKEN_DIGESTS))
    }

    pub(super) fn login_tokens_key(&self, login: &str) -> String {
        keyspace::login_tokens(self, login)
    }

    pub(super) fn member_key(&self, organisation: &str, login: &str) -> String {
        keyspace::member(self, organisation, login)
    }
}

/// The first key after every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Time as 16 hex digits: sorts like the time.
pub(super) fn hex_time(t: SystemTime) -> String {
    hex::encode(time_key(t))
}

pub(super) fn time_of_hex(hex_time: &[u8]) -> Option<SystemTime> {
    let mut bytes = [0u8; 8];
    hex::decode_to_slice(hex_time.get(..16)?, &mut bytes).ok()?;
    Some(crate::store::time_from_key(bytes))
}
