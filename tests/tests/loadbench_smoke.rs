//! `loadbench` runs end to end at a low rate for a few seconds and prints its
//! table. Numbers are never asserted: performance is measured by running the
//! benchmark, not by timed tests (DESIGN.md).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The sidecar binary beside `loadbench` (a workspace `cargo test` builds
/// it; built here when this test runs on its own).
fn sidecar() -> PathBuf {
    sluice_tests::tools::workspace_binary(
        Path::new(env!("CARGO_BIN_EXE_loadbench")),
        "sluice-sidecar",
    )
}

#[test]
fn loadbench_prints_its_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadbench"))
        .args([
            "run",
            "--rounds",
            "1",
            "--round-secs",
            "0.3",
            "--tail-samples",
            "10",
            "--max-rounds",
            "1",
            "--rates",
            "50",
            "--stream-rate",
            "20",
            "--connections",
            "2",
            "--streams",
            "10",
            "--max-secs",
            "60",
            "--sidecar",
        ])
        .arg(sidecar())
        .output()
        .expect("loadbench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadbench failed:\n{stderr}");
    for expected in [
        "| metric | direct | bare proxy | sidecar | sidecar ÷ proxy | target | met |",
        "added** latency @50 req/s p50",
        "max throughput, 2 connections",
        "stream TTFB @20 req/s",
        "gateway CPU per request",
        "RSS with 10 open streams",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}
