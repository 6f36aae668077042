//! Queuing a batch of messages: staged first when too large for one transaction
//! (`outbox/s/<batch>`, `outbox/b/<batch>/<id>`), committed with its idempotency key in
//! one transaction that leaves a marker (`outbox/c/<batch>`), then its index entries
//! written in chunks; discarded when its request failed; finished or dropped by
//! [`crate::notify::OutboxStore::recover_batches`] on any replica when its writer died.

use std::time::SystemTime;

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};
use futures_util::future::try_join_all;

use super::keys::*;
use super::kv::*;
use super::EtcdStore;
use crate::notify::{Idempotency, OutboxMessage};
use crate::store::batch::{stage_and_commit, Staging};
use crate::store::keyspace::Encoding;
use crate::store::{decode, encode, Result};

/// Messages a batch may hold to be committed and queued in one transaction.
pub(super) const ONE_TXN_BATCH: usize = 32;

#[async_trait::async_trait]
impl Staging for EtcdStore {
    async fn stage_messages(&self, batch: &str, messages: &[OutboxMessage]) -> Result<()> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        let staging = self.staging_key(batch);
        let prefix = self.batch_prefix(batch);
        self.put(&staging, hex_time(first.create_time).into_bytes())
            .await?;
        let mut ops = Vec::with_capacity(messages.len() * 2);
        for message in messages {
            let value = encode(message);
            let size = value.len();
            ops.push((put(self.message_key(&message.id), value), size));
            let keys = encode(&self.index_keys(message));
            let size = keys.len();
            ops.push((put(format!("{prefix}{}", message.id), keys), size));
        }
        self.write_chunked(ops).await
    }

    async fn commit_batch(
        &self,
        batch: &str,
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let staging = self.staging_key(batch);
        let idempotency_key = idempotency.map(|k| self.idempotency_key(&k.organisation, &k.key));
        let staged = self
            .range(&self.batch_prefix(batch), None, ONE_TXN_BATCH + 1)
            .await?;
        if staged.is_empty() {
            // Dropped as abandoned (or never staged): a transaction with nothing to queue
            // would succeed, and the request acknowledge mail that does not exist.
            return Err(crate::notify::batch_gone(batch));
        }
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        if let (Some(key), Some(record)) = (&idempotency_key, idempotency) {
            compares.push(unchanged(key, None));
            ops.push(put(
                key.as_str(),
                encode(&self.ids_apart(batch, record).await?),
            ));
        }
        let in_one = staged.len() <= ONE_TXN_BATCH;
        // Dropped between the read above and this transaction: the staging key is gone.
        compares.push(Compare::create_revision(
            staging.as_str(),
            CompareOp::Greater,
            0,
        ));
        ops.push(TxnOp::delete(staging.as_str(), None));
        if in_one {
            for entry in &staged {
                let keys: Vec<String> =
                    decode(&String::from_utf8_lossy(entry.key()), entry.value())?;
                ops.extend(keys.into_iter().map(|k| put(k, Vec::new())));
            }
            ops.push(delete_prefix(&self.batch_prefix(batch)));
        } else {
            let started = self.get(&staging).await?.map(|kv| kv.value().to_vec());
            ops.push(put(self.commit_marker(batch), started.unwrap_or_default()));
        }
        let mut otherwise = Vec::new();
        if let Some(key) = &idempotency_key {
            otherwise.push(TxnOp::get(key.as_str(), None));
        }
        let response = self
            .txn(Txn::new().when(compares).and_then(ops).or_else(otherwise))
            .await?;
        if !response.succeeded() {
            let first = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                _ => None,
            });
            return match first {
                Some(kv) => {
                    let first = decode(&String::from_utf8_lossy(kv.key()), kv.value())?;
                    self.discard_batch(batch).await?;
                    Ok(Some(self.with_ids(first).await?))
                }
                None => {
                    self.forget_ids(batch).await?;
                    Err(crate::notify::batch_gone(batch))
                }
            };
        }
        if !in_one {
            self.queue_committed(batch).await?;
        }
        Ok(None)
    }

    async fn queue_messages(
        &self,
        batch: &str,
        messages: &[OutboxMessage],
        idempotency: Option<&Idempotency>,
    ) -> Result<Option<Idempotency>> {
        let values: Vec<Vec<u8>> = messages.iter().map(encode).collect();
        let bytes: usize = values.iter().map(Vec::len).sum();
        if messages.len() * 4 + 1 > MAX_OPS || bytes > MAX_BYTES {
            return stage_and_commit(self, batch, messages, idempotency).await;
        }
        let mut ops = Vec::with_capacity(messages.len() * 4 + 1);
        for (message, value) in messages.iter().zip(values) {
            ops.push(put(self.message_key(&message.id), value));
            ops.extend(
                self.index_keys(message)
                    .into_iter()
                    .map(|k| put(k, Vec::new())),
            );
        }
        let Some(record) = idempotency else {
            self.txn(Txn::new().and_then(ops)).await?;
            return Ok(None);
        };
        let key = self.idempotency_key(&record.organisation, &record.key);
        ops.push(put(key.as_str(), encode(record)));
        let txn = Txn::new()
            .when([unchanged(&key, None)])
            .and_then(ops)
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(None);
        }
        self.idempotency(&record.organisation, &record.key).await
    }

    async fn discard_batch(&self, batch: &str) -> Result<()> {
        let staging = self.staging_key(batch);
        self.txn(Txn::new().and_then([TxnOp::delete(staging.as_str(), None)]))
            .await?;
        self.forget_ids(batch).await?;
        let prefix = self.batch_prefix(batch);
        loop {
            let staged = self.range(&prefix, None, MAX_OPS * 8).await?;
            if staged.is_empty() {
                return Ok(());
            }
            let ops = staged
                .iter()
                .flat_map(|entry| {
                    let id = String::from_utf8_lossy(&entry.key()[prefix.len()..]).into_owned();
                    [
                        (TxnOp::delete(self.message_key(&id), None), 0),
                        (TxnOp::delete(entry.key(), None), 0),
                    ]
                })
                .collect();
            self.write_chunked(ops).await?;
        }
    }
}

impl EtcdStore {
    pub(super) async fn recover_batches(&self, before: SystemTime) -> Result<usize> {
        let started_before = |kv: &KeyValue| time_of_hex(kv.value()).is_none_or(|t| t < before);
        let mut recovered = 0;
        let staging = self.key(crate::store::keyspace::etcd_only::STAGING);
        for kv in self.range(&staging, None, 0).await? {
            if started_before(&kv) {
                let batch = String::from_utf8_lossy(&kv.key()[staging.len()..]).into_owned();
                self.discard_batch(&batch).await?;
                recovered += 1;
            }
        }
        let committed = self.begin(crate::store::keyspace::COMMITTED);
        for kv in self.range(&committed, None, 0).await? {
            if started_before(&kv) {
                let batch = String::from_utf8_lossy(&kv.key()[committed.len()..]).into_owned();
                self.queue_committed(&batch).await?;
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// Writes the index entries of a committed batch, chunk by chunk, then its marker.
    /// Each chunk removes the staging entries it queued, guarded by their revisions, so
    /// that two replicas finishing the same batch never queue a message twice.
    pub(super) async fn queue_committed(&self, batch: &str) -> Result<()> {
        let prefix = self.batch_prefix(batch);
        let per_txn = MAX_OPS / 4;
        loop {
            let staged = self.range(&prefix, None, per_txn * PARALLEL_WRITES).await?;
            if staged.is_empty() {
                break;
            }
            let writes = staged.chunks(per_txn).map(|chunk| async move {
                let mut compares = Vec::with_capacity(chunk.len());
                let mut ops = Vec::with_capacity(chunk.len() * 4);
                for entry in chunk {
                    compares.push(Compare::mod_revision(
                        entry.key(),
                        CompareOp::Equal,
                        entry.mod_revision(),
                    ));
                    let keys: Vec<String> =
                        decode(&String::from_utf8_lossy(entry.key()), entry.value())?;
                    ops.extend(keys.into_iter().map(|k| TxnOp::put(k, Vec::new(), None)));
                    ops.push(TxnOp::delete(entry.key(), None));
                }
                self.txn(Txn::new().when(compares).and_then(ops)).await
            });
            try_join_all(writes).await?;
        }
        self.txn(Txn::new().and_then([TxnOp::delete(self.commit_marker(batch), None)]))
            .await?;
        Ok(())
    }
}
