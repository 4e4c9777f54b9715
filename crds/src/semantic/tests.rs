use super::*;
use crate::load::Admission;

fn catalog(yaml: &str) -> crate::load::Catalog {
    Admission::new()
        .parse_documents(yaml)
        .unwrap_or_else(|e| panic!("fixture must be schema-valid: {e:#?}"))
}

const PROVIDERS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: openai, namespace: shop}
spec:
  type: openai
  credentials: {secretRef: {name: keys, key: openai}}
  models:
  - {name: gpt-4o, contextWindow: 128000, capabilities: [chat, tools, vision, json], pricing: {inputPerMillion: "2.50", outputPerMillion: "10.00"}}
  - {name: gpt-4o-mini, contextWindow: 128000}
  - {name: text-embedding-3-small, capabilities: [embeddings]}
---
apiVersion: sluice.dev/v1alpha1
kind: Budget
metadata: {name: team, namespace: shop}
spec: {window: day, routes: [chat], limits: {requests: 100}}
"#;

fn problems(extra: &str) -> Vec<Problem> {
    let c = catalog(&format!("{PROVIDERS}---\n{extra}"));
    Namespace::group(&c.providers, &c.routes, &c.budgets)
        .into_iter()
        .flat_map(|(ns, objects)| objects.check(&ns))
        .collect()
}

fn reasons(extra: &str) -> Vec<(String, Reason, String)> {
    problems(extra)
        .into_iter()
        .map(|p| (format!("{}/{}", p.kind, p.name), p.reason, p.field))
        .collect()
}

fn route(spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: chat, namespace: shop}}\nspec:\n{spec}"
    )
}

#[test]
fn a_consistent_namespace_has_no_problems() {
    let r = route(
        "  model: chat\n  budgetRefs: [{name: team}]\n  targets: [{providerRef: {name: openai}, model: gpt-4o}, {providerRef: {name: openai}, model: gpt-4o-mini}]\n",
    );
    assert_eq!(reasons(&r), vec![]);
}

#[test]
fn unknown_provider_and_unlisted_model_are_named() {
    let r = route(
        "  model: chat\n  targets: [{providerRef: {name: anthropic}, model: claude}, {providerRef: {name: openai}, model: gpt-5}]\n",
    );
    let p = problems(&r);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].reason, Reason::ProviderNotFound);
    assert_eq!(p[0].field, "spec.targets[0].providerRef.name");
    assert_eq!(p[0].reason.condition(), ConditionType::ResolvedRefs);
    assert!(
        p[0].message
            .contains("Provider \"anthropic\" does not exist"),
        "{}",
        p[0].message
    );
    assert_eq!(p[1].reason, Reason::ModelNotListed);
    assert_eq!(p[1].field, "spec.targets[1].model");
    assert!(
        p[1].message.contains(
            "does not list model \"gpt-5\" (it lists: gpt-4o, gpt-4o-mini, text-embedding-3-small)"
        ),
        "{}",
        p[1].message
    );
}

#[test]
fn missing_budget_is_named() {
    let r = route(
        "  model: chat\n  budgetRefs: [{name: nope}]\n  targets: [{providerRef: {name: openai}, model: gpt-4o}]\n",
    );
    assert_eq!(
        reasons(&r),
        vec![(
            "LLMRoute/chat".into(),
            Reason::BudgetNotFound,
            "spec.budgetRefs[0].name".into()
        )]
    );
}

#[test]
fn fallbacks_that_can_never_be_reached_are_refused() {
    let targets = "  targets: [{providerRef: {name: openai}, model: gpt-4o}, {providerRef: {name: openai}, model: gpt-4o-mini, priority: 5}]\n";
    let depth_one = route(&format!(
        "  model: chat\n  fallback: {{maxDepth: 1}}\n{targets}"
    ));
    let p = problems(&depth_one);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].reason, Reason::UnreachableTarget);
    assert_eq!(p[0].field, "spec.targets[1]");
    assert_eq!(p[0].reason.condition(), ConditionType::Accepted);
    let no_triggers = route(&format!(
        "  model: chat\n  fallback: {{triggers: []}}\n{targets}"
    ));
    assert_eq!(problems(&no_triggers)[0].reason, Reason::UnreachableTarget);
    // Under weighted every target comes first some of the time.
    let weighted = route(&format!(
        "  model: chat\n  strategy: weighted\n  fallback: {{maxDepth: 1}}\n{targets}"
    ));
    assert_eq!(reasons(&weighted), vec![]);
}

#[test]
fn duplicate_targets_and_shadowed_rules_are_refused() {
    let r = route(
        "  model: chat\n  targets: [{providerRef: {name: openai}, model: gpt-4o}, {providerRef: {name: openai}, model: gpt-4o}]\n  rules:\n  - {match: {complexity: simple}, targets: [{providerRef: {name: openai}, model: gpt-4o-mini}]}\n  - {match: {complexity: simple}, targets: [{providerRef: {name: openai}, model: gpt-4o}]}\n",
    );
    assert_eq!(
        reasons(&r),
        vec![
            (
                "LLMRoute/chat".into(),
                Reason::DuplicateTarget,
                "spec.targets[1]".into()
            ),
            (
                "LLMRoute/chat".into(),
                Reason::UnreachableRule,
                "spec.rules[1].match".into()
            ),
        ]
    );
}

#[test]
fn embedding_model_must_embed() {
    let ok = route(
        "  model: chat\n  cache: {mode: semantic, embedding: {providerRef: {name: openai}, model: text-embedding-3-small}}\n  targets: [{providerRef: {name: openai}, model: gpt-4o}]\n",
    );
    assert_eq!(reasons(&ok), vec![]);
    let bad = route(
        "  model: chat\n  cache: {mode: semantic, embedding: {providerRef: {name: openai}, model: gpt-4o}}\n  targets: [{providerRef: {name: openai}, model: gpt-4o}]\n",
    );
    assert_eq!(
        reasons(&bad),
        vec![(
            "LLMRoute/chat".into(),
            Reason::CapabilityMissing,
            "spec.cache.embedding.model".into()
        )]
    );
}

#[test]
fn two_routes_claiming_one_name_conflict_and_the_older_wins() {
    let a = route("  model: chat\n  targets: [{providerRef: {name: openai}, model: gpt-4o}]\n");
    let b = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: other, namespace: shop}\nspec:\n  model: assistant\n  aliases: [chat]\n  targets: [{providerRef: {name: openai}, model: gpt-4o}]\n";
    let got = reasons(&format!("{a}---\n{b}"));
    // Same creation time here, so the name decides: "chat" < "other".
    assert_eq!(
        got,
        vec![(
            "LLMRoute/other".into(),
            Reason::ModelConflict,
            "spec.model".into()
        )]
    );
    // Routes for different pods may share a name.
    let a = route(
        "  model: chat\n  podSelector: {matchLabels: {app: a}}\n  targets: [{providerRef: {name: openai}, model: gpt-4o}]\n",
    );
    let b = b.replace(
        "  model: assistant\n",
        "  model: assistant\n  podSelector: {matchLabels: {app: b}}\n",
    );
    assert_eq!(reasons(&format!("{a}---\n{b}")), vec![]);
}

#[test]
fn budget_references_are_checked() {
    let b = "apiVersion: sluice.dev/v1alpha1\nkind: Budget\nmetadata: {name: b2, namespace: shop}\nspec:\n  window: month\n  routes: [ghost]\n  limits: {costUSD: \"10\"}\n  degrade: [{atPercent: 50, to: {providerRef: {name: openai}, model: gpt-3}}]\n  onExceeded: {action: downgrade, to: {providerRef: {name: cheap}, model: x}}\n";
    let got = reasons(b);
    assert!(
        got.contains(&(
            "Budget/b2".into(),
            Reason::RouteNotFound,
            "spec.routes[0]".into()
        )),
        "{got:#?}"
    );
    assert!(
        got.contains(&(
            "Budget/b2".into(),
            Reason::ModelNotListed,
            "spec.degrade[0].to".into()
        )),
        "{got:#?}"
    );
    assert!(
        got.contains(&(
            "Budget/b2".into(),
            Reason::ProviderNotFound,
            "spec.onExceeded.to".into()
        )),
        "{got:#?}"
    );
    // The base budget lists `chat`, which does not exist in this fixture.
    assert!(
        got.contains(&(
            "Budget/team".into(),
            Reason::RouteNotFound,
            "spec.routes[0]".into()
        )),
        "{got:#?}"
    );
}

#[test]
fn cost_budget_over_unpriced_models_is_a_warning() {
    let r = route(
        "  model: chat\n  budgetRefs: [{name: costly}]\n  targets: [{providerRef: {name: openai}, model: gpt-4o-mini}]\n",
    );
    let b = "apiVersion: sluice.dev/v1alpha1\nkind: Budget\nmetadata: {name: costly, namespace: shop}\nspec: {window: day, limits: {costUSD: \"5\"}}\n";
    let p: Vec<Problem> = problems(&format!("{r}---\n{b}"))
        .into_iter()
        .filter(|p| p.name == "costly")
        .collect();
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].reason, Reason::PricingMissing);
    assert_eq!(p[0].severity, Severity::Warning);
}

#[test]
fn reserved_and_malformed_header_names_are_refused() {
    let prov = "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: p, namespace: shop}\nspec:\n  type: mock\n  headers: {Authorization: x, \"bad header\": y, x-team: shop}\n  models: [{name: m}]\n";
    let got = reasons(prov);
    assert!(
        got.contains(&(
            "Provider/p".into(),
            Reason::InvalidHeader,
            "spec.headers.Authorization".into()
        )),
        "{got:#?}"
    );
    assert!(
        got.contains(&(
            "Provider/p".into(),
            Reason::InvalidHeader,
            "spec.headers.bad header".into()
        )),
        "{got:#?}"
    );
    assert_eq!(got.iter().filter(|g| g.0 == "Provider/p").count(), 2);
}
