//! Budget allowances: how much each sidecar may still spend of a budget
//! before it hears from the operator again.
//!
//! The invariant, for every budget (and every tenant of a per-tenant
//! budget) and every dimension: the allowances outstanding across all
//! sidecars never add up to more than the budget has left. A sidecar
//! reserves each request's estimated cost against its own allowance, so
//! the cluster can overspend only by the estimation error of requests in
//! flight — also while the operator is down, since sidecars then spend
//! what they hold and reject.
//!
//! Allowances only grow by top-ups from the free pool and shrink by the
//! usage sidecars report and by what they hand back; a grant is never
//! revoked while its holder may still be spending it, except when the
//! holder has not reported for `reclaim_after` (it is gone, or cut off:
//! then it can overspend by at most what it held). A share of what remains
//! is kept back for sidecars that have not asked yet.
//!
//! Rebalancing: shares follow recent use (decaying with a half-life), so
//! a sidecar holding well over its share ([`Ledger::surplus_above`]) is
//! asked in its snapshot to keep only its share; it hands back what it
//! holds beyond that, unspent and unreserved, in a report (a usage delta
//! with `released`), and only once that report is folded does the
//! operator grant it to others ([`Ledger::release`]). The operator never
//! shrinks an allowance itself: it cannot know what is in flight.

use std::collections::BTreeMap;

use sluice_crds::budget::BudgetLimits;
use sluice_crds::snapshot::Amounts;
use sluice_crds::{Money, budget::Spend};

/// An amount in each dimension: nano-dollars, tokens, requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vector {
    pub cost_nanos: u64,
    pub tokens: u64,
    pub requests: u64,
}

/// Meaning "not limited" in a dimension.
pub const UNLIMITED: u64 = u64::MAX;

impl Vector {
    pub const ZERO: Vector = Vector {
        cost_nanos: 0,
        tokens: 0,
        requests: 0,
    };

    fn zip(self, o: Vector, f: impl Fn(u64, u64) -> u64) -> Vector {
        Vector {
            cost_nanos: f(self.cost_nanos, o.cost_nanos),
            tokens: f(self.tokens, o.tokens),
            requests: f(self.requests, o.requests),
        }
    }

    /// `self - o`, where unlimited minus anything stays unlimited.
    pub fn saturating_sub(self, o: Vector) -> Vector {
        self.zip(o, |a, b| {
            if a == UNLIMITED {
                UNLIMITED
            } else {
                a.saturating_sub(b)
            }
        })
    }

    pub fn saturating_add(self, o: Vector) -> Vector {
        self.zip(o, u64::saturating_add)
    }

    pub fn min(self, o: Vector) -> Vector {
        self.zip(o, u64::min)
    }

    /// Whether every dimension of `self` is at most `o`'s.
    pub fn fits_in(self, o: Vector) -> bool {
        self.cost_nanos <= o.cost_nanos && self.tokens <= o.tokens && self.requests <= o.requests
    }

    /// Spend as a vector.
    pub fn from_spend(s: &Spend) -> Vector {
        Vector {
            cost_nanos: money_to_nanos(s.cost_usd),
            tokens: s.tokens,
            requests: s.requests,
        }
    }

    /// Limits as a vector; unset dimensions are [`UNLIMITED`].
    pub fn from_limits(l: Option<&BudgetLimits>) -> Vector {
        let l = l.cloned().unwrap_or_default();
        Vector {
            cost_nanos: l.cost_usd.map_or(UNLIMITED, money_to_nanos),
            tokens: l.tokens.unwrap_or(UNLIMITED),
            requests: l.requests.unwrap_or(UNLIMITED),
        }
    }

    /// As the snapshot carries it: unlimited dimensions are left out.
    pub fn to_amounts(self) -> Amounts {
        let limited = |v: u64| (v != UNLIMITED).then_some(v);
        Amounts {
            cost_usd: limited(self.cost_nanos).map(nanos_to_money),
            tokens: limited(self.tokens),
            requests: limited(self.requests),
        }
    }
}

pub fn money_to_nanos(m: Money) -> u64 {
    use rust_decimal::prelude::ToPrimitive;
    (m.get() * rust_decimal::Decimal::from(1_000_000_000u64))
        .trunc()
        .to_u64()
        .unwrap_or(UNLIMITED - 1)
}

pub fn nanos_to_money(n: u64) -> Money {
    Money::new(rust_decimal::Decimal::from(n) / rust_decimal::Decimal::from(1_000_000_000u64))
        .unwrap_or(Money::ZERO)
}

/// Tuning of the split.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Percent of what remains kept back for sidecars that have not asked yet.
    pub reserve_percent: u64,
    /// A holder silent this long (milliseconds) loses its allowance.
    pub reclaim_after_ms: u64,
    /// Recent use counts half as much after this long (milliseconds).
    pub share_half_life_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            reserve_percent: 10,
            reclaim_after_ms: 60_000,
            share_half_life_ms: 20_000,
        }
    }
}

/// One sidecar's standing in a ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Holder {
    /// Granted and not yet reported as spent.
    outstanding: Vector,
    /// Recent usage as of `recent_ms`, decaying with the policy's
    /// half-life, for shares.
    recent: Vector,
    recent_ms: u64,
    /// When it last reported or was granted (milliseconds).
    last_seen_ms: u64,
}

impl Holder {
    /// Recent usage decayed to `now_ms` (whole half-lives).
    fn recent_at(&self, now_ms: u64, policy: &Policy) -> Vector {
        let halvings = now_ms.saturating_sub(self.recent_ms) / policy.share_half_life_ms.max(1);
        let decay = |x: u64| {
            x.checked_shr(u32::try_from(halvings).unwrap_or(64))
                .unwrap_or(0)
        };
        Vector {
            cost_nanos: decay(self.recent.cost_nanos),
            tokens: decay(self.recent.tokens),
            requests: decay(self.recent.requests),
        }
    }
}

/// The book of one budget (or one tenant of it) in one window.
#[derive(Clone, Debug)]
pub struct Ledger {
    limit: Vector,
    spent: Vector,
    holders: BTreeMap<String, Holder>,
}

impl Ledger {
    /// A ledger for `limit`, starting from `spent` (e.g. the total persisted
    /// in the Budget's status after an operator restart).
    pub fn new(limit: Vector, spent: Vector) -> Self {
        Self {
            limit,
            spent,
            holders: BTreeMap::new(),
        }
    }

    pub fn spent(&self) -> Vector {
        self.spent
    }

    pub fn set_limit(&mut self, limit: Vector) {
        self.limit = limit;
    }

    /// What the budget has left.
    pub fn remaining(&self) -> Vector {
        self.limit.saturating_sub(self.spent)
    }

    /// Allowances outstanding across all holders.
    pub fn committed(&self) -> Vector {
        self.holders
            .values()
            .fold(Vector::ZERO, |a, h| a.saturating_add(h.outstanding))
    }

    /// What is neither spent nor promised.
    pub fn free(&self) -> Vector {
        self.remaining().saturating_sub(self.committed())
    }

    /// What `sidecar` currently holds.
    pub fn allowance(&self, sidecar: &str) -> Vector {
        self.holders
            .get(sidecar)
            .map_or(Vector::ZERO, |h| h.outstanding)
    }

    /// Folds reported usage: it moves from the holder's allowance into
    /// spend. Usage beyond the allowance (estimation error) still counts.
    pub fn fold(&mut self, sidecar: &str, usage: Vector, now_ms: u64, policy: &Policy) {
        self.spent = self.spent.saturating_add(usage);
        let h = self.holders.entry(sidecar.to_owned()).or_default();
        h.outstanding = h.outstanding.saturating_sub(usage);
        h.recent = h.recent_at(now_ms, policy).saturating_add(usage);
        h.recent_ms = now_ms;
        h.last_seen_ms = now_ms;
    }

    /// Folds allowance a sidecar handed back: it returns to the pool.
    pub fn release(&mut self, sidecar: &str, released: Vector, now_ms: u64) {
        let h = self.holders.entry(sidecar.to_owned()).or_default();
        h.outstanding = h.outstanding.saturating_sub(released);
        h.last_seen_ms = now_ms;
    }

    /// Makes `sidecars` known holders (with nothing yet), so the first
    /// grants of a compile split the budget between all of them instead of
    /// the first one asking taking every share.
    pub fn expect<'a>(&mut self, sidecars: impl IntoIterator<Item = &'a String>, now_ms: u64) {
        for s in sidecars {
            self.holders.entry(s.clone()).or_insert(Holder {
                last_seen_ms: now_ms,
                ..Holder::default()
            });
        }
    }

    /// `sidecar`'s share of what may be handed out now: half split
    /// evenly over the holders, half by recent use, of what remains beyond
    /// the reserve.
    pub fn target(&self, sidecar: &str, now_ms: u64, policy: &Policy) -> Vector {
        let remaining = self.remaining();
        let reserve = scale(remaining, policy.reserve_percent, 100);
        let n = (self.holders.len() + usize::from(!self.holders.contains_key(sidecar))) as u64;
        let total_recent = self.holders.values().fold(Vector::ZERO, |a, h| {
            a.saturating_add(h.recent_at(now_ms, policy))
        });
        let mine = self
            .holders
            .get(sidecar)
            .map_or(Vector::ZERO, |h| h.recent_at(now_ms, policy));
        let distributable = remaining.saturating_sub(reserve);
        let dim = |pool: Vector, f: fn(Vector) -> u64| share(f(pool), f(mine), f(total_recent), n);
        Vector {
            cost_nanos: dim(distributable, |v| v.cost_nanos),
            tokens: dim(distributable, |v| v.tokens),
            requests: dim(distributable, |v| v.requests),
        }
    }

    /// Tops `sidecar`'s allowance up towards its share and returns what it
    /// now holds. Never takes from other holders.
    pub fn grant(&mut self, sidecar: &str, now_ms: u64, policy: &Policy) -> Vector {
        let target = self.target(sidecar, now_ms, policy);
        let free = self.free();
        let reserve = scale(self.remaining(), policy.reserve_percent, 100);
        let known = self.holders.contains_key(sidecar);
        // A known holder tops up from what is free beyond the reserve; a
        // newcomer may draw on the reserve itself.
        let pool = if known {
            free.saturating_sub(reserve)
        } else {
            free
        };
        let h = self.holders.entry(sidecar.to_owned()).or_default();
        h.last_seen_ms = now_ms;
        let top_up = target.saturating_sub(h.outstanding).min(pool);
        h.outstanding = h.outstanding.saturating_add(top_up);
        h.outstanding
    }

    /// When `sidecar` holds more than a quarter over its share in some
    /// limited dimension: its share, which the sidecar is asked to keep
    /// (handing back the rest it has not spent or reserved).
    pub fn surplus_above(&self, sidecar: &str, now_ms: u64, policy: &Policy) -> Option<Vector> {
        let held = self.holders.get(sidecar)?.outstanding;
        let target = self.target(sidecar, now_ms, policy);
        let over = |held: u64, target: u64| {
            target != UNLIMITED && held > target.saturating_add(target / 4)
        };
        (over(held.cost_nanos, target.cost_nanos)
            || over(held.tokens, target.tokens)
            || over(held.requests, target.requests))
        .then_some(target)
    }

    /// Drops holders silent longer than the policy allows; what they held
    /// returns to the pool. Returns the names reclaimed.
    pub fn reclaim(&mut self, now_ms: u64, policy: &Policy) -> Vec<String> {
        let gone: Vec<String> = self
            .holders
            .iter()
            .filter(|(_, h)| now_ms.saturating_sub(h.last_seen_ms) > policy.reclaim_after_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.holders.remove(k);
        }
        gone
    }
}

/// `v × num / den` without overflow; unlimited stays unlimited.
fn scale(v: Vector, num: u64, den: u64) -> Vector {
    let f = |x: u64| {
        if x == UNLIMITED {
            UNLIMITED
        } else {
            u64::try_from(u128::from(x) * u128::from(num) / u128::from(den.max(1)))
                .unwrap_or(UNLIMITED)
        }
    };
    Vector {
        cost_nanos: f(v.cost_nanos),
        tokens: f(v.tokens),
        requests: f(v.requests),
    }
}

/// A holder's share of `pool`: by recent usage, plus an equal floor so an
/// idle sidecar still gets something to start with.
fn share(pool: u64, mine: u64, total: u64, holders: u64) -> u64 {
    if pool == UNLIMITED {
        return UNLIMITED;
    }
    let holders = holders.max(1);
    // Half the pool by equal split, half by usage (all equal when no usage
    // yet). The equal half rounds up, so the last units of a budget are
    // still granted (rounding down, three sidecars could never be given the
    // last two requests); the caller caps every grant by what is free.
    let equal = u128::from(pool).div_ceil(2 * u128::from(holders));
    let by_use = if total == 0 {
        equal
    } else {
        u128::from(pool) / 2 * u128::from(mine) / u128::from(total)
    };
    u64::try_from(equal + by_use).unwrap_or(pool).min(pool)
}

#[cfg(test)]
mod tests;
