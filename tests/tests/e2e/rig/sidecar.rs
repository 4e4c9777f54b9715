//! One pod's sidecar as the app in that pod sees it, and the clients that
//! call it: the Rust client (`sluice_tests::mock::client`) and the
//! official `openai` Python package.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::mock::client::{self, Response};

use super::process::Proc;
use super::{ask, eventually, http_get};

/// How to start a sidecar process (kept to restart it).
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Launch {
    fn spawn(&self, name: &str) -> Proc {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args).env_clear();
        // A container starts with only its own env (PATH aside).
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(name, command, &self.log)
    }
}

enum Running {
    /// Emulated: the sidecar process, restartable.
    Process { launch: Launch, proc: Option<Proc> },
    /// Real cluster: a `kubectl port-forward` to the pod.
    PortForward(#[allow(dead_code)] Proc),
}

/// One pod's sidecar, as the app in that pod sees it.
pub struct Sidecar {
    pub ns: String,
    pub pod: String,
    /// The app-facing API (`127.0.0.1:4100` in the pod).
    pub api: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`, `/debug/config`.
    pub admin: SocketAddr,
    running: Running,
}

impl Sidecar {
    pub(super) fn process(
        ns: &str,
        pod: &str,
        api: SocketAddr,
        admin: SocketAddr,
        launch: Launch,
    ) -> Sidecar {
        let proc = launch.spawn(&format!("sidecar {ns}/{pod}"));
        Sidecar {
            ns: ns.to_owned(),
            pod: pod.to_owned(),
            api,
            admin,
            running: Running::Process {
                launch,
                proc: Some(proc),
            },
        }
    }

    pub(super) fn port_forward(
        ns: &str,
        pod: &str,
        api: SocketAddr,
        admin: SocketAddr,
        forward: Proc,
    ) -> Sidecar {
        Sidecar {
            ns: ns.to_owned(),
            pod: pod.to_owned(),
            api,
            admin,
            running: Running::PortForward(forward),
        }
    }

    /// Waits for `/healthz`, as the pod's startup probe does.
    pub(super) async fn started(&self) {
        let url = self.admin_url("/healthz");
        eventually(
            &format!("sidecar {}/{} is live", self.ns, self.pod),
            || async { http_get(&url).await.filter(|(s, _)| *s == 200) },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `POST /v1/chat/completions` from the Rust client; None when the
    /// sidecar does not answer at all.
    pub async fn chat(&self, model: &str) -> Option<Response> {
        self.chat_with(&ask(model, "hello from e2e"), &[]).await
    }

    pub async fn chat_with(&self, body: &Value, headers: &[(&str, &str)]) -> Option<Response> {
        tokio::time::timeout(
            Duration::from_secs(20),
            client::post_json(&self.url("/v1/chat/completions"), headers, body),
        )
        .await
        .ok()?
        .ok()
    }

    /// `/readyz` is 200.
    pub async fn ready(&self) -> bool {
        http_get(&self.admin_url("/readyz"))
            .await
            .is_some_and(|(s, _)| s == 200)
    }

    /// The config version in use, from `/debug/config`.
    pub async fn version(&self) -> Option<String> {
        let (status, body) = http_get(&self.admin_url("/debug/config")).await?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["version"].as_str().map(str::to_owned)
    }

    /// Stops the sidecar process (SIGKILL, as an OOM kill would).
    pub async fn kill(&mut self) {
        match &mut self.running {
            Running::Process { proc, .. } => {
                if let Some(mut p) = proc.take() {
                    p.kill().await;
                }
            }
            Running::PortForward(_) => panic!("a real cluster's sidecar is not ours to kill"),
        }
    }

    /// Starts the sidecar again with the same args, env and state dir, as
    /// kubelet restarts a container in place.
    pub async fn restart(&mut self) {
        self.kill().await;
        let name = format!("sidecar {}/{}", self.ns, self.pod);
        if let Running::Process { launch, proc } = &mut self.running {
            *proc = Some(launch.spawn(&name));
        }
        self.started().await;
    }
}

/// One chat completion with the official `openai` Python package
/// (`SLUICE_PYTHON`, set up by scripts/test), configured the way the
/// webhook configures apps: `OPENAI_BASE_URL` and `OPENAI_API_KEY`.
/// Returns the reply text.
pub async fn python_chat(base_url: &str, api_key: &str, model: &str) -> String {
    let Some(python) = std::env::var_os("SLUICE_PYTHON") else {
        panic!("SLUICE_PYTHON is not set: run the tests with scripts/test, which installs the SDK");
    };
    const SCRIPT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(timeout=20, max_retries=0)
r = client.chat.completions.create(model=sys.argv[1], messages=[{"role": "user", "content": "hello from python"}])
print(r.choices[0].message.content)
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .args(["-c", SCRIPT, model])
            .env("OPENAI_BASE_URL", base_url)
            .env("OPENAI_API_KEY", api_key)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK finishes in time")
    .expect("python runs");
    assert!(
        out.status.success(),
        "the openai SDK failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every sidecar answers `model` from `provider`, `rounds` times, a
/// little apart (so the rounds span several report intervals).
pub async fn all_answer(sidecars: &[Sidecar], model: &str, provider: &str, rounds: usize) {
    for round in 0..rounds {
        for s in sidecars {
            let r = s.chat(model).await.expect("the sidecar answers");
            assert_eq!(
                (r.status.as_u16(), r.header("x-sluice-provider")),
                (200, Some(provider)),
                "round {round}, {}: {}",
                s.pod,
                r.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
