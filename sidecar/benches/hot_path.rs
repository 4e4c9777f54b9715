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
    c.bench_function("complexity/short prompt", |b| b.iter(|| complexity::score(black_box(&short))));
    c.bench_function("complexity/1.4k-char prompt", |b| b.iter(|| complexity::score(black_box(&long))));
}

criterion_group!(benches, complexity_scoring);
criterion_main!(benches);
