//! A stand-in for provider types whose adapter is not in this build yet:
//! every call fails as `bad-request` with a clear message, so a route naming
//! one falls back or answers an error instead of crashing.

use http::{HeaderMap, StatusCode};
use sluice_crds::{FailureClass, ProviderType};

use super::{
    Adapter, Endpoint, Failure, StreamContext, StreamDecoder, StreamEvent, UpstreamRequest,
};
use crate::openai::{ChatRequest, ChatResponse};

/// An adapter that refuses every request for its type.
#[derive(Debug)]
pub struct Unsupported(pub ProviderType);

pub const ANTHROPIC: Unsupported = Unsupported(ProviderType::Anthropic);
pub const GEMINI: Unsupported = Unsupported(ProviderType::Gemini);
pub const BEDROCK: Unsupported = Unsupported(ProviderType::Bedrock);

impl Unsupported {
    fn failure(&self) -> Failure {
        Failure::new(
            FailureClass::BadRequest,
            format!("provider type {} is not supported by this build", self.0),
        )
    }
}

struct NoStream;

impl StreamDecoder for NoStream {
    fn feed(&mut self, _bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>> {
        Vec::new()
    }
    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>> {
        Vec::new()
    }
}

impl Adapter for Unsupported {
    fn build_chat(
        &self,
        _endpoint: &Endpoint,
        _req: &ChatRequest,
        _upstream_model: &str,
        _stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        Err(self.failure())
    }

    fn parse_chat(
        &self,
        _status: StatusCode,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Result<ChatResponse, Failure> {
        Err(self.failure())
    }

    fn stream_decoder(&self, _ctx: &StreamContext) -> Box<dyn StreamDecoder> {
        Box::new(NoStream)
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, _body: &[u8]) -> Failure {
        super::classify_status(status, headers, "")
    }
}
