//! Route: which route serves the requested model, and in which order its
//! targets are tried: the virtual model or an alias picks the route; the
//! first `rules` entry whose `match` holds (complexity, input tokens,
//! tools, images, headers) replaces its targets and strategy; the
//! capability filter drops targets that cannot take the request (context
//! window, tools, vision, json); the strategy orders the rest (priority,
//! weighted, latency, cost, least-busy). Open breakers are skipped by
//! `attempt`, which sees each breaker at the moment it would call.

use std::sync::Arc;

use crate::config::{Config, Route, Target};
use crate::error::ApiError;

/// The route serving `model`, or 404 `model_not_found`.
pub fn resolve(config: &Config, model: &str) -> Result<Arc<Route>, ApiError> {
    config
        .route(model)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(model))
}

/// What routing looks at in a request.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// Estimated prompt tokens: the `o200k_base` count
    /// ([`crate::tokens::chat_baseline`]), which the rules' input-token
    /// ranges compare; each target scales it by its model family
    /// ([`RequestInfo::input_tokens_on`]).
    pub input_tokens: u64,
    /// Completion tokens asked for (`max_tokens`), or a default (for cost).
    pub max_output: u64,
    /// Completion tokens the request asked for, if it did (for the window).
    pub asked_output: Option<u64>,
    pub has_tools: bool,
    pub has_images: bool,
    pub wants_json: bool,
    pub embeddings: bool,
    /// Lower-cased header names with their values (empty when no rule of
    /// the route matches on headers).
    pub headers: Vec<(String, String)>,
    /// The prompt's complexity, computed only when a rule asks for it.
    pub complexity: Option<sluice_crds::route::Complexity>,
}

/// Completion tokens assumed when the request does not say.
pub const DEFAULT_MAX_OUTPUT: u64 = 1024;

impl RequestInfo {
    /// Reads a chat request (and its headers); the prompt is tokenised
    /// once, here.
    pub fn of_chat(
        req: &crate::openai::ChatRequest,
        headers: &http::HeaderMap,
        route: &Route,
    ) -> Self {
        let wants_complexity = route.rules.iter().any(|r| r.match_.complexity.is_some());
        // Copied only for a route with header rules: two strings per
        // header on every request otherwise (≈8 allocations).
        let wants_headers = route.rules.iter().any(|r| !r.match_.headers.is_empty());
        Self {
            input_tokens: if route.counts_tokens || near_a_window(req, route) {
                crate::tokens::chat_baseline(req)
            } else {
                crate::tokens::rough(req)
            },
            max_output: req
                .max_output_tokens()
                .map_or(DEFAULT_MAX_OUTPUT, u64::from),
            asked_output: req.max_output_tokens().map(u64::from),
            has_tools: req.has_tools(),
            has_images: req.has_images(),
            wants_json: req.wants_json(),
            embeddings: false,
            headers: if wants_headers {
                headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect()
            } else {
                Vec::new()
            },
            complexity: wants_complexity.then(|| crate::complexity::score(req).tier),
        }
    }

    /// The prompt's estimated tokens on `target`'s model.
    pub fn input_tokens_on(&self, target: &Target) -> u64 {
        crate::tokens::for_target(self.input_tokens, &target.model)
    }

    fn matches(&self, m: &sluice_crds::route::RuleMatch) -> bool {
        let tokens = u32::try_from(self.input_tokens).unwrap_or(u32::MAX);
        m.complexity.is_none_or(|c| self.complexity == Some(c))
            && m.min_input_tokens.is_none_or(|min| tokens >= min)
            && m.max_input_tokens.is_none_or(|max| tokens <= max)
            && m.has_tools.is_none_or(|t| t == self.has_tools)
            && m.has_images.is_none_or(|i| i == self.has_images)
            && m.headers.iter().all(|(k, v)| {
                let k = k.to_ascii_lowercase();
                self.headers.iter().any(|(hk, hv)| *hk == k && hv == v)
            })
    }

    /// Whether `target` can take this request at all; `input_tokens` is
    /// [`RequestInfo::input_tokens_on`] it.
    fn fits(&self, target: &Target, input_tokens: u64) -> bool {
        use sluice_crds::provider::Capability as C;
        let has = |c: C| target.capabilities.contains(&c);
        if self.embeddings {
            return has(C::Embeddings);
        }
        // The prompt plus the completion asked for must fit the window.
        let window_ok = target
            .context_window
            .is_none_or(|w| input_tokens + self.asked_output.unwrap_or(0) <= u64::from(w));
        window_ok
            && (!self.has_tools || has(C::Tools))
            && (!self.has_images || has(C::Vision))
            && (!self.wants_json || has(C::Json))
    }
}

/// Whether `req` might not fit the smallest context window of `route`:
/// then the capability filter needs its real count. No tokenizer is
/// needed to know a prompt fits when even its upper bound does.
fn near_a_window(req: &crate::openai::ChatRequest, route: &Route) -> bool {
    route.min_context_window().is_some_and(|w| {
        let asked = req.max_output_tokens().map_or(0, u64::from);
        crate::tokens::upper_bound(req).is_none_or(|bound| bound + asked > u64::from(w))
    })
}

/// The index of the first rule of `route` that `info` matches, if any.
pub fn rule_index(route: &Route, info: &RequestInfo) -> Option<usize> {
    route.rules.iter().position(|r| info.matches(&r.match_))
}

/// A target of the plan, with its endpoint's health (breaker, in-flight
/// tokens), looked up once for the strategy and again used by `attempt`.
pub struct Planned<'r> {
    pub target: &'r Target,
    pub endpoint: Arc<crate::health::Endpoint>,
}

impl<'r> Planned<'r> {
    /// `target` as the only one to try (a budget's replacement).
    pub fn only(target: &'r Target, health: &crate::health::Health) -> Vec<Self> {
        vec![Planned {
            target,
            endpoint: health.endpoint(target),
        }]
    }
}

/// The targets to try, in order. An empty plan answers 503
/// `no_healthy_target`.
pub fn plan<'r>(
    route: &'r Route,
    info: &RequestInfo,
    health: &crate::health::Health,
) -> Vec<Planned<'r>> {
    let (targets, strategy, balancer) =
        route.rules.iter().find(|r| info.matches(&r.match_)).map_or(
            (&route.targets, route.spec.strategy, &route.balancer),
            |r| (&r.targets, r.strategy, &r.balancer),
        );
    let percents = balancer.token_percents(targets.iter().map(|t| t.model.as_str()));
    let fitting: Vec<(&Target, u64)> = targets
        .iter()
        .zip(percents.iter().chain(std::iter::repeat(&100)))
        .map(|(t, p)| (t, crate::tokens::scale(info.input_tokens, *p)))
        .filter(|(t, tokens)| info.fits(t, *tokens))
        .collect();
    if let [(only, _)] = fitting[..] {
        // Nothing to order (the common route of one target): the
        // candidates and the strategy's bookkeeping are skipped.
        return Planned::only(only, health);
    }
    let endpoints: Vec<_> = fitting.iter().map(|(t, _)| health.endpoint(t)).collect();
    let now = tokio::time::Instant::now();
    let candidates: Vec<crate::balance::Candidate> = fitting
        .iter()
        .zip(&endpoints)
        .map(|(&(t, input_tokens), endpoint)| crate::balance::Candidate {
            weight: t.weight,
            priority: t.priority,
            latency: endpoint.breaker.p95(now),
            // Decimal arithmetic, for the one strategy that reads it.
            cost: t
                .pricing
                .as_ref()
                .filter(|_| strategy == sluice_crds::route::Strategy::Cost)
                .map(|p| {
                    crate::balance::estimated_cost(
                        p.input_per_million,
                        p.output_per_million,
                        input_tokens,
                        info.max_output,
                    )
                }),
            in_flight_tokens: endpoint.in_flight.get(),
        })
        .collect();
    balancer
        .order(strategy, &candidates)
        .into_iter()
        .map(|i| Planned {
            target: fitting[i].0,
            endpoint: endpoints[i].clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use sluice_crds::route::Complexity;

    fn config(routes: &str) -> Config {
        let yaml = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {{name: p}}\nspec:\n  type: mock\n  models:\n  - {{name: small, contextWindow: 1000, capabilities: [chat], pricing: {{inputPerMillion: \"0.1\", outputPerMillion: \"0.4\"}}}}\n  - {{name: big, contextWindow: 100000, capabilities: [chat, tools, vision, json], pricing: {{inputPerMillion: \"3\", outputPerMillion: \"15\"}}}}\n  - {{name: embed, capabilities: [embeddings]}}\n---\n{routes}"
        );
        crate::standalone::load_bytes(
            &sluice_crds::load::Admission::new(),
            yaml.as_bytes(),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn names<'a>(planned: &'a [Planned<'_>]) -> Vec<&'a str> {
        planned.iter().map(|p| p.target.model.as_str()).collect()
    }

    const ROUTE: &str = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\nspec:\n  model: r\n  strategy: cost\n  targets: [{providerRef: {name: p}, model: big}, {providerRef: {name: p}, model: small}]\n  rules:\n  - {match: {complexity: complex}, targets: [{providerRef: {name: p}, model: big}]}\n  - {match: {headers: {x-tier: gold}}, strategy: priority, targets: [{providerRef: {name: p}, model: big}, {providerRef: {name: p}, model: small}]}\n";

    #[test]
    fn cost_orders_the_cheapest_first_and_rules_replace_targets() {
        let c = config(ROUTE);
        let route = c.route("r").expect("route");
        let health = crate::health::Health::default();
        let simple = RequestInfo {
            input_tokens: 10,
            max_output: 100,
            complexity: Some(Complexity::Simple),
            ..Default::default()
        };
        assert_eq!(names(&plan(route, &simple, &health)), vec!["small", "big"]);
        let complex = RequestInfo {
            complexity: Some(Complexity::Complex),
            ..simple.clone()
        };
        assert_eq!(names(&plan(route, &complex, &health)), vec!["big"]);
        let gold = RequestInfo {
            headers: vec![("x-tier".into(), "gold".into())],
            ..simple.clone()
        };
        assert_eq!(
            names(&plan(route, &gold, &health)),
            vec!["big", "small"],
            "the rule's own strategy"
        );
    }

    #[test]
    fn the_capability_filter_skips_what_cannot_take_the_request() {
        let c = config(ROUTE);
        let route = c.route("r").expect("route");
        let health = crate::health::Health::default();
        let base = RequestInfo {
            input_tokens: 10,
            max_output: 100,
            complexity: Some(Complexity::Simple),
            ..Default::default()
        };
        for needs in [
            RequestInfo {
                has_tools: true,
                ..base.clone()
            },
            RequestInfo {
                has_images: true,
                ..base.clone()
            },
            RequestInfo {
                wants_json: true,
                ..base.clone()
            },
            RequestInfo {
                input_tokens: 900,
                asked_output: Some(200),
                ..base.clone()
            },
        ] {
            assert_eq!(
                names(&plan(route, &needs, &health)),
                vec!["big"],
                "{needs:?}"
            );
        }
        let too_big = RequestInfo {
            input_tokens: 200_000,
            ..base
        };
        assert!(plan(route, &too_big, &health).is_empty());
    }

    #[test]
    fn each_target_sees_the_prompt_in_its_own_tokens() {
        let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: p}\nspec:\n  type: mock\n  models:\n  - {name: gpt-4o, contextWindow: 1000, capabilities: [chat]}\n  - {name: claude-3-5-haiku, contextWindow: 1000, capabilities: [chat]}\n---\napiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\nspec:\n  model: r\n  targets: [{providerRef: {name: p}, model: claude-3-5-haiku}, {providerRef: {name: p}, model: gpt-4o, priority: 1}]\n";
        let c = crate::standalone::load_bytes(
            &sluice_crds::load::Admission::new(),
            yaml.as_bytes(),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let route = c.route("r").expect("route");
        let health = crate::health::Health::default();
        let info = |input_tokens| RequestInfo {
            input_tokens,
            ..Default::default()
        };
        assert_eq!(
            names(&plan(route, &info(790), &health)),
            vec!["claude-3-5-haiku", "gpt-4o"]
        );
        // 900 o200k tokens are about 1,125 Claude tokens: too many for its
        // window, not for gpt-4o's.
        assert_eq!(names(&plan(route, &info(900), &health)), vec!["gpt-4o"]);
    }

    #[test]
    fn only_routes_that_decide_by_tokens_tokenise_the_prompt() {
        let plain = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: plain}\nspec:\n  model: plain\n  targets: [{providerRef: {name: p}, model: embed}]\n";
        let c = config(&format!("{plain}---\n{ROUTE}"));
        assert!(!c.route("plain").expect("plain").counts_tokens);
        assert!(
            c.route("r").expect("r").counts_tokens,
            "cost strategy, windows"
        );
        let budget = "apiVersion: sluice.dev/v1alpha1\nkind: Budget\nmetadata: {name: b}\nspec:\n  routes: [plain]\n  window: day\n  limits: {requests: 10}\n";
        let c = config(&format!("{plain}---\n{budget}"));
        assert!(
            c.route("plain").expect("plain").counts_tokens,
            "a budget counts it"
        );
    }
}
