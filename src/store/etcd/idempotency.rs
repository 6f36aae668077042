//! Idempotency records (`outbox/i/<organisation>\0<key>`): the first use of a key, and the
//! ids it queued; more than [`IDS_INLINE`] ids are kept apart (`outbox/ii/<batch>/`),
//! named by the record.

use std::time::SystemTime;

use etcd_client::Txn;

use super::kv::*;
use super::EtcdStore;
use crate::notify::Idempotency;
use crate::store::keyspace::Encoding;
use crate::store::{decode, encode, Result};

/// Message ids an idempotency record holds itself; a larger batch's ids (100,000 are about
/// 3.3 MB, over etcd's request limit) are stored apart, in parts of this many.
pub(super) const IDS_INLINE: usize = 1000;

/// What an idempotency record holds in place of ids stored apart, before the batch's name.
/// Message ids start with `msg_`.
pub(super) const IDS_APART: &str = "@batch:";

impl EtcdStore {
    pub(super) async fn idempotency(
        &self,
        organisation: &str,
        key: &str,
    ) -> Result<Option<Idempotency>> {
        match self.read(&self.idempotency_key(organisation, key)).await? {
            Some((record, _)) => Ok(Some(self.with_ids(record).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn purge_idempotency(&self, before: SystemTime) -> Result<usize> {
        // A record goes with the ids it keeps apart, in one transaction: a crash between
        // the two would leave ids nothing names.
        self.sweep(&self.begin(crate::store::keyspace::IDEMPOTENCY), |kv| {
            let record: Idempotency = decode("idempotency", kv.value())?;
            Ok(if record.create_time < before {
                Verdict::Stale {
                    with_prefix: apart(&record).map(|batch| self.ids_prefix(&batch)),
                }
            } else {
                Verdict::Keep
            })
        })
        .await
    }

    /// The idempotency record to commit for `batch`: `record` itself, or, when its ids are
    /// too many for one etcd request, a record naming the batch, once the ids are written
    /// apart (under the batch's name: two requests racing with one key never mix them).
    pub(super) async fn ids_apart(&self, batch: &str, record: &Idempotency) -> Result<Idempotency> {
        let ids = &record.queued.message_ids;
        if ids.len() <= IDS_INLINE {
            return Ok(record.clone());
        }
        let prefix = self.ids_prefix(batch);
        let parts = ids
            .chunks(IDS_INLINE)
            .enumerate()
            .map(|(n, part)| {
                let value = encode(&part);
                let size = value.len();
                (put(format!("{prefix}{n:08}"), value), size)
            })
            .collect();
        self.write_chunked(parts).await?;
        let mut pointer = record.clone();
        pointer.queued.message_ids = vec![format!("{IDS_APART}{batch}")];
        Ok(pointer)
    }

    /// `record` with its ids, read back if they are stored apart.
    pub(super) async fn with_ids(&self, mut record: Idempotency) -> Result<Idempotency> {
        let Some(batch) = apart(&record) else {
            return Ok(record);
        };
        let prefix = self.ids_prefix(&batch);
        let mut ids = Vec::with_capacity(record.queued.recipients as usize);
        let mut after = None;
        loop {
            let parts = self.next_page(&prefix, &mut after).await?;
            if parts.is_empty() {
                record.queued.message_ids = ids;
                return Ok(record);
            }
            for part in &parts {
                let key = String::from_utf8_lossy(part.key());
                ids.extend(decode::<Vec<String>>(&key, part.value())?);
            }
        }
    }

    /// Deletes the ids of `batch` stored apart, if any.
    pub(super) async fn forget_ids(&self, batch: &str) -> Result<()> {
        let prefix = self.ids_prefix(batch);
        self.txn(Txn::new().and_then([delete_prefix(&prefix)]))
            .await?;
        Ok(())
    }
}

/// The batch whose ids `record` names in their place, if it does.
pub(super) fn apart(record: &Idempotency) -> Option<String> {
    match record.queued.message_ids.as_slice() {
        [only] => only.strip_prefix(IDS_APART).map(str::to_string),
        _ => None,
    }
}
