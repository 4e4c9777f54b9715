//! The operator's I/O against the in-process API emulator: status written
//! with server-side apply, snapshots streamed to an authenticated sidecar,
//! a Secret rotation reaching it, namespaces kept apart, reports folded
//! into Budget status exactly once, and the standby replica.

mod rig;

use rig::{Rig, Sidecar, WAIT, b64};
use serde_json::{Value, json};

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is(obj: &Value, type_: &str, status: &str) -> bool {
    condition(obj, type_).is_some_and(|c| c["status"] == status)
}

#[tokio::test]
async fn status_conditions_are_written_with_server_side_apply() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        // A route whose provider does not exist.
        rig.create("sluice.dev/v1alpha1", "LLMRoute", Some("shop"), json!({
            "metadata": {"name": "broken"},
            "spec": {"model": "broken", "targets": [{"providerRef": {"name": "nope"}, "model": "m"}]},
        }))
        .await;
        let op = rig.leader("a").await;

        let route = rig
            .wait_for("sluice.dev/v1alpha1", "LLMRoute", "shop", "chat", "Accepted and ResolvedRefs", |r| {
                is(r, "Accepted", "True") && is(r, "ResolvedRefs", "True")
            })
            .await;
        assert_eq!(route["status"]["observedGeneration"], 1);
        assert_eq!(route["status"]["sidecars"]["selected"], 1);
        let managers: Vec<&str> = route["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["subresource"] == "status")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["sluice-operator"], "one field manager owns status");

        let broken = rig
            .wait_for("sluice.dev/v1alpha1", "LLMRoute", "shop", "broken", "ResolvedRefs False", |r| {
                is(r, "ResolvedRefs", "False")
            })
            .await;
        assert_eq!(condition(&broken, "ResolvedRefs").expect("condition")["reason"], "ProviderNotFound");
        assert!(is(&broken, "Accepted", "True"));

        rig.wait_for("sluice.dev/v1alpha1", "Provider", "shop", "openai", "CredentialsResolved", |p| {
            is(p, "CredentialsResolved", "True") && is(p, "Ready", "True")
        })
        .await;
        let budget = rig
            .wait_for("sluice.dev/v1alpha1", "Budget", "shop", "team", "Accepted", |b| is(b, "Accepted", "True"))
            .await;
        assert_eq!(budget["status"]["observedGeneration"], 1);

        // A spec change: the new generation is observed.
        rig.merge("sluice.dev/v1alpha1", "LLMRoute", "shop", "chat", json!({"spec": {"aliases": ["gpt-4o-mini"]}}))
            .await;
        rig.wait_for("sluice.dev/v1alpha1", "LLMRoute", "shop", "chat", "generation 2 observed", |r| {
            r["status"]["observedGeneration"] == 2
        })
        .await;

        // Nothing changes any more: compiles go on (every report interval)
        // but status is not rewritten.
        let writes = || async {
            let text = reqwest_lite(op.metrics, "/metrics").await;
            text.lines()
                .filter(|l| l.starts_with("sluice_operator_status_writes_total"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let before = writes().await;
        let compiles = op.ctx.compiled_tx.borrow().to_owned();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(op.ctx.compiled_tx.borrow().to_owned() >= compiles + 2, "compiles keep running");
        assert_eq!(writes().await, before, "no status write without a change");

        // Metrics are served.
        let metrics = reqwest_lite(op.metrics, "/metrics").await;
        assert!(metrics.contains("sluice_operator_reconciles_total"), "{metrics}");
        assert!(metrics.contains("sluice_operator_leader 1"), "{metrics}");
    })
    .await
    .expect("test finished in time");
}

/// A plain-HTTP GET (the metrics port).
async fn reqwest_lite(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn sidecar_receives_its_snapshot_and_a_rotated_secret() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        let op = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        assert_eq!(ca, op.cert.ca_pem, "the CA is kept in the TLS Secret");
        let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
        let sidecar = Sidecar::new(op.distribution, &ca, &token);
        let mut lines = sidecar.stream("shop", "web-1").await;
        let first = lines.next().await;
        assert_eq!(first["pod"]["name"], "web-1");
        assert_eq!(first["routes"][0]["name"], "chat");
        assert_eq!(first["providers"][0]["credential"], "key-1");
        assert_eq!(first["budgets"][0]["name"], "team");

        rig.merge(
            "v1",
            "Secret",
            "shop",
            "llm-keys",
            json!({"data": {"openai": b64("key-2")}}),
        )
        .await;
        let mut next = lines.next().await;
        while next["providers"][0]["credential"] != "key-2" {
            assert_ne!(next["version"], Value::Null);
            next = lines.next().await;
        }
        assert_ne!(
            next["version"], first["version"],
            "a new version after the rotation"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn tokens_of_another_namespace_or_audience_are_refused() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        rig.pod("other", "api-1", "api").await;
        let op = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        let path = "/v1/snapshots/stream?namespace=shop&pod=web-1";

        // Wait until the leader serves (a valid token streams).
        let good = Sidecar::new(op.distribution, &ca, &rig.emulator.issue_token("shop", "web", &["sluice"]));
        let mut lines = good.stream("shop", "web-1").await;
        lines.next().await;

        let other = Sidecar::new(op.distribution, &ca, &rig.emulator.issue_token("other", "api", &["sluice"]));
        let (status, body) = other.json("GET", path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("namespace_mismatch")));
        // Its own pod is fine.
        let mut own = other.stream("other", "api-1").await;
        assert_eq!(own.next().await["pod"]["namespace"], "other");

        let wrong_sa = Sidecar::new(op.distribution, &ca, &rig.emulator.issue_token("shop", "intruder", &["sluice"]));
        let (status, body) = wrong_sa.json("GET", path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("pod_not_found")));

        let wrong_audience = Sidecar::new(op.distribution, &ca, &rig.emulator.issue_token("shop", "web", &[]));
        let (status, body) = wrong_audience.json("GET", path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")));

        // A pod-bound (projected) token speaks for its own pod only.
        rig.pod("shop", "web-2", "web").await;
        let bound = rig
            .emulator
            .issue_pod_token("shop", "web", "web-1", &["sluice"])
            .expect("pod token");
        let bound = Sidecar::new(op.distribution, &ca, &bound);
        let mut own = bound.stream("shop", "web-1").await;
        assert_eq!(own.next().await["pod"]["name"], "web-1");
        let (status, body) = bound
            .json("GET", "/v1/snapshots/stream?namespace=shop&pod=web-2", None)
            .await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("pod_mismatch")));

        let garbage = Sidecar::new(op.distribution, &ca, "not-a-token");
        assert_eq!(garbage.json("GET", path, None).await.0, 401);

        // A report may only speak for the caller's own pod.
        let report = json!({"namespace": "shop", "pod": "web-1", "instance": "i", "sequence": 1, "config": {}});
        let (status, _) = other.json("POST", "/v1/reports", Some(report)).await;
        assert_eq!(status, 403);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn reports_update_budget_status_exactly_once() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        let op = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        let sidecar = Sidecar::new(op.distribution, &ca, &rig.emulator.issue_token("shop", "web", &["sluice"]));
        let mut lines = sidecar.stream("shop", "web-1").await;
        let snapshot = lines.next().await;
        let window_start = snapshot["budgets"][0]["window"]["start"].as_str().expect("window").to_owned();
        let version = snapshot["version"].clone();

        let report = |sequence: u64, usage: Value| {
            json!({
                "namespace": "shop", "pod": "web-1", "instance": "sidecar-1", "sequence": sequence,
                "config": {"applied": version},
                "targets": [{"route": "chat", "provider": "openai", "model": "gpt-4o-mini", "requests": 3}],
                "usage": usage,
            })
        };
        let delta = |seq: u64, requests: u64, tokens: u64, cost: &str| {
            json!({"seq": seq, "budget": "team", "windowStart": window_start,
                   "spent": {"costUSD": cost, "tokens": tokens, "requests": requests}})
        };
        let spent = |b: &Value| {
            (
                b["status"]["spent"]["requests"].as_u64().unwrap_or(0),
                b["status"]["spent"]["tokens"].as_u64().unwrap_or(0),
                b["status"]["spent"]["costUSD"].as_str().unwrap_or("").to_owned(),
            )
        };

        let first = report(1, json!([delta(1, 3, 300, "0.30")]));
        let (status, ack) = sidecar.json("POST", "/v1/reports", Some(first.clone())).await;
        assert_eq!((status, ack["usageAckedThrough"].as_u64()), (200, Some(1)), "{ack}");
        // Persisted before the ack: read straight from the API, no waiting.
        let budget = rig.get("sluice.dev/v1alpha1", "Budget", "shop", "team").await;
        assert_eq!(spent(&budget), (3, 300, "0.30".to_owned()), "{budget:#}");

        // The same report again (its ack was "lost"): not counted twice.
        let (status, ack) = sidecar.json("POST", "/v1/reports", Some(first)).await;
        assert_eq!((status, ack["usageAckedThrough"].as_u64()), (200, Some(1)));
        let budget = rig.get("sluice.dev/v1alpha1", "Budget", "shop", "team").await;
        assert_eq!(spent(&budget).0, 3);

        // An unacknowledged delta resent with a new one.
        let second = report(2, json!([delta(1, 3, 300, "0.30"), delta(2, 2, 200, "0.20")]));
        let (status, ack) = sidecar.json("POST", "/v1/reports", Some(second)).await;
        assert_eq!((status, ack["usageAckedThrough"].as_u64()), (200, Some(2)));
        let budget = rig.get("sluice.dev/v1alpha1", "Budget", "shop", "team").await;
        assert_eq!(spent(&budget), (5, 500, "0.50".to_owned()), "{budget:#}");
        assert_eq!(budget["status"]["percentUsed"], 5);

        // The next snapshot carries the spend.
        let mut next = lines.next().await;
        while next["budgets"][0]["spent"]["requests"] != 5 {
            next = lines.next().await;
        }

        rig.wait_for("sluice.dev/v1alpha1", "Provider", "shop", "openai", "a reporting sidecar", |p| {
            p["status"]["sidecars"] == 1
        })
        .await;

        // A report naming the version it runs makes the route Programmed.
        let current = next["version"].clone();
        let applied = json!({"namespace": "shop", "pod": "web-1", "instance": "sidecar-1",
            "sequence": 3, "config": {"applied": current}});
        let (status, _) = sidecar.json("POST", "/v1/reports", Some(applied)).await;
        assert_eq!(status, 200);
        let route = rig
            .wait_for("sluice.dev/v1alpha1", "LLMRoute", "shop", "chat", "Programmed", |r| {
                is(r, "Programmed", "True")
            })
            .await;
        assert_eq!(route["status"]["synced"], "1/1");

        // Past the soft limit: the status says so and an Event is recorded.
        let (status, _) = sidecar
            .json("POST", "/v1/reports", Some(report(4, json!([delta(3, 80, 80, "0.80")]))))
            .await;
        assert_eq!(status, 200);
        let budget = rig.get("sluice.dev/v1alpha1", "Budget", "shop", "team").await;
        assert_eq!(budget["status"]["state"], "SoftLimit", "{budget:#}");
        let events = rig
            .api("events.k8s.io/v1", "Event", Some("shop"))
            .list(&Default::default())
            .await
            .expect("events listed");
        let reasons: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.data["regarding"]["name"] == "team")
            .filter_map(|e| e.data["reason"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(reasons, ["SoftLimitReached"]);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_second_replica_stands_by_with_the_same_ca() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        let leader = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
        let mut lines = Sidecar::new(leader.distribution, &ca, &token)
            .stream("shop", "web-1")
            .await;
        lines.next().await;

        let standby = rig.operator("b").await;
        assert_eq!(standby.cert.ca_pem, ca, "the standby loads the stored CA");
        let sidecar = Sidecar::new(standby.distribution, &ca, &token);
        let (status, body) = sidecar.json("GET", "/readyz", None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("not_leader"))
        );
        let (status, _) = sidecar
            .json("GET", "/v1/snapshots/stream?namespace=shop&pod=web-1", None)
            .await;
        assert_eq!(status, 503);
        let lease = rig
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "sluice-system",
                "sluice-operator",
            )
            .await;
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        let (status, _) = Sidecar::new(leader.distribution, &ca, &token)
            .json("GET", "/readyz", None)
            .await;
        assert_eq!(status, 200);
    })
    .await
    .expect("test finished in time");
}

/// An identity stored before the webhook had its own Service lacks that
/// name: the operator issues a new serving certificate under the same CA
/// (sidecars and the API server keep trusting it) and stores it.
#[tokio::test]
async fn a_stored_certificate_missing_a_service_name_is_reissued_under_its_ca() {
    use sluice_operator::tls::{ServingCert, subject_names};
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        let old = ServingCert::generate(&subject_names(&["sluice-operator"], "sluice-system"))
            .expect("generated");
        let data: serde_json::Map<String, Value> = old
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, Value::from(b64(&String::from_utf8_lossy(&v.0)))))
            .collect();
        rig.create(
            "v1",
            "Secret",
            Some("sluice-system"),
            json!({"metadata": {"name": "sluice-operator-tls", "labels": {"app.kubernetes.io/managed-by": "sluice-operator"}}, "type": "kubernetes.io/tls", "data": data}),
        )
        .await;
        let op = rig.operator("a").await;
        let names = subject_names(
            &["sluice-operator", "sluice-operator-webhook"],
            "sluice-system",
        );
        assert_eq!(op.cert.ca_pem, old.ca_pem, "the same CA");
        assert!(op.cert.missing_names(&names).expect("parsed").is_empty());
        assert_ne!(op.cert.cert_pem, old.cert_pem);
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            rig.get("v1", "Secret", "sluice-system", "sluice-operator-tls")
                .await,
        )
        .expect("a Secret");
        let stored = ServingCert::from_secret(&secret).expect("complete");
        assert_eq!(stored.cert_pem, op.cert.cert_pem, "the Secret holds the new one");
        assert_eq!(stored.ca_pem, old.ca_pem);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn after_a_leader_crash_the_new_leader_resumes_spend_from_status() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        let first = rig.leader("a").await;
        let standby = rig.operator("b").await;
        let ca = rig.operator_ca().await;
        let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
        let sidecar = Sidecar::new(first.distribution, &ca, &token);
        let snapshot = sidecar.stream("shop", "web-1").await.next().await;
        let window_start = snapshot["budgets"][0]["window"]["start"].clone();
        let report = |deltas: &[(u64, u64)]| {
            json!({
                "namespace": "shop", "pod": "web-1", "instance": "sidecar-1", "sequence": 1,
                "config": {},
                "usage": deltas.iter().map(|(seq, requests)| json!({
                    "seq": seq, "budget": "team", "windowStart": window_start,
                    "spent": {"costUSD": "0.01", "tokens": 10, "requests": requests}})).collect::<Vec<_>>(),
            })
        };
        let (status, _) = sidecar.json("POST", "/v1/reports", Some(report(&[(1, 4)]))).await;
        assert_eq!(status, 200);

        // The leader dies without releasing its Lease.
        drop(first);
        tokio::time::timeout(WAIT, standby.serving())
            .await
            .expect("the standby takes over once the Lease expires");
        let sidecar = Sidecar::new(standby.distribution, &ca, &token);
        // The sidecar never saw the ack: it resends delta 1 with a new one.
        let (status, ack) = sidecar.json("POST", "/v1/reports", Some(report(&[(1, 4), (2, 1)]))).await;
        assert_eq!((status, ack["usageAckedThrough"].as_u64()), (200, Some(2)), "{ack}");
        let budget = rig.get("sluice.dev/v1alpha1", "Budget", "shop", "team").await;
        assert_eq!(budget["status"]["spent"]["requests"], 5, "{budget:#}");
        assert_eq!(budget["status"]["spent"]["costUSD"], "0.02");
        let lease = rig.get("coordination.k8s.io/v1", "Lease", "sluice-system", "sluice-operator").await;
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_new_pod_is_served_without_a_restart_and_its_stream_ends_when_it_goes() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        let op = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        rig.pod("shop", "late", "web").await;
        let sidecar = Sidecar::new(
            op.distribution,
            &ca,
            &rig.emulator.issue_token("shop", "web", &["sluice"]),
        );
        // The pod reaches the operator's cache through its watch.
        let mut lines = loop {
            let r = sidecar
                .send("GET", "/v1/snapshots/stream?namespace=shop&pod=late", None)
                .await;
            if r.status() == 200 {
                break rig::Lines::new(r.into_body());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let snapshot = lines.next().await;
        assert_eq!(snapshot["pod"]["name"], "late");
        assert_eq!(snapshot["routes"][0]["name"], "chat");

        rig.api("v1", "Pod", Some("shop"))
            .delete("late", &Default::default())
            .await
            .expect("pod deleted");
        assert!(lines.end().await, "the stream ends once the pod is gone");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn with_namespace_set_only_that_namespace_is_watched() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        rig.shop().await;
        rig.create("sluice.dev/v1alpha1", "LLMRoute", Some("other"), json!({
            "metadata": {"name": "elsewhere"},
            "spec": {"model": "x", "targets": [{"providerRef": {"name": "nope"}, "model": "m"}]},
        }))
        .await;
        let op = rig
            .operator_with("a", |o| o.namespace = Some("shop".into()))
            .await;
        tokio::time::timeout(WAIT, op.serving())
            .await
            .expect("leads");
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            "shop",
            "chat",
            "Accepted",
            |r| is(r, "Accepted", "True"),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let elsewhere = rig
            .get("sluice.dev/v1alpha1", "LLMRoute", "other", "elsewhere")
            .await;
        assert!(elsewhere["status"].is_null(), "{elsewhere:#}");
    })
    .await
    .expect("test finished in time");
}
