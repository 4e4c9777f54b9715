use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;

fn money(s: &str) -> Money {
    Money::from_str(s).expect("money")
}

fn pricing(input: &str, output: &str, cached: Option<&str>) -> Pricing {
    Pricing {
        input_per_million: money(input),
        output_per_million: money(output),
        cached_input_per_million: cached.map(money),
    }
}

/// A standalone budget `team` with `limits`, and a reservation admitted
/// on it for the worst case of a million tokens in and out at $1/$2.
fn admitted_team(
    limits: serde_json::Value,
) -> (
    Arc<crate::budget::Budget>,
    crate::budget::Reservation,
    Pricing,
    jiff::Timestamp,
) {
    use crate::budget::{Admission, Budget};
    let now: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().expect("ts");
    let spec: sluice_crds::budget::BudgetSpec =
        serde_json::from_value(serde_json::json!({"window": "month", "limits": limits}))
            .expect("spec");
    let b = Budget::standalone("team", spec, vec![], true, now);
    let p = pricing("1", "2", None);
    let worst = worst_case(&p, 1_000_000, 1_000_000);
    let Admission::Admit { reservation, .. } = b.admit(None, &worst, now) else {
        panic!("admit");
    };
    (b, reservation, p, now)
}

/// `records` through an accounting task, in order, until it has settled
/// them all; what the sink received.
async fn settle_all(records: Vec<UsageRecord>) -> Arc<Totals> {
    let totals = Arc::new(Totals::default());
    let (acct, task) = Accountant::new(totals.clone(), 16);
    let task = tokio::spawn(task);
    for r in records {
        acct.submit(r);
    }
    drop(acct);
    task.await.expect("task");
    totals
}

#[tokio::test]
async fn a_side_call_counts_its_tokens_and_cost_but_no_request() {
    let (b, reservation, p, now) =
        admitted_team(serde_json::json!({"costUSD": "5", "requests": 10}));
    let totals = settle_all(vec![
        // The embedding of the prompt, charged while the request is in flight.
        UsageRecord {
            metered: Metered::new(&p, Some(Usage::new(2_000_000, 0, 0)), Usage::default()),
            reservations: vec![reservation.companion()],
            side_call: true,
        },
        UsageRecord {
            metered: Metered::new(&p, Some(Usage::new(500_000, 250_000, 0)), Usage::default()),
            reservations: vec![reservation],
            side_call: false,
        },
    ])
    .await;
    let u = b.usage(None, now);
    assert_eq!(u.spent.cost_usd, money("3"), "$2 of embedding + $1 of chat");
    assert_eq!(u.spent.tokens, 2_750_000);
    assert_eq!(u.spent.requests, 1, "the embedding is not a request");
    assert_eq!(u.reserved, Spend::default());
    let snap = totals.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!((snap[0].1.tokens, snap[0].1.requests), (2_750_000, 1));
}

#[test]
fn cost_of_a_typical_call_is_exact() {
    // gpt-4o: $2.50 in, $1.25 cached, $10 out.
    let p = pricing("2.50", "10", Some("1.25"));
    let u = Usage::new(1_000, 500, 400);
    // 600 * 2.5e-6 + 400 * 1.25e-6 + 500 * 1e-5 = 0.0015 + 0.0005 + 0.005
    assert_eq!(cost(&p, &u), money("0.007"));
}

#[test]
fn cached_tokens_use_the_input_price_without_a_cached_price() {
    let p = pricing("3", "15", None);
    assert_eq!(cost(&p, &Usage::new(1_000_000, 0, 500_000)), money("3"));
}

#[test]
fn worst_case_is_prompt_plus_max_tokens() {
    let p = pricing("0.15", "0.60", None);
    let w = worst_case(&p, 1_000, 1_000);
    assert_eq!(w.cost_usd, money("0.00075"));
    assert_eq!(w.tokens, 2_000);
    assert_eq!(w.requests, 1);
}

#[test]
fn missing_usage_is_marked_estimated() {
    let p = pricing("1", "1", None);
    let m = Metered::new(&p, None, Usage::new(10, 20, 0));
    assert!(m.estimated);
    assert_eq!(m.spend().tokens, 30);
    let m = Metered::new(&p, Some(Usage::new(11, 21, 0)), Usage::new(10, 20, 0));
    assert!(!m.estimated);
    assert_eq!(m.usage.prompt_tokens, 11);
}

fn price() -> impl Strategy<Value = Money> {
    (0u64..200_000_000_000)
        .prop_map(|n| Money::new(Decimal::new(n as i64, 9)).expect("non-negative"))
}

proptest! {
    #[test]
    fn cost_matches_the_decimal_formula(
        input in price(), output in price(), cached_price in proptest::option::of(price()),
        prompt in 0u64..10_000_000, cached in 0u64..10_000_000, completion in 0u64..10_000_000,
    ) {
        let p = Pricing { input_per_million: input, output_per_million: output, cached_input_per_million: cached_price };
        let u = Usage::new(prompt, completion, cached);
        let c = cost(&p, &u);
        let cached = cached.min(prompt);
        let m = Decimal::from(1_000_000u32);
        let exact = input.get() * Decimal::from(prompt - cached) / m
            + cached_price.unwrap_or(input).get() * Decimal::from(cached) / m
            + output.get() * Decimal::from(completion) / m;
        // Each of the three parts is rounded to the nano-dollar.
        let err = (c.get() - exact).abs();
        prop_assert!(err <= Decimal::new(15, 10), "err {err}");
    }

    #[test]
    fn cost_is_monotone_and_worst_case_bounds_actual(
        input in price(), output in price(),
        prompt in 0u64..1_000_000, completion in 0u64..1_000_000, extra in 0u64..1_000_000, cached in 0u64..1_000_000,
    ) {
        let p = Pricing { input_per_million: input, output_per_million: output, cached_input_per_million: None };
        let small = cost(&p, &Usage::new(prompt, completion, cached));
        let large = cost(&p, &Usage::new(prompt, completion + extra, cached));
        prop_assert!(small <= large);
        // The worst case (no cache, max tokens) is never below the actual.
        let w = worst_case(&p, prompt, completion + extra);
        prop_assert!(small <= w.cost_usd);
    }

    #[test]
    fn cached_price_never_costs_more_when_cheaper(
        input in price(), output in price(), discount in 0u64..=100,
        prompt in 0u64..1_000_000, cached in 0u64..1_000_000, completion in 0u64..1_000_000,
    ) {
        let cheaper = Money::new(input.get() * Decimal::from(discount) / Decimal::from(100u32)).expect("non-negative");
        let with = Pricing { input_per_million: input, output_per_million: output, cached_input_per_million: Some(cheaper) };
        let without = Pricing { cached_input_per_million: None, ..with.clone() };
        let u = Usage::new(prompt, completion, cached);
        prop_assert!(cost(&with, &u) <= cost(&without, &u));
    }
}

#[tokio::test]
async fn accounting_forwards_spend_to_the_sink_and_overflows_inline() {
    let totals = Arc::new(Totals::default());
    let (acct, task) = Accountant::new(totals.clone(), 1);
    let p = pricing("1", "2", None);
    // Not spawned yet: the second record finds the channel full.
    for _ in 0..3 {
        acct.submit(UsageRecord {
            metered: Metered::new(
                &p,
                Some(Usage::new(1_000_000, 1_000_000, 0)),
                Usage::default(),
            ),
            reservations: Vec::new(),
            side_call: false,
        });
    }
    assert_eq!(acct.stats().overflowed.load(Ordering::Relaxed), 2);
    drop(acct);
    task.await;
}

#[tokio::test]
async fn accounting_settles_reservations_and_reports_per_budget() {
    let (b, reservation, p, now) = admitted_team(serde_json::json!({"costUSD": "5"}));
    let totals = settle_all(vec![UsageRecord {
        metered: Metered::new(&p, Some(Usage::new(500_000, 250_000, 0)), Usage::default()),
        reservations: vec![reservation],
        side_call: false,
    }])
    .await;
    let u = b.usage(None, now);
    assert_eq!(u.spent.cost_usd, money("1"));
    assert_eq!(u.reserved, Spend::default());
    let snap = totals.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].0.budget, "team");
    assert_eq!(snap[0].0.window_start, "2026-11-01T00:00:00Z");
    assert_eq!(snap[0].1.tokens, 750_000);
}

#[test]
fn streams_ask_for_the_usage_chunk() {
    let mut req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]
    }))
    .expect("request");
    assert!(!request_stream_usage(&mut req));
    assert_eq!(
        req.stream_options.as_ref().and_then(|o| o.include_usage),
        Some(true)
    );
    assert!(request_stream_usage(&mut req));
    let mut plain: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "chat", "messages": [{"role": "user", "content": "hi"}]
    }))
    .expect("request");
    assert!(!request_stream_usage(&mut plain));
    assert!(plain.stream_options.is_none());
}

#[test]
fn input_estimates_use_the_tokenizer() {
    assert_eq!(estimate_tokens(""), 0);
    assert_eq!(estimate_tokens("hello world"), 2);
    assert_eq!(estimate_tokens_for("hello world", "gpt-4"), 2);
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
            ]}
        ]
    }))
    .expect("request");
    // 3 priming + (3 + 1 role + 4 "You are terse.")
    //   + (3 + 1 role + 6 "What is in this picture?" + 765 image)
    assert_eq!(estimate_input_tokens(&req), 786);
    assert_eq!(estimate_input_tokens_for(&req, "gpt-4o"), 786);
    assert_eq!(
        estimate_input_tokens_for(&req, "claude-3-5-haiku"),
        983,
        "786 × 1.25, rounded up"
    );
}
