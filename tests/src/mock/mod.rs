//! Mock upstream LLM providers for tests and benchmarks: OpenAI, Azure
//! OpenAI, Anthropic, Gemini and Bedrock, each speaking its provider's real
//! wire format over loopback and able to delay, fail with the provider's real
//! error bodies and headers, cut a stream mid-way, or hang.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use sluice_tests::mock::{Behaviour, ErrorKind, Fault, MockConfig, MockProvider, ProviderKind, RateLimit};
//!
//! let mock = MockProvider::start(ProviderKind::OpenAi, MockConfig::default()).await?;
//! // The next 3 model calls fail with OpenAI's 500, then one 429 with hints, then success.
//! mock.enqueue(3, Behaviour::error(ErrorKind::ServerError));
//! mock.enqueue(1, Behaviour::error(ErrorKind::RateLimited(RateLimit::after(Duration::from_secs(2)))));
//! // Streams after that are cut after 4 frames, each frame 10 ms apart.
//! mock.set_default(Behaviour::fault(Fault::CutAfter { after: 4 }).with_chunk_delay(Duration::from_millis(10)));
//! let base = mock.url(); // http://127.0.0.1:PORT — point the adapter here
//! // ... drive the sidecar ...
//! assert_eq!(mock.request_count(), 5);
//! let first = &mock.requests()[0];
//! assert_eq!(first.header("authorization"), Some("Bearer mock-key"));
//! # let _ = base; Ok(()) }
//! ```
//!
//! Scripting: a model call takes a step queued for its model
//! ([`MockHandle::enqueue_for`]), else a shared step ([`MockHandle::enqueue`]),
//! else its model's default, else the shared default. Auth failures, unknown
//! paths, unparsable bodies, unknown models ([`MockConfig::models`]),
//! over-long prompts ([`MockConfig::context_window`]) and calls over
//! [`MockConfig::requests_per_minute`] get the provider's own answer without
//! consuming a step. Reply text and token usage are deterministic (rules in
//! `reply.rs`: tokens are `ceil(chars / 4)`). A process started from the
//! `mock-provider` binary is scripted through its `/__mock/` control API.
//!
//! Layout: [`behaviour`] is the one fault model; `server` the hyper server
//! that applies transport faults (delays, hangs, cuts) the same way for every
//! kind; one module per provider renders calls, errors and in-stream errors
//! in that provider's format; [`eventstream`] is the AWS binary framing;
//! [`client`] a plain hyper client and SSE reader for tests.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod behaviour;
mod body;
pub mod client;
mod control;
pub mod eventstream;
pub mod gemini;
mod handle;
pub mod net;
pub mod openai;
mod record;
mod render;
mod reply;
mod server;
pub mod sigv4;
pub mod tls;

use std::fmt;
use std::str::FromStr;

pub use behaviour::{Behaviour, ErrorKind, Fault, RateLimit};
pub use body::MockBody;
pub use handle::MockHandle;
pub use record::RecordedRequest;
pub use reply::token_count;
pub use server::MockError;

use bytes::Bytes;

use render::{Rendered, RequestView, Routed};
use reply::{Call, Reply};

/// The API key (Bedrock: the access key id) a mock expects by default.
pub const DEFAULT_API_KEY: &str = "mock-key";

/// Which provider's wire format a mock speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// `api.openai.com`: `Authorization: Bearer`, `/v1/chat/completions`.
    OpenAi,
    /// Azure OpenAI: `api-key`, `/openai/deployments/{d}/chat/completions`.
    Azure,
    /// Anthropic Messages: `x-api-key`, `anthropic-version`, `/v1/messages`.
    Anthropic,
    /// Gemini API: `x-goog-api-key` or `?key=`, `:generateContent`.
    Gemini,
    /// Bedrock runtime: SigV4, `/model/{id}/converse`, event-stream framing.
    Bedrock,
}

impl ProviderKind {
    /// Every kind, for tests that run the same check on all of them.
    pub const ALL: [ProviderKind; 5] = [
        Self::OpenAi,
        Self::Azure,
        Self::Anthropic,
        Self::Gemini,
        Self::Bedrock,
    ];

    /// The name used on the command line and in docs.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Bedrock => "bedrock",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown provider kind {s:?} (openai|azure|anthropic|gemini|bedrock)")
            })
    }
}

/// How a mock is set up when it starts. Behaviour can change later through
/// the [`MockHandle`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// The key the mock accepts (Bedrock: the access key id in the SigV4
    /// credential scope). `None` accepts any well-formed credential, but a
    /// missing one is still refused with the provider's own answer.
    pub api_key: Option<String>,
    /// Bedrock: the region the SigV4 credential scope must name (`None`: any).
    pub region: Option<String>,
    /// Bedrock: the secret access key. When set, SigV4 signatures are
    /// verified (see [`sigv4`]); otherwise only their form is checked.
    pub aws_secret_key: Option<String>,
    /// Models (Azure: deployments) that exist; a call naming another gets the
    /// provider's 404. Empty: every model exists.
    pub models: Vec<String>,
    /// Context window in tokens (by the rule in `token_count`); a prompt
    /// whose tokens plus `max_tokens` exceed it gets the provider's
    /// context-length error. `None`: unlimited.
    pub context_window: Option<u32>,
    /// Model calls accepted per rolling minute; past it the mock answers
    /// its provider's rate-limit error with an exact retry hint, before the
    /// script is consulted. `None`: unlimited.
    pub requests_per_minute: Option<u32>,
    /// How many recent requests the mock keeps for inspection (counts go on
    /// past it), so long benchmark runs stay bounded.
    pub keep_requests: usize,
    /// A fixed reply text instead of the default deterministic one.
    pub reply: Option<String>,
    /// Behaviour once the script is empty.
    pub default: Behaviour,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            api_key: Some(DEFAULT_API_KEY.to_owned()),
            region: None,
            aws_secret_key: None,
            models: Vec::new(),
            context_window: None,
            requests_per_minute: None,
            keep_requests: 10_000,
            reply: None,
            default: Behaviour::ok(),
        }
    }
}

/// Starts mocks. A namespace: the running server is a [`MockHandle`].
pub struct MockProvider;

impl MockProvider {
    /// Start a `kind` mock on `127.0.0.1` on a free port.
    pub async fn start(kind: ProviderKind, config: MockConfig) -> Result<MockHandle, MockError> {
        server::start(kind, config, ([127, 0, 0, 1], 0).into(), None).await
    }

    /// Start a `kind` mock serving HTTPS on `127.0.0.1` with a fresh CA
    /// ([`MockHandle::ca_pem`]) and a certificate for `localhost` and
    /// `127.0.0.1`.
    pub async fn start_tls(
        kind: ProviderKind,
        config: MockConfig,
    ) -> Result<MockHandle, MockError> {
        let tls = tls::generate()?;
        server::start(kind, config, ([127, 0, 0, 1], 0).into(), Some(tls)).await
    }

    /// Start a `kind` mock on `addr` (the binary's `--listen`).
    pub async fn start_on(
        kind: ProviderKind,
        config: MockConfig,
        addr: std::net::SocketAddr,
    ) -> Result<MockHandle, MockError> {
        server::start(kind, config, addr, None).await
    }

    /// Start a `kind` mock serving HTTPS on `addr`.
    pub async fn start_on_tls(
        kind: ProviderKind,
        config: MockConfig,
        addr: std::net::SocketAddr,
    ) -> Result<MockHandle, MockError> {
        server::start(kind, config, addr, Some(tls::generate()?)).await
    }
}

/// Per-request facts every renderer may use.
pub(crate) struct Ctx<'a> {
    pub config: &'a MockConfig,
    pub call: Option<&'a Call>,
    /// Sequence number of the request on this mock (1-based).
    pub seq: u64,
    /// The latency the script added, reported where providers report one.
    pub latency_ms: u64,
}

impl Ctx<'_> {
    /// A 32-hex-digit id derived from the sequence number.
    pub(crate) fn hex_id(&self) -> String {
        format!("{:032x}", 0x5eed_0000_u64 << 32 | self.seq)
    }

    /// The same id shaped as a UUID (AWS and Azure request ids).
    pub(crate) fn uuid(&self) -> String {
        let h = self.hex_id();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    pub(crate) fn model(&self) -> &str {
        self.call.map_or("unknown", |c| c.model.as_str())
    }
}

// One exhaustive match per question a provider answers, so a new kind cannot
// be forgotten.

fn route(kind: ProviderKind, req: &RequestView<'_>) -> Routed {
    match kind {
        ProviderKind::OpenAi => openai::route(req),
        ProviderKind::Azure => azure::route(req),
        ProviderKind::Anthropic => anthropic::route(req),
        ProviderKind::Gemini => gemini::route(req),
        ProviderKind::Bedrock => bedrock::route(req),
    }
}

fn success(kind: ProviderKind, call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    match kind {
        ProviderKind::OpenAi => openai::success(openai::Flavor::OpenAi, call, reply, ctx),
        ProviderKind::Azure => openai::success(openai::Flavor::Azure, call, reply, ctx),
        ProviderKind::Anthropic => anthropic::success(call, reply, ctx),
        ProviderKind::Gemini => gemini::success(call, reply, ctx),
        ProviderKind::Bedrock => bedrock::success(call, reply, ctx),
    }
}

fn error(kind: ProviderKind, error: &ErrorKind, ctx: &Ctx<'_>) -> Rendered {
    match kind {
        ProviderKind::OpenAi => openai::error(error, ctx),
        ProviderKind::Azure => azure::error(error, ctx),
        ProviderKind::Anthropic => anthropic::error(error, ctx),
        ProviderKind::Gemini => gemini::error(error, ctx),
        ProviderKind::Bedrock => bedrock::error(error, ctx),
    }
}

fn stream_error(kind: ProviderKind, error: &ErrorKind, ctx: &Ctx<'_>) -> Bytes {
    match kind {
        ProviderKind::OpenAi | ProviderKind::Azure => openai::stream_error(error, ctx),
        ProviderKind::Anthropic => anthropic::stream_error(error, ctx),
        ProviderKind::Gemini => gemini::stream_error(error, ctx),
        ProviderKind::Bedrock => bedrock::stream_error(error, ctx),
    }
}
