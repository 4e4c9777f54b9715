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

// ---- the scan against the full parse ----

/// An event reduced to what the gateway acts on, from either decoder.
#[derive(Debug, PartialEq)]
enum Seen {
    Chunk {
        token: bool,
        usage_only: bool,
        chunk: Option<ChatChunk>,
    },
    Usage(crate::openai::Usage),
    Done,
    Failed(FailureClass, String),
}

fn seen(events: Vec<Result<StreamEvent, Failure>>) -> Vec<Seen> {
    events
        .into_iter()
        .map(|e| match e {
            Ok(ev @ StreamEvent::Chunk { .. }) => {
                let token = ev.is_token();
                let StreamEvent::Chunk { chunk, .. } = ev else {
                    unreachable!()
                };
                Seen::Chunk {
                    token,
                    usage_only: chunk.choices.is_empty() && chunk.usage.is_some(),
                    chunk: Some(chunk),
                }
            }
            Ok(StreamEvent::Pass(p)) => Seen::Chunk {
                token: p.token,
                usage_only: p.usage_only,
                chunk: p.parse(),
            },
            Ok(StreamEvent::Usage(u)) => Seen::Usage(u),
            Ok(StreamEvent::Done) => Seen::Done,
            Err(f) => Seen::Failed(f.class, f.message),
        })
        .collect()
}

/// The old decoder: every chunk through a `Value`.
fn full(data: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    decode_data(&String::from_utf8_lossy(data), &mut out);
    seen(out)
}

/// The new one: scan, pass through, full parse only when the scan refuses.
fn fast(data: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    decode_event(
        crate::provider::sse::RawEvent {
            data: Bytes::copy_from_slice(data),
            frame: None,
        },
        &mut out,
    );
    seen(out)
}

const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;

#[test]
fn the_scan_passes_chunks_through_byte_for_byte() {
    let mut d = OpenAi.stream_decoder(&StreamContext {
        model: "m".into(),
        id: "x".into(),
        created: 0,
        max_line: 4096,
    });
    let input = format!("data: {CHUNK}\n\ndata: [DONE]\n\n");
    let events: Vec<StreamEvent> = d
        .feed_shared(Bytes::from(input.clone()))
        .into_iter()
        .map(|e| e.expect("ok"))
        .collect();
    let StreamEvent::Pass(p) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(&p.frame[..], format!("data: {CHUNK}\n\n").as_bytes());
    assert!(p.token && !p.usage_only);
    assert_eq!(events[1], StreamEvent::Done);
}

#[test]
fn strings_that_look_like_usage_or_errors_are_only_strings() {
    for data in [
        r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"say \"usage\": {\"prompt_tokens\":1}, \"error\": {}"},"finish_reason":null}]}"#,
        r#"{"id":"c\"usage\":{","created":1,"model":"m","choices":[],"x":{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"error":{"code":"rate_limit"}}}"#,
        r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"content":""},"finish_reason":null}],"usage":null,"error":null}"#,
    ] {
        let got = fast(data.as_bytes());
        assert_eq!(got, full(data.as_bytes()), "{data}");
        assert!(
            !got.iter()
                .any(|s| matches!(s, Seen::Usage(_) | Seen::Failed(..))),
            "{data}: {got:?}"
        );
    }
}

#[test]
fn error_frames_and_malformed_chunks_keep_their_exact_failure() {
    for data in [
        r#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#,
        r#"{"id":"c","created":1,"model":"m","choices":[],"error":{"type":"overloaded_error"}}"#,
        r#"{"id":"c","created":"1","model":"m","choices":[]}"#,
        r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"finish_reason":null}]}"#,
        r#"{"id":"c","id":"d","created":1,"model":"m","choices":[]}"#,
        "{not json",
        "[1,2]",
        " [DONE] ",
        "\u{a0}[DONE]",
    ] {
        assert_eq!(fast(data.as_bytes()), full(data.as_bytes()), "{data}");
    }
    // Invalid UTF-8 is read as the full parse always read it (lossily).
    let mut bad = CHUNK.as_bytes().to_vec();
    let at = bad.len() - 40;
    bad[at] = 0xff;
    assert_eq!(fast(&bad), full(&bad));
}

#[test]
fn the_usage_chunk_is_scanned_and_flagged() {
    let data = br#"{"id":"c","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    let got = fast(data);
    assert_eq!(got, full(data));
    assert!(matches!(
        got[0],
        Seen::Chunk {
            usage_only: true,
            token: false,
            ..
        }
    ));
    assert!(matches!(got[1], Seen::Usage(u) if u.total_tokens == 4 && u.cached_tokens() == 2));
}

#[test]
fn non_stream_answers_pass_through_untouched() {
    let body = Bytes::from_static(br#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},"service_tier":"default"}"#);
    let a = read_chat_body(body.clone()).expect("ok");
    assert_eq!(a.body, body);
    assert_eq!(a.usage.map(|u| u.total_tokens), Some(4));
}

mod agree {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON strings, some with quotes, escapes and keys inside them.
    fn text() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(json!("")),
            Just(json!("Hi")),
            Just(json!("say \"usage\": {\"prompt_tokens\": 9}")),
            Just(json!("\"error\":{\"code\":\"x\"}\\")),
            Just(json!("\u{1F600}\n\t")),
            "[a-z\"\\\\{}:,]{0,12}".prop_map(Value::from),
        ]
        .boxed()
    }

    /// Values of the wrong type, for any field.
    fn junk() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(7)),
            Just(json!(-1)),
            Just(json!(1.5)),
            Just(json!(true)),
            Just(json!([])),
            Just(json!({})),
            Just(json!("s")),
        ]
        .boxed()
    }

    /// A field: usually well-typed, sometimes junk, sometimes absent.
    fn field(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
        prop_oneof![
            6 => good.prop_map(Some),
            1 => junk().prop_map(Some),
            1 => Just(None),
        ]
        .boxed()
    }

    fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect(),
        )
    }

    fn usage() -> BoxedStrategy<Value> {
        (
            field(any::<u32>().prop_map(Value::from)),
            field(any::<u32>().prop_map(Value::from)),
            field(any::<u32>().prop_map(Value::from)),
            field((0u32..100).prop_map(|n| json!({"cached_tokens": n}))),
        )
            .prop_map(|(p, c, t, d)| {
                object(vec![
                    ("prompt_tokens", p),
                    ("completion_tokens", c),
                    ("total_tokens", t),
                    ("prompt_tokens_details", d),
                ])
            })
            .boxed()
    }

    fn tool_call_delta() -> BoxedStrategy<Value> {
        (
            field((0u32..3).prop_map(Value::from)),
            field(text()),
            field(text()),
        )
            .prop_map(|(i, id, args)| {
                object(vec![
                    ("index", i),
                    ("id", id),
                    ("function", Some(object(vec![("arguments", args)]))),
                ])
            })
            .boxed()
    }

    fn delta() -> BoxedStrategy<Value> {
        (
            field(Just(json!("assistant"))),
            field(text()),
            field(proptest::collection::vec(tool_call_delta(), 0..2).prop_map(Value::from)),
            field(prop_oneof![Just(Value::Null), text()]),
        )
            .prop_map(|(role, content, tools, refusal)| {
                object(vec![
                    ("role", role),
                    ("content", content),
                    ("tool_calls", tools),
                    ("refusal", refusal),
                ])
            })
            .boxed()
    }

    fn finish() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!("stop")),
            Just(json!("content_filter")),
            Just(json!("tool_calls")),
        ]
        .boxed()
    }

    fn chunk() -> BoxedStrategy<Value> {
        let choice = (field(Just(json!(0))), field(delta()), field(finish()))
            .prop_map(|(i, d, f)| object(vec![("index", i), ("delta", d), ("finish_reason", f)]));
        (
            field(text()),
            field(Just(json!("chat.completion.chunk"))),
            field(any::<u32>().prop_map(Value::from)),
            field(text()),
            field(proptest::collection::vec(choice, 0..3).prop_map(Value::from)),
            prop_oneof![3 => Just(None), 1 => field(usage())],
            prop_oneof![6 => Just(None), 1 => Just(Some(Value::Null)), 1 => Just(Some(json!({"code": "rate_limit_exceeded", "message": "m"})))],
            field(text()),
        )
            .prop_map(|(id, obj, created, model, choices, usage, error, extra)| {
                object(vec![
                    ("id", id),
                    ("object", obj),
                    ("created", created),
                    ("model", model),
                    ("choices", choices),
                    ("usage", usage),
                    ("error", error),
                    ("x_usage", extra),
                ])
            })
        .boxed()
    }

    fn message() -> BoxedStrategy<Value> {
        let part = (field(Just(json!("text"))), field(text()))
            .prop_map(|(k, t)| object(vec![("type", k), ("text", t)]));
        let call = (field(text()), field(text())).prop_map(|(id, args)| {
            object(vec![
                ("id", id),
                ("type", Some(json!("function"))),
                ("function", Some(json!({"name": "f", "arguments": args}))),
            ])
        });
        (
            field(Just(json!("assistant"))),
            field(prop_oneof![
                text(),
                proptest::collection::vec(part, 0..2).prop_map(Value::from)
            ]),
            field(proptest::collection::vec(call, 0..2).prop_map(Value::from)),
            field(prop_oneof![Just(Value::Null), text()]),
        )
            .prop_map(|(role, content, calls, refusal)| {
                object(vec![
                    ("role", role),
                    ("content", content),
                    ("tool_calls", calls),
                    ("refusal", refusal),
                ])
            })
            .boxed()
    }

    fn response() -> BoxedStrategy<Value> {
        let choice = (field(Just(json!(0))), field(message()), field(finish()))
            .prop_map(|(i, m, f)| object(vec![("index", i), ("message", m), ("finish_reason", f)]));
        (
            field(text()),
            field(any::<u32>().prop_map(Value::from)),
            field(text()),
            field(proptest::collection::vec(choice, 0..3).prop_map(Value::from)),
            prop_oneof![2 => Just(None), 1 => field(usage())],
            prop_oneof![6 => Just(None), 1 => Just(Some(json!({"code": "server_error"})))],
        )
            .prop_map(|(id, created, model, choices, usage, error)| {
                object(vec![
                    ("id", id),
                    ("object", Some(json!("chat.completion"))),
                    ("created", created),
                    ("model", model),
                    ("choices", choices),
                    ("usage", usage),
                    ("error", error),
                ])
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The scan and the full parse agree on every chunk: token,
        /// usage, the usage-only flag, the chunk itself, and every
        /// failure's class and message.
        #[test]
        fn stream_chunks(v in chunk()) {
            let data = serde_json::to_vec(&v).expect("json");
            prop_assert_eq!(fast(&data), full(&data));
        }

        /// The same for whole answers: usage, refusals, errors.
        #[test]
        fn whole_answers(v in response()) {
            let body = serde_json::to_vec(&v).expect("json");
            let old = parse_chat_body(&body).map(|r| r.usage);
            let new = read_chat_body(Bytes::from(body)).map(|a| a.usage);
            prop_assert_eq!(old, new);
        }

        /// And on documents one edit away from well-formed ones — a byte
        /// replaced by one that matters to JSON, removed, or the end cut
        /// off — which the hand-written scan must refuse exactly when the
        /// parse does, or agree with it.
        #[test]
        fn damaged_chunks(v in chunk(), edits in proptest::collection::vec(edit(), 1..3)) {
            let data = damage(serde_json::to_vec(&v).expect("json"), &edits);
            prop_assert_eq!(fast(&data), full(&data));
        }

        #[test]
        fn damaged_answers(v in response(), edits in proptest::collection::vec(edit(), 1..3)) {
            let body = damage(serde_json::to_vec(&v).expect("json"), &edits);
            let old = parse_chat_body(&body).map(|r| r.usage);
            let new = read_chat_body(Bytes::from(body)).map(|a| a.usage);
            prop_assert_eq!(old, new);
        }
    }

    /// One edit: where (a fraction of the length), and what.
    #[derive(Debug, Clone)]
    enum Edit {
        Replace(f64, u8),
        Remove(f64),
        Cut(f64),
    }

    fn edit() -> BoxedStrategy<Edit> {
        let byte = prop::sample::select(b"{}[]\":,\\ 0-.eEtnuf\x01\xc3x".to_vec());
        prop_oneof![
            4 => (0.0..1.0f64, byte).prop_map(|(at, b)| Edit::Replace(at, b)),
            2 => (0.0..1.0f64).prop_map(Edit::Remove),
            1 => (0.0..1.0f64).prop_map(Edit::Cut),
        ]
        .boxed()
    }

    fn damage(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            if data.is_empty() {
                break;
            }
            let at = |f: f64| ((data.len() as f64 * f) as usize).min(data.len() - 1);
            match *e {
                Edit::Replace(f, b) => {
                    let i = at(f);
                    data[i] = b;
                }
                Edit::Remove(f) => {
                    let i = at(f);
                    data.remove(i);
                }
                Edit::Cut(f) => {
                    let i = at(f);
                    data.truncate(i);
                }
            }
        }
        data
    }
}

#[test]
fn the_bearer_value_is_the_key_after_bearer_and_refuses_newlines() {
    assert_eq!(
        bearer("sk-1").expect("valid").to_str().ok(),
        Some("Bearer sk-1")
    );
    assert!(bearer("sk\n1").is_err());
}
