//! End-to-end scenarios (issue 8): the whole product as a user runs it.
//! Real processes on loopback — the Kubernetes API emulator, the chart
//! applied with the real kubectl, the real `sluice-operator`, sidecars
//! started from the pod spec the webhook produced, mock providers — and
//! real clients: a Rust HTTP client and the official `openai` package.
//! With `SLUICE_E2E_KUBECONFIG` the same scenarios run on a real cluster
//! (see `rig`).
//!
//! Each scenario is its own test with its own rig, so they stay
//! independent and run in parallel.

mod rig;

mod bad_config;
mod budget;
mod control_plane;
mod install;
mod live_change;
mod outage;
mod security;
