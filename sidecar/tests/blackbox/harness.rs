//! Starts a real sidecar in-process on port 0 from a YAML string, with a
//! fake environment for credentials, and talks to it over HTTP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sluice_sidecar::run::{self, Running};
use sluice_tests::mock::client::{self, Response};

static N: AtomicU64 = AtomicU64::new(0);

/// The key every provider in test YAML gets from `env: TEST_KEY`.
pub const TEST_KEY: &str = "mock-key";

pub struct Sidecar {
    pub running: Running,
    pub path: PathBuf,
    dir: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(name: &str) -> Option<String> {
    match name {
        "TEST_KEY" => Some(TEST_KEY.to_owned()),
        "SECRET_KEY" => Some("sk-do-not-leak-0123456789".to_owned()),
        "AWS_PAIR" => Some("AKIDMOCK:mock-secret".to_owned()),
        _ => None,
    }
}

impl Sidecar {
    pub async fn start(yaml: &str) -> Sidecar {
        Self::start_with(yaml, None).await
    }

    /// Like [`Sidecar::start`], trusting the PEM CA `extra_ca` for upstreams.
    pub async fn start_with(yaml: &str, extra_ca: Option<&str>) -> Sidecar {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = std::env::temp_dir().join(format!(
            "sluice-sidecar-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let any = "127.0.0.1:0".parse().expect("addr");
        let mut opts = run::Options::new(path.clone(), any, any);
        if let Some(pem) = extra_ca {
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, pem).expect("write ca");
            opts.extra_ca = Some(ca);
        }
        opts.reload_interval = Duration::from_millis(50);
        opts.access_log = false;
        let running = run::standalone(opts, env).await.expect("sidecar starts");
        Sidecar { running, path, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.api)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin)
    }

    pub async fn chat(&self, body: Value) -> Response {
        client::post_json(&self.url("/v1/chat/completions"), &[], &body)
            .await
            .expect("response")
    }

    pub async fn post_raw(&self, path: &str, body: &'static [u8]) -> Response {
        client::send(
            http::Method::POST,
            &self.url(path),
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(body),
        )
        .await
        .expect("response")
    }

    pub async fn get(&self, url: &str) -> Response {
        client::send(http::Method::GET, url, &[], bytes::Bytes::new())
            .await
            .expect("response")
    }
}

/// A user message asking `text`.
pub fn ask(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Concatenated `delta.content` of SSE chunk events, and whether `[DONE]` came.
pub fn stream_text(body: &str) -> (String, bool, Vec<Value>) {
    let events = client::sse_events(body);
    let mut text = String::new();
    let mut done = false;
    let mut errors = Vec::new();
    for ev in events {
        if ev.data == "[DONE]" {
            done = true;
            continue;
        }
        let v = ev.json();
        if v.get("error").is_some() {
            errors.push(v);
            continue;
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    (text, done, errors)
}
