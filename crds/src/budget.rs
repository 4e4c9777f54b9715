//! `Budget`: limits on cost, tokens and requests per calendar window, rate
//! limits, and what happens when they are reached.

use std::collections::BTreeMap;

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

impl BudgetSpec {
    /// Every (Provider name, model) the budget may send traffic to: its
    /// degrade steps and its `onExceeded` replacement.
    pub fn uses(&self) -> impl Iterator<Item = (&str, &str)> {
        self.degrade
            .iter()
            .map(|s| &s.to)
            .chain(&self.on_exceeded.to)
            .map(|m| (m.provider_ref.name.as_str(), m.model.as_str()))
    }
}

/// Calendar windows, in UTC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Window {
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// The calendar window (UTC) that contains `now`: `[start, end)`.
    pub fn bounds(self, now: jiff::Timestamp) -> (jiff::Timestamp, jiff::Timestamp) {
        use jiff::{ToSpan, tz::TimeZone};
        let dt = now.to_zoned(TimeZone::UTC).datetime();
        let date = dt.date();
        let (start, end) = match self {
            Window::Hour => {
                let start = date.at(dt.hour(), 0, 0, 0);
                (start, start.saturating_add(1.hour()))
            }
            Window::Day => {
                let start = date.at(0, 0, 0, 0);
                (start, start.saturating_add(1.day()))
            }
            Window::Month => {
                let start = date.first_of_month().at(0, 0, 0, 0);
                (start, start.saturating_add(1.month()))
            }
        };
        let utc = |d: jiff::civil::DateTime| {
            d.to_zoned(TimeZone::UTC)
                .map(|z| z.timestamp())
                .unwrap_or(now)
        };
        (utc(start), utc(end))
    }

    /// [`Window::bounds`] as RFC 3339 strings, as status and snapshots carry them.
    pub fn bounds_rfc3339(self, now: jiff::Timestamp) -> WindowBounds {
        let (start, end) = self.bounds(now);
        WindowBounds {
            start: start.to_string(),
            end: end.to_string(),
        }
    }
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

    /// Nothing in any dimension.
    pub fn is_zero(&self) -> bool {
        *self == Spend::default()
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
    /// The highest usage sequence folded into `spent`, per sidecar
    /// instance, so usage a sidecar resends after an operator restart or a
    /// leader change is never counted twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub folded: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn windows_are_calendar_windows_in_utc() {
        let now = at("2026-02-28T23:59:59.5Z");
        assert_eq!(
            Window::Hour.bounds(now),
            (at("2026-02-28T23:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            Window::Day.bounds(now),
            (at("2026-02-28T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(now),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(at("2026-12-31T12:00:00Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        let b = Window::Day.bounds_rfc3339(now);
        assert_eq!(
            (b.start.as_str(), b.end.as_str()),
            ("2026-02-28T00:00:00Z", "2026-03-01T00:00:00Z")
        );
    }

    #[test]
    fn the_end_of_a_window_is_the_start_of_the_next() {
        let (_, end) = Window::Hour.bounds(at("2026-11-21T13:59:59Z"));
        assert_eq!(Window::Hour.bounds(end).0, end);
    }
}
