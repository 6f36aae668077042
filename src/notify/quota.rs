//! Per-organisation outbox quotas: one organisation can never fill the outbox (and, on
//! etcd, the cluster's space quota, after which every write of every organisation fails)
//! for the others. Checked before a request's messages are queued:
//!
//! - pending messages (queued, retrying or being sent), counted in the store's index;
//! - messages queued within the last hour;
//! - bytes queued (sealed) within the last 24 hours: every message is sent, dead or
//!   cancelled within 24 hours of being queued, so this bounds the bytes it can hold
//!   pending, and the store's growth from it.
//!
//! The hour and the day are [`Tally`](crate::quota::Tally) records: 24 buckets of a sliding window.

use std::time::Duration;

use crate::quota::OverQuota;

/// The window of [`Quotas::messages_per_hour`].
pub const HOUR: Duration = Duration::from_secs(3600);
/// The window of [`Quotas::bytes_per_day`].
pub const DAY: Duration = Duration::from_secs(86_400);
/// When to retry after the pending quota: delivery drains the outbox within about this.
const PENDING_RETRY: Duration = Duration::from_secs(60);

/// What one organisation may put in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Most messages pending at once.
    pub pending_messages: u64,
    /// Most messages queued within an hour.
    pub messages_per_hour: u64,
    /// Most bytes (sealed) queued within 24 hours.
    pub bytes_per_day: u64,
}

impl Default for Quotas {
    /// The flags' defaults (see `config.rs`).
    fn default() -> Self {
        Self {
            pending_messages: 100_000,
            messages_per_hour: 200_000,
            bytes_per_day: 1 << 30,
        }
    }
}

impl Quotas {
    /// Refused when `pending` messages plus `count` more pass the pending quota.
    pub fn check_pending(&self, pending: u64, count: u64) -> Result<(), OverQuota> {
        if pending.saturating_add(count) > self.pending_messages {
            return Err(OverQuota {
                quota: "pending_messages",
                limit: self.pending_messages,
                retry_after: PENDING_RETRY,
            });
        }
        Ok(())
    }
}

/// How long a pending count stays fresh.
const PENDING_FRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Organisations whose counts are kept at most (then all are counted again).
const PENDING_KEPT: usize = 10_000;

/// Pending counts by organisation, each walked in the store at most once a second: the
/// quota is checked on every send, and a count walks the organisation's pending index
/// (a backlog of 100,000 made it milliseconds a request). Between walks a count grows by
/// what this process queues and is forgotten when it cancels or requeues; deliveries only
/// make it smaller, so a kept count errs on the strict side for at most a second.
#[derive(Default)]
pub struct PendingCounts(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
);

impl PendingCounts {
    /// The count of `organisation` to check a request against: the kept one while fresh.
    /// `None` tells the caller to count: when none is kept, or to the first caller once the
    /// kept one is stale, while the callers after it go on with the kept count until that
    /// count is kept: a burst of requests walks the index once a second, not once each (64
    /// requests in flight all walking a backlog had cost 1.3 ms of CPU a send).
    pub fn current(&self, organisation: &str) -> Option<u64> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (at, count) = counts.get_mut(organisation)?;
        if at.elapsed() >= PENDING_FRESH {
            *at = std::time::Instant::now();
            return None;
        }
        Some(*count)
    }

    /// Keeps `count` for `organisation`, counted at `at`.
    pub fn keep(&self, organisation: &str, at: std::time::Instant, count: u64) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= PENDING_KEPT && !counts.contains_key(organisation) {
            counts.clear();
        }
        counts.insert(organisation.to_string(), (at, count));
    }

    /// Adds `more` to the kept count of `organisation` (what this process just queued).
    pub fn add(&self, organisation: &str, more: u64) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = counts.get_mut(organisation) {
            *count = count.saturating_add(more);
        }
    }

    /// Forgets the count of `organisation`: this process made it smaller or larger.
    pub fn forget(&self, organisation: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(organisation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_pending_count_grows_with_what_is_queued_and_is_forgotten_on_change() {
        let counts = PendingCounts::default();
        assert_eq!(counts.current("acme"), None);
        counts.keep("acme", std::time::Instant::now(), 5);
        counts.add("acme", 2);
        counts.add("beta", 2);
        assert_eq!(counts.current("acme"), Some(7));
        assert_eq!(
            counts.current("beta"),
            None,
            "only a counted organisation grows"
        );
        counts.forget("acme");
        assert_eq!(counts.current("acme"), None);
        let stale = std::time::Instant::now() - PENDING_FRESH;
        counts.keep("acme", stale, 5);
        assert_eq!(counts.current("acme"), None, "counted again after a second");
        assert_eq!(
            counts.current("acme"),
            Some(5),
            "by the first caller only: the others go on with the kept count meanwhile"
        );
    }

    #[test]
    fn the_pending_quota_counts_the_request() {
        let quotas = Quotas {
            pending_messages: 10,
            messages_per_hour: 100,
            bytes_per_day: 1000,
        };
        assert!(quotas.check_pending(9, 1).is_ok());
        let over = quotas.check_pending(9, 2).unwrap_err();
        assert_eq!((over.quota, over.limit), ("pending_messages", 10));
    }
}
