//! Where rendering runs: threads of tokio's blocking pool, never the runtime's workers.
//! Rendering is synchronous and a caller's template may compile and render for seconds
//! (an override, a notification template), which on one of the runtime's few workers would
//! stall every other request, delivery and the health service meanwhile.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::ports::StoreError;
use crate::quota::Shares;

/// Threads that render, at most so many at once (`--send-threads`) and a quarter of them of
/// one organisation, so that one organisation's slow templates leave the others threads to
/// run on; and each organisation's turns to render, at most half the cores at once, so that
/// they leave the others CPU as well. Shared by the sends, the token emails, the account
/// notices and the previews.
#[derive(Clone)]
pub struct RenderThreads {
    threads: Arc<Semaphore>,
    shares: Arc<Shares>,
    turns: Arc<Shares>,
    metrics: Metrics,
}

impl RenderThreads {
    /// At most `threads` at once, counted in `metrics`' `sends` gauge.
    pub fn new(threads: usize, metrics: Metrics) -> Self {
        Self {
            threads: Arc::new(Semaphore::new(threads.max(1))),
            shares: Arc::new(Shares::new((threads / 4).max(1))),
            turns: Arc::new(Shares::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get() / 2)
                    .max(1),
            )),
            metrics,
        }
    }

    /// Runs `work` of `organisation` on a thread of its own once one is free; its store
    /// calls still go through the runtime's drivers. Once started, it runs to its end even
    /// if its caller goes away (a staged batch is then queued or forgotten whole). A panic
    /// in it goes on in the caller.
    pub async fn run<T: Send + 'static>(
        &self,
        organisation: &str,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let share = self.shares.of(organisation);
        let waiting = Counted::new(&self.metrics, "waiting");
        let own = share.acquire_owned().await.map_err(|_| shutting_down())?;
        let slot = self
            .threads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| shutting_down())?;
        drop(waiting);
        let running = Counted::new(&self.metrics, "running");
        let runtime = tokio::runtime::Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            let _slots = (own, slot, running);
            runtime.block_on(work)
        })
        .await;
        match done {
            Ok(result) => Ok(result),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(StoreError::Unavailable(
                    "the work was cancelled: shutting down".into(),
                )),
            },
        }
    }

    /// Runs the synchronous `render` of `organisation` on a thread, in one of its turns:
    /// one rendering (a built-in email, a preview, an override's check).
    pub async fn render<T: Send + 'static>(
        &self,
        organisation: &str,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (threads, owner) = (self.clone(), organisation.to_string());
        self.run(organisation, async move {
            let _turn = threads.turn(&owner).await?;
            Ok(render())
        })
        .await?
    }

    /// A turn of `organisation` to render: taken for each rendering, not while a message
    /// is written.
    pub async fn turn(&self, organisation: &str) -> Result<OwnedSemaphorePermit, StoreError> {
        self.turns
            .of(organisation)
            .acquire_owned()
            .await
            .map_err(|_| shutting_down())
    }
}

fn shutting_down() -> StoreError {
    StoreError::Unavailable("shutting down".into())
}

/// Work counted in the `sends` gauge under a state until dropped.
struct Counted {
    metrics: Metrics,
    state: &'static str,
}

impl Counted {
    fn new(metrics: &Metrics, state: &'static str) -> Self {
        metrics.sends(state, 1);
        Self {
            metrics: metrics.clone(),
            state,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.sends(self.state, -1);
    }
}
