//! Windows kept per key and changed by compare-and-swap: token rate-limit windows
//! (`rate_limits/`) and quota tallies (`quota_tallies/`).

use std::time::{Duration, SystemTime};

use etcd_client::Txn;
use serde::de::DeserializeOwned;

use super::kv::*;
use super::{contention, EtcdStore, CAS_ATTEMPTS};
use crate::store::keyspace::{self};
use crate::store::{encode, Record, Result};

impl EtcdStore {
    /// Changes the window record `key` (a rate window, a quota tally) by compare-and-swap,
    /// unless `change` refuses: then how long until it would not.
    pub(super) async fn update_window<W: Record + DeserializeOwned + Default>(
        &self,
        key: &str,
        change: impl Fn(&mut W) -> std::result::Result<(), Duration>,
    ) -> Result<Option<Duration>> {
        for _ in 0..CAS_ATTEMPTS {
            let stored = self.read::<W>(key).await?;
            let rev = stored.as_ref().map(|(_, rev)| *rev);
            let mut window = stored.map(|(w, _)| w).unwrap_or_default();
            if let Err(wait) = change(&mut window) {
                return Ok(Some(wait));
            }
            let txn = Txn::new()
                .when([unchanged(key, rev)])
                .and_then([put(key, encode(&window))]);
            if self.txn(txn).await?.succeeded() {
                return Ok(None);
            }
        }
        Err(contention("a rate limit or quota"))
    }

    pub(super) async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<Duration>> {
        let key = keyspace::quota_tally(self, key);
        self.update_window(&key, |tally: &mut crate::quota::Tally| {
            tally.add(now, window, amount, limit)
        })
        .await
    }
}
