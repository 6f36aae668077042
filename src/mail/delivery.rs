//! The delivery workers: a dispatcher claims due messages of the outbox with a lease and
//! hands them to `workers` senders, each keeping one SMTP connection open for the next
//! message (reopened when the settings change, when it fails, or after it idled), and
//! records each outcome.
//!
//! One slow or bad message holds up only its own sender; a panic while sending one ends
//! that message (`DEAD`), not the sender. The dispatcher sleeps until the
//! next message is due or new mail is queued (a wake-up, not polling). When the SMTP server
//! cannot be reached (XOAUTH2's token, connecting, TLS, greeting or AUTH fails), the
//! dispatcher claims nothing more for a pause (1 s doubling up to 30 s, ended early by new settings), as
//! Postfix does with a dead destination: during an outage queued mail waits untouched
//! instead of each message failing an attempt of its own. A host that
//! `--smtp-deny-private-addresses` refuses at connect time (settings saved before the flag, a
//! name rebound to an internal address) is the settings' problem that no retry fixes: the
//! message is `DEAD` at once, its error naming the address and the flag. A claim is a lease
//! longer than the longest send: if this process dies, the messages it held come back when
//! their leases expire, and at most the message whose 250 was not yet recorded is sent
//! twice. The lease is taken at claim time, but the send may start much later (the message
//! waits for a free sender, the connection for the server's greeting): so once the
//! connection is open, before `MAIL FROM`, a sender checks that its claim still outlives the
//! longest send, renewing it by compare-and-swap if not, and sends nothing if another sender
//! took the message meanwhile (`Sender::hold_claim`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use lettre::address::Envelope;
use lettre::Address;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connection::{self, Failed, Login, Stage, Stages};
use crate::clock::Clock;
use crate::crypto;
use crate::metrics::Metrics;
use crate::notify::{Attempt, MailQueued, OutboxMessage, OutboxStore, CONTENT_PURPOSE};
use crate::settings::{human, SettingsService, SmtpSettings};

/// Longest sleep of an idle dispatcher (a backstop against clock jumps).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// Longest sleep of an idle dispatcher on a shared store: another replica may have queued
/// mail, or died holding claims, without waking this one.
const SHARED_IDLE: Duration = Duration::from_secs(1);
/// Pause after a store failure.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);
/// A connection idle longer is closed rather than reused: servers drop idle clients.
const MAX_CONNECTION_IDLE: Duration = Duration::from_secs(30);
/// The first pause after the SMTP server could not be reached; it doubles with each
/// failure that follows one.
const RELAY_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause: no longer than a message's first retry (`BACKOFF_BASE`), so that a
/// message retried on its own schedule finds delivery running again.
const MAX_RELAY_PAUSE: Duration = crate::notify::message::BACKOFF_BASE;

/// The delivery workers of one process.
pub struct Delivery {
    store: Arc<dyn OutboxStore>,
    settings: SettingsService,
    clock: Clock,
    wake: Arc<MailQueued>,
    workers: usize,
    metrics: Metrics,
    claim_margin: Duration,
    max_idle: Duration,
    relay: Arc<RelayGate>,
}

/// A claimed message and the settings to send it with.
type Claimed = (OutboxMessage, Arc<SmtpSettings>);

impl Delivery {
    /// Workers sending at most `workers` messages at once, woken by `wake`.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        settings: SettingsService,
        clock: Clock,
        wake: Arc<MailQueued>,
        workers: usize,
        metrics: Metrics,
    ) -> Self {
        let relay = Arc::new(RelayGate::new(metrics.clone()));
        Self {
            store,
            settings,
            clock,
            wake,
            workers: workers.max(1),
            metrics,
            claim_margin: Duration::from_secs(60),
            max_idle: MAX_IDLE,
            relay,
        }
    }

    /// How long a claim outlives the longest send (`--claim-margin`).
    pub fn claim_margin(mut self, margin: Duration) -> Self {
        self.claim_margin = margin;
        self
    }

    /// Delivery from a store other processes write too (replicas on etcd): another replica
    /// may queue mail, or die holding claims, without waking this one, so an idle
    /// dispatcher looks again every [`SHARED_IDLE`].
    pub fn shared_store(mut self, shared: bool) -> Self {
        self.max_idle = if shared { SHARED_IDLE } else { MAX_IDLE };
        self
    }

    /// Delivers until `stopping` is cancelled, then lets the senders finish what they hold
    /// (at most `grace`).
    pub async fn run(self, stopping: CancellationToken, grace: Duration) {
        let (to_senders, queue) = claim_queue(self.workers);
        let mut senders = tokio::task::JoinSet::new();
        for n in 0..self.workers {
            let sender = Sender {
                store: self.store.clone(),
                settings: self.settings.clone(),
                clock: self.clock.clone(),
                connection: None,
                metrics: self.metrics.clone(),
                relay: self.relay.clone(),
                claim_margin: self.claim_margin,
            };
            senders.spawn(
                sender
                    .run(queue.clone())
                    .instrument(tracing::info_span!("sender", n)),
            );
        }
        drop(queue);
        self.dispatch(&to_senders, &stopping).await;
        drop(to_senders);
        let all = async { while senders.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            // Dropping the set stops them.
            tracing::warn!(
                "sends still in flight after the grace period, stopped; their leases will bring them back"
            );
        }
    }

    async fn dispatch(&self, to_senders: &mpsc::Sender<Claimed>, stopping: &CancellationToken) {
        while !stopping.is_cancelled() {
            let settings = match self.settings.get().await {
                Ok(Some(settings)) => settings,
                Ok(None) => {
                    self.idle(self.max_idle, stopping).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the SMTP settings");
                    self.idle(FAILURE_PAUSE, stopping).await;
                    continue;
                }
            };
            let now = self.clock.now();
            if let Some(pause) = self.relay.paused(settings.revision, now) {
                // Looks again every second: new settings end the pause.
                self.idle(pause.min(RELAY_PAUSE), stopping).await;
                continue;
            }
            let due = match self.store.due_messages(now, self.workers * 4).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox");
                    self.idle(FAILURE_PAUSE, stopping).await;
                    continue;
                }
            };
            if due.is_empty() {
                let next = self.store.next_due().await.ok().flatten();
                let wait =
                    next.map_or(self.max_idle, |t| t.duration_since(now).unwrap_or_default());
                self.idle(wait.min(self.max_idle), stopping).await;
                continue;
            }
            for message in due {
                let slot = tokio::select! {
                    slot = to_senders.reserve() => slot,
                    () = stopping.cancelled() => return,
                };
                let Ok(slot) = slot else { return };
                if let Some(claimed) = self.claim(message, &settings).await {
                    slot.send((claimed, settings.clone()));
                }
            }
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
        let lease = send_bound(settings) + self.claim_margin;
        claimed.claim(&crypto::random_id("lease_"), now, lease);
        claimed.version += 1;
        match self.store.claim_message(message.version, &claimed).await {
            Ok(true) => Some(claimed),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(error = %e, message = %message.id, "cannot claim");
                None
            }
        }
    }

    async fn idle(&self, wait: Duration, stopping: &CancellationToken) {
        tokio::select! {
            () = self.wake.announced() => {}
            () = tokio::time::sleep(wait) => {}
            () = stopping.cancelled() => {}
        }
    }
}

/// A bounded queue of claimed messages that several senders take from. By hand (a receiver behind a
/// mutex) rather than a multi-consumer channel crate: dispatch reserves a place in the
/// queue (`mpsc::Sender::reserve`) before it claims a message, so that a message is claimed
/// only once a sender is free to take it; async-channel and flume offer no reservation.
fn claim_queue(
    capacity: usize,
) -> (
    mpsc::Sender<Claimed>,
    Arc<tokio::sync::Mutex<mpsc::Receiver<Claimed>>>,
) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// The longest one send may take: every SMTP step is bounded by `timeout`, and a send is
/// at most a handful of them; with XOAUTH2, two token fetches more (one refused by the
/// server, and the next), each bounded by `timeout` too.
fn send_bound(settings: &SmtpSettings) -> Duration {
    if settings.auth.mechanism == crate::settings::Mechanism::Xoauth2 {
        settings.timeout * 6
    } else {
        settings.timeout * 4
    }
}

/// An open connection, and what it was opened with.
struct Open {
    revision: u64,
    smtp: connection::Smtp,
    last_used: Instant,
}

/// How long a sender that stops waits for the server to answer its QUIT.
const MAX_QUIT: Duration = Duration::from_secs(5);

/// Says goodbye to the server of a connection no longer wanted, waiting at most `within`.
async fn quit(mut open: Open, within: Duration) {
    let _ = tokio::time::timeout(within, open.smtp.connection.quit()).await;
}

/// One sender: takes claimed messages, keeps a connection.
struct Sender {
    store: Arc<dyn OutboxStore>,
    settings: SettingsService,
    clock: Clock,
    connection: Option<Open>,
    metrics: Metrics,
    relay: Arc<RelayGate>,
    claim_margin: Duration,
}

/// How one claimed message ended with its sender.
enum Outcome {
    /// An attempt was made: to be recorded.
    Attempted(Attempt),
    /// The claim ran out before the message was given to the server, and another took
    /// it (or the store could not renew it): nothing was sent, nothing is recorded.
    ClaimLost,
}

impl Sender {
    async fn run(mut self, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Claimed>>>) {
        loop {
            let job = queue.lock().await.recv().await;
            let Some((mut message, settings)) = job else {
                break;
            };
            let span = tracing::info_span!("deliver", message = %message.id, organisation = %message.organisation, attempt = message.attempts);
            let started = Instant::now();
            let outcome = guarded(self.attempt(&mut message, &settings))
                .instrument(span.clone())
                .await
                .unwrap_or_else(|failed| {
                    // Mid-exchange, perhaps: not a connection to reuse.
                    self.connection = None;
                    Outcome::Attempted(failed)
                });
            let attempt = match outcome {
                Outcome::Attempted(attempt) => attempt,
                Outcome::ClaimLost => {
                    let _enter = span.enter();
                    tracing::warn!("the claim ran out before sending, and another holds the message now: not sent");
                    continue;
                }
            };
            let (outcome, code) = match &attempt {
                Attempt::Sent => ("sent", None),
                Attempt::Permanent { code, .. } => ("permanent_failure", *code),
                Attempt::Transient { code, .. } => ("transient_failure", *code),
            };
            self.metrics.attempt(outcome, code, started.elapsed());
            self.record(&message, attempt).instrument(span).await;
        }
        if let Some(open) = self.connection.take() {
            quit(open, MAX_QUIT).await;
        }
    }

    async fn attempt(&mut self, message: &mut OutboxMessage, settings: &SmtpSettings) -> Outcome {
        let opened = match &message.content {
            Some(sealed) => self
                .settings
                .master_key()
                .open_bytes(CONTENT_PURPOSE, sealed)
                .map_err(|e| e.to_string()),
            // Only a SENT or CANCELLED message has none, and neither is ever claimed.
            None => Err("the message's content was dropped".to_string()),
        };
        let content = match opened {
            Ok(content) => content,
            Err(error) => return Outcome::Attempted(Attempt::Permanent { code: None, error }),
        };
        let envelope = match envelope(message) {
            Ok(envelope) => envelope,
            Err(error) => return Outcome::Attempted(Attempt::Permanent { code: None, error }),
        };
        let bound = send_bound(settings);
        let send = self.send(message, settings, &envelope, &content);
        match tokio::time::timeout(bound, send).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let error = format!("no answer within {}", human(bound));
                // Without a connection, the time ran out opening one: the server was
                // never reached.
                if self.connection.take().is_none() {
                    self.relay
                        .unreachable(settings.revision, self.clock.now(), &error);
                }
                Outcome::Attempted(Attempt::Transient { code: None, error })
            }
        }
    }

    /// Sends over the open connection, or a new one. A reused connection that fails before
    /// the server answered is retried once on a fresh one (servers close idle clients).
    async fn send(
        &mut self,
        message: &mut OutboxMessage,
        settings: &SmtpSettings,
        envelope: &Envelope,
        content: &[u8],
    ) -> Outcome {
        for fresh in [false, true] {
            let reusable = self.connection.as_ref().is_some_and(|open| {
                open.revision == settings.revision
                    && !open.smtp.connection.has_broken()
                    && open.last_used.elapsed() < MAX_CONNECTION_IDLE
            });
            if fresh || !reusable {
                if let Some(stale) = self.connection.take() {
                    // Aside: a server that does not answer QUIT must not hold up this
                    // message, nor run out its bound and pause delivery.
                    tokio::spawn(quit(stale, settings.timeout));
                }
                let mut failure = LastFailure::default();
                let opened = connection::open(
                    settings,
                    self.settings.master_key(),
                    self.settings.address_guard(),
                    &Login::cached(self.settings.oauth2_tokens(), self.clock.now()),
                    &mut failure,
                )
                .await;
                match opened {
                    Ok(smtp) => {
                        self.relay.reached(settings.revision);
                        self.connection = Some(Open {
                            revision: settings.revision,
                            smtp,
                            last_used: Instant::now(),
                        });
                    }
                    // The private-address guard refused the host: a configuration problem an
                    // operator must fix, which no retry would. The message is DEAD (the
                    // error names the address and the flag; RetryMessage once fixed), and
                    // delivery does not pause: every message meets the same refusal at once.
                    Err(Failed) if failure.refused => {
                        return Outcome::Attempted(Attempt::Permanent {
                            code: None,
                            error: failure.error(),
                        });
                    }
                    // Connecting is the relay's or the settings' problem, not the message's:
                    // retried whatever the code, and delivery pauses.
                    Err(Failed) => {
                        let error = failure.error();
                        self.relay
                            .unreachable(settings.revision, self.clock.now(), &error);
                        return Outcome::Attempted(Attempt::Transient {
                            code: failure.code,
                            error,
                        });
                    }
                }
            }
            // The connection is open (the wait for its greeting may have been long): the
            // message goes to the server only under a claim that outlives the rest of
            // the send.
            if !self.hold_claim(message, settings).await {
                return Outcome::ClaimLost;
            }
            let open = self.connection.as_mut().expect("opened above");
            let result = open.smtp.send(envelope, content).await;
            open.last_used = Instant::now();
            match result {
                Ok(_) => return Outcome::Attempted(Attempt::Sent),
                Err(e) => {
                    self.connection = None;
                    let code = e.status().map(u16::from);
                    if !fresh && reusable && code.is_none() {
                        tracing::debug!(error = %e, "reused connection failed; retrying on a new one");
                        continue;
                    }
                    return Outcome::Attempted(if e.is_permanent() {
                        Attempt::Permanent {
                            code,
                            error: e.to_string(),
                        }
                    } else {
                        Attempt::Transient {
                            code,
                            error: e.to_string(),
                        }
                    });
                }
            }
        }
        unreachable!("the second pass always returns")
    }

    /// Whether `claimed` is still this sender's for at least the longest send, by the
    /// clock: the lease taken at claim time does not tell, since the message may have
    /// waited for a sender, and its connection for the server's greeting. A lease with that
    /// much left is used as it is (no store request); one with less is renewed by a
    /// compare-and-swap on the version claimed, which fails if the lease ran out and
    /// another sender, of this process or another, claimed the message meanwhile. Then (or
    /// if the store does not answer) the message must not be sent: it is not this sender's.
    async fn hold_claim(&self, claimed: &mut OutboxMessage, settings: &SmtpSettings) -> bool {
        let now = self.clock.now();
        let bound = send_bound(settings);
        let Some(lease) = &claimed.lease else {
            return false;
        };
        if lease.until >= now + bound {
            return true;
        }
        let mut renewed = claimed.clone();
        if let Some(lease) = &mut renewed.lease {
            lease.until = now + bound + self.claim_margin;
        }
        renewed.version += 1;
        match self.store.claim_message(claimed.version, &renewed).await {
            Ok(true) => {
                *claimed = renewed;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the claim; not sending");
                false
            }
        }
    }

    /// Records the outcome, if this sender's claim still holds. The write is not waited
    /// on for durability: the sender goes on with the next message, and the store's flush
    /// follows within moments. A crash before that flush makes the message due again — sent
    /// twice, never lost — which is the at-least-once bargain; waiting for the flush would
    /// cap each sender at one message per flush.
    async fn record(&self, claimed: &OutboxMessage, attempt: Attempt) {
        match &attempt {
            Attempt::Sent => tracing::info!("sent"),
            Attempt::Permanent { code, error } => {
                tracing::warn!(smtp_code = ?code, %error, "refused for good")
            }
            Attempt::Transient { code, error } => {
                tracing::info!(smtp_code = ?code, %error, "failed, will retry")
            }
        }
        let owner = claimed
            .lease
            .as_ref()
            .map(|l| l.owner.clone())
            .unwrap_or_default();
        let mut current = claimed.clone();
        loop {
            if !current.held_by(&owner) {
                tracing::warn!("the claim expired before the outcome was recorded");
                return;
            }
            let mut next = current.clone();
            let jitter = rand::thread_rng().gen::<f64>();
            next.finish(attempt.clone(), self.clock.now(), jitter);
            next.version += 1;
            match self.store.settle_message(current.version, &next).await {
                Ok(true) => {
                    let state = format!("{:?}", next.state).to_lowercase();
                    self.metrics.messages(&state, 1);
                    return;
                }
                Ok(false) => match self.store.message(&claimed.id).await {
                    Ok(Some(latest)) => current = latest,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record the outcome; the lease will bring the message back");
                        return;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "cannot record the outcome; the lease will bring the message back");
                    return;
                }
            }
        }
    }
}

/// What a panic while sending leaves in the message's `last_error`; the panic itself goes
/// to the server's log (it may quote the message, which the API does not show).
const PANICKED: &str = "internal error while sending (see the server log)";

/// Awaits one attempt. A panic in it (a bug met on this message) ends the attempt as a
/// permanent failure (`Err`) instead of ending the sender: otherwise the message would stay
/// claimed, and once its claim came back it would take the next sender down too, until
/// none was left.
async fn guarded<T>(attempt: impl Future<Output = T>) -> Result<T, Attempt> {
    AssertUnwindSafe(attempt).catch_unwind().await.map_err(|_| {
        tracing::error!("sending panicked; the message is dead (RetryMessage once fixed)");
        Attempt::Permanent {
            code: None,
            error: PANICKED.into(),
        }
    })
}

/// Whether delivery waits out an SMTP server that could not be reached: shared by the
/// dispatcher, which claims nothing while paused, and the senders, which report.
struct RelayGate {
    outage: std::sync::Mutex<Option<Outage>>,
    metrics: Metrics,
}

/// An SMTP server (of one settings revision) that could not be reached.
struct Outage {
    revision: u64,
    /// Pauses so far; each doubles the next.
    pauses: u32,
    until: SystemTime,
}

impl RelayGate {
    fn new(metrics: Metrics) -> Self {
        Self {
            outage: std::sync::Mutex::new(None),
            metrics,
        }
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much longer delivery with the settings of `revision` waits, if it does.
    fn paused(&self, revision: u64, now: SystemTime) -> Option<Duration> {
        let outage = self.outage();
        let outage = outage.as_ref().filter(|o| o.revision == revision)?;
        outage
            .until
            .duration_since(now)
            .ok()
            .filter(|d| !d.is_zero())
    }

    /// A connection with the settings of `revision` failed: pauses delivery, longer if the
    /// failure ends a pause (several senders failing at once count once).
    fn unreachable(&self, revision: u64, now: SystemTime, error: &str) {
        let mut outage = self.outage();
        let pauses = match outage.as_ref() {
            Some(o) if o.revision == revision && now < o.until => return,
            Some(o) if o.revision == revision => o.pauses + 1,
            _ => 1,
        };
        let pause = RELAY_PAUSE
            .saturating_mul(1 << (pauses - 1).min(16))
            .min(MAX_RELAY_PAUSE);
        tracing::warn!(%error, pause = %human(pause), "the SMTP server cannot be reached; delivery paused");
        *outage = Some(Outage {
            revision,
            pauses,
            until: now + pause,
        });
        self.metrics.relay_paused(true);
    }

    /// A connection with the settings of `revision` opened: delivery runs.
    fn reached(&self, revision: u64) {
        let mut outage = self.outage();
        if outage.as_ref().is_some_and(|o| o.revision <= revision) {
            tracing::info!("the SMTP server is reachable again; delivery resumed");
            *outage = None;
            self.metrics.relay_paused(false);
        }
    }
}

/// The failing stage of a connection attempt.
#[derive(Default)]
struct LastFailure {
    stage: Option<Stage>,
    code: Option<u16>,
    detail: String,
    /// Refused before connecting (the private-address guard).
    refused: bool,
}

impl LastFailure {
    /// What failed, at which stage.
    fn error(&self) -> String {
        let stage = self.stage.map_or_else(String::new, |s| format!("{s}: "));
        format!("{stage}{}", self.detail)
    }
}

impl Stages for LastFailure {
    fn begin(&mut self, stage: Stage) {
        self.stage = Some(stage);
    }

    fn pass(&mut self, _smtp_code: Option<u16>, _detail: String) {}

    fn fail(&mut self, smtp_code: Option<u16>, detail: String) -> Failed {
        self.code = smtp_code;
        self.detail = detail;
        Failed
    }

    fn refuse(&mut self, detail: String) -> Failed {
        self.refused = true;
        self.fail(None, detail)
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

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "CONNECT: connection refused";

    #[tokio::test]
    async fn a_panic_while_sending_ends_the_attempt_not_the_sender() {
        let failed = guarded(async { panic!("a bug met on this message") }).await;
        match failed {
            Err(Attempt::Permanent { code: None, error }) => assert_eq!(error, PANICKED),
            other => panic!("expected a permanent failure, got {other:?}"),
        }
        assert!(matches!(
            guarded(async { Attempt::Sent }).await,
            Ok(Attempt::Sent)
        ));
    }

    #[test]
    fn an_unreachable_relay_pauses_delivery_1_s_doubling_to_30_s() {
        let gate = RelayGate::new(Metrics::new());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(gate.paused(7, t0), None);

        gate.unreachable(7, t0, REFUSED);
        assert_eq!(gate.paused(7, t0), Some(Duration::from_secs(1)));
        // Other senders failing within the pause do not lengthen it.
        gate.unreachable(7, t0 + Duration::from_millis(500), REFUSED);
        assert_eq!(gate.paused(7, t0), Some(Duration::from_secs(1)));
        assert_eq!(gate.paused(7, t0 + Duration::from_secs(1)), None);

        let mut now = t0;
        for expected in [2, 4, 8, 16, 30, 30] {
            now += Duration::from_secs(60);
            gate.unreachable(7, now, REFUSED);
            assert_eq!(gate.paused(7, now), Some(Duration::from_secs(expected)));
        }
        assert_eq!(gate.paused(8, now), None, "new settings deliver at once");

        gate.reached(7);
        assert_eq!(gate.paused(7, now), None);
        now += Duration::from_secs(60);
        gate.unreachable(7, now, REFUSED);
        assert_eq!(
            gate.paused(7, now),
            Some(Duration::from_secs(1)),
            "a success starts over"
        );
    }
}
