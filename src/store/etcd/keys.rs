//! How the etcd store names its keys: every record and index under `--etcd-prefix`, one
//! function per key. Time in a key is 16 hex digits ([`hex_time`]), which sort like the
//! time.

use std::time::SystemTime;

use super::EtcdStore;
use crate::notify::OutboxMessage;
use crate::store::{state_name, time_key};

impl EtcdStore {
    pub(super) fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    pub(super) fn message_key(&self, id: &str) -> String {
        self.key(&format!("outbox/m/{id}"))
    }

    pub(super) fn staging_key(&self, batch: &str) -> String {
        self.key(&format!("outbox/s/{batch}"))
    }

    pub(super) fn commit_marker(&self, batch: &str) -> String {
        self.key(&format!("outbox/c/{batch}"))
    }

    pub(super) fn batch_prefix(&self, batch: &str) -> String {
        self.key(&format!("outbox/b/{batch}/"))
    }

    pub(super) fn idempotency_key(&self, organisation: &str, key: &str) -> String {
        self.key(&format!("outbox/i/{organisation}\0{key}"))
    }

    /// Where the message ids of `batch` are stored apart from its idempotency record.
    pub(super) fn ids_prefix(&self, batch: &str) -> String {
        self.key(&format!("outbox/ii/{batch}/"))
    }

    pub(super) fn due_key(&self, message: &OutboxMessage) -> Option<String> {
        message.due_at().map(|due| {
            self.key(&format!(
                "outbox/q/{}{}",
                hex::encode(time_key(due)),
                message.id
            ))
        })
    }

    pub(super) fn state_key(&self, message: &OutboxMessage) -> String {
        self.key(&format!(
            "outbox/t/{}\0{}\0{}",
            message.organisation,
            state_name(message.state),
            message.id
        ))
    }

    /// The index keys that queue `message`: by organisation, by state, by due time.
    pub(super) fn index_keys(&self, message: &OutboxMessage) -> Vec<String> {
        let mut keys = vec![
            self.key(&format!(
                "outbox/o/{}\0{}",
                message.organisation, message.id
            )),
            self.state_key(message),
        ];
        keys.extend(self.due_key(message));
        keys
    }

    pub(super) fn token_key(&self, id: &str) -> String {
        self.key(&format!("tokens/{id}"))
    }

    pub(super) fn login_tokens_key(&self, login: &str) -> String {
        self.key(&format!("login_tokens/{login}"))
    }

    pub(super) fn member_key(&self, organisation: &str, login: &str) -> String {
        self.key(&format!("members/{organisation}\0{login}"))
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
