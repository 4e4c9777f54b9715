//! Budgets on the sidecar side: reservations against the allowance the
//! operator grants (standalone: the whole budget), per calendar window and,
//! when the budget has a `tenantHeader`, per tenant.
//!
//! The request path calls, in order:
//! 1. [`applies`] / [`Budgets::applicable`] — which budgets count this
//!    request (route, pod, tenant header);
//! 2. [`Budgets::rate_limit`] with the estimated tokens (429
//!    `rate_limit_exceeded` on [`crate::ratelimit::Limited`]); after the call
//!    [`RateCharge::correct`] with the actual tokens;
//! 3. [`Budgets::admit`] with the request's worst case
//!    ([`crate::metering::worst_case`]) — an atomic check-and-reserve that
//!    returns [`Reservation`] guards, a warning header value past the soft
//!    limit, a degrade/downgrade target, or a rejection with `Retry-After`;
//! 4. the guards travel with the request; [`Reservation::settle`] (usually via
//!    [`crate::metering::Accountant`]) charges the actual spend. Dropping a
//!    guard unsettled (failure, client disconnect, panic) releases it, so a
//!    reservation can never leak.
//!
//! Check and reserve happen under one lock per budget, so concurrent requests
//! can never both pass a check that only one of them fits: the allowance is
//! overshot only by the difference between worst case and actual of requests
//! in flight, which is never positive unless the input estimate was low.
//!
//! In cluster mode an allowance is what the sidecar may spend beyond the
//! usage it had reported up to report `asOfSequence`. Settled spend is
//! therefore kept by the report it travels in (the sink says which): a new
//! allowance drops the spend of reports up to `asOfSequence` (the operator
//! deducted it) and keeps counting the rest against the new headroom, so
//! spend settled between a report and the next snapshot is never granted
//! twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use rust_decimal::Decimal;
use sluice_crds::budget::{BudgetSpec, BudgetState, ExceededAction, Spend};
use sluice_crds::common::ModelRef;
use sluice_crds::snapshot::{Allowance, Amounts, BudgetEntry};
use sluice_crds::units::Money;

use crate::ratelimit::RateLimiter;

/// The tenant a request counts against when its budget has a
/// `tenantHeader` and the request does not carry it.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// Whether a budget counts a request on `route` from this pod.
/// `routes` holds the route names with `routeSelector` already resolved.
pub fn applies(routes: &[String], applies_to_pod: bool, route: &str) -> bool {
    applies_to_pod && routes.iter().any(|r| r == route)
}

/// Whether `podSelector` selects a pod with `labels` (standalone mode, where
/// no operator computed `appliesToPod`). No selector selects every pod.
pub fn applies_to_pod(
    spec: &BudgetSpec,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    spec.pod_selector
        .as_ref()
        .is_none_or(|sel| sluice_crds::selector::matches(sel, labels))
}

/// The tenant of a request for `spec`, reading headers through `header`
/// (case-insensitive lookup is the caller's). `None` when the budget is not
/// per tenant.
pub fn tenant_of<'a>(
    spec: &BudgetSpec,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Option<String> {
    let name = spec.tenant_header.as_deref()?;
    Some(
        header(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(ANONYMOUS_TENANT)
            .to_owned(),
    )
}

fn sub(a: &Spend, b: &Spend) -> Spend {
    Spend {
        cost_usd: a.cost_usd.saturating_sub(b.cost_usd),
        tokens: a.tokens.saturating_sub(b.tokens),
        requests: a.requests.saturating_sub(b.requests),
    }
}

fn plus(a: &Spend, b: &Spend) -> Spend {
    let mut s = a.clone();
    s.add(b);
    s
}

/// Spend against one cap (the total, or one tenant's).
#[derive(Clone, Debug, Default)]
struct Account {
    cap: Amounts,
    /// Settled spend not yet deducted from the allowance by the operator,
    /// by the report sequence it travels in (counts against the cap).
    settled: std::collections::BTreeMap<u64, Spend>,
    /// Settled by this sidecar in the whole window (for the percentage).
    window_settled: Spend,
    reserved: Spend,
    /// Allowance handed back and not yet deducted by the operator, by the
    /// report sequence it travels in (no longer ours to spend).
    released: std::collections::BTreeMap<u64, Spend>,
}

fn sum<'a>(parts: impl Iterator<Item = &'a Spend>) -> Spend {
    let mut s = Spend::default();
    for v in parts {
        s.add(v);
    }
    s
}

impl Account {
    fn settled(&self) -> Spend {
        sum(self.settled.values())
    }

    /// The allowance less what was handed back.
    fn cap_left(&self) -> Amounts {
        let released = sum(self.released.values());
        Amounts {
            cost_usd: self
                .cap
                .cost_usd
                .map(|c| c.saturating_sub(released.cost_usd)),
            tokens: self.cap.tokens.map(|c| c.saturating_sub(released.tokens)),
            requests: self
                .cap
                .requests
                .map(|c| c.saturating_sub(released.requests)),
        }
    }

    /// Forgets the spend and releases of reports up to `seq`: the operator
    /// deducted them.
    fn deducted_through(&mut self, seq: u64) {
        self.settled = self.settled.split_off(&(seq + 1));
        self.released = self.released.split_off(&(seq + 1));
    }

    fn fits(&self, more: &Spend) -> bool {
        let want = plus(&plus(&self.settled(), &self.reserved), more);
        let cap = self.cap_left();
        cap.cost_usd.is_none_or(|c| want.cost_usd <= c)
            && cap.tokens.is_none_or(|c| want.tokens <= c)
            && cap.requests.is_none_or(|c| want.requests <= c)
    }

    /// What is neither spent, reserved nor handed back beyond `keep`, in
    /// the dimensions both limit.
    fn surplus(&self, keep: &Amounts) -> Spend {
        let used = plus(&self.settled(), &self.reserved);
        let cap = self.cap_left();
        let over = |cap: Option<u64>, used: u64, keep: Option<u64>| match (cap, keep) {
            (Some(c), Some(k)) => c.saturating_sub(used).saturating_sub(k),
            _ => 0,
        };
        Spend {
            cost_usd: match (cap.cost_usd, keep.cost_usd) {
                (Some(c), Some(k)) => c.saturating_sub(used.cost_usd).saturating_sub(k),
                _ => Money::ZERO,
            },
            tokens: over(cap.tokens, used.tokens, keep.tokens),
            requests: over(cap.requests, used.requests, keep.requests),
        }
    }
}

#[derive(Debug)]
struct State {
    window: (Timestamp, Timestamp),
    generation: u64,
    /// Cluster-wide spend in this window as of the last snapshot.
    base_spent: Spend,
    total: Account,
    tenants: HashMap<String, Account>,
    allowance: Allowance,
    /// A request found this sidecar's allowance spent while the budget had
    /// room: the next report asks for more (cleared by a new allowance).
    starved: bool,
}

impl State {
    fn roll(&mut self, spec: &BudgetSpec, now: Timestamp) {
        if now < self.window.1 && now >= self.window.0 {
            return;
        }
        self.window = spec.window.bounds(now);
        self.generation += 1;
        self.base_spent = Spend::default();
        self.total.settled.clear();
        self.total.window_settled = Spend::default();
        self.total.reserved = Spend::default();
        self.total.released.clear();
        self.tenants.clear();
    }

    fn account(&mut self, tenant: Option<&str>) -> &mut Account {
        match tenant {
            None => &mut self.total,
            Some(t) => {
                let allowance = &self.allowance;
                self.tenants.entry(t.to_owned()).or_insert_with(|| Account {
                    cap: allowance
                        .tenants
                        .get(t)
                        .or(allowance.new_tenant.as_ref())
                        .cloned()
                        .unwrap_or_default(),
                    ..Account::default()
                })
            }
        }
    }
}

/// What [`Budget::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead. `degrade_to` replaces the route's targets when the degrade
    /// ladder has a step at or below the current percentage.
    Admit {
        reservation: Reservation,
        warning: Option<String>,
        degrade_to: Option<ModelRef>,
    },
    /// The budget is exhausted and says `downgrade`: call `to` instead. The
    /// reservation reserves nothing but still counts the spend.
    Downgrade {
        reservation: Reservation,
        to: ModelRef,
        warning: String,
    },
    /// The budget is exhausted and says `reject`: 429 `budget_exceeded`
    /// with `Retry-After: retry_after_secs` (seconds to the window's end).
    Reject { retry_after_secs: u64 },
    /// This sidecar's allowance is spent but the budget, as far as the last
    /// snapshot said, still has room for the request: a renewed allowance
    /// may admit it (cluster mode only).
    Starved,
}

/// How much of a budget is used, for the warning header and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub spent: Spend,
    pub reserved: Spend,
    pub percent_used: u32,
}

/// One budget's ledger on this sidecar.
#[derive(Debug)]
pub struct Budget {
    name: String,
    spec: BudgetSpec,
    routes: Vec<String>,
    applies_to_pod: bool,
    standalone: bool,
    rate_limiter: Option<RateLimiter>,
    state: Mutex<State>,
}

impl Budget {
    /// A budget as the operator sends it.
    pub fn from_entry(entry: &BudgetEntry, now: Timestamp) -> Arc<Self> {
        let b = Self::build(
            entry.name.clone(),
            entry.spec.clone(),
            entry.routes.clone(),
            entry.applies_to_pod,
            entry.allowance.clone(),
            false,
            now,
        );
        b.lock().base_spent = entry.spent.clone();
        b
    }

    /// A standalone budget: the allowance is the whole budget and is granted
    /// afresh at every window.
    pub fn standalone(
        name: impl Into<String>,
        spec: BudgetSpec,
        routes: Vec<String>,
        applies_to_pod: bool,
        now: Timestamp,
    ) -> Arc<Self> {
        let allowance = standalone_allowance(&spec);
        Self::build(
            name.into(),
            spec,
            routes,
            applies_to_pod,
            allowance,
            true,
            now,
        )
    }

    fn build(
        name: String,
        spec: BudgetSpec,
        routes: Vec<String>,
        applies_to_pod: bool,
        allowance: Allowance,
        standalone: bool,
        now: Timestamp,
    ) -> Arc<Self> {
        let state = State {
            window: spec.window.bounds(now),
            generation: 0,
            base_spent: Spend::default(),
            total: Account {
                cap: allowance.total.clone(),
                ..Account::default()
            },
            tenants: HashMap::new(),
            allowance,
            starved: false,
        };
        Arc::new(Self {
            name,
            rate_limiter: spec.rate_limits.clone().map(RateLimiter::new),
            spec,
            routes,
            applies_to_pod,
            standalone,
            state: Mutex::new(state),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    /// The budget's `rateLimits` buckets (per tenant, as [`tenant_of`] says).
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limiter.as_ref()
    }

    /// The state the status shows: `Exhausted` at 100 %, `Degraded` on a
    /// degrade step, `SoftLimit` past the soft limit, else `Ok`.
    pub fn state(&self, tenant: Option<&str>, now: Timestamp) -> BudgetState {
        let pct = self.usage(tenant, now).percent_used;
        if pct >= 100 {
            BudgetState::Exhausted
        } else if self.spec.degrade.iter().any(|s| s.at_percent <= pct) {
            BudgetState::Degraded
        } else if pct >= self.spec.soft_limit_percent {
            BudgetState::SoftLimit
        } else {
            BudgetState::Ok
        }
    }

    /// Whether this budget counts a request on `route`.
    pub fn applies(&self, route: &str) -> bool {
        applies(&self.routes, self.applies_to_pod, route)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the counters consistent
        // (every update is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `other` has the same definition (so this ledger may stand
    /// for it).
    fn same_definition(&self, other: &Budget) -> bool {
        self.name == other.name
            && self.spec == other.spec
            && self.routes == other.routes
            && self.applies_to_pod == other.applies_to_pod
            && self.standalone == other.standalone
    }

    /// Percent of the budget's limit used by `spent` (the largest share over
    /// the limited dimensions), rounded down.
    fn percent(&self, spent: &Spend) -> u32 {
        let Some(limits) = &self.spec.limits else {
            return 0;
        };
        let mut pct = Decimal::ZERO;
        let hundred = Decimal::from(100u32);
        if let Some(c) = limits.cost_usd.filter(|c| *c > Money::ZERO) {
            pct = pct.max(spent.cost_usd.get() * hundred / c.get());
        }
        if let Some(t) = limits.tokens.filter(|t| *t > 0) {
            pct = pct.max(Decimal::from(spent.tokens) * hundred / Decimal::from(t));
        }
        if let Some(r) = limits.requests.filter(|r| *r > 0) {
            pct = pct.max(Decimal::from(spent.requests) * hundred / Decimal::from(r));
        }
        rust_decimal::prelude::ToPrimitive::to_u32(&pct.trunc()).unwrap_or(u32::MAX)
    }

    /// Spend in the window as far as this sidecar knows: for the total, the
    /// cluster-wide spend of the last snapshot plus what this sidecar
    /// settled since; for a tenant, what this sidecar settled.
    fn spent_in_window(st: &mut State, tenant: Option<&str>) -> Spend {
        match tenant {
            None => plus(&st.base_spent, &st.total.settled()),
            Some(t) => st.account(Some(t)).window_settled.clone(),
        }
    }

    /// The usage of the total (`tenant == None`) or of one tenant.
    pub fn usage(&self, tenant: Option<&str>, now: Timestamp) -> Usage {
        let mut st = self.lock();
        st.roll(&self.spec, now);
        let window = st.window;
        let spent = Self::spent_in_window(&mut st, tenant);
        let acct = st.account(tenant).clone();
        Usage {
            window_start: window.0,
            window_end: window.1,
            percent_used: self.percent(&spent),
            spent,
            reserved: acct.reserved,
        }
    }

    /// Atomically checks that `worst` fits the allowance (the tenant's and
    /// the total) and reserves it.
    pub fn admit(
        self: &Arc<Self>,
        tenant: Option<&str>,
        worst: &Spend,
        now: Timestamp,
    ) -> Admission {
        let mut st = self.lock();
        st.roll(&self.spec, now);
        let fits = st.total.fits(worst) && tenant.is_none_or(|t| st.account(Some(t)).fits(worst));
        let spent_for_percent = Self::spent_in_window(&mut st, tenant);
        let pct = self.percent(&spent_for_percent);
        let generation = st.generation;
        let window = st.window;
        let reservation = |amount: Spend| Reservation {
            budget: self.clone(),
            tenant: tenant.map(str::to_owned),
            amount,
            generation,
            window_start: window.0,
            done: false,
        };
        if fits {
            st.total.reserved.add(worst);
            if let Some(t) = tenant {
                st.account(Some(t)).reserved.add(worst);
            }
            drop(st);
            let warning = (pct >= self.spec.soft_limit_percent).then(|| self.warning(pct));
            let degrade_to = self
                .spec
                .degrade
                .iter()
                .rev()
                .find(|s| s.at_percent <= pct)
                .map(|s| s.to.clone());
            return Admission::Admit {
                reservation: reservation(worst.clone()),
                warning,
                degrade_to,
            };
        }
        if !self.standalone && tenant.is_none() && self.cluster_room(&st, worst) {
            st.starved = true;
            return Admission::Starved;
        }
        drop(st);
        match (self.spec.on_exceeded.action, &self.spec.on_exceeded.to) {
            (ExceededAction::Downgrade, Some(to)) => Admission::Downgrade {
                reservation: reservation(Spend::default()),
                to: to.clone(),
                warning: self.warning(pct.max(100)),
            },
            _ => Admission::Reject {
                retry_after_secs: seconds_until(window.1, now),
            },
        }
    }

    fn warning(&self, pct: u32) -> String {
        format!(
            "budget {} at {}% of its {} limit",
            self.name,
            pct,
            self.spec.window.as_str()
        )
    }

    fn finish(&self, r: &Reservation, actual: Option<(&Spend, u64)>) {
        let mut st = self.lock();
        if st.generation != r.generation {
            // The window rolled over while the call was in flight: the old
            // window's counters are gone; the spend is still reported for
            // the window it was reserved in.
            return;
        }
        st.total.reserved = sub(&st.total.reserved, &r.amount);
        if let Some((a, seq)) = actual {
            st.total.settled.entry(seq).or_default().add(a);
            st.total.window_settled.add(a);
        }
        if let Some(t) = r.tenant.as_deref() {
            let acct = st.account(Some(t));
            acct.reserved = sub(&acct.reserved, &r.amount);
            if let Some((a, seq)) = actual {
                acct.settled.entry(seq).or_default().add(a);
                acct.window_settled.add(a);
            }
        }
    }
}

/// Whole seconds from `now` until `end`, rounded up, at least 1.
pub fn seconds_until(end: Timestamp, now: Timestamp) -> u64 {
    let d = end.as_nanosecond() - now.as_nanosecond();
    let secs = (d + 999_999_999).div_euclid(1_000_000_000);
    u64::try_from(secs).unwrap_or(0).max(1)
}

/// A reservation held by a request in flight. Settle it with the actual
/// spend; dropping it unsettled releases it.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    tenant: Option<String>,
    amount: Spend,
    generation: u64,
    window_start: Timestamp,
    done: bool,
}

impl Reservation {
    pub fn budget(&self) -> &str {
        &self.budget.name
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// What is reserved.
    pub fn amount(&self) -> &Spend {
        &self.amount
    }

    /// The window start (RFC 3339) the spend is reported under.
    pub fn window_start(&self) -> String {
        self.window_start.to_string()
    }

    /// Replaces the reservation by the actual spend, which travels to the
    /// operator in report `report_seq` (0 standalone).
    /// A reservation of nothing on the same budget, tenant and window,
    /// for a call made on behalf of the request (the semantic cache's
    /// embedding): its spend is settled through it. The call runs under
    /// the request's admission; what it costs is counted, never refused.
    pub fn companion(&self) -> Reservation {
        Reservation {
            budget: self.budget.clone(),
            tenant: self.tenant.clone(),
            amount: Spend::default(),
            generation: self.generation,
            window_start: self.window_start,
            done: false,
        }
    }

    pub fn settle(mut self, actual: &Spend, report_seq: u64) {
        self.done = true;
        self.budget.finish(&self, Some((actual, report_seq)));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.budget.finish(self, None);
        }
    }
}

mod allowance;
mod registry;
pub use allowance::standalone_allowance;
pub use registry::{Admitted, Budgets, RateCharge, Rejected};

#[cfg(test)]
mod tests;
