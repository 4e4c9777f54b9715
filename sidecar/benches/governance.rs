//! Micro-benchmarks of the governance stages on the request path (run with
//! `cargo bench -p sluice-sidecar --bench governance`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_crds::budget::{BudgetSpec, Spend};
use sluice_crds::route::{PiiDetector, PiiMode, PiiSpec};
use sluice_sidecar::budget::Budget;
use sluice_sidecar::cache;
use sluice_sidecar::openai::ChatRequest;
use sluice_sidecar::pii::{Redactions, Scrubber};

fn pii(c: &mut Criterion) {
    let scrubber = Scrubber::new(&PiiSpec {
        mode: PiiMode::Redact,
        detectors: PiiDetector::all(),
    })
    .expect("pattern compiles");
    let clean =
        "Compare the trade-offs of three designs for a rate limiter, analyze failure modes \
                 and give a step by step rollout plan for version 1.2.3 at 12:30:45. "
            .repeat(12);
    let dirty = format!(
        "{clean} Contact jane.doe@example.com or +1 415 555 2671; card 4111 1111 1111 1111; \
         server 10.0.0.12; key sk-abc123DEF456ghi789JKL012."
    );
    c.bench_function(&format!("pii/find, clean {}B", clean.len()), |b| {
        b.iter(|| scrubber.find(black_box(&clean)))
    });
    let german = "Bitte vergleiche drei Entwürfe für einen Ratenbegrenzer, analysiere Fehlerfälle \
                  und gib einen schrittweisen Einführungsplan für Version 1.2.3 um 12:30:45. "
        .repeat(12);
    c.bench_function(
        &format!("pii/find, clean non-ASCII {}B", german.len()),
        |b| b.iter(|| scrubber.find(black_box(&german))),
    );
    c.bench_function(&format!("pii/redact, 5 findings {}B", dirty.len()), |b| {
        b.iter(|| {
            let mut counts = Redactions::new();
            scrubber.redact(black_box(&dirty), &mut counts).len()
        })
    });
}

fn cache_and_budget(c: &mut Criterion) {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "chat", "temperature": 0, "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for an online shop."},
            {"role": "user", "content": "Hi, I ordered a blue kettle last week. Where is it?"}
        ]
    }))
    .expect("a valid request");
    c.bench_function("cache/exact key, 2 messages", |b| {
        b.iter(|| cache::key(black_box(&req), "gpt-4o", Some("team-a")))
    });
    let spec: BudgetSpec = serde_json::from_value(serde_json::json!({
        "window": "month", "limits": {"costUSD": "1000000"}
    }))
    .expect("budget");
    let now: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().expect("timestamp");
    let budget = Budget::standalone("team", spec, vec![], true, now);
    let worst = Spend {
        cost_usd: "0.01".parse().expect("money"),
        tokens: 1_000,
        requests: 1,
    };
    c.bench_function("budget/admit + drop", |b| {
        b.iter(|| drop(black_box(budget.admit(None, &worst, now))))
    });
}

criterion_group!(benches, pii, cache_and_budget);
criterion_main!(benches);
