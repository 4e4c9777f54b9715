//! Prometheus metrics, named after the OpenTelemetry GenAI conventions where
//! one exists. The registry is built once and passed in, never global.
//!
//! Label values are bounded by construction: route, provider and model come
//! from the configuration (a client's unknown model name is folded into
//! [`UNKNOWN`]), classes and fault domains are closed enums.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_crds::FailureClass;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::Fault;

/// The label value for anything not in the configuration.
pub const UNKNOWN: &str = "unknown";

/// Where a request went.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TargetLabels {
    pub route: String,
    pub provider: String,
    pub model: String,
}

impl TargetLabels {
    /// Labels for a request that never reached a target.
    pub fn unrouted(route: Option<&str>) -> Self {
        Self {
            route: route.unwrap_or(UNKNOWN).to_owned(),
            provider: UNKNOWN.to_owned(),
            model: UNKNOWN.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    gen_ai_operation_name: &'static str,
    route: String,
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    gen_ai_token_type: &'static str,
    route: String,
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    class: &'static str,
    fault: &'static str,
    route: String,
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    route: String,
    from: String,
    to: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    route: String,
    /// A cache result (`hit`, `miss`, `bypass`) or a PII category.
    kind: &'static str,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;
type CostCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// The series a finished request of one target updates, found with one
/// lookup of its labels. Without it every observation built its family's
/// label set (three `String` clones) and hashed it: ≈5k instructions and
/// a dozen allocations per request. Each series is created on first use,
/// so the exposition has exactly the series it had before.
#[derive(Default)]
struct TargetSeries {
    chat: OnceLock<Histogram>,
    embeddings: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    input_tokens: OnceLock<Histogram>,
    output_tokens: OnceLock<Histogram>,
    cost: OnceLock<CostCounter>,
    /// `sluice_requests_total{route, outcome="success"}` of the route.
    succeeded: OnceLock<Counter>,
}

/// How a request ended, for `sluice_requests_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
    ClientCancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::ClientCancelled => "client_cancelled",
        }
    }
}

/// Every metric the sidecar records.
pub struct Metrics {
    registry: Registry,
    duration: Hist<OperationLabels>,
    ttft: Hist<TargetLabels>,
    tokens: Hist<TokenLabels>,
    requests: Family<OutcomeLabels, Counter>,
    cost: Family<TargetLabels, CostCounter>,
    errors: Family<ErrorLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    breakers: Family<
        BreakerLabels,
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    >,
    breaker_transitions: Family<TransitionLabels, Counter>,
    /// Serialises [`Metrics::breakers`]: counters are brought up to the
    /// health registry's totals, which two concurrent scrapes must not
    /// both add.
    breaker_sync: std::sync::Mutex<()>,
    cache: Family<PolicyLabels, Counter>,
    pii: Family<PolicyLabels, Counter>,
    accounting: Family<AccountingLabels, prometheus_client::metrics::gauge::Gauge>,
    access_log_dropped: Counter,
    /// Bounded like the families: one entry per label set they hold.
    /// foldhash, not SipHash: the keys come from the configuration, and
    /// hashing three strings with SipHash on every lookup was ≈0.6 k
    /// instructions.
    series: RwLock<HashMap<TargetLabels, Arc<TargetSeries>, foldhash::fast::RandomState>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountingLabels {
    /// `settled`, `estimated` (no provider usage) or `inline` (the queue
    /// was full and the request path settled it).
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    provider: String,
    model: String,
    /// `open`, `half_open` or `closed`.
    to: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

fn token_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let duration: Hist<OperationLabels> = Family::new_with_constructor(seconds);
        let ttft: Hist<TargetLabels> = Family::new_with_constructor(seconds);
        let tokens: Hist<TokenLabels> = Family::new_with_constructor(token_buckets);
        let requests = Family::<OutcomeLabels, Counter>::default();
        let cost = Family::<TargetLabels, CostCounter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        let breakers = Family::<
            BreakerLabels,
            prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
        >::default();
        registry.register(
            "sluice_breaker_open",
            "1 while the circuit breaker of a provider and model is open, 0.5 half-open, 0 closed",
            breakers.clone(),
        );
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "sluice_breaker_transitions",
            "Circuit breaker state changes of a provider and model, by the state entered (open, half_open, closed)",
            breaker_transitions.clone(),
        );
        registry.register(
            "gen_ai_client_operation_duration_seconds",
            "Duration of GenAI operations through the sidecar, to the last byte",
            duration.clone(),
        );
        registry.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first streamed token",
            ttft.clone(),
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens used per request, by gen_ai_token_type (input, output)",
            tokens.clone(),
        );
        registry.register(
            "sluice_cost_usd",
            "Cost of answered requests in US dollars, from the Provider's pricing",
            cost.clone(),
        );
        registry.register("sluice_requests", "Requests by outcome", requests.clone());
        registry.register(
            "sluice_errors",
            "Errors by failure class and fault domain (caller, policy, provider, gateway)",
            errors.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "sluice_access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        registry.register(
            "sluice_fallbacks",
            "Moves from one target to the next, by reason",
            fallbacks.clone(),
        );
        let cache = Family::<PolicyLabels, Counter>::default();
        let pii = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "sluice_cache_lookups",
            "Response cache lookups by result (kind: hit, miss, bypass)",
            cache.clone(),
        );
        registry.register(
            "sluice_pii_detections",
            "Personal data and secrets found in requests, by category (kind)",
            pii.clone(),
        );
        let accounting =
            Family::<AccountingLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "sluice_accounting_records",
            "Usage records settled against budgets since start, by kind (settled, estimated: metered from the sidecar's estimate, inline: settled on the request path because the accounting queue was full)",
            accounting.clone(),
        );
        Self {
            accounting,
            cache,
            pii,
            registry,
            duration,
            ttft,
            tokens,
            requests,
            cost,
            errors,
            fallbacks,
            breakers,
            breaker_transitions,
            breaker_sync: std::sync::Mutex::new(()),
            access_log_dropped,
            series: RwLock::default(),
        }
    }

    fn series(&self, t: &TargetLabels) -> Arc<TargetSeries> {
        let found = match self.series.read() {
            Ok(map) => map.get(t).cloned(),
            Err(poisoned) => poisoned.into_inner().get(t).cloned(),
        };
        if let Some(s) = found {
            return s;
        }
        let mut map = match self.series.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(t.clone()).or_default().clone()
    }

    fn duration_series(&self, op: &'static str, t: &TargetLabels) -> Histogram {
        self.duration
            .get_or_create(&OperationLabels {
                gen_ai_operation_name: op,
                route: t.route.clone(),
                provider: t.provider.clone(),
                model: t.model.clone(),
            })
            .clone()
    }

    fn token_series(&self, kind: &'static str, t: &TargetLabels) -> Histogram {
        self.tokens
            .get_or_create(&TokenLabels {
                gen_ai_token_type: kind,
                route: t.route.clone(),
                provider: t.provider.clone(),
                model: t.model.clone(),
            })
            .clone()
    }

    /// The counter of access log lines dropped (handed to the access log).
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// Sets the breaker gauges and transition counters from the health
    /// registry (called on scrape; one series per provider and model the
    /// sidecar has called, which the configuration bounds).
    pub fn breakers(&self, views: &[crate::health::BreakerView]) {
        use sluice_crds::report::BreakerState as B;
        let _one_at_a_time = self.breaker_sync.lock();
        for view in views {
            let v = match view.state {
                B::Closed => 0.0,
                B::HalfOpen => 0.5,
                B::Open => 1.0,
            };
            self.breakers
                .get_or_create(&BreakerLabels {
                    provider: view.provider.clone(),
                    model: view.model.clone(),
                })
                .set(v);
            let t = view.transitions;
            for (to, total) in [
                ("open", t.opened),
                ("half_open", t.half_opened),
                ("closed", t.closed),
            ] {
                let counter = self.breaker_transitions.get_or_create(&TransitionLabels {
                    provider: view.provider.clone(),
                    model: view.model.clone(),
                    to,
                });
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
    }

    /// Copies the accounting task's counters (called on scrape).
    pub fn accounting(&self, stats: &crate::metering::AccountingStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (kind, v) in [
            ("settled", &stats.settled),
            ("estimated", &stats.estimated),
            ("inline", &stats.overflowed),
        ] {
            self.accounting
                .get_or_create(&AccountingLabels { kind })
                .set(i64::try_from(v.load(Relaxed)).unwrap_or(i64::MAX));
        }
    }

    /// One cache lookup on `route` ended in `status`.
    pub fn cache(&self, route: &str, status: crate::cache::Status) {
        self.cache
            .get_or_create(&PolicyLabels {
                route: route.to_owned(),
                kind: status.as_str(),
            })
            .inc();
    }

    /// `n` findings of PII `category` in a request on `route`.
    pub fn pii(&self, route: &str, category: &'static str, n: usize) {
        self.pii
            .get_or_create(&PolicyLabels {
                route: route.to_owned(),
                kind: category,
            })
            .inc_by(n as u64);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// One operation (`chat`, `embeddings`) finished after `secs`.
    pub fn operation(&self, op: &'static str, t: &TargetLabels, secs: f64) {
        self.operation_of(&self.series(t), op, t, secs);
    }

    fn operation_of(&self, s: &TargetSeries, op: &'static str, t: &TargetLabels, secs: f64) {
        let slot = match op {
            "chat" => &s.chat,
            "embeddings" => &s.embeddings,
            _ => return self.duration_series(op, t).observe(secs),
        };
        slot.get_or_init(|| self.duration_series(op, t))
            .observe(secs);
    }

    /// A request of `op` to target `t` succeeded after `secs`, with its
    /// token usage (input, output) and cost if known: everything
    /// [`Metrics::operation`], [`Metrics::tokens`], [`Metrics::cost`] and
    /// [`Metrics::request`] record, with one lookup of the target's series.
    pub fn succeeded(
        &self,
        op: &'static str,
        t: &TargetLabels,
        secs: f64,
        tokens: Option<(u64, u64)>,
        usd: Option<f64>,
    ) {
        let s = self.series(t);
        self.operation_of(&s, op, t, secs);
        if let Some((input, output)) = tokens {
            self.tokens_of(&s, t, input, output);
        }
        if let Some(usd) = usd {
            self.cost_of(&s, t, usd);
        }
        s.succeeded
            .get_or_init(|| self.outcome_counter(&t.route, Outcome::Success))
            .inc();
    }

    /// The first token of a stream reached the client after `secs`.
    pub fn first_token(&self, t: &TargetLabels, secs: f64) {
        self.series(t)
            .ttft
            .get_or_init(|| self.ttft.get_or_create(t).clone())
            .observe(secs);
    }

    /// Token usage of one request.
    pub fn tokens(&self, t: &TargetLabels, input: u64, output: u64) {
        self.tokens_of(&self.series(t), t, input, output);
    }

    fn tokens_of(&self, s: &TargetSeries, t: &TargetLabels, input: u64, output: u64) {
        s.input_tokens
            .get_or_init(|| self.token_series("input", t))
            .observe(input as f64);
        s.output_tokens
            .get_or_init(|| self.token_series("output", t))
            .observe(output as f64);
    }

    /// What a request cost, in US dollars (exact amounts are summed
    /// elsewhere; the metric is for dashboards).
    pub fn cost(&self, t: &TargetLabels, usd: f64) {
        self.cost_of(&self.series(t), t, usd);
    }

    fn cost_of(&self, s: &TargetSeries, t: &TargetLabels, usd: f64) {
        s.cost
            .get_or_init(|| self.cost.get_or_create(t).clone())
            .inc_by(usd);
    }

    /// A request ended.
    pub fn request(&self, route: &str, outcome: Outcome) {
        self.outcome_counter(route, outcome).inc();
    }

    fn outcome_counter(&self, route: &str, outcome: Outcome) -> Counter {
        self.requests
            .get_or_create(&OutcomeLabels {
                route: route.to_owned(),
                outcome: outcome.as_str(),
            })
            .clone()
    }

    /// An error, by class (`none` for errors that are not upstream
    /// failures) and fault domain.
    pub fn error(&self, t: &TargetLabels, class: Option<FailureClass>, fault: Fault) {
        self.errors
            .get_or_create(&ErrorLabels {
                class: class.map_or("none", FailureClass::as_str),
                fault: fault.as_str(),
                route: t.route.clone(),
                provider: t.provider.clone(),
                model: t.model.clone(),
            })
            .inc();
    }

    /// A fallback from one provider to the next.
    pub fn fallback(&self, route: &str, from: &str, to: &str, reason: FailureClass) {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                route: route.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                reason: reason.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_conventional_names() {
        let m = Metrics::new();
        let t = TargetLabels {
            route: "chat".into(),
            provider: "p".into(),
            model: "m".into(),
        };
        m.operation("chat", &t, 0.1);
        m.first_token(&t, 0.05);
        m.tokens(&t, 10, 3);
        m.request("chat", Outcome::Success);
        m.cost(&t, 0.25);
        m.error(&t, Some(FailureClass::RateLimited), Fault::Provider);
        let view = |opened| crate::health::BreakerView {
            provider: "p".into(),
            model: "m".into(),
            state: sluice_crds::report::BreakerState::Open,
            transitions: crate::health::Transitions {
                opened,
                half_opened: 1,
                closed: 1,
            },
        };
        m.breakers(&[view(1)]);
        m.breakers(&[view(2)]);
        m.breakers(&[view(2)]);
        // A second observation goes to the same series, through the cache.
        m.operation("chat", &t, 0.2);
        m.tokens(&t, 1, 1);
        let text = m.encode();
        assert!(
            text.contains("gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name=\"chat\",route=\"chat\",provider=\"p\",model=\"m\"} 2"),
            "{text}"
        );
        assert!(
            !text.contains("gen_ai_operation_name=\"embeddings\""),
            "series are created on first use only"
        );
        for name in [
            "gen_ai_client_operation_duration_seconds_bucket",
            "gen_ai_server_time_to_first_token_seconds_count",
            "gen_ai_client_token_usage_sum{gen_ai_token_type=\"input\"",
            "sluice_requests_total{route=\"chat\",outcome=\"success\"} 1",
            "sluice_cost_usd_total{route=\"chat\",provider=\"p\",model=\"m\"} 0.25",
            "sluice_errors_total{class=\"rate-limited\",fault=\"provider\"",
            "sluice_breaker_open{provider=\"p\",model=\"m\"} 1",
            "sluice_breaker_transitions_total{provider=\"p\",model=\"m\",to=\"open\"} 2",
            "sluice_breaker_transitions_total{provider=\"p\",model=\"m\",to=\"half_open\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
