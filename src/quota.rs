//! Quotas shared by the services: what one organisation passing a quota is told
//! ([`OverQuota`], `RESOURCE_EXHAUSTED` with the quota named and when to retry), and the
//! hourly quotas counted in this process ([`Hourly`]). The outbox's quotas, counted in the
//! store, are in `notify::quota`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::notify::Tally;

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

#[cfg(test)]
mod tests {
    use super::*;

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
