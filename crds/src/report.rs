//! What a sidecar sends the operator every report interval: which config
//! version it runs (or rejected, and why), the health of each target, and
//! its spend since the last acknowledged report.
//!
//! Usage deltas carry sequence numbers. A sidecar resends every delta the
//! operator has not acknowledged; the operator folds each `(instance, seq)`
//! once, so spend is neither lost nor counted twice across reconnects and
//! leader changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::budget::Spend;
use crate::common::FailureClass;
use crate::route::FallbackRecord;

/// One report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub namespace: String,
    pub pod: String,
    /// Random per sidecar process; with `sequence` it names every report.
    pub instance: String,
    /// Increases by one with every report this instance sends.
    pub sequence: u64,
    /// The configuration the sidecar runs and the last it refused.
    pub config: ConfigState,
    /// Per target health over the last interval.
    #[serde(default)]
    pub targets: Vec<TargetHealth>,
    /// Usage not yet acknowledged, oldest first.
    #[serde(default)]
    pub usage: Vec<UsageDelta>,
    /// The latest fallback per route since the last report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallbacks: BTreeMap<String, FallbackRecord>,
    /// Budgets whose allowance is running low, so the operator renews them first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowance_low: Vec<String>,
}

/// Which snapshot a sidecar applied, and the last one it refused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigState {
    /// Version of the snapshot in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// The last snapshot refused, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
}

/// A refused snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub version: String,
    pub reason: String,
}

/// Breaker states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

/// One target of one route, over one report interval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealth {
    pub route: String,
    pub provider: String,
    pub model: String,
    pub requests: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<FailureClass, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_ms: Option<u64>,
    #[serde(default)]
    pub breaker: BreakerState,
    /// How often its breaker opened in the interval, including openings
    /// that closed again before the report (a flapping target).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub opened: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Spend against one budget (and tenant) since the previous delta.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageDelta {
    /// Increases by one with every delta this instance produces.
    pub seq: u64,
    pub budget: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Start of the window the spend belongs to (RFC 3339), so a delta
    /// delivered after a rollover is not counted in the new window.
    pub window_start: String,
    pub spent: Spend,
    /// Allowance handed back unspent (the snapshot asked the sidecar to
    /// keep only its share, [`Allowance::keep`]): it leaves the sidecar's
    /// allowance without being spend. Only for the budget's total.
    ///
    /// [`Allowance::keep`]: crate::snapshot::Allowance::keep
    #[serde(default, skip_serializing_if = "Spend::is_zero")]
    pub released: Spend,
}

/// The operator's answer to a report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReportAck {
    /// Every usage delta up to this `seq` is folded into persisted totals
    /// and need not be sent again.
    pub usage_acked_through: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_json() {
        let r = Report {
            namespace: "shop".into(),
            pod: "web-1".into(),
            instance: "a1b2".into(),
            sequence: 42,
            config: ConfigState {
                applied: Some("0123456789abcdef".into()),
                rejected: Some(Rejection {
                    version: "fedcba9876543210".into(),
                    reason: "route chat: provider openai missing".into(),
                }),
            },
            targets: vec![TargetHealth {
                route: "chat".into(),
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                requests: 100,
                errors: [
                    (FailureClass::RateLimited, 3),
                    (FailureClass::TimeoutFirstToken, 1),
                ]
                .into(),
                latency_p50_ms: Some(420),
                latency_p95_ms: Some(900),
                ttft_p95_ms: Some(300),
                breaker: BreakerState::HalfOpen,
                opened: 2,
            }],
            usage: vec![UsageDelta {
                seq: 9,
                budget: "team".into(),
                tenant: Some("acme".into()),
                window_start: "2026-11-21T00:00:00Z".into(),
                spent: Spend {
                    cost_usd: "0.000150".parse().expect("money"),
                    tokens: 1000,
                    requests: 1,
                },
                released: Spend::default(),
            }],
            fallbacks: BTreeMap::new(),
            allowance_low: vec!["team".into()],
        };
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["targets"][0]["errors"]["rate-limited"], 3);
        assert_eq!(json["targets"][0]["breaker"], "halfOpen");
        assert_eq!(json["usage"][0]["spent"]["costUSD"], "0.00015");
        let back: Report = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, r);
    }
}
