//! PROVISIONAL: the adapter contract as agreed with the `sidecar` branch,
//! so the `adapters` branch compiles before that branch's trait lands.
//! On merge this file is replaced by the `sidecar` branch's version.

use std::time::Duration;

use sluice_crds::common::FailureClass;

use crate::openai::{ChatChunk, Usage};

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod wire;

/// What went wrong with an upstream call, classified once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// Safe to log: never prompt text or keys.
    pub message: String,
}

/// A request ready for egress.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub method: http::Method,
    pub url: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// One translated event of a provider stream.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    Chunk(ChatChunk),
    Usage(Usage),
    Done,
}

/// Incremental stream translation: bytes in, events out.
pub trait StreamDecoder: Send {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>>;
    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>>;
}
