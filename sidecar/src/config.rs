//! The sidecar's runtime configuration, converted from a [`Snapshot`] at one
//! boundary ([`TryFrom`]) and held in a [`ConfigHandle`] that requests read
//! without locks. A snapshot that cannot be converted is refused with every
//! reason at once, and the last good configuration keeps serving.
//!
//! Standalone mode builds the snapshot from the YAML file (`standalone`);
//! cluster mode will receive it from the operator. Both cross this boundary.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
use sluice_crds::provider::{ProviderSpec, ResolvedTimeouts, Timeouts};
use sluice_crds::route::{CatchAll, LLMRouteSpec};
use sluice_crds::snapshot::Snapshot;
use sluice_crds::{ProviderType, Trigger};

use crate::provider::{Endpoint, mock};

/// A configuration the sidecar serves with.
#[derive(Debug)]
pub struct Config {
    /// The snapshot's content version.
    pub version: String,
    pub routes: Vec<Arc<Route>>,
    /// Virtual model names and aliases → index into `routes`.
    by_model: HashMap<String, usize>,
    pub providers: Vec<Arc<Provider>>,
    /// The budgets this sidecar enforces, with their ledgers.
    pub budgets: crate::budget::Budgets,
}

/// One LLMRoute, ready to route with.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// What a request keeps of its route, made once.
    pub tag: RouteTag,
    pub namespace: String,
    /// The virtual model clients send.
    pub model: String,
    pub aliases: Vec<String>,
    /// Targets in the order the `priority` strategy tries them.
    pub targets: Vec<Target>,
    /// Failure triggers that move on to the next target.
    pub fallback_triggers: Vec<Trigger>,
    /// How many targets one request may try, the first included.
    pub max_depth: usize,
    pub catch_all: Option<CatchAll>,
    /// The route's timeout overrides.
    pub timeouts: Timeouts,
    /// The whole spec, for the stages that read it directly (retry, and the
    /// governance stages once wired: cache, PII, budgets).
    pub spec: LLMRouteSpec,
    /// Orders `targets` by `spec.strategy`.
    pub balancer: crate::balance::Balancer,
    /// Content rules, in order, with their own targets and balancer.
    pub rules: Vec<Rule>,
    /// Bounds retries to `retry.budgetPercent` of the route's requests.
    pub retry_budget: crate::attempt::RetryBudget,
    /// `spec.pii`, compiled; `None` when off.
    pub pii: Option<crate::pii::Scrubber>,
    /// `spec.cache`, with its entries.
    pub cache: crate::cache::RouteCache,
    /// Whether anything decides by the prompt's token count: rules with
    /// input-token ranges, the `cost` and `least-busy` strategies, a
    /// provider's `tokensPerMinute`, a budget. Only then is every prompt
    /// tokenised; context windows tokenise only a prompt whose upper bound
    /// could reach one ([`crate::route::RequestInfo::of_chat`]); otherwise a
    /// rough count serves the metrics (see [`crate::tokens::rough`]).
    pub counts_tokens: bool,
}

/// A route as a request's tracker keeps it: the labels of a request that
/// reached no target, and the `x-sluice-route` value; cloned by reference.
#[derive(Clone, Debug)]
pub struct RouteTag {
    pub labels: Arc<crate::metrics::TargetLabels>,
    /// `None` for a name that is not a valid header value.
    pub header: Option<http::HeaderValue>,
}

impl RouteTag {
    pub fn new(route: &str) -> Self {
        Self {
            labels: Arc::new(crate::metrics::TargetLabels::unrouted(Some(route))),
            header: http::HeaderValue::from_str(route).ok(),
        }
    }
}

impl Route {
    /// Every target the route may send to: its own and its rules'.
    pub fn all_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets
            .iter()
            .chain(self.rules.iter().flat_map(|r| r.targets.iter()))
    }

    /// What in the route itself needs token counts (budgets are added by
    /// [`Config::mark_token_needs`]).
    fn needs_tokens(&self) -> bool {
        use sluice_crds::route::Strategy;
        let strategy = |s: Strategy| matches!(s, Strategy::Cost | Strategy::LeastBusy);
        strategy(self.spec.strategy)
            || self.rules.iter().any(|r| {
                strategy(r.strategy)
                    || r.match_.min_input_tokens.is_some()
                    || r.match_.max_input_tokens.is_some()
            })
            || self.all_targets().any(|t| {
                t.provider
                    .spec
                    .limits
                    .as_ref()
                    .is_some_and(|l| l.tokens_per_minute.is_some())
            })
    }

    /// The smallest context window among the route's targets: a prompt
    /// whose token count cannot reach it needs no tokenizer to pass the
    /// capability filter.
    pub fn min_context_window(&self) -> Option<u32> {
        self.all_targets().filter_map(|t| t.context_window).min()
    }
}

/// A content rule with its targets resolved.
#[derive(Debug)]
pub struct Rule {
    pub match_: sluice_crds::route::RuleMatch,
    pub targets: Vec<Target>,
    pub strategy: sluice_crds::route::Strategy,
    pub balancer: crate::balance::Balancer,
}

/// A provider and model a route may send to. Built once per configuration
/// and cloned by reference: the request that it answers keeps it to the end
/// (metrics, access log, response headers), so everything those need of it
/// is made here once instead of on every request.
#[derive(Debug, Clone)]
pub struct Target(Arc<TargetInfo>);

impl std::ops::Deref for Target {
    type Target = TargetInfo;
    fn deref(&self) -> &TargetInfo {
        &self.0
    }
}

/// What a [`Target`] is.
#[derive(Debug)]
pub struct TargetInfo {
    pub provider: Arc<Provider>,
    /// The upstream model (Azure: the deployment).
    pub model: String,
    pub weight: u32,
    pub priority: u32,
    /// The model's `contextWindow` in the Provider spec, when it says.
    pub context_window: Option<u32>,
    /// The model's `capabilities` and `pricing` in the Provider spec.
    pub capabilities: Vec<sluice_crds::provider::Capability>,
    pub pricing: Option<sluice_crds::provider::Pricing>,
    /// Metric labels and access-log names: the route it serves, its
    /// provider and model.
    pub labels: Arc<crate::metrics::TargetLabels>,
    /// `x-sluice-provider` and `x-sluice-model`; `None` for a name that
    /// is not a valid header value (the header is then left out).
    pub provider_header: Option<http::HeaderValue>,
    pub model_header: Option<http::HeaderValue>,
    /// Its key in the endpoint health registry: `(namespace/provider, model)`.
    pub health_key: (String, String),
}

impl Target {
    /// `model` of `provider`, serving `route`, with what the Provider spec
    /// says of it.
    pub fn of(provider: &Arc<Provider>, model: &str, route: &str) -> Self {
        Self::ranked(provider, model, route, 1, 0)
    }

    /// [`Target::of`] with the route's `weight` and `priority` for it.
    pub fn ranked(
        provider: &Arc<Provider>,
        model: &str,
        route: &str,
        weight: u32,
        priority: u32,
    ) -> Self {
        let m = provider.spec.models.iter().find(|m| m.name == model);
        let header = |v: &str| http::HeaderValue::from_str(v).ok();
        Target(Arc::new(TargetInfo {
            provider: provider.clone(),
            model: model.to_owned(),
            weight,
            priority,
            context_window: m.and_then(|m| m.context_window),
            capabilities: m.map(|m| m.capabilities.clone()).unwrap_or_default(),
            pricing: m.and_then(|m| m.pricing.clone()),
            labels: Arc::new(crate::metrics::TargetLabels {
                route: route.to_owned(),
                provider: provider.name.clone(),
                model: model.to_owned(),
            }),
            provider_header: header(&provider.name),
            model_header: header(model),
            health_key: (
                format!("{}/{}", provider.namespace, provider.name),
                model.to_owned(),
            ),
        }))
    }

    /// Timeouts for this target under `route`: the route's overrides over
    /// the provider's, over the defaults.
    pub fn timeouts(&self, route: &Route) -> ResolvedTimeouts {
        route.timeouts.over(self.provider.timeouts)
    }
}

/// One Provider, ready to call.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub namespace: String,
    pub endpoint: Endpoint,
    pub timeouts: ResolvedTimeouts,
    /// `limits.maxConcurrent` / `limits.maxQueued`.
    pub gate: Gate,
    pub spec: ProviderSpec,
}

/// Bounds the calls in flight to one provider (`limits.maxConcurrent`) and
/// the requests waiting for a slot (`limits.maxQueued`); past both, a
/// request is refused at once as `overloaded` instead of piling up.
#[derive(Debug)]
pub struct Gate {
    slots: Option<Arc<tokio::sync::Semaphore>>,
    waiting: std::sync::atomic::AtomicU32,
    max_waiting: u32,
}

/// A slot in a provider's [`Gate`], held until the call ends.
#[derive(Debug)]
pub struct Slot {
    /// Released when the slot is dropped.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Gate {
    /// A gate with `max_concurrent` slots (unbounded when `None`).
    pub fn new(max_concurrent: Option<u32>, max_queued: Option<u32>) -> Self {
        Self {
            slots: max_concurrent.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1) as usize))),
            waiting: std::sync::atomic::AtomicU32::new(0),
            max_waiting: max_queued.unwrap_or(0),
        }
    }

    /// A slot, waiting (at most until `by`) only if fewer than `maxQueued`
    /// already wait. `None`: refuse the call.
    pub async fn enter(&self, by: tokio::time::Instant) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        let Some(slots) = &self.slots else {
            return Some(Slot { _permit: None });
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(Slot {
                _permit: Some(permit),
            });
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let result = if waiting < self.max_waiting {
            tokio::time::timeout_at(by, slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|p| Slot { _permit: Some(p) })
        } else {
            None
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

/// Why a snapshot could not become a configuration: every reason.
#[derive(Debug, thiserror::Error)]
#[error("configuration refused: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl TryFrom<&Snapshot> for Config {
    type Error = ConfigError;

    fn try_from(snapshot: &Snapshot) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut providers: HashMap<(String, String), Arc<Provider>> = HashMap::new();
        let mut provider_list = Vec::new();
        for entry in &snapshot.providers {
            let spec = &entry.spec;
            let what = format!("Provider/{}", entry.name);
            let base = match spec.type_ {
                ProviderType::Mock => Some(format!("{}{}", mock::SCHEME, entry.name)),
                kind => spec.endpoint.clone().or_else(|| {
                    kind.default_endpoint(spec.bedrock.as_ref().map(|b| b.region.as_str()))
                }),
            };
            let Some(base) = base else {
                problems.push(format!(
                    "{what}: spec.endpoint is required for type {}",
                    spec.type_
                ));
                continue;
            };
            if spec.credentials.is_some() && entry.credential.is_none() {
                problems.push(format!("{what}: its credential was not resolved"));
                continue;
            }
            let mut headers = Vec::new();
            for (k, v) in &spec.headers {
                match (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    (Ok(name), Ok(mut value)) => {
                        value.set_sensitive(true);
                        headers.push((name, value));
                    }
                    _ => problems.push(format!(
                        "{what}: spec.headers.{k} is not a valid HTTP header"
                    )),
                }
            }
            let provider = Arc::new(Provider {
                name: entry.name.clone(),
                namespace: entry.namespace.clone(),
                endpoint: Endpoint {
                    provider: entry.name.clone(),
                    kind: spec.type_,
                    base_url: base.trim_end_matches('/').to_owned(),
                    credential: entry.credential.clone(),
                    headers,
                    api_version: spec.azure.as_ref().and_then(|a| a.api_version.clone()),
                    region: spec.bedrock.as_ref().map(|b| b.region.clone()),
                    mock: spec.mock.clone(),
                },
                timeouts: spec.timeouts.over(Timeouts::DEFAULT),
                gate: Gate::new(
                    spec.limits.as_ref().and_then(|l| l.max_concurrent),
                    spec.limits.as_ref().and_then(|l| l.max_queued),
                ),
                spec: spec.clone(),
            });
            providers.insert(
                (entry.namespace.clone(), entry.name.clone()),
                provider.clone(),
            );
            provider_list.push(provider);
        }

        let mut routes = Vec::new();
        let mut by_model = HashMap::new();
        for entry in &snapshot.routes {
            let spec = &entry.spec;
            let what = format!("LLMRoute/{}", entry.name);
            let mut resolve = |list: &[sluice_crds::route::Target], field: &str| {
                let mut out = Vec::new();
                for (i, t) in list.iter().enumerate() {
                    let key = (entry.namespace.clone(), t.provider_ref.name.clone());
                    match providers.get(&key) {
                        Some(p) => out.push(Target::ranked(
                            p,
                            &t.model,
                            &entry.name,
                            t.weight,
                            t.priority,
                        )),
                        None => problems.push(format!(
                            "{what}: {field}[{i}]: Provider {:?} does not exist",
                            t.provider_ref.name
                        )),
                    }
                }
                out.sort_by_key(|t| t.priority);
                out
            };
            let mut targets = resolve(&spec.targets, "spec.targets");
            let seed = entry
                .name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let rules: Vec<Rule> = spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let targets = resolve(&r.targets, &format!("spec.rules[{i}].targets"));
                    Rule {
                        match_: r.match_.clone(),
                        strategy: r.strategy.unwrap_or(spec.strategy),
                        balancer: crate::balance::Balancer::new(
                            targets.len(),
                            seed ^ (i as u64 + 1),
                        ),
                        targets,
                    }
                })
                .collect();
            let pii = match spec
                .pii
                .as_ref()
                .filter(|p| p.mode != sluice_crds::route::PiiMode::Off)
            {
                Some(p) => match crate::pii::Scrubber::new(p) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        problems.push(format!("{what}: spec.pii: {e}"));
                        None
                    }
                },
                None => None,
            };
            let mode = spec.cache.as_ref().map(|c| c.mode);
            let embedding = match (mode, spec.cache.as_ref().and_then(|c| c.embedding.as_ref())) {
                (Some(sluice_crds::route::CacheMode::Semantic), Some(e)) => {
                    match providers.get(&(entry.namespace.clone(), e.provider_ref.name.clone())) {
                        Some(p) => Some(Target::of(p, &e.model, &entry.name)),
                        None => {
                            problems.push(format!(
                                "{what}: spec.cache.embedding: Provider {:?} does not exist",
                                e.provider_ref.name
                            ));
                            None
                        }
                    }
                }
                (Some(sluice_crds::route::CacheMode::Semantic), None) => {
                    problems.push(format!(
                        "{what}: spec.cache.embedding is required in semantic mode"
                    ));
                    None
                }
                _ => None,
            };
            let cache = match &spec.cache {
                Some(c) => crate::cache::RouteCache::new(c, embedding),
                None => crate::cache::RouteCache::Off,
            };
            // The `priority` order: lowest first, ties as listed (stable).
            targets.sort_by_key(|t| t.priority);
            let index = routes.len();
            for name in std::iter::once(&spec.model).chain(&spec.aliases) {
                if by_model.insert(name.clone(), index).is_some() {
                    problems.push(format!(
                        "{what}: model name {name:?} is claimed by another route"
                    ));
                }
            }
            let max_depth = spec
                .fallback
                .max_depth
                .map_or(targets.len(), |d| d as usize)
                .max(1);
            let balancer = crate::balance::Balancer::new(targets.len(), seed);
            routes.push(Arc::new(Route {
                name: entry.name.clone(),
                tag: RouteTag::new(&entry.name),
                namespace: entry.namespace.clone(),
                model: spec.model.clone(),
                aliases: spec.aliases.clone(),
                targets,
                fallback_triggers: spec.fallback.triggers.clone(),
                max_depth,
                catch_all: spec.fallback.catch_all.clone(),
                timeouts: spec.timeouts.clone().unwrap_or_default(),
                spec: spec.clone(),
                balancer,
                rules,
                retry_budget: crate::attempt::RetryBudget::new(spec.retry.budget_percent),
                pii,
                cache,
                counts_tokens: false,
            }));
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let now = jiff::Timestamp::now();
        let budgets = crate::budget::Budgets::new(
            snapshot
                .budgets
                .iter()
                .map(|b| crate::budget::Budget::from_entry(b, now))
                .collect(),
        );
        let mut config = Config {
            version: snapshot.version.clone(),
            routes,
            by_model,
            providers: provider_list,
            budgets,
        };
        config.mark_token_needs();
        Ok(config)
    }
}

impl Config {
    /// Carries the state worth keeping over from the configuration this one
    /// replaces: a budget whose definition did not change keeps its ledger
    /// (spend and reservations in flight), a route whose `cache` did not
    /// change keeps its entries. Snapshots arrive often in a cluster (every
    /// allowance renewal is one), so neither may start over each time.
    pub fn adopt(&mut self, previous: &Config) {
        self.budgets = previous
            .budgets
            .carry_into(std::mem::take(&mut self.budgets), jiff::Timestamp::now());
        for route in &mut self.routes {
            let Some(old) = previous
                .routes
                .iter()
                .find(|r| r.name == route.name && r.namespace == route.namespace)
            else {
                continue;
            };
            if old.spec.cache != route.spec.cache {
                continue;
            }
            // Routes were just built: nothing else holds them yet.
            if let Some(route) = Arc::get_mut(route) {
                route.cache = old.cache.carried_over(&route.cache);
            }
        }
    }

    /// Sets each route's [`Route::counts_tokens`], from the route and the
    /// budgets that count it. Call again after replacing the budgets.
    pub fn mark_token_needs(&mut self) {
        let budgets = &self.budgets;
        for route in &mut self.routes {
            let needs = route.needs_tokens() || budgets.applicable(&route.name).next().is_some();
            // Routes were just built: nothing else holds them yet.
            if let Some(route) = Arc::get_mut(route) {
                route.counts_tokens = needs;
            }
        }
    }

    /// Whether any route tokenises its prompts.
    fn counts_tokens(&self) -> bool {
        self.routes.iter().any(|r| r.counts_tokens)
    }

    /// The provider `name` in `namespace`.
    pub fn provider(&self, namespace: &str, name: &str) -> Option<&Arc<Provider>> {
        self.providers
            .iter()
            .find(|p| p.name == name && p.namespace == namespace)
    }

    /// The route claiming `model` (its virtual name or an alias).
    pub fn route(&self, model: &str) -> Option<&Arc<Route>> {
        self.by_model.get(model).and_then(|&i| self.routes.get(i))
    }

    /// Every model name clients may send, sorted.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_model.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

mod redacted;
pub use redacted::RedactedConfig;

/// The current configuration, swapped atomically on reload; `None` until
/// the first valid one is loaded (`/readyz` says not ready).
#[derive(Debug, Clone, Default)]
pub struct ConfigHandle(Arc<ArcSwapOption<Config>>);

impl ConfigHandle {
    /// The configuration now in force, if any.
    pub fn current(&self) -> Option<Arc<Config>> {
        self.0.load_full()
    }

    /// Puts `config` in force for every request that starts from now on,
    /// carrying over what it keeps of the current one (see [`Config::adopt`]).
    pub fn set(&self, mut config: Config) {
        let previous = self.current();
        if let Some(previous) = &previous {
            config.adopt(previous);
        }
        // Load the tokenizer before the first request needs it (≈9 ms),
        // and only if one will: it costs ≈5 MiB resident. Once is enough:
        // a cluster sidecar gets a new configuration every few seconds.
        if config.counts_tokens()
            && !previous.is_some_and(|p| p.counts_tokens())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            drop(rt.spawn_blocking(crate::tokens::warm_up));
        }
        self.0.store(Some(Arc::new(config)));
    }
}
