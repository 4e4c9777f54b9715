//! Sluice sidecar: the OpenAI-compatible data plane every application
//! request passes through.

pub mod messages;
pub mod openai;
pub mod provider;
