//! Mock providers as processes (`mock-provider`), scripted through their
//! `/__mock/` control API.

use serde_json::{Value, json};
use sluice_tests::mock::client;

use std::path::Path;

use super::PROVIDER_KEY;
use super::process::{self, Proc};

/// A mock provider process (OpenAI wire format) accepting [`PROVIDER_KEY`].
pub struct Mock {
    pub url: String,
    _proc: Proc,
}

impl Mock {
    /// Starts `mock-provider` listening on `listen`, reached at `advertise`.
    pub async fn start(name: &str, listen: &str, advertise: &str, log: &Path) -> Mock {
        let mut command = tokio::process::Command::new(process::binary("mock-provider"));
        command
            .args(["--kind", "openai", "--api-key", PROVIDER_KEY])
            .arg(format!("--listen={listen}:0"));
        let (proc, addr) = Proc::spawn_announcing(&format!("mock {name}"), command, log).await;
        let port = addr.rsplit(':').next().expect("a port");
        Mock {
            url: format!("http://{advertise}:{port}"),
            _proc: proc,
        }
    }

    async fn control(&self, path: &str, body: Value) {
        let r = client::post_json(&format!("{}/__mock/{path}", self.url), &[], &body)
            .await
            .expect("the mock's control API answers");
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    }

    /// Every later call fails with a 500 (an outage).
    pub async fn fail(&self) {
        self.control(
            "default",
            json!({"fault": {"type": "error", "kind": "server_error"}}),
        )
        .await;
    }

    /// Every later call succeeds.
    pub async fn heal(&self) {
        self.control("default", json!({"fault": {"type": "none"}}))
            .await;
    }

    /// Model calls received so far.
    pub async fn calls(&self) -> u64 {
        let r = client::send(
            http::Method::GET,
            &format!("{}/__mock/requests", self.url),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .expect("the mock's control API answers");
        r.json()["count"].as_u64().unwrap_or(0)
    }
}
