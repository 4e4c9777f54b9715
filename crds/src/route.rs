//! `LLMRoute`: a virtual model name applications send, and how its requests
//! are routed, retried, failed over, cached and scrubbed.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::common::{BudgetRef, Condition, LabelSelector, ModelRef, ProviderRef, Trigger};
use crate::provider::Timeouts;
use crate::units::Duration;

/// An LLMRoute claims a model name (`"model": "chat"`) for the sidecars of
/// the pods it selects and says which provider models answer it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "LLMRoute",
    plural = "llmroutes",
    singular = "llmroute",
    shortname = "llmr",
    category = "sluice",
    namespaced,
    doc = "An LLMRoute claims a model name for the sidecars of the pods it selects and says which provider models answer it.",
    status = "LLMRouteStatus",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"Targets","type":"integer","jsonPath":".status.targetCount"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.synced","description":"sidecars on the current config / sidecars selected"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.healthy","description":"healthy targets / targets"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("self.strategy != 'weighted' || self.targets.exists(t, t.weight > 0)").message("with strategy weighted at least one target needs a weight above 0").field_path(".targets"),
    validation = Rule::new("!has(self.aliases) || !(self.model in self.aliases)").message("an alias must differ from spec.model").field_path(".aliases"),
)]
pub struct LLMRouteSpec {
    /// The model name clients send, e.g. `chat`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
    )]
    pub model: String,

    /// Other model names this route also answers, e.g. `gpt-4o`, so
    /// applications can keep the names they already send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 128),
            regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub aliases: Vec<String>,

    /// Which pods' sidecars serve this route. Empty: every injected pod in
    /// the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// How targets are ordered for each request.
    #[serde(default)]
    pub strategy: Strategy,

    /// The provider models that answer this route.
    #[schemars(length(min = 1, max = 32))]
    pub targets: Vec<Target>,

    /// Content-based routing: the first rule whose `match` fits the request
    /// replaces `targets` (and optionally `strategy`) for that request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rules: Vec<RouteRule>,

    /// Retries of the same target.
    #[serde(default)]
    pub retry: RetrySpec,

    /// Moving on to the next target when one fails.
    #[serde(default)]
    pub fallback: FallbackSpec,

    /// Overrides of the providers' timeouts for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Response caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,

    /// Budgets this route's traffic counts against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub budget_refs: Vec<BudgetRef>,

    /// Detecting personal data and secrets in prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiSpec>,
}

impl LLMRouteSpec {
    /// Every target requests may be sent to: the route's and its rules'.
    pub fn all_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets
            .iter()
            .chain(self.rules.iter().flat_map(|r| &r.targets))
    }

    /// Every (Provider name, model) the route may call: its targets, its
    /// rules' targets and the semantic cache's embedding model.
    pub fn uses(&self) -> impl Iterator<Item = (&str, &str)> {
        self.all_targets()
            .map(|t| (t.provider_ref.name.as_str(), t.model.as_str()))
            .chain(
                self.cache
                    .iter()
                    .filter_map(|c| c.embedding.as_ref())
                    .map(|e| (e.provider_ref.name.as_str(), e.model.as_str())),
            )
    }
}

/// How a route orders its targets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In order of `priority` (lowest first), then as listed; the rest are fallbacks.
    #[default]
    Priority,
    /// Smooth weighted round robin by `weight`.
    Weighted,
    /// Lowest recent p95 latency / time to first token, with a little exploration.
    Latency,
    /// Cheapest capable target for the request's estimated tokens.
    Cost,
    /// Fewest estimated tokens in flight.
    LeastBusy,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::Weighted => "weighted",
            Strategy::Latency => "latency",
            Strategy::Cost => "cost",
            Strategy::LeastBusy => "least-busy",
        }
    }
}

/// A provider model a route may send requests to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// The Provider to call.
    pub provider_ref: ProviderRef,
    /// One of the Provider's models.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Share of traffic under the `weighted` strategy.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: u32,
    /// Order under the `priority` strategy, lowest first; ties keep the listed order.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: u32,
}

fn default_weight() -> u32 {
    1
}

impl Target {
    /// The provider model this target names.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            provider_ref: self.provider_ref.clone(),
            model: self.model.clone(),
        }
    }
}

/// A content-based routing rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.strategy) || self.strategy != 'weighted' || self.targets.exists(t, t.weight > 0)").message("with strategy weighted at least one target needs a weight above 0"))]
pub struct RouteRule {
    /// A name for metrics and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// What the request must look like; every condition given must hold.
    #[serde(rename = "match")]
    pub match_: RuleMatch,
    /// Where matching requests go.
    #[schemars(length(min = 1, max = 32))]
    pub targets: Vec<Target>,
    /// Strategy for these targets; the route's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// Conditions on a request. All given conditions must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.complexity) || has(self.minInputTokens) || has(self.maxInputTokens) || has(self.hasTools) || has(self.hasImages) || has(self.headers)").message("a rule must match on something; unconditional targets belong in spec.targets"))]
#[x_kube(validation = Rule::new("!has(self.minInputTokens) || !has(self.maxInputTokens) || self.minInputTokens <= self.maxInputTokens").message("minInputTokens must not exceed maxInputTokens"))]
pub struct RuleMatch {
    /// The prompt's complexity tier from the sidecar's local scorer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<Complexity>,
    /// At least this many estimated prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_input_tokens: Option<u32>,
    /// At most this many estimated prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u32>,
    /// Whether the request offers tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_tools: Option<bool>,
    /// Whether the request contains images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_images: Option<bool>,
    /// Request headers that must be present with exactly these values.
    /// Names are matched case-insensitively.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub headers: BTreeMap<String, String>,
}

/// Complexity tiers of a prompt.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Complexity {
    Simple,
    Moderate,
    Complex,
}

/// Retrying the same target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per target, the first included.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// Exponential backoff with full jitter between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// Failures worth retrying on the same target. Auth, quota, not-found,
    /// context-length, content-filter and refusal are never retried.
    #[serde(default = "default_retry_triggers")]
    #[schemars(length(max = 14))]
    #[x_kube(validation = Rule::new("self.all(t, t in ['connect', 'reset', 'timeout', 'server-error', 'overloaded', 'rate-limited', 'stream-interrupted', 'malformed'])").message("only connect, reset, timeout, server-error, overloaded, rate-limited, stream-interrupted and malformed can be retried; the others do not change on a retry"))]
    pub triggers: Vec<Trigger>,
    /// Retries may add at most this share of the route's traffic; beyond it
    /// failures move on to fallback at once, so an outage cannot multiply load.
    #[serde(default = "default_budget_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: u32,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_triggers() -> Vec<Trigger> {
    vec![
        Trigger::Connect,
        Trigger::Timeout,
        Trigger::RateLimited,
        Trigger::Overloaded,
        Trigger::ServerError,
    ]
}
fn default_budget_percent() -> u32 {
    20
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            backoff: Backoff::default(),
            triggers: default_retry_triggers(),
            budget_percent: default_budget_percent(),
        }
    }
}

/// Backoff between retries: a random delay up to `base × 2^n`, at most `max`.
/// A provider's `Retry-After` is honoured up to `max`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.base) <= duration(self.max)").message("backoff.base must not exceed backoff.max"))]
pub struct Backoff {
    #[serde(default = "default_backoff_base")]
    pub base: Duration,
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

/// Moving on to the next target, and what to answer when none is left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackSpec {
    /// Failures that move on to the next target. `content-filter` and
    /// `refusal` only when named; `context-length` moves only to targets
    /// with a larger context window.
    #[serde(default = "default_fallback_triggers")]
    #[schemars(length(max = 14))]
    pub triggers: Vec<Trigger>,
    /// How many targets one request may try, the first included. All when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub max_depth: Option<u32>,
    /// The answer when every target failed: an error status or a fixed reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_all: Option<CatchAll>,
}

fn default_fallback_triggers() -> Vec<Trigger> {
    vec![
        Trigger::Connect,
        Trigger::Timeout,
        Trigger::RateLimited,
        Trigger::Overloaded,
        Trigger::ServerError,
        Trigger::QuotaExhausted,
        Trigger::Auth,
        Trigger::ContextLength,
    ]
}

impl Default for FallbackSpec {
    fn default() -> Self {
        Self {
            triggers: default_fallback_triggers(),
            max_depth: None,
            catch_all: None,
        }
    }
}

/// The last stage of fallback: either an error with a chosen status and
/// message, or a fixed assistant reply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.status) != has(self.response)").message("catchAll needs exactly one of status or response"))]
#[x_kube(validation = Rule::new("!has(self.message) || has(self.status)").message("catchAll.message goes with catchAll.status"))]
pub struct CatchAll {
    /// HTTP status of the error returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub status: Option<u16>,
    /// Message of the error returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub message: Option<String>,
    /// A fixed assistant reply returned with status 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub response: Option<String>,
}

/// Response caching.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.mode != 'semantic' || has(self.embedding)").message("cache.embedding is required with mode semantic"))]
#[x_kube(validation = Rule::new("self.mode == 'semantic' || (!has(self.similarity) && !has(self.embedding))").message("cache.similarity and cache.embedding only apply to mode semantic"))]
pub struct CacheSpec {
    /// `off`, `exact` (identical requests) or `semantic` (similar prompts).
    /// Quote `"off"` in YAML: kubectl reads a bare off as false.
    #[serde(default)]
    pub mode: CacheMode,
    /// How long an entry lives.
    #[serde(default = "default_cache_ttl")]
    pub ttl: Duration,
    /// Entries kept at most, per sidecar.
    #[serde(default = "default_cache_entries")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_entries: u32,
    /// Cosine similarity at or above which a semantic hit is served (default 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.5, max = 1.0))]
    pub similarity: Option<f64>,
    /// The embedding model used by the semantic cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<ModelRef>,
    /// Also cache requests with temperature above 0 (by default only
    /// deterministic requests are cached).
    #[serde(default)]
    pub cache_non_deterministic: bool,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_cache_entries() -> u32 {
    10_000
}

/// Cache modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    Off,
    #[default]
    Exact,
    Semantic,
}

/// Detecting personal data and secrets in prompts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PiiSpec {
    /// `off`, `redact` (replace with typed placeholders before logs, cache
    /// keys and the provider call) or `block` (reject with 400).
    /// Quote `"off"` in YAML: kubectl reads a bare off as false.
    #[serde(default)]
    pub mode: PiiMode,
    /// Which detectors run. All when unset.
    #[serde(default = "PiiDetector::all")]
    #[schemars(length(max = 6))]
    pub detectors: Vec<PiiDetector>,
}

/// PII modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PiiMode {
    Off,
    #[default]
    Redact,
    Block,
}

/// Kinds of personal data and secrets the sidecar detects.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PiiDetector {
    Email,
    Phone,
    CreditCard,
    Ssn,
    IpAddress,
    Secret,
}

impl PiiDetector {
    pub fn all() -> Vec<PiiDetector> {
        vec![
            PiiDetector::Email,
            PiiDetector::Phone,
            PiiDetector::CreditCard,
            PiiDetector::Ssn,
            PiiDetector::IpAddress,
            PiiDetector::Secret,
        ]
    }
}

/// What the operator and the sidecars say about a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The configuration version sidecars must acknowledge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
    /// Sidecars selected by the route and those on `configVersion`.
    #[serde(default)]
    pub sidecars: SidecarSync,
    /// Number of targets, for `kubectl get`.
    #[serde(default)]
    pub target_count: u32,
    /// `synced/selected`, e.g. `12/12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<String>,
    /// `healthy targets/targets`, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<String>,
    /// Per target health and share of traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// The most recent fallback seen by any sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fallback: Option<FallbackRecord>,
}

/// Sidecars selected by a route and those on its current configuration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSync {
    pub selected: u32,
    pub synced: u32,
}

/// One target's figures across sidecars.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub provider: String,
    pub model: String,
    /// False when its breaker is open in most reporting sidecars.
    pub healthy: bool,
    /// Share of the route's traffic it served, in percent.
    #[serde(default)]
    pub share_percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<u64>,
    /// Failed share of its requests, in percent with one decimal.
    #[serde(default)]
    pub error_percent: String,
}

/// A fallback from one target to another.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRecord {
    /// `provider/model` that failed.
    pub from: String,
    /// `provider/model` that answered instead.
    pub to: String,
    /// The failure class.
    pub reason: String,
    /// When it happened (RFC 3339).
    pub time: String,
}
