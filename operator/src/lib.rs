//! Sluice operator: turns `Provider`, `LLMRoute` and `Budget` objects into
//! per-pod sidecar configuration, and what the sidecars report back into
//! those objects' status.
//!
//! The logic is pure and lives in [`compile`] (cluster state → snapshots and
//! conditions), [`allowance`] (budget shares per sidecar) and
//! [`aggregate`] (reports → status); controllers and servers are thin I/O
//! around them:
//! - [`state`]: the one [`state::Context`], reflector caches, the compile loop;
//! - [`controller`]: status of each kind, written with server-side apply;
//! - [`distribute`]: the sidecar-facing HTTPS server (wire contract there),
//!   with [`auth`] (TokenReview + pod check) and [`hub`] (per-pod channels);
//! - [`lease`]: leader election, [`leader_pod`]: the leader label the
//!   distribution Service selects; [`tls`]: the serving certificate;
//! - [`events`]: Kubernetes Events on breaker, budget and rejection changes;
//! - [`metrics`], [`options`], [`run`] (wiring).

pub mod admission;
pub mod aggregate;
pub mod allowance;
pub mod auth;
pub mod compile;
pub mod controller;
pub mod distribute;
pub mod error;
pub mod events;
pub mod hub;
pub mod leader_pod;
pub mod lease;
pub mod metrics;
pub mod options;
pub mod run;
pub mod state;
pub mod tls;
pub mod webhook;
