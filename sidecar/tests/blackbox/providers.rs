//! Every provider type through the whole pipeline: an OpenAI client in
//! front, the provider's own wire format behind (sluice-tests mocks), stream
//! and non-stream, plus the Anthropic-compatible ingress.

use serde_json::json;
use sluice_tests::mock::{
    Behaviour, ErrorKind, MockConfig, MockHandle, MockProvider, ProviderKind,
};

use crate::harness::{Sidecar, ask, stream_text};

fn provider_yaml(kind: ProviderKind, url: &str) -> String {
    let (kind_name, extra, model) = match kind {
        ProviderKind::OpenAi => ("openai", format!("endpoint: {url}/v1"), "gpt-4o-mini"),
        ProviderKind::Azure => ("azure-openai", format!("endpoint: {url}"), "gpt4o"),
        ProviderKind::Anthropic => ("anthropic", format!("endpoint: {url}"), "claude-sonnet-4-5"),
        ProviderKind::Gemini => ("gemini", format!("endpoint: {url}"), "gemini-2.5-flash"),
        ProviderKind::Bedrock => (
            "bedrock",
            format!("endpoint: {url}\n  bedrock: {{region: us-east-1}}"),
            "anthropic.claude-3-haiku",
        ),
    };
    let key_env = match kind {
        ProviderKind::Bedrock => "AWS_PAIR",
        _ => "TEST_KEY",
    };
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: up}}
spec:
  type: {kind_name}
  {extra}
  credentials: {{env: {key_env}}}
  models: [{{name: {model}}}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  model: chat
  targets: [{{providerRef: {{name: up}}, model: {model}}}]
"#
    )
}

async fn start(kind: ProviderKind) -> (MockHandle, Sidecar) {
    let mut config = MockConfig::default();
    if kind == ProviderKind::Bedrock {
        config.api_key = Some("AKIDMOCK".into());
    }
    let mock = MockProvider::start(kind, config).await.expect("mock");
    let sc = Sidecar::start(&provider_yaml(kind, &mock.url())).await;
    (mock, sc)
}

#[tokio::test]
async fn every_provider_answers_through_the_sidecar() {
    for kind in ProviderKind::ALL {
        let (mock, sc) = start(kind).await;
        let resp = sc.chat(ask("chat", "What is the capital of France?")).await;
        assert_eq!(resp.status, 200, "{kind}: {}", resp.text());
        let v = resp.json();
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{kind}: {v}"
        );
        assert!(
            v["usage"]["completion_tokens"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{kind}: {v}"
        );
        let mut body = ask("chat", "Tell me a story");
        body["stream"] = json!(true);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200, "{kind}");
        let (text, done, errors) = stream_text(&resp.text());
        assert!(
            !text.is_empty() && done && errors.is_empty(),
            "{kind}: {}",
            resp.text()
        );
        assert_eq!(mock.request_count(), 2, "{kind}");
    }
}

#[tokio::test]
async fn provider_errors_are_classified_through_the_sidecar() {
    for kind in ProviderKind::ALL {
        let (mock, sc) = start(kind).await;
        mock.enqueue(1, Behaviour::error(ErrorKind::Auth));
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.status, 502, "{kind}: {}", resp.text());
        mock.enqueue(1, Behaviour::error(ErrorKind::ContextLength));
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(
            resp.json()["error"]["code"],
            "context_length_exceeded",
            "{kind}: {}",
            resp.text()
        );
        let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
        assert!(
            metrics.contains("class=\"auth\",fault=\"provider\""),
            "{kind}: {metrics}"
        );
    }
}

#[tokio::test]
async fn anthropic_ingress_reaches_any_provider() {
    for kind in [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
    ] {
        let (_mock, sc) = start(kind).await;
        let body = json!({"model": "chat", "max_tokens": 64, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hello"}]});
        let resp = sluice_tests::mock::client::post_json(&sc.url("/v1/messages"), &[], &body)
            .await
            .expect("response");
        assert_eq!(resp.status, 200, "{kind}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["type"], "message", "{kind}: {v}");
        assert_eq!(v["content"][0]["type"], "text", "{kind}: {v}");
        let mut body = body;
        body["stream"] = json!(true);
        let resp = sluice_tests::mock::client::post_json(&sc.url("/v1/messages"), &[], &body)
            .await
            .expect("response");
        let events: Vec<_> = sluice_tests::mock::client::sse_events(&resp.text())
            .into_iter()
            .filter_map(|e| e.event)
            .collect();
        assert_eq!(
            events.first().map(String::as_str),
            Some("message_start"),
            "{kind}"
        );
        assert_eq!(
            events.last().map(String::as_str),
            Some("message_stop"),
            "{kind}"
        );
        let resp = sluice_tests::mock::client::post_json(
            &sc.url("/v1/messages"),
            &[],
            &json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .expect("response");
        assert_eq!(resp.status, 404);
        assert_eq!(resp.json()["type"], "error");
        assert_eq!(resp.json()["error"]["type"], "not_found_error");
    }
}
