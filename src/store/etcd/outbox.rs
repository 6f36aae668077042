//! The outbox's messages (`outbox/m/<id>`) and their indexes (by due time, organisation,
//! organisation and state): reading, replacing by compare-and-swap, removing, counting.

use std::time::{Duration, SystemTime};

use etcd_client::{GetOptions, Txn, TxnOp};
use futures_util::future::try_join_all;

use super::keys::*;
use super::kv::*;
use super::{contention, unavailable, EtcdStore, CAS_ATTEMPTS};
use crate::notify::{MessageState, OutboxMessage};
use crate::store::keyspace::{self, Encoding};
use crate::store::{decode, encode, After, Result};

impl EtcdStore {
    pub(super) async fn remove_message(&self, expected: u64, id: &str) -> Result<bool> {
        let key = self.message_key(id);
        let Some((stored, rev)) = self.read::<OutboxMessage>(&key).await? else {
            return Ok(false);
        };
        if stored.version != expected {
            return Ok(false);
        }
        let mut ops: Vec<TxnOp> = self
            .index_keys(&stored)
            .into_iter()
            .map(|k| TxnOp::delete(k, None))
            .collect();
        ops.push(TxnOp::delete(key.as_str(), None));
        let txn = Txn::new().when([unchanged(&key, Some(rev))]).and_then(ops);
        Ok(self.txn(txn).await?.succeeded())
    }

    pub(super) async fn message(&self, id: &str) -> Result<Option<OutboxMessage>> {
        Ok(self.read(&self.message_key(id)).await?.map(|(m, _)| m))
    }

    pub(super) async fn swap_message(
        &self,
        expected: u64,
        message: &OutboxMessage,
        _durable: bool,
    ) -> Result<bool> {
        let key = self.message_key(&message.id);
        for _ in 0..CAS_ATTEMPTS {
            let Some((stored, rev)) = self.read::<OutboxMessage>(&key).await? else {
                return Ok(false);
            };
            if stored.version != expected {
                return Ok(false);
            }
            let mut ops = Vec::new();
            let (old_due, new_due) = (self.due_key(&stored), self.due_key(message));
            if old_due != new_due {
                ops.extend(old_due.map(|k| TxnOp::delete(k, None)));
                ops.extend(new_due.map(|k| put(k, Vec::new())));
            }
            if stored.state != message.state {
                ops.push(TxnOp::delete(self.state_key(&stored), None));
                ops.push(put(self.state_key(message), Vec::new()));
            }
            ops.push(put(key.as_str(), encode(message)));
            let txn = Txn::new().when([unchanged(&key, Some(rev))]).and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(contention("the message"))
    }

    pub(super) async fn due_messages(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let prefix = self.begin(keyspace::DUE);
        let end = keyspace::due_at(self, now + Duration::from_micros(1));
        let entries = self.range_to(&prefix, end.into_bytes(), limit).await?;
        let skip = prefix.len() + 16;
        let keys: Vec<String> = entries
            .iter()
            .map(|kv| self.message_key(&String::from_utf8_lossy(&kv.key()[skip..])))
            .collect();
        let mut due = Vec::with_capacity(entries.len());
        for ((entry, key), record) in entries.iter().zip(&keys).zip(self.get_many(&keys).await?) {
            let record = match record {
                Some(record) => {
                    let message: OutboxMessage = decode(key, record.value())?;
                    if self.due_key(&message).as_deref().map(str::as_bytes) == Some(entry.key()) {
                        due.push(message);
                        continue;
                    }
                    Some(record.mod_revision())
                }
                None => None,
            };
            // An entry that no longer matches its message (queued again by a recovering
            // replica after the message moved on) is dropped, not followed.
            let txn = Txn::new()
                .when([unchanged(key, record)])
                .and_then([TxnOp::delete(entry.key(), None)]);
            self.txn(txn).await?;
        }
        Ok(due)
    }

    pub(super) async fn next_due(&self) -> Result<Option<SystemTime>> {
        let prefix = self.begin(keyspace::DUE);
        let first = self.range(&prefix, None, 1).await?;
        Ok(first
            .first()
            .and_then(|kv| time_of_hex(&kv.key()[prefix.len()..])))
    }

    /// The keys first, then the records a group at a time (as [`crate::notify::OutboxStore::list_messages`]):
    /// one response of 500 messages near the size limit would be 700 MB.
    pub(super) async fn all_messages(
        &self,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let prefix = self.begin(keyspace::MESSAGES);
        let start = match after {
            Some(after) => format!("{prefix}{after}\0"),
            None => prefix.clone(),
        };
        let options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .with_keys_only();
        let keys = self
            .kv
            .clone()
            .get(start, Some(options))
            .await
            .map_err(unavailable)?
            .take_kvs();
        let mut messages = Vec::with_capacity(keys.len());
        for group in keys.chunks(MESSAGES_READ) {
            let records = self
                .records_of::<OutboxMessage>(group, prefix.len(), |id| self.message_key(id))
                .await?;
            messages.extend(
                records
                    .into_iter()
                    .map(|(m, _)| OutboxMessage { content: None, ..m }),
            );
        }
        Ok(messages)
    }

    pub(super) async fn pending_of(&self, organisation: &str, _at_most: u64) -> Result<u64> {
        // etcd counts a range for us: three requests, whatever the backlog.
        let counts = [
            MessageState::Queued,
            MessageState::Retrying,
            MessageState::Sending,
        ]
        .map(|state| {
            let prefix = self.state_prefix(organisation, state);
            self.count_prefix(prefix)
        });
        Ok(try_join_all(counts).await?.into_iter().sum())
    }

    pub(super) async fn pending_messages(&self) -> Result<usize> {
        let count = self.count_prefix(self.begin(keyspace::DUE)).await?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    pub(super) async fn list_messages(
        &self,
        organisation: &str,
        state: Option<MessageState>,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>> {
        let prefix = match state {
            Some(state) => self.state_prefix(organisation, state),
            None => keyspace::by_organisation(self, organisation, ""),
        };
        let entries = self.range(&prefix, after, limit).await?;
        let mut messages = Vec::with_capacity(entries.len());
        // A group of records at a time, each dropping its content as it is decoded: a page
        // of a thousand messages near the size limit is 1.4 GB with their contents.
        for group in entries.chunks(MESSAGES_READ) {
            let records = self
                .records_of::<OutboxMessage>(group, prefix.len(), |id| self.message_key(id))
                .await?;
            messages.extend(
                records
                    .into_iter()
                    .map(|(m, _)| OutboxMessage { content: None, ..m })
                    .filter(|m| state.is_none_or(|s| m.state == s)),
            );
        }
        Ok(messages)
    }
}
