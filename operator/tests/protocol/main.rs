//! The operator ↔ sidecar protocol with both real: the operator in-process
//! against the emulator, and the sidecar's cluster mode (the same code its
//! binary runs) following the operator's stream, answering requests from
//! what it received, reporting back, and surviving the operator's absence
//! and its own restart from the state file.

#[path = "../rig/mod.rs"]
mod rig;

mod budgets;
mod config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rig::{Rig, WAIT};
use serde_json::{Value, json};
use sluice_sidecar::cluster::ClusterOptions;

pub(crate) async fn objects(rig: &Rig) {
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

pub(crate) fn files(rig: &Rig, ca: &str, name: &str) -> (PathBuf, ClusterOptions) {
    files_for(rig, ca, name, "web-1")
}

/// Token, CA and state directory of the sidecar of pod `pod` in `shop`.
pub(crate) fn files_for(rig: &Rig, ca: &str, name: &str, pod: &str) -> (PathBuf, ClusterOptions) {
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

pub(crate) async fn sidecar(cluster: ClusterOptions) -> sluice_sidecar::run::Running {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let opts = sluice_sidecar::run::Options::new(PathBuf::new(), loopback, loopback);
    sluice_sidecar::run::cluster(opts, cluster)
        .await
        .expect("sidecar starts")
}

pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
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

pub(crate) async fn until_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while call(addr, "GET", "/readyz", None).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sidecar never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub(crate) fn chat() -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
}

pub(crate) fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
