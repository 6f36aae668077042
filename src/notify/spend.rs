//! Counting a request against its organisation's quotas (see [`super::quota`]): the
//! pending count and the tallies of the hour and the day.

use std::time::Duration;

use super::quota;
use super::{NotifyError, NotifyService};
use crate::quota::OverQuota;

impl NotifyService {
    /// Counts `count` messages of `bytes` in all against `organisation`'s quotas, or says
    /// which one they would pass. The pending count and the two tallies are separate
    /// steps: requests racing near a limit may pass it by what they queue at once.
    pub(super) async fn spend_quota(
        &self,
        organisation: &str,
        count: usize,
        bytes: usize,
    ) -> Result<(), NotifyError> {
        self.spend_messages(organisation, count).await?;
        self.spend_bytes(organisation, bytes).await
    }

    /// Counts `count` messages against `organisation`'s pending and hourly quotas.
    pub(super) async fn spend_messages(
        &self,
        organisation: &str,
        count: usize,
    ) -> Result<(), NotifyError> {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.check_pending(organisation, count).await?;
        let limit = self.quotas.messages_per_hour;
        self.spend_tally(organisation, "messages_per_hour", quota::HOUR, count, limit)
            .await?;
        self.pending.add(organisation, count);
        Ok(())
    }

    /// Counts `bytes` (sealed) against `organisation`'s daily quota.
    pub(super) async fn spend_bytes(
        &self,
        organisation: &str,
        bytes: usize,
    ) -> Result<(), NotifyError> {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let limit = self.quotas.bytes_per_day;
        self.spend_tally(organisation, "bytes_per_day", quota::DAY, bytes, limit)
            .await
    }

    pub(super) async fn spend_tally(
        &self,
        organisation: &str,
        quota: &'static str,
        window: Duration,
        amount: u64,
        limit: u64,
    ) -> Result<(), NotifyError> {
        let key = format!("{quota}/{organisation}");
        let now = self.clock.now();
        match self.outbox.tally(&key, now, window, amount, limit).await? {
            Some(retry_after) => Err(NotifyError::OverQuota(OverQuota {
                quota,
                limit,
                retry_after,
            })),
            None => Ok(()),
        }
    }

    /// Refused when `count` more messages of `organisation` would pass its pending quota:
    /// checked again before rendering, so that an organisation at its quota spends no
    /// rendering on requests that cannot be queued.
    pub(super) async fn check_pending(
        &self,
        organisation: &str,
        count: u64,
    ) -> Result<(), NotifyError> {
        let pending = match self.pending.current(organisation) {
            Some(pending) => pending,
            None => {
                let at = std::time::Instant::now();
                let pending = self
                    .outbox
                    .pending_of(organisation, self.quotas.pending_messages.saturating_add(1))
                    .await?;
                self.pending.keep(organisation, at, pending);
                pending
            }
        };
        self.quotas
            .check_pending(pending, count)
            .map_err(NotifyError::OverQuota)
    }
}
