use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_crds::FailureClass;
use sluice_crds::budget::BudgetState;
use sluice_crds::common::conditions;
use sluice_crds::provider::{BreakerCounts, ProviderState, ProviderStatus};
use sluice_crds::report::{BreakerState, ConfigState, Rejection, TargetHealth, UsageDelta};
use sluice_crds::snapshot::Snapshot;

use crate::compile::{BudgetVerdict, Cond, ProviderVerdict, RouteVerdict};

/// Sidecars report every 2 s; reports count for 6 s.
const INTERVAL_MS: u64 = 2_000;

fn budget(yaml_spec: &str) -> Budget {
    serde_yaml::from_str(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Budget\nmetadata: {{name: team, namespace: shop, generation: 2}}\nspec:\n{yaml_spec}"
    ))
    .expect("valid budget")
}

fn window() -> WindowBounds {
    WindowBounds {
        start: "2026-11-21T00:00:00Z".into(),
        end: "2026-11-22T00:00:00Z".into(),
    }
}

fn now() -> Time {
    Time("2026-11-21T12:00:00Z".parse().expect("time"))
}

fn report(pod: &str, instance: &str, seq: u64, usage: Vec<UsageDelta>) -> Report {
    Report {
        namespace: "shop".into(),
        pod: pod.into(),
        instance: instance.into(),
        sequence: seq,
        config: ConfigState::default(),
        targets: Vec::new(),
        usage,
        fallbacks: BTreeMap::new(),
        allowance_low: Vec::new(),
    }
}

fn delta(seq: u64, cost: &str, tenant: Option<&str>) -> UsageDelta {
    UsageDelta {
        seq,
        budget: "team".into(),
        tenant: tenant.map(str::to_owned),
        window_start: window().start,
        spent: Spend {
            cost_usd: cost.parse().expect("money"),
            tokens: 100,
            requests: 1,
        },
        released: Spend::default(),
    }
}

fn verdict() -> BudgetVerdict {
    BudgetVerdict {
        generation: Some(2),
        accepted: Cond {
            ok: true,
            reason: "Accepted".into(),
            message: String::new(),
        },
        resolved_refs: Cond {
            ok: true,
            reason: "ResolvedRefs".into(),
            message: String::new(),
        },
        usable: true,
        routes: vec!["chat".into()],
        warnings: Vec::new(),
    }
}

fn key() -> Key {
    ("shop".into(), "team".into())
}

#[test]
fn spend_across_sidecars_is_summed_exactly_once() {
    let b = budget("  window: day\n  limits: {costUSD: \"10\"}\n");
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&b, window()))].into();
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    for (i, pod) in ["a", "b", "c"].iter().enumerate() {
        let r = report(
            pod,
            &format!("{pod}-1"),
            1,
            vec![delta(1, "0.10", None), delta(2, "0.05", None)],
        );
        let got = agg.ingest(r, Some(format!("Deployment/{pod}")), &budgets, i as u64);
        assert_eq!(got.ack.usage_acked_through, 2);
        assert_eq!(got.budgets_touched, vec![key()]);
    }
    // b resends both deltas (it never saw the ack) plus a new one.
    agg.ingest(
        report(
            "b",
            "b-1",
            2,
            vec![
                delta(1, "0.10", None),
                delta(2, "0.05", None),
                delta(3, "1.00", None),
            ],
        ),
        None,
        &budgets,
        5,
    );
    let st = agg.budget_status(&key(), &b, &verdict(), &window(), now());
    assert_eq!(st.spent.cost_usd.to_string(), "1.45");
    assert_eq!(st.spent.requests, 7);
    assert_eq!(st.percent_used, 14);
    assert_eq!(st.folded.get("b-1"), Some(&3));
    assert_eq!(st.top_workloads.len(), 3);
}

#[test]
fn after_an_operator_restart_resent_usage_is_not_counted_twice() {
    let b = budget("  window: day\n  limits: {costUSD: \"10\"}\n");
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&b, window()))].into();
    let mut first = Aggregator::new(Policy::default(), INTERVAL_MS);
    first.ingest(
        report(
            "a",
            "a-1",
            1,
            vec![delta(1, "2.00", None), delta(2, "3.00", None)],
        ),
        None,
        &budgets,
        0,
    );
    let persisted = first.budget_status(&key(), &b, &verdict(), &window(), now());
    // The operator dies before acknowledging; the new leader reads the status back.
    let mut restored = b.clone();
    restored.status = Some(persisted);
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&restored, window()))].into();
    let mut second = Aggregator::new(Policy::default(), INTERVAL_MS);
    second.ingest(
        report(
            "a",
            "a-1",
            2,
            vec![
                delta(1, "2.00", None),
                delta(2, "3.00", None),
                delta(3, "0.50", None),
            ],
        ),
        None,
        &budgets,
        1,
    );
    let st = second.budget_status(&key(), &restored, &verdict(), &window(), now());
    assert_eq!(st.spent.cost_usd.to_string(), "5.50");
}

#[test]
fn usage_of_a_closed_window_is_dropped() {
    let b = budget("  window: day\n  limits: {costUSD: \"10\"}\n");
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&b, window()))].into();
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    let mut old = delta(1, "9.00", None);
    old.window_start = "2026-11-20T00:00:00Z".into();
    let got = agg.ingest(report("a", "a-1", 1, vec![old]), None, &budgets, 0);
    assert_eq!(
        got.ack.usage_acked_through, 1,
        "acknowledged, so it is not resent forever"
    );
    assert!(got.budgets_touched.is_empty());
    let st = agg.budget_status(&key(), &b, &verdict(), &window(), now());
    assert_eq!(st.spent.cost_usd.to_string(), "0.00");
}

#[test]
fn budget_state_follows_the_thresholds() {
    let b = budget(
        "  window: day\n  limits: {requests: 10}\n  softLimitPercent: 50\n  degrade: [{atPercent: 80, to: {providerRef: {name: p}, model: m}}]\n",
    );
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&b, window()))].into();
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    let mut seq = 0;
    let mut states = Vec::new();
    for _ in 0..10 {
        seq += 1;
        agg.ingest(
            report("a", "a-1", seq, vec![delta(seq, "0", None)]),
            None,
            &budgets,
            seq,
        );
        let st = agg.budget_status(&key(), &b, &verdict(), &window(), now());
        states.push((st.percent_used, st.state));
    }
    assert_eq!(states[3], (40, BudgetState::Ok));
    assert_eq!(states[4], (50, BudgetState::SoftLimit));
    assert_eq!(states[7], (80, BudgetState::Degraded));
    assert_eq!(states[9], (100, BudgetState::Exhausted));
    let st = agg.budget_status(&key(), &b, &verdict(), &window(), now());
    assert_eq!(st.limit.as_deref(), Some("10 requests/day"));
    assert_eq!(st.degrade_step, Some(0));
    assert!(!sluice_crds::common::conditions::is_true(
        &st.conditions,
        "Ready"
    ));
}

#[test]
fn per_tenant_budgets_track_each_tenant_against_the_limit() {
    let b = budget("  window: day\n  tenantHeader: x-sluice-tenant\n  limits: {costUSD: \"1\"}\n");
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&b, window()))].into();
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    agg.ingest(
        report(
            "a",
            "a-1",
            1,
            vec![
                delta(1, "0.90", Some("acme")),
                delta(2, "0.10", Some("globex")),
            ],
        ),
        None,
        &budgets,
        0,
    );
    let st = agg.budget_status(&key(), &b, &verdict(), &window(), now());
    assert_eq!(st.percent_used, 90, "acme decides");
    assert_eq!(st.top_tenants[0].name, "acme");
    let pod = PodInfo {
        namespace: "shop".into(),
        name: "a".into(),
        ..PodInfo::default()
    };
    let (_, allowance) = agg.for_pod(&b, &window(), &pod);
    assert!(
        allowance.total.cost_usd.is_none(),
        "no cluster-wide cap on a per-tenant budget"
    );
    let acme = allowance.tenants["acme"].cost_usd.expect("limited");
    assert!(
        acme <= "0.10".parse().expect("money"),
        "acme has 0.10 left: {acme}"
    );
    assert!(allowance.new_tenant.and_then(|a| a.cost_usd).is_some());
}

#[test]
fn allowances_across_sidecars_never_exceed_what_remains() {
    let b = budget("  window: day\n  limits: {costUSD: \"10\", requests: 100}\n");
    let budgets: BTreeMap<String, (&Budget, WindowBounds)> =
        [("team".to_string(), (&b, window()))].into();
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    agg.ingest(
        report("a", "a-1", 1, vec![delta(1, "4.00", None)]),
        None,
        &budgets,
        0,
    );
    let mut total_cost = Money::ZERO;
    let mut total_requests = 0;
    for pod in ["a", "b", "c"] {
        let p = PodInfo {
            namespace: "shop".into(),
            name: pod.into(),
            ..PodInfo::default()
        };
        let (spent, a) = agg.for_pod(&b, &window(), &p);
        assert_eq!(spent.cost_usd.to_string(), "4.00");
        total_cost = total_cost + a.total.cost_usd.expect("limited");
        total_requests += a.total.requests.expect("limited");
    }
    assert!(total_cost <= "6".parse().expect("money"), "{total_cost}");
    assert!(total_requests <= 99);
}

use sluice_crds::Money;

fn target(
    route: &str,
    provider: &str,
    model: &str,
    requests: u64,
    errors: u64,
    breaker: BreakerState,
) -> TargetHealth {
    TargetHealth {
        route: route.into(),
        provider: provider.into(),
        model: model.into(),
        requests,
        errors: if errors > 0 {
            [(FailureClass::ServerError, errors)].into()
        } else {
            BTreeMap::new()
        },
        latency_p50_ms: Some(100),
        latency_p95_ms: Some(requests * 10),
        ttft_p95_ms: Some(50),
        breaker,
        opened: 0,
    }
}

/// The verdict on a valid Provider whose credentials resolved.
fn usable_provider() -> ProviderVerdict {
    ProviderVerdict {
        generation: Some(1),
        credentials_resolved: Cond {
            ok: true,
            reason: "Resolved".into(),
            message: String::new(),
        },
        accepted: Cond {
            ok: true,
            reason: "Accepted".into(),
            message: String::new(),
        },
        usable: true,
    }
}

#[test]
fn provider_status_counts_breakers_across_sidecars() {
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    let none = BTreeMap::new();
    let mut r = report("a", "a-1", 1, vec![]);
    r.targets = vec![target(
        "chat",
        "openai",
        "gpt-4o",
        100,
        10,
        BreakerState::Open,
    )];
    agg.ingest(r, None, &none, 0);
    // b's breaker opened and closed again in the interval; two routes
    // use the endpoint: one breaker, counted once.
    let flapped = |route: &str| TargetHealth {
        opened: 1,
        ..target(route, "openai", "gpt-4o", 25, 0, BreakerState::Closed)
    };
    let mut r = report("b", "b-1", 1, vec![]);
    r.targets = vec![
        flapped("chat"),
        flapped("chat-2"),
        target("chat", "backup", "m", 5, 0, BreakerState::Closed),
    ];
    agg.ingest(r, None, &none, 0);
    let v = usable_provider();
    let st = agg.provider_status(
        &("shop".into(), "openai".into()),
        &v,
        &BTreeMap::new(),
        None,
        now(),
        1,
    );
    assert_eq!(st.models[0].breakers_opened, 1);
    assert_eq!(st.sidecars, 2);
    assert_eq!(st.state, Some(ProviderState::Degraded));
    assert_eq!(st.breakers_open.as_deref(), Some("1/2"));
    assert_eq!(st.error_percent.as_deref(), Some("6.6"));
    assert_eq!(st.latency_p95.as_deref(), Some("1000ms"));
    assert_eq!(st.models[0].requests_per_minute, 4500);
    assert_eq!(
        st.models[0].breakers,
        BreakerCounts {
            closed: 1,
            open: 1,
            half_open: 0
        }
    );
    // Reports older than the staleness bound no longer count.
    let later = agg.provider_status(
        &("shop".into(), "openai".into()),
        &v,
        &BTreeMap::new(),
        Some(&st),
        now(),
        20_000,
    );
    assert_eq!(later.state, Some(ProviderState::Unknown));
}

/// A valid route at generation 3 selecting `pods`.
fn route_verdict(pods: &[Key], target_count: u32) -> RouteVerdict {
    RouteVerdict {
        generation: Some(3),
        accepted: Cond {
            ok: true,
            reason: "Accepted".into(),
            message: "ok".into(),
        },
        resolved_refs: Cond {
            ok: true,
            reason: "ResolvedRefs".into(),
            message: "ok".into(),
        },
        usable: true,
        selected_pods: pods.to_vec(),
        target_count,
        version: "3f2a9c0d1e5b7a64".into(),
        warnings: vec![],
    }
}

/// A snapshot of `routes` at `version` (nothing else in it).
fn snapshot(version: &str, routes: Vec<sluice_crds::snapshot::RouteEntry>) -> Snapshot {
    Snapshot {
        version: version.into(),
        pod: Default::default(),
        report_interval: sluice_crds::Duration::from_secs(2),
        routes,
        providers: vec![],
        budgets: vec![],
        held_routes: vec![],
    }
}

#[test]
fn sidecars_that_carry_a_provider_without_traffic_count_as_closed_breakers() {
    // Two sidecars report; only `a` used openai. `b`'s snapshot routes to
    // openai/gpt-4o too, but it had no requests: it still carries the
    // provider, breaker closed (idle closed targets are not reported).
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    let none = BTreeMap::new();
    let mut r = report("a", "a-1", 1, vec![]);
    r.targets = vec![target(
        "chat",
        "openai",
        "gpt-4o",
        6,
        0,
        BreakerState::Closed,
    )];
    agg.ingest(r, None, &none, 0);
    agg.ingest(report("b", "b-1", 1, vec![]), None, &none, 0);
    let route: sluice_crds::LLMRoute = serde_yaml::from_str(
        "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: chat}\n\
         spec: {model: chat, targets: [{providerRef: {name: openai}, model: gpt-4o}]}",
    )
    .expect("route");
    let snapshot = snapshot(
        "v",
        vec![sluice_crds::snapshot::RouteEntry {
            name: "chat".into(),
            namespace: "shop".into(),
            generation: 1,
            spec: route.spec,
        }],
    );
    let snapshots: BTreeMap<Key, Snapshot> = [
        (("shop".into(), "a".into()), snapshot.clone()),
        (("shop".into(), "b".into()), snapshot),
    ]
    .into();
    let v = usable_provider();
    let openai: Key = ("shop".into(), "openai".into());
    let st = agg.provider_status(&openai, &v, &snapshots, None, now(), 1);
    assert_eq!(st.sidecars, 2);
    assert_eq!(st.state, Some(ProviderState::Healthy));
    assert_eq!(st.breakers_open.as_deref(), Some("0/2"));
    assert_eq!(
        st.models[0].breakers,
        BreakerCounts {
            closed: 2,
            open: 0,
            half_open: 0
        }
    );

    // Nobody sent anything for a while: both still carry it, Healthy with
    // no traffic, rather than Unknown.
    let (ra, rb) = (report("a", "a-1", 2, vec![]), report("b", "b-1", 2, vec![]));
    agg.ingest(ra, None, &none, 5_000);
    agg.ingest(rb, None, &none, 5_000);
    let idle = agg.provider_status(&openai, &v, &snapshots, Some(&st), now(), 5_000);
    assert_eq!(idle.sidecars, 2);
    assert_eq!(idle.state, Some(ProviderState::Healthy));
    assert_eq!(idle.models[0].requests_per_minute, 0);
    let healthy = idle
        .conditions
        .iter()
        .find(|c| c.type_ == "Healthy")
        .expect("Healthy condition");
    assert_eq!(healthy.status, "True");
    assert!(
        healthy.message.contains("no requests recently"),
        "{}",
        healthy.message
    );

    // The route lists its target for both sidecars, healthy, though
    // neither had traffic on it.
    let pods: Vec<Key> = vec![("shop".into(), "a".into()), ("shop".into(), "b".into())];
    let chat: Key = ("shop".into(), "chat".into());
    let route = agg.route_status(
        &chat,
        &route_verdict(&pods, 1),
        &snapshots,
        None,
        now(),
        5_000,
    );
    assert_eq!(route.targets.len(), 1);
    assert!(route.targets[0].healthy);
    assert_eq!(route.targets[0].share_percent, 0);
    assert_eq!(route.healthy.as_deref(), Some("1/1"));

    // A provider no snapshot uses and nobody reports stays Unknown.
    let other: Key = ("shop".into(), "backup".into());
    let unused = agg.provider_status(&other, &v, &snapshots, None, now(), 5_000);
    assert_eq!(unused.state, Some(ProviderState::Unknown));
}

#[test]
fn a_route_is_programmed_when_every_selected_sidecar_runs_its_version() {
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    let none = BTreeMap::new();
    let pods: Vec<Key> = ["a", "b"]
        .iter()
        .map(|p| ("shop".to_string(), p.to_string()))
        .collect();
    let snapshots: BTreeMap<Key, Snapshot> = [
        (pods[0].clone(), snapshot("v-a", vec![])),
        (pods[1].clone(), snapshot("v-b", vec![])),
    ]
    .into();
    let verdict = route_verdict(&pods, 2);
    let mut r = report("a", "a-1", 1, vec![]);
    r.config.applied = Some("v-a".into());
    r.targets = vec![
        target("chat", "openai", "gpt-4o", 30, 0, BreakerState::Closed),
        target("chat", "backup", "m", 10, 0, BreakerState::Open),
    ];
    agg.ingest(r, None, &none, 0);
    let key: Key = ("shop".into(), "chat".into());
    let st = agg.route_status(&key, &verdict, &snapshots, None, now(), 1);
    assert_eq!(st.synced.as_deref(), Some("1/2"));
    assert_eq!(st.config_version.as_deref(), Some("3f2a9c0d1e5b7a64"));
    assert!(!conditions::is_true(&st.conditions, "Programmed"));
    assert_eq!(st.healthy.as_deref(), Some("1/2"));
    assert_eq!(
        st.targets
            .iter()
            .find(|t| t.provider == "openai")
            .map(|t| t.share_percent),
        Some(75)
    );

    let mut r = report("b", "b-1", 1, vec![]);
    r.config.rejected = Some(Rejection {
        version: "v-b".into(),
        reason: "provider x: bad endpoint".into(),
    });
    agg.ingest(r, None, &none, 2);
    let st = agg.route_status(&key, &verdict, &snapshots, Some(&st), now(), 3);
    let programmed = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Programmed")
        .expect("condition");
    assert_eq!(programmed.reason, "Rejected");
    assert!(programmed.message.contains("bad endpoint"));

    let mut r = report("b", "b-1", 2, vec![]);
    r.config.applied = Some("v-b".into());
    agg.ingest(r, None, &none, 4);
    let st = agg.route_status(&key, &verdict, &snapshots, Some(&st), now(), 5);
    assert_eq!(st.synced.as_deref(), Some("2/2"));
    assert!(conditions::is_true(&st.conditions, "Programmed"));
    assert_eq!(st.observed_generation, Some(3));
}

#[test]
fn an_open_breaker_reported_without_traffic_stays_open_until_reported_closed() {
    // Sidecars keep an open breaker in their reports although no call
    // reaches it; the operator's events follow: one BreakerOpened, nothing
    // while it stays open, one BreakersClosed when a probe closed it.
    let mut agg = Aggregator::new(Policy::default(), INTERVAL_MS);
    let none = BTreeMap::new();
    let v = usable_provider();
    let key: Key = ("shop".into(), "openai".into());
    let status = |agg: &mut Aggregator, seq: u64, t: TargetHealth| {
        let mut r = report("a", "a-1", seq, vec![]);
        r.targets = vec![t];
        agg.ingest(r, None, &none, seq);
        agg.provider_status(&key, &v, &BTreeMap::new(), None, now(), seq)
    };
    let opened = status(
        &mut agg,
        1,
        target("chat", "openai", "gpt-4o", 10, 10, BreakerState::Open),
    );
    let idle = TargetHealth {
        latency_p50_ms: None,
        latency_p95_ms: None,
        ttft_p95_ms: None,
        ..target("chat", "openai", "gpt-4o", 0, 0, BreakerState::Open)
    };
    let still_open = status(&mut agg, 2, idle);
    let closed = status(
        &mut agg,
        3,
        target("chat", "openai", "gpt-4o", 3, 0, BreakerState::Closed),
    );
    let reasons = |old: Option<&ProviderStatus>, new: &ProviderStatus| {
        crate::events::provider(old, new)
            .into_iter()
            .map(|n| n.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(None, &opened), vec!["BreakerOpened"]);
    assert_eq!(still_open.breakers_open.as_deref(), Some("1/1"));
    assert_eq!(still_open.state, Some(ProviderState::Down));
    assert_eq!(still_open.error_percent.as_deref(), Some("0.0"));
    assert!(reasons(Some(&opened), &still_open).is_empty());
    assert_eq!(reasons(Some(&still_open), &closed), vec!["BreakersClosed"]);
}
