//! Status of the three kinds from the sidecars' latest reports (health,
//! sync, traffic) and the budgets' books.

use std::collections::BTreeMap;

use sluice_crds::budget::{BudgetState, BudgetStatus, Spend, SpendEntry, WindowBounds};
use sluice_crds::common::conditions;
use sluice_crds::provider::{BreakerCounts, ModelStatus, ProviderState, ProviderStatus};
use sluice_crds::report::BreakerState;
use sluice_crds::route::{LLMRouteStatus, SidecarSync, TargetStatus};
use sluice_crds::snapshot::Snapshot;
use sluice_crds::{Budget, FailureClass};

use super::{Aggregator, Sidecar, limit_of};
use crate::allowance::{UNLIMITED, Vector, nanos_to_money};
use crate::compile::{BudgetVerdict, Cond, Key, ProviderVerdict, RouteVerdict};

impl Aggregator {
    fn fresh_reports<'a>(
        &'a self,
        ns: &'a str,
        now_ms: u64,
    ) -> impl Iterator<Item = (&'a Key, &'a Sidecar)> + 'a {
        self.sidecars.iter().filter(move |(k, s)| {
            k.0 == ns && now_ms.saturating_sub(s.received_ms) <= self.stale_after_ms
        })
    }

    /// The status of a route.
    pub fn route_status(
        &self,
        key: &Key,
        verdict: &RouteVerdict,
        snapshots: &BTreeMap<Key, Snapshot>,
        previous: Option<&LLMRouteStatus>,
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
        now_ms: u64,
    ) -> LLMRouteStatus {
        let mut st = previous.cloned().unwrap_or_default();
        st.observed_generation = verdict.generation;
        let selected = verdict.selected_pods.len() as u32;
        let mut synced = 0;
        let mut rejected = None;
        for pod in &verdict.selected_pods {
            let want = snapshots.get(pod).map(|s| s.version.as_str());
            let Some(s) = self.sidecars.get(pod) else {
                continue;
            };
            if want.is_some() && s.report.config.applied.as_deref() == want {
                synced += 1;
            } else if let Some(r) = &s.report.config.rejected
                && Some(r.version.as_str()) == want
            {
                rejected = Some(format!(
                    "sidecar {} rejected the configuration: {}",
                    pod.1, r.reason
                ));
            }
        }
        st.sidecars = SidecarSync { selected, synced };
        st.synced = Some(format!("{synced}/{selected}"));
        st.target_count = verdict.target_count;
        // The version of the spec sidecars serve: the current one when it
        // is usable, else the held one stays shown.
        if verdict.usable && !verdict.version.is_empty() {
            st.config_version = Some(verdict.version.clone());
        }
        let programmed = if !verdict.usable {
            Cond {
                ok: false,
                reason: "Invalid".into(),
                message:
                    "the current spec is not sent to sidecars; they keep the last good version"
                        .into(),
            }
        } else if let Some(msg) = rejected {
            Cond {
                ok: false,
                reason: "Rejected".into(),
                message: msg,
            }
        } else if selected == 0 {
            Cond {
                ok: false,
                reason: "NoSidecars".into(),
                message: "no pod with a Sluice sidecar is selected by this route".into(),
            }
        } else if synced < selected {
            Cond {
                ok: false,
                reason: "Pending".into(),
                message: format!("{synced} of {selected} sidecars run the current configuration"),
            }
        } else {
            Cond {
                ok: true,
                reason: "Programmed".into(),
                message: format!("all {selected} sidecars run the current configuration"),
            }
        };
        let mut accepted = verdict.accepted.clone();
        if accepted.ok && !verdict.warnings.is_empty() {
            accepted.message = format!("spec is valid; warnings: {}", verdict.warnings.join("; "));
        }
        for (t, c) in [
            ("Accepted", &accepted),
            ("ResolvedRefs", &verdict.resolved_refs),
            ("Programmed", &programmed),
        ] {
            conditions::set(
                &mut st.conditions,
                t,
                c.ok,
                &c.reason,
                &c.message,
                verdict.generation,
                now.clone(),
            );
        }

        // Per target figures over the latest reports of the route's sidecars.
        #[derive(Default)]
        struct T {
            requests: u64,
            errors: u64,
            p95: Option<u64>,
            reporting: u32,
            open: u32,
        }
        let mut per_target: BTreeMap<(String, String), T> = BTreeMap::new();
        for (pod, s) in self.fresh_reports(&key.0, now_ms) {
            let mut seen: Vec<(&str, &str)> = Vec::new();
            for h in s.report.targets.iter().filter(|h| h.route == key.1) {
                let e = per_target
                    .entry((h.provider.clone(), h.model.clone()))
                    .or_default();
                e.requests += h.requests;
                e.errors += failures(&h.errors);
                e.p95 = e.p95.max(h.latency_p95_ms);
                e.reporting += 1;
                if h.breaker == BreakerState::Open {
                    e.open += 1;
                }
                seen.push((&h.provider, &h.model));
            }
            // Targets without requests and with closed breakers are left
            // out of reports: the sidecar carries them, healthy.
            let idle = snapshots
                .get(pod)
                .and_then(|snap| snap.routes.iter().find(|r| r.name == key.1))
                .into_iter()
                .flat_map(|r| r.spec.all_targets())
                .map(|t| (t.provider_ref.name.as_str(), t.model.as_str()));
            for (provider, model) in idle {
                if !seen.contains(&(provider, model)) {
                    seen.push((provider, model));
                    per_target
                        .entry((provider.to_owned(), model.to_owned()))
                        .or_default()
                        .reporting += 1;
                }
            }
        }
        let total: u64 = per_target.values().map(|v| v.requests).sum();
        st.targets = per_target
            .into_iter()
            .map(|((provider, model), t)| TargetStatus {
                provider,
                model,
                healthy: t.open * 2 <= t.reporting,
                share_percent: percent(t.requests, total),
                latency_p95_ms: t.p95,
                error_percent: one_decimal(t.errors, t.requests),
            })
            .collect();
        let healthy = st.targets.iter().filter(|t| t.healthy).count();
        st.healthy = Some(if st.targets.is_empty() {
            format!("{}/{}", verdict.target_count, verdict.target_count)
        } else {
            format!("{healthy}/{}", st.targets.len())
        });
        let latest = self
            .fresh_reports(&key.0, now_ms)
            .filter_map(|(_, s)| s.report.fallbacks.get(&key.1))
            .max_by(|a, b| a.time.cmp(&b.time));
        if let Some(f) = latest {
            st.last_fallback = Some(f.clone());
        }
        st
    }

    /// The status of a provider.
    pub fn provider_status(
        &self,
        key: &Key,
        verdict: &ProviderVerdict,
        snapshots: &BTreeMap<Key, Snapshot>,
        previous: Option<&ProviderStatus>,
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
        now_ms: u64,
    ) -> ProviderStatus {
        let mut st = previous.cloned().unwrap_or_default();
        st.observed_generation = verdict.generation;
        #[derive(Default)]
        struct M {
            req: u64,
            err: u64,
            p50: Option<u64>,
            p95: Option<u64>,
            ttft: Option<u64>,
            breakers: BreakerCounts,
            opened: u32,
        }
        let mut models: BTreeMap<String, M> = BTreeMap::new();
        let mut reporting = 0u32;
        for (pod, s) in self.fresh_reports(&key.0, now_ms) {
            let mut seen_here = false;
            // One breaker per (provider, model) per sidecar, even if several routes use it.
            let mut counted: Vec<&str> = Vec::new();
            for h in s.report.targets.iter().filter(|h| h.provider == key.1) {
                seen_here = true;
                let m = models.entry(h.model.clone()).or_default();
                m.req += h.requests;
                m.err += failures(&h.errors);
                m.p50 = m.p50.max(h.latency_p50_ms);
                m.p95 = m.p95.max(h.latency_p95_ms);
                m.ttft = m.ttft.max(h.ttft_p95_ms);
                if !counted.contains(&h.model.as_str()) {
                    counted.push(&h.model);
                    m.opened = m.opened.saturating_add(h.opened);
                    match h.breaker {
                        BreakerState::Closed => m.breakers.closed += 1,
                        BreakerState::Open => m.breakers.open += 1,
                        BreakerState::HalfOpen => m.breakers.half_open += 1,
                    }
                }
            }
            // A sidecar leaves out targets it had no requests for while
            // their breakers are closed: if its snapshot uses the model,
            // it carries it with the breaker closed.
            for model in snapshots
                .get(pod)
                .into_iter()
                .flat_map(|s| s.models_of(&key.1))
            {
                if !counted.contains(&model) {
                    counted.push(model);
                    models.entry(model.to_owned()).or_default().breakers.closed += 1;
                    seen_here = true;
                }
            }
            if seen_here {
                reporting += 1;
            }
        }
        let per_minute = |n: u64| n.saturating_mul(60_000) / self.report_interval_ms.max(1);
        st.sidecars = reporting;
        st.models = models
            .iter()
            .map(|(name, m)| ModelStatus {
                name: name.clone(),
                requests_per_minute: per_minute(m.req),
                error_percent: one_decimal(m.err, m.req),
                latency_p50_ms: m.p50,
                latency_p95_ms: m.p95,
                ttft_p95_ms: m.ttft,
                breakers: m.breakers,
                breakers_opened: m.opened,
            })
            .collect();
        let req: u64 = models.values().map(|m| m.req).sum();
        let err: u64 = models.values().map(|m| m.err).sum();
        let open: u32 = models.values().map(|m| m.breakers.open).sum();
        let breakers: u32 = models
            .values()
            .map(|m| m.breakers.closed + m.breakers.open + m.breakers.half_open)
            .sum();
        let state = if reporting == 0 {
            ProviderState::Unknown
        } else if breakers > 0 && open == breakers {
            ProviderState::Down
        } else if open > 0 || err * 100 > req * 5 {
            ProviderState::Degraded
        } else {
            ProviderState::Healthy
        };
        st.state = Some(state);
        st.error_percent = Some(one_decimal(err, req));
        st.latency_p95 = models
            .values()
            .filter_map(|m| m.p95)
            .max()
            .map(|ms| format!("{ms}ms"));
        st.ttft_p95 = models
            .values()
            .filter_map(|m| m.ttft)
            .max()
            .map(|ms| format!("{ms}ms"));
        st.breakers_open = Some(format!("{open}/{reporting}"));
        let healthy = match state {
            ProviderState::Healthy if req == 0 => Cond {
                ok: true,
                reason: "Healthy".into(),
                message: format!(
                    "{reporting} sidecars carry it with breakers closed; no requests recently"
                ),
            },
            ProviderState::Healthy => Cond {
                ok: true,
                reason: "Healthy".into(),
                message: format!("{reporting} sidecars report it healthy"),
            },
            ProviderState::Unknown => Cond {
                ok: false,
                reason: "NoReports".into(),
                message: "no sidecar has reported on this provider recently".into(),
            },
            ProviderState::Degraded => Cond {
                ok: false,
                reason: "Degraded".into(),
                message: format!("{open} breakers open, {}% errors", one_decimal(err, req)),
            },
            ProviderState::Down => Cond {
                ok: false,
                reason: "Down".into(),
                message: "every sidecar has its breaker open".into(),
            },
        };
        let ready = if verdict.usable {
            Cond {
                ok: true,
                reason: "Ready".into(),
                message: "sent to the sidecars of routes that use it".into(),
            }
        } else if !verdict.accepted.ok {
            verdict.accepted.clone()
        } else {
            verdict.credentials_resolved.clone()
        };
        for (t, c) in [
            ("CredentialsResolved", &verdict.credentials_resolved),
            ("Ready", &ready),
            ("Healthy", &healthy),
        ] {
            conditions::set(
                &mut st.conditions,
                t,
                c.ok,
                &c.reason,
                &c.message,
                verdict.generation,
                now.clone(),
            );
        }
        st
    }

    /// The status of a budget in its current window.
    pub fn budget_status(
        &mut self,
        key: &Key,
        budget: &Budget,
        verdict: &BudgetVerdict,
        window: &WindowBounds,
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) -> BudgetStatus {
        let mut st = budget.status.clone().unwrap_or_default();
        st.observed_generation = verdict.generation;
        let limit = limit_of(budget);
        let book = self.book(key, budget, window).clone();
        let spent = book.total.spent();
        st.window = Some(window.clone());
        st.spent = Spend {
            cost_usd: nanos_to_money(spent.cost_nanos),
            tokens: spent.tokens,
            requests: spent.requests,
        };
        let used = if budget.spec.tenant_header.is_some() {
            // Per tenant: the most used tenant decides.
            book.tenants
                .values()
                .map(|l| percent_used(l.spent(), limit))
                .max()
                .unwrap_or(0)
        } else {
            percent_used(spent, limit)
        };
        st.percent_used = used;
        st.used = Some(format!("{used}%"));
        st.limit = Some(limit_display(budget));
        let step = budget
            .spec
            .degrade
            .iter()
            .rposition(|s| used >= s.at_percent)
            .map(|i| i as u32);
        st.degrade_step = step;
        st.state = if used >= 100 {
            BudgetState::Exhausted
        } else if step.is_some() {
            BudgetState::Degraded
        } else if used >= budget.spec.soft_limit_percent {
            BudgetState::SoftLimit
        } else {
            BudgetState::Ok
        };
        st.top_tenants = top(&book.by_tenant);
        st.top_workloads = top(&book.by_workload);
        st.folded = book.folded.clone();
        let ready = match st.state {
            BudgetState::Exhausted => Cond {
                ok: false,
                reason: "Exhausted".into(),
                message: format!("limit reached; resets at {}", window.end),
            },
            _ => Cond {
                ok: true,
                reason: "WithinLimit".into(),
                message: format!("{used}% used"),
            },
        };
        for (t, c) in [
            ("Accepted", &verdict.accepted),
            ("ResolvedRefs", &verdict.resolved_refs),
            ("Ready", &ready),
        ] {
            conditions::set(
                &mut st.conditions,
                t,
                c.ok,
                &c.reason,
                &c.message,
                verdict.generation,
                now.clone(),
            );
        }
        st
    }
}

fn failures(errors: &BTreeMap<FailureClass, u64>) -> u64 {
    errors
        .iter()
        .filter(|(c, _)| **c != FailureClass::ClientCancelled)
        .map(|(_, n)| n)
        .sum()
}

fn percent(part: u64, whole: u64) -> u32 {
    if whole == 0 {
        0
    } else {
        u32::try_from(u128::from(part) * 100 / u128::from(whole)).unwrap_or(100)
    }
}

fn one_decimal(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0".into();
    }
    let tenths = u128::from(part) * 1000 / u128::from(whole);
    format!("{}.{}", tenths / 10, tenths % 10)
}

fn percent_used(spent: Vector, limit: Vector) -> u32 {
    let dim = |s: u64, l: u64| {
        if l == UNLIMITED || l == 0 {
            0
        } else {
            percent(s, l)
        }
    };
    dim(spent.cost_nanos, limit.cost_nanos)
        .max(dim(spent.tokens, limit.tokens))
        .max(dim(spent.requests, limit.requests))
}

fn limit_display(budget: &Budget) -> String {
    let l = budget.spec.limits.clone().unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(c) = l.cost_usd {
        parts.push(format!("${c}"));
    }
    if let Some(t) = l.tokens {
        parts.push(format!("{t} tokens"));
    }
    if let Some(r) = l.requests {
        parts.push(format!("{r} requests"));
    }
    if parts.is_empty() {
        "rate limits only".into()
    } else {
        format!("{}/{}", parts.join(", "), budget.spec.window.as_str())
    }
}

fn top(by: &BTreeMap<String, Spend>) -> Vec<SpendEntry> {
    let mut v: Vec<SpendEntry> = by
        .iter()
        .map(|(name, spent)| SpendEntry {
            name: name.clone(),
            spent: spent.clone(),
        })
        .collect();
    v.sort_by(|a, b| {
        (b.spent.cost_usd, b.spent.tokens, b.spent.requests).cmp(&(
            a.spent.cost_usd,
            a.spent.tokens,
            a.spent.requests,
        ))
    });
    v.truncate(5);
    v
}
