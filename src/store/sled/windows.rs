//! Windows kept per key and changed under its lock: token rate-limit windows and quota
//! tallies.

use std::time::SystemTime;

use serde::de::DeserializeOwned;

use super::{unavailable, SledStore};
use crate::store::{decode, encode, Record, Result};

impl SledStore {
    pub(super) async fn tally(
        &self,
        key: &str,
        now: SystemTime,
        window: std::time::Duration,
        amount: u64,
        limit: u64,
    ) -> Result<Option<std::time::Duration>> {
        self.update_window(&self.tallies, key, |tally: &mut crate::quota::Tally| {
            tally.add(now, window, amount, limit)
        })
    }

    /// Changes the window record `key` of `tree` (a rate window, a quota tally) under its
    /// lock, unless `change` refuses: then how long until it would not.
    pub(super) fn update_window<W: Record + DeserializeOwned + Default>(
        &self,
        tree: &sled::Tree,
        key: &str,
        change: impl FnOnce(&mut W) -> Result<(), std::time::Duration>,
    ) -> Result<Option<std::time::Duration>> {
        let _key = self.lock(key);
        let mut window: W = match tree.get(key.as_bytes()).map_err(unavailable)? {
            Some(bytes) => decode(key, &bytes)?,
            None => W::default(),
        };
        match change(&mut window) {
            Ok(()) => {
                tree.insert(key.as_bytes(), encode(&window))
                    .map_err(unavailable)?;
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }
}
