//! Idempotency keys: a request repeated with the same `idempotency-key`
//! (scoped by tenant and route) within the TTL gets the first request's
//! response instead of a second provider call; a repeat that arrives while
//! the first is still in flight waits for it.
//!
//! The pipeline calls [`Idempotency::begin`] after the policy checks:
//! - [`Begin::Leader`]: call the provider, then [`Ticket::complete`] with the
//!   response to replay (the pipeline chooses what is worth replaying —
//!   typically successes). Dropping the ticket instead (failure, client
//!   disconnect, panic) frees the key: a waiter, or the next repeat, becomes
//!   the new leader.
//! - [`Begin::Replay`]: answer with the stored response.
//! - [`Begin::Conflict`]: the key was used with a different request body —
//!   answer 422 without calling the provider.
//!
//! Waiters wait as long as the leader's call lasts, which the pipeline's
//! total deadline bounds; a waiter whose client goes away simply stops
//! waiting. A TTL of minutes is enough for client retries (the pipeline's choice).
//! Per sidecar: two pods do not share keys (clients retrying through the same
//! Service may land on another pod).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// An idempotency key in its scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub tenant: Option<String>,
    pub route: String,
    pub key: String,
}

/// A digest of the request body, to detect a key reused for another request.
pub type Fingerprint = [u8; 32];

/// The fingerprint of a request as the client sent it (its own model name,
/// field order and per-user fields ignored).
pub fn fingerprint(req: &crate::openai::ChatRequest) -> Fingerprint {
    crate::cache::key(req, &req.model, None)
}

#[derive(Clone, Debug)]
enum Progress<V> {
    Pending,
    Done(V),
    Failed,
}

#[derive(Debug)]
enum Slot<V> {
    InFlight {
        id: u64,
        fingerprint: Fingerprint,
        rx: watch::Receiver<Progress<V>>,
    },
    Done {
        fingerprint: Fingerprint,
        value: V,
        expires: Instant,
    },
}

#[derive(Debug)]
struct Inner<V> {
    slots: HashMap<Key, Slot<V>>,
    next_id: u64,
}

/// The outcome of [`Idempotency::begin`].
#[derive(Debug)]
pub enum Begin<V: Clone + Send + Sync + 'static> {
    Leader(Ticket<V>),
    Replay(V),
    Conflict,
}

/// The idempotency store of a sidecar. Cheap to clone.
#[derive(Debug)]
pub struct Idempotency<V> {
    ttl: Duration,
    max_entries: usize,
    inner: Arc<Mutex<Inner<V>>>,
}

impl<V> Clone for Idempotency<V> {
    fn clone(&self) -> Self {
        Self {
            ttl: self.ttl,
            max_entries: self.max_entries,
            inner: self.inner.clone(),
        }
    }
}

fn lock<V>(m: &Mutex<Inner<V>>) -> MutexGuard<'_, Inner<V>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<V: Clone + Send + Sync + 'static> Idempotency<V> {
    /// Completed responses are kept for `ttl`, at most `max_entries` of
    /// them (expired ones are dropped first, then the oldest).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            inner: Arc::new(Mutex::new(Inner {
                slots: HashMap::new(),
                next_id: 0,
            })),
        }
    }

    /// Claims `key`, replays its response, or waits for the request in
    /// flight with it.
    pub async fn begin(&self, key: Key, fingerprint: Fingerprint, now: Instant) -> Begin<V> {
        loop {
            let mut rx = {
                let mut inner = lock(&self.inner);
                match inner.slots.get(&key) {
                    Some(Slot::Done {
                        fingerprint: f,
                        value,
                        expires,
                    }) if *expires > now => {
                        return if *f == fingerprint {
                            Begin::Replay(value.clone())
                        } else {
                            Begin::Conflict
                        };
                    }
                    Some(Slot::InFlight {
                        fingerprint: f, rx, ..
                    }) => {
                        if *f != fingerprint {
                            return Begin::Conflict;
                        }
                        rx.clone()
                    }
                    _ => {
                        inner.next_id += 1;
                        let id = inner.next_id;
                        let (tx, rx) = watch::channel(Progress::Pending);
                        inner.slots.insert(
                            key.clone(),
                            Slot::InFlight {
                                id,
                                fingerprint,
                                rx,
                            },
                        );
                        self.prune(&mut inner, now);
                        return Begin::Leader(Ticket {
                            store: self.clone(),
                            key,
                            id,
                            fingerprint,
                            tx: Some(tx),
                        });
                    }
                }
            };
            // Wait for the leader outside the lock.
            let outcome = rx
                .wait_for(|p| !matches!(p, Progress::Pending))
                .await
                .map(|p| p.clone());
            if let Ok(Progress::Done(v)) = outcome {
                return Begin::Replay(v);
            }
            // The leader failed or vanished: the key is free; try again.
        }
    }

    fn prune(&self, inner: &mut Inner<V>, now: Instant) {
        if inner.slots.len() <= self.max_entries {
            return;
        }
        inner
            .slots
            .retain(|_, s| !matches!(s, Slot::Done { expires, .. } if *expires <= now));
        while inner.slots.len() > self.max_entries {
            let oldest = inner
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Done { expires, .. } => Some((*expires, k.clone())),
                    Slot::InFlight { .. } => None,
                })
                .min_by_key(|(e, _)| *e);
            match oldest {
                Some((_, k)) => {
                    inner.slots.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// The right and duty to make the one upstream call for a key.
#[derive(Debug)]
pub struct Ticket<V: Clone + Send + Sync + 'static> {
    store: Idempotency<V>,
    key: Key,
    id: u64,
    fingerprint: Fingerprint,
    tx: Option<watch::Sender<Progress<V>>>,
}

impl<V: Clone + Send + Sync + 'static> Ticket<V> {
    /// Stores `value` for the TTL and hands it to every waiter.
    pub fn complete(mut self, value: V, now: Instant) {
        {
            let mut inner = lock(&self.store.inner);
            if matches!(inner.slots.get(&self.key), Some(Slot::InFlight { id, .. }) if *id == self.id)
            {
                inner.slots.insert(
                    self.key.clone(),
                    Slot::Done {
                        fingerprint: self.fingerprint,
                        value: value.clone(),
                        expires: now + self.store.ttl,
                    },
                );
            }
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Progress::Done(value));
        }
    }
}

impl<V: Clone + Send + Sync + 'static> Drop for Ticket<V> {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        {
            let mut inner = lock(&self.store.inner);
            if matches!(inner.slots.get(&self.key), Some(Slot::InFlight { id, .. }) if *id == self.id)
            {
                inner.slots.remove(&self.key);
            }
        }
        tx.send_replace(Progress::Failed);
    }
}

#[cfg(test)]
mod tests;
