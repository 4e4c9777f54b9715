//! Cluster state in, per-pod snapshots and per-object verdicts out.
//!
//! A pure function: the controllers gather the objects, Secrets and pods,
//! call [`compile`], push the snapshots whose version changed and write the
//! verdicts into status. Everything here is deterministic, so the same
//! cluster state always gives the same snapshot versions.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use kube::ResourceExt;
use sluice_crds::budget::{Spend, WindowBounds};
use sluice_crds::semantic::{
    ConditionType, Namespace, Problem, Reason, SecretLookup, Severity, check_credentials,
};
use sluice_crds::snapshot::{Allowance, Credential, Snapshot};
use sluice_crds::{Budget, Duration, LLMRoute, Provider};

/// A pod that carries a Sluice sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `Kind/name` of the owning workload, for cost attribution.
    pub workload: Option<String>,
}

/// The Secret keys Providers may reference: `(namespace, name) → key → value`.
pub type Secrets = BTreeMap<(String, String), BTreeMap<String, Credential>>;

/// Everything compile looks at.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub providers: Vec<Provider>,
    pub routes: Vec<LLMRoute>,
    pub budgets: Vec<Budget>,
    pub secrets: Secrets,
    pub pods: Vec<PodInfo>,
}

/// `(namespace, name)` of an object or pod.
pub type Key = (String, String);

/// One condition's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    fn ok(reason: &str, message: &str) -> Self {
        Self {
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// False with the first error's reason; every error in the message.
    fn from_problems(problems: &[&Problem], ok_reason: &str, ok_message: &str) -> Self {
        match problems.first() {
            None => Self::ok(ok_reason, ok_message),
            Some(first) => Self {
                ok: false,
                reason: first.reason.as_str().into(),
                message: problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        }
    }
}

/// What compile concluded about a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteVerdict {
    pub generation: Option<i64>,
    pub accepted: Cond,
    pub resolved_refs: Cond,
    /// Whether the current spec goes to sidecars.
    pub usable: bool,
    /// Pods whose sidecars serve it.
    pub selected_pods: Vec<Key>,
    pub target_count: u32,
    /// A content version of the route as compiled (spec, generation,
    /// usability): what `status.configVersion` shows and sidecars run once
    /// `Programmed`.
    pub version: String,
    /// Warnings that do not stop the route.
    pub warnings: Vec<String>,
}

/// What compile concluded about a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderVerdict {
    pub generation: Option<i64>,
    pub credentials_resolved: Cond,
    pub accepted: Cond,
    pub usable: bool,
}

/// What compile concluded about a budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetVerdict {
    pub generation: Option<i64>,
    pub accepted: Cond,
    pub resolved_refs: Cond,
    pub usable: bool,
    /// Routes whose traffic counts against it.
    pub routes: Vec<String>,
    pub warnings: Vec<String>,
}

/// The output of [`compile`].
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub snapshots: BTreeMap<Key, Snapshot>,
    pub routes: BTreeMap<Key, RouteVerdict>,
    pub providers: BTreeMap<Key, ProviderVerdict>,
    pub budgets: BTreeMap<Key, BudgetVerdict>,
}

/// What a budget has spent and what one sidecar may still spend; supplied
/// by the caller, which keeps the ledgers.
pub trait Allowances {
    /// Starts a compile at `now`, before any [`Allowances::for_pod`]: every
    /// pod with a sidecar is a sidecar a budget will be split between.
    fn begin(&mut self, pods: &[PodInfo], now: jiff::Timestamp) {
        let _ = (pods, now);
    }

    /// `budget` is `(namespace, name)`; `pod` the sidecar's pod.
    fn for_pod(
        &mut self,
        budget: &Budget,
        window: &WindowBounds,
        pod: &PodInfo,
    ) -> (Spend, Allowance);
}

/// The snapshots of the previous compile, by pod, with a digest of the
/// inputs each was built from: a pod whose inputs did not change keeps its
/// snapshot instead of being rebuilt and re-sealed (the expensive part,
/// a serialization and a hash, which with a thousand pods and a compile
/// every report interval is most of the operator's steady CPU).
#[derive(Debug, Default)]
pub struct Memo {
    by_pod: BTreeMap<Key, ([u8; 16], Snapshot)>,
    /// Snapshots built by the last compile.
    pub rebuilt: usize,
    /// Snapshots kept by the last compile.
    pub reused: usize,
}

/// Builds every pod's snapshot and every object's verdict.
pub fn compile(
    state: &ClusterState,
    now: jiff::Timestamp,
    report_interval: Duration,
    allowances: &mut dyn Allowances,
) -> Compiled {
    compile_incremental(
        state,
        now,
        report_interval,
        allowances,
        &mut Memo::default(),
    )
}

/// [`compile`], rebuilding only the snapshots whose inputs changed since
/// the compile `memo` remembers. The result is the same as a full compile.
pub fn compile_incremental(
    state: &ClusterState,
    now: jiff::Timestamp,
    report_interval: Duration,
    allowances: &mut dyn Allowances,
    memo: &mut Memo,
) -> Compiled {
    let mut out = Compiled::default();
    allowances.begin(&state.pods, now);
    memo.rebuilt = 0;
    memo.reused = 0;
    let grouped = Namespace::group(&state.providers, &state.routes, &state.budgets);
    let mut digests: BTreeMap<&str, Digests> = BTreeMap::new();
    for (ns, objects) in &grouped {
        let mut problems = objects.check(ns);
        for p in objects.providers.values() {
            problems.extend(check_credentials(
                p,
                ns,
                |name, key| lookup(&state.secrets, ns, name, key),
                // In a cluster, `env` credentials come from the sidecar's own
                // environment; the operator cannot see them.
                |_| true,
            ));
        }
        judge_namespace(ns, objects, &problems, &mut out);
        let d = namespace_digests(ns, objects, state, &out);
        for (name, digest) in &d.routes {
            if let Some(v) = out.routes.get_mut(&(ns.clone(), name.clone())) {
                v.version = hex::encode(&digest[..8]);
            }
        }
        digests.insert(ns.as_str(), d);
    }
    for pod in &state.pods {
        let Some(objects) = grouped.get(&pod.namespace) else {
            out.snapshots.insert(
                (pod.namespace.clone(), pod.name.clone()),
                empty_snapshot(pod, report_interval),
            );
            continue;
        };
        let inputs = Inputs {
            pod,
            objects,
            state,
            now,
            report_interval,
            digests: digests.get(pod.namespace.as_str()),
        };
        let snapshot = snapshot_for(&inputs, &mut out, allowances, memo);
        out.snapshots
            .insert((pod.namespace.clone(), pod.name.clone()), snapshot);
    }
    memo.by_pod.retain(|k, _| out.snapshots.contains_key(k));
    for v in out.routes.values_mut() {
        v.selected_pods.sort();
    }
    out
}

/// Digests of what a namespace's objects contribute to a snapshot, each
/// computed once per compile: a route as compiled (spec, generation,
/// creation time, usable), a provider with its usability and the value of
/// the Secret key it references.
#[derive(Default)]
struct Digests {
    routes: BTreeMap<String, [u8; 32]>,
    providers: BTreeMap<String, [u8; 32]>,
}

fn digest_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn namespace_digests(
    ns: &str,
    objects: &Namespace<'_>,
    state: &ClusterState,
    out: &Compiled,
) -> Digests {
    let key = |name: &String| (ns.to_owned(), name.clone());
    let json = |v: serde_json::Result<Vec<u8>>| v.unwrap_or_default();
    let mut d = Digests::default();
    for (name, r) in &objects.routes {
        let usable = out.routes.get(&key(name)).map(|v| v.usable);
        let m = &r.metadata;
        let spec = json(serde_json::to_vec(&(
            &m.generation,
            &m.creation_timestamp,
            &r.spec,
            usable,
        )));
        d.routes
            .insert(name.clone(), digest_of(&[name.as_bytes(), &spec]));
    }
    for (name, p) in &objects.providers {
        let usable = out.providers.get(&key(name)).map(|v| v.usable);
        let spec = json(serde_json::to_vec(&(&p.spec, usable)));
        let secret = credential_of(state, ns, p).map_or("", Credential::expose);
        d.providers.insert(
            name.clone(),
            digest_of(&[name.as_bytes(), &spec, secret.as_bytes()]),
        );
    }
    d
}

/// The value of the Secret key provider `p` of namespace `ns` references.
fn credential_of<'s>(state: &'s ClusterState, ns: &str, p: &Provider) -> Option<&'s Credential> {
    let r = p.spec.credentials.as_ref()?.secret_ref.as_ref()?;
    state
        .secrets
        .get(&(ns.to_owned(), r.name.clone()))?
        .get(&r.key)
}

/// What one pod's snapshot is built from.
struct Inputs<'a> {
    pod: &'a PodInfo,
    objects: &'a Namespace<'a>,
    state: &'a ClusterState,
    now: jiff::Timestamp,
    report_interval: Duration,
    /// The namespace's object digests (see [`namespace_digests`]).
    digests: Option<&'a Digests>,
}

fn lookup(secrets: &Secrets, ns: &str, name: &str, key: &str) -> SecretLookup {
    match secrets.get(&(ns.to_owned(), name.to_owned())) {
        None => SecretLookup::NoSecret,
        Some(data) if data.contains_key(key) => SecretLookup::Found,
        Some(_) => SecretLookup::NoKey,
    }
}

fn errors_of<'a>(
    problems: &'a [Problem],
    kind: &str,
    name: &str,
    cond: ConditionType,
) -> Vec<&'a Problem> {
    problems
        .iter()
        .filter(|p| {
            p.kind == kind
                && p.name == name
                && p.severity == Severity::Error
                && p.reason.condition() == cond
        })
        .collect()
}

fn warnings_of(problems: &[Problem], kind: &str, name: &str) -> Vec<String> {
    problems
        .iter()
        .filter(|p| p.kind == kind && p.name == name && p.severity == Severity::Warning)
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect()
}

/// Conditions of every object of one namespace.
fn judge_namespace(ns: &str, objects: &Namespace<'_>, problems: &[Problem], out: &mut Compiled) {
    for (name, p) in &objects.providers {
        let credential_errors: Vec<&Problem> =
            errors_of(problems, "Provider", name, ConditionType::ResolvedRefs);
        let spec_errors = errors_of(problems, "Provider", name, ConditionType::Accepted);
        let credentials_resolved =
            Cond::from_problems(&credential_errors, "Resolved", "credentials found");
        let accepted = Cond::from_problems(&spec_errors, "Accepted", "spec is valid");
        out.providers.insert(
            (ns.to_owned(), name.clone()),
            ProviderVerdict {
                generation: p.metadata.generation,
                usable: credentials_resolved.ok && accepted.ok,
                credentials_resolved,
                accepted,
            },
        );
    }
    let provider_usable = |name: &str| {
        out.providers
            .get(&(ns.to_owned(), name.to_owned()))
            .is_some_and(|v| v.usable)
    };
    let mut route_verdicts = Vec::new();
    for (name, r) in &objects.routes {
        let accepted_errors = errors_of(problems, "LLMRoute", name, ConditionType::Accepted);
        let mut resolved_errors: Vec<Problem> =
            errors_of(problems, "LLMRoute", name, ConditionType::ResolvedRefs)
                .into_iter()
                .cloned()
                .collect();
        // A provider that exists but cannot be used (bad spec, missing
        // Secret) leaves the route unresolved too.
        let mut seen = BTreeSet::new();
        for t in r.spec.all_targets() {
            let pname = &t.provider_ref.name;
            if objects.providers.contains_key(pname)
                && !provider_usable(pname)
                && seen.insert(pname.clone())
            {
                resolved_errors.push(Problem {
                    kind: "LLMRoute",
                    namespace: ns.to_owned(),
                    name: name.clone(),
                    field: "spec.targets".into(),
                    reason: Reason::ProviderNotFound,
                    severity: Severity::Error,
                    message: format!("Provider {pname:?} is not ready (see its conditions)"),
                });
            }
        }
        let resolved_refs: Vec<&Problem> = resolved_errors.iter().collect();
        let accepted = Cond::from_problems(&accepted_errors, "Accepted", "spec is valid");
        let mut resolved =
            Cond::from_problems(&resolved_refs, "ResolvedRefs", "all references resolved");
        if !resolved.ok
            && resolved.message.contains("is not ready")
            && resolved.reason == "ProviderNotFound"
        {
            resolved.reason = "ProviderNotReady".into();
        }
        route_verdicts.push((
            (ns.to_owned(), name.clone()),
            RouteVerdict {
                generation: r.metadata.generation,
                usable: accepted.ok && resolved.ok,
                accepted,
                resolved_refs: resolved,
                selected_pods: Vec::new(),
                target_count: u32::try_from(r.spec.targets.len()).unwrap_or(u32::MAX),
                version: String::new(),
                warnings: warnings_of(problems, "LLMRoute", name),
            },
        ));
    }
    out.routes.extend(route_verdicts);
    for (name, b) in &objects.budgets {
        let accepted_errors = errors_of(problems, "Budget", name, ConditionType::Accepted);
        let resolved_errors = errors_of(problems, "Budget", name, ConditionType::ResolvedRefs);
        let accepted = Cond::from_problems(&accepted_errors, "Accepted", "spec is valid");
        let resolved_refs =
            Cond::from_problems(&resolved_errors, "ResolvedRefs", "all references resolved");
        let mut routes: Vec<String> = objects.routes_of(b).iter().map(|r| r.name_any()).collect();
        routes.sort();
        out.budgets.insert(
            (ns.to_owned(), name.clone()),
            BudgetVerdict {
                generation: b.metadata.generation,
                usable: accepted.ok && resolved_refs.ok,
                accepted,
                resolved_refs,
                routes,
                warnings: warnings_of(problems, "Budget", name),
            },
        );
    }
}

mod snapshot;
use snapshot::{empty_snapshot, snapshot_for};

#[cfg(test)]
mod tests;
