use super::*;
use sluice_crds::report::TargetHealth;
use sluice_crds::snapshot::{PodIdentity, RouteEntry};

fn spend(cost: &str) -> Spend {
    Spend {
        cost_usd: cost.parse().expect("money"),
        tokens: 10,
        requests: 1,
    }
}

#[test]
fn usage_is_numbered_once_and_kept_until_acknowledged() {
    let mut o = Outbox::new("i-1".into());
    o.record("team", None, "w0", &spend("0.10"));
    o.record("team", None, "w0", &spend("0.05"));
    o.record("team", Some("acme"), "w0", &spend("1"));
    o.seal();
    assert_eq!(o.pending.len(), 2, "coalesced per budget and tenant");
    let first: Vec<u64> = o.pending.iter().map(|d| d.seq).collect();
    assert_eq!(first, vec![1, 2]);
    o.record("team", None, "w0", &spend("0.01"));
    o.seal();
    assert_eq!(o.pending.len(), 3);
    // Resent deltas are identical: sealed deltas never change.
    assert_eq!(o.pending[0].spent.cost_usd.to_string(), "0.15");
    o.ack(&ReportAck {
        usage_acked_through: 2,
    });
    assert_eq!(o.pending.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![3]);
    o.ack(&ReportAck {
        usage_acked_through: 1,
    });
    assert_eq!(o.pending.len(), 1, "an old ack changes nothing");
}

#[test]
fn a_hand_back_travels_with_the_total_usage_of_its_budget() {
    let mut o = Outbox::new("i-1".into());
    o.record("team", None, "w0", &spend("0.10"));
    o.record_release("team", "w0", &spend("2"));
    o.record_release("other", "w0", &spend("1"));
    o.seal();
    let team = o.pending.iter().find(|d| d.budget == "team").expect("team");
    assert_eq!(team.spent, spend("0.10"));
    assert_eq!(team.released, spend("2"));
    let other = o
        .pending
        .iter()
        .find(|d| d.budget == "other")
        .expect("other");
    assert!(other.spent.is_zero(), "a hand-back alone is no spend");
    assert_eq!(other.released, spend("1"));
    // On the wire a delta without a hand-back has no `released` field.
    o.record("team", None, "w0", &spend("0.01"));
    o.seal();
    let last = serde_json::to_value(o.pending.back().expect("delta")).expect("json");
    assert!(last.get("released").is_none(), "{last}");
}

#[test]
fn lines_survive_any_split_and_refuse_giants() {
    let text = b"{\"a\":1}\n\n{\"b\":2}\n{\"c\"";
    for split in 0..text.len() {
        let mut l = Lines::new(100);
        let mut got = l.feed(&text[..split]).expect("fits");
        got.extend(l.feed(&text[split..]).expect("fits"));
        assert_eq!(
            got,
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()],
            "split at {split}"
        );
    }
    let mut l = Lines::new(8);
    assert!(l.feed(b"0123456789").is_err());
}

#[test]
fn backoff_grows_to_its_ceiling_with_full_jitter() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    assert_eq!(b.next(1.0), Duration::from_millis(100));
    assert_eq!(b.next(1.0), Duration::from_millis(200));
    assert_eq!(b.next(0.5), Duration::from_millis(200));
    for _ in 0..20 {
        assert!(b.next(1.0) <= Duration::from_secs(1));
    }
    assert_eq!(b.next(0.0), Duration::ZERO);
    b.reset();
    assert_eq!(b.next(1.0), Duration::from_millis(100));
}

fn snapshot(routes: &[&str], held: &[&str]) -> Snapshot {
    let route = |name: &str| RouteEntry {
        name: name.into(),
        namespace: "shop".into(),
        generation: 1,
        spec: serde_yaml::from_str(&format!(
            "model: {name}\ntargets: [{{providerRef: {{name: p-{name}}}, model: m}}]\n"
        ))
        .expect("spec"),
    };
    let provider = |name: &str| sluice_crds::snapshot::ProviderEntry {
        name: format!("p-{name}"),
        namespace: "shop".into(),
        spec: serde_yaml::from_str("type: mock\nmodels: [{name: m}]\n").expect("spec"),
        credential: None,
    };
    Snapshot {
        version: String::new(),
        pod: PodIdentity::default(),
        report_interval: sluice_crds::Duration::from_secs(2),
        routes: routes.iter().map(|r| route(r)).collect(),
        providers: routes.iter().map(|r| provider(r)).collect(),
        budgets: vec![],
        held_routes: held.iter().map(|s| s.to_string()).collect(),
    }
    .seal()
}

#[test]
fn held_routes_keep_their_previous_version() {
    let before = snapshot(&["chat", "batch"], &[]);
    let after = merge_held(Some(&before), snapshot(&["batch"], &["chat", "never-had"]));
    let names: Vec<&str> = after.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["batch", "chat"]);
    assert!(
        after.providers.iter().any(|p| p.name == "p-chat"),
        "with its provider"
    );
    let dropped = merge_held(Some(&before), snapshot(&["batch"], &[]));
    assert_eq!(
        dropped.routes.len(),
        1,
        "a route no longer selected is dropped"
    );
}

/// Records what it was asked to apply; refuses snapshots with a route named "bad".
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Runtime for Recorder {
    fn apply(&self, s: &Snapshot) -> Result<(), String> {
        if s.routes.iter().any(|r| r.name == "bad") {
            return Err("route bad: provider missing".into());
        }
        if let Ok(mut v) = self.0.lock() {
            v.push(s.version.clone());
        }
        Ok(())
    }

    fn health(&self) -> (Vec<TargetHealth>, BTreeMap<String, FallbackRecord>) {
        (Vec::new(), BTreeMap::new())
    }
}

fn options(dir: &Path) -> ClusterOptions {
    ClusterOptions {
        operator: "https://127.0.0.1:1".into(),
        ca_file: dir.join("ca.crt"),
        token_file: dir.join("token"),
        state_dir: dir.to_path_buf(),
        namespace: "shop".into(),
        pod: "web-1".into(),
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn a_bad_snapshot_is_refused_and_the_good_one_survives_a_restart() {
    let dir = tempdir("restart");
    let runtime = Arc::new(Recorder::default());
    let s = Session::new(options(&dir), runtime.clone(), || "i-1".into());
    assert!(!s.has_config());
    let good = snapshot(&["chat"], &[]);
    s.receive(&serde_json::to_vec(&good).expect("json"))
        .expect("applies");
    let bad = snapshot(&["bad"], &[]);
    let err = s
        .receive(&serde_json::to_vec(&bad).expect("json"))
        .expect_err("refused");
    assert!(err.contains("provider missing"));
    let mut tampered = good.clone();
    tampered.routes.clear();
    assert!(
        s.receive(&serde_json::to_vec(&tampered).expect("json"))
            .is_err(),
        "version must match contents"
    );
    s.record_usage("team", None, "w0", &spend("0.50"));
    let report = s.next_report();
    assert_eq!(
        report.config.applied.as_deref(),
        Some(good.version.as_str())
    );
    assert_eq!(
        report.config.rejected.as_ref().map(|r| r.version.as_str()),
        Some(tampered.version.as_str())
    );
    assert_eq!(report.usage.len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("state.json"))
            .expect("state file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Restart: the same instance, the last good snapshot, the pending usage.
    let runtime2 = Arc::new(Recorder::default());
    let s2 = Session::new(options(&dir), runtime2.clone(), || "i-2".into());
    assert!(s2.has_config());
    assert_eq!(
        *runtime2.0.lock().expect("lock"),
        vec![good.version.clone()]
    );
    let report = s2.next_report();
    assert_eq!(report.instance, "i-1");
    assert_eq!(report.sequence, 2);
    assert_eq!(report.usage.len(), 1, "unacknowledged usage is resent");
    assert_eq!(report.usage[0].seq, 1);
    s2.acknowledged(&ReportAck {
        usage_acked_through: 1,
    });
    assert!(s2.next_report().usage.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
