use super::*;
use serde_json::json;

fn request(model: &str, messages: serde_json::Value) -> ChatRequest {
    serde_json::from_value(json!({"model": model, "messages": messages})).expect("request")
}

/// The example of OpenAI's cookbook "How to count tokens with tiktoken",
/// whose prompt the API bills as 129 tokens on gpt-4 / gpt-3.5-turbo and
/// 124 on gpt-4o / gpt-4o-mini.
fn cookbook(model: &str) -> ChatRequest {
    request(
        model,
        json!([
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
        ]),
    )
}

#[test]
fn hello_world_is_two_tokens_in_both_encodings() {
    assert_eq!(text_tokens("hello world", "gpt-4o"), 2);
    assert_eq!(text_tokens("hello world", "gpt-4"), 2);
    assert_eq!(text_baseline("hello world"), 2);
    assert_eq!(text_baseline(""), 0);
}

#[test]
fn the_cookbook_example_counts_as_the_api_bills_it() {
    assert_eq!(chat_tokens(&cookbook("gpt-4"), "gpt-4"), 129);
    assert_eq!(
        chat_tokens(&cookbook("gpt-3.5-turbo"), "gpt-3.5-turbo"),
        129
    );
    assert_eq!(chat_tokens(&cookbook("gpt-4o"), "gpt-4o"), 124);
    assert_eq!(chat_tokens(&cookbook("gpt-4o-mini"), "gpt-4o-mini"), 124);
    // Routing's baseline is the o200k count, whatever the name.
    assert_eq!(chat_baseline(&cookbook("chat")), 124);
}

#[test]
fn the_shortcut_roles_are_one_token_each() {
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let bpe = reference(encoding);
        for role in ["system", "user", "assistant", "tool", "developer"] {
            assert_eq!(bpe.encode_ordinary(role).len(), 1, "{role} {encoding:?}");
        }
    }
}

#[test]
fn models_map_to_their_encoding_or_a_family_factor() {
    let o200k = Counting::exact(Encoding::O200kBase);
    let cl100k = Counting::exact(Encoding::Cl100kBase);
    for (model, want) in [
        ("gpt-4o", o200k),
        ("gpt-4o-mini-2024-07-18", o200k),
        ("gpt-4.1-nano", o200k),
        ("gpt-5", o200k),
        ("o3-mini", o200k),
        ("openai/gpt-4o", o200k),
        ("gpt-oss-120b", o200k),
        ("gpt-4", cl100k),
        ("gpt-4-turbo", cl100k),
        ("gpt-3.5-turbo", cl100k),
        ("gpt-35-turbo", cl100k),
        ("text-embedding-3-small", cl100k),
    ] {
        assert_eq!(for_model(model), want, "{model}");
    }
    for (model, percent) in [
        ("claude-3-5-sonnet-20241022", 125),
        ("anthropic.claude-3-haiku-20240307-v1:0", 125),
        ("gemini-1.5-pro", 110),
        ("models/gemini-2.0-flash", 110),
        ("meta.llama3-70b-instruct-v1:0", 115),
        ("mistral-large-latest", 115),
        ("chat", 100),
        ("gpt4o-prod", 100),
    ] {
        let c = for_model(model);
        assert_eq!(c.encoding, Encoding::O200kBase, "{model}");
        assert_eq!(c.percent, percent, "{model}");
        assert!(!c.exact, "{model}");
    }
    // Scaled counts round up.
    let req = cookbook("claude-3-opus");
    assert_eq!(chat_tokens(&req, "claude-3-opus"), 155, "124 × 1.25");
    assert_eq!(for_target(124, "claude-3-opus"), 155);
    assert_eq!(for_target(124, "gpt-4"), 124);
}

#[test]
fn images_follow_the_tile_rule() {
    assert_eq!(tile_tokens(1024, 1024), 765, "OpenAI's example: 4 tiles");
    assert_eq!(
        tile_tokens(2048, 4096),
        1105,
        "→ 1024×2048 → 768×1536: 6 tiles"
    );
    assert_eq!(tile_tokens(512, 512), 255);
    assert_eq!(
        tile_tokens(100, 3000),
        85 + 170 * 4,
        "a thin strip, 1×4 tiles"
    );
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend_from_slice(&2048u32.to_be_bytes());
    png.extend_from_slice(&4096u32.to_be_bytes());
    png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    let url = {
        use base64::Engine as _;
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        )
    };
    assert_eq!(png_size(&url), Some((2048, 4096)));
    let image = |url: &str, detail: Option<&str>| {
        request(
            "gpt-4o",
            json!([{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url, "detail": detail}}
            ]}]),
        )
    };
    // 3 priming + 3 framing + 1 role, plus the image.
    assert_eq!(chat_baseline(&image(&url, None)), 7 + 1105);
    assert_eq!(chat_baseline(&image(&url, Some("low"))), 7 + 85);
    assert_eq!(
        chat_baseline(&image("https://example.com/cat.jpg", None)),
        7 + 765
    );
    assert_eq!(png_size("data:image/png;base64,AAAA"), None);
}

#[test]
fn tool_calls_names_and_tools_count() {
    let plain = request("gpt-4o", json!([{"role": "user", "content": "weather?"}]));
    let mut with_tools = plain.clone();
    with_tools.tools = Some(
        serde_json::from_value(json!([{"type": "function", "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
        }}]))
        .expect("tools"),
    );
    assert!(chat_baseline(&with_tools) > chat_baseline(&plain) + 10);
    let calls = request(
        "gpt-4o",
        json!([
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]),
    );
    let bpe = reference(Encoding::O200kBase);
    let n = |s: &str| bpe.encode_ordinary(s).len() as u64;
    assert_eq!(
        chat_baseline(&calls),
        3 + (3 + 1 + n("get_weather") + n("{\"city\":\"Paris\"}") + 1)
            + (3 + 1 + n("call_1") + n("sunny"))
    );
}

#[test]
fn a_huge_prompt_is_extrapolated_from_its_first_bytes() {
    let paragraph = "The quick brown fox jumps over the lazy dog, and then it \
                     writes a short note about what it saw in the meadow. ";
    let text = paragraph.repeat((256 * 1024) / paragraph.len());
    assert!(text.len() > 7 * EXACT_BYTES);
    let bpe = reference(Encoding::O200kBase);
    let exact = bpe.encode_ordinary(&text).len() as u64;
    let estimate = text_baseline(&text);
    let error = estimate.abs_diff(exact) as f64 / exact as f64;
    assert!(error < 0.01, "estimate {estimate} vs exact {exact}");
    // Several messages share one budget: later ones are extrapolated.
    let messages: Vec<_> = (0..16)
        .map(|_| json!({"role": "user", "content": text[..64 * 1024].to_owned()}))
        .collect();
    let req = request("chat", serde_json::Value::Array(messages));
    let per_message = bpe.encode_ordinary(&text[..64 * 1024]).len() as u64;
    let want = 3 + 16 * (3 + 1 + per_message);
    let got = chat_baseline(&req);
    assert!(
        got.abs_diff(want) as f64 / (want as f64) < 0.01,
        "{got} vs {want}"
    );
    // Multi-byte text is cut on a character boundary.
    let cjk = "漢字かな交じり文。".repeat(EXACT_BYTES / 9);
    assert!(text_baseline(&cjk) > 0);
}

#[test]
fn the_upper_bound_is_never_below_any_model_count() {
    let texts = [
        "hello world",
        "日本語のテキストとemoji 🎉🎉 mixed with code: fn main() { println!(\"x\"); }",
        &"zq".repeat(5000),
    ];
    for text in texts {
        let req = request("chat", json!([{"role": "user", "content": text}]));
        let bound = upper_bound(&req).expect("no images");
        for model in [
            "gpt-4o",
            "gpt-4",
            "claude-sonnet-4",
            "gemini-2.5-pro",
            "llama-3.1-70b",
        ] {
            let n = chat_tokens(&req, model);
            assert!(bound >= n, "{model}: {n} tokens > bound {bound}");
        }
    }
    let image = request(
        "chat",
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]),
    );
    assert_eq!(upper_bound(&image), None, "images need the real count");
}
