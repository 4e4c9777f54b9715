use std::collections::BTreeMap;
use std::str::FromStr;

use sluice_crds::budget::{BudgetLimits, DegradeStep, OnExceeded, Window};
use sluice_crds::common::ProviderRef;

use super::*;

fn money(s: &str) -> Money {
    Money::from_str(s).expect("money")
}

fn spec(limits: BudgetLimits) -> BudgetSpec {
    serde_json::from_value::<BudgetSpec>(serde_json::json!({"window": "day"}))
        .map(|mut s| {
            s.limits = Some(limits);
            s
        })
        .expect("spec")
}

fn cost_limit(usd: &str) -> BudgetSpec {
    spec(BudgetLimits {
        cost_usd: Some(money(usd)),
        ..BudgetLimits::default()
    })
}

fn target(model: &str) -> ModelRef {
    ModelRef {
        provider_ref: ProviderRef { name: "p".into() },
        model: model.into(),
    }
}

fn at(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn cost(usd: &str) -> Spend {
    Spend {
        cost_usd: money(usd),
        tokens: 10,
        requests: 1,
    }
}

fn admitted(a: Admission) -> (Reservation, Option<String>, Option<ModelRef>) {
    match a {
        Admission::Admit {
            reservation,
            warning,
            degrade_to,
        } => (reservation, warning, degrade_to),
        other => panic!("expected admit, got {other:?}"),
    }
}

const NOW: &str = "2026-11-21T10:00:00Z";

#[test]
fn reserve_settle_and_reject_with_retry_after() {
    let b = Budget::standalone(
        "team",
        cost_limit("1.00"),
        vec!["chat".into()],
        true,
        at(NOW),
    );
    let (r, _, _) = admitted(b.admit(None, &cost("0.60"), at(NOW)));
    // 0.60 reserved: a second 0.60 does not fit.
    match b.admit(None, &cost("0.60"), at(NOW)) {
        Admission::Reject { retry_after_secs } => assert_eq!(retry_after_secs, 14 * 3600),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (r.budget(), r.tenant(), r.window_start().as_str()),
        ("team", None, "2026-11-21T00:00:00Z")
    );
    r.settle(&cost("0.10"), 0);
    let u = b.usage(None, at(NOW));
    assert_eq!(u.spent.cost_usd, money("0.10"));
    assert_eq!(u.reserved, Spend::default());
    let (_r, _, _) = admitted(b.admit(None, &cost("0.60"), at(NOW)));
}

#[test]
fn dropping_a_reservation_releases_it() {
    let b = Budget::standalone("team", cost_limit("1.00"), vec![], true, at(NOW));
    let (r, _, _) = admitted(b.admit(None, &cost("1.00"), at(NOW)));
    assert!(matches!(
        b.admit(None, &cost("0.01"), at(NOW)),
        Admission::Reject { .. }
    ));
    drop(r);
    assert_eq!(b.usage(None, at(NOW)).reserved, Spend::default());
    // Released on panic too.
    let b2 = b.clone();
    let res = std::panic::catch_unwind(move || {
        let _held = b2.admit(None, &cost("1.00"), at(NOW));
        panic!("handler panicked");
    });
    assert!(res.is_err());
    assert_eq!(b.usage(None, at(NOW)).reserved, Spend::default());
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_releases_the_reservation() {
    let b = Budget::standalone("team", cost_limit("1.00"), vec![], true, at(NOW));
    let b2 = b.clone();
    let call = tokio::spawn(async move {
        let _held = b2.admit(None, &cost("1.00"), at(NOW));
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    });
    tokio::task::yield_now().await;
    assert_eq!(b.usage(None, at(NOW)).reserved.cost_usd, money("1.00"));
    call.abort();
    let _ = call.await;
    assert_eq!(b.usage(None, at(NOW)).reserved, Spend::default());
}

#[test]
fn window_rollover_resets_spend() {
    let b = Budget::standalone("team", cost_limit("1.00"), vec![], true, at(NOW));
    let (r, _, _) = admitted(b.admit(None, &cost("1.00"), at(NOW)));
    // The reservation taken in the old window is forgotten at rollover.
    let window = {
        let next = at("2026-11-22T00:00:01Z");
        let (r2, _, _) = admitted(b.admit(None, &cost("1.00"), next));
        assert_eq!(b.usage(None, next).window_start, at("2026-11-22T00:00:00Z"));
        drop(r2);
        let window = r.window_start();
        r.settle(&cost("1.00"), 0);
        window
    };
    assert_eq!(window, "2026-11-21T00:00:00Z");
    assert_eq!(
        b.usage(None, at("2026-11-22T00:00:02Z")).spent,
        Spend::default()
    );
}

fn tenant_spec() -> BudgetSpec {
    let mut s = cost_limit("1.00");
    s.tenant_header = Some("x-team".into());
    s
}

#[test]
fn tenants_are_isolated() {
    let b = Budget::standalone("team", tenant_spec(), vec!["chat".into()], true, at(NOW));
    let (_a, _, _) = admitted(b.admit(Some("a"), &cost("1.00"), at(NOW)));
    assert!(matches!(
        b.admit(Some("a"), &cost("0.01"), at(NOW)),
        Admission::Reject { .. }
    ));
    let (_b, _, _) = admitted(b.admit(Some("b"), &cost("1.00"), at(NOW)));
}

#[test]
fn soft_limit_warns_and_degrade_ladder_applies() {
    let mut s = cost_limit("1.00");
    s.soft_limit_percent = 50;
    s.degrade = vec![
        DegradeStep {
            at_percent: 60,
            to: target("mid"),
        },
        DegradeStep {
            at_percent: 90,
            to: target("cheap"),
        },
    ];
    let b = Budget::standalone("team", s, vec![], true, at(NOW));
    let step = |spent: &str| {
        let (r, _, _) = admitted(b.admit(None, &cost(spent), at(NOW)));
        r.settle(&cost(spent), 0);
        let (r, warning, to) = admitted(b.admit(None, &cost("0"), at(NOW)));
        drop(r);
        (warning, to.map(|t| t.model))
    };
    assert_eq!(step("0.40"), (None, None));
    let (w, to) = step("0.15");
    assert_eq!(w.as_deref(), Some("budget team at 55% of its day limit"));
    assert_eq!(to, None);
    assert_eq!(step("0.10").1.as_deref(), Some("mid"));
    assert_eq!(step("0.30").1.as_deref(), Some("cheap"));
}

#[test]
fn exhausted_budget_downgrades() {
    let mut s = cost_limit("0.10");
    s.on_exceeded = OnExceeded {
        action: ExceededAction::Downgrade,
        to: Some(target("cheap")),
    };
    let b = Budget::standalone("team", s, vec![], true, at(NOW));
    match b.admit(None, &cost("0.20"), at(NOW)) {
        Admission::Downgrade {
            reservation, to, ..
        } => {
            assert_eq!(to.model, "cheap");
            assert_eq!(reservation.amount(), &Spend::default());
            reservation.settle(&cost("0.01"), 0);
        }
        other => panic!("{other:?}"),
    }
    // Downgraded spend is still counted.
    assert_eq!(b.usage(None, at(NOW)).spent.cost_usd, money("0.01"));
}

#[test]
fn scoping_by_route_pod_and_tenant() {
    let mut s = tenant_spec();
    s.pod_selector = Some(
        serde_json::from_value(serde_json::json!({"matchLabels": {"app": "web"}}))
            .expect("selector"),
    );
    let web: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
    let api: BTreeMap<String, String> = [("app".to_owned(), "api".to_owned())].into();
    assert!(applies_to_pod(&s, Some(&web)));
    assert!(!applies_to_pod(&s, Some(&api)));
    assert!(applies_to_pod(&cost_limit("1"), None));

    let budgets = Budgets::new(vec![
        Budget::standalone("chat-only", s.clone(), vec!["chat".into()], true, at(NOW)),
        Budget::standalone("other-pod", s.clone(), vec!["chat".into()], false, at(NOW)),
        Budget::standalone("embed", s, vec!["embed".into()], true, at(NOW)),
    ]);
    let names: Vec<_> = budgets
        .applicable("chat")
        .map(|b| b.name().to_owned())
        .collect();
    assert_eq!(names, ["chat-only"]);

    let headers = |h: &str| (h == "x-team").then_some("blue");
    let a = budgets
        .admit("chat", headers, &cost("0.5"), at(NOW))
        .expect("admit");
    assert_eq!(a.reservations.len(), 1);
    assert_eq!(a.reservations[0].tenant(), Some("blue"));
    let a2 = budgets
        .admit("chat", |_| None, &cost("0.5"), at(NOW))
        .expect("admit");
    assert_eq!(a2.reservations[0].tenant(), Some(ANONYMOUS_TENANT));
}

#[test]
fn cluster_allowance_caps_and_is_replaced() {
    let entry = |allowance: &str, spent: &str| BudgetEntry {
        name: "team".into(),
        namespace: "shop".into(),
        spec: cost_limit("10"),
        routes: vec!["chat".into()],
        applies_to_pod: true,
        window: Window::Day.bounds_rfc3339(at(NOW)),
        spent: cost(spent),
        allowance: Allowance {
            total: Amounts {
                cost_usd: Some(money(allowance)),
                ..Amounts::default()
            },
            ..Allowance::default()
        },
    };
    let b = Budget::from_entry(&entry("1", "5"), at(NOW));
    assert_eq!(b.usage(None, at(NOW)).percent_used, 50);
    let (r, _, _) = admitted(b.admit(None, &cost("1"), at(NOW)));
    r.settle(&cost("1"), 0);
    assert!(matches!(
        b.admit(None, &cost("0.01"), at(NOW)),
        Admission::Reject { .. }
    ));
    b.update_allowance(&entry("2", "6"), at(NOW));
    let (_r, _, _) = admitted(b.admit(None, &cost("2"), at(NOW)));
}

/// Thousands of concurrent reservations on a multi-threaded runtime never
/// overshoot the allowance: exactly `limit / cost` are admitted while
/// every one is held.
#[test]
fn concurrent_reservations_never_overshoot() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .expect("runtime");
    let b = Budget::standalone("team", cost_limit("10.00"), vec![], true, at(NOW));
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    rt.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(4_000));
        let mut tasks = Vec::new();
        for _ in 0..4_000 {
            let (b, admitted, barrier) = (b.clone(), admitted.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let r = match b.admit(None, &cost("0.01"), at(NOW)) {
                    Admission::Admit { reservation, .. } => Some(reservation),
                    _ => None,
                };
                if r.is_some() {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Hold every reservation until all tasks have tried.
                barrier.wait().await;
                if let Some(r) = r {
                    r.settle(&cost("0.01"), 0);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 1_000);
    let u = b.usage(None, at(NOW));
    assert_eq!(u.spent.cost_usd, money("10.00"));
    assert_eq!(u.reserved, Spend::default());
}

#[test]
fn state_follows_the_percentage() {
    let mut s = cost_limit("1.00");
    s.degrade = vec![DegradeStep {
        at_percent: 90,
        to: target("cheap"),
    }];
    let b = Budget::standalone("team", s, vec![], true, at(NOW));
    let spend = |usd: &str| {
        let (r, _, _) = admitted(b.admit(None, &cost(usd), at(NOW)));
        r.settle(&cost(usd), 0);
    };
    assert_eq!(b.state(None, at(NOW)), BudgetState::Ok);
    spend("0.85");
    assert_eq!(b.state(None, at(NOW)), BudgetState::SoftLimit);
    spend("0.05");
    assert_eq!(b.state(None, at(NOW)), BudgetState::Degraded);
    spend("0.10");
    assert_eq!(b.state(None, at(NOW)), BudgetState::Exhausted);
}

proptest::proptest! {
    /// Any interleaving of reserve / settle / drop: reservations never go
    /// negative or leak, and settled spend stays within the allowance
    /// whenever actual ≤ reserved.
    #[test]
    fn ledger_invariants(ops in proptest::collection::vec((0u8..3, 0u64..400, 0u64..=100), 1..60)) {
        let b = Budget::standalone("team", cost_limit("10.00"), vec![], true, at(NOW));
        let mut held: Vec<Reservation> = Vec::new();
        for (op, cents, actual_pct) in ops {
            match op {
                0 => {
                    let worst = Spend {
                        cost_usd: Money::new(Decimal::new(cents as i64, 2)).expect("money"),
                        tokens: 0,
                        requests: 1,
                    };
                    if let Admission::Admit { reservation, .. } = b.admit(None, &worst, at(NOW)) {
                        held.push(reservation);
                    }
                }
                1 => {
                    if let Some(r) = held.pop() {
                        let amount = r.amount().cost_usd.get() * Decimal::from(actual_pct) / Decimal::from(100u32);
                        let actual = Spend {
                            cost_usd: Money::new(amount).expect("money"),
                            tokens: 0,
                            requests: 1,
                        };
                        r.settle(&actual, 0);
                    }
                }
                _ => {
                    if !held.is_empty() {
                        held.remove(0);
                    }
                }
            }
            let u = b.usage(None, at(NOW));
            let expected: Money = held.iter().map(|r| r.amount().cost_usd).sum();
            proptest::prop_assert_eq!(u.reserved.cost_usd, expected);
            proptest::prop_assert!(u.spent.cost_usd + u.reserved.cost_usd <= money("10.00"));
        }
        drop(held);
        proptest::prop_assert_eq!(b.usage(None, at(NOW)).reserved, Spend::default());
    }
}

/// When the input estimate is low the overshoot is bounded by the
/// estimation error of the requests in flight: 1,000 concurrent requests
/// reserved at $0.01 that actually cost $0.012 overshoot a $10 budget by
/// exactly $2 (1,000 × $0.002), and nothing is admitted afterwards.
#[test]
fn overshoot_is_bounded_by_the_estimation_error_in_flight() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .expect("runtime");
    let b = Budget::standalone("team", cost_limit("10.00"), vec![], true, at(NOW));
    rt.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2_000));
        let mut tasks = Vec::new();
        for _ in 0..2_000 {
            let (b, barrier) = (b.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let r = match b.admit(None, &cost("0.01"), at(NOW)) {
                    Admission::Admit { reservation, .. } => Some(reservation),
                    _ => None,
                };
                barrier.wait().await;
                if let Some(r) = r {
                    r.settle(&cost("0.012"), 0);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    let u = b.usage(None, at(NOW));
    assert_eq!(u.spent.cost_usd, money("12.00"));
    assert_eq!(u.spent.requests, 1_000);
    assert!(matches!(
        b.admit(None, &cost("0.01"), at(NOW)),
        Admission::Reject { .. }
    ));
}

#[test]
fn tenant_percentage_survives_a_new_allowance() {
    let mut s = cost_limit("10");
    s.tenant_header = Some("x-team".into());
    let entry = BudgetEntry {
        name: "team".into(),
        namespace: "shop".into(),
        spec: s,
        routes: vec![],
        applies_to_pod: true,
        window: Window::Day.bounds_rfc3339(at(NOW)),
        spent: Spend::default(),
        allowance: Allowance {
            new_tenant: Some(Amounts {
                cost_usd: Some(money("6")),
                ..Amounts::default()
            }),
            ..Allowance::default()
        },
    };
    let b = Budget::from_entry(&entry, at(NOW));
    let (r, _, _) = admitted(b.admit(Some("a"), &cost("5"), at(NOW)));
    r.settle(&cost("5"), 0);
    assert_eq!(b.usage(Some("a"), at(NOW)).percent_used, 50);
    b.update_allowance(&entry, at(NOW));
    assert_eq!(b.usage(Some("a"), at(NOW)).percent_used, 50);
    // The new allowance of 6 counts from the snapshot on.
    let (_r, _, _) = admitted(b.admit(Some("a"), &cost("6"), at(NOW)));
}

#[tokio::test(start_paused = true)]
async fn rate_limits_of_all_budgets_are_all_or_nothing() {
    let with_rpm = |rpm: u32| {
        let mut s = cost_limit("100");
        s.rate_limits = Some(sluice_crds::budget::RateLimits {
            requests_per_minute: Some(rpm),
            tokens_per_minute: None,
        });
        s
    };
    let budgets = Budgets::new(vec![
        Budget::standalone("wide", with_rpm(10), vec!["chat".into()], true, at(NOW)),
        Budget::standalone("narrow", with_rpm(1), vec!["chat".into()], true, at(NOW)),
    ]);
    let now = tokio::time::Instant::now();
    let h = budgets
        .rate_limit("chat", |_| None, 10, now)
        .expect("first");
    assert_eq!(h.headers.and_then(|h| h.remaining_requests), Some(0));
    let err = budgets
        .rate_limit("chat", |_| None, 10, now)
        .expect_err("narrow limits");
    assert_eq!(err.retry_after_secs, 60);
    // The wide budget was given its charge back: 9 left, not 8.
    let wide = budgets
        .get("wide")
        .and_then(|b| b.rate_limiter())
        .expect("limiter");
    assert_eq!(
        wide.check(None, 0, now).map(|h| h.remaining_requests),
        Ok(Some(8))
    );
}

#[test]
fn a_new_snapshot_keeps_ledgers_of_unchanged_budgets() {
    let entry = |name: &str, limit: &str, allowance: &str| BudgetEntry {
        name: name.into(),
        namespace: "shop".into(),
        spec: cost_limit(limit),
        routes: vec!["chat".into()],
        applies_to_pod: true,
        window: Window::Day.bounds_rfc3339(at(NOW)),
        spent: Spend::default(),
        allowance: Allowance {
            total: Amounts {
                cost_usd: Some(money(allowance)),
                ..Amounts::default()
            },
            ..Allowance::default()
        },
    };
    let fresh = |entries: &[BudgetEntry]| {
        Budgets::new(
            entries
                .iter()
                .map(|e| Budget::from_entry(e, at(NOW)))
                .collect(),
        )
    };
    let v1 = fresh(&[entry("a", "10", "1"), entry("b", "10", "1")]);
    let held = v1
        .admit("chat", |_| None, &cost("0.5"), at(NOW))
        .expect("admit");
    let v2 = v1.carry_into(
        fresh(&[entry("a", "10", "2"), entry("b", "20", "1")]),
        at(NOW),
    );
    // "a" kept its reservation of 0.5 and took the new allowance of 2.
    let a = v2.get("a").expect("a");
    assert!(Arc::ptr_eq(a, v1.get("a").expect("a")));
    assert_eq!(a.usage(None, at(NOW)).reserved.cost_usd, money("0.5"));
    assert!(matches!(
        a.admit(None, &cost("1.5"), at(NOW)),
        Admission::Admit { .. }
    ));
    // "b" changed its spec: a fresh ledger.
    assert_eq!(
        v2.get("b").expect("b").usage(None, at(NOW)).reserved,
        Spend::default()
    );
    drop(held);
    assert_eq!(a.usage(None, at(NOW)).reserved, Spend::default());
}

/// A cluster budget of `limit` dollars a day with an allowance of `usd`
/// net of the reports through `as_of`, asked to keep `keep`.
fn cluster_entry(limit: &str, usd: &str, as_of: u64, keep: Option<&str>) -> BudgetEntry {
    let dollars = |usd: &str| Amounts {
        cost_usd: Some(money(usd)),
        ..Amounts::default()
    };
    BudgetEntry {
        name: "team".into(),
        namespace: "shop".into(),
        spec: cost_limit(limit),
        routes: vec![],
        applies_to_pod: true,
        window: Window::Day.bounds_rfc3339(at(NOW)),
        spent: Spend::default(),
        allowance: Allowance {
            as_of_sequence: as_of,
            total: dollars(usd),
            keep: keep.map(dollars),
            ..Allowance::default()
        },
    }
}

/// An allowance is net of the usage reported up to `asOfSequence`: spend
/// settled into later reports still counts against it, so nothing settled
/// between a report and the next snapshot is granted twice.
#[test]
fn a_new_allowance_keeps_counting_spend_it_has_not_deducted() {
    let grant = |usd: &str, as_of: u64| cluster_entry("10", usd, as_of, None);
    let b = Budget::from_entry(&grant("10", 0), at(NOW));
    let (r, _, _) = admitted(b.admit(None, &cost("4"), at(NOW)));
    r.settle(&cost("4"), 1);
    let (r, _, _) = admitted(b.admit(None, &cost("3"), at(NOW)));
    r.settle(&cost("3"), 2);
    // The operator folded report 1 ($4): $6 left, of which $3 is already
    // spent in report 2.
    b.update_allowance(&grant("6", 1), at(NOW));
    assert!(matches!(
        b.admit(None, &cost("3.01"), at(NOW)),
        Admission::Reject { .. }
    ));
    let (r, _, _) = admitted(b.admit(None, &cost("3"), at(NOW)));
    drop(r);
    // Report 2 folded too: the $3 grant is all headroom.
    b.update_allowance(&grant("3", 2), at(NOW));
    let (r, _, _) = admitted(b.admit(None, &cost("3"), at(NOW)));
    drop(r);
    assert!(matches!(
        b.admit(None, &cost("3.01"), at(NOW)),
        Admission::Reject { .. }
    ));
}

/// A spent allowance with room left in the budget is "starved" (worth
/// waiting for a renewal); with nothing left unallocated it is a refusal.
#[test]
fn a_spent_allowance_waits_only_when_the_budget_has_room() {
    let entry = |unallocated: u64| BudgetEntry {
        name: "team".into(),
        namespace: "shop".into(),
        spec: cost_limit("10"),
        routes: vec![],
        applies_to_pod: true,
        window: Window::Day.bounds_rfc3339(at(NOW)),
        spent: Spend::default(),
        allowance: Allowance {
            total: Amounts {
                cost_usd: Some(money("1")),
                ..Amounts::default()
            },
            unallocated: Some(Amounts {
                cost_usd: Some(money(&unallocated.to_string())),
                ..Amounts::default()
            }),
            ..Allowance::default()
        },
    };
    let room = Budget::from_entry(&entry(5), at(NOW));
    let (_held, _, _) = admitted(room.admit(None, &cost("1"), at(NOW)));
    assert!(matches!(
        room.admit(None, &cost("1"), at(NOW)),
        Admission::Starved
    ));
    assert!(room.allowance_low(), "the next report asks for more");
    let none = Budget::from_entry(&entry(0), at(NOW));
    let (_held, _, _) = admitted(none.admit(None, &cost("1"), at(NOW)));
    assert!(matches!(
        none.admit(None, &cost("1"), at(NOW)),
        Admission::Reject { .. }
    ));
}

/// Asked to keep only its share, a sidecar hands back what it holds
/// beyond it — never what is spent or reserved — and cannot spend what it
/// handed back, until the operator has folded the hand-back into a new
/// allowance.
#[test]
fn surplus_beyond_the_share_is_handed_back_once_and_no_longer_spendable() {
    let grant = |usd: &str, as_of: u64, keep: Option<&str>| cluster_entry("100", usd, as_of, keep);
    let recorded = std::sync::Mutex::new(Vec::new());
    let record = |budget: &str, window: &str, amount: &Spend| {
        recorded
            .lock()
            .expect("lock")
            .push((budget.to_owned(), window.to_owned(), amount.clone()));
        7
    };
    let b = Budget::from_entry(&grant("10", 0, None), at(NOW));
    assert_eq!(b.release_surplus(&record, at(NOW)), None, "not asked");
    let (r, _, _) = admitted(b.admit(None, &cost("2"), at(NOW)));
    r.settle(&cost("2"), 6);
    let (_in_flight, _, _) = admitted(b.admit(None, &cost("1"), at(NOW)));
    // Asked to keep $3: of $10, $2 is spent and $1 reserved, so $4 goes.
    b.update_allowance(&grant("10", 0, Some("3")), at(NOW));
    let only_cost = Spend {
        cost_usd: money("4"),
        ..Spend::default()
    };
    assert_eq!(b.release_surplus(&record, at(NOW)), Some(only_cost));
    {
        let got = recorded.lock().expect("lock");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "team");
        assert_eq!(got[0].1, Window::Day.bounds(at(NOW)).0.to_string());
    }
    // Asked again (the same snapshot re-sent): nothing more to give.
    assert_eq!(b.release_surplus(&record, at(NOW)), None);
    // $3 is left to spend, not $7.
    assert!(matches!(
        b.admit(None, &cost("3.01"), at(NOW)),
        Admission::Reject { .. }
    ));
    let (r, _, _) = admitted(b.admit(None, &cost("3"), at(NOW)));
    drop(r);
    // The operator folded reports 6 and 7: $10 − $2 spent − $4 handed
    // back = $4 outstanding, of which $1 is still reserved here.
    b.update_allowance(&grant("4", 7, None), at(NOW));
    let (r, _, _) = admitted(b.admit(None, &cost("3"), at(NOW)));
    drop(r);
    assert!(matches!(
        b.admit(None, &cost("3.01"), at(NOW)),
        Admission::Reject { .. }
    ));
}
