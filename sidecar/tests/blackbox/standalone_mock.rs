//! Standalone YAML with `type: mock` providers: answers, streams,
//! fallback, errors, reload, metrics and /debug/config.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Sidecar, ask, stream_text};

const FIXTURE: &str = include_str!("../fixtures/quickstart.yaml");

#[tokio::test]
async fn non_stream_answer_with_route_headers() {
    let sc = Sidecar::start(FIXTURE).await;
    let resp = sluice_tests::mock::client::post_json(
        &sc.url("/v1/chat/completions"),
        &[("x-request-id", "req-42")],
        &ask("chat", "hi"),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from steady.");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["total_tokens"].as_u64().is_some());
    assert_eq!(resp.header("x-request-id"), Some("req-42"));
    assert_eq!(resp.header("x-sluice-route"), Some("chat"));
    assert_eq!(resp.header("x-sluice-provider"), Some("steady"));
    assert_eq!(resp.header("x-sluice-model"), Some("mock-small"));
    assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
    // An alias reaches the same route; a fresh request id is generated.
    let resp = sc.chat(ask("gpt-4o-mini", "hi")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id").map(str::len), Some(32));
}

#[tokio::test]
async fn stream_answer_chunk_by_chunk() {
    let sc = Sidecar::start(FIXTURE).await;
    let mut body = ask("chat", "hi");
    body["stream"] = json!(true);
    let resp = sc.chat(body.clone()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let (text, done, errors) = stream_text(&resp.text());
    assert_eq!(text, "Hello from steady.");
    assert!(done && errors.is_empty());
    // Usage was asked upstream but not by this client: not forwarded.
    assert!(!resp.text().contains("\"usage\":{"), "{}", resp.text());
    body["stream_options"] = json!({"include_usage": true});
    let resp = sc.chat(body).await;
    assert!(resp.text().contains("\"usage\":{"), "{}", resp.text());
}

#[tokio::test]
async fn failing_target_falls_back_to_the_next() {
    let sc = Sidecar::start(FIXTURE).await;
    for stream in [false, true] {
        let mut body = ask("resilient", "hi");
        body["stream"] = json!(stream);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-sluice-provider"), Some("steady"));
        assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    }
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(r#"sluice_fallbacks_total{route="resilient",from="flaky",to="steady",reason="overloaded"} 2"#),
        "{metrics}"
    );
    // With nothing to fall back to, the last failure is the answer.
    let resp = sc.chat(ask("doomed", "hi")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"]["code"], "overloaded");
    assert_eq!(resp.header("x-should-retry"), Some("false"));
}

#[tokio::test]
async fn bad_input_gets_openai_error_objects() {
    let sc = Sidecar::start(FIXTURE).await;
    let cases: Vec<(&'static [u8], u16, &str, Option<&str>)> = vec![
        (b"{not json", 400, "invalid_json", None),
        (b"\xff\xfe\x00", 400, "invalid_json", None),
        (
            br#"{"model":"chat","messages":"hi"}"#,
            400,
            "invalid_parameter",
            Some("messages"),
        ),
        (
            br#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":"many"}"#,
            400,
            "invalid_parameter",
            Some("max_tokens"),
        ),
        (
            br#"{"model":"chat"}"#,
            400,
            "invalid_parameter",
            Some("messages"),
        ),
        (
            br#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#,
            404,
            "model_not_found",
            Some("model"),
        ),
    ];
    for (body, status, code, param) in cases {
        let resp = sc.post_raw("/v1/chat/completions", body).await;
        assert_eq!(resp.status, status, "{}", String::from_utf8_lossy(body));
        let e = &resp.json()["error"];
        assert_eq!(e["code"], code, "{}", resp.text());
        assert_eq!(e["param"].as_str(), param, "{}", resp.text());
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(e["type"].as_str().is_some());
        assert_eq!(resp.header("x-should-retry"), Some("false"));
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let resp = sluice_tests::mock::client::send(
        http::Method::POST,
        &sc.url("/v1/chat/completions"),
        &[],
        deep,
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], "invalid_json");
    let huge = vec![b' '; 9 << 20];
    let resp = sluice_tests::mock::client::send(
        http::Method::POST,
        &sc.url("/v1/chat/completions"),
        &[],
        huge,
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"]["code"], "request_too_large");
    let resp = sc.get(&sc.url("/v1/chat/completions")).await;
    assert_eq!(resp.status, 405);
}

#[tokio::test]
async fn models_and_embeddings() {
    let sc = Sidecar::start(FIXTURE).await;
    let resp = sc.get(&sc.url("/v1/models")).await;
    assert_eq!(resp.status, 200);
    let ids: Vec<String> = resp.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids, ["chat", "doomed", "gpt-4o-mini", "resilient"]);
    let resp = sluice_tests::mock::client::post_json(
        &sc.url("/v1/embeddings"),
        &[],
        &json!({"model": "chat", "input": ["a", "b"]}),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["data"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn reload_applies_good_edits_and_keeps_serving_through_bad_ones() {
    let sc = Sidecar::start(FIXTURE).await;
    let added = format!(
        "{FIXTURE}---\napiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: extra}}\nspec:\n  model: extra\n  targets: [{{providerRef: {{name: steady}}, model: mock-small}}]\n"
    );
    std::fs::write(&sc.path, &added).expect("write");
    let mut ok = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if sc.chat(ask("extra", "hi")).await.status == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "the new route was never served");
    // A bad edit: unknown provider type and a dangling reference.
    std::fs::write(
        &sc.path,
        added.replace("type: mock\n  mock: {failWith: 503}", "type: nope"),
    )
    .expect("write");
    // Give the watcher time to see (and refuse) it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sc.chat(ask("extra", "hi")).await.status, 200);
    assert_eq!(sc.chat(ask("resilient", "hi")).await.status, 200);
    // An emptied file (an in-place rewrite, seen between truncation and
    // write) is refused too: the routes keep serving.
    std::fs::write(&sc.path, "").expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sc.chat(ask("extra", "hi")).await.status, 200);
    let ready = sc.get(&sc.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
}

#[tokio::test]
async fn admin_endpoints_and_redaction() {
    let yaml = format!(
        "{FIXTURE}---\napiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {{name: openai}}\nspec:\n  type: openai\n  credentials: {{env: SECRET_KEY}}\n  headers: {{x-extra: also-secret}}\n  models: [{{name: gpt-4o}}]\n"
    );
    let sc = Sidecar::start(&yaml).await;
    assert_eq!(sc.get(&sc.admin_url("/healthz")).await.status, 200);
    assert_eq!(sc.get(&sc.admin_url("/readyz")).await.status, 200);
    let debug = sc.get(&sc.admin_url("/debug/config")).await;
    assert_eq!(debug.status, 200);
    let text = debug.text();
    assert!(text.contains("\"openai\""), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains("sk-do-not-leak"), "{text}");
    assert!(!text.contains("also-secret"), "{text}");
    let _ = sc.chat(ask("chat", "hi")).await;
    for i in 0..50 {
        let _ = sc.chat(ask(&format!("bogus-{i}"), "hi")).await;
    }
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("gen_ai_client_operation_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "gen_ai_client_token_usage_count{gen_ai_token_type=\"output\",route=\"chat\""
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_requests_total{route=\"chat\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_requests_total{route=\"unknown\",outcome=\"error\"} 50"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("bogus"),
        "client model names must not become labels"
    );
    assert!(!metrics.contains("sk-do-not-leak"));
}

#[tokio::test]
async fn catch_all_response_answers_when_every_target_failed() {
    let yaml = format!(
        "{FIXTURE}---\napiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: fixed}}\nspec:\n  model: fixed\n  fallback:\n    catchAll: {{response: \"We are busy, try later.\"}}\n  targets: [{{providerRef: {{name: flaky}}, model: mock-large}}]\n"
    );
    let sc = Sidecar::start(&yaml).await;
    let resp = sc.chat(ask("fixed", "hi")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-sluice-catch-all"), Some("true"));
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        "We are busy, try later."
    );
    let mut body = ask("fixed", "hi");
    body["stream"] = json!(true);
    let resp = sc.chat(body).await;
    let (text, done, errors) = stream_text(&resp.text());
    assert_eq!(text, "We are busy, try later.");
    assert!(done && errors.is_empty());
    let resp = sluice_tests::mock::client::post_json(
        &sc.url("/v1/messages"),
        &[],
        &json!({"model": "fixed", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .expect("response");
    assert_eq!(resp.json()["content"][0]["text"], "We are busy, try later.");
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("class=\"overloaded\",fault=\"provider\",route=\"fixed\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn h2c_clients_are_served_too() {
    let sc = Sidecar::start(FIXTURE).await;
    let mut body = ask("chat", "hi");
    body["stream"] = json!(true);
    let s = sluice_tests::mock::client::open(
        sluice_tests::mock::client::Proto::H2c,
        http::Method::POST,
        &sc.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
    .expect("h2c");
    assert_eq!(s.status, 200);
    let (bytes, err) = s.read_all().await;
    assert!(err.is_none());
    let (text, done, _) = stream_text(&String::from_utf8_lossy(&bytes));
    assert_eq!(text, "Hello from steady.");
    assert!(done);
}

#[tokio::test]
async fn not_ready_until_a_config_is_loaded() {
    use sluice_sidecar::{app::App, attempt::Bounds, config::ConfigHandle, egress::Egress};
    use sluice_sidecar::{ingress::Limits, server};
    use std::sync::Arc;
    let handle = ConfigHandle::default();
    let app = Arc::new(App::new(
        handle.clone(),
        Egress::new(None).expect("egress"),
        Limits::default(),
        Bounds {
            max_response: 1 << 20,
            max_line: 1 << 16,
        },
        Arc::new(sluice_sidecar::metering::Totals::default()),
    ));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (api_addr, admin_addr) = (api.local_addr().expect("a"), admin.local_addr().expect("a"));
    let grace = Duration::from_secs(1);
    let t1 = tokio::spawn(server::serve(
        api,
        app.clone(),
        server::Role::Api,
        stop.clone(),
        grace,
    ));
    let t2 = tokio::spawn(server::serve(admin, app, server::Role::Admin, stop, grace));
    let get = |url: String| async move {
        sluice_tests::mock::client::send(http::Method::GET, &url, &[], bytes::Bytes::new())
            .await
            .expect("response")
    };
    assert_eq!(
        get(format!("http://{admin_addr}/healthz")).await.status,
        200
    );
    assert_eq!(get(format!("http://{admin_addr}/readyz")).await.status, 503);
    let resp = sluice_tests::mock::client::post_json(
        &format!("http://{api_addr}/v1/chat/completions"),
        &[],
        &ask("chat", "hi"),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-should-retry"), Some("false"));
    let config =
        sluice_sidecar::standalone::load(&sluice_crds::load::Admission::new(), FIXTURE, &|_| None)
            .expect("loads");
    handle.set(config);
    assert_eq!(get(format!("http://{admin_addr}/readyz")).await.status, 200);
    t1.abort();
    t2.abort();
}

#[tokio::test]
async fn a_failing_target_trips_its_breaker_and_is_skipped() {
    let sc = Sidecar::start(FIXTURE).await;
    // consecutiveFailures defaults to 5: five requests each try flaky first.
    for _ in 0..5 {
        let resp = sc.chat(ask("resilient", "hi")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    }
    // Open: flaky is skipped, steady answers at the first attempt.
    for _ in 0..3 {
        let resp = sc.chat(ask("resilient", "hi")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-sluice-provider"), Some("steady"));
        assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
    }
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(r#"sluice_breaker_open{provider="flaky",model="mock-large"} 1"#),
        "{metrics}"
    );
    // A route whose only target is open still tries it (the last option is
    // never ejected) and answers its failure.
    let resp = sc.chat(ask("doomed", "hi")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
}
