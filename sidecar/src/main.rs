//! The `sluice-sidecar` binary.

fn main() {}
