//! The exact cache: answers keyed by [`super::key`], bounded by a TTL and a
//! maximum number of entries, on moka (TinyLFU admission and eviction,
//! expiry by its own clock, reads without a global lock).

use std::sync::Arc;
use std::time::Duration;

use sluice_crds::route::CacheSpec;

use super::Cached;

/// A cache key: see [`super::key`].
pub type Key = [u8; 32];

/// One route's exact cache.
#[derive(Clone, Debug)]
pub struct ExactCache {
    inner: moka::sync::Cache<Key, Arc<Cached>>,
}

impl ExactCache {
    pub fn new(spec: &CacheSpec) -> Self {
        Self::with_limits(spec.ttl.get(), spec.max_entries as usize)
    }

    pub fn with_limits(ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner: moka::sync::Cache::builder()
                .max_capacity(max_entries.max(1) as u64)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// The live entry for `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Cached>> {
        self.inner.get(key)
    }

    /// Stores `value` for the TTL; beyond the maximum, moka evicts the
    /// entries least likely to be used again.
    pub fn insert(&self, key: Key, value: Cached) {
        self.inner.insert(key, Arc::new(value));
    }

    /// Entries held, after pending evictions are applied.
    pub fn len(&self) -> usize {
        self.inner.run_pending_tasks();
        self.inner.entry_count() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
