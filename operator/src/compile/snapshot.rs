//! One pod's snapshot: the routes that select it, the providers they need
//! with their keys, the budgets with this sidecar's allowance, sealed with
//! a content version; unchanged inputs reuse the previous snapshot.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt as _;
use sha2::{Digest as _, Sha256};
use sluice_crds::snapshot::{BudgetEntry, PodIdentity, ProviderEntry, RouteEntry, Snapshot};
use sluice_crds::{Duration, LLMRoute, selector};

use super::{Allowances, Compiled, Inputs, Memo, PodInfo, credential_of};

pub(super) fn empty_snapshot(pod: &PodInfo, report_interval: Duration) -> Snapshot {
    Snapshot {
        version: String::new(),
        pod: identity(pod),
        report_interval,
        routes: Vec::new(),
        providers: Vec::new(),
        budgets: Vec::new(),
        held_routes: Vec::new(),
    }
    .seal()
}

fn identity(pod: &PodInfo) -> PodIdentity {
    PodIdentity {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        service_account: pod.service_account.clone(),
        labels: pod.labels.clone(),
        workload: pod.workload.clone(),
    }
}

pub(super) fn snapshot_for(
    inputs: &Inputs<'_>,
    out: &mut Compiled,
    allowances: &mut dyn Allowances,
    memo: &mut Memo,
) -> Snapshot {
    let Inputs {
        pod,
        objects,
        state,
        now,
        report_interval,
        ..
    } = *inputs;
    let ns = &pod.namespace;
    let mut routes = Vec::new();
    let mut held = Vec::new();
    let mut claimed: BTreeMap<&str, &LLMRoute> = BTreeMap::new();
    // Older routes first, so a newer route claiming the same name loses.
    let mut selected: Vec<&LLMRoute> = objects
        .routes
        .values()
        .copied()
        .filter(|r| selector::matches_opt(r.spec.pod_selector.as_ref(), Some(&pod.labels)))
        .collect();
    selected.sort_by_key(|r| (r.metadata.creation_timestamp.clone(), r.name_any()));
    for r in selected {
        let key = (ns.clone(), r.name_any());
        let Some(verdict) = out.routes.get_mut(&key) else {
            continue;
        };
        verdict.selected_pods.push((ns.clone(), pod.name.clone()));
        if !verdict.usable {
            held.push(r.name_any());
            continue;
        }
        let names: Vec<&str> = std::iter::once(r.spec.model.as_str())
            .chain(r.spec.aliases.iter().map(String::as_str))
            .collect();
        if let Some(owner) = names.iter().find_map(|n| claimed.get(n)) {
            verdict.warnings.push(format!(
                "not served on pod {}: LLMRoute {:?} claims the same model name there",
                pod.name,
                owner.name_any()
            ));
            continue;
        }
        for n in names {
            claimed.insert(n, r);
        }
        routes.push(r);
    }
    let route_names: BTreeSet<String> = routes.iter().map(|r| r.name_any()).collect();

    let mut budgets = Vec::new();
    for (name, b) in &objects.budgets {
        let key = (ns.clone(), name.clone());
        let Some(verdict) = out.budgets.get(&key).filter(|v| v.usable) else {
            continue;
        };
        let covered: Vec<String> = verdict
            .routes
            .iter()
            .filter(|r| route_names.contains(*r))
            .cloned()
            .collect();
        if covered.is_empty() {
            continue;
        }
        let window = b.spec.window.bounds_rfc3339(now);
        let (spent, allowance) = allowances.for_pod(b, &window, pod);
        budgets.push(BudgetEntry {
            name: name.clone(),
            namespace: ns.clone(),
            spec: b.spec.clone(),
            routes: covered,
            applies_to_pod: selector::matches_opt(b.spec.pod_selector.as_ref(), Some(&pod.labels)),
            window,
            spent,
            allowance,
        });
    }

    let provider_names: BTreeSet<String> = routes
        .iter()
        .flat_map(|r| r.spec.uses())
        .chain(budgets.iter().flat_map(|b| b.spec.uses()))
        .map(|(provider, _)| provider.to_owned())
        .collect();
    // Everything this pod's snapshot holds is known now; the rest only
    // copies and seals. Unchanged inputs: keep the previous snapshot.
    let key = (ns.clone(), pod.name.clone());
    let digest = inputs.digests.map(|d| {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&(identity(pod), report_interval, &held)).unwrap_or_default());
        for r in &routes {
            h.update(d.routes.get(&r.name_any()).copied().unwrap_or_default());
        }
        for name in &provider_names {
            h.update(name.as_bytes());
            h.update(d.providers.get(name).copied().unwrap_or_default());
        }
        h.update(serde_json::to_vec(&budgets).unwrap_or_default());
        let full: [u8; 32] = h.finalize().into();
        let mut short = [0u8; 16];
        short.copy_from_slice(&full[..16]);
        short
    });
    if let Some(d) = digest
        && let Some((previous, snapshot)) = memo.by_pod.get(&key)
        && *previous == d
    {
        memo.reused += 1;
        return snapshot.clone();
    }
    memo.rebuilt += 1;

    let providers = provider_names
        .into_iter()
        .filter_map(|name| {
            let p = objects.providers.get(&name)?;
            let usable = out
                .providers
                .get(&(ns.clone(), name.clone()))
                .is_some_and(|v| v.usable);
            usable.then(|| ProviderEntry {
                name: name.clone(),
                namespace: ns.clone(),
                spec: p.spec.clone(),
                credential: credential_of(state, ns, p).cloned(),
            })
        })
        .collect();

    let snapshot = Snapshot {
        version: String::new(),
        pod: identity(pod),
        report_interval,
        routes: routes
            .into_iter()
            .map(|r| RouteEntry {
                name: r.name_any(),
                namespace: ns.clone(),
                generation: r.metadata.generation.unwrap_or(0),
                spec: r.spec.clone(),
            })
            .collect(),
        providers,
        budgets,
        held_routes: held,
    }
    .seal();
    if let Some(d) = digest {
        memo.by_pod.insert(key, (d, snapshot.clone()));
    }
    snapshot
}
