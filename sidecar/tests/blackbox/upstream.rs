//! The sidecar in front of `sluice-tests` mock upstreams speaking OpenAI's
//! and Azure's real wire formats, with injected faults.

use std::time::Duration;

use serde_json::json;
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind, RateLimit,
};

use crate::harness::{Sidecar, ask, stream_text};

/// A route `primary` → `backup` (both OpenAI mocks) plus `solo` (primary only).
fn yaml(primary: &str, backup: &str, first_token: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: primary}}
spec:
  type: openai-compatible
  endpoint: {primary}/v1
  credentials: {{env: TEST_KEY}}
  timeouts: {{connect: 500ms, firstToken: {first_token}, idle: 1s, total: 5s}}
  models: [{{name: gpt-4o-mini}}]
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: backup}}
spec:
  type: openai
  endpoint: {backup}/v1
  credentials: {{env: TEST_KEY}}
  models: [{{name: gpt-4o}}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  model: chat
  # One try per target: these tests are about fallback; retries have theirs.
  retry: {{attempts: 1}}
  fallback:
    triggers: [connect, reset, timeout, rate-limited, overloaded, server-error, malformed, stream-interrupted]
  targets:
  - {{providerRef: {{name: primary}}, model: gpt-4o-mini}}
  - {{providerRef: {{name: backup}}, model: gpt-4o, priority: 1}}
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: solo}}
spec:
  model: solo
  retry: {{attempts: 1}}
  targets:
  - {{providerRef: {{name: primary}}, model: gpt-4o-mini}}
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: retrying}}
spec:
  model: retrying
  retry: {{attempts: 3, backoff: {{base: 10ms, max: 200ms}}}}
  targets:
  - {{providerRef: {{name: primary}}, model: gpt-4o-mini}}
  - {{providerRef: {{name: backup}}, model: gpt-4o, priority: 1}}
"#
    )
}

async fn mocks() -> (MockHandle, MockHandle) {
    let primary = MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    let backup = MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    (primary, backup)
}

#[tokio::test]
async fn passthrough_rewrites_only_the_model_and_sends_the_key() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "seed": 7, "logit_bias": {"50256": -100}});
    let resp = sluice_tests::mock::client::post_json(
        &sc.url("/v1/chat/completions"),
        &[
            ("x-request-id", "req-7"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
        &body,
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-sluice-provider"), Some("primary"));
    let seen = &primary.requests()[0];
    assert_eq!(seen.header("x-request-id"), Some("req-7"));
    assert_eq!(
        seen.header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer mock-key"));
    let sent = seen.json.clone().expect("json");
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["logit_bias"], json!({"50256": -100}));
    assert_eq!(backup.request_count(), 0);
}

#[tokio::test]
async fn stream_asks_for_usage_and_passes_chunks_through() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    let mut body = ask("chat", "tell me a story");
    body["stream"] = json!(true);
    let resp = sc.chat(body).await;
    assert_eq!(resp.status, 200);
    let (text, done, errors) = stream_text(&resp.text());
    assert!(
        !text.is_empty() && done && errors.is_empty(),
        "{}",
        resp.text()
    );
    let sent = primary.requests()[0].json.clone().expect("json");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("gen_ai_client_token_usage_count{gen_ai_token_type=\"output\",route=\"chat\",provider=\"primary\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn answers_and_streams_reuse_one_upstream_connection() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    for i in 0..6 {
        let mut body = ask("solo", "hi");
        body["stream"] = json!(i % 2 == 1);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        if i % 2 == 1 {
            let (text, done, errors) = stream_text(&resp.text());
            assert!(!text.is_empty() && done && errors.is_empty());
        }
        // A stream's connection is given back once its end has been read,
        // which may follow the client's last byte by a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(primary.request_count(), 6);
    assert_eq!(
        primary.connections(),
        1,
        "every request after the first went over the same connection"
    );
}

#[tokio::test]
async fn pre_commit_failures_fall_back_invisibly() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "300ms")).await;
    let faults = [
        Behaviour::error(ErrorKind::ServerError),
        Behaviour::error(ErrorKind::Overloaded),
        Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
            Duration::from_secs(1),
        ))),
        Behaviour::fault(Fault::Html { status: 200 }),
        Behaviour::fault(Fault::InvalidJson),
        Behaviour::fault(Fault::ErrorIn200(ErrorKind::ServerError)),
        Behaviour::fault(Fault::CloseBeforeHeaders),
        Behaviour::fault(Fault::HangBeforeHeaders),
        Behaviour::fault(Fault::StallAfter { after: 0 }),
        Behaviour::fault(Fault::MidStreamError {
            after: 0,
            kind: ErrorKind::ServerError,
        }),
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        for stream in [false, true] {
            primary.enqueue(1, fault.clone());
            let mut body = ask("chat", "hi");
            body["stream"] = json!(stream);
            let resp = sc.chat(body).await;
            assert_eq!(
                resp.status,
                200,
                "fault {i} stream {stream}: {}",
                resp.text()
            );
            assert_eq!(
                resp.header("x-sluice-provider"),
                Some("backup"),
                "fault {i} stream {stream}"
            );
            if stream {
                let (text, done, errors) = stream_text(&resp.text());
                assert!(
                    !text.is_empty() && done && errors.is_empty(),
                    "fault {i}: {}",
                    resp.text()
                );
            }
        }
    }
}

#[tokio::test]
async fn terminal_errors_carry_codes_and_hints() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    primary.enqueue(1, Behaviour::error(ErrorKind::ContextLength));
    let resp = sc.chat(ask("solo", "hi")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], "context_length_exceeded");

    // A bad request is not fallen back from, even with a backup.
    primary.enqueue(1, Behaviour::error(ErrorKind::BadRequest));
    let resp = sc.chat(ask("chat", "hi")).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "upstream_error");
    assert_eq!(backup.request_count(), 0);

    primary.enqueue(
        1,
        Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
            Duration::from_secs(7),
        ))),
    );
    let resp = sc.chat(ask("solo", "hi")).await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(resp.header("x-should-retry"), Some("false"));

    // 429 is not an outage: the target is throttled until its Retry-After,
    // so the next request does not collect another 429 from it…
    let calls = primary.request_count();
    let resp = sc.chat(ask("solo", "hi")).await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert!(resp.header("retry-after").is_some());
    assert_eq!(primary.request_count(), calls, "not sent while throttled");
    // …and a route with another target goes there meanwhile.
    let resp = sc.chat(ask("chat", "hi")).await;
    assert_eq!(resp.header("x-sluice-provider"), Some("backup"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
}

#[tokio::test]
async fn a_providers_own_rate_limit_steers_traffic_before_it_answers_429() {
    let (primary, backup) = mocks().await;
    let yaml = yaml(&primary.url(), &backup.url(), "2s").replace(
        "  models: [{name: gpt-4o-mini}]",
        "  limits: {requestsPerMinute: 3}\n  models: [{name: gpt-4o-mini}]",
    );
    let sc = Sidecar::start(&yaml).await;
    let mut providers = Vec::new();
    for _ in 0..5 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.status, 200);
        providers.push(
            resp.header("x-sluice-provider")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(
        providers,
        vec!["primary", "primary", "primary", "backup", "backup"]
    );
    assert_eq!(primary.request_count(), 3);
}

#[tokio::test]
async fn post_commit_failure_ends_the_stream_with_an_error_frame() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    for fault in [
        Fault::MidStreamError {
            after: 2,
            kind: ErrorKind::ServerError,
        },
        Fault::CutAfter { after: 2 },
        Fault::StallAfter { after: 2 },
    ] {
        primary.enqueue(1, Behaviour::fault(fault.clone()));
        let mut body = ask("chat", "tell me a long story please");
        body["stream"] = json!(true);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200);
        let (text, done, errors) = stream_text(&resp.text());
        assert!(!text.is_empty(), "{fault:?}: {}", resp.text());
        assert!(!done, "{fault:?}: no [DONE] after a failure");
        assert_eq!(errors.len(), 1, "{fault:?}: {}", resp.text());
        assert!(errors[0]["error"]["code"].as_str().is_some());
    }
    assert_eq!(
        backup.request_count(),
        0,
        "after commit there is no fallback"
    );
}

#[tokio::test]
async fn connect_refused_falls_back_fast() {
    let (_primary, backup) = mocks().await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let sc = Sidecar::start(&yaml(&dead, &backup.url(), "2s")).await;
    let started = std::time::Instant::now();
    let resp = sc.chat(ask("chat", "hi")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("class=\"connect\",fault=\"provider\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    primary.set_default(Behaviour::ok().with_chunk_delay(Duration::from_millis(200)));
    let mut body = ask("chat", "a long story please, with many many words in it");
    body["stream"] = json!(true);
    let mut s = sluice_tests::mock::client::open(
        sluice_tests::mock::client::Proto::Http1,
        http::Method::POST,
        &sc.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
    .expect("open");
    assert_eq!(s.status, 200);
    let _ = s.next_chunk().await;
    drop(s);
    assert!(
        primary.wait_for_aborts(1, Duration::from_secs(3)).await,
        "the upstream call was not cancelled"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("outcome=\"client_cancelled\""),
        "{metrics}"
    );
    assert!(!metrics.contains("class=\"client-cancelled\",fault=\"provider\""));
}

#[tokio::test]
async fn azure_deployment_url_and_api_key() {
    let azure = MockProvider::start(ProviderKind::Azure, MockConfig::default())
        .await
        .expect("mock");
    let yaml = format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: azure}}
spec:
  type: azure-openai
  endpoint: {}
  credentials: {{env: TEST_KEY}}
  azure: {{apiVersion: "2024-10-21"}}
  models: [{{name: gpt4o-prod}}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  model: chat
  # One try per target: these tests are about fallback; retries have theirs.
  retry: {{attempts: 1}}
  fallback:
    triggers: [connect, reset, timeout, rate-limited, overloaded, server-error, malformed, stream-interrupted]
  targets: [{{providerRef: {{name: azure}}, model: gpt4o-prod}}]
"#,
        azure.url()
    );
    let sc = Sidecar::start(&yaml).await;
    for stream in [false, true] {
        let mut body = ask("chat", "hi");
        body["stream"] = json!(stream);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let seen = &azure.requests()[0];
    assert_eq!(seen.path, "/openai/deployments/gpt4o-prod/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some("mock-key"));
}

#[tokio::test]
async fn client_disconnect_cancels_a_non_stream_call() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "4s")).await;
    primary.set_default(Behaviour::ok().with_latency(Duration::from_secs(5)));
    let url = sc.url("/v1/chat/completions");
    let body = ask("chat", "hi").to_string();
    let call = tokio::spawn(async move {
        sluice_tests::mock::client::send(
            http::Method::POST,
            &url,
            &[("content-type", "application/json")],
            body,
        )
        .await
    });
    assert!(primary.wait_for_requests(1, Duration::from_secs(3)).await);
    call.abort();
    assert!(
        primary.wait_for_aborts(1, Duration::from_secs(3)).await,
        "the upstream call outlived its client"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("sluice_requests_total{route=\"chat\",outcome=\"client_cancelled\"} 1"),
        "{metrics}"
    );
    assert_eq!(backup.request_count(), 0);
}

#[tokio::test]
async fn https_upstream_with_an_extra_ca_speaks_h2() {
    let tls = MockProvider::start_tls(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    let backup = MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    let config = yaml(&tls.url(), &backup.url(), "2s");
    let sc = Sidecar::start_with(&config, tls.ca_pem()).await;
    for stream in [false, true] {
        let mut body = ask("solo", "hi");
        body["stream"] = json!(stream);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(tls.requests()[0].version, http::Version::HTTP_2);
    // Without the CA the handshake fails: a connect failure, fallen back from.
    let untrusting = Sidecar::start(&config).await;
    let resp = untrusting.chat(ask("chat", "hi")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-sluice-provider"), Some("backup"));
    let metrics = untrusting
        .get(&untrusting.admin_url("/metrics"))
        .await
        .text();
    assert!(metrics.contains("class=\"connect\""), "{metrics}");
}

#[tokio::test]
async fn past_max_concurrent_a_provider_is_skipped_at_once() {
    let (primary, backup) = mocks().await;
    let config = yaml(&primary.url(), &backup.url(), "2s").replacen(
        "  models: [{name: gpt-4o-mini}]",
        "  limits: {maxConcurrent: 1, maxQueued: 0}\n  models: [{name: gpt-4o-mini}]",
        1,
    );
    let sc = Sidecar::start(&config).await;
    primary.set_default(Behaviour::ok().with_latency(Duration::from_millis(1500)));
    let url = sc.url("/v1/chat/completions");
    let slow = {
        let url = url.clone();
        tokio::spawn(async move {
            sluice_tests::mock::client::post_json(&url, &[], &ask("chat", "first")).await
        })
    };
    assert!(primary.wait_for_requests(1, Duration::from_secs(3)).await);
    let started = std::time::Instant::now();
    let resp = sc.chat(ask("chat", "second")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-sluice-provider"), Some("backup"));
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "refused at once, not queued"
    );
    let first = slow.await.expect("join").expect("response");
    assert_eq!(first.header("x-sluice-provider"), Some("primary"));
    assert_eq!(primary.request_count(), 1);
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let (primary, backup) = mocks().await;
    primary.set_default(Behaviour::ok().with_latency(Duration::from_millis(400)));
    let dir = std::env::temp_dir().join(format!("sluice-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml(&primary.url(), &backup.url(), "2s")).expect("write");
    let any = "127.0.0.1:0".parse().expect("addr");
    let running = sluice_sidecar::run::standalone(
        sluice_sidecar::run::Options::new(path, any, any),
        |k: &str| (k == "TEST_KEY").then(|| "mock-key".to_owned()),
    )
    .await
    .expect("starts");
    let url = format!("http://{}/v1/chat/completions", running.api);
    let in_flight = {
        let url = url.clone();
        tokio::spawn(async move {
            sluice_tests::mock::client::post_json(&url, &[], &ask("solo", "hi")).await
        })
    };
    assert!(primary.wait_for_requests(1, Duration::from_secs(3)).await);
    running.shutdown(Duration::from_secs(5)).await;
    let resp = in_flight
        .await
        .expect("join")
        .expect("answered before shutdown ended");
    assert_eq!(resp.status, 200);
    assert!(
        sluice_tests::mock::client::post_json(&url, &[], &ask("solo", "hi"))
            .await
            .is_err(),
        "no longer accepting"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn context_length_falls_back_only_to_a_larger_window() {
    let small = MockProvider::start(
        ProviderKind::OpenAi,
        MockConfig {
            context_window: Some(50),
            ..MockConfig::default()
        },
    )
    .await
    .expect("mock");
    let smaller = MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    let large = MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock");
    let provider = |name: &str, url: &str, window: u32| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}}}\nspec:\n  type: openai-compatible\n  endpoint: {url}/v1\n  credentials: {{env: TEST_KEY}}\n  models: [{{name: m, contextWindow: {window}}}]\n---\n"
        )
    };
    let yaml = format!(
        "{}{}{}apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: chat}}\nspec:\n  model: chat\n  targets:\n  - {{providerRef: {{name: small}}, model: m, priority: 0}}\n  - {{providerRef: {{name: smaller}}, model: m, priority: 1}}\n  - {{providerRef: {{name: large}}, model: m, priority: 2}}\n",
        // The Provider claims more than the upstream takes: the request is
        // sent, the upstream answers context-length, and fallback must skip
        // the smaller window.
        provider("small", &small.url(), 1000),
        provider("smaller", &smaller.url(), 40),
        provider("large", &large.url(), 100_000),
    );
    let sc = Sidecar::start(&yaml).await;
    let long = "word ".repeat(200);
    let resp = sc.chat(ask("chat", &long)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-sluice-provider"), Some("large"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    assert_eq!(
        smaller.request_count(),
        0,
        "a smaller window is never tried"
    );
    // A short prompt is served by the first target as usual.
    let resp = sc.chat(ask("chat", "hi")).await;
    assert_eq!(resp.header("x-sluice-provider"), Some("small"));
    // A prompt no listed window can hold beyond `large` is never sent to
    // the others at all: the capability filter skips them.
    let before = small.request_count();
    let longer = "word ".repeat(1000);
    let resp = sc.chat(ask("chat", &longer)).await;
    assert_eq!(resp.header("x-sluice-provider"), Some("large"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
    assert_eq!(small.request_count(), before);
}

#[tokio::test]
async fn retries_the_same_target_with_backoff_and_only_for_retryable_failures() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    // Two server errors, then an answer: retried on the same target.
    primary.enqueue(2, Behaviour::error(ErrorKind::ServerError));
    let resp = sc.chat(ask("retrying", "hi")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-sluice-provider"), Some("primary"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("3"));
    assert_eq!(primary.request_count(), 3);
    // A bad request is never retried (nor fallen back from).
    primary.enqueue(1, Behaviour::error(ErrorKind::BadRequest));
    let resp = sc.chat(ask("retrying", "hi")).await;
    assert_eq!(resp.status, 400);
    assert_eq!(primary.request_count(), 4);
    // Retries exhausted on the primary: the backup answers.
    primary.enqueue(3, Behaviour::error(ErrorKind::Overloaded));
    let resp = sc.chat(ask("retrying", "hi")).await;
    assert_eq!(resp.header("x-sluice-provider"), Some("backup"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("4"));
    // A Retry-After longer than the backoff allows fails over at once.
    primary.enqueue(
        1,
        Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
            Duration::from_secs(30),
        ))),
    );
    let started = std::time::Instant::now();
    let resp = sc.chat(ask("retrying", "hi")).await;
    assert_eq!(resp.header("x-sluice-provider"), Some("backup"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_a_full_outage() {
    let (primary, backup) = mocks().await;
    let sc = Sidecar::start(&yaml(&primary.url(), &backup.url(), "2s")).await;
    primary.set_default(Behaviour::error(ErrorKind::ServerError));
    backup.set_default(Behaviour::error(ErrorKind::ServerError));
    let requests = 40;
    for _ in 0..requests {
        let resp = sc.chat(ask("retrying", "hi")).await;
        assert_eq!(resp.status, 502, "{}", resp.text());
    }
    // Without a budget: 40 requests × 3 tries on each of two targets = 240
    // calls. With budgetPercent 20 and a floor of 10, retries are at most
    // 10 + 20 % of 40 = 18; the breakers (5 failures in a row) cut the
    // rest short.
    let calls = primary.request_count() + backup.request_count();
    assert!(calls <= requests * 2 + 18, "{calls} upstream calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_the_primary_dies_and_recovers_under_load_without_client_errors() {
    let (primary, backup) = mocks().await;
    let primary = std::sync::Arc::new(primary);
    let yaml = yaml(&primary.url(), &backup.url(), "2s").replace(
        "  models: [{name: gpt-4o-mini}]",
        "  circuitBreaker: {consecutiveFailures: 3, openFor: 300ms, maxOpenFor: 300ms, halfOpenProbes: 1}\n  models: [{name: gpt-4o-mini}]",
    );
    let sc = std::sync::Arc::new(Sidecar::start(&yaml).await);
    let clients = 8;
    let per_client = 30;
    // Phases by requests done, not by time: healthy for the first 60, the
    // primary down until 150, then healthy again.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let sc = sc.clone();
        let done = done.clone();
        let primary = primary.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..per_client {
                let resp = sc.chat(ask("retrying", "hi")).await;
                statuses.push(resp.status);
                match done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 {
                    60 => primary.set_default(Behaviour::error(ErrorKind::ServerError)),
                    150 => primary.set_default(Behaviour::ok()),
                    _ => {}
                }
                // Spread the load over time so breakers open, probe and close.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.expect("client task"));
    }
    let requests = clients * per_client;
    assert_eq!(statuses.len(), requests);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "client-visible errors: {statuses:?}"
    );
    // Bounded upstream calls: one per request, plus retries within the
    // budget (floor 10 + 20 %), plus breaker probes.
    let calls = primary.request_count() + backup.request_count();
    eprintln!(
        "chaos: {requests} requests, {} primary + {} backup upstream calls",
        primary.request_count(),
        backup.request_count()
    );
    assert!(backup.request_count() > 0, "the outage was seen");
    assert!(
        calls <= requests + 10 + requests / 5 + 20,
        "{calls} upstream calls for {requests} requests"
    );
    // Recovered: the primary serves again.
    let resp = sc.chat(ask("retrying", "hi")).await;
    let resp = if resp.header("x-sluice-provider") == Some("primary") {
        resp
    } else {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sc.chat(ask("retrying", "hi")).await
    };
    assert_eq!(resp.header("x-sluice-provider"), Some("primary"));
}
