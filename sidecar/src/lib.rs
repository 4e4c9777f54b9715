//! Sluice sidecar: the OpenAI-compatible data plane every application
//! request passes through.

pub mod budget;
pub mod cache;
pub mod cluster;
pub mod complexity;
pub mod idempotency;
pub mod metering;
pub mod openai;
pub mod pii;
pub mod ratelimit;
