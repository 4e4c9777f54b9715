//! Operator memory with many sidecars connected.
//!
//! Runs the real `sluice-operator` binary as a child process against the
//! in-process Kubernetes API emulator, creates `SIDECARS` pods with a
//! sidecar, then connects one simulated sidecar per pod (a real TLS
//! snapshot stream, authenticated by TokenReview) that also posts a report
//! with target health and budget usage every round. Prints the operator's
//! resident set (VmRSS) and peak (VmHWM) from `/proc` at each stage, so the
//! figure is the operator's alone — not the emulator's or the clients'.
//!
//! Run: `cargo bench -p sluice-operator --bench memory` (the number of
//! sidecars: `SLUICE_BENCH_SIDECARS`, default 1000).

#[path = "../tests/rig/mod.rs"]
mod rig;

use std::time::{Duration, Instant};

use rig::{Rig, Sidecar};
use serde_json::json;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report(pod: &str, sequence: u64) -> serde_json::Value {
    json!({
        "namespace": "shop", "pod": pod, "instance": format!("{pod}-bench"),
        "sequence": sequence,
        "config": {},
        "targets": [
            {"route": "chat", "provider": "openai", "model": "gpt-4o", "requests": 40,
             "errors": {"server-error": 1}, "latencyP50Ms": 420, "latencyP95Ms": 900,
             "ttftP95Ms": 300, "breaker": "closed"},
            {"route": "chat", "provider": "backup", "model": "m", "requests": 2,
             "latencyP50Ms": 500, "latencyP95Ms": 700, "breaker": "closed"}
        ],
        "usage": [{"seq": sequence, "budget": "team", "windowStart": "2026-11-21T00:00:00Z",
                   "spent": {"costUSD": "0.0001", "tokens": 10, "requests": 1}}]
    })
}

async fn run() {
    let sidecars: usize = std::env::var("SLUICE_BENCH_SIDECARS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rig = Rig::start().await;
    rig.shop().await;
    let started = Instant::now();
    for i in 2..=sidecars {
        rig.pod("shop", &format!("web-{i}"), "web").await;
    }
    eprintln!("{sidecars} pods created in {:?}", started.elapsed());

    let op = rig.operator_process("bench", &[]);
    let (dist, pid) = (op.distribution, op.child.id().expect("running"));
    rig.accepted("chat").await;
    let ca = rig.operator_ca().await;
    let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
    let probe = Sidecar::new(([127, 0, 0, 1], dist).into(), &ca, &token);
    while probe.json("GET", "/readyz", None).await.0 != 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, _) = memory(pid);

    let started = Instant::now();
    let mut streams = Vec::with_capacity(sidecars);
    for i in 1..=sidecars {
        let mut lines = Sidecar::new(([127, 0, 0, 1], dist).into(), &ca, &token)
            .stream("shop", &format!("web-{i}"))
            .await;
        lines.next().await;
        streams.push(lines);
    }
    eprintln!("{sidecars} streams connected in {:?}", started.elapsed());
    let (connected, _) = memory(pid);

    for round in 1..=3u64 {
        let started = Instant::now();
        let posts = (1..=sidecars).map(|i| {
            let s = Sidecar::new(([127, 0, 0, 1], dist).into(), &ca, &token);
            async move {
                let (status, _) = s
                    .json(
                        "POST",
                        "/v1/reports",
                        Some(report(&format!("web-{i}"), round)),
                    )
                    .await;
                status
            }
        });
        use futures::StreamExt as _;
        let ok = futures::stream::iter(posts)
            .buffer_unordered(50)
            .filter(|s| std::future::ready(*s == 200))
            .count()
            .await;
        eprintln!(
            "report round {round}: {ok}/{sidecars} accepted in {:?}",
            started.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (reporting, peak) = memory(pid);
    println!(
        "operator memory: idle {idle:.1} MiB; {sidecars} sidecars connected {connected:.1} MiB; \
         after 3 report rounds {reporting:.1} MiB (peak {peak:.1} MiB)"
    );
    drop(streams);
}
