//! A real cluster (`SLUICE_E2E_KUBECONFIG`): kind or k3d with the
//! `sluice-operator` and `sluice-sidecar` images loaded and the chart
//! installed in `sluice-system` (README, "End-to-end tests"). Pods run
//! there; the test reaches each sidecar through `kubectl port-forward`
//! (which connects to the pod's own loopback, where the API listens).
//!
//! Mock providers run on this host and must be reachable from the pods:
//! `SLUICE_E2E_MOCK_ADDRESS` is the address they listen on and the one
//! Providers name (for kind, the docker network's gateway, e.g.
//! `172.18.0.1`). Unverified here: there is no cluster on the machines
//! that build this project.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::Sidecar;
use super::process::Proc;
use sluice_tests::kubectl::Kubectl;

pub struct Real {
    kubectl: Kubectl,
    pub mock_listen: String,
    pub mock_advertise: String,
}

impl Real {
    pub fn new(kubeconfig: PathBuf, dir: &Path) -> (Real, Kubectl) {
        let address = std::env::var("SLUICE_E2E_MOCK_ADDRESS").unwrap_or_else(|_| {
            panic!(
                "SLUICE_E2E_MOCK_ADDRESS must name an address of this host that the \
                 cluster's pods reach (README, End-to-end tests)"
            )
        });
        let kubectl = Kubectl {
            kubeconfig,
            home: dir.to_owned(),
        };
        let real = Real {
            kubectl: kubectl.clone(),
            mock_listen: address.clone(),
            mock_advertise: address,
        };
        (real, kubectl)
    }

    /// Waits until the chart's operator Deployment is Available.
    pub async fn installed(&self) {
        self.wait(&[
            "deployment/sluice-operator",
            "-n",
            "sluice-system",
            "--for=condition=Available",
        ])
        .await;
    }

    /// `kubectl wait ARGS` for up to two minutes (image pulls take their
    /// time), in rounds that each fit kubectl's own bound.
    async fn wait(&self, args: &[&str]) {
        let mut all = vec!["wait", "--timeout=20s"];
        all.extend_from_slice(args);
        let mut last = None;
        for _ in 0..6 {
            let out = self.kubectl.run(&all, None).await;
            if out.status.success() {
                return;
            }
            last = Some(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        panic!("kubectl {all:?} never succeeded: {last:?}");
    }

    /// Waits for the pod to be Ready and forwards local ports to its
    /// sidecar's API (4100) and admin (4101) ports.
    pub async fn run_pod(&self, pod: &Value) -> Sidecar {
        let ns = pod["metadata"]["namespace"].as_str().expect("namespace");
        let name = pod["metadata"]["name"].as_str().expect("name");
        self.wait(&[&format!("pod/{name}"), "-n", ns, "--for=condition=Ready"])
            .await;
        let (forward, ports) = self
            .port_forward(&format!("pod/{name}"), ns, &[4100, 4101])
            .await;
        Sidecar::port_forward(ns, name, ports[0], ports[1], forward)
    }

    /// `kubectl port-forward TARGET :PORT…`: the local addresses, in the
    /// order of `ports`, and the process keeping them open.
    pub async fn port_forward(
        &self,
        target: &str,
        ns: &str,
        ports: &[u16],
    ) -> (Proc, Vec<SocketAddr>) {
        let mut command = tokio::process::Command::new("kubectl");
        command
            .args(["port-forward", target, "-n", ns])
            .args(ports.iter().map(|p| format!(":{p}")))
            .env("KUBECONFIG", &self.kubectl.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("kubectl port-forward runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut found: Vec<Option<SocketAddr>> = vec![None; ports.len()];
        // "Forwarding from 127.0.0.1:LOCAL -> REMOTE"
        while found.iter().any(Option::is_none) {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("port-forward announces its ports")
                .expect("port-forward output")
                .expect("port-forward keeps running");
            let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") else {
                continue;
            };
            let Some((local, remote)) = rest.split_once(" -> ") else {
                continue;
            };
            let addr = format!("127.0.0.1:{local}").parse().expect("an address");
            if let Some(i) = ports.iter().position(|p| p.to_string() == remote.trim()) {
                found[i] = Some(addr);
            }
        }
        (Proc::adopt(child), found.into_iter().flatten().collect())
    }
}
