//! Quotas shared by the services: what one organisation passing a quota is told
//! ([`OverQuota`], `RESOURCE_EXHAUSTED` with the quota named and when to retry), the
//! sliding window they are counted in ([`Tally`]: in the store for the outbox's quotas of
//! `notify::quota`, in memory for [`Hourly`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Which quota a request would pass, and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("organisation over its {quota} quota ({limit}); retry in {}", crate::settings::human(*.retry_after))]
pub struct OverQuota {
    /// The quota's name, as in `ErrorInfo.metadata.quota` and the flags.
    pub quota: &'static str,
    /// Its limit.
    pub limit: u64,
    /// When the request could fit (if nothing else is queued meanwhile).
    pub retry_after: Duration,
}

/// Organisations whose shares are kept before the idle ones are forgotten.
const KEPT_SHARES: usize = 10_000;

/// A semaphore of `permits` per organisation, made on first use: what one organisation may
/// hold of something all share (request bytes, send threads, cores to render on). Past
/// [`KEPT_SHARES`] organisations, the idle ones are forgotten (a share in use is held by
/// its permits too).
pub struct Shares {
    permits: usize,
    shares: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl Shares {
    /// Shares of `permits` each.
    pub fn new(permits: usize) -> Self {
        Self {
            permits,
            shares: Mutex::default(),
        }
    }

    /// The share of `organisation`.
    pub fn of(&self, organisation: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if shares.len() >= KEPT_SHARES && !shares.contains_key(organisation) {
            shares.retain(|_, s| s.available_permits() < self.permits);
        }
        shares
            .entry(organisation.to_string())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(self.permits)))
            .clone()
    }
}

/// Buckets of a tally's window.
const BUCKETS: u64 = 24;
/// The hour of [`Hourly`].
const HOUR: Duration = Duration::from_secs(3600);
/// Organisations whose tallies are kept at most (then all start again).
const KEPT: usize = 10_000;

/// A quota of so many a sliding hour per organisation, counted in this process: for writes
/// that are cheap and many (token issues, user changes), where a durable count would cost
/// each of them a second write. Each replica counts its own, so a deployment of `n`
/// replicas lets up to `n` times the limit through, and a restart starts the hour again:
/// the bound is on how fast one organisation can fill the store, not an exact count.
pub struct Hourly {
    quota: &'static str,
    limit: u64,
    tallies: Mutex<HashMap<String, Tally>>,
}

impl Hourly {
    /// The quota named `quota` (as the flag and `ErrorInfo` name it) of `limit` an hour.
    pub fn new(quota: &'static str, limit: u64) -> Self {
        Self {
            quota,
            limit,
            tallies: Mutex::default(),
        }
    }

    /// Counts one for `organisation` at `now`, or says when one would fit.
    pub fn spend(&self, organisation: &str, now: SystemTime) -> Result<(), OverQuota> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        if tallies.len() >= KEPT && !tallies.contains_key(organisation) {
            tallies.clear();
        }
        tallies
            .entry(organisation.to_string())
            .or_default()
            .add(now, HOUR, 1, self.limit)
            .map_err(|retry_after| OverQuota {
                quota: self.quota,
                limit: self.limit,
                retry_after,
            })
    }
}

/// Amounts added within a sliding window, in [`BUCKETS`] buckets: (start of the bucket in
/// seconds since the epoch, amount), oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The buckets that have amounts within the window.
    pub buckets: Vec<(u64, u64)>,
}

impl Tally {
    /// Adds `amount` at `now` unless the window's total would pass `limit`; otherwise how
    /// long until it would fit (the window itself when it never can).
    pub fn add(
        &mut self,
        now: SystemTime,
        window: Duration,
        amount: u64,
        limit: u64,
    ) -> Result<(), Duration> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let span = window.as_secs().max(BUCKETS);
        let width = span / BUCKETS;
        self.buckets.retain(|(start, _)| start + span > now);
        let total: u64 = self.buckets.iter().map(|(_, a)| a).sum();
        if total.saturating_add(amount) > limit {
            if amount > limit {
                return Err(window);
            }
            // Buckets leave the window oldest first: wait for enough of them.
            let mut left = total;
            for (start, a) in &self.buckets {
                left -= a;
                if left + amount <= limit {
                    return Err(Duration::from_secs(
                        (start + span).saturating_sub(now).max(1),
                    ));
                }
            }
            return Err(window);
        }
        let bucket = now - now % width;
        match self.buckets.last_mut() {
            Some((start, a)) if *start == bucket => *a += amount,
            _ => self.buckets.push((bucket, amount)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_tally_refuses_past_its_limit_until_the_window_moves_on() {
        let mut tally = Tally::default();
        assert_eq!(tally.add(at(0), HOUR, 60, 100), Ok(()));
        assert_eq!(tally.add(at(1000), HOUR, 40, 100), Ok(()));
        // Full: the first 60 leave the window at 3600 s (their bucket's end).
        assert_eq!(
            tally.add(at(1200), HOUR, 1, 100),
            Err(Duration::from_secs(3600 - 1200))
        );
        assert_eq!(tally.add(at(3600), HOUR, 60, 100), Ok(()));
        // More than the limit ever allows: the whole window.
        assert_eq!(tally.add(at(3600), HOUR, 101, 100), Err(HOUR));
        // Old buckets are dropped, not kept forever.
        assert_eq!(tally.add(at(10 * 3600), HOUR, 1, 100), Ok(()));
        assert_eq!(tally.buckets.len(), 1);
    }

    #[test]
    fn an_hourly_quota_counts_each_organisation_apart() {
        let quota = Hourly::new("tokens_per_hour", 2);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(quota.spend("acme", now).is_ok());
        assert!(quota.spend("acme", now).is_ok());
        let over = quota.spend("acme", now).unwrap_err();
        assert_eq!((over.quota, over.limit), ("tokens_per_hour", 2));
        assert!(over.retry_after > Duration::ZERO && over.retry_after <= HOUR);
        assert!(quota.spend("beta", now).is_ok(), "beta has its own");
        assert!(quota.spend("acme", now + HOUR).is_ok(), "a new hour");
    }
}
