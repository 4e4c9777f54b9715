//! The Anthropic Messages mock over loopback: the message object, the full
//! SSE event sequence frame by frame (text and tool use), `event: error`
//! mid-stream, auth and version headers, every error type with its status,
//! and the rate-limit headers.

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use sluice_tests::mock::client::{self, ExampleRequest, SseEvent};
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind, RateLimit,
    token_count,
};

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound")
}

async fn start() -> MockHandle {
    MockProvider::start(ProviderKind::Anthropic, MockConfig::default())
        .await
        .expect("mock starts")
}

const HEADERS: [(&str, &str); 2] = [
    ("x-api-key", "mock-key"),
    ("anthropic-version", "2023-06-01"),
];

async fn messages(mock: &MockHandle, body: Value) -> client::Response {
    client::post_json(&format!("{}/v1/messages", mock.url()), &HEADERS, &body)
        .await
        .expect("response")
}

fn body(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
           "system": "Be brief.",
           "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]})
}

#[tokio::test]
async fn message_non_stream() {
    bounded(async {
        let mock = start().await;
        let r = messages(&mock, body(false)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.header("request-id")
                .expect("request-id")
                .starts_with("req_")
        );
        let reset = r
            .header("anthropic-ratelimit-requests-reset")
            .expect("reset");
        chrono::DateTime::parse_from_rfc3339(reset).expect("RFC 3339");
        let v = r.json();
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert!(v["id"].as_str().expect("id").starts_with("msg_"));
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v["stop_sequence"].is_null());
        let text = v["content"][0]["text"].as_str().expect("text");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(
            text,
            "Mock reply from claude-sonnet-4-5: the last user message had 5 characters."
        );
        // "Be brief.\nhello" = 15 characters: 4 tokens.
        assert_eq!(v["usage"]["input_tokens"], 4);
        assert_eq!(v["usage"]["output_tokens"], token_count(text));
        assert_eq!(v["usage"]["cache_read_input_tokens"], 0);
        assert_eq!(v["usage"]["cache_creation_input_tokens"], 0);
    })
    .await;
}

#[tokio::test]
async fn stream_event_sequence_frame_by_frame() {
    bounded(async {
        let mock = start().await;
        let r = messages(&mock, body(true)).await;
        assert_eq!(
            r.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        let evs = client::sse_events(&r.text());
        let names: Vec<&str> = evs
            .iter()
            .map(|e| e.event.as_deref().expect("named"))
            .collect();
        let n = names.len();
        assert_eq!(
            &names[..3],
            ["message_start", "content_block_start", "ping"]
        );
        assert!(names[3..n - 3].iter().all(|e| *e == "content_block_delta"));
        assert_eq!(
            &names[n - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        for e in &evs {
            assert_eq!(
                e.json()["type"],
                e.event.as_deref().expect("named"),
                "data.type = event"
            );
        }
        let start = evs[0].json();
        assert_eq!(start["message"]["content"], json!([]));
        assert!(start["message"]["stop_reason"].is_null());
        assert_eq!(start["message"]["usage"]["input_tokens"], 4);
        assert_eq!(
            evs[1].json()["content_block"],
            json!({"type": "text", "text": ""})
        );
        let text: String = evs[3..n - 3]
            .iter()
            .map(|e| {
                let d = e.json()["delta"].clone();
                assert_eq!(d["type"], "text_delta");
                d["text"].as_str().expect("text").to_owned()
            })
            .collect();
        assert_eq!(
            text,
            "Mock reply from claude-sonnet-4-5: the last user message had 5 characters."
        );
        let delta = evs[n - 2].json();
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], token_count(&text));
    })
    .await;
}

#[tokio::test]
async fn tool_use_non_stream_and_stream() {
    bounded(async {
        let mock = start().await;
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let msgs = json!([{"role": "user", "content": "weather?"}]);
        let r = messages(
            &mock,
            json!({"model": "c", "max_tokens": 100, "tools": tools, "messages": msgs}),
        )
        .await;
        let v = r.json();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][0]["type"], "tool_use");
        assert_eq!(v["content"][0]["name"], "get_weather");
        assert!(v["content"][0]["id"].as_str().expect("id").starts_with("toolu_"));
        assert_eq!(v["content"][0]["input"], json!({"last_user_chars": 8}));

        let r = messages(
            &mock,
            json!({"model": "c", "max_tokens": 100, "tools": tools, "messages": msgs, "stream": true}),
        )
        .await;
        let evs = client::sse_events(&r.text());
        let block = evs[1].json();
        assert_eq!(block["content_block"]["type"], "tool_use");
        assert_eq!(block["content_block"]["input"], json!({}));
        let partial: String = evs
            .iter()
            .filter(|e| e.event.as_deref() == Some("content_block_delta"))
            .map(|e| {
                let d = e.json()["delta"].clone();
                assert_eq!(d["type"], "input_json_delta");
                d["partial_json"].as_str().expect("partial").to_owned()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&partial).expect("json"),
            json!({"last_user_chars": 8})
        );
        let delta = evs.iter().find(|e| e.event.as_deref() == Some("message_delta")).expect("md");
        assert_eq!(delta.json()["delta"]["stop_reason"], "tool_use");

        let msgs = json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [v["content"][0].clone()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": v["content"][0]["id"], "content": "sunny"}]},
        ]);
        let r = messages(&mock, json!({"model": "c", "max_tokens": 100, "tools": tools, "messages": msgs})).await;
        assert_eq!(r.json()["stop_reason"], "end_turn");
    })
    .await;
}

#[tokio::test]
async fn max_tokens_refusal_and_cache_usage() {
    bounded(async {
        let mock = start().await;
        let r = messages(
            &mock,
            json!({"model": "c", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(r.json()["stop_reason"], "max_tokens");
        assert_eq!(r.json()["usage"]["output_tokens"], 2);

        mock.enqueue(1, Fault::Refusal);
        let r = messages(&mock, body(false)).await;
        assert_eq!(r.json()["stop_reason"], "refusal");

        // 16 + 1 + 15 = 32 characters: 8 tokens, half read from cache.
        let r = messages(
            &mock,
            json!({"model": "c", "max_tokens": 100,
                   "system": [{"type": "text", "text": "sixteen chars!!!", "cache_control": {"type": "ephemeral"}}],
                   "messages": [{"role": "user", "content": "fifteen chars!!"}]}),
        )
        .await;
        let u = &r.json()["usage"];
        assert_eq!(u["cache_read_input_tokens"], 4);
        assert_eq!(u["input_tokens"], 4);
    })
    .await;
}

#[tokio::test]
async fn auth_version_and_validation() {
    bounded(async {
        let mock = start().await;
        let url = format!("{}/v1/messages", mock.url());
        let r = client::post_json(&url, &[("anthropic-version", "2023-06-01")], &body(false))
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["type"], "error");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        let r = client::post_json(
            &url,
            &[
                ("x-api-key", "sk-ant-wrong"),
                ("anthropic-version", "2023-06-01"),
            ],
            &body(false),
        )
        .await
        .expect("r");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"]["message"], "invalid x-api-key");
        let r = client::post_json(&url, &[("x-api-key", "mock-key")], &body(false))
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            r.json()["error"]["message"],
            "anthropic-version: header is required"
        );
        let r = messages(&mock, json!({"model": "c", "messages": []})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["message"], "max_tokens: Field required");
        let rec = &mock.requests()[1];
        assert_eq!(rec.header("x-api-key"), Some("sk-ant-wrong"));
        // Current SDKs send the key as a bearer token.
        let bearer = [
            ("authorization", "Bearer mock-key"),
            ("anthropic-version", "2023-06-01"),
        ];
        let r = client::post_json(&url, &bearer, &body(false))
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::OK);
        let wrong = [
            ("authorization", "Bearer nope"),
            ("anthropic-version", "2023-06-01"),
        ];
        let r = client::post_json(&url, &wrong, &body(false))
            .await
            .expect("r");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn every_error_kind_has_its_type_and_status() {
    bounded(async {
        let mock = start().await;
        let cases = [
            (ErrorKind::BadRequest, 400, "invalid_request_error"),
            (ErrorKind::Auth, 401, "authentication_error"),
            (ErrorKind::PermissionDenied, 403, "permission_error"),
            (ErrorKind::NotFound, 404, "not_found_error"),
            (ErrorKind::ContextLength, 400, "invalid_request_error"),
            (ErrorKind::ContentFilter, 400, "invalid_request_error"),
            (ErrorKind::RequestTooLarge, 413, "request_too_large"),
            (
                ErrorKind::RateLimited(RateLimit::default()),
                429,
                "rate_limit_error",
            ),
            (ErrorKind::QuotaExhausted, 402, "billing_error"),
            (ErrorKind::ServerError, 500, "api_error"),
            (ErrorKind::Overloaded, 529, "overloaded_error"),
            (ErrorKind::ModelNotReady, 529, "overloaded_error"),
            (ErrorKind::Timeout, 504, "timeout_error"),
        ];
        let req = ExampleRequest::chat(
            ProviderKind::Anthropic,
            &mock.url(),
            "claude-x",
            "hi",
            false,
        );
        for (kind, status, ty) in cases {
            mock.enqueue(1, Behaviour::error(kind.clone()));
            let r = req.send().await.expect("r");
            assert_eq!(r.status.as_u16(), status, "{kind:?}");
            let v = r.json();
            assert_eq!(v["type"], "error", "{kind:?}");
            assert_eq!(v["error"]["type"], ty, "{kind:?}");
            assert!(v["request_id"].as_str().is_some(), "{kind:?}");
            assert_eq!(r.header("request-id"), v["request_id"].as_str(), "{kind:?}");
        }
        mock.enqueue(1, Behaviour::error(ErrorKind::NotFound));
        assert_eq!(
            req.send().await.expect("r").json()["error"]["message"],
            "model: claude-x"
        );
        mock.enqueue(1, Behaviour::error(ErrorKind::QuotaExhausted));
        let m = req.send().await.expect("r").json()["error"]["message"].clone();
        assert!(m.as_str().expect("m").contains("credit balance is too low"));
    })
    .await;
}

#[tokio::test]
async fn rate_limit_hints() {
    bounded(async {
        let mock = start().await;
        let req = ExampleRequest::chat(ProviderKind::Anthropic, &mock.url(), "c", "hi", false);
        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
                Duration::from_secs(30),
            ))),
        );
        let before = chrono::Utc::now();
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.header("retry-after"), Some("30"));
        assert_eq!(
            r.header("anthropic-ratelimit-requests-remaining"),
            Some("0")
        );
        let reset = chrono::DateTime::parse_from_rfc3339(
            r.header("anthropic-ratelimit-requests-reset")
                .expect("reset"),
        )
        .expect("RFC 3339");
        let ahead = reset.signed_duration_since(before).num_seconds();
        assert!((28..=35).contains(&ahead), "reset {ahead}s ahead");

        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(RateLimit {
                retry_after: None,
                retry_after_raw: Some("-1".into()),
            })),
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.header("retry-after"), Some("-1"));
    })
    .await;
}

#[tokio::test]
async fn overloaded_error_event_mid_stream() {
    bounded(async {
        let mock = start().await;
        mock.enqueue(
            1,
            Fault::MidStreamError {
                after: 5,
                kind: ErrorKind::Overloaded,
            },
        );
        let r = messages(&mock, body(true)).await;
        assert_eq!(r.status, StatusCode::OK);
        let evs: Vec<SseEvent> = client::sse_events(&r.text());
        assert_eq!(evs.len(), 6);
        let last = &evs[5];
        assert_eq!(last.event.as_deref(), Some("error"));
        let v = last.json();
        assert_eq!(v["type"], "error");
        assert_eq!(
            v["error"],
            json!({"type": "overloaded_error", "message": "Overloaded"})
        );
        assert!(
            evs.iter()
                .all(|e| e.event.as_deref() != Some("message_stop"))
        );
    })
    .await;
}
