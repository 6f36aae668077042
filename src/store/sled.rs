//! The embedded store: sled, one process per data directory.
//!
//! Multi-record operations are sled transactions across trees. Durability comes from one
//! flusher task that batches every write waiting for it into a single `flush` (group
//! commit): concurrent `flush_async` calls deadlock sled 0.34.7 (sled issue #1308), and
//! one flush for many writers is also what makes durable writes cheap.

use std::path::Path;

use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{decode, encode, After, Result, Store, StoreError};
use crate::auth::ApiKey;
use crate::settings::SmtpSettings;

const SETTINGS_KEY: &[u8] = b"smtp_settings";
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";

/// The sled store.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    keys: sled::Tree,
    key_digests: sled::Tree,
    flusher: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Must be called within a Tokio runtime: it
    /// starts the flusher task.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .open()
            .map_err(unavailable)?;
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        let (flusher, requests) = mpsc::unbounded_channel();
        tokio::spawn(
            group_commit(db.clone(), requests).instrument(tracing::info_span!("sled_flusher")),
        );
        Ok(Self {
            meta: tree("meta")?,
            keys: tree("api_keys")?,
            key_digests: tree("api_key_digests")?,
            db,
            flusher,
        })
    }

    /// Waits until every write made before the call is on disk.
    async fn durable(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.flusher
            .send(done)
            .map_err(|_| StoreError::Unavailable("the sled flusher stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the sled flusher stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

/// Flushes once for every batch of waiting writers, then wakes them all.
async fn group_commit(
    db: sled::Db,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.recv().await {
        let mut waiters = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiters.push(more);
        }
        let db = db.clone();
        let outcome = match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("flush task failed: {e}")),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "sled flush failed");
        }
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn aborted<E: std::fmt::Display>(e: TransactionError<E>) -> StoreError {
    match e {
        TransactionError::Abort(e) => StoreError::Unavailable(e.to_string()),
        TransactionError::Storage(e) => unavailable(e),
    }
}

#[async_trait]
impl Store for SledStore {
    async fn ping(&self) -> Result<()> {
        self.meta.get(SETTINGS_KEY).map_err(unavailable)?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.durable().await
    }

    async fn smtp_settings(&self) -> Result<Option<SmtpSettings>> {
        self.meta
            .get(SETTINGS_KEY)
            .map_err(unavailable)?
            .map(|bytes| decode("smtp_settings", &bytes))
            .transpose()
    }

    async fn swap_smtp_settings(&self, expected: u64, settings: &SmtpSettings) -> Result<bool> {
        let value = encode(settings);
        let swapped = self
            .meta
            .transaction(|meta| {
                let stored = meta.get(SETTINGS_KEY)?;
                let revision = match stored {
                    Some(bytes) => {
                        decode::<SmtpSettings>("smtp_settings", &bytes)
                            .map_err(ConflictableTransactionError::Abort)?
                            .revision
                    }
                    None => 0,
                };
                if revision != expected {
                    return Ok(false);
                }
                meta.insert(SETTINGS_KEY, value.as_slice())?;
                Ok(true)
            })
            .map_err(aborted)?;
        if swapped {
            self.durable().await?;
        }
        Ok(swapped)
    }

    async fn insert_api_key(&self, key: &ApiKey, only_if_first: bool) -> Result<bool> {
        let value = encode(key);
        let inserted = (&self.meta, &self.keys, &self.key_digests)
            .transaction(|(meta, keys, digests)| {
                if only_if_first && meta.get(BOOTSTRAPPED_KEY)?.is_some() {
                    return Ok(false);
                }
                meta.insert(BOOTSTRAPPED_KEY, b"1".as_slice())?;
                keys.insert(key.id.as_bytes(), value.as_slice())?;
                digests.insert(key.secret_digest.as_bytes(), key.id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(aborted)?;
        if inserted {
            self.durable().await?;
        }
        Ok(inserted)
    }

    async fn api_key_by_digest(&self, digest: &str) -> Result<Option<ApiKey>> {
        let Some(id) = self.key_digests.get(digest).map_err(unavailable)? else {
            return Ok(None);
        };
        self.keys
            .get(&id)
            .map_err(unavailable)?
            .map(|bytes| decode(&String::from_utf8_lossy(&id), &bytes))
            .transpose()
    }

    async fn list_api_keys(&self, after: After<'_>, limit: usize) -> Result<Vec<ApiKey>> {
        let range = match after {
            Some(after) => self.keys.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.keys.iter(),
        };
        range
            .take(limit)
            .map(|entry| {
                let (id, bytes) = entry.map_err(unavailable)?;
                decode(&String::from_utf8_lossy(&id), &bytes)
            })
            .collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let revoked = self
            .keys
            .transaction(|keys| {
                let Some(bytes) = keys.get(id)? else {
                    return Ok(None);
                };
                let mut key: ApiKey =
                    decode(id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                key.revoked = true;
                keys.insert(id.as_bytes(), encode(&key))?;
                Ok(Some(key))
            })
            .map_err(aborted)?;
        if revoked.is_some() {
            self.durable().await?;
        }
        Ok(revoked)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let _ = self.db.flush();
    }
}
