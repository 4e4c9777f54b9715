use super::cursor::special;
use super::*;

const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
const ANSWER: &str = r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

fn chunk_with(choices: &str, rest: &str) -> String {
    format!(r#"{{"id":"c","created":1,"model":"m","choices":[{choices}]{rest}}}"#)
}

#[test]
fn a_content_chunk_is_a_token() {
    let f = chunk(CHUNK.as_bytes()).expect("well-formed");
    assert!(f.token && !f.usage_only && !f.error);
    assert_eq!(f.usage, None);
}

#[test]
fn what_makes_a_chunk_a_token() {
    for (choice, token) in [
        (
            r#"{"index":0,"delta":{"role":"assistant","content":""}}"#,
            false,
        ),
        (r#"{"index":0,"delta":{"content":null}}"#, false),
        (r#"{"index":0,"delta":{"content":"\n"}}"#, true),
        (r#"{"index":0,"delta":{"tool_calls":[]}}"#, false),
        (
            r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}"#,
            true,
        ),
        (r#"{"index":0,"delta":{"refusal":"no"}}"#, true),
        (r#"{"index":0,"delta":{},"finish_reason":"stop"}"#, true),
        (
            r#"{"index":0,"delta":{},"logprobs":{"content":[1,2.5e-3,true]}}"#,
            false,
        ),
    ] {
        let f = chunk(chunk_with(choice, "").as_bytes()).expect(choice);
        assert_eq!(f.token, token, "{choice}");
    }
}

#[test]
fn the_usage_chunk_is_read_with_its_details() {
    let f = chunk(
        chunk_with(
            "",
            r#","usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}"#,
        )
        .as_bytes(),
    )
    .expect("well-formed");
    assert!(f.usage_only && !f.token);
    assert_eq!(f.usage, Some(Usage::new(9, 2, 4)));
    let f = chunk(chunk_with("", r#","usage":null"#).as_bytes()).expect("null usage");
    assert!(!f.usage_only);
}

#[test]
fn an_error_object_is_noted_and_null_is_not_one() {
    assert!(
        chunk(chunk_with("", r#","error":{"message":"boom"}"#).as_bytes()).is_some_and(|f| f.error)
    );
    assert!(chunk(chunk_with("", r#","error":null"#).as_bytes()).is_some_and(|f| !f.error));
}

#[test]
fn a_whole_answer_gives_its_usage_and_whether_it_was_filtered() {
    let f = response(ANSWER.as_bytes()).expect("well-formed");
    assert_eq!(f.usage, Some(Usage::new(3, 1, 0)));
    assert!(!f.filtered && !f.error);
    let filtered = ANSWER.replace(
        r#""finish_reason":"stop""#,
        r#""finish_reason":"content_filter""#,
    );
    assert!(response(filtered.as_bytes()).is_some_and(|f| f.filtered));
    let parts = ANSWER.replace(
        r#""content":"Hello""#,
        r#""content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}}],"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]"#,
    );
    assert!(response(parts.as_bytes()).is_some());
}

#[test]
fn what_the_full_parse_would_refuse_is_refused() {
    for bad in [
        // Grammar.
        "",
        "{",
        r#"{"id":"c",}"#,
        &CHUNK.replace(r#""created":1"#, r#""created":01"#),
        &CHUNK.replace(r#""created":1"#, r#""created":1."#),
        &CHUNK.replace(r#""created":1"#, r#""created":-"#),
        &CHUNK.replace(r#""created":1"#, r#""created":1e"#),
        &CHUNK.replace(r#""content":"Hi""#, "\"content\":\"H\ti\""),
        &CHUNK.replace(r#""content":"Hi""#, r#""content":"H\xi""#),
        &CHUNK.replace(r#""content":"Hi""#, r#""content":"H\u12"#),
        &CHUNK.replace(r#""finish_reason":null"#, r#""finish_reason":nul"#),
        &format!("{CHUNK} x"),
        &format!("{CHUNK}{CHUNK}"),
        // Shape: types and required fields.
        &CHUNK.replace(r#""created":1"#, r#""created":1.5"#),
        &CHUNK.replace(r#""created":1"#, r#""created":-1"#),
        &CHUNK.replace(r#""created":1"#, r#""created":18446744073709551616"#),
        &CHUNK.replace(r#""created":1,"#, ""),
        &CHUNK.replace(r#""model":"m""#, r#""model":null"#),
        &CHUNK.replace(r#""index":0"#, r#""index":4294967296"#),
        &CHUNK.replace(r#""delta":{"content":"Hi"}"#, r#""delta":["Hi"]"#),
        &CHUNK.replace(r#""content":"Hi""#, r#""content":7"#),
        &CHUNK.replace(r#""object":"chat.completion.chunk""#, r#""object":null"#),
        "[]",
        // Left to the full parse though it might accept them.
        &CHUNK.replace(r#""id":"c""#, r#""i\u0064":"c""#),
        &CHUNK.replace(r#""id":"c""#, r#""id":"c","id":"d""#),
        &CHUNK.replace(r#""content":"Hi""#, r#""content":"\ud83d\ude00""#),
        &CHUNK.replace(r#""content":"Hi""#, r#""content":"\u+fff""#),
    ] {
        assert_eq!(chunk(bad.as_bytes()), None, "{bad}");
    }
    assert_eq!(chunk(b"{\"id\":\"\xff\"}"), None, "invalid UTF-8");
    let deep = format!(
        "{}1{}",
        "[".repeat(SKIP_DEPTH as usize + 2),
        "]".repeat(SKIP_DEPTH as usize + 2)
    );
    assert_eq!(
        chunk(chunk_with("", &format!(r#","x":{deep}"#)).as_bytes()),
        None
    );
    let usage = ANSWER.replace(r#""total_tokens":4"#, r#""total_tokens":"4""#);
    assert_eq!(response(usage.as_bytes()), None);
    let escaped = ANSWER.replace(
        r#""finish_reason":"stop""#,
        r#""finish_reason":"content\u005ffilter""#,
    );
    assert_eq!(response(escaped.as_bytes()), None);
}

#[test]
fn escapes_and_whitespace_are_json_s() {
    let spaced = " \n{ \"id\" : \"c\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\" ,\t\"created\":1,\r\"model\":\"m\",\"choices\":[ ] ,\"x\":[true,false,null,-0.5E+3,{}]} \n";
    let f = chunk(spaced.as_bytes()).expect("well-formed");
    assert!(!f.token && !f.usage_only);
}

proptest::proptest! {
    /// No input makes the scan panic.
    #[test]
    fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let _ = chunk(&bytes);
        let _ = response(&bytes);
    }
}

proptest::proptest! {
    /// The eight-at-a-time search finds what a byte-by-byte one does.
    #[test]
    fn special_finds_the_first_quote_backslash_or_control(
        bytes in proptest::collection::vec(
            proptest::prop_oneof![
                8 => 0x20u8..0x7f,
                1 => proptest::prelude::any::<u8>(),
                1 => proptest::sample::select(vec![b'"', b'\\', 0x1f, 0x00, 0x80, 0xff, 0x21, 0x5d]),
            ],
            0..40,
        )
    ) {
        let naive = bytes.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        proptest::prop_assert_eq!(special(&bytes), naive);
    }
}

#[test]
fn string_objects_need_their_required_fields_once() {
    let with = |content: &str| ANSWER.replace(r#""content":"Hello""#, content);
    for (content, ok) in [
        (
            r#""content":[{"type":"image_url","image_url":{"url":"u","detail":null}}]"#,
            true,
        ),
        (
            r#""content":[{"type":"image_url","image_url":{"detail":"low"}}]"#,
            false,
        ),
        (
            r#""content":[{"type":"image_url","image_url":{"url":"u","url":"v"}}]"#,
            false,
        ),
        (
            r#""content":[{"type":"image_url","image_url":{"url":null}}]"#,
            false,
        ),
        (
            r#""tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}","x":1}}]"#,
            true,
        ),
        (
            r#""tool_calls":[{"id":"t","type":"function","function":{"name":"f"}}]"#,
            false,
        ),
    ] {
        assert_eq!(
            response(with(content).as_bytes()).is_some(),
            ok,
            "{content}"
        );
    }
    let delta = |function: &str| {
        chunk_with(
            &format!(
                r#"{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{function}}}]}}}}"#
            ),
            "",
        )
    };
    assert!(chunk(delta("null").as_bytes()).is_some());
    assert!(chunk(delta(r#"{"name":null}"#).as_bytes()).is_some());
    assert!(chunk(delta(r#"{"arguments":1}"#).as_bytes()).is_none());
}
