//! Group commit: one flusher task batches every write waiting for durability into a
//! single `flush` and real sync of sled's files ([`super::files`]), then answers them all.
//! Concurrent `flush_async` calls deadlock sled 0.34.7 (sled issue #1308), and one flush
//! for many writers is also what makes durable writes cheap.

use tokio::sync::{mpsc, oneshot};

use super::files::SledFiles;
use super::SledStore;
use crate::store::{Result, StoreError};

/// Scheduler rounds the flusher waits for more writers before it flushes.
pub(super) const GATHER_ROUNDS: usize = 4;

/// A writer waiting for durability, and the database to flush. The flusher holds the
/// database only while it has waiters, so that dropping the store releases the directory
/// at once.
pub(super) type FlushRequest = (oneshot::Sender<Result<(), String>>, sled::Db);

/// Flushes and syncs once for every batch of waiting writers, then wakes them all.
pub(super) async fn group_commit(
    mut requests: mpsc::UnboundedReceiver<FlushRequest>,
    files: SledFiles,
) {
    let files = std::sync::Arc::new(std::sync::Mutex::new(files));
    while let Some((first, db)) = requests.recv().await {
        let mut waiters = vec![first];
        // Lets the writers that are ready to run reach this queue before the flush starts:
        // one flush then covers them all instead of the first few.
        for _ in 0..GATHER_ROUNDS {
            let before = waiters.len();
            while let Ok((more, _)) = requests.try_recv() {
                waiters.push(more);
            }
            if waiters.len() == before && before > 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let files = files.clone();
        let commit = move || {
            let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
            files.commit(&db)
        };
        let outcome = match tokio::task::spawn_blocking(commit).await {
            Ok(Ok(bytes)) => {
                tracing::debug!(waiters = waiters.len(), bytes, took = ?started.elapsed(), "flushed and synced");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("flush task failed: {e}")),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "sled flush or sync failed");
        }
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }
}

impl SledStore {
    /// Waits until every write made before the call is on disk.
    pub(super) async fn durable(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.flusher
            .send((done, self.db.clone()))
            .map_err(|_| StoreError::Unavailable("the sled flusher stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Unavailable("the sled flusher stopped".into()))?
            .map_err(StoreError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acknowledged write waited for a real sync of sled's files begun after it: for
    /// each of many concurrent writers, a group commit that began once its write was made
    /// had synced the files (its count moves only once `fdatasync` returned) before the
    /// writer was answered. And the writers shared commits: one sync per batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_acknowledged_write_waited_for_a_sync_begun_after_it() {
        const WRITERS: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path(), 16 << 20).unwrap());
        let before = store.commits();
        let all_ready = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|n| {
                let (store, all_ready) = (store.clone(), all_ready.clone());
                tokio::spawn(async move {
                    all_ready.wait().await;
                    store
                        .users
                        .insert(format!("user{n}"), b"written".as_slice())
                        .unwrap();
                    // Every commit that begins from now on began after the write.
                    let made = store.commits();
                    store.durable().await.unwrap();
                    let answered = store.commits();
                    assert!(
                        answered.synced > made.begun,
                        "writer {n} answered after {} synced commits; commit {} began after \
                         its write",
                        answered.synced,
                        made.begun + 1
                    );
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let after = store.commits();
        assert_eq!(after.begun, after.synced, "every commit ended synced");
        let commits = after.synced - before.synced;
        assert!(
            commits <= WRITERS as u64 / 2,
            "{commits} commits for {WRITERS} concurrent writers: group commit shares them"
        );
    }
}
