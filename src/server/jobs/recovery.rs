//! Batch recovery on a shared store (etcd): a replica that died while queuing a request's
//! messages left a batch staged or committed halfway; another replica settles it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::notify::NotifyService;

/// How often a replica on a shared store looks for batches another one left halfway.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(60);
/// How long a batch may stay staged, or committed but not fully queued, before another
/// replica takes it as abandoned: far beyond the time any request takes.
const ABANDONED_AFTER: Duration = Duration::from_secs(300);

/// Drops batches whose writer died before committing them and finishes queuing those it
/// committed, every minute, until `stop` is cancelled.
pub async fn recover_batches(notify: NotifyService, clock: Clock, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECOVERY_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        match notify.recover_batches(clock.now() - ABANDONED_AFTER).await {
            Ok(0) => {}
            Ok(batches) => {
                tracing::info!(batches, "batches left halfway by another replica settled")
            }
            Err(e) => tracing::warn!(error = %e, "batch recovery failed"),
        }
    }
}
