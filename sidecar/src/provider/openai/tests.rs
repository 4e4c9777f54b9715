use super::*;
use serde_json::json;
use sluice_crds::ProviderType;
use sluice_crds::snapshot::Credential;

fn endpoint() -> Endpoint {
    Endpoint {
        provider: "openai".into(),
        kind: ProviderType::Openai,
        base_url: "https://api.openai.com/v1".into(),
        credential: Some(Credential::new("sk-test")),
        headers: vec![],
        api_version: None,
        region: None,
        mock: None,
    }
}

fn req(raw: &[u8]) -> ChatRequest {
    serde_json::from_slice(raw).expect("request")
}

#[test]
fn passthrough_splices_only_the_model() {
    let raw = br#"{ "messages":[{"role":"user","content":"say \"model\": x"}], "model" : "chat", "seed": 7, "x": {"model":"inner"} }"#;
    let up = OpenAi
        .build_chat_raw(&endpoint(), raw, &req(raw), "gpt-4o-mini", false)
        .expect("builds");
    let expected = br#"{ "messages":[{"role":"user","content":"say \"model\": x"}], "model" : "gpt-4o-mini", "seed": 7, "x": {"model":"inner"} }"#;
    assert_eq!(&up.body[..], &expected[..]);
    assert_eq!(up.url, "https://api.openai.com/v1/chat/completions");
    assert_eq!(
        up.headers.get("authorization").expect("auth"),
        "Bearer sk-test"
    );
}

#[test]
fn streams_ask_for_usage() {
    let raw = br#"{"model":"chat","stream":true,"messages":[]}"#;
    let up = OpenAi
        .build_chat_raw(&endpoint(), raw, &req(raw), "m", true)
        .expect("builds");
    let v: Value = serde_json::from_slice(&up.body).expect("json");
    assert_eq!(v["stream_options"]["include_usage"], json!(true));
    assert_eq!(v["model"], json!("m"));
    // Present but false: the slow path, still correct.
    let raw = br#"{"model":"chat","stream":true,"stream_options":{"include_usage":false,"k":1},"messages":[]}"#;
    let up = OpenAi
        .build_chat_raw(&endpoint(), raw, &req(raw), "m", true)
        .expect("builds");
    let v: Value = serde_json::from_slice(&up.body).expect("json");
    assert_eq!(v["stream_options"], json!({"include_usage": true, "k": 1}));
}

#[test]
fn errors_hidden_in_a_200() {
    for body in [
        &b"<html>oops</html>"[..],
        b"not json",
        br#"{"error":{"message":"x","type":"server_error","code":null}}"#,
        b"[]",
    ] {
        let f = parse_chat_body(body).expect_err("malformed");
        assert_eq!(
            f.class,
            FailureClass::Malformed,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let refused = json!({"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}]});
    let f = parse_chat_body(&serde_json::to_vec(&refused).expect("json")).expect_err("refusal");
    assert_eq!(f.class, FailureClass::Refusal);
}

#[test]
fn classifies_openai_errors() {
    let h = HeaderMap::new();
    let c = |s: u16, body: Value| {
        OpenAi
            .classify(
                StatusCode::from_u16(s).expect("status"),
                &h,
                &serde_json::to_vec(&body).expect("json"),
            )
            .class
    };
    assert_eq!(
        c(
            429,
            json!({"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}})
        ),
        FailureClass::QuotaExhausted
    );
    assert_eq!(
        c(
            429,
            json!({"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}})
        ),
        FailureClass::RateLimited
    );
    assert_eq!(
        c(
            400,
            json!({"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}})
        ),
        FailureClass::ContextLength
    );
    assert_eq!(
        c(
            401,
            json!({"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}})
        ),
        FailureClass::Auth
    );
    assert_eq!(c(502, json!("bad gateway")), FailureClass::ServerError);
}

#[test]
fn stream_chunks_usage_and_done() {
    let mut d = OpenAi.stream_decoder(&StreamContext {
        model: "m".into(),
        id: "x".into(),
        created: 0,
        max_line: 4096,
    });
    let input = b": keep-alive\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    let mut events = Vec::new();
    for b in input.chunks(7) {
        events.extend(d.feed(b));
    }
    events.extend(d.finish());
    let events: Vec<StreamEvent> = events.into_iter().map(|e| e.expect("ok")).collect();
    assert_eq!(events.len(), 5);
    assert!(!events[0].is_token(), "a role-only delta is not a token");
    assert!(events[1].is_token());
    assert!(matches!(&events[3], StreamEvent::Usage(u) if u.total_tokens == 4));
    assert_eq!(events[4], StreamEvent::Done);
}

#[test]
fn stream_error_frames_are_failures() {
    let mut d = OpenAi.stream_decoder(&StreamContext {
        model: "m".into(),
        id: "x".into(),
        created: 0,
        max_line: 4096,
    });
    let out = d.feed(b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n");
    assert!(matches!(&out[0], Err(f) if f.class == FailureClass::ServerError));
    let out = d.feed(b"data: {not json\n\n");
    assert!(matches!(&out[0], Err(f) if f.class == FailureClass::Malformed));
}

proptest::proptest! {
    #[test]
    fn the_stream_decoder_never_panics(
        parts in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..8),
        prefix in "(data: |event: |: |data: \\{\"choices\":\\[)?",
    ) {
        let mut d = OpenAi.stream_decoder(&StreamContext {
            model: "m".into(),
            id: "x".into(),
            created: 0,
            max_line: 512,
        });
        let _ = d.feed(prefix.as_bytes());
        for p in &parts {
            let _ = d.feed(p);
        }
        let _ = d.finish();
    }
}
