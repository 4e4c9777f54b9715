//! The latest snapshot of every pod, as a `watch` channel per pod: compile
//! publishes, each open stream waits on its pod's channel. A snapshot is
//! published only when its version differs from the pod's previous one.
//!
//! A snapshot's version also moves with budget spend and allowances, which
//! change with every report; for `Programmed` what matters is whether a
//! sidecar runs the current *configuration*. So the hub remembers, per pod,
//! the configuration fingerprint (the snapshot without spend and
//! allowances) of its recent versions: [`Hub::same_config`].

use std::collections::{BTreeMap, VecDeque};
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

/// How many recent versions per pod are remembered for [`Hub::same_config`].
const REMEMBERED: usize = 32;

/// Per-pod channels.
#[derive(Debug, Default)]
pub struct Hub {
    pods: Mutex<BTreeMap<Key, Slot>>,
    /// `(version, configuration fingerprint)`, newest last.
    recent: Mutex<BTreeMap<Key, VecDeque<(String, String)>>>,
}

/// The snapshot's content without what moves with spend.
pub fn config_fingerprint(snapshot: &Snapshot) -> String {
    use sha2::{Digest as _, Sha256};
    let mut s = snapshot.clone();
    s.version.clear();
    for b in &mut s.budgets {
        b.spent = Default::default();
        b.allowance = Default::default();
    }
    let bytes = serde_json::to_vec(&s).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
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
            self.remember(key, &snapshot.version, config_fingerprint(snapshot));
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
        // A slot still waiting for its first snapshot is kept while a stream
        // waits on it.
        pods.retain(|key, slot| {
            snapshots.contains_key(key) || (slot.borrow().is_none() && slot.receiver_count() > 0)
        });
        if let Ok(mut recent) = self.recent.lock() {
            recent.retain(|key, _| snapshots.contains_key(key));
        }
        pushed
    }

    fn remember(&self, pod: &Key, version: &str, fingerprint: String) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let list = recent.entry(pod.clone()).or_default();
        list.push_back((version.to_owned(), fingerprint));
        while list.len() > REMEMBERED {
            list.pop_front();
        }
    }

    /// Whether `applied` (a version the pod's sidecar runs) carries the
    /// same configuration as `current`, differing at most in spend and
    /// allowances.
    pub fn same_config(&self, pod: &Key, applied: &str, current: &str) -> bool {
        if applied == current {
            return true;
        }
        let Ok(recent) = self.recent.lock() else {
            return false;
        };
        let Some(list) = recent.get(pod) else {
            return false;
        };
        let find = |v: &str| list.iter().rev().find(|(x, _)| x == v).map(|(_, f)| f);
        matches!((find(applied), find(current)), (Some(a), Some(c)) if a == c)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(route_model: &str, requests: u64) -> Snapshot {
        let mut s: Snapshot = serde_json::from_value(serde_json::json!({
            "version": "", "pod": {"namespace": "shop", "name": "web-1"},
            "reportInterval": "2s", "routes": [], "providers": [], "budgets": [],
        }))
        .expect("snapshot");
        s.held_routes = vec![route_model.to_owned()];
        s.report_interval = format!("{}s", requests + 1).parse().expect("duration");
        s.seal()
    }

    #[test]
    fn publishes_only_changed_versions_and_ends_streams_of_gone_pods() {
        let hub = Hub::default();
        let key: Key = ("shop".into(), "web-1".into());
        let mut rx = hub.subscribe(&key);
        let a = snapshot("chat", 1);
        assert_eq!(hub.publish(&[(key.clone(), a.clone())].into()), 1);
        assert_eq!(hub.publish(&[(key.clone(), a.clone())].into()), 0);
        assert_eq!(hub.version(&key).as_deref(), Some(a.version.as_str()));
        assert!(rx.has_changed().expect("open"));
        assert_eq!(
            rx.borrow_and_update().as_ref().map(|p| p.version.clone()),
            Some(a.version.clone())
        );
        assert!(hub.same_config(&key, &a.version, &a.version));
        let b = snapshot("other", 1);
        hub.publish(&[(key.clone(), b.clone())].into());
        assert!(!hub.same_config(&key, &a.version, &b.version));
        hub.publish(&BTreeMap::new());
        assert!(
            rx.has_changed().is_err(),
            "the pod is gone: its stream ends"
        );
    }
}
