//! The real `sluice-sidecar` binary: flags, refusals, and a request
//! through a process started from the quickstart-like fixture.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-sidecar");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/quickstart.yaml"
);

fn run_to_exit(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refuses_non_loopback_without_the_flag() {
    let (ok, err) = run_to_exit(&["--config", FIXTURE, "--listen", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(err.contains("not a loopback address"), "{err}");
}

#[test]
fn refuses_zero_workers() {
    let (ok, err) = run_to_exit(&["--config", FIXTURE, "--workers", "0"]);
    assert!(!ok);
    assert!(err.contains("--workers"), "{err}");
}

#[test]
fn cluster_mode_names_what_it_is_missing() {
    let (ok, err) = run_to_exit(&[
        "--operator",
        "https://sluice-operator:8443",
        "--ca-file",
        "/nonexistent/ca.crt",
        "--token-file",
        "/nonexistent/token",
    ]);
    assert!(!ok);
    assert!(
        err.contains("POD_NAMESPACE") || err.contains("/nonexistent/ca.crt"),
        "{err}"
    );
}

#[test]
fn a_bad_config_is_refused_with_every_reason_and_no_secret() {
    let dir = std::env::temp_dir().join(format!("sluice-bin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: p}\nspec:\n  type: openai\n  credentials: {env: SLUICE_TEST_UNSET_KEY}\n  models: [{name: m}]\n---\napiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\nspec: {model: r, targets: [{providerRef: {name: p}, model: m}]}\n",
    )
    .expect("write");
    let path_str = path.to_string_lossy().into_owned();
    let (ok, err) = run_to_exit(&[
        "--config",
        &path_str,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(err.contains("SLUICE_TEST_UNSET_KEY is not set"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serves_the_fixture_from_a_process() {
    // More than the default single worker: the other black-box tests run
    // the default.
    let mut child = Command::new(BIN)
        .args([
            "--config",
            FIXTURE,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addrs = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while addrs.is_none() && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            assert!(v.is_object(), "log lines are JSON: {line}");
            if v["fields"]["message"] == "sluice-sidecar serving" {
                addrs = Some((
                    v["fields"]["listen"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    v["fields"]["admin"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    let (api, admin) = addrs.expect("the sidecar said where it listens");
    let ready = sluice_tests::mock::client::send(
        http::Method::GET,
        &format!("http://{admin}/readyz"),
        &[],
        bytes::Bytes::new(),
    )
    .await
    .expect("readyz");
    assert_eq!(ready.status, 200);
    let resp = sluice_tests::mock::client::post_json(
        &format!("http://{api}/v1/chat/completions"),
        &[],
        &serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .expect("chat");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        "Hello from steady."
    );
    // SIGTERM drains and exits cleanly.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = match exited {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("the sidecar did not exit after SIGTERM");
        }
    };
    assert!(status.success(), "{status:?}");
    // The access log names ids, routes and numbers, never the prompt.
    let logs: Vec<String> = rx.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("\"route\":\"chat\"")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("Hello from steady")),
        "{logs:?}"
    );
}
