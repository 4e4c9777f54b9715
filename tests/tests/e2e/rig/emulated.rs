//! The cluster on one host: the `kube-emulator` process, the chart applied
//! with the real kubectl, operator replicas started from the chart's
//! Deployment, and the test playing kubelet for the pods the webhook
//! injected. What must differ on a single host is overridden, and only
//! that: listen ports (pods have their own IPs; here every replica and
//! sidecar shares loopback), Service DNS names (a loopback port, see
//! `service.rs`), volumes (temp files) and the in-cluster API config (the
//! emulator's kubeconfig).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::process::Command;

use super::process::{Proc, binary};
use super::service::Service;
use super::{Sidecar, eventually, free_port, http_get};
use sluice_tests::kubectl::{Kubectl, check};
use sluice_tests::tools::{chart, helm};

/// The chart's release name and namespace, as a user installs it.
pub const RELEASE: &str = "sluice";
pub const SYSTEM_NS: &str = "sluice-system";
/// `sluice.fullname`: the Deployment, the distribution Service, the
/// webhook configuration.
pub const FULLNAME: &str = "sluice-operator";
/// `sluice.webhookService`: the webhook's Service, over every replica.
pub const WEBHOOK_SERVICE: &str = "sluice-operator-webhook";

/// How often sidecars report, set through the chart's value (default 2s):
/// status follows in half a second, which keeps the suite short.
pub const REPORT_INTERVAL: &str = "500ms";

pub struct Emulated {
    dir: PathBuf,
    kubectl: Kubectl,
    _emulator: Proc,
    /// The chart's two Services in front of the operator: distribution
    /// (selects the leader's pod) and webhook (every replica).
    distribution: Service,
    webhook: Service,
    /// The pod template of the chart's Deployment.
    operator_pod: Value,
    operators: BTreeMap<String, Operator>,
}

/// One operator replica.
pub struct Operator {
    pub proc: Proc,
    pub metrics: SocketAddr,
}

impl Emulated {
    /// Starts the emulator, installs the CRDs and the chart, starts one
    /// operator replica and waits until it can inject pods.
    pub async fn install(dir: &Path) -> (Emulated, Kubectl) {
        let mut distribution = Service::start().await;
        let mut webhook = Service::start().await;
        let kubeconfig = dir.join("kubeconfig");
        let mut command = Command::new(binary("kube-emulator"));
        command
            .arg("--listen=127.0.0.1:0")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            // The API server reaches the webhook through its Service.
            .arg(format!(
                "--webhook-service={WEBHOOK_SERVICE}.{SYSTEM_NS}={}",
                webhook.addr
            ));
        let (emulator, _) =
            Proc::spawn_announcing("kube-emulator", command, &dir.join("kube-emulator.log")).await;
        let kubectl = Kubectl {
            kubeconfig,
            home: dir.to_owned(),
        };
        let crds = chart().join("crds");
        kubectl
            .ok(&["apply", "-f", crds.to_str().expect("utf-8 path")])
            .await;
        kubectl.ok(&["create", "namespace", SYSTEM_NS]).await;
        let rendered = std::process::Command::new(helm())
            .args(["template", RELEASE])
            .arg(chart())
            .args(["-n", SYSTEM_NS])
            .args([
                "--set",
                &format!("operator.reportInterval={REPORT_INTERVAL}"),
                // A SIGKILLed leader is replaced once its Lease expires;
                // 3 s instead of the chart's 15 s keeps scenario 6 short.
                "--set",
                "operator.leaseDuration=3s",
            ])
            .output()
            .expect("helm runs");
        assert!(
            rendered.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let args = ["apply", "-n", SYSTEM_NS, "-f", "-"];
        let out = kubectl
            .run(&args, Some(&String::from_utf8_lossy(&rendered.stdout)))
            .await;
        check(&args, &out);
        let deployment = kubectl.get_json("deployment", SYSTEM_NS, FULLNAME).await;
        let operator_pod = deployment["spec"]["template"].clone();
        let client = kubectl.client().await;
        distribution.select(client.clone(), SYSTEM_NS, FULLNAME);
        webhook.select(client, SYSTEM_NS, WEBHOOK_SERVICE);
        let mut env = Emulated {
            dir: dir.to_owned(),
            kubectl: kubectl.clone(),
            _emulator: emulator,
            distribution,
            webhook,
            operator_pod,
            operators: BTreeMap::new(),
        };
        env.start_operator("sluice-operator-0").await;
        // The operator publishes its CA as the webhook's caBundle; until
        // then the API server cannot call it (failurePolicy Ignore would
        // create pods without a sidecar).
        let k = kubectl.clone();
        eventually("the webhook trusts the operator's CA", || async {
            let hook = k
                .run(
                    &[
                        "get",
                        "mutatingwebhookconfiguration",
                        FULLNAME,
                        "-o",
                        "jsonpath={.webhooks[0].clientConfig.caBundle}",
                    ],
                    None,
                )
                .await;
            (!hook.stdout.is_empty()).then_some(())
        })
        .await;
        (env, kubectl)
    }

    /// Starts an operator replica as the Deployment's pod would run it:
    /// creates the pod from the template unless it exists (a replica
    /// restarted after `kill_operator` is a container restart in the same
    /// pod), then runs its container.
    pub async fn start_operator(&mut self, pod_name: &str) {
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": SYSTEM_NS,
                "labels": self.operator_pod["metadata"]["labels"],
            },
            "spec": self.operator_pod["spec"],
        });
        let args = ["create", "-f", "-"];
        let out = self.kubectl.run(&args, Some(&pod.to_string())).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("AlreadyExists"),
            "creating the operator pod {pod_name}: {stderr}"
        );
        let c = &self.operator_pod["spec"]["containers"][0];
        let (metrics, distribution, hook) = (free_port(), free_port(), free_port());
        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|a| {
                // Pod ports become loopback ports: replicas share this host.
                if a.starts_with("--distribution-listen=") {
                    format!("--distribution-listen={distribution}")
                } else if a.starts_with("--webhook-listen=") {
                    format!("--webhook-listen={hook}")
                } else if a.starts_with("--metrics-listen=") {
                    format!("--metrics-listen={metrics}")
                } else {
                    a.to_owned()
                }
            })
            .collect();
        let mut command = Command::new(binary("sluice-operator"));
        // A container starts with only its own env (PATH aside).
        command.args(&args).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        for (name, value) in container_env(c, pod_name, SYSTEM_NS, &Value::Null) {
            command.env(name, value);
        }
        // In a pod, kube-rs reads the in-cluster config; here the kubeconfig.
        command.env("KUBECONFIG", &self.kubectl.kubeconfig);
        let log = self.dir.join(format!("{pod_name}.log"));
        let proc = Proc::spawn(pod_name, command, &log);
        // The Service sends traffic to it once its readiness probe passes
        // (the chart probes the metrics port).
        let probe = c["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap_or("/readyz")
            .to_owned();
        eventually(
            &format!("{pod_name} passes its readiness probe"),
            || async {
                http_get(&format!("http://{metrics}{probe}"))
                    .await
                    .filter(|(s, _)| *s == 200)
            },
        )
        .await;
        self.distribution.set(pod_name, distribution);
        self.webhook.set(pod_name, hook);
        self.operators
            .insert(pod_name.to_owned(), Operator { proc, metrics });
    }

    /// SIGKILLs an operator replica (no Lease hand-over) and takes it out
    /// of the Service.
    pub async fn kill_operator(&mut self, pod_name: &str) {
        self.distribution.remove(pod_name);
        self.webhook.remove(pod_name);
        if let Some(mut op) = self.operators.remove(pod_name) {
            op.proc.kill().await;
        }
    }

    /// The metrics address of a running replica (scenarios that ask run
    /// just one).
    pub fn leader_metrics(&self) -> Option<SocketAddr> {
        self.operators.values().next().map(|o| o.metrics)
    }

    /// Where sidecars reach the operator: the Service's loopback port.
    pub fn distribution_url(&self) -> String {
        format!("https://{}", self.distribution.addr)
    }

    /// Plays kubelet for `pod` (as read back from the API): prepares its
    /// volumes and starts its `sluice-sidecar` container as a process with
    /// the container's args and env.
    pub async fn run_pod(&self, pod: &Value) -> Sidecar {
        let ns = pod["metadata"]["namespace"].as_str().expect("namespace");
        let name = pod["metadata"]["name"].as_str().expect("name");
        let container = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "sluice-sidecar")
            .expect("Rig::pods checked the injection");
        let root = self.dir.join("pods").join(format!("{ns}.{name}"));
        let mut mounts = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = mount["name"].as_str().expect("volume name");
            let path = mount["mountPath"].as_str().expect("mount path").to_owned();
            let host = root.join(volume_name);
            std::fs::create_dir_all(&host).expect("volume dir");
            let volume = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == volume_name)
                .unwrap_or_else(|| panic!("no volume {volume_name} in {pod:#}"));
            self.fill_volume(pod, volume, &host).await;
            mounts.push((path, host));
        }
        let (api, admin) = (free_port(), free_port());
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|a| {
                if a.starts_with("--listen=") {
                    // Each pod has its own loopback; here they share one.
                    format!("--listen={api}")
                } else if a.starts_with("--admin=") {
                    // 0.0.0.0 in a pod so Prometheus can scrape it; loopback here.
                    format!("--admin={admin}")
                } else if a.starts_with("--operator=") {
                    // The Service's DNS name → its loopback port.
                    format!("--operator={}", self.distribution_url())
                } else {
                    let mut a = a.to_owned();
                    for (path, host) in &mounts {
                        a = a.replace(path.as_str(), host.to_str().expect("utf-8 path"));
                    }
                    a
                }
            })
            .collect();
        let env = container_env(container, name, ns, pod);
        let sidecar = Sidecar::process(
            ns,
            name,
            api,
            admin,
            super::Launch {
                program: binary("sluice-sidecar"),
                args,
                env,
                log: self.dir.join(format!("sidecar-{ns}-{name}.log")),
            },
        );
        sidecar.started().await;
        sidecar
    }

    async fn fill_volume(&self, pod: &Value, volume: &Value, host: &Path) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let token = &source["serviceAccountToken"];
            if token.is_object() {
                // What kubelet does: a TokenRequest bound to the pod.
                let sa = pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default");
                let audience = token["audience"].as_str().unwrap_or_default();
                let seconds = token["expirationSeconds"].as_i64().unwrap_or(3600);
                let out = self
                    .kubectl
                    .ok(&[
                        "create",
                        "token",
                        sa,
                        "-n",
                        ns,
                        "--audience",
                        audience,
                        "--duration",
                        &format!("{seconds}s"),
                        "--bound-object-kind",
                        "Pod",
                        "--bound-object-name",
                        name,
                    ])
                    .await;
                let path = token["path"].as_str().unwrap_or("token");
                std::fs::write(host.join(path), out.trim()).expect("token file");
            }
        }
        for item in volume["downwardAPI"]["items"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let field = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
            let value = field_ref(pod, field);
            let path = item["path"].as_str().expect("item path");
            std::fs::write(host.join(path), value).expect("downward API file");
        }
        // emptyDir: the directory itself.
    }
}

/// A container's env with `fieldRef`s resolved as the downward API does.
fn container_env(
    container: &Value,
    pod_name: &str,
    ns: &str,
    pod: &Value,
) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_default().to_owned();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.to_owned(),
                Some("metadata.namespace") => ns.to_owned(),
                Some(other) => field_ref(pod, other),
                None => e["value"].as_str().unwrap_or_default().to_owned(),
            };
            (name, value)
        })
        .collect()
}

/// `metadata.name`, `metadata.annotations['k']`, `metadata.labels['k']`.
fn field_ref(pod: &Value, path: &str) -> String {
    let meta = &pod["metadata"];
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    let v = if let Some(k) = keyed("metadata.annotations['") {
        &meta["annotations"][k]
    } else if let Some(k) = keyed("metadata.labels['") {
        &meta["labels"][k]
    } else {
        match path {
            "metadata.name" => &meta["name"],
            "metadata.namespace" => &meta["namespace"],
            "metadata.uid" => &meta["uid"],
            "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
            other => panic!("the rig does not resolve fieldRef {other}"),
        }
    };
    v.as_str().unwrap_or_default().to_owned()
}
