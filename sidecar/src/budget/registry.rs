//! The registry of a sidecar's budgets: which apply to a request, and
//! admission and rate limiting across all of them, all or nothing.

use std::sync::Arc;

use jiff::Timestamp;
use sluice_crds::budget::Spend;
use sluice_crds::common::ModelRef;

use super::{Admission, Budget, Reservation, tenant_of};
use crate::ratelimit::{Limited, RateHeaders};

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

/// What [`Budgets::rate_limit`] charged for one request.
#[derive(Debug, Default)]
pub struct RateCharge {
    /// The tightest budget's `x-ratelimit-*` values, if any budget limits.
    pub headers: Option<RateHeaders>,
    charged: Vec<(Arc<Budget>, Option<String>)>,
    tokens: u64,
}

impl RateCharge {
    /// Whether no bucket was charged.
    pub fn is_empty(&self) -> bool {
        self.charged.is_empty()
    }

    /// Charges the difference between the tokens the request actually used
    /// and its estimate to every bucket it was charged in.
    pub fn correct(&self, actual: u64, now: tokio::time::Instant) {
        for (b, tenant) in &self.charged {
            if let Some(rl) = b.rate_limiter() {
                rl.correct(tenant.as_deref(), self.tokens, actual, now);
            }
        }
    }
}

/// A budget refused the request: 429 `budget_exceeded`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("budget {budget} is exhausted for this window")]
pub struct Rejected {
    pub budget: String,
    pub retry_after_secs: u64,
    /// Only this sidecar's allowance is spent, not the budget: a renewed
    /// allowance may admit the request.
    pub starved: bool,
}

impl Budgets {
    pub fn new(budgets: Vec<Arc<Budget>>) -> Self {
        Self { budgets }
    }

    /// The budgets of a new configuration, `fresh`, keeping this
    /// configuration's ledger for every budget whose definition is
    /// unchanged (standalone: as it is; cluster: with `fresh`'s allowance).
    pub fn carry_into(&self, fresh: Budgets, now: Timestamp) -> Budgets {
        let budgets = fresh
            .budgets
            .into_iter()
            .map(|f| match self.get(&f.name) {
                Some(old) if old.same_definition(&f) => {
                    old.take_allowance_of(&f, now);
                    old.clone()
                }
                _ => f,
            })
            .collect();
        Budgets { budgets }
    }

    /// The budgets' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.budgets.iter().map(|b| b.name.as_str()).collect()
    }

    /// Hands back surplus allowance where the snapshot asked to (see
    /// [`Budget::release_surplus`]).
    pub fn release_surplus(&self, record: &dyn Fn(&str, &str, &Spend) -> u64, now: Timestamp) {
        for b in &self.budgets {
            if let Some(released) = b.release_surplus(record, now) {
                tracing::debug!(budget = %b.name, ?released, "handed surplus allowance back");
            }
        }
    }

    /// Names of the budgets whose allowance is running low.
    pub fn allowance_low(&self) -> Vec<String> {
        self.budgets
            .iter()
            .filter(|b| b.allowance_low())
            .map(|b| b.name.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
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
    /// charges already made are given back. On success, the charges (to
    /// correct with the actual tokens later) and the headers of the budget
    /// with the fewest requests left (for `x-ratelimit-*`).
    pub fn rate_limit<'a>(
        &self,
        route: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        tokens: u64,
        now: tokio::time::Instant,
    ) -> Result<RateCharge, Limited> {
        let mut charge = RateCharge {
            headers: None,
            charged: Vec::new(),
            tokens,
        };
        for b in self.applicable(route) {
            let Some(rl) = b.rate_limiter() else {
                continue;
            };
            let tenant = tenant_of(&b.spec, &header);
            match rl.check(tenant.as_deref(), tokens, now) {
                Ok(h) => {
                    let left = |h: &RateHeaders| h.remaining_requests.unwrap_or(u64::MAX);
                    if charge.headers.as_ref().is_none_or(|t| left(&h) < left(t)) {
                        charge.headers = Some(h);
                    }
                    charge.charged.push((b.clone(), tenant));
                }
                Err(limited) => {
                    for (b, tenant) in &charge.charged {
                        if let Some(rl) = b.rate_limiter() {
                            rl.release(tenant.as_deref(), tokens, now);
                        }
                    }
                    return Err(limited);
                }
            }
        }
        Ok(charge)
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
                        starved: false,
                    });
                }
                Admission::Starved => {
                    return Err(Rejected {
                        budget: b.name.clone(),
                        retry_after_secs: 1,
                        starved: true,
                    });
                }
            }
        }
        Ok(out)
    }
}
