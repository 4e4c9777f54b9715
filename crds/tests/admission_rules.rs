//! Every admission rule of the three kinds, each tried with an object that
//! passes and one that breaks it. The rules are evaluated with kube's
//! client-side CEL (the same rules the API server runs), so these tests prove
//! they compile and mean what their messages say.

use serde_json::{Value, json};
use sluice_crds::load::{Admission, Kind};

fn admission() -> &'static Admission {
    static A: std::sync::OnceLock<Admission> = std::sync::OnceLock::new();
    A.get_or_init(Admission::new)
}

fn errors(kind: Kind, obj: &Value) -> Vec<String> {
    admission()
        .check(kind, obj)
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[track_caller]
fn accepted(kind: Kind, obj: &Value) {
    let e = errors(kind, obj);
    assert!(e.is_empty(), "expected {obj} to be accepted, got {e:#?}");
}

#[track_caller]
fn refused(kind: Kind, obj: &Value, why: &str) {
    let e = errors(kind, obj);
    assert!(
        e.iter().any(|m| m.contains(why)),
        "expected {obj} to be refused with {why:?}, got {e:#?}"
    );
}

fn object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": spec})
}

fn provider(spec: Value) -> Value {
    object("Provider", spec)
}

fn route(spec: Value) -> Value {
    object("LLMRoute", spec)
}

fn budget(spec: Value) -> Value {
    object("Budget", spec)
}

fn with(mut base: Value, pointer: &str, v: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = base.pointer_mut(parent).expect("parent exists");
    match target {
        Value::Object(m) => {
            m.insert(key.to_owned(), v);
        }
        Value::Array(a) => a[key.parse::<usize>().expect("index")] = v,
        _ => panic!("cannot set {pointer}"),
    }
    base
}

fn without(mut base: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    base.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent is an object")
        .remove(key);
    base
}

fn openai() -> Value {
    provider(json!({
        "type": "openai",
        "credentials": {"secretRef": {"name": "keys", "key": "openai"}},
        "models": [{"name": "gpt-4o-mini", "contextWindow": 128000}]
    }))
}

fn mock() -> Value {
    provider(json!({"type": "mock", "models": [{"name": "m"}], "mock": {"reply": "hi"}}))
}

fn chat_route() -> Value {
    route(json!({
        "model": "chat",
        "targets": [{"providerRef": {"name": "openai"}, "model": "gpt-4o-mini"}]
    }))
}

fn team_budget() -> Value {
    budget(json!({"window": "day", "limits": {"costUSD": "100.00"}}))
}

/// Walks the compiled schema tree: every rule at every node must compile,
/// and stay within the API
/// server's cost budget given the schema's bounds.
fn rule_problems(
    node: &kube::core::cel::CompiledSchema,
    path: &str,
    rules: &mut usize,
    out: &mut Vec<String>,
) {
    // Scope analysis is left out: kube-cel's flags comprehension variables
    // (`self.all(t, …)`) as unknown, which the API server accepts.
    use kube::core::cel::estimate_rule_cost;
    for v in &node.validations {
        match v {
            Ok(compiled) => {
                *rules += 1;
                for w in estimate_rule_cost(&compiled.rule.rule, node) {
                    out.push(format!("{path}: {}: {}", w.rule, w.message));
                }
            }
            Err(e) => out.push(format!("{path}: does not compile: {e:?}")),
        }
    }
    for (k, child) in &node.properties {
        rule_problems(child, &format!("{path}.{k}"), rules, out);
    }
    if let Some(items) = &node.items {
        rule_problems(items, &format!("{path}[]"), rules, out);
    }
    if let Some(extra) = &node.additional_properties {
        rule_problems(extra, &format!("{path}{{}}"), rules, out);
    }
}

#[test]
fn every_rule_compiles_and_stays_within_the_cost_budget() {
    let mut rules = 0;
    for (_, crd) in sluice_crds::crd::all() {
        let schema = sluice_crds::crd::schema_of(&crd);
        let compiled = kube::core::cel::compile_schema(&schema);
        let mut problems = Vec::new();
        rule_problems(&compiled, &crd.spec.names.kind, &mut rules, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
    assert!(
        rules >= 25,
        "only {rules} rules found: the walk is missing some"
    );
}

#[test]
fn the_base_objects_are_valid() {
    accepted(Kind::Provider, &openai());
    accepted(Kind::Provider, &mock());
    accepted(Kind::LLMRoute, &chat_route());
    accepted(Kind::Budget, &team_budget());
}

// ---- Provider ----

#[test]
fn provider_type_is_an_enum() {
    refused(
        Kind::Provider,
        &with(openai(), "/spec/type", json!("oai")),
        "spec.type: Unsupported value: \"oai\"",
    );
}

#[test]
fn unknown_fields_are_refused_not_dropped() {
    refused(
        Kind::Provider,
        &with(openai(), "/spec/apiKey", json!("sk-x")),
        "spec.apiKey: unknown field",
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/targets/0/weigth", json!(3)),
        "spec.targets[0].weigth: unknown field",
    );
}

#[test]
fn mock_settings_only_with_type_mock() {
    accepted(Kind::Provider, &mock());
    refused(
        Kind::Provider,
        &with(openai(), "/spec/mock", json!({"reply": "x"})),
        "spec.mock is only allowed with type: mock",
    );
}

#[test]
fn azure_and_bedrock_settings_only_with_their_type() {
    let azure = provider(json!({
        "type": "azure-openai", "endpoint": "https://r.openai.azure.com",
        "credentials": {"env": "AZURE_KEY"}, "azure": {"apiVersion": "2024-10-21"},
        "models": [{"name": "gpt-4o"}]
    }));
    accepted(Kind::Provider, &azure);
    refused(
        Kind::Provider,
        &with(openai(), "/spec/azure", json!({"apiVersion": "2024-10-21"})),
        "spec.azure is only allowed with type: azure-openai",
    );
    let bedrock = provider(json!({
        "type": "bedrock", "credentials": {"env": "AWS_CREDS"}, "bedrock": {"region": "us-east-1"},
        "models": [{"name": "anthropic.claude-3-haiku-20240307-v1:0"}]
    }));
    accepted(Kind::Provider, &bedrock);
    refused(
        Kind::Provider,
        &with(openai(), "/spec/bedrock", json!({"region": "us-east-1"})),
        "spec.bedrock is only allowed with type: bedrock",
    );
    refused(
        Kind::Provider,
        &without(bedrock, "/spec/bedrock"),
        "spec.bedrock.region is required for type bedrock",
    );
}

#[test]
fn endpoint_required_where_there_is_no_default() {
    let vllm = provider(
        json!({"type": "openai-compatible", "endpoint": "http://vllm:8000/v1", "models": [{"name": "llama"}]}),
    );
    accepted(Kind::Provider, &vllm);
    refused(
        Kind::Provider,
        &without(vllm, "/spec/endpoint"),
        "spec.endpoint is required for types openai-compatible and azure-openai",
    );
    refused(
        Kind::Provider,
        &with(openai(), "/spec/endpoint", json!("api.openai.com")),
        "spec.endpoint: Invalid value",
    );
}

#[test]
fn credentials_required_except_for_mock_and_local_servers() {
    refused(
        Kind::Provider,
        &without(openai(), "/spec/credentials"),
        "spec.credentials is required for this provider type",
    );
    refused(
        Kind::Provider,
        &with(mock(), "/spec/credentials", json!({"env": "X"})),
        "a mock provider takes no credentials",
    );
}

#[test]
fn credentials_are_a_secret_or_an_env_var_not_both() {
    accepted(
        Kind::Provider,
        &with(
            openai(),
            "/spec/credentials",
            json!({"env": "OPENAI_API_KEY"}),
        ),
    );
    refused(
        Kind::Provider,
        &with(
            openai(),
            "/spec/credentials",
            json!({"env": "OPENAI_API_KEY", "secretRef": {"name": "k", "key": "v"}}),
        ),
        "set exactly one of credentials.secretRef (cluster) or credentials.env (standalone)",
    );
    refused(
        Kind::Provider,
        &with(openai(), "/spec/credentials", json!({})),
        "set exactly one of credentials.secretRef",
    );
    refused(
        Kind::Provider,
        &with(openai(), "/spec/credentials", json!({"env": "1BAD"})),
        "spec.credentials.env: Invalid value",
    );
}

#[test]
fn model_names_are_unique_and_there_is_at_least_one() {
    accepted(
        Kind::Provider,
        &with(
            mock(),
            "/spec/models",
            json!([{"name": "a"}, {"name": "b"}]),
        ),
    );
    refused(
        Kind::Provider,
        &with(
            mock(),
            "/spec/models",
            json!([{"name": "a"}, {"name": "a"}]),
        ),
        "spec.models[1]: Duplicate value: {\"name\":\"a\"}",
    );
    refused(
        Kind::Provider,
        &with(mock(), "/spec/models", json!([])),
        "spec.models: Required value: must have at least 1 items",
    );
    refused(
        Kind::Provider,
        &with(mock(), "/spec/models/0/contextWindow", json!(0)),
        "spec.models[0].contextWindow: Invalid value: 0",
    );
}

#[test]
fn prices_are_decimal_strings() {
    accepted(
        Kind::Provider,
        &with(
            openai(),
            "/spec/models/0/pricing",
            json!({"inputPerMillion": "0.15", "outputPerMillion": "0.60"}),
        ),
    );
    refused(
        Kind::Provider,
        &with(
            openai(),
            "/spec/models/0/pricing",
            json!({"inputPerMillion": 0.15, "outputPerMillion": "0.60"}),
        ),
        "spec.models[0].pricing.inputPerMillion: Invalid value: \"number\"",
    );
    refused(
        Kind::Provider,
        &with(
            openai(),
            "/spec/models/0/pricing",
            json!({"inputPerMillion": "-1", "outputPerMillion": "0.60"}),
        ),
        "spec.models[0].pricing.inputPerMillion: Invalid value: \"-1\"",
    );
}

#[test]
fn timeouts_are_durations_and_nest() {
    accepted(
        Kind::Provider,
        &with(
            openai(),
            "/spec/timeouts",
            json!({"connect": "2s", "firstToken": "5s", "total": "1m"}),
        ),
    );
    refused(
        Kind::Provider,
        &with(
            openai(),
            "/spec/timeouts",
            json!({"firstToken": "2m", "total": "1m"}),
        ),
        "timeouts.firstToken must not exceed timeouts.total",
    );
    refused(
        Kind::Provider,
        &with(
            openai(),
            "/spec/timeouts",
            json!({"connect": "5m", "total": "1m"}),
        ),
        "timeouts.connect must not exceed timeouts.total",
    );
    refused(
        Kind::Provider,
        &with(openai(), "/spec/timeouts", json!({"connect": "2 seconds"})),
        "spec.timeouts.connect: Invalid value",
    );
}

#[test]
fn breaker_open_for_within_max_open_for() {
    accepted(
        Kind::Provider,
        &with(
            openai(),
            "/spec/circuitBreaker",
            json!({"openFor": "10s", "maxOpenFor": "1m"}),
        ),
    );
    refused(
        Kind::Provider,
        &with(openai(), "/spec/circuitBreaker", json!({"openFor": "10m"})),
        "circuitBreaker.openFor must not exceed circuitBreaker.maxOpenFor",
    );
    refused(
        Kind::Provider,
        &with(openai(), "/spec/circuitBreaker", json!({"window": "500ms"})),
        "circuitBreaker.window must be at least 1s",
    );
    refused(
        Kind::Provider,
        &with(
            openai(),
            "/spec/circuitBreaker",
            json!({"errorRatePercent": 150}),
        ),
        "spec.circuitBreaker.errorRatePercent: Invalid value: 150",
    );
}

// ---- LLMRoute ----

#[test]
fn a_route_needs_at_least_one_target() {
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/targets", json!([])),
        "spec.targets: Required value: must have at least 1 items",
    );
    refused(
        Kind::LLMRoute,
        &without(chat_route(), "/spec/targets"),
        "spec.targets: Required value",
    );
}

#[test]
fn weights_are_not_all_zero_under_weighted() {
    let two = json!([
        {"providerRef": {"name": "a"}, "model": "m", "weight": 0},
        {"providerRef": {"name": "b"}, "model": "m", "weight": 3}
    ]);
    let r = with(
        with(chat_route(), "/spec/strategy", json!("weighted")),
        "/spec/targets",
        two,
    );
    accepted(Kind::LLMRoute, &r);
    let r = with(r, "/spec/targets/1/weight", json!(0));
    refused(
        Kind::LLMRoute,
        &r,
        "with strategy weighted at least one target needs a weight above 0",
    );
    // Zero weights are fine under priority: the targets are fallbacks.
    accepted(
        Kind::LLMRoute,
        &with(r, "/spec/strategy", json!("priority")),
    );
}

#[test]
fn strategy_is_an_enum() {
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/strategy", json!("fastest")),
        "spec.strategy: Unsupported value: \"fastest\"",
    );
}

#[test]
fn aliases_are_unique_and_differ_from_the_model() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/aliases",
            json!(["gpt-4o", "gpt-4o-mini"]),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/aliases", json!(["gpt-4o", "gpt-4o"])),
        "spec.aliases[1]: Duplicate value: \"gpt-4o\"",
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/aliases", json!(["chat"])),
        "an alias must differ from spec.model",
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/model", json!("has space")),
        "spec.model: Invalid value",
    );
}

fn rule(m: Value) -> Value {
    json!([{"match": m, "targets": [{"providerRef": {"name": "openai"}, "model": "gpt-4o-mini"}]}])
}

#[test]
fn a_rule_matches_on_something() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/rules",
            rule(json!({"complexity": "simple"})),
        ),
    );
    accepted(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/rules", rule(json!({"hasTools": true}))),
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/rules", rule(json!({}))),
        "a rule must match on something",
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/rules",
            rule(json!({"complexity": "hard"})),
        ),
        "spec.rules[0].match.complexity: Unsupported value: \"hard\"",
    );
}

#[test]
fn input_token_range_is_ordered() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/rules",
            rule(json!({"minInputTokens": 10, "maxInputTokens": 100})),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/rules",
            rule(json!({"minInputTokens": 100, "maxInputTokens": 10})),
        ),
        "minInputTokens must not exceed maxInputTokens",
    );
}

#[test]
fn a_weighted_rule_needs_a_positive_weight() {
    let r = json!([{"match": {"hasImages": true}, "strategy": "weighted",
        "targets": [{"providerRef": {"name": "openai"}, "model": "gpt-4o-mini", "weight": 0}]}]);
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/rules", r.clone()),
        "with strategy weighted at least one target needs a weight above 0",
    );
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/rules",
            with(r, "/0/strategy", json!("priority")),
        ),
    );
}

#[test]
fn only_retryable_failures_are_retried() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/retry",
            json!({"triggers": ["connect", "rate-limited"]}),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/retry", json!({"triggers": ["auth"]})),
        "only connect, reset, timeout, server-error, overloaded, rate-limited, stream-interrupted and malformed can be retried",
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/retry",
            json!({"triggers": ["content-filter"]}),
        ),
        "can be retried",
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/retry", json!({"attempts": 0})),
        "spec.retry.attempts: Invalid value: 0",
    );
}

#[test]
fn backoff_base_within_max() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/retry",
            json!({"backoff": {"base": "100ms", "max": "2s"}}),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/retry",
            json!({"backoff": {"base": "5s", "max": "1s"}}),
        ),
        "backoff.base must not exceed backoff.max",
    );
}

#[test]
fn catch_all_has_a_status_or_a_response() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/fallback",
            json!({"catchAll": {"status": 503, "message": "busy"}}),
        ),
    );
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/fallback",
            json!({"catchAll": {"response": "Please try later."}}),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/fallback", json!({"catchAll": {}})),
        "catchAll needs exactly one of status or response",
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/fallback",
            json!({"catchAll": {"status": 503, "response": "x"}}),
        ),
        "catchAll needs exactly one of status or response",
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/fallback",
            json!({"catchAll": {"response": "x", "message": "y"}}),
        ),
        "catchAll.message goes with catchAll.status",
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/fallback",
            json!({"catchAll": {"status": 200}}),
        ),
        "spec.fallback.catchAll.status: Invalid value: 200",
    );
}

#[test]
fn semantic_cache_needs_an_embedding_model() {
    let embedding = json!({"providerRef": {"name": "openai"}, "model": "text-embedding-3-small"});
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/cache",
            json!({"mode": "semantic", "embedding": embedding}),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/cache", json!({"mode": "semantic"})),
        "cache.embedding is required with mode semantic",
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/cache",
            json!({"mode": "exact", "similarity": 0.9}),
        ),
        "cache.similarity and cache.embedding only apply to mode semantic",
    );
    accepted(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/cache", json!({"mode": "off"})),
    );
    refused(
        Kind::LLMRoute,
        &with(chat_route(), "/spec/cache", json!({"mode": false})),
        "spec.cache.mode: Invalid value: \"boolean\"",
    );
}

#[test]
fn pii_detectors_are_an_enum() {
    accepted(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/pii",
            json!({"mode": "block", "detectors": ["email", "credit-card"]}),
        ),
    );
    refused(
        Kind::LLMRoute,
        &with(
            chat_route(),
            "/spec/pii",
            json!({"mode": "redact", "detectors": ["passport"]}),
        ),
        "spec.pii.detectors[0]: Unsupported value: \"passport\"",
    );
}

// ---- Budget ----

#[test]
fn a_budget_limits_something() {
    accepted(
        Kind::Budget,
        &budget(json!({"window": "hour", "rateLimits": {"requestsPerMinute": 60}})),
    );
    refused(
        Kind::Budget,
        &budget(json!({"window": "day"})),
        "a budget needs limits, rateLimits or both",
    );
    refused(
        Kind::Budget,
        &budget(json!({"window": "day", "limits": {}})),
        "limits needs at least one of costUSD, tokens or requests",
    );
    refused(
        Kind::Budget,
        &budget(json!({"window": "day", "rateLimits": {}})),
        "rateLimits needs requestsPerMinute, tokensPerMinute or both",
    );
    refused(
        Kind::Budget,
        &budget(json!({"window": "week", "limits": {"tokens": 5}})),
        "spec.window: Unsupported value: \"week\"",
    );
    refused(
        Kind::Budget,
        &budget(json!({"window": "day", "limits": {"costUSD": "1e3"}})),
        "spec.limits.costUSD: Invalid value",
    );
}

fn step(at: u32, model: &str) -> Value {
    json!({"atPercent": at, "to": {"providerRef": {"name": "openai"}, "model": model}})
}

#[test]
fn degrade_steps_increase() {
    accepted(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/degrade",
            json!([step(50, "a"), step(80, "b")]),
        ),
    );
    refused(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/degrade",
            json!([step(80, "a"), step(50, "b")]),
        ),
        "degrade steps must be in strictly increasing atPercent",
    );
    refused(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/degrade",
            json!([step(50, "a"), step(50, "b")]),
        ),
        "degrade steps must be in strictly increasing atPercent",
    );
    refused(
        Kind::Budget,
        &with(team_budget(), "/spec/degrade", json!([step(100, "a")])),
        "spec.degrade[0].atPercent: Invalid value: 100",
    );
}

#[test]
fn downgrade_names_its_target_and_reject_does_not() {
    let to = json!({"providerRef": {"name": "openai"}, "model": "gpt-4o-mini"});
    accepted(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/onExceeded",
            json!({"action": "downgrade", "to": to}),
        ),
    );
    accepted(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/onExceeded",
            json!({"action": "reject"}),
        ),
    );
    refused(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/onExceeded",
            json!({"action": "downgrade"}),
        ),
        "onExceeded.to is required with action downgrade and only allowed with it",
    );
    refused(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/onExceeded",
            json!({"action": "reject", "to": to}),
        ),
        "onExceeded.to is required with action downgrade",
    );
}

#[test]
fn tenant_header_is_a_lowercase_header_name() {
    accepted(
        Kind::Budget,
        &with(
            team_budget(),
            "/spec/tenantHeader",
            json!("x-sluice-tenant"),
        ),
    );
    refused(
        Kind::Budget,
        &with(team_budget(), "/spec/tenantHeader", json!("X Tenant")),
        "spec.tenantHeader: Invalid value",
    );
}

#[test]
fn metadata_name_is_required_and_well_formed() {
    refused(
        Kind::Budget,
        &with(team_budget(), "/metadata/name", json!("Team_A")),
        "metadata.name: Invalid value",
    );
    refused(
        Kind::Budget,
        &without(team_budget(), "/metadata/name"),
        "metadata.name: Required value",
    );
}
