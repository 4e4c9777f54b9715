//! Anthropic adapter: golden request, response, stream and error tables.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_crds::ProviderType;
use sluice_sidecar::openai::ChatRequest;
use sluice_sidecar::provider::anthropic::{self, AnthropicStream};
use sluice_sidecar::provider::{StreamDecoder, StreamEvent};

use crate::golden::{self, CREATED, now};

fn request(name: &str) -> ChatRequest {
    serde_json::from_value(golden::read_json(&format!("anthropic/{name}.in.json")))
        .expect("request")
}

#[test]
fn request_translation() {
    for (name, stream) in [("request_full", true), ("request_minimal", false)] {
        let req = request(name);
        let ep = golden::endpoint(
            ProviderType::Anthropic,
            "https://api.anthropic.com",
            "sk-ant-test",
        );
        let up = anthropic::build_chat(&ep, &req, "claude-sonnet-4-5", stream).expect("builds");
        assert_eq!(up.headers["x-api-key"], "sk-ant-test");
        assert!(up.headers["x-api-key"].is_sensitive());
        golden::check_json(
            &format!("anthropic/{name}.out.json"),
            &golden::request_json(&up, false),
        );
    }
}

#[test]
fn base_url_with_v1_is_not_doubled() {
    let ep = golden::endpoint(ProviderType::Anthropic, "https://proxy.internal/v1/", "k");
    let up = anthropic::build_chat(&ep, &request("request_minimal"), "m", false).expect("builds");
    assert_eq!(up.url, "https://proxy.internal/v1/messages");
}

#[test]
fn unsupported_requests_are_bad_requests() {
    let cases = [
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
        json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
        json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
    ];
    for c in cases {
        let req: ChatRequest = serde_json::from_value(c.clone()).expect("request");
        let f = anthropic::to_messages_request(&req, "m", false).expect_err("refused");
        assert_eq!(f.class, sluice_crds::FailureClass::BadRequest, "{c}");
    }
}

#[test]
fn response_translation() {
    for name in [
        "response_text",
        "response_tool_use",
        "response_max_tokens",
        "response_refusal",
    ] {
        let body = golden::read(&format!("anthropic/{name}.in.json"));
        let out =
            match anthropic::parse_chat(200, &HeaderMap::new(), body.as_bytes(), CREATED, now()) {
                Ok(r) => serde_json::to_value(r).expect("serializes"),
                Err(f) => golden::failure_json(&f),
            };
        golden::check_json(&format!("anthropic/{name}.out.json"), &out);
    }
}

#[test]
fn errors_inside_a_200_are_malformed() {
    for body in [
        &b"<html>oops</html>"[..],
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        br#"{"content": 5}"#,
    ] {
        let f =
            anthropic::parse_chat(200, &HeaderMap::new(), body, CREATED, now()).expect_err("fails");
        assert_eq!(f.class, sluice_crds::FailureClass::Malformed);
    }
}

fn decoder() -> Box<dyn StreamDecoder> {
    Box::new(AnthropicStream::new(&golden::ctx()))
}

#[test]
fn stream_translation_in_any_split() {
    for name in [
        "stream_text",
        "stream_tool_use",
        "stream_error_overloaded",
        "stream_cut",
        "stream_refusal",
    ] {
        let bytes = golden::read(&format!("anthropic/{name}.sse"));
        let events = golden::decode_every_way(&decoder, bytes.as_bytes());
        golden::check(
            &format!("anthropic/{name}.out.jsonl"),
            &golden::events_text(&events),
        );
    }
}

#[test]
fn the_first_chunk_is_a_token() {
    let bytes = golden::read("anthropic/stream_tool_use.sse");
    let events = golden::decode_split(decoder(), bytes.as_bytes(), &[]);
    let first = events.first().expect("events").as_ref().expect("ok");
    assert!(first.is_token());
    assert!(matches!(events.last(), Some(Ok(StreamEvent::Done))));
}

fn headers(v: Option<&Value>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in v.and_then(Value::as_object).into_iter().flatten() {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v.as_str().expect("string")).expect("value"),
        );
    }
    h
}

/// Runs an error table: checks each row's `expect` (and `retry_ms` when
/// given) and writes the full failures to the golden file.
pub fn error_table(
    name: &str,
    classify: &dyn Fn(u16, &HeaderMap, &[u8]) -> sluice_sidecar::provider::Failure,
) {
    let rows = golden::read_json(&format!("{name}.in.json"));
    let mut out = Vec::new();
    for row in rows.as_array().expect("rows") {
        let status = row["status"].as_u64().expect("status") as u16;
        let body = match &row["body"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let f = classify(status, &headers(row.get("headers")), body.as_bytes());
        assert_eq!(
            f.class.to_string(),
            row["expect"].as_str().expect("expect"),
            "{row}"
        );
        if let Some(ms) = row.get("retry_ms") {
            assert_eq!(
                f.retry_after.map(|d| d.as_millis() as u64),
                ms.as_u64(),
                "{row}"
            );
        }
        out.push(golden::failure_json(&f));
    }
    golden::check_json(&format!("{name}.out.json"), &Value::Array(out));
}

#[test]
fn error_classification() {
    error_table("anthropic/errors", &|s, h, b| {
        anthropic::classify(s, h, b, now())
    });
}

proptest! {
    #[test]
    fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut d = AnthropicStream::new(&golden::ctx());
        for c in &chunks {
            let _ = d.feed(c);
        }
        let _ = d.finish();
    }

    #[test]
    fn decoder_never_panics_on_sse_shaped_input(lines in proptest::collection::vec(
        prop_oneof![
            Just("event: message_start\n".to_owned()),
            Just("data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n".to_owned()),
            Just("data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":7}}\n".to_owned()),
            Just("data: {\"type\":\"content_block_start\",\"index\":-1,\"content_block\":{\"type\":\"tool_use\"}}\n".to_owned()),
            Just("\n".to_owned()),
            "[ -~]{0,40}\n",
        ], 0..30)) {
        let mut d = AnthropicStream::new(&golden::ctx());
        let _ = d.feed(lines.concat().as_bytes());
        let _ = d.finish();
    }

    #[test]
    fn classify_never_panics(status in 0u16..1000, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = anthropic::classify(status, &HeaderMap::new(), &body, now());
    }
}

#[test]
fn a_configured_version_header_wins() {
    let mut ep = golden::endpoint(ProviderType::Anthropic, "https://api.anthropic.com", "k");
    ep.headers.push((
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static("2099-01-01"),
    ));
    let up = anthropic::build_chat(&ep, &request("request_minimal"), "m", false).expect("builds");
    assert_eq!(up.headers["anthropic-version"], "2099-01-01");
}
