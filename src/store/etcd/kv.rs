//! Reading and writing etcd: single keys, ranges and counts, several keys at once,
//! compare-and-swap guards, writes chunked under etcd's limits on a transaction, and sweeps
//! that delete what they find stale if it did not change meanwhile.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use futures_util::future::try_join_all;
use serde::de::DeserializeOwned;

use super::keys::*;
use super::{unavailable, EtcdStore};
use crate::store::{decode, After, Record, Result, StoreError};

/// Operations per transaction: below etcd's default `--max-txn-ops` of 128.
pub(super) const MAX_OPS: usize = 120;

/// Bytes of values per transaction: below etcd's default request limit of 1.5 MiB.
pub(super) const MAX_BYTES: usize = 1024 * 1024;

/// Transactions of one batch written at once.
pub(super) const PARALLEL_WRITES: usize = 4;

/// Entries read at once when a sweep walks a prefix: one response may carry at most what
/// the client decodes (4 MiB), and an idempotency record up to about 33 KB.
pub(super) const SCAN_PAGE: usize = 64;

/// Message records read in one transaction when a listing reads them (at most 48 MiB):
/// one group at a time, each message without its content once decoded.
pub(super) const MESSAGES_READ: usize = 32;

impl EtcdStore {
    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut response = self.kv.clone().get(key, None).await.map_err(unavailable)?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// How many keys start with `prefix` (etcd counts them; nothing is read).
    pub(super) async fn count_prefix(&self, prefix: String) -> Result<u64> {
        let options = GetOptions::new()
            .with_range(prefix_end(&prefix))
            .with_count_only();
        let response = self
            .kv
            .clone()
            .get(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }

    /// A record and the revision it was last written at (for a compare-and-swap).
    pub(super) async fn read<T: Record + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, i64)>> {
        self.get(key)
            .await?
            .map(|kv| Ok((decode(key, kv.value())?, kv.mod_revision())))
            .transpose()
    }

    /// The entries under `prefix` after `prefix` + `after` (exclusive), at most `limit`
    /// (0: all), in key order.
    pub(super) async fn range(
        &self,
        prefix: &str,
        after: After<'_>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        let start = match after {
            Some(after) => format!("{prefix}{after}\0"),
            None => prefix.to_string(),
        };
        self.range_to(&start, prefix_end(prefix), limit).await
    }

    pub(super) async fn range_to(
        &self,
        start: &str,
        end: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut response = self
            .kv
            .clone()
            .get(start, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(response.take_kvs())
    }

    /// Several keys read at once, in order; `None` for those absent.
    pub(super) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let reads = keys.chunks(MAX_OPS).map(|chunk| async move {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let response = self.txn(Txn::new().and_then(ops)).await?;
            Ok::<_, StoreError>(
                response
                    .op_responses()
                    .into_iter()
                    .map(|r| match r {
                        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
        });
        Ok(try_join_all(reads).await?.into_iter().flatten().collect())
    }

    /// Records whose keys end in the ids of `index` entries (after `skip` bytes of key).
    pub(super) async fn records_of<T: Record + DeserializeOwned>(
        &self,
        index: &[KeyValue],
        skip: usize,
        record_key: impl Fn(&str) -> String,
    ) -> Result<Vec<(T, i64)>> {
        let keys: Vec<String> = index
            .iter()
            .map(|kv| record_key(&String::from_utf8_lossy(&kv.key()[skip..])))
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        for (key, kv) in keys.iter().zip(self.get_many(&keys).await?) {
            if let Some(kv) = kv {
                records.push((decode(key, kv.value())?, kv.mod_revision()));
            }
        }
        Ok(records)
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.kv.clone().txn(txn).await.map_err(unavailable)
    }

    pub(super) async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.kv
            .clone()
            .put(key, value, None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Runs the operations in transactions of at most [`MAX_OPS`] operations and
    /// [`MAX_BYTES`], a few at once. Not atomic as a whole.
    pub(super) async fn write_chunked(&self, ops: Vec<(TxnOp, usize)>) -> Result<()> {
        let mut chunks: Vec<Vec<TxnOp>> = vec![Vec::new()];
        let mut bytes = 0;
        for (op, size) in ops {
            let current = chunks.last_mut().expect("one chunk at least");
            if current.len() == MAX_OPS || (bytes + size > MAX_BYTES && !current.is_empty()) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            chunks.last_mut().expect("one chunk at least").push(op);
        }
        for group in chunks.chunks(PARALLEL_WRITES) {
            let writes = group
                .iter()
                .filter(|ops| !ops.is_empty())
                .map(|ops| self.txn(Txn::new().and_then(ops.clone())));
            try_join_all(writes).await?;
        }
        Ok(())
    }

    /// Deletes `entries`, each if still at the revision read, with the keys that go with it.
    pub(super) async fn delete_unchanged(&self, entries: Vec<StaleEntry>) -> Result<usize> {
        let mut deleted = 0;
        // Two operations at the most for each: the entry and what goes with it.
        for chunk in entries.chunks(MAX_OPS / 2) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|e| Compare::mod_revision(e.key.clone(), CompareOp::Equal, e.revision))
                .collect();
            let mut ops = Vec::with_capacity(chunk.len() * 2);
            for e in chunk {
                ops.push(TxnOp::delete(e.key.clone(), None));
                if let Some(prefix) = &e.with_prefix {
                    ops.push(delete_prefix(prefix));
                }
            }
            if self
                .txn(Txn::new().when(compares).and_then(ops))
                .await?
                .succeeded()
            {
                deleted += chunk.len();
            }
        }
        Ok(deleted)
    }

    /// The next [`SCAN_PAGE`] entries under `prefix` after `after`, which moves to the last
    /// of them; empty at the end.
    pub(super) async fn next_page(
        &self,
        prefix: &str,
        after: &mut Option<String>,
    ) -> Result<Vec<KeyValue>> {
        let page = self.range(prefix, after.as_deref(), SCAN_PAGE).await?;
        if let Some(last) = page.last() {
            *after = Some(String::from_utf8_lossy(&last.key()[prefix.len()..]).into_owned());
        }
        Ok(page)
    }

    /// Walks the entries under `prefix` a page at a time and deletes those `verdict`
    /// finds stale, each if unchanged since it was read and in one transaction with the
    /// keys that go with it. How many entries it deleted.
    pub(super) async fn sweep(
        &self,
        prefix: &str,
        mut verdict: impl FnMut(&KeyValue) -> Result<Verdict>,
    ) -> Result<usize> {
        let (mut after, mut deleted) = (None, 0);
        loop {
            let page = self.next_page(prefix, &mut after).await?;
            if page.is_empty() {
                return Ok(deleted);
            }
            let mut old = Vec::new();
            for kv in page {
                if let Verdict::Stale { with_prefix } = verdict(&kv)? {
                    old.push(StaleEntry {
                        key: kv.key().to_vec(),
                        revision: kv.mod_revision(),
                        with_prefix,
                    });
                }
            }
            deleted += self.delete_unchanged(old).await?;
        }
    }
}

/// Deletes every key under `prefix`.
pub(super) fn delete_prefix(prefix: &str) -> TxnOp {
    TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
}

/// What a sweep does with an entry.
pub(super) enum Verdict {
    Keep,
    /// Delete it, and the keys under `with_prefix` with it.
    Stale {
        with_prefix: Option<String>,
    },
}

/// An entry a sweep deletes, if still at `revision`, with the keys under `with_prefix`.
pub(super) struct StaleEntry {
    key: Vec<u8>,
    revision: i64,
    with_prefix: Option<String>,
}

/// A compare that holds while the key is as read: at `revision`, or still absent.
pub(super) fn unchanged(key: &str, revision: Option<i64>) -> Compare {
    match revision {
        Some(revision) => Compare::mod_revision(key, CompareOp::Equal, revision),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    }
}

pub(super) fn put(key: impl Into<Vec<u8>>, value: Vec<u8>) -> TxnOp {
    TxnOp::put(key, value, None)
}
