//! The scenarios' rig: one environment behind one small abstraction.
//!
//! - Emulated (the default): the `kube-emulator` process, the chart applied
//!   with the real kubectl, the real operator binary, and the test playing
//!   kubelet for injected pods (`emulated.rs`).
//! - Real: `SLUICE_E2E_KUBECONFIG=<path>` names a cluster (kind, k3d) with
//!   the images loaded and the chart installed; pods run there and the
//!   sidecars are reached through `kubectl port-forward` (`real.rs`).
//!
//! Scenarios talk to the rig only: kubectl, namespaces, mock providers,
//! pods (each a [`Sidecar`] with its API and admin URLs), polling. A part of
//! a scenario that needs to control processes a cluster owns (kill the
//! operator, restart one container) asks [`Rig::emulated`] and is skipped
//! on a real cluster.

pub mod emulated;
pub mod mock;
pub mod process;
pub mod real;
pub mod service;
pub mod sidecar;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::mock::client;

use self::emulated::Emulated;
pub use self::mock::Mock;
use self::process::Proc;
use self::real::Real;
pub use self::sidecar::{Launch, Sidecar, all_answer, python_chat};
use sluice_tests::kubectl::Kubectl;

/// Bound on every eventual condition. Generous: this is a deadline against
/// hanging, never a performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Bound on a whole scenario (a few seconds each here; a real cluster
/// pulls images).
pub const SCENARIO: Duration = Duration::from_secs(240);

/// The provider key every Secret here holds: distinctive, so that scenario
/// 7 can search everything captured for it. Fake; mocks accept it.
pub const PROVIDER_KEY: &str = "sk-e2e-FAKE-4f1c9b7a-never-print-me";

/// Polls `probe` every 100 ms until it yields a value; panics naming
/// `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(what, || {
        let f = probe();
        async move { f.await.ok_or_else(String::new) }
    })
    .await
}

/// Like [`eventually`], for probes that say what they saw instead (the
/// last observation is in the panic message).
pub async fn eventually_or<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}\nlast seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use sluice_tests::ports::free_port;

/// `GET url` → (status, body), or None when nothing answers in 5 s.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client::send(http::Method::GET, url, &[], bytes::Bytes::new()),
    )
    .await
    .ok()?
    .ok()?;
    Some((r.status.as_u16(), r.text()))
}

/// A chat request for `model`.
pub fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Where the scenarios run.
pub enum Env {
    Emulated(Box<Emulated>),
    Real(Real),
}

/// One scenario's environment and scratch directory.
pub struct Rig {
    pub kubectl: Kubectl,
    pub env: Env,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
}

impl Rig {
    /// The environment `SLUICE_E2E_KUBECONFIG` asks for, with namespace
    /// `ns` created and labelled for injection.
    pub async fn start(ns: &str) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let (env, kubectl) = match std::env::var_os("SLUICE_E2E_KUBECONFIG") {
            Some(path) => {
                let (real, kubectl) = Real::new(PathBuf::from(path), dir.path());
                real.installed().await;
                (Env::Real(real), kubectl)
            }
            None => {
                let (emulated, kubectl) = Emulated::install(dir.path()).await;
                (Env::Emulated(Box::new(emulated)), kubectl)
            }
        };
        let mut rig = Rig {
            kubectl,
            env,
            dir,
            namespaces: Vec::new(),
        };
        rig.namespace(ns).await;
        rig
    }

    /// Creates namespace `ns`, labelled `sluice.dev/inject=enabled`, with
    /// service account `web` for the app pods.
    pub async fn namespace(&mut self, ns: &str) {
        self.kubectl
            .apply(&format!(
                r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels: {{sluice.dev/inject: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: web, namespace: {ns}}}
"#
            ))
            .await;
        self.namespaces.push(ns.to_owned());
    }

    /// The emulated environment, for steps a real cluster does not let a
    /// test take; None on a real cluster (the caller skips the step).
    pub fn emulated(&mut self) -> Option<&mut Emulated> {
        match &mut self.env {
            Env::Emulated(e) => Some(e),
            Env::Real(_) => None,
        }
    }

    /// Starts a mock provider process (its log: `mock-NAME.log`).
    pub async fn mock(&self, name: &str) -> Mock {
        let (listen, advertise) = match &self.env {
            Env::Emulated(_) => ("127.0.0.1".to_owned(), "127.0.0.1".to_owned()),
            Env::Real(r) => (r.mock_listen.clone(), r.mock_advertise.clone()),
        };
        let log = self.dir.path().join(format!("mock-{name}.log"));
        Mock::start(name, &listen, &advertise, &log).await
    }

    /// A Secret `keys` with [`PROVIDER_KEY`] and an openai-compatible
    /// Provider per mock, named as given, model `m` priced at 1 USD per
    /// million tokens each way.
    pub async fn providers(&self, ns: &str, mocks: &[(&str, &Mock)]) {
        let mut yaml = format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: keys, namespace: {ns}}}
stringData: {{key: {PROVIDER_KEY}}}
"#
        );
        for (name, mock) in mocks {
            yaml.push_str(&format!(
                r#"---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata:
  name: {name}
  namespace: {ns}
spec:
  type: openai-compatible
  endpoint: {url}/v1
  credentials:
    secretRef: {{name: keys, key: key}}
  models:
  - name: m
    contextWindow: 100000
    pricing: {{inputPerMillion: "1.00", outputPerMillion: "1.00"}}
  circuitBreaker:
    consecutiveFailures: 3
    openFor: 2s
    maxOpenFor: 2s
    halfOpenProbes: 1
"#,
                url = mock.url
            ));
        }
        self.kubectl.apply(&yaml).await;
    }

    /// Creates app pods (service account `web`, label `app: web`) and
    /// returns their sidecars once started.
    pub async fn pods(&self, ns: &str, names: &[&str]) -> Vec<Sidecar> {
        let mut sidecars = Vec::new();
        for name in names {
            // The app container only has to exist; the pause image keeps a
            // real cluster's pod running without pulling anything big.
            self.kubectl
                .apply(&format!(
                    r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: web}}
spec:
  serviceAccountName: web
  containers:
  - {{name: app, image: "registry.k8s.io/pause:3.10"}}
"#
                ))
                .await;
            let pod = self.kubectl.get_json("pod", ns, name).await;
            // The webhook's failurePolicy is Ignore: a pod created while it
            // cannot be called simply has no sidecar. Say so here.
            let injected = pod["spec"]["initContainers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "sluice-sidecar"));
            assert!(injected, "pod {ns}/{name} was not injected: {pod:#}");
            let sidecar = match &self.env {
                Env::Emulated(e) => e.run_pod(&pod).await,
                Env::Real(r) => r.run_pod(&pod).await,
            };
            sidecars.push(sidecar);
        }
        sidecars
    }

    /// One mock provider `primary`, route `chat` over it, and `pods`, once
    /// the route is Programmed: the start of most scenarios.
    pub async fn one_route(&self, ns: &str, pods: &[&str]) -> (Mock, Vec<Sidecar>) {
        let mock = self.mock("primary").await;
        self.providers(ns, &[("primary", &mock)]).await;
        self.kubectl
            .apply(&route_yaml(ns, "chat", "priority", &[("primary", 1)]))
            .await;
        let sidecars = self.pods(ns, pods).await;
        self.programmed(ns, "chat").await;
        (mock, sidecars)
    }

    /// Waits for the route's `Programmed=True`.
    pub async fn programmed(&self, ns: &str, route: &str) -> Value {
        self.wait_for("llmroute", ns, route, "Programmed=True", |r| {
            condition(r, "Programmed").as_deref() == Some("True")
        })
        .await
    }

    /// Polls `kubectl get KIND NAME -o json` until `check` holds.
    pub async fn wait_for(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("{kind} {ns}/{name}: {what}");
        eventually_or(&what, || async {
            let v = self.kubectl.get_json(kind, ns, name).await;
            if check(&v) {
                Ok(v)
            } else {
                Err(format!("{:#}", v["status"]))
            }
        })
        .await
    }

    /// Everything the operator replicas and the sidecars logged so far,
    /// as (where, text): their log files here, `kubectl logs` on a real
    /// cluster.
    pub async fn product_logs(&self, sidecars: &[Sidecar]) -> Vec<(String, String)> {
        let mut logs = Vec::new();
        match &self.env {
            Env::Emulated(_) => {
                for entry in std::fs::read_dir(self.dir.path())
                    .expect("rig dir")
                    .flatten()
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with("sidecar-") || name.starts_with("sluice-operator-") {
                        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                        logs.push((name, text));
                    }
                }
            }
            Env::Real(_) => {
                for s in sidecars {
                    let pod = format!("pod/{}", s.pod);
                    let text = self
                        .kubectl
                        .ok(&["logs", &pod, "-n", &s.ns, "-c", "sluice-sidecar"])
                        .await;
                    logs.push((format!("sidecar {}/{}", s.ns, s.pod), text));
                }
                let text = self
                    .kubectl
                    .ok(&[
                        "logs",
                        "-n",
                        emulated::SYSTEM_NS,
                        "-l",
                        "app.kubernetes.io/component=operator",
                        "--tail=-1",
                    ])
                    .await;
                logs.push(("sluice-operator".into(), text));
            }
        }
        logs
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // A real cluster outlives the test: leave it as it was.
        if let Env::Real(_) = self.env {
            for ns in &self.namespaces {
                let _ = std::process::Command::new("kubectl")
                    .args(["delete", "namespace", ns, "--wait=false"])
                    .env("KUBECONFIG", &self.kubectl.kubeconfig)
                    .output();
            }
        }
    }
}

/// Whether condition `kind` of an object's status is `True`.
pub fn condition(obj: &Value, kind: &str) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

/// An LLMRoute `name` for model `name` over `targets` (provider, weight),
/// all model `m`, in the listed order.
pub fn route_yaml(ns: &str, name: &str, strategy: &str, targets: &[(&str, u32)]) -> String {
    let mut yaml = format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  model: {name}
  strategy: {strategy}
  targets:
"#
    );
    for (provider, weight) in targets {
        yaml.push_str(&format!(
            "  - providerRef: {{name: {provider}}}\n    model: m\n    weight: {weight}\n"
        ));
    }
    yaml
}

/// The row of `name` in a `kubectl get` table, by column name.
pub fn row(
    table: &[Vec<String>],
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let header = table.first()?;
    let row = table
        .iter()
        .skip(1)
        .find(|r| r.first().is_some_and(|n| n == name))?;
    Some(header.iter().cloned().zip(row.iter().cloned()).collect())
}

/// Where the test reaches the leading operator replica.
pub struct OperatorAccess {
    /// `https://…` of the distribution port (the sidecars' side).
    pub distribution: String,
    /// `http://…` of the metrics port.
    pub metrics: String,
    /// The CA sidecars trust, from the operator's TLS Secret.
    pub ca_pem: String,
    _forward: Option<Proc>,
}

impl Rig {
    /// The leading operator replica's ports and CA.
    pub async fn operator(&self) -> OperatorAccess {
        use base64::Engine as _;
        let ca = self
            .kubectl
            .ok(&[
                "get",
                "secret",
                "sluice-operator-tls",
                "-n",
                emulated::SYSTEM_NS,
                "-o",
                r"jsonpath={.data.ca\.crt}",
            ])
            .await;
        let ca_pem = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(ca.trim())
                .expect("ca.crt is base64"),
        )
        .expect("ca.crt is PEM");
        match &self.env {
            Env::Emulated(e) => OperatorAccess {
                distribution: e.distribution_url(),
                metrics: format!("http://{}", e.leader_metrics().expect("an operator runs")),
                ca_pem,
                _forward: None,
            },
            Env::Real(r) => {
                // The Lease names the leader's pod (POD_NAME is its identity).
                let leader = self
                    .kubectl
                    .ok(&[
                        "get",
                        "lease",
                        "sluice-operator",
                        "-n",
                        emulated::SYSTEM_NS,
                        "-o",
                        "jsonpath={.spec.holderIdentity}",
                    ])
                    .await;
                let (proc, ports) = r
                    .port_forward(
                        &format!("pod/{}", leader.trim()),
                        emulated::SYSTEM_NS,
                        &[8443, 8080],
                    )
                    .await;
                OperatorAccess {
                    distribution: format!("https://{}", ports[0]),
                    metrics: format!("http://{}", ports[1]),
                    ca_pem,
                    _forward: Some(proc),
                }
            }
        }
    }
}
