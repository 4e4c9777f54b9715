//! The real `kubectl`, bounded in time, with a given kubeconfig and a
//! private HOME (its discovery cache): the emulator tests and the
//! end-to-end scenarios drive clusters with it as users do.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// Longest a single kubectl invocation may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// kubectl with one kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    /// The kubeconfig it uses.
    pub kubeconfig: PathBuf,
    /// kubectl's HOME (its discovery cache).
    pub home: PathBuf,
}

/// A kube-rs client from a kubeconfig's YAML (for what the tests read or
/// watch faster than a kubectl process per look).
pub async fn client(kubeconfig_yaml: &str) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(kubeconfig_yaml).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

impl Kubectl {
    /// A kube-rs client with the same kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let yaml = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig readable");
        client(&yaml).await
    }

    /// Runs kubectl, feeding `stdin` when given.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl runs");
        let mut pipe = child.stdin.take().expect("stdin is piped");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes())
                .await
                .expect("write kubectl's stdin");
        }
        drop(pipe);
        tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("kubectl's output")
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        check(args, &out)
    }

    /// `kubectl apply -f -` of `yaml`, asserting success.
    pub async fn apply(&self, yaml: &str) -> String {
        let args = ["apply", "-f", "-"];
        let out = self.run(&args, Some(yaml)).await;
        check(&args, &out)
    }

    /// `kubectl patch KIND NAME -n NS --type=merge -p PATCH`.
    pub async fn merge_patch(&self, kind: &str, ns: &str, name: &str, patch: &str) -> String {
        self.ok(&["patch", kind, name, "-n", ns, "--type=merge", "-p", patch])
            .await
    }

    /// `kubectl get KIND NAME -n NS -o json`.
    pub async fn get_json(&self, kind: &str, ns: &str, name: &str) -> Value {
        let text = self.ok(&["get", kind, name, "-n", ns, "-o", "json"]).await;
        serde_json::from_str(&text).expect("kubectl prints JSON")
    }

    /// `kubectl get KIND -n NS` as rows of cells (header first): what a
    /// user reads. Cells are cut at the header's column starts, so an
    /// empty cell stays in its column.
    pub async fn table(&self, kind: &str, ns: &str) -> Vec<Vec<String>> {
        let text = self.ok(&["get", kind, "-n", ns]).await;
        columns(&text)
    }
}

/// Splits kubectl's aligned table output into cells.
pub fn columns(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let mut starts = Vec::new();
    let mut previous = ' ';
    for (i, c) in header.char_indices() {
        if c != ' ' && previous == ' ' {
            starts.push(i);
        }
        previous = c;
    }
    std::iter::once(header)
        .chain(lines)
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &start)| {
                    let end = starts.get(n + 1).copied().unwrap_or(line.len());
                    line.get(start.min(line.len())..end.min(line.len()))
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                })
                .collect()
        })
        .collect()
}

/// Asserts a kubectl run succeeded; returns its stdout.
pub fn check(args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
