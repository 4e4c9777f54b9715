//! The three translating adapters through the `Adapter` trait, as the
//! attempt stage reaches them, and stream decoding under arbitrary splits.

use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use sluice_crds::{FailureClass, ProviderType};
use sluice_sidecar::openai::ChatRequest;
use sluice_sidecar::provider::bedrock::eventstream::Frame;
use sluice_sidecar::provider::{StreamEvent, adapter};

use crate::golden;

fn hello() -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "chat", "messages": [{"role": "user", "content": "hello"}]
    }))
    .expect("request")
}

#[test]
fn every_translating_type_dispatches_to_its_adapter() {
    let cases = [
        (
            ProviderType::Anthropic,
            "https://api.anthropic.com",
            "/v1/messages",
            "x-api-key",
        ),
        (
            ProviderType::Gemini,
            "https://generativelanguage.googleapis.com",
            ":generateContent",
            "x-goog-api-key",
        ),
        (ProviderType::Bedrock, "", "/converse", "authorization"),
    ];
    for (kind, base, path, key_header) in cases {
        let mut ep = golden::endpoint(kind, base, "AKID:SECRET");
        ep.region = Some("eu-west-1".into());
        let a = adapter(kind);
        let up = a
            .build_chat(&ep, &hello(), "model-x", false)
            .expect("builds");
        assert!(up.url.ends_with(path), "{kind}: {}", up.url);
        assert!(up.headers.contains_key(key_header), "{kind}");
        assert!(up.headers[key_header].is_sensitive(), "{kind}");
        let f = a.classify(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), b"");
        assert_eq!(f.class, FailureClass::RateLimited, "{kind}");
        let f = a.classify(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"");
        assert_eq!(f.class, FailureClass::Overloaded, "{kind}");
        let f = a
            .parse_chat(StatusCode::OK, &HeaderMap::new(), b"<html>")
            .expect_err("malformed");
        assert_eq!(f.class, FailureClass::Malformed, "{kind}");
        let mut d = a.stream_decoder(&golden::ctx());
        let ev = d.finish();
        assert!(
            matches!(ev.last(), Some(Err(f)) if f.class == FailureClass::StreamInterrupted),
            "{kind}: an empty stream is interrupted"
        );
    }
}

#[test]
fn trait_parse_chat_reads_real_bodies() {
    let body = golden::read("anthropic/response_text.in.json");
    let r = adapter(ProviderType::Anthropic)
        .parse_chat(StatusCode::OK, &HeaderMap::new(), body.as_bytes())
        .expect("parses");
    assert_eq!(r.usage.map(|u| u.cached_tokens()), Some(2000));
    let body = golden::read("gemini/response_function_call.in.json");
    let r = adapter(ProviderType::Gemini)
        .parse_chat(StatusCode::OK, &HeaderMap::new(), body.as_bytes())
        .expect("parses");
    assert_eq!(r.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    let mut h = HeaderMap::new();
    h.insert("x-amzn-requestid", "req-7".parse().expect("value"));
    let body = golden::read("bedrock/response_tool_use.in.json");
    let r = adapter(ProviderType::Bedrock)
        .parse_chat(StatusCode::OK, &h, body.as_bytes())
        .expect("parses");
    assert_eq!(r.id, "chatcmpl-req-7");
}

fn bedrock_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for (event, payload) in [
        ("messageStart", r#"{"role":"assistant"}"#),
        (
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"héllo"}}"#,
        ),
        ("messageStop", r#"{"stopReason":"end_turn"}"#),
        (
            "metadata",
            r#"{"usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5}}"#,
        ),
    ] {
        out.extend(Frame::encode(
            &[(":event-type", event), (":message-type", "event")],
            payload.as_bytes(),
        ));
    }
    out
}

proptest! {
    /// Any split of a valid stream gives the same events as no split.
    #[test]
    fn splits_never_change_the_events(cuts in proptest::collection::vec(0usize..4000, 0..16)) {
        let cases: [(ProviderType, Vec<u8>); 3] = [
            (ProviderType::Anthropic, golden::read("anthropic/stream_tool_use.sse").into_bytes()),
            (ProviderType::Gemini, golden::read("gemini/stream_text.sse").into_bytes()),
            (ProviderType::Bedrock, bedrock_stream()),
        ];
        for (kind, bytes) in cases {
            let a = adapter(kind);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let whole = golden::decode_split(a.stream_decoder(&golden::ctx()), &bytes, &[]);
            let split = golden::decode_split(a.stream_decoder(&golden::ctx()), &bytes, &cuts);
            prop_assert_eq!(&split, &whole);
            prop_assert!(matches!(whole.last(), Some(Ok(StreamEvent::Done))));
        }
    }
}

#[test]
fn a_200_that_is_not_a_stream_is_malformed() {
    for kind in [
        ProviderType::Anthropic,
        ProviderType::Gemini,
        ProviderType::Bedrock,
    ] {
        for body in [
            &b"<html><body>502 Bad Gateway</body></html>"[..],
            br#"{"error":{"code":500,"message":"x","status":"INTERNAL"}}"#,
            b"{}",
        ] {
            let events =
                golden::decode_split(adapter(kind).stream_decoder(&golden::ctx()), body, &[]);
            let last = events.last().expect("events").as_ref().expect_err("fails");
            assert_eq!(last.class, FailureClass::Malformed, "{kind}: {last:?}");
        }
    }
}

fn message_strategy() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!({"role": "system", "content": "s"})),
        Just(json!({"role": "developer", "content": [{"type": "text", "text": ""}]})),
        Just(json!({"role": "user", "content": ""})),
        Just(
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]})
        ),
        Just(
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:;base64,"}}]})
        ),
        Just(json!({"role": "user", "content": [{"type": "text"}]})),
        Just(json!({"role": "assistant", "content": null})),
        Just(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]})
        ),
        Just(
            json!({"role": "assistant", "tool_calls": [{"id": "", "type": "function", "function": {"name": "", "arguments": "nope"}}]})
        ),
        Just(json!({"role": "tool", "tool_call_id": "a", "content": "r"})),
        Just(json!({"role": "tool", "content": null})),
        "[a-z]{0,6}".prop_map(|r| json!({"role": r, "content": "x"})),
    ]
}

proptest! {
    /// No request shape makes a translator panic: it builds or refuses.
    #[test]
    fn request_translation_never_panics(
        messages in proptest::collection::vec(message_strategy(), 0..8),
        choice in prop_oneof![Just(serde_json::json!("auto")), Just(serde_json::json!("none")), Just(serde_json::json!("required")), Just(serde_json::json!({"type": "function"})), Just(serde_json::json!(3))],
        n in 0u32..3,
        stream in any::<bool>(),
    ) {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": messages, "n": n, "tool_choice": choice,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_schema"},
        })).expect("request");
        for kind in [ProviderType::Anthropic, ProviderType::Gemini, ProviderType::Bedrock] {
            let mut ep = golden::endpoint(kind, "https://x.example", "AK:SK");
            ep.region = Some("us-west-2".into());
            let _ = adapter(kind).build_chat(&ep, &req, "model", stream);
        }
    }
}
