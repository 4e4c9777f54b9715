//! `Provider`: an LLM API endpoint, its credentials, models, prices, limits,
//! timeouts and circuit breaker.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;
use crate::units::{Duration, Money};

/// A Provider is one LLM API endpoint (OpenAI, Anthropic, Azure OpenAI, Gemini,
/// Bedrock, any OpenAI-compatible server, or an offline mock) with the models
/// it serves and how to talk to it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Provider",
    plural = "providers",
    shortname = "llmp",
    category = "sluice",
    namespaced,
    doc = "A Provider is one LLM API endpoint and the models it serves.",
    status = "ProviderStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Err%","type":"string","jsonPath":".status.errorPercent"}"#,
    printcolumn = r#"{"name":"P95","type":"string","jsonPath":".status.latencyP95"}"#,
    printcolumn = r#"{"name":"TTFT","type":"string","jsonPath":".status.ttftP95"}"#,
    printcolumn = r#"{"name":"Open","type":"string","jsonPath":".status.breakersOpen","description":"circuit breakers open / sidecars reporting"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.mock) || self.type == 'mock'").message("spec.mock is only allowed with type: mock").field_path(".mock"),
    validation = Rule::new("!has(self.azure) || self.type == 'azure-openai'").message("spec.azure is only allowed with type: azure-openai").field_path(".azure"),
    validation = Rule::new("!has(self.bedrock) || self.type == 'bedrock'").message("spec.bedrock is only allowed with type: bedrock").field_path(".bedrock"),
    validation = Rule::new("!(self.type in ['openai-compatible', 'azure-openai']) || has(self.endpoint)").message("spec.endpoint is required for types openai-compatible and azure-openai").field_path(".endpoint"),
    validation = Rule::new("self.type != 'bedrock' || has(self.bedrock)").message("spec.bedrock.region is required for type bedrock").field_path(".bedrock"),
    validation = Rule::new("self.type in ['mock', 'openai-compatible'] || has(self.credentials)").message("spec.credentials is required for this provider type (only mock and openai-compatible may run without a key)").field_path(".credentials"),
    validation = Rule::new("self.type != 'mock' || !has(self.credentials)").message("a mock provider takes no credentials").field_path(".credentials"),
)]
pub struct ProviderSpec {
    /// The API this provider speaks.
    #[serde(rename = "type")]
    pub type_: ProviderType,

    /// Base URL of the API. Each type has a default (e.g.
    /// `https://api.openai.com/v1`); required for `openai-compatible` and
    /// `azure-openai` (`https://<resource>.openai.azure.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub endpoint: Option<String>,

    /// Where the API key comes from: a Secret (in a cluster) or an
    /// environment variable (standalone). It is sent in the type's own header
    /// (`Authorization: Bearer`, `x-api-key`, `api-key`, `x-goog-api-key`) or,
    /// for Bedrock, used for SigV4 signing as `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,

    /// Extra static headers sent with every request. Names use letters,
    /// digits and `-`; credentials and `host` cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub headers: BTreeMap<String, String>,

    /// Azure OpenAI settings (type `azure-openai` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,

    /// AWS Bedrock settings (type `bedrock` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockSettings>,

    /// The models this provider serves, with their context windows, prices
    /// and capabilities. Routes may only target models listed here.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub models: Vec<ModelSpec>,

    /// Client-side limits that keep traffic under the provider's quota and
    /// bound queuing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProviderLimits>,

    /// Timeouts for calls to this provider.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// When to stop sending traffic to a failing or slow model of this provider.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSpec,

    /// Behaviour of an offline mock provider (type `mock` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSpec>,
}

/// The API a provider speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    Openai,
    OpenaiCompatible,
    Anthropic,
    AzureOpenai,
    Gemini,
    Bedrock,
    Mock,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Openai => "openai",
            ProviderType::OpenaiCompatible => "openai-compatible",
            ProviderType::Anthropic => "anthropic",
            ProviderType::AzureOpenai => "azure-openai",
            ProviderType::Gemini => "gemini",
            ProviderType::Bedrock => "bedrock",
            ProviderType::Mock => "mock",
        }
    }

    /// The base URL used when `spec.endpoint` is not set.
    pub fn default_endpoint(self, bedrock_region: Option<&str>) -> Option<String> {
        match self {
            ProviderType::Openai => Some("https://api.openai.com/v1".into()),
            ProviderType::Anthropic => Some("https://api.anthropic.com".into()),
            ProviderType::Gemini => Some("https://generativelanguage.googleapis.com".into()),
            ProviderType::Bedrock => {
                bedrock_region.map(|r| format!("https://bedrock-runtime.{r}.amazonaws.com"))
            }
            ProviderType::OpenaiCompatible | ProviderType::AzureOpenai | ProviderType::Mock => None,
        }
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a provider's key comes from: exactly one of `secretRef` or `env`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.env)").message("set exactly one of credentials.secretRef (cluster) or credentials.env (standalone)"))]
pub struct Credentials {
    /// A key of a Secret in the Provider's namespace (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The name of an environment variable of the sidecar (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"))]
    pub env: Option<String>,
}

/// A key in a Secret of the same namespace.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Azure OpenAI settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureSettings {
    /// The `api-version` query parameter sent with every call. Default
    /// `2024-10-21` (the current GA version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    pub api_version: Option<String>,
}

impl AzureSettings {
    /// The version used when `apiVersion` is not set.
    pub const DEFAULT_API_VERSION: &'static str = "2024-10-21";

    pub fn api_version(&self) -> &str {
        self.api_version
            .as_deref()
            .unwrap_or(Self::DEFAULT_API_VERSION)
    }
}

/// AWS Bedrock settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BedrockSettings {
    /// The AWS region, e.g. `us-east-1`; also used for SigV4 signing.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"))]
    pub region: String,
}

/// One model a provider serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSpec {
    /// The provider's own model name (for Azure: the deployment name).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Maximum prompt plus completion tokens. Requests that cannot fit are
    /// never sent here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub context_window: Option<u32>,
    /// Maximum completion tokens the model produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_output_tokens: Option<u32>,
    /// Prices in US dollars per million tokens; used for cost metering,
    /// budgets and the `cost` strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// What the model can do. Requests needing a capability the model lacks
    /// are never sent to it.
    #[serde(default = "default_capabilities")]
    #[schemars(length(max = 5))]
    pub capabilities: Vec<Capability>,
}

fn default_capabilities() -> Vec<Capability> {
    vec![Capability::Chat]
}

/// Prices of a model in US dollars per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pricing {
    /// Dollars per million prompt tokens.
    pub input_per_million: Money,
    /// Dollars per million completion tokens.
    pub output_per_million: Money,
    /// Dollars per million prompt tokens served from the provider's prompt
    /// cache; the input price applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<Money>,
}

/// Something a model can do.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    Chat,
    Tools,
    Vision,
    Json,
    Embeddings,
}

/// Client-side limits for one provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderLimits {
    /// Requests per minute this sidecar sends at most; past it traffic goes
    /// to other targets instead of collecting 429s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Estimated tokens per minute this sidecar sends at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Calls in flight at once; more wait in a queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// Calls allowed to wait for a slot; beyond it requests get `503 overloaded` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
}

/// Timeouts of a call. Unset fields keep the provider's (or the default) value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.firstToken) || !has(self.total) || duration(self.firstToken) <= duration(self.total)").message("timeouts.firstToken must not exceed timeouts.total"))]
#[x_kube(validation = Rule::new("!has(self.connect) || !has(self.total) || duration(self.connect) <= duration(self.total)").message("timeouts.connect must not exceed timeouts.total"))]
pub struct Timeouts {
    /// Establishing the connection, TLS included. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    /// From sending the request to the first token (stream) or the response
    /// headers (non-stream). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token: Option<Duration>,
    /// Longest silence between two stream chunks. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
    /// The whole call. Default 120s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Duration>,
}

/// Timeouts with every value decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedTimeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Timeouts {
    pub const DEFAULT: ResolvedTimeouts = ResolvedTimeouts {
        connect: Duration::from_secs(2),
        first_token: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        total: Duration::from_secs(120),
    };

    /// `self` where set, else `under`.
    pub fn over(&self, under: ResolvedTimeouts) -> ResolvedTimeouts {
        ResolvedTimeouts {
            connect: self.connect.unwrap_or(under.connect),
            first_token: self.first_token.unwrap_or(under.first_token),
            idle: self.idle.unwrap_or(under.idle),
            total: self.total.unwrap_or(under.total),
        }
    }
}

/// When a (provider, model) endpoint stops getting traffic, and how it comes back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.openFor) <= duration(self.maxOpenFor)").message("circuitBreaker.openFor must not exceed circuitBreaker.maxOpenFor"))]
#[x_kube(validation = Rule::new("duration(self.window) >= duration('1s')").message("circuitBreaker.window must be at least 1s"))]
pub struct CircuitBreakerSpec {
    /// Open after this many failures in a row.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: u32,
    /// Open when this percentage of calls in `window` failed…
    #[serde(default = "default_error_rate_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub error_rate_percent: u32,
    /// …over this rolling window…
    #[serde(default = "default_window")]
    pub window: Duration,
    /// …once the window holds at least this many calls.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1))]
    pub min_requests: u32,
    /// Open when the p95 latency (time to first token for streams) in the
    /// window exceeds this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95: Option<Duration>,
    /// Open when the p95 latency exceeds this multiple of its rolling baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub latency_drift_factor: Option<f64>,
    /// How long the breaker stays open the first time; doubles on each trip
    /// in a row.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
    /// The longest the breaker stays open.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: Duration,
    /// Probe calls allowed when half-open; all must succeed to close.
    #[serde(default = "default_half_open_probes")]
    #[schemars(range(min = 1, max = 100))]
    pub half_open_probes: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_error_rate_percent() -> u32 {
    50
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_min_requests() -> u32 {
    20
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_max_open_for() -> Duration {
    Duration::from_secs(300)
}
fn default_half_open_probes() -> u32 {
    3
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            error_rate_percent: default_error_rate_percent(),
            window: default_window(),
            min_requests: default_min_requests(),
            latency_p95: None,
            latency_drift_factor: None,
            open_for: default_open_for(),
            max_open_for: default_max_open_for(),
            half_open_probes: default_half_open_probes(),
        }
    }
}

/// An offline provider's behaviour, for demos, tests and load tests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockSpec {
    /// The assistant's reply. Default: a short sentence naming the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub reply: Option<String>,
    /// Delay before the first byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Duration>,
    /// How many chunks a streamed reply is cut into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub stream_chunks: Option<u32>,
    /// Share of calls that fail, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failure_rate_percent: Option<u32>,
    /// HTTP status of a failed call. Default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub fail_with: Option<u16>,
}

/// What the sidecars report about a provider, aggregated by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `CredentialsResolved`, `Ready` and `Healthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Sidecars that reported on this provider recently.
    #[serde(default)]
    pub sidecars: u32,
    /// `Healthy`, `Degraded` (some breakers open or errors above 5 %),
    /// `Down` (every breaker open) or `Unknown` (no reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ProviderState>,
    /// Error percentage over all models, as shown by `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_percent: Option<String>,
    /// Worst p95 latency over all models, e.g. `840ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95: Option<String>,
    /// Worst p95 time to first token over all models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95: Option<String>,
    /// Open breakers / sidecars reporting, e.g. `1/12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breakers_open: Option<String>,
    /// Per model figures across sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelStatus>,
}

/// A provider's overall state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProviderState {
    Healthy,
    Degraded,
    Down,
    Unknown,
}

/// One model's figures across sidecars.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    pub name: String,
    /// Requests per minute over the last report window.
    #[serde(default)]
    pub requests_per_minute: u64,
    /// Failed share of requests, in percent with one decimal, e.g. `"2.5"`.
    #[serde(default)]
    pub error_percent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_ms: Option<u64>,
    /// Breaker states of this model across sidecars.
    #[serde(default)]
    pub breakers: BreakerCounts,
    /// How often its breakers opened in the sidecars' latest report
    /// intervals, counting those that closed again since (flapping).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub breakers_opened: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many sidecars see a breaker in each state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerCounts {
    pub closed: u32,
    pub open: u32,
    pub half_open: u32,
}
