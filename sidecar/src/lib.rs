//! Sluice sidecar: the OpenAI-compatible data plane every application
//! request passes through.

pub mod body;
pub mod config;
pub mod error;
pub mod ingress;
pub mod openai;
pub mod provider;
pub mod standalone;
