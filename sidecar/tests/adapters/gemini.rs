//! Gemini adapter: golden request, response, stream and error tables.

use http::HeaderMap;
use proptest::prelude::*;
use sluice_crds::{FailureClass, ProviderType};
use sluice_sidecar::openai::ChatRequest;
use sluice_sidecar::provider::gemini::{self, GeminiStream};
use sluice_sidecar::provider::{Adapter, StreamDecoder, StreamEvent};

use crate::golden::{self, CREATED, now};

#[test]
fn request_translation() {
    let req: ChatRequest =
        serde_json::from_value(golden::read_json("gemini/request_full.in.json")).expect("request");
    let ep = golden::endpoint(
        ProviderType::Gemini,
        "https://generativelanguage.googleapis.com",
        "AIza-test",
    );
    let up = gemini::build_chat(&ep, &req, "gemini-2.5-flash", false).expect("builds");
    assert_eq!(up.headers["x-goog-api-key"], "AIza-test");
    golden::check_json(
        "gemini/request_full.out.json",
        &golden::request_json(&up, false),
    );
    let f = gemini::build_chat(&ep, &req, "gemini-2.5-flash", true).expect_err("n > 1 streams");
    assert_eq!(f.class, FailureClass::BadRequest);
    let mut req = req;
    req.n = None;
    let up = gemini::build_chat(&ep, &req, "models/gemini-2.5-flash", true).expect("builds");
    assert_eq!(
        up.url,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
}

#[test]
fn a_tool_message_for_an_unknown_call_is_refused() {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]
    }))
    .expect("request");
    let f = gemini::to_generate_request(&req).expect_err("refused");
    assert_eq!(f.class, FailureClass::BadRequest);
}

#[test]
fn response_translation() {
    for name in [
        "response_text",
        "response_function_call",
        "response_max_tokens",
        "response_prompt_blocked",
        "response_safety",
        "response_recitation",
    ] {
        let body = golden::read(&format!("gemini/{name}.in.json"));
        let out = match gemini::parse_chat(
            200,
            &HeaderMap::new(),
            body.as_bytes(),
            "gemini",
            CREATED,
            now(),
        ) {
            Ok(r) => serde_json::to_value(r).expect("serializes"),
            Err(f) => golden::failure_json(&f),
        };
        golden::check_json(&format!("gemini/{name}.out.json"), &out);
    }
}

#[test]
fn errors_inside_a_200_are_malformed() {
    for body in [
        &b"<html/>"[..],
        br#"{"error": {"code": 500, "status": "INTERNAL"}}"#,
        b"{}",
    ] {
        let f = gemini::Gemini
            .parse_chat(http::StatusCode::OK, &HeaderMap::new(), body)
            .expect_err("fails");
        assert_eq!(
            f.class,
            FailureClass::Malformed,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

fn decoder() -> Box<dyn StreamDecoder> {
    Box::new(GeminiStream::new(&golden::ctx()))
}

#[test]
fn stream_translation_in_any_split() {
    for name in [
        "stream_text",
        "stream_function_call",
        "stream_safety",
        "stream_error",
        "stream_cut",
    ] {
        let bytes = golden::read(&format!("gemini/{name}.sse"));
        let events = golden::decode_every_way(&decoder, bytes.as_bytes());
        golden::check(
            &format!("gemini/{name}.out.jsonl"),
            &golden::events_text(&events),
        );
    }
    let bytes = golden::read("gemini/stream_text.sse");
    let events = golden::decode_split(decoder(), bytes.as_bytes(), &[]);
    assert!(events[0].as_ref().expect("ok").is_token());
    assert!(matches!(events.last(), Some(Ok(StreamEvent::Done))));
}

#[test]
fn error_classification() {
    crate::anthropic::error_table("gemini/errors", &|s, h, b| gemini::classify(s, h, b, now()));
}

proptest! {
    #[test]
    fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut d = GeminiStream::new(&golden::ctx());
        for c in &chunks {
            let _ = d.feed(c);
        }
        let _ = d.finish();
    }

    #[test]
    fn classify_never_panics(status in 0u16..1000, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = gemini::classify(status, &HeaderMap::new(), &body, now());
    }
}

#[test]
fn endpoints_that_name_a_version_keep_it() {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}]
    }))
    .expect("request");
    for (base, url) in [
        (
            "https://g.example",
            "https://g.example/v1beta/models/gm:generateContent",
        ),
        (
            "https://g.example/v1beta/",
            "https://g.example/v1beta/models/gm:generateContent",
        ),
        (
            "https://g.example/v1",
            "https://g.example/v1/models/gm:generateContent",
        ),
    ] {
        let ep = golden::endpoint(ProviderType::Gemini, base, "k");
        assert_eq!(
            gemini::build_chat(&ep, &req, "gm", false)
                .expect("builds")
                .url,
            url
        );
    }
}
