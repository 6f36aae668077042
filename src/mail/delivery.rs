//! The delivery workers: claim due messages of the outbox with a lease, send each through
//! the one pooled transport (rebuilt when the settings change), and record the outcome.
//!
//! One dispatcher claims messages while fewer than `workers` sends are in flight, so one
//! slow or bad message never holds up the others. It sleeps until the next message is due
//! or new mail is queued (a wake-up, not polling). A claim is a lease longer than the
//! longest send: if this process dies, the messages it held come back when their leases
//! expire, and at most the message whose 250 was not yet recorded is sent twice.

use std::sync::Arc;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{Address, AsyncTransport};
use rand::Rng;
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;

use super::transport::{self, Transport};
use crate::clock::Clock;
use crate::crypto;
use crate::notify::{Attempt, OutboxMessage, CONTENT_PURPOSE};
use crate::settings::{human, SettingsService, SmtpSettings};
use crate::store::Store;

/// Longest sleep of an idle dispatcher (a backstop against clock jumps).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// Pause after a store or setup failure.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// The delivery workers of one process.
pub struct Delivery {
    store: Arc<dyn Store>,
    settings: SettingsService,
    clock: Clock,
    wake: Arc<Notify>,
    workers: usize,
}

impl Delivery {
    /// Workers sending at most `workers` messages at once, woken by `wake`.
    pub fn new(
        store: Arc<dyn Store>,
        settings: SettingsService,
        clock: Clock,
        wake: Arc<Notify>,
        workers: usize,
    ) -> Self {
        Self {
            store,
            settings,
            clock,
            wake,
            workers: workers.max(1),
        }
    }

    /// Delivers until `stopping` turns true, then waits (at most `grace`) for the sends in
    /// flight.
    pub async fn run(self, mut stopping: watch::Receiver<bool>, grace: Duration) {
        let permits = Arc::new(Semaphore::new(self.workers));
        let mut current: Option<(u64, Transport)> = None;
        'dispatch: while !*stopping.borrow() {
            let settings = match self.settings.get().await {
                Ok(Some(settings)) => settings,
                Ok(None) => {
                    self.idle(MAX_IDLE, &mut stopping).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the SMTP settings");
                    self.idle(FAILURE_PAUSE, &mut stopping).await;
                    continue;
                }
            };
            if current
                .as_ref()
                .is_none_or(|(revision, _)| *revision != settings.revision)
            {
                match transport::build(&settings, self.settings.master_key(), self.workers as u32) {
                    Ok(t) => {
                        tracing::info!(etag = %settings.etag(), host = %settings.host, "SMTP transport built");
                        current = Some((settings.revision, t));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the SMTP transport");
                        self.idle(MAX_IDLE, &mut stopping).await;
                        continue;
                    }
                }
            }
            let Some((_, transport)) = &current else {
                continue;
            };
            let now = self.clock.now();
            let due = match self.store.due_messages(now, self.workers * 4).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    self.idle(FAILURE_PAUSE, &mut stopping).await;
                    continue;
                }
            };
            if due.is_empty() {
                let next = self.store.next_due().await.ok().flatten();
                let wait = next.map_or(MAX_IDLE, |t| t.duration_since(now).unwrap_or_default());
                self.idle(wait.min(MAX_IDLE), &mut stopping).await;
                continue;
            }
            for message in due {
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = stopped(&mut stopping) => break 'dispatch,
                };
                let Some(claimed) = self.claim(message, &settings).await else {
                    continue;
                };
                let send = Send {
                    store: self.store.clone(),
                    settings: self.settings.clone(),
                    clock: self.clock.clone(),
                    transport: transport.clone(),
                    bound: send_bound(&settings),
                };
                let span = tracing::info_span!("deliver", message = %claimed.id, organisation = %claimed.organisation, attempt = claimed.attempts);
                tokio::spawn(
                    async move {
                        send.deliver(claimed).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        let in_flight = u32::try_from(self.workers).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, permits.acquire_many(in_flight))
            .await
            .is_err()
        {
            tracing::warn!(
                "sends still in flight after the grace period; their leases will bring them back"
            );
        }
    }

    /// Claims `message` if it is still due: its lease outlives the longest send.
    async fn claim(
        &self,
        message: OutboxMessage,
        settings: &SmtpSettings,
    ) -> Option<OutboxMessage> {
        let now = self.clock.now();
        if !message.claimable(now) {
            return None;
        }
        let mut claimed = message.clone();
        claimed.claim(
            &crypto::random_id("lease_"),
            now,
            send_bound(settings) + Duration::from_secs(60),
        );
        claimed.version += 1;
        match self
            .store
            .swap_message(message.version, &claimed, false)
            .await
        {
            Ok(true) => Some(claimed),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, message = %message.id, "cannot claim");
                None
            }
        }
    }

    async fn idle(&self, wait: Duration, stopping: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = stopped(stopping) => {}
        }
    }
}

/// The longest one send may take: every SMTP step is bounded by `timeout`, and a send is
/// at most a handful of them.
fn send_bound(settings: &SmtpSettings) -> Duration {
    settings.timeout * 4
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// One send and the record of its outcome.
struct Send {
    store: Arc<dyn Store>,
    settings: SettingsService,
    clock: Clock,
    transport: Transport,
    bound: Duration,
}

impl Send {
    async fn deliver(self, message: OutboxMessage) {
        let attempt = self.attempt(&message).await;
        match &attempt {
            Attempt::Sent => tracing::info!("sent"),
            Attempt::Permanent { code, error } => {
                tracing::warn!(smtp_code = ?code, %error, "refused for good")
            }
            Attempt::Transient { code, error } => {
                tracing::info!(smtp_code = ?code, %error, "failed, will retry")
            }
        }
        self.record(&message, attempt).await;
    }

    async fn attempt(&self, message: &OutboxMessage) -> Attempt {
        let content = match self
            .settings
            .master_key()
            .open_bytes(CONTENT_PURPOSE, &message.content)
        {
            Ok(content) => content,
            Err(e) => {
                return Attempt::Permanent {
                    code: None,
                    error: e.to_string(),
                }
            }
        };
        let envelope = match envelope(message) {
            Ok(envelope) => envelope,
            Err(error) => return Attempt::Permanent { code: None, error },
        };
        match tokio::time::timeout(self.bound, self.transport.send_raw(&envelope, &content)).await {
            Ok(Ok(_)) => Attempt::Sent,
            Ok(Err(e)) => {
                let code = e.status().map(u16::from);
                if e.is_permanent() {
                    Attempt::Permanent {
                        code,
                        error: e.to_string(),
                    }
                } else {
                    Attempt::Transient {
                        code,
                        error: e.to_string(),
                    }
                }
            }
            Err(_) => Attempt::Transient {
                code: None,
                error: format!("no answer within {}", human(self.bound)),
            },
        }
    }

    /// Records the outcome, if this worker still holds the claim.
    async fn record(&self, claimed: &OutboxMessage, attempt: Attempt) {
        let owner = claimed
            .lease
            .as_ref()
            .map(|l| l.owner.clone())
            .unwrap_or_default();
        loop {
            let current = match self.store.message(&claimed.id).await {
                Ok(Some(current)) => current,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record the outcome; the lease will bring the message back");
                    return;
                }
            };
            if !current.held_by(&owner) {
                tracing::warn!("the claim expired before the outcome was recorded");
                return;
            }
            let mut next = current.clone();
            let jitter = rand::thread_rng().gen::<f64>();
            next.finish(attempt.clone(), self.clock.now(), jitter);
            next.version += 1;
            match self.store.swap_message(current.version, &next, true).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record the outcome; the lease will bring the message back");
                    return;
                }
            }
        }
    }
}

fn envelope(message: &OutboxMessage) -> Result<Envelope, String> {
    let from: Address = message
        .envelope_from
        .parse()
        .map_err(|e| format!("bad sender {:?}: {e}", message.envelope_from))?;
    let to: Address = message
        .to
        .parse()
        .map_err(|e| format!("bad recipient {:?}: {e}", message.to))?;
    Envelope::new(Some(from), vec![to]).map_err(|e| e.to_string())
}
