//! The sweeper: hourly, or when asked, it forgets what is kept only for a while (ended
//! tokens, idle rate-limit windows, old idempotency keys, finished messages past their
//! retention).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::notify::NotifyService;
use crate::tokens::TokenService;

/// How often the sweeper runs.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Asks the sweeper for a sweep now, besides its hourly ones.
#[derive(Clone)]
pub struct Sweeper(mpsc::UnboundedSender<oneshot::Sender<()>>);

/// Where the sweeper takes the asks of its [`Sweeper`]s.
pub type Asks = mpsc::UnboundedReceiver<oneshot::Sender<()>>;

impl Sweeper {
    /// A sweeper's handle, and the asks it sends.
    pub fn new() -> (Self, Asks) {
        let (ask, asks) = mpsc::unbounded_channel();
        (Self(ask), asks)
    }

    /// Runs a sweep and waits until it has ended: one that began after this was called,
    /// so that it saw everything done before. `false` when the server has stopped.
    pub async fn sweep(&self) -> bool {
        let (done, ended) = oneshot::channel();
        self.0.send(done).is_ok() && ended.await.is_ok()
    }
}

/// Hourly, or when asked (`asks`): purges tokens ended more than a week ago, idle
/// rate-limit windows, idempotency keys older than a week, and finished messages older
/// than `message_retention`; then answers every ask that came before the sweep began.
/// Until `stop` is cancelled.
pub async fn sweep(
    tokens: TokenService,
    notify: NotifyService,
    message_retention: Duration,
    mut asks: Asks,
    stop: CancellationToken,
) {
    let mut asked = Vec::new();
    loop {
        // Asks that came in meanwhile are answered by this sweep: it begins after them.
        while let Ok(ask) = asks.try_recv() {
            asked.push(ask);
        }
        match tokens.purge().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "ended tokens purged"),
            Err(e) => tracing::warn!(error = %e, "token sweep failed"),
        }
        match notify.purge_idempotency().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "old idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
        }
        match notify.purge_messages(message_retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "finished messages past their retention purged"),
            Err(e) => tracing::warn!(error = %e, "message sweep failed"),
        }
        for ask in asked.drain(..) {
            let _ = ask.send(());
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            Some(ask) = asks.recv() => asked.push(ask),
            () = stop.cancelled() => return,
        }
    }
}
