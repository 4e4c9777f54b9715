//! Micro-benchmarks of the governance stages on the request path (run with
//! `cargo bench -p sluice-sidecar --bench governance`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_crds::route::{PiiDetector, PiiMode, PiiSpec};
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
    c.bench_function(&format!("pii/redact, 5 findings {}B", dirty.len()), |b| {
        b.iter(|| {
            let mut counts = Redactions::new();
            scrubber.redact(black_box(&dirty), &mut counts).len()
        })
    });
}

criterion_group!(benches, pii);
criterion_main!(benches);
