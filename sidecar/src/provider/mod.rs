//! Provider adapters: one file per provider type behind one small trait.
//!
//! An adapter is pure translation, with no I/O: it builds the upstream
//! request from an OpenAI [`ChatRequest`], reads the upstream's response or
//! stream back into OpenAI shapes, and says what kind of failure a status
//! and body are. The one place that talks to providers is `egress`; the one
//! place that decides what a failure means for routing is `attempt`.
//!
//! Every adapter maps every upstream outcome to exactly one
//! [`FailureClass`] (DESIGN.md, "Failure semantics"), including errors
//! hidden in a 200 (HTML, invalid JSON, error objects → `malformed`) and
//! refusals (`refusal`), and parses the provider's retry hints.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sluice_crds::provider::MockSpec;
use sluice_crds::snapshot::Credential;
use sluice_crds::{FailureClass, ProviderType};

use crate::openai::{
    ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse, Usage,
};

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod gemini;
pub mod mock;
pub mod openai;
pub mod retry_hint;
pub mod sse;
pub(crate) mod wire;

/// Where and how requests for one Provider go: everything an adapter needs
/// to build a request, and nothing it would have to look up.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The Provider's name, for logs and metrics.
    pub provider: String,
    pub kind: ProviderType,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    /// `mock://<provider>` for the in-process mock provider.
    pub base_url: String,
    /// The key; goes into the type's own header and nowhere else.
    pub credential: Option<Credential>,
    /// `spec.headers`, validated once when the config is loaded.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `spec.azure.apiVersion` (azure-openai).
    pub api_version: Option<String>,
    /// `spec.bedrock.region` (bedrock).
    pub region: Option<String>,
    /// `spec.mock` (mock).
    pub mock: Option<MockSpec>,
}

/// A request ready for egress. `url` is absolute.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    pub url: String,
    /// Includes the credential header; never log these.
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamRequest {
    /// A JSON `POST` with `content-type` set and the endpoint's static headers.
    pub fn json_post(endpoint: &Endpoint, url: String, body: Bytes) -> Self {
        // Room for the type, the credential and the static headers, plus
        // the propagated ones (request id, traceparent).
        let mut headers = HeaderMap::with_capacity(4 + endpoint.headers.len());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in &endpoint.headers {
            headers.insert(name.clone(), value.clone());
        }
        Self {
            method: Method::POST,
            url,
            headers,
            body,
        }
    }
}

/// Why a call to a provider did not succeed: one class, the status if there
/// was one, the provider's retry hint, and a message that is safe to log and
/// to show (never the prompt, never a key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    pub status: Option<u16>,
    /// From `retry-after`, `retry-after-ms`, `x-ratelimit-reset-*`, …;
    /// `None` when absent or not believable.
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl Failure {
    /// A failure without a status or retry hint.
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            status: None,
            retry_after: None,
            message: message.into(),
        }
    }

    /// Sets the upstream status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.class)?;
        if let Some(s) = self.status {
            write!(f, " (HTTP {s})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a stream decoder yields, in OpenAI terms.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// A `chat.completion.chunk`. `raw` is the upstream's own JSON of the
    /// chunk when it already is OpenAI's (pass-through): it is then sent to
    /// the client byte for byte instead of re-serialized. Translating
    /// adapters set `raw: None`.
    Chunk {
        chunk: ChatChunk,
        raw: Option<Bytes>,
    },
    /// A `chat.completion.chunk` of an OpenAI-format upstream, passed
    /// through without being parsed into a [`ChatChunk`] (only scanned).
    Pass(PassChunk),
    /// Token usage of the whole response (an OpenAI usage chunk, Anthropic
    /// `message_delta` usage, …). May come more than once; the last wins.
    Usage(Usage),
    /// The upstream's end of stream (`[DONE]`, `message_stop`, …). A stream
    /// that ends without it is `stream-interrupted`.
    Done,
}

impl StreamEvent {
    /// Whether this event carries output for the client: the commit point.
    /// Role-only deltas, usage and pings are not tokens.
    pub fn is_token(&self) -> bool {
        match self {
            StreamEvent::Chunk { chunk, .. } => chunk.choices.iter().any(|c| {
                c.delta.content.as_deref().is_some_and(|s| !s.is_empty())
                    || c.delta.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                    || c.delta.refusal.is_some()
                    || c.finish_reason.is_some()
            }),
            StreamEvent::Pass(p) => p.token,
            StreamEvent::Usage(_) | StreamEvent::Done => false,
        }
    }
}

/// A pass-through chunk: its SSE frame for the client (`data: <json>\n\n`,
/// the upstream's own bytes) and what a scan found in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassChunk {
    pub frame: Bytes,
    /// Whether it carries output: the commit point.
    pub token: bool,
    /// No choices, only usage: the chunk a client that did not ask for
    /// `include_usage` must not see.
    pub usage_only: bool,
}

impl PassChunk {
    /// The chunk's JSON (the frame without `data: ` and the blank line).
    pub fn json(&self) -> &[u8] {
        let f = &self.frame[..];
        f.strip_prefix(b"data: ")
            .and_then(|f| f.strip_suffix(b"\n\n"))
            .unwrap_or(f)
    }

    /// The full parse, for a framing that translates (Anthropic ingress).
    pub fn parse(&self) -> Option<ChatChunk> {
        serde_json::from_slice(self.json())
            .ok()
            .or_else(|| serde_json::from_value(serde_json::from_slice(self.json()).ok()?).ok())
    }
}

/// Context a stream decoder may need to build chunks (translating adapters
/// have to invent the id and echo the model).
#[derive(Clone, Debug)]
pub struct StreamContext {
    /// The model to put in chunks: the upstream model.
    pub model: String,
    /// `chatcmpl-…` id to use when the provider gives none (empty for
    /// pass-through adapters, which keep the provider's chunks as they are).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Cap on one SSE line / event, bytes.
    pub max_line: usize,
}

/// Turns upstream stream bytes into OpenAI events, incrementally: bytes go
/// in as they arrive (split anywhere), events come out as soon as they are
/// complete. Never buffers more than one event (bounded by
/// [`StreamContext::max_line`]).
pub trait StreamDecoder: Send {
    /// Feeds the next bytes. A mid-stream error event of the provider comes
    /// out as an `Err` with its class.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>>;
    /// [`StreamDecoder::feed`] given shared bytes, which a pass-through
    /// decoder can slice instead of copying.
    fn feed_shared(&mut self, bytes: Bytes) -> Vec<Result<StreamEvent, Failure>> {
        self.feed(&bytes)
    }
    /// The upstream body ended: flushes what is left. Does not itself
    /// decide whether `Done` was seen; the caller does.
    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>>;
}

/// One provider type's translation.
pub trait Adapter: Send + Sync {
    /// Builds the chat request for `upstream_model`. `stream` asks for the
    /// provider's streaming API (with usage reporting turned on).
    fn build_chat(
        &self,
        endpoint: &Endpoint,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure>;

    /// Like [`Adapter::build_chat`], given also the client's raw body. The
    /// OpenAI family overrides this to pass the body through, rewriting only
    /// what it must; others translate from `req`.
    fn build_chat_raw(
        &self,
        endpoint: &Endpoint,
        raw: &[u8],
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        let _ = raw;
        self.build_chat(endpoint, req, upstream_model, stream)
    }

    /// Reads a whole non-stream response with a 2xx status. Errors hidden in
    /// a 200 are `malformed`; refused or filtered output is `refusal`.
    fn parse_chat(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, Failure>;

    /// Reads a whole non-stream response with a 2xx status into the body
    /// for the client (OpenAI JSON) and its usage. Translating adapters
    /// re-encode what [`Adapter::parse_chat`] read; the OpenAI family
    /// overrides it to pass the upstream's bytes through untouched.
    fn read_chat(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ChatAnswer, Failure> {
        let parsed = self.parse_chat(status, headers, &body)?;
        let body = serde_json::to_vec(&parsed).map(Bytes::from).map_err(|e| {
            Failure::new(
                FailureClass::Malformed,
                format!("cannot encode response: {e}"),
            )
        })?;
        Ok(ChatAnswer {
            body,
            usage: parsed.usage,
        })
    }

    /// A decoder for one streamed response with a 2xx status.
    fn stream_decoder(&self, ctx: &StreamContext) -> Box<dyn StreamDecoder>;

    /// What a non-2xx response (or any response the adapter refuses) means.
    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure;

    /// Builds an embeddings request. Not every provider has one.
    fn build_embeddings(
        &self,
        endpoint: &Endpoint,
        req: &EmbeddingsRequest,
        upstream_model: &str,
    ) -> Result<UpstreamRequest, Failure> {
        let _ = (req, upstream_model);
        Err(embeddings_unsupported(endpoint.kind))
    }

    /// Reads an embeddings response with a 2xx status.
    fn parse_embeddings(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<EmbeddingsResponse, Failure> {
        let _ = (status, headers, body);
        Err(Failure::new(
            FailureClass::BadRequest,
            "embeddings are not supported by this provider",
        ))
    }
}

/// A whole chat answer: the body for the client and its usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatAnswer {
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// The failure every adapter without an embeddings API returns.
pub fn embeddings_unsupported(kind: ProviderType) -> Failure {
    Failure::new(
        FailureClass::BadRequest,
        format!("embeddings are not supported by provider type {kind}"),
    )
}

/// The adapter of a provider type: the one dispatch, matched exhaustively.
pub fn adapter(kind: ProviderType) -> &'static dyn Adapter {
    match kind {
        ProviderType::Openai => &openai::OpenAi,
        ProviderType::OpenaiCompatible => &openai::OpenAi,
        ProviderType::AzureOpenai => &azure::Azure,
        ProviderType::Mock => &mock::Mock,
        ProviderType::Anthropic => &anthropic::Anthropic,
        ProviderType::Gemini => &gemini::Gemini,
        ProviderType::Bedrock => &bedrock::Bedrock,
    }
}

/// The shared part of classifying an HTTP error status, for adapters whose
/// provider has nothing more specific to say. `body_hint` is lowercased
/// text from the error body (code/type/message) used to spot quota, context
/// length and content-filter errors.
pub fn classify_status(status: StatusCode, headers: &HeaderMap, body_hint: &str) -> Failure {
    let code = status.as_u16();
    let class = if body_hint.contains("insufficient_quota")
        || body_hint.contains("quota exceeded")
        || body_hint.contains("billing")
    {
        FailureClass::QuotaExhausted
    } else if body_hint.contains("context_length_exceeded")
        || body_hint.contains("context length")
        || body_hint.contains("maximum context")
        || body_hint.contains("too many tokens")
    {
        FailureClass::ContextLength
    } else if body_hint.contains("content_filter")
        || body_hint.contains("content_policy")
        || body_hint.contains("responsibleaipolicyviolation")
    {
        FailureClass::ContentFilter
    } else {
        match code {
            401 | 403 => FailureClass::Auth,
            404 => FailureClass::NotFound,
            408 => FailureClass::TimeoutHeaders,
            413 => FailureClass::ContextLength,
            429 => FailureClass::RateLimited,
            503 | 529 => FailureClass::Overloaded,
            500..=599 => FailureClass::ServerError,
            400..=499 => FailureClass::BadRequest,
            // A non-error status we were asked to classify: the adapter
            // refused it as a response.
            _ => FailureClass::Malformed,
        }
    };
    Failure {
        class,
        status: Some(code),
        retry_after: retry_hint::from_headers(headers, std::time::SystemTime::now()),
        message: format!("upstream answered HTTP {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let h = HeaderMap::new();
        let c = |s: u16, hint: &str| {
            classify_status(StatusCode::from_u16(s).expect("status"), &h, hint).class
        };
        assert_eq!(c(401, ""), FailureClass::Auth);
        assert_eq!(c(403, ""), FailureClass::Auth);
        assert_eq!(c(404, ""), FailureClass::NotFound);
        assert_eq!(c(429, ""), FailureClass::RateLimited);
        assert_eq!(c(429, "insufficient_quota"), FailureClass::QuotaExhausted);
        assert_eq!(
            c(400, "context_length_exceeded"),
            FailureClass::ContextLength
        );
        assert_eq!(c(400, "content_filter"), FailureClass::ContentFilter);
        assert_eq!(c(400, ""), FailureClass::BadRequest);
        assert_eq!(c(500, ""), FailureClass::ServerError);
        assert_eq!(c(503, ""), FailureClass::Overloaded);
        assert_eq!(c(529, ""), FailureClass::Overloaded);
    }

    #[test]
    fn every_type_has_an_adapter() {
        for kind in [
            ProviderType::Openai,
            ProviderType::OpenaiCompatible,
            ProviderType::Anthropic,
            ProviderType::AzureOpenai,
            ProviderType::Gemini,
            ProviderType::Bedrock,
            ProviderType::Mock,
        ] {
            let _ = adapter(kind);
        }
    }
}
