//! The Anthropic-compatible ingress: golden request, response and stream
//! translations, error shapes, and a round trip through the Anthropic
//! adapter.

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_sidecar::messages::{self, MessagesStream};
use sluice_sidecar::openai::{ChatChunk, ChatResponse, ErrorBody, ErrorObject};
use sluice_sidecar::provider::anthropic::AnthropicStream;
use sluice_sidecar::provider::sse::SseParser;
use sluice_sidecar::provider::{StreamDecoder, StreamEvent};

use crate::golden;

#[test]
fn request_translation() {
    let body = golden::read("messages/request_full.in.json");
    let req = messages::parse_request(body.as_bytes()).expect("translates");
    golden::check_json(
        "messages/request_full.out.json",
        &serde_json::to_value(&req).expect("serializes"),
    );
}

#[test]
fn refused_requests_say_why_in_anthropic_shape() {
    let cases = [
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": []}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}),
    ];
    for c in cases {
        let err = messages::parse_request(c.to_string().as_bytes()).expect_err("refused");
        assert_eq!(err.status, 400, "{c}");
        let body = err.body();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let err = messages::parse_request(b"{not json").expect_err("refused");
    assert_eq!(err.status, 400);
}

#[test]
fn response_translation() {
    for name in ["response_tool_use", "response_length"] {
        let resp: ChatResponse =
            serde_json::from_value(golden::read_json(&format!("messages/{name}.in.json")))
                .expect("response");
        let out = messages::from_chat_response(&resp);
        golden::check_json(
            &format!("messages/{name}.out.json"),
            &serde_json::to_value(out).expect("serializes"),
        );
    }
}

#[test]
fn stream_translation() {
    let mut enc = MessagesStream::new("msg_1", "chat", 100);
    let mut out = enc.start();
    for line in golden::read("messages/stream_tool_use.in.jsonl").lines() {
        let chunk: ChatChunk = serde_json::from_str(line).expect("chunk");
        out.push_str(&enc.on_chunk(&chunk));
    }
    out.push_str(&enc.finish());
    assert_eq!(enc.finish(), "", "finish is idempotent");
    check_well_formed(&out);
    golden::check("messages/stream_tool_use.out.sse", &out);
}

/// Every block opened is closed, in order, and the stream ends with
/// `message_delta` then `message_stop`.
fn check_well_formed(sse: &str) {
    let mut p = SseParser::new(1 << 20);
    let mut events: Vec<Value> = p
        .feed(sse.as_bytes())
        .into_iter()
        .map(|e| serde_json::from_str(&e.expect("event").data).expect("json"))
        .collect();
    events.extend(
        p.finish()
            .into_iter()
            .map(|e| serde_json::from_str(&e.expect("event").data).expect("json")),
    );
    assert_eq!(events[0]["type"], "message_start");
    let mut open: Option<u64> = None;
    let mut next = 0;
    for e in &events[1..events.len() - 2] {
        match e["type"].as_str().expect("type") {
            "content_block_start" => {
                assert_eq!(open, None, "block opened inside a block");
                assert_eq!(e["index"], next);
                open = e["index"].as_u64();
                next += 1;
            }
            "content_block_delta" => assert_eq!(e["index"].as_u64(), open),
            "content_block_stop" => {
                assert_eq!(e["index"].as_u64(), open);
                open = None;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(open, None);
    assert_eq!(events[events.len() - 2]["type"], "message_delta");
    assert_eq!(events[events.len() - 1]["type"], "message_stop");
}

/// Anthropic upstream SSE → OpenAI events → Anthropic SSE again: the text,
/// tool calls, stop reason and usage survive.
#[test]
fn round_trip_through_the_anthropic_adapter() {
    let upstream = golden::read("anthropic/stream_tool_use.sse");
    let mut dec = AnthropicStream::new(&golden::ctx());
    let mut events = dec.feed(upstream.as_bytes());
    events.extend(dec.finish());
    let mut enc = MessagesStream::new("msg_x", "chat", 0);
    let mut out = enc.start();
    for e in events {
        match e.expect("ok") {
            StreamEvent::Chunk { chunk, .. } => out.push_str(&enc.on_chunk(&chunk)),
            StreamEvent::Pass(p) => out.push_str(&enc.on_chunk(&p.parse().expect("parses"))),
            StreamEvent::Usage(u) => enc.on_usage(u),
            StreamEvent::Done => out.push_str(&enc.finish()),
        }
    }
    check_well_formed(&out);
    assert!(out.contains(r#""text":"Checking.""#), "{out}");
    assert!(out.contains(r#""name":"get_weather""#));
    assert!(out.contains(r#""partial_json":"{\"city\": \"Par""#));
    assert!(out.contains(r#""stop_reason":"tool_use""#));
    assert!(out.contains(r#""input_tokens":472"#));
    assert!(out.contains(r#""output_tokens":89"#));
}

#[test]
fn an_error_ends_the_stream_without_message_stop() {
    let mut enc = MessagesStream::new("msg_1", "chat", 1);
    let _ = enc.start();
    let out = enc.error(529, "upstream overloaded");
    assert_eq!(
        out,
        "event: error\ndata: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"overloaded_error\"},\"type\":\"error\"}\n\n"
    );
    assert_eq!(enc.finish(), "");
}

#[test]
fn errors_in_anthropic_shape() {
    let table = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ];
    for (status, kind) in table {
        assert_eq!(messages::error_type(status), kind, "{status}");
    }
    let openai = ErrorBody {
        error: ErrorObject {
            message: "no route serves model x".into(),
            kind: "invalid_request_error".into(),
            param: Some("model".into()),
            code: Some("model_not_found".into()),
        },
    };
    assert_eq!(
        messages::from_openai_error(404, &openai),
        json!({"type": "error", "error": {"type": "not_found_error", "message": "no route serves model x"}})
    );
}

proptest! {
    #[test]
    fn request_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = messages::parse_request(&body);
    }

    #[test]
    fn request_parsing_never_panics_on_json(blocks in proptest::collection::vec(prop_oneof![
        Just(json!({"type": "text"})),
        Just(json!({"type": "image", "source": null})),
        Just(json!({"type": "tool_result"})),
        Just(json!({"type": "tool_use", "input": 5})),
        Just(json!({"type": 7})),
        Just(json!("str")),
    ], 0..6), role in prop_oneof![Just("user"), Just("assistant"), Just("x")]) {
        let body = json!({"model": "m", "max_tokens": 1, "messages": [{"role": role, "content": blocks}]});
        let _ = messages::parse_request(body.to_string().as_bytes());
    }

    #[test]
    fn any_chunk_sequence_gives_a_well_formed_stream(steps in proptest::collection::vec((0u8..4, 0u32..3, any::<bool>()), 0..20)) {
        let mut enc = MessagesStream::new("m", "chat", 0);
        let mut out = enc.start();
        for (kind, call, with_id) in steps {
            let delta = match kind {
                0 => json!({"content": "t"}),
                1 => json!({"tool_calls": [{"index": call, "id": with_id.then_some(format!("c{call}")), "function": {"name": "f", "arguments": "{"}}]}),
                2 => json!({"tool_calls": [{"index": call, "function": {"arguments": "}"}}]}),
                _ => json!({"refusal": ""}),
            };
            let chunk: ChatChunk = serde_json::from_value(json!({"id": "x", "created": 0, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})).expect("chunk");
            out.push_str(&enc.on_chunk(&chunk));
        }
        out.push_str(&enc.finish());
        check_well_formed(&out);
    }
}

#[test]
fn parse_errors_do_not_echo_long_values() {
    let body = json!({"model": "m", "max_tokens": "please summarise my confidential medical history in detail", "messages": []});
    let err = messages::parse_request(body.to_string().as_bytes()).expect_err("refused");
    assert!(!err.message.contains("medical"), "{}", err.message);
    assert!(err.message.contains("invalid type"), "{}", err.message);
}
