//! Sluice sidecar: the OpenAI-compatible data plane every application
//! request passes through.

pub mod balance;
pub mod breaker;
pub mod cluster;
pub mod complexity;
pub mod openai;
