//! Checks that need several objects: references that must exist, models a
//! provider must list, targets that can be reached, names two routes claim.
//!
//! Pure functions from a set of objects to precise problems. The operator
//! turns them into `Accepted` / `ResolvedRefs` conditions; the standalone
//! sidecar refuses to load a file that has any error-level problem.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::ResourceExt;

use crate::budget::{Budget, ExceededAction};
use crate::common::ModelRef;
use crate::provider::{Capability, ModelSpec, Provider};
use crate::route::{LLMRoute, Strategy, Target};

/// The condition a problem makes false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionType {
    /// The object is wrong in itself.
    Accepted,
    /// Something it refers to is missing.
    ResolvedRefs,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::ResolvedRefs => "ResolvedRefs",
        }
    }
}

/// Whether a problem stops the object from being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The object is not used; sidecars keep its last good version.
    Error,
    /// The object is used, but probably does not do what its author meant.
    Warning,
}

/// Machine-readable reasons, used as condition reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    ProviderNotFound,
    ModelNotListed,
    BudgetNotFound,
    RouteNotFound,
    SecretNotFound,
    SecretKeyNotFound,
    CredentialsNotFound,
    CapabilityMissing,
    DuplicateTarget,
    UnreachableTarget,
    UnreachableRule,
    ModelConflict,
    InvalidHeader,
    PricingMissing,
    NoRoutes,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ProviderNotFound => "ProviderNotFound",
            Reason::ModelNotListed => "ModelNotListed",
            Reason::BudgetNotFound => "BudgetNotFound",
            Reason::RouteNotFound => "RouteNotFound",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyNotFound => "SecretKeyNotFound",
            Reason::CredentialsNotFound => "CredentialsNotFound",
            Reason::CapabilityMissing => "CapabilityMissing",
            Reason::DuplicateTarget => "DuplicateTarget",
            Reason::UnreachableTarget => "UnreachableTarget",
            Reason::UnreachableRule => "UnreachableRule",
            Reason::ModelConflict => "ModelConflict",
            Reason::InvalidHeader => "InvalidHeader",
            Reason::PricingMissing => "PricingMissing",
            Reason::NoRoutes => "NoRoutes",
        }
    }

    /// Which condition this reason sets to false.
    pub fn condition(self) -> ConditionType {
        match self {
            Reason::ProviderNotFound
            | Reason::ModelNotListed
            | Reason::BudgetNotFound
            | Reason::RouteNotFound
            | Reason::SecretNotFound
            | Reason::SecretKeyNotFound
            | Reason::CredentialsNotFound => ConditionType::ResolvedRefs,
            Reason::CapabilityMissing
            | Reason::DuplicateTarget
            | Reason::UnreachableTarget
            | Reason::UnreachableRule
            | Reason::ModelConflict
            | Reason::InvalidHeader
            | Reason::PricingMissing
            | Reason::NoRoutes => ConditionType::Accepted,
        }
    }
}

/// One thing wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Provider`, `LLMRoute` or `Budget`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The field at fault, e.g. `spec.targets[1].model`.
    pub field: String,
    pub reason: Reason,
    pub severity: Severity,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}: {}: {} ({})",
            self.kind,
            self.namespace,
            self.name,
            self.field,
            self.message,
            self.reason.as_str()
        )
    }
}

/// The objects of one namespace, as the checks see them.
#[derive(Debug, Clone, Default)]
pub struct Namespace<'a> {
    pub providers: BTreeMap<String, &'a Provider>,
    pub routes: BTreeMap<String, &'a LLMRoute>,
    pub budgets: BTreeMap<String, &'a Budget>,
}

impl<'a> Namespace<'a> {
    /// Groups objects by namespace (`default` when unset).
    pub fn group(
        providers: &'a [Provider],
        routes: &'a [LLMRoute],
        budgets: &'a [Budget],
    ) -> BTreeMap<String, Namespace<'a>> {
        let mut out: BTreeMap<String, Namespace<'a>> = BTreeMap::new();
        let ns = |o: &dyn Fn() -> Option<String>| o().unwrap_or_else(|| "default".into());
        for p in providers {
            let n = ns(&|| p.namespace());
            out.entry(n).or_default().providers.insert(p.name_any(), p);
        }
        for r in routes {
            let n = ns(&|| r.namespace());
            out.entry(n).or_default().routes.insert(r.name_any(), r);
        }
        for b in budgets {
            let n = ns(&|| b.namespace());
            out.entry(n).or_default().budgets.insert(b.name_any(), b);
        }
        out
    }

    fn model(&self, m: &ModelRef) -> Result<&'a ModelSpec, (Reason, String)> {
        let provider = self.providers.get(&m.provider_ref.name).ok_or_else(|| {
            (
                Reason::ProviderNotFound,
                format!(
                    "Provider {:?} does not exist in this namespace",
                    m.provider_ref.name
                ),
            )
        })?;
        provider
            .spec
            .models
            .iter()
            .find(|s| s.name == m.model)
            .ok_or_else(|| {
                let listed: Vec<&str> = provider
                    .spec
                    .models
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                (
                    Reason::ModelNotListed,
                    format!(
                        "Provider {:?} does not list model {:?} (it lists: {})",
                        m.provider_ref.name,
                        m.model,
                        listed.join(", ")
                    ),
                )
            })
    }

    /// Every problem of every object in the namespace.
    pub fn check(&self, namespace: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        for p in self.providers.values() {
            out.extend(check_provider(p, namespace));
        }
        for r in self.routes.values() {
            out.extend(self.check_route(r, namespace));
        }
        out.extend(self.model_conflicts(namespace));
        for b in self.budgets.values() {
            out.extend(self.check_budget(b, namespace));
        }
        out
    }

    /// The problems of one route.
    pub fn check_route(&self, route: &LLMRoute, namespace: &str) -> Vec<Problem> {
        let mut p = Sink::new("LLMRoute", namespace, &route.name_any());
        let spec = &route.spec;
        self.check_targets(&mut p, "spec.targets", &spec.targets);
        let fallback_possible =
            spec.fallback.max_depth != Some(1) && !spec.fallback.triggers.is_empty();
        let depth = spec.fallback.max_depth.map(|d| d as usize);
        unreachable_targets(
            &mut p,
            "spec.targets",
            &spec.targets,
            spec.strategy,
            fallback_possible,
            depth,
        );
        let mut seen_matches = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            self.check_targets(&mut p, &format!("{field}.targets"), &rule.targets);
            let strategy = rule.strategy.unwrap_or(spec.strategy);
            unreachable_targets(
                &mut p,
                &format!("{field}.targets"),
                &rule.targets,
                strategy,
                fallback_possible,
                depth,
            );
            if let Some(j) = seen_matches.iter().position(|m| *m == &rule.match_) {
                p.error(
                    &format!("{field}.match"),
                    Reason::UnreachableRule,
                    format!("this rule can never match: spec.rules[{j}] has the same match and comes first"),
                );
            }
            seen_matches.push(&rule.match_);
        }
        for (i, b) in spec.budget_refs.iter().enumerate() {
            if !self.budgets.contains_key(&b.name) {
                p.error(
                    &format!("spec.budgetRefs[{i}].name"),
                    Reason::BudgetNotFound,
                    format!("Budget {:?} does not exist in this namespace", b.name),
                );
            }
        }
        if let Some(embedding) = spec.cache.as_ref().and_then(|c| c.embedding.as_ref()) {
            match self.model(embedding) {
                Err((reason, message)) => p.error("spec.cache.embedding", reason, message),
                Ok(m) if !m.capabilities.contains(&Capability::Embeddings) => p.error(
                    "spec.cache.embedding.model",
                    Reason::CapabilityMissing,
                    format!(
                        "model {:?} does not list the embeddings capability",
                        embedding.model
                    ),
                ),
                Ok(_) => {}
            }
        }
        p.done()
    }

    fn check_targets(&self, p: &mut Sink, field: &str, targets: &[Target]) {
        let mut seen = BTreeSet::new();
        for (i, t) in targets.iter().enumerate() {
            let f = format!("{field}[{i}]");
            if !seen.insert((&t.provider_ref.name, &t.model)) {
                p.error(
                    &f,
                    Reason::DuplicateTarget,
                    format!("{}/{} is listed twice", t.provider_ref.name, t.model),
                );
            }
            if let Err((reason, message)) = self.model(&t.model_ref()) {
                let f = match reason {
                    Reason::ProviderNotFound => format!("{f}.providerRef.name"),
                    _ => format!("{f}.model"),
                };
                p.error(&f, reason, message);
            }
        }
    }

    /// Two routes claiming the same model name for the same pods: the older
    /// one keeps it, the newer one is not accepted.
    fn model_conflicts(&self, namespace: &str) -> Vec<Problem> {
        let mut claims: BTreeMap<&str, Vec<&LLMRoute>> = BTreeMap::new();
        for r in self.routes.values() {
            for name in std::iter::once(&r.spec.model).chain(&r.spec.aliases) {
                claims.entry(name).or_default().push(r);
            }
        }
        let mut out = Vec::new();
        for (name, mut routes) in claims {
            if routes.len() < 2 {
                continue;
            }
            routes.sort_by_key(|r| (r.metadata.creation_timestamp.clone(), r.name_any()));
            let owner = routes[0];
            for r in &routes[1..] {
                let disjoint = matches!(
                    (&owner.spec.pod_selector, &r.spec.pod_selector),
                    (Some(a), Some(b)) if a != b
                );
                if disjoint {
                    // Different pods may be selected; the operator resolves
                    // the overlap per pod.
                    continue;
                }
                let mut p = Sink::new("LLMRoute", namespace, &r.name_any());
                p.error(
                    "spec.model",
                    Reason::ModelConflict,
                    format!(
                        "model name {name:?} is already claimed by LLMRoute {:?} for the same pods",
                        owner.name_any()
                    ),
                );
                out.extend(p.done());
            }
        }
        out
    }

    /// The problems of one budget.
    pub fn check_budget(&self, budget: &Budget, namespace: &str) -> Vec<Problem> {
        let mut p = Sink::new("Budget", namespace, &budget.name_any());
        let spec = &budget.spec;
        for (i, r) in spec.routes.iter().enumerate() {
            if !self.routes.contains_key(r) {
                p.error(
                    &format!("spec.routes[{i}]"),
                    Reason::RouteNotFound,
                    format!("LLMRoute {r:?} does not exist in this namespace"),
                );
            }
        }
        for (i, step) in spec.degrade.iter().enumerate() {
            if let Err((reason, message)) = self.model(&step.to) {
                p.error(&format!("spec.degrade[{i}].to"), reason, message);
            }
        }
        if let (ExceededAction::Downgrade, Some(to)) =
            (spec.on_exceeded.action, &spec.on_exceeded.to)
            && let Err((reason, message)) = self.model(to)
        {
            p.error("spec.onExceeded.to", reason, message);
        }
        let covered = self.routes_of(budget);
        if covered.is_empty() && spec.route_selector.is_none() {
            p.warn(
                "spec.routes",
                Reason::NoRoutes,
                "no route counts against this budget: list routes, set routeSelector, or reference it from a route's budgetRefs".into(),
            );
        }
        if spec.limits.as_ref().is_some_and(|l| l.cost_usd.is_some()) {
            for r in covered {
                for t in r.spec.all_targets() {
                    if let Ok(m) = self.model(&t.model_ref())
                        && m.pricing.is_none()
                    {
                        p.warn(
                            "spec.limits.costUSD",
                            Reason::PricingMissing,
                            format!(
                                "route {:?} sends traffic to {}/{} which has no pricing, so its cost counts as zero",
                                r.name_any(),
                                t.provider_ref.name,
                                t.model
                            ),
                        );
                    }
                }
            }
        }
        p.done()
    }

    /// Routes whose traffic counts against `budget` by name or by
    /// reference (label selectors are matched by the caller, which knows
    /// labels).
    pub fn routes_of(&self, budget: &Budget) -> Vec<&'a LLMRoute> {
        let name = budget.name_any();
        self.routes
            .values()
            .filter(|r| {
                budget.spec.routes.contains(&r.name_any())
                    || r.spec.budget_refs.iter().any(|b| b.name == name)
                    || budget
                        .spec
                        .route_selector
                        .as_ref()
                        .is_some_and(|s| crate::selector::matches(s, r.metadata.labels.as_ref()))
            })
            .copied()
            .collect()
    }
}

/// Problems of a provider that need no other object.
pub fn check_provider(provider: &Provider, namespace: &str) -> Vec<Problem> {
    let mut p = Sink::new("Provider", namespace, &provider.name_any());
    for name in provider.spec.headers.keys() {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let reserved = [
            "authorization",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "host",
            "content-length",
        ]
        .contains(&name.to_ascii_lowercase().as_str());
        if !ok {
            p.error(
                &format!("spec.headers.{name}"),
                Reason::InvalidHeader,
                "header names may use letters, digits and '-' only, at most 64".into(),
            );
        } else if reserved {
            p.error(
                &format!("spec.headers.{name}"),
                Reason::InvalidHeader,
                "credentials belong in spec.credentials; this header is set by the sidecar".into(),
            );
        }
    }
    p.done()
}

/// What looking up a Secret key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretLookup {
    Found,
    NoSecret,
    NoKey,
}

/// Whether a provider's credentials can be resolved: `secret` looks up a
/// Secret key in the provider's namespace (cluster), `env` whether an
/// environment variable is set (standalone). Values are never read here.
pub fn check_credentials(
    provider: &Provider,
    namespace: &str,
    secret: impl Fn(&str, &str) -> SecretLookup,
    env: impl Fn(&str) -> bool,
) -> Vec<Problem> {
    let mut p = Sink::new("Provider", namespace, &provider.name_any());
    if let Some(c) = &provider.spec.credentials {
        if let Some(r) = &c.secret_ref {
            match secret(&r.name, &r.key) {
                SecretLookup::Found => {}
                SecretLookup::NoSecret => p.error(
                    "spec.credentials.secretRef.name",
                    Reason::SecretNotFound,
                    format!("Secret {:?} does not exist in this namespace", r.name),
                ),
                SecretLookup::NoKey => p.error(
                    "spec.credentials.secretRef.key",
                    Reason::SecretKeyNotFound,
                    format!("Secret {:?} has no key {:?}", r.name, r.key),
                ),
            }
        }
        if let Some(var) = &c.env
            && !env(var)
        {
            p.error(
                "spec.credentials.env",
                Reason::CredentialsNotFound,
                format!("environment variable {var} is not set"),
            );
        }
    }
    p.done()
}

/// Targets that no request can ever reach under the route's fallback settings.
fn unreachable_targets(
    p: &mut Sink,
    field: &str,
    targets: &[Target],
    strategy: Strategy,
    fallback_possible: bool,
    max_depth: Option<usize>,
) {
    // Only `priority` has a fixed order; the other strategies put every
    // target first some of the time.
    if strategy != Strategy::Priority || targets.len() < 2 {
        return;
    }
    let reach = if fallback_possible {
        max_depth.unwrap_or(usize::MAX)
    } else {
        1
    };
    if targets.len() > reach {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by_key(|&i| targets[i].priority);
        for &i in &order[reach..] {
            let why = if fallback_possible {
                format!("fallback.maxDepth is {reach}")
            } else {
                "fallback is disabled (maxDepth 1 or no triggers)".to_owned()
            };
            p.error(
                &format!("{field}[{i}]"),
                Reason::UnreachableTarget,
                format!(
                    "{}/{} can never be tried: with strategy priority it comes after {reach} other target(s) and {why}",
                    targets[i].provider_ref.name, targets[i].model
                ),
            );
        }
    }
}

/// Collects problems of one object.
struct Sink {
    kind: &'static str,
    namespace: String,
    name: String,
    problems: Vec<Problem>,
}

impl Sink {
    fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            problems: Vec::new(),
        }
    }

    fn push(&mut self, field: &str, reason: Reason, severity: Severity, message: String) {
        self.problems.push(Problem {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            field: field.to_owned(),
            reason,
            severity,
            message,
        });
    }

    fn error(&mut self, field: &str, reason: Reason, message: String) {
        self.push(field, reason, Severity::Error, message);
    }

    fn warn(&mut self, field: &str, reason: Reason, message: String) {
        self.push(field, reason, Severity::Warning, message);
    }

    fn done(self) -> Vec<Problem> {
        self.problems
    }
}

#[cfg(test)]
mod tests;
