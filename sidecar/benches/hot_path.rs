//! Micro-benchmarks of the sidecar's hot path (run with
//! `cargo bench -p sluice-sidecar --bench hot_path`).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use sluice_sidecar::complexity;
use sluice_sidecar::openai::ChatRequest;

fn request(prompt: &str) -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for an online shop."},
            {"role": "user", "content": "Hi, I ordered a blue kettle last week."},
            {"role": "assistant", "content": "Thanks! How can I help with your order?"},
            {"role": "user", "content": prompt}
        ],
        "max_tokens": 512
    }))
    .expect("a valid request")
}

fn complexity_scoring(c: &mut Criterion) {
    let short = request("Where is my order?");
    let long = request(&"Compare the trade-offs of three designs for a rate limiter, analyze failure modes and give a step by step rollout plan. ".repeat(12));
    c.bench_function("complexity/short prompt", |b| {
        b.iter(|| complexity::score(black_box(&short)))
    });
    c.bench_function("complexity/1.4k-char prompt", |b| {
        b.iter(|| complexity::score(black_box(&long)))
    });
}

fn request_parsing(c: &mut Criterion) {
    let raw = serde_json::to_vec(&serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for an online shop."},
            {"role": "user", "content": "Hi, I ordered a blue kettle last week and it has not arrived. Order 12345."},
            {"role": "assistant", "content": "Sorry to hear that! Let me check."},
            {"role": "user", "content": "Thanks. Can you also tell me the return policy?"}
        ],
        "temperature": 0.2,
        "max_tokens": 512,
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]
    }))
    .expect("json");
    let limits = sluice_sidecar::ingress::Limits::default();
    c.bench_function("ingress/parse 4-message chat request", |b| {
        b.iter(|| sluice_sidecar::ingress::parse_chat(black_box(&raw), &limits))
    });
}

fn sse_translation(c: &mut Criterion) {
    use sluice_sidecar::provider::{StreamContext, adapter};
    let mut stream = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for _ in 0..50 {
        stream.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello there, \"}}\n\n");
    }
    stream.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":100}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let ctx = StreamContext {
        model: "claude".into(),
        id: "chatcmpl-1".into(),
        created: 0,
        max_line: 1 << 20,
    };
    let bytes = stream.into_bytes();
    c.bench_function("sse/anthropic 50-delta stream to OpenAI chunks", |b| {
        b.iter(|| {
            let mut d = adapter(sluice_crds::ProviderType::Anthropic).stream_decoder(&ctx);
            let mut n = d.feed(black_box(&bytes)).len();
            n += d.finish().len();
            n
        })
    });
}

/// The OpenAI pass-through per chunk: the scan and zero-copy framing of
/// today against the full parse into a `serde_json::Value` it replaced
/// (`decode_data`, still the path for error frames).
fn stream_pass_through(c: &mut Criterion) {
    use bytes::Bytes;
    use sluice_sidecar::provider::openai::decode_data;
    use sluice_sidecar::provider::{StreamContext, adapter};
    const CHUNK: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" from the benchmark, with a few more words."},"logprobs":null,"finish_reason":null}]}"#;
    let frames: Vec<Bytes> = (0..50)
        .map(|_| Bytes::from(format!("data: {CHUNK}\n\n")))
        .collect();
    let ctx = StreamContext {
        model: "bench-model".into(),
        id: "chatcmpl-1".into(),
        created: 0,
        max_line: 1 << 20,
    };
    let mut group = c.benchmark_group("sse/openai pass-through");
    group.throughput(criterion::Throughput::Elements(frames.len() as u64));
    group.bench_function("50 chunks, scan (per element = per chunk)", |b| {
        b.iter(|| {
            let mut d = adapter(sluice_crds::ProviderType::OpenaiCompatible).stream_decoder(&ctx);
            let mut n = 0;
            for f in &frames {
                n += d.feed_shared(black_box(f.clone())).len();
            }
            n
        })
    });
    group.bench_function("50 chunks, full Value parse (before)", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            for _ in 0..frames.len() {
                decode_data(black_box(CHUNK), &mut out);
            }
            out.len()
        })
    });
    group.finish();
}

fn route_selection(c: &mut Criterion) {
    let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: p}\nspec:\n  type: mock\n  models:\n  - {name: a, contextWindow: 128000, pricing: {inputPerMillion: \"1\", outputPerMillion: \"2\"}}\n  - {name: b, contextWindow: 128000, pricing: {inputPerMillion: \"3\", outputPerMillion: \"4\"}}\n  - {name: c, contextWindow: 32000}\n---\napiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\nspec:\n  model: r\n  strategy: weighted\n  targets: [{providerRef: {name: p}, model: a, weight: 5}, {providerRef: {name: p}, model: b, weight: 3}, {providerRef: {name: p}, model: c, weight: 2}]\n";
    let config = sluice_sidecar::standalone::load_bytes(
        &sluice_crds::load::Admission::new(),
        yaml.as_bytes(),
        &|_| None,
    )
    .expect("config");
    let route = config.route("r").expect("route").clone();
    let health = sluice_sidecar::health::Health::default();
    let info = sluice_sidecar::route::RequestInfo {
        input_tokens: 800,
        max_output: 512,
        ..Default::default()
    };
    c.bench_function("route/plan 3 weighted targets + breaker checks", |b| {
        b.iter(|| {
            let plan = sluice_sidecar::route::plan(black_box(&route), &info, &health);
            let now = tokio::time::Instant::now();
            plan.iter()
                .filter(|p| p.endpoint.breaker.admits(now).0)
                .count()
        })
    });
}

fn token_estimation(c: &mut Criterion) {
    use sluice_sidecar::tokens;
    // Built once per process; the benchmarks measure counting only.
    tokens::warm_up();
    let small = request("Where is my order? It was a blue kettle, order 12345.");
    let prose = "The quick brown fox jumps over the lazy dog, then writes a short note \
                 about the meadow, the river and the hills it crossed on the way home. ";
    let medium = request(&prose.repeat(8 * 1024 / prose.len()));
    let large = request(&prose.repeat(1024 * 1024 / prose.len()));
    let code = request(&"fn main() { let xs: Vec<u32> = (0..10).map(|i| i * i).collect(); println!(\"{xs:?}\"); }\n".repeat(64 * 1024 / 90));
    for (name, req) in [
        ("tokens/4-message chat, 60-byte prompt", &small),
        ("tokens/4-message chat, 8 KiB prose", &medium),
        (
            "tokens/4-message chat, 64 KiB code (8 KiB exact + extrapolated)",
            &code,
        ),
        (
            "tokens/4-message chat, 1 MiB prose (8 KiB exact + extrapolated)",
            &large,
        ),
    ] {
        c.bench_function(name, |b| b.iter(|| tokens::chat_baseline(black_box(req))));
    }
    // Per target and request in route selection: the model's family.
    c.bench_function("tokens/scale a count to 3 targets' models", |b| {
        b.iter(|| {
            ["gpt-4o-mini", "claude-3-5-haiku-latest", "mistral-large"]
                .iter()
                .map(|m| tokens::for_target(black_box(800), m))
                .sum::<u64>()
        })
    });
    c.bench_function("tokens/cl100k 4-message chat, 60-byte prompt", |b| {
        b.iter(|| tokens::chat_tokens(black_box(&small), "gpt-4"))
    });
    // What `tokens::warm_up` costs once per process.
    let mut once = c.benchmark_group("tokens/load vocabulary");
    once.sample_size(10);
    once.bench_function("o200k_base", |b| {
        b.iter(|| {
            tokens::bpe::Counter::load(tokens::bpe::O200K_BASE, tiktoken_rs::O200K_BASE_PAT_STR)
                .is_some()
        })
    });
    once.finish();
}

criterion_group!(
    benches,
    token_estimation,
    complexity_scoring,
    request_parsing,
    sse_translation,
    stream_pass_through,
    route_selection
);
criterion_main!(benches);
