//! The exact cache: answers keyed by [`super::key`], bounded by a TTL and a
//! maximum number of entries (the oldest inserted goes first).
//!
//! A small map under a mutex rather than moka: expiry is measured with the
//! `tokio::time::Instant` the caller passes, so TTL behaviour is tested under
//! paused time in milliseconds, and lookups are a hash probe.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_crds::route::CacheSpec;
use tokio::time::Instant;

use super::Cached;

/// A cache key: see [`super::key`].
pub type Key = [u8; 32];

#[derive(Debug)]
struct Entry {
    value: Arc<Cached>,
    expires: Instant,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Insertion order, with stale records of overwritten keys skipped.
    order: VecDeque<(u64, Key)>,
    seq: u64,
}

/// One route's exact cache.
#[derive(Debug)]
pub struct ExactCache {
    ttl: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl ExactCache {
    pub fn new(spec: &CacheSpec) -> Self {
        Self::with_limits(spec.ttl.get(), spec.max_entries as usize)
    }

    pub fn with_limits(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live entry for `key`.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Cached>> {
        let mut inner = self.lock();
        match inner.map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                inner.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for the TTL, evicting the oldest entries beyond the
    /// maximum.
    pub fn insert(&self, key: Key, value: Cached, now: Instant) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        inner.map.insert(
            key,
            Entry {
                value: Arc::new(value),
                expires: now + self.ttl,
                seq,
            },
        );
        inner.order.push_back((seq, key));
        while inner.map.len() > self.max_entries || inner.order.len() > 2 * self.max_entries {
            let Some((seq, key)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&key).is_some_and(|e| e.seq == seq) {
                inner.map.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
