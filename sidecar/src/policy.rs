//! Policy: what may be refused or answered before any provider is called,
//! in the order a request meets it:
//!
//! 1. PII — `redact` rewrites the request (so logs, cache keys and the
//!    provider see placeholders), `block` refuses it with 400 `pii_blocked`;
//! 2. rate limits of every budget that counts the request — 429
//!    `rate_limit_exceeded` with `Retry-After` and `x-ratelimit-*`;
//! 3. budgets — the worst case (estimated prompt + `max_tokens` at the
//!    dearest target's prices) is reserved against the allowance, or 429
//!    `budget_exceeded`; past the soft limit a warning; a degrade step or a
//!    downgrade replaces the route's targets;
//! 4. idempotency — a repeated `idempotency-key` replays the first answer
//!    (or waits for it while it is in flight);
//! 5. cache lookup — exact or semantic, per the route's `cache`.
//!
//! What it admits travels on as [`Admitted`]: the reservations and rate
//! charge that accounting settles, and the cache entry and idempotency
//! ticket that the answer completes.

use std::sync::Arc;

use http::HeaderMap;
use sluice_crds::common::ModelRef;
use sluice_crds::provider::Pricing;
use tokio::time::Instant;

use crate::app::App;
use crate::budget::{RateCharge, Reservation};
use crate::cache::{self, Cached, Decision, RouteCache, Status, semantic};
use crate::config::{Config, Route};
use crate::error::ApiError;
use crate::idempotency::{self, Begin, Ticket};
use crate::metering;
use crate::openai::ChatRequest;
use crate::pipeline::{Operation, Parsed};
use crate::route::{self, RequestInfo};

/// Longest `idempotency-key` accepted (Stripe allows 255).
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Renewed allowances a request waits for before it is refused, and how
/// long it waits for each (a report and a snapshot: about one round trip
/// to the operator).
const MAX_RENEWALS: u32 = 3;
const RENEWAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest stream recorded for the cache or an idempotent replay.
const MAX_RECORDED_STREAM: usize = 4 << 20;

/// What the policy stage decided.
pub enum Verdict {
    /// Call a provider.
    Call(Admitted),
    /// Answered without a provider: a cache hit or an idempotent replay.
    Answered(Arc<Cached>, Admitted),
}

/// A request that may proceed, and what its answer must settle.
pub struct Admitted {
    /// The tenant its cache and idempotency entries are scoped to: the
    /// first counting budget's `tenantHeader` value, else `x-sluice-tenant`.
    pub tenant: Option<String>,
    /// Estimated prompt tokens (what a stream without usage is metered
    /// at); 0 when no budget counts the request.
    pub input_estimate: u64,
    /// Rate-limit charges, corrected with the actual tokens.
    pub rate: RateCharge,
    /// Budget reservations, settled by accounting (released if dropped).
    pub reservations: Vec<Reservation>,
    /// `x-sluice-budget-warning` values.
    pub warnings: Vec<String>,
    /// `x-ratelimit-*` headers of the tightest counting budget.
    pub rate_headers: Vec<(&'static str, String)>,
    /// A degrade step's or downgrade's target, replacing the route's.
    pub target_override: Option<ModelRef>,
    /// `x-sluice-cache`, when the route caches.
    pub cache_status: Option<Status>,
    /// Whether PII redaction changed the request (its bytes must be
    /// re-encoded before a pass-through).
    pub redacted: bool,
    store: Option<Store>,
    ticket: Option<Ticket<Arc<Cached>>>,
}

/// Where a fresh answer is kept once complete.
enum Store {
    Exact(cache::exact::ExactCache, cache::exact::Key),
    Semantic {
        cache: Arc<semantic::SemanticCache>,
        scope: semantic::Scope,
        vector: Vec<f32>,
        features: semantic::Features,
    },
}

impl Admitted {
    /// Whether a completed answer is wanted (to cache or to replay), so a
    /// stream must be recorded while it is forwarded.
    pub fn records(&self) -> bool {
        self.store.is_some() || self.ticket.is_some()
    }

    /// A stream recorder when [`Admitted::records`].
    pub fn recorder(&self) -> Option<cache::StreamRecorder> {
        self.records()
            .then(|| cache::StreamRecorder::new(MAX_RECORDED_STREAM))
    }

    /// The answer completed: store it and release waiters on the key.
    pub fn complete(&mut self, value: Cached) {
        let value = Arc::new(value);
        match self.store.take() {
            Some(Store::Exact(c, key)) => c.insert(key, (*value).clone()),
            Some(Store::Semantic {
                cache,
                scope,
                vector,
                features,
            }) => cache.insert(scope, vector, features, (*value).clone(), Instant::now()),
            None => {}
        }
        if let Some(t) = self.ticket.take() {
            t.complete(value, Instant::now());
        }
    }

    /// What accounting settles when the request ends; `None` when no
    /// budget counts the request (nothing to settle, no accounting record).
    pub fn settlement(&mut self) -> Option<crate::accounting::Settlement> {
        if self.reservations.is_empty() && self.rate.is_empty() {
            return None;
        }
        Some(crate::accounting::Settlement {
            reservations: std::mem::take(&mut self.reservations),
            rate: std::mem::take(&mut self.rate),
            input_estimate: self.input_estimate,
        })
    }
}

/// Runs the policy stage for a request on `route`.
pub async fn admit(
    app: &App,
    config: &Config,
    route: &Route,
    op: Operation,
    headers: &HeaderMap,
    parsed: &mut Parsed,
    info: &RequestInfo,
) -> Result<Verdict, ApiError> {
    // 1. PII, before anything reads the text.
    let mut redacted = false;
    if let Some(scrubber) = &route.pii {
        let result = match parsed {
            Parsed::Chat(req) => scrubber.apply(req),
            Parsed::Embeddings(req) => scrubber.apply_embeddings(&mut req.input),
        };
        match result {
            Ok(counts) => {
                for (kind, n) in &counts {
                    app.metrics
                        .pii(&route.name, crate::pii::category(*kind), *n);
                }
                redacted = !counts.is_empty();
            }
            Err(blocked) => {
                for kind in &blocked.categories {
                    app.metrics.pii(&route.name, crate::pii::category(*kind), 1);
                }
                return Err(ApiError::pii_blocked(&blocked.names()));
            }
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Names known here are constants: a `&str` name is parsed on every
    // lookup (≈350 instructions each).
    static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
    static TENANT: http::HeaderName = http::HeaderName::from_static("x-sluice-tenant");
    let known = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());

    // 2. and 3. rate limits, then budgets (all or nothing across budgets).
    // Nothing is estimated for a route no budget counts: the hot path of an
    // ungoverned route stays as short as it was.
    let budgets = &config.budgets;
    let counted = budgets.applicable(&route.name).next().is_some();
    let (input_estimate, rate, reservations, warnings, target_override) = if counted {
        let (input_estimate, max_output) = match parsed {
            // Routing's count, on the target model that counts the most
            // tokens for this prompt (tokenised once, in `RequestInfo`).
            Parsed::Chat(req) => (
                route
                    .all_targets()
                    .map(|t| info.input_tokens_on(t))
                    .max()
                    .unwrap_or(info.input_tokens),
                req.max_output_tokens()
                    .map(u64::from)
                    .unwrap_or_else(|| default_max_output(route)),
            ),
            Parsed::Embeddings(req) => (embeddings_tokens(&req.input), 0),
        };
        let rate = budgets
            .rate_limit(
                &route.name,
                header,
                input_estimate + max_output,
                Instant::now(),
            )
            .map_err(|l| ApiError::rate_limited(&l))?;
        let worst = metering::worst_case(&dearest(route), input_estimate, max_output);
        let mut renewals = 0;
        let admitted = loop {
            let refused = match budgets.admit(&route.name, header, &worst, jiff::Timestamp::now()) {
                Ok(a) => break a,
                Err(r) => r,
            };
            // Only this sidecar's share is spent: ask for more and wait for
            // it (a few report intervals at most) before refusing.
            let renewed =
                refused.starved && renewals < MAX_RENEWALS && app.renewal.ask(RENEWAL_WAIT).await;
            if !renewed {
                rate.correct(0, Instant::now());
                return Err(ApiError::budget_exceeded(&refused));
            }
            renewals += 1;
        };
        (
            input_estimate,
            rate,
            admitted.reservations,
            admitted.warnings,
            admitted.target_override,
        )
    } else {
        (0, RateCharge::default(), Vec::new(), Vec::new(), None)
    };
    let tenant = budgets
        .applicable(&route.name)
        .find_map(|b| crate::budget::tenant_of(b.spec(), header))
        .or_else(|| {
            known(&TENANT)
                .filter(|t| !t.is_empty() && t.len() <= 128)
                .map(str::to_owned)
        });
    let rate_headers = rate
        .headers
        .as_ref()
        .map(|h| h.to_headers())
        .unwrap_or_default();
    let mut admitted = Admitted {
        tenant,
        input_estimate,
        rate,
        reservations,
        warnings,
        rate_headers,
        target_override,
        cache_status: None,
        redacted,
        store: None,
        ticket: None,
    };
    let Parsed::Chat(req) = parsed else {
        return Ok(Verdict::Call(admitted));
    };

    // 4. idempotency.
    if let Some(key) = known(&IDEMPOTENCY_KEY).filter(|k| !k.is_empty()) {
        if key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::invalid_parameter(
                "idempotency-key",
                format!("longer than {MAX_IDEMPOTENCY_KEY} characters"),
            ));
        }
        let scoped = idempotency::Key {
            tenant: admitted.tenant.clone(),
            route: format!("{}/{}|{}", route.namespace, route.name, op.as_api()),
            key: key.to_owned(),
        };
        match app
            .idempotency
            .begin(scoped, idempotency::fingerprint(req), Instant::now())
            .await
        {
            Begin::Replay(value) => return Ok(Verdict::Answered(value, admitted)),
            Begin::Conflict => return Err(ApiError::idempotency_conflict()),
            Begin::Leader(ticket) => admitted.ticket = Some(ticket),
        }
    }

    // 5. cache lookup.
    let decision = match &route.cache {
        RouteCache::Off => Decision::Off,
        RouteCache::Exact(_) | RouteCache::Semantic { .. } => {
            route.spec.cache.as_ref().map_or(Decision::Off, |spec| {
                cache::decide(spec, req, known(&http::header::CACHE_CONTROL))
            })
        }
    };
    admitted.cache_status = decision.status_if_not_served();
    if decision == Decision::Off {
        return Ok(Verdict::Call(admitted));
    }
    // "The model after routing rules": the rule that matched, or the
    // budget's replacement target; and the API, since answers are cached
    // in the shape the client received.
    let scope_model = format!(
        "{}|{}|{}",
        op.as_api(),
        route::rule_index(route, info).map_or(-1, |i| i as i64),
        admitted
            .target_override
            .as_ref()
            .map_or("", |m| m.model.as_str()),
    );
    match &route.cache {
        RouteCache::Off => {}
        RouteCache::Exact(c) => {
            let key = cache::key(req, &scope_model, admitted.tenant.as_deref());
            if decision.reads()
                && let Some(hit) = c.get(&key)
            {
                admitted.cache_status = Some(Status::Hit);
                app.metrics.cache(&route.name, Status::Hit);
                return Ok(Verdict::Answered(hit, admitted));
            }
            if decision.stores() {
                admitted.store = Some(Store::Exact(c.clone(), key));
            }
        }
        RouteCache::Semantic { cache, embedding } => {
            let Some(vector) = embed(app, route, embedding, req, &admitted.reservations).await
            else {
                // No embedding, no semantic cache: call the provider.
                admitted.cache_status = Some(Status::Bypass);
                app.metrics.cache(&route.name, Status::Bypass);
                return Ok(Verdict::Call(admitted));
            };
            let scope = semantic::Scope::of(req, &scope_model, admitted.tenant.as_deref());
            let features = semantic::Features::of(req);
            if decision.reads() {
                match cache.lookup(&scope, &vector, &features, Instant::now()) {
                    semantic::Lookup::Hit { value, .. } => {
                        admitted.cache_status = Some(Status::Hit);
                        app.metrics.cache(&route.name, Status::Hit);
                        return Ok(Verdict::Answered(value, admitted));
                    }
                    semantic::Lookup::Refused { reason, similarity } => {
                        tracing::debug!(route = %route.name, ?reason, similarity, "semantic hit refused by the guard");
                    }
                    semantic::Lookup::Miss => {}
                }
            }
            if decision.stores() {
                admitted.store = Some(Store::Semantic {
                    cache: cache.clone(),
                    scope,
                    vector,
                    features,
                });
            }
        }
    }
    if let Some(status) = admitted.cache_status {
        app.metrics.cache(&route.name, status);
    }
    Ok(Verdict::Call(admitted))
}

/// The prompt's embedding from the route's `cache.embedding` target, or
/// `None` (logged) when it cannot be had. What the embedding cost is
/// charged to the budgets the request was admitted under (`reservations`).
async fn embed(
    app: &App,
    route: &Route,
    target: &crate::config::Target,
    req: &ChatRequest,
    reservations: &[Reservation],
) -> Option<Vec<f32>> {
    let ereq = crate::openai::EmbeddingsRequest {
        model: target.model.clone(),
        input: serde_json::Value::String(semantic::embedding_input(req)),
        extra: serde_json::Map::new(),
    };
    let call = crate::attempt::Call::Embeddings { req: &ereq };
    let started = Instant::now();
    let outcome = crate::attempt::run(
        &app.egress,
        &app.health,
        app.bounds,
        route,
        &crate::route::Planned::only(target, &app.health),
        &call,
        &crate::attempt::Propagate::default(),
    )
    .await;
    let body = match outcome.result {
        Ok(crate::attempt::Answer::Whole(w)) => w.body,
        Ok(crate::attempt::Answer::Stream(_)) => return None,
        Err(f) => {
            tracing::warn!(route = %route.name, provider = %target.provider.name, class = %f.class, "semantic cache: embedding failed; calling the provider uncached");
            return None;
        }
    };
    let resp = serde_json::from_slice::<crate::openai::EmbeddingsResponse>(&body).ok();
    meter_embedding(app, target, &ereq, resp.as_ref(), reservations, started);
    let resp = resp?;
    let vector: Vec<f32> = serde_json::from_value(resp.data.first()?.embedding.clone()).ok()?;
    (!vector.is_empty()).then_some(vector)
}

/// Meters the semantic cache's embedding call: the provider answered, so
/// it charged, whether or not the vector is of use. Its duration, tokens
/// and cost go to the metrics under the embedding target (the route's
/// name, the embedder's provider and model); its spend is charged to the
/// budgets the request was admitted under (`reservations`), not as a
/// request.
fn meter_embedding(
    app: &App,
    target: &crate::config::Target,
    req: &crate::openai::EmbeddingsRequest,
    resp: Option<&crate::openai::EmbeddingsResponse>,
    reservations: &[Reservation],
    started: Instant,
) {
    let pricing = target.pricing.as_ref().unwrap_or(&metering::FREE);
    let reported = resp
        .and_then(|r| r.usage.as_ref())
        .map(|u| crate::openai::Usage::new(u.prompt_tokens, 0, 0));
    let estimate = crate::openai::Usage::new(embeddings_tokens(&req.input), 0, 0);
    let metered = metering::Metered::new(pricing, reported, estimate);
    let m = &app.metrics;
    m.operation(
        "embeddings",
        &target.labels,
        started.elapsed().as_secs_f64(),
    );
    m.tokens(&target.labels, metered.usage.prompt_tokens, 0);
    if target.pricing.is_some() {
        m.cost(&target.labels, metered.cost.as_f64());
    }
    if !reservations.is_empty() {
        app.accountant.submit(metering::UsageRecord {
            metered,
            reservations: reservations.iter().map(Reservation::companion).collect(),
            side_call: true,
        });
    }
}

/// Completion tokens reserved when the request does not cap them: the
/// largest `maxOutputTokens` among the route's models, else the default.
fn default_max_output(route: &Route) -> u64 {
    route
        .all_targets()
        .filter_map(|t| {
            t.provider
                .spec
                .models
                .iter()
                .find(|m| m.name == t.model)
                .and_then(|m| m.max_output_tokens)
        })
        .max()
        .map_or(route::DEFAULT_MAX_OUTPUT, u64::from)
}

/// The highest input and output prices among the route's targets: the
/// worst case does not depend on which target answers.
fn dearest(route: &Route) -> Pricing {
    let mut p = metering::FREE;
    for t in route.all_targets().filter_map(|t| t.pricing.as_ref()) {
        p.input_per_million = p.input_per_million.max(t.input_per_million);
        p.output_per_million = p.output_per_million.max(t.output_per_million);
    }
    p
}

/// Tokens of an embeddings `input`: texts estimated, token arrays counted.
fn embeddings_tokens(input: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match input {
        Value::String(s) => metering::estimate_tokens(s),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => metering::estimate_tokens(s),
                Value::Array(tokens) => tokens.len() as u64,
                Value::Number(_) => 1,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}
