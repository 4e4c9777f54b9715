//! The latest snapshot of every pod, as a `watch` channel per pod: compile
//! publishes, each open stream waits on its pod's channel. A snapshot is
//! published only when its version differs from the pod's previous one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_crds::snapshot::Snapshot;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::compile::Key;

/// One published snapshot, serialized once for every stream.
#[derive(Debug)]
pub struct Published {
    pub version: String,
    /// The snapshot as one NDJSON line (credentials included: this is the
    /// wire to the sidecar, never a log).
    pub line: Bytes,
    pub at: Instant,
}

type Slot = watch::Sender<Option<Arc<Published>>>;

/// Per-pod channels.
#[derive(Debug, Default)]
pub struct Hub {
    pods: Mutex<BTreeMap<Key, Slot>>,
}

impl Hub {
    /// Publishes every snapshot whose version changed; closes the channels
    /// of pods that are gone. Returns how many were published.
    pub fn publish(&self, snapshots: &BTreeMap<Key, Snapshot>) -> usize {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let mut pushed = 0;
        let now = Instant::now();
        for (key, snapshot) in snapshots {
            let slot = pods
                .entry(key.clone())
                .or_insert_with(|| watch::channel(None).0);
            let same = slot
                .borrow()
                .as_ref()
                .is_some_and(|p| p.version == snapshot.version);
            if same {
                continue;
            }
            let Ok(mut line) = serde_json::to_vec(snapshot) else {
                continue;
            };
            line.push(b'\n');
            slot.send_replace(Some(Arc::new(Published {
                version: snapshot.version.clone(),
                line: Bytes::from(line),
                at: now,
            })));
            pushed += 1;
        }
        // A pod that had a snapshot and no longer has one is gone: dropping
        // its sender ends its streams.
        pods.retain(|key, slot| snapshots.contains_key(key) || slot.borrow().is_none());
        pushed
    }

    /// A receiver for `pod`'s snapshots (empty until the first compile
    /// that includes it).
    pub fn subscribe(&self, pod: &Key) -> watch::Receiver<Option<Arc<Published>>> {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.entry(pod.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// The version currently published for `pod`.
    pub fn version(&self, pod: &Key) -> Option<String> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.get(pod)
            .and_then(|s| s.borrow().as_ref().map(|p| p.version.clone()))
    }
}
