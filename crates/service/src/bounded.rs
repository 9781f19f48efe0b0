//! Bounded LRU caches that take memory as they fill, not all at once.

use std::{hash::Hash, num::NonZeroUsize};

use lru::LruCache;

/// An LRU cache holding at most `capacity` entries. (`LruCache::new` reserves its whole
/// capacity up front: the dozen caches of a server cost a few megabytes of tables before the
/// first entry, and their control bytes are written at once.)
pub(crate) fn lru<K: Hash + Eq, V>(capacity: NonZeroUsize) -> LruCache<K, V> {
    let mut cache = LruCache::unbounded();
    cache.resize(capacity);
    cache
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_its_bound() {
        let mut cache = lru(NonZeroUsize::new(1_000).unwrap());
        assert_eq!(cache.cap().get(), 1_000);
        for key in 0..1_500 {
            cache.put(key, key);
        }
        assert_eq!(cache.len(), 1_000);
        assert!(cache.get(&0).is_none() && cache.get(&1_499).is_some());
    }
}
