//! Values kept in memory in front of the store (settings, API keys), forgotten when the
//! store reports that another process changed them, and served only while it can report
//! it: each value is kept with the store's watch epoch (`Backend::watch_epoch`) it was read
//! in, and served only in that same epoch.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// A map in front of the store. A value read from the store before a [`Cache::forget`]
/// is not kept after it: readers note the [`Cache::generation`] before they read.
pub struct Cache<K, V> {
    entries: RwLock<HashMap<K, (V, u64)>>,
    generation: AtomicU64,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    /// The cached value of `key`, if it was kept in watch epoch `epoch` (none while the
    /// store cannot report changes: `None`).
    pub fn get<Q>(&self, key: &Q, epoch: Option<u64>) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let epoch = epoch?;
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|(_, kept)| *kept == epoch)
            .map(|(value, _)| value.clone())
    }

    /// Note it before reading the store, for [`Cache::keep`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps a value read from the store in watch epoch `epoch`, unless the cache was
    /// forgotten since `generation` (or the store could not report changes).
    pub fn keep(&self, key: K, value: V, generation: u64, epoch: Option<u64>) {
        let Some(epoch) = epoch else { return };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation() == generation {
            entries.insert(key, (value, epoch));
        }
    }

    /// Keeps a value this process just wrote, in watch epoch `epoch`.
    pub fn insert(&self, key: K, value: V, epoch: Option<u64>) {
        let Some(epoch) = epoch else { return };
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (value, epoch));
    }

    /// Drops one value, and that value being read from the store right now: a reader that
    /// read it before the change this removal follows must not put it back.
    pub fn remove(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Drops every value, including those being read from the store right now.
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            generation: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cache;

    const E: Option<u64> = Some(0);

    #[test]
    fn a_value_read_before_a_forget_is_not_kept() {
        let cache: Cache<&str, u32> = Cache::default();
        let before = cache.generation();
        cache.forget();
        cache.keep("k", 1, before, E);
        assert_eq!(cache.get(&"k", E), None, "stale read dropped");
        cache.keep("k", 2, cache.generation(), E);
        assert_eq!(cache.get(&"k", E), Some(2));
        cache.forget();
        assert_eq!(cache.get(&"k", E), None);
    }

    #[test]
    fn a_value_read_before_its_removal_is_not_put_back() {
        let cache: Cache<&str, u32> = Cache::default();
        cache.keep("k", 1, cache.generation(), E);
        let before = cache.generation();
        cache.remove(&"k");
        cache.keep("k", 1, before, E);
        let found = cache.get(&"k", E);
        assert_eq!(found, None, "a read from before the removal came back");
    }

    #[test]
    fn a_value_is_served_only_in_the_watch_epoch_it_was_read_in() {
        let cache: Cache<&str, u32> = Cache::default();
        cache.keep("k", 1, cache.generation(), None);
        assert_eq!(
            cache.get(&"k", E),
            None,
            "kept while changes could be missed"
        );
        cache.keep("k", 1, cache.generation(), Some(1));
        assert_eq!(cache.get(&"k", Some(1)), Some(1));
        assert_eq!(
            cache.get(&"k", None),
            None,
            "served while the watch is down"
        );
        assert_eq!(cache.get(&"k", Some(2)), None, "served after a new watch");
    }
}
