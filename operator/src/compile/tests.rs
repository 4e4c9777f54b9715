use super::*;
use sluice_crds::load::Admission;
use sluice_crds::snapshot::Amounts;

const BASE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: openai, namespace: shop, generation: 1}
spec:
  type: openai
  credentials: {secretRef: {name: keys, key: openai}}
  models: [{name: gpt-4o, pricing: {inputPerMillion: "2.50", outputPerMillion: "10"}}, {name: gpt-4o-mini}]
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: backup, namespace: shop}
spec:
  type: mock
  models: [{name: m}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat, namespace: shop, generation: 4}
spec:
  model: chat
  targets: [{providerRef: {name: openai}, model: gpt-4o}, {providerRef: {name: backup}, model: m}]
  budgetRefs: [{name: team}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: batch, namespace: shop}
spec:
  model: batch
  podSelector: {matchLabels: {app: batch}}
  targets: [{providerRef: {name: backup}, model: m}]
---
apiVersion: sluice.dev/v1alpha1
kind: Budget
metadata: {name: team, namespace: shop}
spec:
  window: day
  podSelector: {matchLabels: {app: web}}
  limits: {costUSD: "100"}
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: openai, namespace: other}
spec:
  type: openai
  credentials: {secretRef: {name: keys, key: openai}}
  models: [{name: gpt-4o}]
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: chat, namespace: other}
spec:
  model: chat
  targets: [{providerRef: {name: openai}, model: gpt-4o}]
"#;

fn state(extra: &str) -> ClusterState {
    let yaml = if extra.is_empty() {
        BASE.to_owned()
    } else {
        format!("{BASE}---\n{extra}")
    };
    let c = Admission::new()
        .parse_documents(&yaml)
        .unwrap_or_else(|e| panic!("fixture must be valid: {e:#?}"));
    let mut secrets = Secrets::new();
    secrets.insert(
        ("shop".into(), "keys".into()),
        [("openai".to_string(), Credential::new("sk-shop"))].into(),
    );
    secrets.insert(
        ("other".into(), "keys".into()),
        [("openai".to_string(), Credential::new("sk-other"))].into(),
    );
    let pod = |ns: &str, name: &str, app: &str| PodInfo {
        namespace: ns.into(),
        name: name.into(),
        service_account: Some("default".into()),
        labels: [("app".to_string(), app.to_string())].into(),
        workload: Some(format!("Deployment/{app}")),
    };
    ClusterState {
        providers: c.providers,
        routes: c.routes,
        budgets: c.budgets,
        secrets,
        pods: vec![
            pod("shop", "web-1", "web"),
            pod("shop", "batch-1", "batch"),
            pod("other", "o-1", "web"),
        ],
    }
}

/// Grants a fixed allowance and records who asked.
#[derive(Default)]
struct Fixed(Vec<String>);

impl Allowances for Fixed {
    fn for_pod(&mut self, budget: &Budget, _: &WindowBounds, pod: &PodInfo) -> (Spend, Allowance) {
        self.0.push(format!("{}/{}", budget.name_any(), pod.name));
        (
            Spend::default(),
            Allowance {
                total: Amounts {
                    cost_usd: Some("10".parse().expect("money")),
                    ..Amounts::default()
                },
                ..Allowance::default()
            },
        )
    }
}

fn now() -> jiff::Timestamp {
    "2026-11-21T12:00:00Z".parse().expect("time")
}

fn run(s: &ClusterState) -> Compiled {
    compile(s, now(), Duration::from_secs(2), &mut Fixed::default())
}

fn key(ns: &str, name: &str) -> Key {
    (ns.into(), name.into())
}

#[test]
fn a_pod_gets_the_routes_that_select_it_with_their_providers_and_budgets() {
    let c = run(&state(""));
    let web = &c.snapshots[&key("shop", "web-1")];
    let routes: Vec<&str> = web.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, vec!["chat"], "batch selects only app=batch pods");
    assert_eq!(web.routes[0].generation, 4);
    let providers: Vec<&str> = web.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(providers, vec!["backup", "openai"]);
    let openai = web
        .providers
        .iter()
        .find(|p| p.name == "openai")
        .expect("openai");
    assert_eq!(
        openai.credential.as_ref().map(Credential::expose),
        Some("sk-shop")
    );
    assert_eq!(web.budgets.len(), 1);
    assert!(web.budgets[0].applies_to_pod);
    assert_eq!(web.budgets[0].window.start, "2026-11-21T00:00:00Z");
    assert_eq!(web.budgets[0].routes, vec!["chat"]);
    assert!(web.is_sealed());

    let batch = &c.snapshots[&key("shop", "batch-1")];
    let routes: Vec<&str> = batch.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, vec!["batch", "chat"]);
    let team = batch
        .budgets
        .iter()
        .find(|b| b.name == "team")
        .expect("team budget");
    assert!(
        !team.applies_to_pod,
        "the budget's podSelector does not match batch pods"
    );

    let v = &c.routes[&key("shop", "chat")];
    assert!(v.accepted.ok && v.resolved_refs.ok && v.usable);
    assert_eq!(
        v.selected_pods,
        vec![key("shop", "batch-1"), key("shop", "web-1")]
    );
    assert_eq!(
        c.routes[&key("shop", "batch")].selected_pods,
        vec![key("shop", "batch-1")]
    );
}

#[test]
fn a_pod_never_sees_another_namespace() {
    let c = run(&state(""));
    let other = &c.snapshots[&key("other", "o-1")];
    assert!(other.routes.iter().all(|r| r.namespace == "other"));
    assert!(other.providers.iter().all(|p| p.namespace == "other"));
    let key_of = |s: &Snapshot| {
        s.providers
            .iter()
            .filter_map(|p| p.credential.clone())
            .map(|c| c.expose().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(key_of(other), vec!["sk-other"]);
    assert!(!key_of(&c.snapshots[&key("shop", "web-1")]).contains(&"sk-other".to_string()));
}

#[test]
fn an_unresolved_route_is_held_at_its_last_good_version() {
    let broken = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: broken, namespace: shop}\nspec:\n  model: broken\n  targets: [{providerRef: {name: nope}, model: x}, {providerRef: {name: openai}, model: gpt-5}]\n";
    let c = run(&state(broken));
    let v = &c.routes[&key("shop", "broken")];
    assert!(v.accepted.ok);
    assert!(!v.resolved_refs.ok && !v.usable);
    assert_eq!(v.resolved_refs.reason, "ProviderNotFound");
    assert!(
        v.resolved_refs
            .message
            .contains("Provider \"nope\" does not exist"),
        "{}",
        v.resolved_refs.message
    );
    assert!(
        v.resolved_refs
            .message
            .contains("does not list model \"gpt-5\""),
        "every reason is listed: {}",
        v.resolved_refs.message
    );
    let web = &c.snapshots[&key("shop", "web-1")];
    assert_eq!(web.held_routes, vec!["broken"]);
    assert!(
        web.routes.iter().all(|r| r.name != "broken"),
        "the invalid spec never reaches sidecars"
    );
}

#[test]
fn a_missing_secret_makes_the_provider_and_its_routes_unready() {
    let mut s = state("");
    s.secrets.remove(&key("shop", "keys"));
    let c = run(&s);
    let p = &c.providers[&key("shop", "openai")];
    assert!(!p.credentials_resolved.ok);
    assert_eq!(p.credentials_resolved.reason, "SecretNotFound");
    assert!(p.accepted.ok);
    let r = &c.routes[&key("shop", "chat")];
    assert!(!r.resolved_refs.ok);
    assert_eq!(r.resolved_refs.reason, "ProviderNotReady");
    let web = &c.snapshots[&key("shop", "web-1")];
    assert_eq!(web.held_routes, vec!["chat"]);
    assert!(
        web.providers.iter().all(|p| p.name != "openai"),
        "no provider without its key"
    );
}

#[test]
fn versions_follow_exactly_the_inputs_of_each_pod() {
    let a = run(&state(""));
    let b = run(&state(""));
    for (k, s) in &a.snapshots {
        assert_eq!(s.version, b.snapshots[k].version, "{k:?}: deterministic");
    }
    let mut rotated = state("");
    rotated.secrets.insert(
        key("shop", "keys"),
        [("openai".to_string(), Credential::new("sk-rotated"))].into(),
    );
    let c = run(&rotated);
    assert_ne!(
        a.snapshots[&key("shop", "web-1")].version,
        c.snapshots[&key("shop", "web-1")].version
    );
    assert_eq!(
        a.snapshots[&key("other", "o-1")].version,
        c.snapshots[&key("other", "o-1")].version,
        "another namespace's Secret does not touch this pod"
    );
}

#[test]
fn a_route_claiming_a_served_name_for_the_same_pods_is_not_accepted() {
    let dup = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: zz-chat2, namespace: shop}\nspec:\n  model: other\n  aliases: [chat]\n  targets: [{providerRef: {name: backup}, model: m}]\n";
    let c = run(&state(dup));
    let v = &c.routes[&key("shop", "zz-chat2")];
    assert!(!v.accepted.ok);
    assert_eq!(v.accepted.reason, "ModelConflict");
    let web = &c.snapshots[&key("shop", "web-1")];
    assert_eq!(web.held_routes, vec!["zz-chat2"]);
}

#[test]
fn where_selectors_overlap_on_a_pod_the_older_route_serves_it() {
    let a = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: first, namespace: shop}\nspec:\n  model: shared\n  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, batch]}]}\n  targets: [{providerRef: {name: backup}, model: m}]\n";
    let b = "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: second, namespace: shop}\nspec:\n  model: shared\n  podSelector: {matchLabels: {app: web}}\n  targets: [{providerRef: {name: backup}, model: m}]\n";
    let c = run(&state(&format!("{a}---\n{b}")));
    let served = |pod: &str| -> Vec<String> {
        c.snapshots[&key("shop", pod)]
            .routes
            .iter()
            .map(|r| r.name.clone())
            .filter(|n| n == "first" || n == "second")
            .collect()
    };
    assert_eq!(served("web-1"), vec!["first"]);
    assert_eq!(served("batch-1"), vec!["first"]);
    let second = &c.routes[&key("shop", "second")];
    assert!(second.accepted.ok, "different selectors may share a name");
    assert!(
        second.warnings[0].contains("not served on pod web-1"),
        "{:?}",
        second.warnings
    );
}

#[test]
fn allowances_are_asked_per_budget_and_pod() {
    let mut fixed = Fixed::default();
    let c = compile(&state(""), now(), Duration::from_secs(2), &mut fixed);
    assert_eq!(fixed.0, vec!["team/web-1", "team/batch-1"]);
    let web = &c.snapshots[&key("shop", "web-1")];
    assert_eq!(
        web.budgets[0]
            .allowance
            .total
            .cost_usd
            .map(|m| m.to_string()),
        Some("10.00".into())
    );
}

/// Incremental compiles give exactly what a full compile gives, and
/// rebuild only the pods whose inputs changed.
#[test]
fn only_pods_whose_inputs_changed_are_rebuilt() {
    let mut memo = Memo::default();
    let mut step = |s: &ClusterState| {
        let c = compile_incremental(
            s,
            now(),
            Duration::from_secs(2),
            &mut Fixed::default(),
            &mut memo,
        );
        assert_eq!(c.snapshots, run(s).snapshots, "same as a full compile");
        (memo.rebuilt, memo.reused)
    };
    let mut s = state("");
    assert_eq!(step(&s), (3, 0), "the first compile builds every pod");
    assert_eq!(step(&s), (0, 3), "nothing changed");

    let version = |s: &ClusterState| run(s).routes[&key("shop", "batch")].version.clone();
    let before = version(&s);
    assert_eq!(before.len(), 16, "a content version: {before}");
    // The batch route selects only batch-1.
    let batch = s
        .routes
        .iter_mut()
        .find(|r| r.name_any() == "batch" && r.namespace().as_deref() == Some("shop"))
        .expect("batch route");
    batch.spec.aliases = vec!["bulk".into()];
    assert_eq!(step(&s), (1, 2), "only batch-1 carries the batch route");
    assert_ne!(version(&s), before, "configVersion follows the spec");

    // A Secret rotation reaches the pods whose providers use it.
    s.secrets.insert(
        ("shop".into(), "keys".into()),
        [("openai".to_string(), Credential::new("sk-rotated"))].into(),
    );
    assert_eq!(
        step(&s),
        (2, 1),
        "both shop pods serve chat, which uses the shop openai key; o-1 is untouched"
    );

    // A new pod is built; a gone pod is forgotten.
    s.pods.push(PodInfo {
        namespace: "shop".into(),
        name: "web-2".into(),
        service_account: Some("default".into()),
        labels: [("app".to_string(), "web".to_string())].into(),
        workload: Some("Deployment/web".into()),
    });
    s.pods.retain(|p| p.name != "o-1");
    assert_eq!(step(&s), (1, 2));
}
