//! The background jobs of a serving mailroom, each in a file of its own: delivery (in
//! `mail::delivery`), the store's health monitor, the sweeper, batch recovery on a shared
//! store, and cache invalidation; and [`Jobs`], which starts, supervises and drains them.

pub mod cache_invalidation;
pub mod health;
pub mod recovery;
pub mod sweeper;

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background jobs of one server: started with [`Jobs::essential`] or
/// [`Jobs::auxiliary`], told to stop with the token of [`Jobs::stopping`], and drained
/// with [`Jobs::drain`].
pub struct Jobs {
    tracker: TaskTracker,
    stop: CancellationToken,
    failed: mpsc::UnboundedSender<&'static str>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Jobs {
    /// No jobs yet, and where the name of an essential job that ends while serving is
    /// reported.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<&'static str>) {
        let (failed, failures) = mpsc::unbounded_channel();
        let jobs = Self {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            failed,
            handles: Vec::new(),
        };
        (jobs, failures)
    }

    /// Cancelled when shutdown begins: every job watches it and ends when it is.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Starts a job the service cannot do without (delivery, the sweeps, the store's
    /// health monitor, batch recovery on a shared store). If it ends while the server is
    /// not stopping, by a panic or a return, its name is reported: the server then stops
    /// with an error, so that its supervisor (systemd, Kubernetes) starts it again instead
    /// of it answering RPCs with, say, mail no longer delivered.
    pub fn essential(
        &mut self,
        name: &'static str,
        job: impl Future<Output = ()> + Send + 'static,
    ) {
        let watched = essential(name, job, self.stop.clone(), self.failed.clone());
        self.handles.push((name, self.tracker.spawn(watched)));
    }

    /// Starts a job the service can do without (the metrics endpoint, cache invalidation):
    /// it ends when shutdown begins, or on its own.
    pub fn auxiliary(
        &mut self,
        name: &'static str,
        job: impl Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.stop.clone();
        let job = async move {
            stop.run_until_cancelled(job).await;
        };
        self.handles.push((name, self.tracker.spawn(job)));
    }

    /// Tells every job to stop (if not told already) and waits, at most `grace`, for all
    /// of them to end; those still running then are aborted and waited for, so that no
    /// job holds the store once this returns. The jobs that had to be aborted.
    pub async fn drain(self, grace: Duration) -> Vec<&'static str> {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let mut aborted = Vec::new();
        for (name, handle) in self.handles {
            if !handle.is_finished() {
                handle.abort();
                aborted.push(name);
            }
            let _ = handle.await;
        }
        aborted
    }
}

/// Runs `job`; if it ends (a panic or a return) while `stop` is not cancelled, reports
/// `name` on `failed`.
async fn essential(
    name: &'static str,
    job: impl Future<Output = ()>,
    stop: CancellationToken,
    failed: mpsc::UnboundedSender<&'static str>,
) {
    use futures_util::FutureExt;
    let panicked = std::panic::AssertUnwindSafe(job)
        .catch_unwind()
        .await
        .is_err();
    if !stop.is_cancelled() {
        tracing::error!(
            job = name,
            panicked,
            "a background job ended while serving; stopping"
        );
        let _ = failed.send(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_essential_job_that_ends_while_serving_is_reported() {
        let (mut jobs, mut failures) = Jobs::new();
        jobs.essential("delivery", async { panic!("a bug met by the dispatcher") });
        assert_eq!(failures.recv().await, Some("delivery"));
        jobs.essential("sweeper", async {});
        assert_eq!(
            failures.recv().await,
            Some("sweeper"),
            "a return counts too"
        );
        let stop = jobs.stopping();
        jobs.essential("health monitor", async move { stop.cancelled().await });
        assert!(jobs.drain(Duration::from_secs(10)).await.is_empty());
        assert!(
            failures.recv().await.is_none(),
            "ending once the server stops is the normal end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_does_not_drain_is_aborted_after_the_grace() {
        let (mut jobs, _failures) = Jobs::new();
        jobs.auxiliary("metrics", std::future::pending());
        let stop = jobs.stopping();
        jobs.essential("stubborn", async move {
            stop.cancelled().await;
            std::future::pending::<()>().await;
        });
        let stop = jobs.stopping();
        jobs.essential("sweeper", async move { stop.cancelled().await });
        assert_eq!(jobs.drain(Duration::from_secs(10)).await, ["stubborn"]);
    }
}
