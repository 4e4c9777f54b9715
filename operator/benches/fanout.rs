//! Config change → every connected sidecar on the new version.
//!
//! Starts the emulator and the operator in-process, connects `SIDECARS`
//! simulated sidecars (one pod each, real TLS streams), then changes the
//! route `ROUNDS` times and records, per sidecar and change, the time from
//! the API write to the sidecar holding the new snapshot. Prints p50, p99
//! and max. Run: `cargo bench -p sluice-operator --bench fanout`
//! (`--profile dev` for a quick, pessimistic number).

#[path = "../tests/rig/mod.rs"]
mod rig;

use std::time::{Duration, Instant};

use rig::{Rig, Sidecar};
use serde_json::json;

const SIDECARS: usize = 100;
const ROUNDS: usize = 10;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let rig = Rig::start().await;
    rig.shop().await;
    for i in 2..=SIDECARS {
        rig.pod("shop", &format!("web-{i}"), "web").await;
    }
    let op = rig.leader("bench").await;
    let ca = rig.operator_ca().await;
    let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
    let mut streams = Vec::new();
    for i in 1..=SIDECARS {
        let mut lines = Sidecar::new(op.distribution, &ca, &token)
            .stream("shop", &format!("web-{i}"))
            .await;
        lines.next().await;
        streams.push(lines);
    }
    let mut samples: Vec<Duration> = Vec::new();
    for round in 0..ROUNDS {
        let alias = format!("alias-{round}");
        let start = Instant::now();
        rig.merge(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            "shop",
            "chat",
            json!({"spec": {"aliases": [alias]}}),
        )
        .await;
        let waits = streams.iter_mut().map(|lines| {
            let alias = alias.clone();
            async move {
                loop {
                    let s = lines.next().await;
                    if s["routes"][0]["spec"]["aliases"] == json!([alias]) {
                        return start.elapsed();
                    }
                }
            }
        });
        samples.extend(futures::future::join_all(waits).await);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "fanout: {SIDECARS} sidecars x {ROUNDS} changes: p50 {:?} p99 {:?} max {:?}",
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}
