//! `Budget`: limits on cost, tokens and requests per calendar window, rate
//! limits, and what happens when they are reached.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LabelSelector, ModelRef};
use crate::units::Money;

/// A Budget caps what a set of routes and workloads may spend per calendar
/// window (UTC), optionally per tenant.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Budget",
    plural = "budgets",
    shortname = "llmb",
    category = "sluice",
    namespaced,
    doc = "A Budget caps what routes and workloads may spend per calendar window, optionally per tenant.",
    status = "BudgetStatus",
    printcolumn = r#"{"name":"Limit","type":"string","jsonPath":".status.limit"}"#,
    printcolumn = r#"{"name":"Spent","type":"string","jsonPath":".status.spent.costUSD","description":"US dollars spent in the current window"}"#,
    printcolumn = r#"{"name":"Used","type":"string","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Resets","type":"string","jsonPath":".status.window.end"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("has(self.limits) || has(self.rateLimits)").message("a budget needs limits, rateLimits or both"),
)]
pub struct BudgetSpec {
    /// Names of LLMRoutes in this namespace whose traffic counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub routes: Vec<String>,
    /// LLMRoutes whose labels match count too. Routes also join a budget by
    /// listing it in their `budgetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_selector: Option<LabelSelector>,
    /// Narrows the budget to workloads: only traffic from pods with these
    /// labels counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// When set, limits apply to each value of this request header
    /// separately (e.g. `x-sluice-tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub tenant_header: Option<String>,
    /// The calendar window spend is counted over, in UTC.
    pub window: Window,
    /// Hard limits per window; any subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BudgetLimits>,
    /// Token buckets (per tenant when `tenantHeader` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Past this share of any limit responses carry
    /// `x-sluice-budget-warning` and the status says `SoftLimit`.
    #[serde(default = "default_soft_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub soft_limit_percent: u32,
    /// Steps that move traffic to cheaper targets before the hard limit,
    /// in increasing `atPercent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.map(s, s.atPercent).isSorted() && self.all(s, self.exists_one(t, t.atPercent == s.atPercent))").message("degrade steps must be in strictly increasing atPercent"))]
    pub degrade: Vec<DegradeStep>,
    /// What happens once a limit is reached.
    #[serde(default)]
    pub on_exceeded: OnExceeded,
}

fn default_soft_limit() -> u32 {
    80
}

/// Calendar windows, in UTC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Window {
    Hour,
    Day,
    Month,
}

/// Hard limits per window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.costUSD) || has(self.tokens) || has(self.requests)").message("limits needs at least one of costUSD, tokens or requests"))]
pub struct BudgetLimits {
    /// US dollars per window, e.g. `"250.00"`.
    #[serde(rename = "costUSD", default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<Money>,
    /// Prompt plus completion tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<u64>,
    /// Requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests: Option<u64>,
}

/// Token buckets refilled every minute.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.requestsPerMinute) || has(self.tokensPerMinute)").message("rateLimits needs requestsPerMinute, tokensPerMinute or both"))]
pub struct RateLimits {
    /// Requests per minute; bursts up to this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Estimated tokens per minute, corrected by actual usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}

/// Past `atPercent` of the budget, send traffic to `to` instead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DegradeStep {
    /// Share of the budget used at which this step applies.
    #[schemars(range(min = 1, max = 99))]
    pub at_percent: u32,
    /// The cheaper provider model that takes the traffic.
    pub to: ModelRef,
}

/// What happens once a limit is reached.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("(self.action == 'downgrade') == has(self.to)").message("onExceeded.to is required with action downgrade and only allowed with it"))]
pub struct OnExceeded {
    /// `reject`: HTTP 429 `budget_exceeded` with `Retry-After` = seconds to
    /// the window's end. `downgrade`: send traffic to `to` instead.
    #[serde(default)]
    pub action: ExceededAction,
    /// The provider model that takes traffic once the budget is exhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ModelRef>,
}

impl Default for OnExceeded {
    fn default() -> Self {
        Self {
            action: ExceededAction::Reject,
            to: None,
        }
    }
}

/// Actions once a budget is exhausted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ExceededAction {
    #[default]
    Reject,
    Downgrade,
}

/// Spend in a window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spend {
    #[serde(rename = "costUSD", default)]
    pub cost_usd: Money,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub requests: u64,
}

impl Spend {
    pub fn add(&mut self, other: &Spend) {
        self.cost_usd = self.cost_usd + other.cost_usd;
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

/// A calendar window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowBounds {
    /// Start, inclusive (RFC 3339, UTC).
    pub start: String,
    /// End, exclusive: when the budget resets (RFC 3339, UTC).
    pub end: String,
}

/// A budget's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum BudgetState {
    #[default]
    Ok,
    SoftLimit,
    Degraded,
    Exhausted,
}

/// Spend of one tenant or workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendEntry {
    pub name: String,
    #[serde(flatten)]
    pub spent: Spend,
}

/// Spend in the current window, summed over every sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowBounds>,
    /// The limits as `kubectl get` shows them, e.g. `$250.00/day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Spend in the current window.
    #[serde(default)]
    pub spent: Spend,
    /// Highest share of any limit used, in percent.
    #[serde(default)]
    pub percent_used: u32,
    /// `percentUsed` as `kubectl get` shows it, e.g. `82%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
    #[serde(default)]
    pub state: BudgetState,
    /// Index of the degrade step in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade_step: Option<u32>,
    /// Tenants with the highest spend (when `tenantHeader` is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tenants: Vec<SpendEntry>,
    /// Workloads (pod owners) with the highest spend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_workloads: Vec<SpendEntry>,
}
