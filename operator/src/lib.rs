//! Sluice operator: turns `Provider`, `LLMRoute` and `Budget` objects into
//! per-pod sidecar configuration, and what the sidecars report back into
//! those objects' status.
//!
//! The logic is pure and lives in [`compile`] (cluster state → snapshots and
//! conditions), [`allowance`] (budget shares per sidecar) and
//! [`aggregate`] (reports → status); controllers and servers are thin I/O
//! around them.

pub mod aggregate;
pub mod allowance;
pub mod compile;
pub mod webhook;
