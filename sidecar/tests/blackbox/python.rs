//! The official `openai` and `anthropic` Python packages against the
//! sidecar (in front of the sluice-tests OpenAI mock). The interpreter is
//! named by `SLUICE_PYTHON`, which the project's test script sets after
//! creating a venv with both packages; without it this test fails rather
//! than skipping silently.

use sluice_tests::mock::{MockConfig, MockProvider, ProviderKind};

use crate::harness::Sidecar;

#[tokio::test]
async fn official_python_sdks_work_against_the_sidecar() {
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| {
        panic!(
            "SLUICE_PYTHON is not set: run the project's test script (scripts/test), which creates a venv with the openai and anthropic packages and sets SLUICE_PYTHON to its interpreter"
        )
    });
    let upstream = MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    let yaml = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: upstream}}
spec:
  type: openai-compatible
  endpoint: {}/v1
  credentials: {{env: TEST_KEY}}
  models: [{{name: gpt-4o-mini, capabilities: [chat, tools, embeddings]}}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  model: chat
  targets: [{{providerRef: {{name: upstream}}, model: gpt-4o-mini}}]
"#,
        upstream.url()
    );
    let sc = Sidecar::start(&yaml).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(sc.url(""))
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
}
