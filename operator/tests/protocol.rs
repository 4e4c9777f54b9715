//! The operator ↔ sidecar protocol with both real: the operator in-process
//! against the emulator, and the sidecar's cluster mode (the same code its
//! binary runs) following the operator's stream, answering requests from
//! what it received, reporting back, and surviving the operator's absence
//! and its own restart from the state file.

mod rig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rig::{Rig, WAIT};
use serde_json::{Value, json};
use sluice_sidecar::cluster::ClusterOptions;

async fn objects(rig: &Rig) {
    rig.create(
        "sluice.dev/v1alpha1",
        "Provider",
        Some("shop"),
        json!({"metadata": {"name": "offline"}, "spec": {"type": "mock", "mock": {"reply": "from the operator's config"}, "models": [{"name": "m"}]}}),
    )
    .await;
    rig.create(
        "sluice.dev/v1alpha1",
        "LLMRoute",
        Some("shop"),
        json!({"metadata": {"name": "chat"}, "spec": {"model": "chat", "targets": [{"providerRef": {"name": "offline"}, "model": "m"}]}}),
    )
    .await;
    rig.pod("shop", "web-1", "web").await;
}

fn files(rig: &Rig, ca: &str, name: &str) -> (PathBuf, ClusterOptions) {
    files_for(rig, ca, name, "web-1")
}

/// Token, CA and state directory of the sidecar of pod `pod` in `shop`.
fn files_for(rig: &Rig, ca: &str, name: &str, pod: &str) -> (PathBuf, ClusterOptions) {
    let dir = std::env::temp_dir().join(format!("sluice-protocol-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("ca.crt"), ca).expect("ca");
    let token = rig
        .emulator
        .issue_pod_token("shop", "web", pod, &["sluice"])
        .expect("token");
    std::fs::write(dir.join("token"), token).expect("token");
    (
        dir.clone(),
        ClusterOptions {
            operator: String::new(),
            ca_file: dir.join("ca.crt"),
            token_file: dir.join("token"),
            state_dir: dir.join("state"),
            namespace: "shop".into(),
            pod: pod.into(),
        },
    )
}

async fn sidecar(cluster: ClusterOptions) -> sluice_sidecar::run::Running {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let opts = sluice_sidecar::run::Options::new(PathBuf::new(), loopback, loopback);
    sluice_sidecar::run::cluster(opts, cluster)
        .await
        .expect("sidecar starts")
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .expect("request");
    let resp = client.request(req).await.expect("sidecar answers");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn until_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while call(addr, "GET", "/readyz", None).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sidecar never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn chat() -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// A Budget of `limit` requests a day on the `chat` route, pods `pods` in
/// `shop` (web-1 exists already), a leader, and a ready sidecar for each
/// pod following it. Returns the operator, the sidecars and their dirs.
async fn budget_with_sidecars(
    rig: &Rig,
    budget: &str,
    limit: u64,
    pods: &[&str],
) -> (
    sluice_operator::run::Running,
    Vec<sluice_sidecar::run::Running>,
    Vec<PathBuf>,
) {
    objects(rig).await;
    rig.create(
        "sluice.dev/v1alpha1",
        "Budget",
        Some("shop"),
        json!({"metadata": {"name": budget}, "spec": {"routes": ["chat"], "window": "day", "limits": {"requests": limit}}}),
    )
    .await;
    for pod in pods.iter().filter(|p| **p != "web-1") {
        rig.pod("shop", pod, "web").await;
    }
    let op = rig.leader("op-a").await;
    let ca = rig.operator_ca().await;
    let mut sidecars = Vec::new();
    let mut dirs = Vec::new();
    for pod in pods {
        let (dir, mut cluster) = files_for(rig, &ca, &format!("{budget}-{pod}"), pod);
        cluster.operator = format!("https://{}", op.distribution);
        let sc = sidecar(cluster).await;
        until_ready(sc.admin).await;
        sidecars.push(sc);
        dirs.push(dir);
    }
    (op, sidecars, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_the_operators_config_and_keeps_serving_without_it() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        objects(&rig).await;
        let op = rig.leader("op-a").await;
        let ca = rig.operator_ca().await;
        let (dir, mut cluster) = files(&rig, &ca, "serve");
        cluster.operator = format!("https://{}", op.distribution);

        let sc = sidecar(cluster.clone()).await;
        until_ready(sc.admin).await;
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "from the operator's config"
        );

        // The sidecar reports the version it runs: the route is Programmed.
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            "shop",
            "chat",
            "Programmed",
            |v| {
                v["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Programmed" && c["status"] == "True")
                })
            },
        )
        .await;

        // Its health reports reach the Provider's status.
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "Provider",
            "shop",
            "offline",
            "reported healthy",
            |v| v["status"]["sidecars"] == 1 && v["status"]["state"] == "Healthy",
        )
        .await;

        // And `kubectl get` is the dashboard: the real kubectl shows the
        // printer columns filled from that status.
        let kubeconfig = dir.join("kubeconfig");
        rig.emulator
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig");
        let kubectl = |args: &[&str]| {
            let out = std::process::Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .expect("kubectl runs");
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let routes = kubectl(&["get", "llmroutes", "-n", "shop"]);
        let header: Vec<&str> = routes
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            vec![
                "NAME", "MODEL", "STRATEGY", "TARGETS", "SYNCED", "HEALTHY", "AGE"
            ],
            "{routes}"
        );
        let row: Vec<&str> = routes
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            &row[..6],
            &["chat", "chat", "priority", "1", "1/1", "1/1"],
            "{routes}"
        );
        // Health is what sidecars observed in the last three report
        // intervals (1.5 s here), which a loaded machine can pass between
        // the wait above and this read: keep traffic flowing while polling.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
            let providers = kubectl(&["get", "providers", "-n", "shop"]);
            let row: Vec<String> = providers
                .lines()
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if row.len() >= 3 && row[..3] == ["offline", "mock", "Healthy"] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kubectl never showed the provider Healthy: {providers}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        // A live change reaches the sidecar.
        rig.api("sluice.dev/v1alpha1", "Provider", Some("shop"))
            .patch(
                "offline",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&json!({"spec": {"mock": {"reply": "changed live"}}})),
            )
            .await
            .expect("patched");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
            if body["choices"][0]["message"]["content"] == "changed live" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the change never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // The operator goes away: the sidecar keeps serving.
        drop(op);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(
            (status, &body["choices"][0]["message"]["content"]),
            (200, &json!("changed live"))
        );

        // The sidecar restarts while the operator is away: it serves from its state file.
        drop(sc);
        let state = std::fs::metadata(cluster.state_dir.join("state.json")).expect("state file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(state.permissions().mode() & 0o777, 0o600);
        }
        let restarted = sidecar(cluster).await;
        until_ready(restarted.admin).await;
        let (status, body) =
            call(restarted.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(
            (status, &body["choices"][0]["message"]["content"]),
            (200, &json!("changed live"))
        );
        cleanup(&dir);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_another_namespaces_token_gets_nothing() {
    tokio::time::timeout(WAIT * 2, async {
        let rig = Rig::start().await;
        objects(&rig).await;
        rig.pod("other", "intruder", "web").await;
        let op = rig.leader("op-a").await;
        let ca = rig.operator_ca().await;
        let (dir, mut cluster) = files(&rig, &ca, "intruder");
        cluster.operator = format!("https://{}", op.distribution);
        let token = rig
            .emulator
            .issue_pod_token("other", "web", "intruder", &["sluice"])
            .expect("token");
        std::fs::write(&cluster.token_file, token).expect("token");
        let sc = sidecar(cluster).await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            call(sc.admin, "GET", "/readyz", None).await.0,
            503,
            "no config for a foreign token"
        );
        let (status, body) = call(sc.api, "GET", "/v1/models", None).await;
        assert!(
            status != 200 || body["data"].as_array().is_none_or(|d| d.is_empty()),
            "{body}"
        );
        cleanup(&dir);
    })
    .await
    .expect("bounded");
}

/// A hard budget hammered concurrently through three sidecars: the
/// requests admitted never exceed the limit (requests are counted exactly,
/// so there is no estimation error to allow for), every sidecar ends up
/// refusing with `budget_exceeded`, and `Budget.status` sums the spend of
/// all three exactly — no report lost, none counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_three_sidecars_and_its_status_sums_them_exactly() {
    const LIMIT: u64 = 24;
    tokio::time::timeout(WAIT * 6, async {
        let rig = Rig::start().await;
        let (op, sidecars, dirs) =
            budget_with_sidecars(&rig, "hard", LIMIT, &["web-1", "web-2", "web-3"]).await;

        // Waves of concurrent requests through all three until every
        // sidecar refuses: allowances are renewed as reports arrive.
        let mut admitted = 0u64;
        let deadline = tokio::time::Instant::now() + WAIT * 4;
        loop {
            let mut wave = Vec::new();
            for sc in &sidecars {
                for _ in 0..4 {
                    let api = sc.api;
                    wave.push(tokio::spawn(async move {
                        call(api, "POST", "/v1/chat/completions", Some(chat())).await
                    }));
                }
            }
            let mut refused = 0;
            for w in wave {
                let (status, body) = w.await.expect("request");
                match status {
                    200 => admitted += 1,
                    429 => {
                        assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                        refused += 1;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            assert!(
                admitted <= LIMIT,
                "{admitted} admitted past a limit of {LIMIT}"
            );
            if admitted == LIMIT && refused == 12 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the budget was never spent: {admitted} of {LIMIT} admitted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        // The status sums what the three sidecars reported, exactly.
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "Budget",
            "shop",
            "hard",
            "exact spend",
            |v| v["status"]["spent"]["requests"] == LIMIT && v["status"]["state"] == "Exhausted",
        )
        .await;
        drop(sidecars);
        drop(op);
        for dir in &dirs {
            cleanup(dir);
        }
    })
    .await
    .expect("bounded");
}

/// Allowances follow use: of two sidecars splitting a 40-request budget,
/// the one that stays idle is asked to keep only its share and hands the
/// rest back in a report, so the busy one can spend far more than the
/// half it was first granted — and the two together still never pass 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_hands_its_share_back_to_a_busy_one() {
    const LIMIT: u64 = 40;
    tokio::time::timeout(WAIT * 6, async {
        let rig = Rig::start().await;
        let (op, sidecars, dirs) =
            budget_with_sidecars(&rig, "shared", LIMIT, &["web-1", "web-2"]).await;
        let (busy, idle) = (&sidecars[0], &sidecars[1]);

        // Only web-1 is called. The first split gave each sidecar 18 of
        // the 40 (4 kept in reserve); without hand-backs web-1 would stall
        // near 22 while web-2 sat on its 18.
        let mut admitted = 0u64;
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        while admitted < 30 {
            let (status, body) = call(busy.api, "POST", "/v1/chat/completions", Some(chat())).await;
            match status {
                200 => admitted += 1,
                429 => {
                    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the busy sidecar stalled at {admitted} of {LIMIT}: the idle one never handed its share back"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }

        // The idle sidecar kept a share it can still spend; everything
        // either admits stays within the limit.
        let mut idle_admitted = 0u64;
        loop {
            let (status, _) = call(idle.api, "POST", "/v1/chat/completions", Some(chat())).await;
            if status != 200 {
                break;
            }
            idle_admitted += 1;
        }
        assert!(idle_admitted > 0, "the idle sidecar kept nothing for itself");
        assert!(
            admitted + idle_admitted <= LIMIT,
            "{admitted} + {idle_admitted} admitted past a limit of {LIMIT}"
        );
        // The Budget's status counts exactly what was admitted: a
        // hand-back is not spend.
        let total = admitted + idle_admitted;
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "Budget",
            "shop",
            "shared",
            "spend without hand-backs",
            |v| v["status"]["spent"]["requests"] == total,
        )
        .await;
        drop(sidecars);
        drop(op);
        for dir in &dirs {
            cleanup(dir);
        }
    })
    .await
    .expect("bounded");
}
