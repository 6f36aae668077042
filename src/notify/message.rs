//! A message of the outbox and its life: QUEUED → SENDING → SENT, or RETRYING with
//! exponential backoff and jitter (30 s doubling, capped at 1 h), or DEAD after a 5xx, after
//! 12 attempts or after 24 hours; CANCELLED on request. A claim is a lease: a SENDING
//! message whose lease ran out is due again, so a crashed worker's messages come back.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;

/// First retry delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// Longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// Attempts before a message is DEAD.
pub const MAX_ATTEMPTS: u32 = 12;
/// Age (since queued or requeued) after which a failing message is DEAD.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where a message is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker (until its lease runs out).
    Sending,
    /// Accepted by the SMTP server.
    Sent,
    /// Failed temporarily; due again at `next_attempt_time`.
    Retrying,
    /// Failed for good.
    Dead,
    /// Cancelled before it was sent.
    Cancelled,
}

impl MessageState {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Retrying,
        Self::Dead,
        Self::Cancelled,
    ];
}

/// A worker's claim on a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (one value per claim).
    pub owner: String,
    /// When it runs out.
    pub until: SystemTime,
}

/// A message of the outbox. Its content (the whole RFC 5322 message, with the Message-ID
/// fixed at enqueue) is sealed: bodies may carry reset links.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Id, ordered by creation (`msg_…`).
    pub id: String,
    /// The organisation that sent it.
    pub organisation: String,
    /// The rendered sender header.
    pub from: String,
    /// The envelope sender address.
    pub envelope_from: String,
    /// The recipient address.
    pub to: String,
    /// The rendered subject.
    pub subject: String,
    /// The sealed RFC 5322 message; dropped once the message is `SENT` or `CANCELLED`:
    /// nothing reads it again, and a notification's text is not kept at rest after it went
    /// out.
    pub content: Option<Sealed>,
    /// Its Message-ID header.
    pub message_id_header: String,
    /// State.
    pub state: MessageState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
    /// The SMTP code of the last failure (0: none).
    pub last_smtp_code: u16,
    /// When it was queued.
    pub create_time: SystemTime,
    /// When the 24-hour window started (queued, or requeued by RetryMessage).
    pub window_start: SystemTime,
    /// When the next attempt is due.
    pub next_attempt_time: SystemTime,
    /// When the server accepted it.
    pub sent_time: Option<SystemTime>,
    /// The claim of the worker sending it.
    pub lease: Option<Lease>,
    /// Incremented by every change (compare-and-swap).
    pub version: u64,
}

/// A state change that the message's state does not allow.
#[derive(Debug, thiserror::Error)]
#[error("message {id} is {state:?}: {why}")]
pub struct StateError {
    /// The message.
    pub id: String,
    /// Its state.
    pub state: MessageState,
    /// What was refused.
    pub why: &'static str,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Attempt {
    /// The server accepted the message.
    Sent,
    /// The server refused it for good (5xx).
    Permanent {
        /// The reply code.
        code: Option<u16>,
        /// The error.
        error: String,
    },
    /// A temporary failure: 4xx, connection, TLS or timeout.
    Transient {
        /// The reply code, when the server replied.
        code: Option<u16>,
        /// The error.
        error: String,
    },
}

/// The delay before retry number `attempt` (1 for the first retry), with `jitter` in
/// [0, 1) taking up to half of it off so that failures do not come back in step.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let delay = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    delay.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

impl OutboxMessage {
    /// When a worker should look at it: pending messages at their next attempt, claimed
    /// ones when their lease runs out; `None` once it is over.
    pub fn due_at(&self) -> Option<SystemTime> {
        match self.state {
            MessageState::Queued | MessageState::Retrying => Some(self.next_attempt_time),
            MessageState::Sending => Some(
                self.lease
                    .as_ref()
                    .map_or(self.next_attempt_time, |l| l.until),
            ),
            MessageState::Sent | MessageState::Dead | MessageState::Cancelled => None,
        }
    }

    /// Whether a worker may claim it now.
    pub fn claimable(&self, now: SystemTime) -> bool {
        self.due_at().is_some_and(|due| due <= now)
    }

    /// Claims it for `owner` until `now + lease`.
    pub fn claim(&mut self, owner: &str, now: SystemTime, lease: Duration) {
        self.state = MessageState::Sending;
        self.attempts += 1;
        self.lease = Some(Lease {
            owner: owner.to_string(),
            until: now + lease,
        });
    }

    /// Ends a claim whose holder is known to be gone: the message is due again at `now`.
    pub fn release(&mut self, now: SystemTime) {
        if let Some(lease) = &mut self.lease {
            lease.until = lease.until.min(now);
        }
    }

    /// Whether `owner` still holds the claim.
    pub fn held_by(&self, owner: &str) -> bool {
        self.state == MessageState::Sending && self.lease.as_ref().is_some_and(|l| l.owner == owner)
    }

    /// Records how an attempt ended; `jitter` in [0, 1) spreads retries.
    pub fn finish(&mut self, attempt: Attempt, now: SystemTime, jitter: f64) {
        self.lease = None;
        match attempt {
            Attempt::Sent => {
                self.state = MessageState::Sent;
                self.content = None;
                self.sent_time = Some(now);
                self.last_error.clear();
                self.last_smtp_code = 0;
            }
            Attempt::Permanent { code, error } => {
                self.state = MessageState::Dead;
                self.last_error = error;
                self.last_smtp_code = code.unwrap_or(0);
            }
            Attempt::Transient { code, error } => {
                self.last_error = error;
                self.last_smtp_code = code.unwrap_or(0);
                let age = now.duration_since(self.window_start).unwrap_or_default();
                if self.attempts >= MAX_ATTEMPTS || age >= MAX_AGE {
                    self.state = MessageState::Dead;
                } else {
                    self.state = MessageState::Retrying;
                    self.next_attempt_time = now + backoff(self.attempts, jitter);
                }
            }
        }
    }

    /// Requeues a DEAD message (RetryMessage): a fresh set of attempts from `now`.
    pub fn requeue(&mut self, now: SystemTime) -> Result<(), StateError> {
        if self.state != MessageState::Dead {
            return Err(self.refuse("only a DEAD message can be retried"));
        }
        self.state = MessageState::Queued;
        self.attempts = 0;
        self.window_start = now;
        self.next_attempt_time = now;
        Ok(())
    }

    /// Cancels a pending message (CancelMessage).
    pub fn cancel(&mut self) -> Result<(), StateError> {
        match self.state {
            MessageState::Queued | MessageState::Retrying => {
                self.state = MessageState::Cancelled;
                self.content = None;
                Ok(())
            }
            MessageState::Sending => Err(self.refuse("it is being sent; cancel it if it fails")),
            _ => Err(self.refuse("only a QUEUED or RETRYING message can be cancelled")),
        }
    }

    fn refuse(&self, why: &'static str) -> StateError {
        StateError {
            id: self.id.clone(),
            state: self.state,
            why,
        }
    }
}

/// A queued message for unit tests.
#[cfg(test)]
pub(crate) fn sample(id: &str, now: SystemTime) -> OutboxMessage {
    OutboxMessage {
        id: id.into(),
        organisation: "acme".into(),
        from: "a@example.com".into(),
        envelope_from: "a@example.com".into(),
        to: "b@example.com".into(),
        subject: "s".into(),
        content: Some(serde_json::from_str("\"\"").unwrap()),
        message_id_header: "<1@example.com>".into(),
        state: MessageState::Queued,
        attempts: 0,
        last_error: String::new(),
        last_smtp_code: 0,
        create_time: now,
        window_start: now,
        next_attempt_time: now,
        sent_time: None,
        lease: None,
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(now: SystemTime) -> OutboxMessage {
        sample("msg_1", now)
    }

    fn transient() -> Attempt {
        Attempt::Transient {
            code: Some(421),
            error: "try later".into(),
        }
    }

    #[test]
    fn twelve_transient_failures_make_a_message_dead() {
        let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = message(now);
        for attempt in 1..=12 {
            assert!(m.claimable(now), "due at attempt {attempt}");
            m.claim("w", now, Duration::from_secs(60));
            assert!(!m.claimable(now), "a claim hides it until its lease ends");
            m.finish(transient(), now, 0.0);
            if attempt < 12 {
                assert_eq!(m.state, MessageState::Retrying);
                now = m.next_attempt_time;
            }
        }
        assert_eq!(m.state, MessageState::Dead);
        assert_eq!(m.attempts, 12);
        assert_eq!(m.last_smtp_code, 421);
        assert_eq!(m.due_at(), None);
    }

    #[test]
    fn a_day_of_failures_makes_a_message_dead_and_a_lease_expires() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = message(start);
        m.claim("w", start, Duration::from_secs(60));
        assert!(
            m.claimable(start + Duration::from_secs(60)),
            "a dead worker's claim comes back"
        );
        m.finish(transient(), start + MAX_AGE, 0.0);
        assert_eq!(m.state, MessageState::Dead);
        let mut requeued = m.clone();
        requeued.requeue(start + MAX_AGE).unwrap();
        assert_eq!(
            (requeued.state, requeued.attempts),
            (MessageState::Queued, 0)
        );
        assert!(m.cancel().is_err(), "a dead message is not pending");
    }

    #[test]
    fn the_content_is_dropped_once_sent_or_cancelled_and_kept_while_it_may_be_sent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let permanent = Attempt::Permanent {
            code: Some(550),
            error: "no such user".into(),
        };
        for (attempt, kept) in [
            (transient(), true),
            (permanent, true),
            (Attempt::Sent, false),
        ] {
            let mut m = message(now);
            m.claim("w", now, Duration::from_secs(60));
            m.finish(attempt.clone(), now, 0.0);
            assert_eq!(m.content.is_some(), kept, "{attempt:?}");
        }
        let mut cancelled = message(now);
        cancelled.cancel().unwrap();
        assert_eq!(cancelled.content, None);
        let mut sending = message(now);
        sending.claim("w", now, Duration::from_secs(60));
        assert!(sending.cancel().is_err());
        assert!(sending.content.is_some(), "a refused cancel keeps it");
    }

    #[test]
    fn backoff_doubles_from_30s_to_an_hour_with_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(120));
        assert_eq!(backoff(8, 0.0), Duration::from_secs(3600));
        assert_eq!(backoff(40, 0.0), Duration::from_secs(3600));
        assert_eq!(
            backoff(1, 0.999_999),
            Duration::from_secs(15) + Duration::from_nanos(15_000)
        );
    }
}
