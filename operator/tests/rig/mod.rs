//! Test rig: the in-process Kubernetes API emulator with the Sluice CRDs,
//! the real operator started in-process against it, and a client that
//! plays a sidecar (hyper over rustls, trusting the operator's CA).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use sluice_operator::options::Options;
use sluice_operator::run::{Running, start};
use sluice_tests::emulator::{Emulator, EmulatorOptions};

/// Bound on every wait.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Rig {
    pub emulator: Emulator,
    pub client: kube::Client,
}

/// A free loopback port (`sluice_tests::ports`: outside the range
/// outgoing connections take theirs from).
pub fn free_port() -> u16 {
    sluice_tests::ports::free_port().port()
}

/// The real `sluice-operator` binary running as a child process against
/// the rig's emulator, on free loopback ports; killed when dropped.
pub struct OperatorProcess {
    pub child: tokio::process::Child,
    pub distribution: u16,
    pub webhook: u16,
    pub metrics: u16,
    _dir: tempfile::TempDir,
}

pub async fn client_of(emulator: &Emulator) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&emulator.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(config).expect("client")
}

impl Rig {
    /// An emulator with the CRDs installed and the `shop` objects created.
    pub async fn start() -> Self {
        let emulator = Emulator::start(EmulatorOptions::default())
            .await
            .expect("emulator starts");
        let client = client_of(&emulator).await;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (_, crd) in sluice_crds::crd::all() {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("crd created");
        }
        let rig = Self { emulator, client };
        for ns in ["sluice-system", "shop", "other"] {
            rig.create("v1", "Namespace", None, json!({"metadata": {"name": ns}}))
                .await;
        }
        rig
    }

    /// Starts an operator replica.
    pub async fn operator(&self, identity: &str) -> Running {
        self.operator_with(identity, |_| {}).await
    }

    /// Starts an operator replica with adjusted options.
    pub async fn operator_with(
        &self,
        identity: &str,
        adjust: impl FnOnce(&mut Options),
    ) -> Running {
        let mut opts = Options::loopback();
        opts.operator_namespace = Some("sluice-system".into());
        opts.report_interval = "500ms".parse().expect("duration");
        opts.identity = Some(identity.into());
        opts.lease_duration = "3s".parse().expect("duration");
        adjust(&mut opts);
        start(opts, self.client.clone())
            .await
            .expect("operator starts")
    }

    /// Starts the operator binary as `identity`, with `extra` flags.
    pub fn operator_process(&self, identity: &str, extra: &[&str]) -> OperatorProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        self.emulator
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig");
        let (distribution, webhook, metrics) = (free_port(), free_port(), free_port());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
            .args([
                "--distribution-listen",
                &format!("127.0.0.1:{distribution}"),
                "--webhook-listen",
                &format!("127.0.0.1:{webhook}"),
                "--metrics-listen",
                &format!("127.0.0.1:{metrics}"),
                "--operator-namespace",
                "sluice-system",
                "--identity",
                identity,
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the operator starts");
        OperatorProcess {
            child,
            distribution,
            webhook,
            metrics,
            _dir: dir,
        }
    }

    /// Waits until the `shop` LLMRoute `route` is `Accepted` (so an
    /// operator has reconciled, and written its TLS Secret).
    pub async fn accepted(&self, route: &str) {
        self.wait_for(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            "shop",
            route,
            "Accepted",
            |r| {
                r["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                })
            },
        )
        .await;
    }

    /// Starts a replica and waits until it serves sidecars.
    pub async fn leader(&self, identity: &str) -> Running {
        let op = self.operator(identity).await;
        tokio::time::timeout(WAIT, op.serving())
            .await
            .expect("the replica leads in time");
        op
    }

    pub fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let plural = match kind {
            "LLMRoute" => "llmroutes".to_owned(),
            "Policy" => "policies".to_owned(),
            k => format!("{}s", k.to_lowercase()),
        };
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            &plural,
        );
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    pub async fn create(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        mut obj: Value,
    ) -> DynamicObject {
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let obj: DynamicObject = serde_json::from_value(obj).expect("object");
        self.api(api_version, kind, ns)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating {kind}: {e}"))
    }

    pub async fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
        let o = self
            .api(api_version, kind, Some(ns))
            .get(name)
            .await
            .expect("get");
        serde_json::to_value(o).expect("json")
    }

    pub async fn merge(&self, api_version: &str, kind: &str, ns: &str, name: &str, patch: Value) {
        self.api(api_version, kind, Some(ns))
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patched");
    }

    /// Waits until `check` holds for the object, returning it.
    pub async fn wait_for(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.get(api_version, kind, ns, name).await;
            if check(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {kind} {ns}/{name}: {what}; last: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `shop` objects: a Secret, a Provider using it, a route, a budget
    /// and a pod with a sidecar running as service account `web`.
    pub async fn shop(&self) {
        self.create(
            "v1",
            "Secret",
            Some("shop"),
            json!({
                "metadata": {"name": "llm-keys"},
                "data": {"openai": b64("key-1")},
            }),
        )
        .await;
        self.create(
            "sluice.dev/v1alpha1",
            "Provider",
            Some("shop"),
            json!({
                "metadata": {"name": "openai"},
                "spec": {
                    "type": "openai",
                    "credentials": {"secretRef": {"name": "llm-keys", "key": "openai"}},
                    "models": [{"name": "gpt-4o-mini", "contextWindow": 128000,
                        "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"}}],
                },
            }),
        )
        .await;
        self.create("sluice.dev/v1alpha1", "LLMRoute", Some("shop"), json!({
            "metadata": {"name": "chat"},
            "spec": {"model": "chat", "targets": [{"providerRef": {"name": "openai"}, "model": "gpt-4o-mini"}]},
        })).await;
        self.create("sluice.dev/v1alpha1", "Budget", Some("shop"), json!({
            "metadata": {"name": "team"},
            "spec": {"routes": ["chat"], "window": "day", "limits": {"requests": 100, "tokens": 100000, "costUSD": "10.00"}},
        })).await;
        self.pod("shop", "web-1", "web").await;
    }

    pub async fn pod(&self, ns: &str, name: &str, sa: &str) {
        self.create("v1", "Pod", Some(ns), json!({
            "metadata": {"name": name, "labels": {"app": "web", "sluice.dev/sidecar": "injected"}},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "example/app"}]},
        })).await;
    }

    /// The operator's CA, as stored in its TLS Secret.
    pub async fn operator_ca(&self) -> String {
        let s = self
            .get("v1", "Secret", "sluice-system", "sluice-operator-tls")
            .await;
        let b = s["data"]["ca.crt"].as_str().expect("ca.crt");
        String::from_utf8(unb64(b)).expect("pem")
    }
}

pub fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unb64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::new();
    for c in clean.chunks(4) {
        let mut n = 0u32;
        for (i, x) in c.iter().enumerate() {
            n |= u32::from(val(*x)) << (18 - 6 * i);
        }
        for i in 0..c.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A sidecar's view of the operator: HTTPS to `addr`, trusting `ca_pem`.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub tls: tokio_rustls::TlsConnector,
    pub token: String,
}

impl Sidecar {
    pub fn new(addr: SocketAddr, ca_pem: &str, token: &str) -> Self {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("ca added");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            token: token.into(),
        }
    }

    /// Sends a request over a fresh connection (verifying the certificate
    /// for `127.0.0.1`).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> http::Response<Incoming> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the operator's CA");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "sluice-operator")
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("answer in time")
            .expect("response")
    }

    /// A whole JSON answer.
    pub async fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let r = self.send(method, path, body).await;
        let status = r.status().as_u16();
        let bytes = tokio::time::timeout(WAIT, r.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn stream(&self, ns: &str, pod: &str) -> Lines {
        let r = self
            .send(
                "GET",
                &format!("/v1/snapshots/stream?namespace={ns}&pod={pod}"),
                None,
            )
            .await;
        assert_eq!(r.status(), 200, "stream refused");
        Lines {
            body: r.into_body(),
            buf: Vec::new(),
        }
    }
}

/// NDJSON lines of a stream (keepalive blank lines skipped).
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: Vec::new(),
        }
    }

    /// Reads until the stream ends (true) or a snapshot arrives (false).
    pub async fn end(&mut self) -> bool {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.body.frame().await {
                    None | Some(Err(_)) => return true,
                    Some(Ok(frame)) => {
                        if frame.data_ref().is_some_and(|d| d.contains(&b'{')) {
                            return false;
                        }
                    }
                }
            }
        })
        .await
        .expect("the stream ends in time")
    }
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=i).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return serde_json::from_slice(&line).expect("a JSON line");
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("stream open")
                    .expect("frame");
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
            }
        })
        .await
        .expect("a snapshot in time")
    }
}
