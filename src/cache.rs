//! Values kept in memory in front of the store (settings, API keys), forgotten when the
//! store reports that another process changed them.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// A map in front of the store. A value read from the store before a [`Cache::forget`]
/// is not kept after it: readers note the [`Cache::generation`] before they read.
pub struct Cache<K, V> {
    entries: RwLock<HashMap<K, V>>,
    generation: AtomicU64,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    /// The cached value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Note it before reading the store, for [`Cache::keep`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps a value read from the store, unless the cache was forgotten since
    /// `generation`.
    pub fn keep(&self, key: K, value: V, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation() == generation {
            entries.insert(key, value);
        }
    }

    /// Keeps a value this process just wrote.
    pub fn insert(&self, key: K, value: V) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
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

    #[test]
    fn a_value_read_before_a_forget_is_not_kept() {
        let cache: Cache<&str, u32> = Cache::default();
        let before = cache.generation();
        cache.forget();
        cache.keep("k", 1, before);
        assert_eq!(cache.get(&"k"), None, "stale read dropped");
        cache.keep("k", 2, cache.generation());
        assert_eq!(cache.get(&"k"), Some(2));
        cache.forget();
        assert_eq!(cache.get(&"k"), None);
    }

    #[test]
    fn a_value_read_before_its_removal_is_not_put_back() {
        let cache: Cache<&str, u32> = Cache::default();
        cache.keep("k", 1, cache.generation());
        let before = cache.generation();
        cache.remove(&"k");
        cache.keep("k", 1, before);
        assert_eq!(
            cache.get(&"k"),
            None,
            "a read from before the removal came back"
        );
    }
}
