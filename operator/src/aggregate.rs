//! What hundreds of sidecars report, folded into the three kinds' status.
//!
//! Health is kept per sidecar as its latest report (each covers one report
//! interval). Usage is folded exactly once: every delta carries a sequence
//! number per sidecar instance, and the highest folded per budget is kept
//! with the budget's totals (and persisted in its status), so a delta
//! resent after a reconnect, an operator restart or a leader change is
//! skipped. This module folds reports and grants allowances; `status`
//! turns what it holds into the kinds' status.

use std::collections::BTreeMap;

use sluice_crds::Budget;
use sluice_crds::budget::{Spend, WindowBounds};
use sluice_crds::report::{Report, ReportAck};
use sluice_crds::snapshot::Allowance;

use crate::allowance::{Ledger, Policy, UNLIMITED, Vector, nanos_to_money};
use crate::compile::{Allowances, Key, PodInfo};

/// The latest report of one sidecar.
#[derive(Clone, Debug)]
struct Sidecar {
    report: Report,
    received_ms: u64,
}

/// Spend of one budget in one window.
#[derive(Clone, Debug)]
struct BudgetBook {
    window_start: String,
    total: Ledger,
    tenants: BTreeMap<String, Ledger>,
    by_workload: BTreeMap<String, Spend>,
    by_tenant: BTreeMap<String, Spend>,
    folded: BTreeMap<String, u64>,
}

/// Folds reports; answers status and allowances.
#[derive(Debug, Default)]
pub struct Aggregator {
    sidecars: BTreeMap<Key, Sidecar>,
    books: BTreeMap<Key, BudgetBook>,
    policy: Policy,
    /// How often sidecars report (milliseconds): the span of a report's
    /// figures.
    report_interval_ms: u64,
    /// Reports older than this (three intervals) no longer count for health.
    pub stale_after_ms: u64,
    /// Holder ids of the pods with a sidecar, by namespace (this compile's).
    peers: BTreeMap<String, Vec<String>>,
    /// The clock of the current compile (milliseconds), set when it begins:
    /// grants stamp holders with it, so a holder granted before any report
    /// arrived is not taken for long silent.
    clock_ms: u64,
}

/// What a report changed: the budgets whose totals must be persisted before
/// the report is acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    pub ack: ReportAck,
    pub budgets_touched: Vec<Key>,
}

impl Aggregator {
    pub fn new(policy: Policy, report_interval_ms: u64) -> Self {
        Self {
            policy,
            report_interval_ms,
            stale_after_ms: report_interval_ms.saturating_mul(3),
            ..Self::default()
        }
    }

    fn book(&mut self, key: &Key, budget: &Budget, window: &WindowBounds) -> &mut BudgetBook {
        let limit = limit_of(budget);
        let fresh = |spent: Vector, folded: BTreeMap<String, u64>| BudgetBook {
            window_start: window.start.clone(),
            total: Ledger::new(
                if budget.spec.tenant_header.is_some() {
                    unlimited()
                } else {
                    limit
                },
                spent,
            ),
            tenants: BTreeMap::new(),
            by_workload: BTreeMap::new(),
            by_tenant: BTreeMap::new(),
            folded,
        };
        let book = self.books.entry(key.clone()).or_insert_with(|| {
            // Resume from what the status persisted, if it is this window's.
            let status = budget.status.as_ref();
            let same_window = status
                .and_then(|s| s.window.as_ref())
                .is_some_and(|w| w.start == window.start);
            if same_window {
                let s = status.cloned().unwrap_or_default();
                let mut book = fresh(Vector::from_spend(&s.spent), s.folded.clone());
                for t in s.top_tenants {
                    book.by_tenant.insert(t.name.clone(), t.spent.clone());
                }
                for w in s.top_workloads {
                    book.by_workload.insert(w.name.clone(), w.spent.clone());
                }
                book
            } else {
                fresh(Vector::ZERO, BTreeMap::new())
            }
        });
        if book.window_start != window.start {
            // The window rolled over: start from zero.
            *book = fresh(Vector::ZERO, BTreeMap::new());
        }
        book.total
            .set_limit(if budget.spec.tenant_header.is_some() {
                unlimited()
            } else {
                limit
            });
        book
    }

    /// Folds a report. `budgets` are the pod's namespace's Budgets (by
    /// name) with their current windows; deltas for other windows are
    /// dropped, deltas already folded are skipped.
    pub fn ingest(
        &mut self,
        report: Report,
        workload: Option<String>,
        budgets: &BTreeMap<String, (&Budget, WindowBounds)>,
        now_ms: u64,
    ) -> Ingested {
        let pod: Key = (report.namespace.clone(), report.pod.clone());
        let holder = holder_id(&pod);
        let policy = self.policy;
        let mut touched = Vec::new();
        let mut acked = 0;
        for delta in &report.usage {
            acked = acked.max(delta.seq);
            let Some((budget, window)) = budgets.get(&delta.budget) else {
                continue;
            };
            if delta.window_start != window.start {
                continue; // spend of a window that has closed
            }
            let key: Key = (report.namespace.clone(), delta.budget.clone());
            let per_tenant = budget.spec.tenant_header.is_some();
            let limit = limit_of(budget);
            let book = self.book(&key, budget, window);
            let mark = book.folded.entry(report.instance.clone()).or_insert(0);
            if delta.seq <= *mark {
                continue;
            }
            *mark = delta.seq;
            let usage = Vector::from_spend(&delta.spent);
            book.total.fold(&holder, usage, now_ms, &policy);
            if delta.tenant.is_none() && !delta.released.is_zero() {
                book.total
                    .release(&holder, Vector::from_spend(&delta.released), now_ms);
            }
            if let Some(t) = &delta.tenant {
                if per_tenant {
                    book.tenants
                        .entry(t.clone())
                        .or_insert_with(|| Ledger::new(limit, Vector::ZERO))
                        .fold(&holder, usage, now_ms, &policy);
                }
                book.by_tenant
                    .entry(t.clone())
                    .or_default()
                    .add(&delta.spent);
            }
            if let Some(w) = &workload {
                book.by_workload
                    .entry(w.clone())
                    .or_default()
                    .add(&delta.spent);
            }
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        self.sidecars.insert(
            pod,
            Sidecar {
                report,
                received_ms: now_ms,
            },
        );
        Ingested {
            ack: ReportAck {
                usage_acked_through: acked,
            },
            budgets_touched: touched,
        }
    }

    /// The snapshot version a pod's sidecar last reported running.
    pub fn applied(&self, pod: &Key) -> Option<&str> {
        self.sidecars.get(pod)?.report.config.applied.as_deref()
    }

    /// Returns allowances of sidecars silent too long to the pool.
    pub fn reclaim(&mut self, now_ms: u64) {
        for book in self.books.values_mut() {
            book.total.reclaim(now_ms, &self.policy);
            for l in book.tenants.values_mut() {
                l.reclaim(now_ms, &self.policy);
            }
        }
        let stale = self.stale_after_ms;
        self.sidecars
            .retain(|_, s| now_ms.saturating_sub(s.received_ms) <= stale.max(1).saturating_mul(10));
    }
}

impl Allowances for Aggregator {
    fn begin(&mut self, pods: &[PodInfo], now: jiff::Timestamp) {
        let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
        self.clock_ms = self.clock_ms.max(now_ms);
        self.peers.clear();
        for p in pods {
            self.peers
                .entry(p.namespace.clone())
                .or_default()
                .push(holder_id(&(p.namespace.clone(), p.name.clone())));
        }
    }

    fn for_pod(
        &mut self,
        budget: &Budget,
        window: &WindowBounds,
        pod: &PodInfo,
    ) -> (Spend, Allowance) {
        let key: Key = (pod.namespace.clone(), kube::ResourceExt::name_any(budget));
        let holder = holder_id(&(pod.namespace.clone(), pod.name.clone()));
        let policy = self.policy;
        let now_ms = self
            .sidecars
            .values()
            .map(|s| s.received_ms)
            .max()
            .unwrap_or(0)
            .max(self.clock_ms);
        let acked = self
            .sidecars
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .map_or(0, |s| s.report.sequence);
        let per_tenant = budget.spec.tenant_header.is_some();
        let limit = limit_of(budget);
        let peers = self.peers.get(&pod.namespace).cloned().unwrap_or_default();
        let book = self.book(&key, budget, window);
        book.total.expect(&peers, now_ms);
        for ledger in book.tenants.values_mut() {
            ledger.expect(&peers, now_ms);
        }
        let spent = book.total.spent();
        let total = book.total.grant(&holder, now_ms, &policy);
        let mut allowance = Allowance {
            as_of_sequence: acked,
            total: total.to_amounts(),
            unallocated: Some(book.total.free().to_amounts()),
            keep: book
                .total
                .surplus_above(&holder, now_ms, &policy)
                .map(Vector::to_amounts),
            ..Allowance::default()
        };
        if per_tenant {
            for (t, ledger) in book.tenants.iter_mut() {
                allowance.tenants.insert(
                    t.clone(),
                    ledger.grant(&holder, now_ms, &policy).to_amounts(),
                );
            }
            // A tenant no sidecar has reported yet: a small slice of its
            // limit per sidecar, so all sidecars together stay within it.
            let sidecars = self
                .sidecars
                .keys()
                .filter(|k| k.0 == pod.namespace)
                .count()
                .max(1) as u64;
            let slice = |v: u64| {
                if v == UNLIMITED {
                    UNLIMITED
                } else {
                    v / 10 / sidecars
                }
            };
            allowance.new_tenant = Some(
                Vector {
                    cost_nanos: slice(limit.cost_nanos),
                    tokens: slice(limit.tokens),
                    requests: slice(limit.requests),
                }
                .to_amounts(),
            );
        }
        (
            Spend {
                cost_usd: nanos_to_money(spent.cost_nanos),
                tokens: spent.tokens,
                requests: spent.requests,
            },
            allowance,
        )
    }
}

fn holder_id(pod: &Key) -> String {
    format!("{}/{}", pod.0, pod.1)
}

fn unlimited() -> Vector {
    Vector {
        cost_nanos: UNLIMITED,
        tokens: UNLIMITED,
        requests: UNLIMITED,
    }
}

fn limit_of(budget: &Budget) -> Vector {
    Vector::from_limits(budget.spec.limits.as_ref())
}

mod status;

#[cfg(test)]
mod tests;
