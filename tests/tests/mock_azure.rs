//! The Azure OpenAI mock over loopback: deployment paths, `api-key`,
//! `api-version`, content-filter annotations and errors, Azure's 401/404/429
//! bodies and retry headers.

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use sluice_tests::mock::client::{self, ExampleRequest, SseEvent};
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind, RateLimit,
};

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound")
}

async fn start(kind: ProviderKind, config: MockConfig) -> MockHandle {
    MockProvider::start(kind, config)
        .await
        .expect("mock starts")
}

const AUTH: (&str, &str) = ("authorization", "Bearer mock-key");

fn events(r: &client::Response) -> Vec<SseEvent> {
    client::sse_events(&r.text())
}

#[tokio::test]
async fn azure_success_carries_filter_annotations() {
    bounded(async {
        let mock = start(ProviderKind::Azure, MockConfig::default()).await;
        let r = ExampleRequest::chat(
            ProviderKind::Azure,
            &mock.url(),
            "gpt4o-prod",
            "hello",
            false,
        )
        .send()
        .await
        .expect("r");
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("apim-request-id").is_some());
        let v = r.json();
        assert_eq!(v["model"], "gpt4o-prod");
        assert_eq!(v["prompt_filter_results"][0]["prompt_index"], 0);
        assert_eq!(
            v["choices"][0]["content_filter_results"]["hate"]["filtered"],
            false
        );

        let r = ExampleRequest::chat(
            ProviderKind::Azure,
            &mock.url(),
            "gpt4o-prod",
            "hello",
            true,
        )
        .send()
        .await
        .expect("r");
        let evs = events(&r);
        let first = evs[0].json();
        assert_eq!(first["choices"], json!([]));
        assert!(first["prompt_filter_results"].is_array());
        assert_eq!(evs.last().expect("e").data, "[DONE]");
    })
    .await;
}

#[tokio::test]
async fn azure_auth_api_version_and_deployment() {
    bounded(async {
        let config = MockConfig {
            models: vec!["gpt4o-prod".into()],
            ..MockConfig::default()
        };
        let mock = start(ProviderKind::Azure, config).await;
        let body = json!({"messages": [{"role": "user", "content": "x"}]});
        let url = format!(
            "{}/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            mock.url()
        );
        let r = client::post_json(&url, &[("api-key", "wrong")], &body)
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"]["code"], "401");
        let r = client::post_json(&url, &[AUTH], &body).await.expect("r");
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "Bearer is not Azure's api-key"
        );

        let no_version = url.split('?').next().expect("path").to_owned();
        let r = client::post_json(&no_version, &[("api-key", "mock-key")], &body)
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["message"], "Resource not found");

        let other = url.replace("gpt4o-prod", "missing");
        let r = client::post_json(&other, &[("api-key", "mock-key")], &body)
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["code"], "DeploymentNotFound");
    })
    .await;
}

#[tokio::test]
async fn azure_content_filter_and_rate_limit() {
    bounded(async {
        let mock = start(ProviderKind::Azure, MockConfig::default()).await;
        let req = ExampleRequest::chat(ProviderKind::Azure, &mock.url(), "d", "hi", false);
        mock.enqueue(1, Behaviour::error(ErrorKind::ContentFilter));
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "content_filter");
        assert_eq!(e["innererror"]["code"], "ResponsibleAIPolicyViolation");
        assert_eq!(
            e["innererror"]["content_filter_result"]["violence"]["filtered"],
            true
        );

        mock.enqueue(1, Fault::Refusal);
        let v = req.send().await.expect("r").json();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(
            v["choices"][0]["content_filter_results"]["violence"]["filtered"],
            true
        );

        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
                Duration::from_secs(6),
            ))),
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.header("retry-after"), Some("6"));
        assert_eq!(r.header("retry-after-ms"), Some("6000"));
        assert_eq!(r.json()["error"]["code"], "429");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .expect("m")
                .contains("Please retry after 6 seconds")
        );

        mock.enqueue(1, Behaviour::error(ErrorKind::ServerError));
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.header("x-request-id").is_some() && r.header("openai-version").is_none());
    })
    .await;
}
