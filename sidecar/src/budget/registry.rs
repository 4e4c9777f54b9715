//! The registry of a sidecar's budgets: which apply to a request, and
//! admission and rate limiting across all of them, all or nothing.

use std::sync::Arc;

use jiff::Timestamp;
use sluice_crds::budget::Spend;
use sluice_crds::common::ModelRef;
use sluice_crds::snapshot::BudgetEntry;

use super::{Admission, Budget, Reservation, tenant_of};
use crate::ratelimit::{Limited, RateHeaders, RateLimiter};

/// Every budget of this sidecar.
#[derive(Default, Debug, Clone)]
pub struct Budgets {
    budgets: Vec<Arc<Budget>>,
}

/// The outcome of admitting a request against every budget that applies.
#[derive(Debug, Default)]
pub struct Admitted {
    pub reservations: Vec<Reservation>,
    /// Values for `x-sluice-budget-warning`, one per budget past its soft
    /// limit (join with ", ").
    pub warnings: Vec<String>,
    /// A target replacing the route's: the first budget's degrade step or
    /// downgrade target, in budget order.
    pub target_override: Option<ModelRef>,
}

/// A budget refused the request: 429 `budget_exceeded`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("budget {budget} is exhausted for this window")]
pub struct Rejected {
    pub budget: String,
    pub retry_after_secs: u64,
}

impl Budgets {
    pub fn new(budgets: Vec<Arc<Budget>>) -> Self {
        Self { budgets }
    }

    /// The budgets of a new snapshot (cluster mode). A budget whose spec,
    /// routes and pod selection are unchanged keeps its ledger (window
    /// counters and reservations in flight) and takes the new allowance; a
    /// changed or new budget starts a fresh ledger (reservations held on the
    /// old one still settle there, and their spend is still reported).
    pub fn with_snapshot(&self, entries: &[BudgetEntry], now: Timestamp) -> Budgets {
        let budgets = entries
            .iter()
            .map(|e| match self.get(&e.name) {
                Some(b)
                    if b.spec == e.spec
                        && b.routes == e.routes
                        && b.applies_to_pod == e.applies_to_pod
                        && !b.standalone =>
                {
                    b.update_allowance(e, now);
                    b.clone()
                }
                _ => Budget::from_entry(e, now),
            })
            .collect();
        Budgets { budgets }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Budget>> {
        self.budgets.iter().find(|b| b.name == name)
    }

    /// The budgets that count a request on `route`.
    pub fn applicable<'s>(&'s self, route: &'s str) -> impl Iterator<Item = &'s Arc<Budget>> + 's {
        self.budgets.iter().filter(move |b| b.applies(route))
    }

    /// Charges the rate limits of every applicable budget for one request
    /// estimated at `tokens`. All or nothing: when one budget limits, the
    /// charges already made are given back. On success, the headers of the
    /// budget with the fewest requests left (for `x-ratelimit-*`).
    pub fn rate_limit<'a>(
        &self,
        route: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        tokens: u64,
        now: tokio::time::Instant,
    ) -> Result<Option<RateHeaders>, Limited> {
        let mut charged: Vec<(&RateLimiter, Option<String>)> = Vec::new();
        let mut tightest: Option<RateHeaders> = None;
        for b in self.applicable(route) {
            let Some(rl) = b.rate_limiter() else {
                continue;
            };
            let tenant = tenant_of(&b.spec, &header);
            match rl.check(tenant.as_deref(), tokens, now) {
                Ok(h) => {
                    let left = |h: &RateHeaders| h.remaining_requests.unwrap_or(u64::MAX);
                    if tightest.as_ref().is_none_or(|t| left(&h) < left(t)) {
                        tightest = Some(h);
                    }
                    charged.push((rl, tenant));
                }
                Err(limited) => {
                    for (rl, tenant) in charged {
                        rl.release(tenant.as_deref(), tokens, now);
                    }
                    return Err(limited);
                }
            }
        }
        Ok(tightest)
    }

    /// Corrects the token charge of every applicable budget once the actual
    /// usage is known.
    pub fn correct_rate<'a>(
        &self,
        route: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        estimated: u64,
        actual: u64,
        now: tokio::time::Instant,
    ) {
        for b in self.applicable(route) {
            if let Some(rl) = b.rate_limiter() {
                let tenant = tenant_of(&b.spec, &header);
                rl.correct(tenant.as_deref(), estimated, actual, now);
            }
        }
    }

    /// Admits a request against every applicable budget. All or nothing: on
    /// a rejection the reservations already taken are released.
    pub fn admit<'a>(
        &self,
        route: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        worst: &Spend,
        now: Timestamp,
    ) -> Result<Admitted, Rejected> {
        let mut out = Admitted::default();
        for b in self.applicable(route) {
            let tenant = tenant_of(&b.spec, &header);
            match b.admit(tenant.as_deref(), worst, now) {
                Admission::Admit {
                    reservation,
                    warning,
                    degrade_to,
                } => {
                    out.reservations.push(reservation);
                    out.warnings.extend(warning);
                    if out.target_override.is_none() {
                        out.target_override = degrade_to;
                    }
                }
                Admission::Downgrade {
                    reservation,
                    to,
                    warning,
                } => {
                    out.reservations.push(reservation);
                    out.warnings.push(warning);
                    if out.target_override.is_none() {
                        out.target_override = Some(to);
                    }
                }
                Admission::Reject { retry_after_secs } => {
                    return Err(Rejected {
                        budget: b.name.clone(),
                        retry_after_secs,
                    });
                }
            }
        }
        Ok(out)
    }
}
