//! The allowance side of a budget ledger: what the operator grants
//! (standalone: the whole budget), surplus handed back, and whether the
//! next report should ask for more.

use jiff::Timestamp;
use rust_decimal::Decimal;
use sluice_crds::budget::{BudgetSpec, Spend};
use sluice_crds::snapshot::{Allowance, Amounts, BudgetEntry};

use super::{Budget, State, plus, sub};

/// The allowance of a standalone sidecar: the whole budget, per tenant when
/// the budget is per tenant.
pub fn standalone_allowance(spec: &BudgetSpec) -> Allowance {
    let limits = spec.limits.clone().unwrap_or_default();
    let amounts = Amounts {
        cost_usd: limits.cost_usd,
        tokens: limits.tokens,
        requests: limits.requests,
    };
    if spec.tenant_header.is_some() {
        Allowance {
            new_tenant: Some(amounts),
            ..Allowance::default()
        }
    } else {
        Allowance {
            total: amounts,
            ..Allowance::default()
        }
    }
}

impl Budget {
    /// Takes a new allowance from a snapshot (cluster mode). Reservations in
    /// flight stay charged.
    pub fn update_allowance(&self, entry: &BudgetEntry, now: Timestamp) {
        self.grant(&entry.allowance, &entry.spent, now);
    }

    /// Takes the allowance and cluster-wide spend `fresh` was built with.
    pub(super) fn take_allowance_of(&self, fresh: &Budget, now: Timestamp) {
        let (allowance, spent) = {
            let st = fresh.lock();
            (st.allowance.clone(), st.base_spent.clone())
        };
        self.grant(&allowance, &spent, now);
    }

    fn grant(&self, allowance: &Allowance, spent: &Spend, now: Timestamp) {
        if self.standalone {
            return;
        }
        let mut st = self.lock();
        st.roll(&self.spec, now);
        st.base_spent = spent.clone();
        st.allowance = allowance.clone();
        st.total.cap = allowance.total.clone();
        st.total.deducted_through(allowance.as_of_sequence);
        st.starved = false;
        for (t, acct) in st.tenants.iter_mut() {
            acct.cap = allowance
                .tenants
                .get(t)
                .or(allowance.new_tenant.as_ref())
                .cloned()
                .unwrap_or_default();
            acct.deducted_through(allowance.as_of_sequence);
        }
    }

    /// Hands back what the total allowance holds beyond the snapshot's
    /// `keep`, unspent and unreserved (cluster mode). `record` puts it in
    /// the outbox and returns the report it travels in; meanwhile the amount
    /// stays reserved, so it can never be both spent and handed back.
    pub fn release_surplus(
        &self,
        record: &dyn Fn(&str, &str, &Spend) -> u64,
        now: Timestamp,
    ) -> Option<Spend> {
        if self.standalone {
            return None;
        }
        let (surplus, generation, window_start) = {
            let mut st = self.lock();
            st.roll(&self.spec, now);
            let keep = st.allowance.keep.clone()?;
            let surplus = st.total.surplus(&keep);
            if surplus.is_zero() {
                return None;
            }
            st.total.reserved.add(&surplus);
            (surplus, st.generation, st.window.0)
        };
        let seq = record(&self.name, &window_start.to_string(), &surplus);
        let mut st = self.lock();
        if st.generation == generation {
            st.total.reserved = sub(&st.total.reserved, &surplus);
            st.total.released.entry(seq).or_default().add(&surplus);
        }
        Some(surplus)
    }

    /// Budgets running low: less than a fifth of any capped dimension of
    /// the allowance left (the report asks the operator to renew these first).
    pub fn allowance_low(&self) -> bool {
        if self.standalone {
            return false;
        }
        let st = self.lock();
        if st.starved {
            return true;
        }
        let used = plus(&st.total.settled(), &st.total.reserved);
        let low = |cap: Option<u64>, used: u64| {
            cap.is_some_and(|c| used.saturating_mul(5) >= c.saturating_mul(4))
        };
        let cap = &st.total.cap_left();
        cap.cost_usd.is_some_and(|c| {
            used.cost_usd.get() * Decimal::from(5u32) >= c.get() * Decimal::from(4u32)
        }) || low(cap.tokens, used.tokens)
            || low(cap.requests, used.requests)
    }

    /// Whether a renewed allowance could cover `more`: the operator had that
    /// much neither spent nor granted when it sent the last snapshot.
    pub(super) fn cluster_room(&self, st: &State, more: &Spend) -> bool {
        let Some(pool) = &st.allowance.unallocated else {
            return false;
        };
        pool.cost_usd.is_none_or(|c| more.cost_usd <= c)
            && pool.tokens.is_none_or(|c| more.tokens <= c)
            && pool.requests.is_none_or(|c| more.requests <= c)
    }
}
