use super::*;
use proptest::prelude::*;

fn v(cost_nanos: u64, tokens: u64, requests: u64) -> Vector {
    Vector {
        cost_nanos,
        tokens,
        requests,
    }
}

fn requests(n: u64) -> Vector {
    v(UNLIMITED, UNLIMITED, n)
}

#[test]
fn a_first_sidecar_gets_a_share_and_the_reserve_stays() {
    let p = Policy::default();
    let mut l = Ledger::new(requests(1000), Vector::ZERO);
    let a = l.grant("a", 0, &p);
    // Alone: half the pool by equal split plus half by (equal) use, minus the 10 % reserve.
    assert_eq!(a.requests, 900);
    assert_eq!(a.tokens, UNLIMITED, "unlimited dimensions stay unlimited");
    assert_eq!(l.free().requests, 100);
    // A newcomer may use the reserve; nothing is taken from `a`.
    let b = l.grant("b", 0, &p);
    assert_eq!(b.requests, 100);
    assert_eq!(l.allowance("a").requests, 900);
    assert_eq!(l.free().requests, 0);
}

#[test]
fn expected_sidecars_split_the_first_grants_evenly() {
    let p = Policy::default();
    let mut l = Ledger::new(requests(30), Vector::ZERO);
    let peers = ["a".to_string(), "b".to_string(), "c".to_string()];
    l.expect(&peers, 0);
    let granted: Vec<u64> = peers.iter().map(|s| l.grant(s, 0, &p).requests).collect();
    // 27 distributable over three: 5 by equal split + 5 by (equal) use
    // each, rounded up, and never more than is free beyond the reserve.
    assert_eq!(
        granted,
        [10, 10, 7],
        "the first to ask does not take it all"
    );
    assert_eq!(l.free().requests, 3);
}

#[test]
fn the_last_units_of_a_budget_are_granted() {
    let p = Policy::default();
    let mut l = Ledger::new(requests(30), Vector::ZERO);
    let peers = ["a".to_string(), "b".to_string(), "c".to_string()];
    l.expect(&peers, 0);
    for s in &peers {
        l.grant(s, 0, &p);
    }
    l.fold("a", requests(10), 1, &p);
    l.fold("b", requests(10), 1, &p);
    l.fold("c", requests(9), 1, &p);
    // One request left: someone can still be granted it.
    let got: u64 = peers.iter().map(|s| l.grant(s, 2, &p).requests).sum();
    assert_eq!(got, 1);
    assert_eq!(l.free().requests, 0);
}

#[test]
fn usage_moves_from_allowance_to_spend_and_shares_follow_use() {
    let p = Policy::default();
    let mut l = Ledger::new(requests(1000), Vector::ZERO);
    l.grant("a", 0, &p);
    l.grant("b", 0, &p);
    l.fold("a", requests(600), 1, &p);
    assert_eq!(l.spent().requests, 600);
    assert_eq!(l.allowance("a").requests, 300);
    assert_eq!(l.remaining().requests, 400);
    // 400 remain, 300 + 100 are held: nothing is free, so no top-up yet.
    assert_eq!(l.grant("a", 2, &p).requests, 300);
    l.fold("b", requests(100), 3, &p);
    l.fold("a", requests(250), 3, &p);
    // 50 remain: a holds 50, b holds 0.
    assert_eq!(l.remaining().requests, 50);
    assert!(l.committed().fits_in(l.remaining()));
}

#[test]
fn a_holder_over_its_share_is_asked_to_keep_its_share_and_its_hand_back_is_regranted() {
    let p = Policy::default();
    let mut l = Ledger::new(requests(100), Vector::ZERO);
    l.expect(&["busy".to_string(), "idle".to_string()], 0);
    // 90 distributable (10 in reserve), halves rounded up.
    assert_eq!(l.grant("busy", 0, &p).requests, 46);
    assert_eq!(l.grant("idle", 0, &p).requests, 44);
    assert_eq!(
        l.surplus_above("idle", 0, &p),
        None,
        "an even split is fair"
    );
    l.fold("busy", requests(46), 1, &p);
    // 54 remain, 5 in reserve: busy's share is 13 + 24, idle's 13.
    let keep = l.surplus_above("idle", 1, &p).expect("idle holds too much");
    assert_eq!(keep.requests, 13);
    assert_eq!(l.surplus_above("busy", 1, &p), None);
    // Only what is free beyond the reserve until idle hands back.
    assert_eq!(l.grant("busy", 1, &p).requests, 5);
    l.release("idle", requests(44 - 13), 2);
    assert_eq!(l.allowance("idle").requests, 13);
    assert_eq!(l.spent().requests, 46, "a hand-back is not spend");
    assert_eq!(l.grant("busy", 2, &p).requests, 36);
    assert!(l.committed().fits_in(l.remaining()));
}

#[test]
fn shares_follow_recent_use_as_old_use_decays() {
    let p = Policy {
        share_half_life_ms: 1_000,
        ..Policy::default()
    };
    let mut l = Ledger::new(requests(10_000), Vector::ZERO);
    l.fold("a", requests(800), 0, &p);
    l.fold("b", requests(200), 0, &p);
    let (a, b) = (l.target("a", 0, &p).requests, l.target("b", 0, &p).requests);
    assert!(a > b + b / 2, "a used four times as much: {a} vs {b}");
    // Ten half-lives later a's use has faded; b is the busy one now.
    l.fold("b", requests(200), 10_000, &p);
    let (a, b) = (
        l.target("a", 10_000, &p).requests,
        l.target("b", 10_000, &p).requests,
    );
    assert!(
        b > a + a / 2,
        "b's recent use counts, a's old use hardly: {a} vs {b}"
    );
}

#[test]
fn silent_sidecars_are_reclaimed() {
    let p = Policy {
        reclaim_after_ms: 10,
        ..Policy::default()
    };
    let mut l = Ledger::new(requests(100), Vector::ZERO);
    l.grant("gone", 0, &p);
    l.grant("here", 15, &p);
    assert_eq!(l.reclaim(15, &p), vec!["gone".to_string()]);
    assert_eq!(l.allowance("gone"), Vector::ZERO);
    let here = l.grant("here", 16, &p);
    assert_eq!(here.requests, 90, "the reclaimed share is available again");
}

#[test]
fn money_converts_exactly() {
    let m: Money = "12.345678901".parse().unwrap_or(Money::ZERO);
    assert_eq!(
        money_to_nanos("12.345678901".parse().expect("money")),
        12_345_678_901
    );
    assert_eq!(nanos_to_money(12_345_678_901).to_string(), "12.345678901");
    assert_eq!(m, nanos_to_money(money_to_nanos(m)));
}

#[derive(Debug, Clone)]
enum Op {
    Grant(usize),
    Spend(usize, u64),
    /// The sidecar hands back what it holds beyond its share, if asked.
    HandBack(usize),
    Reclaim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..5).prop_map(Op::Grant),
        (0usize..5, 0u64..50).prop_map(|(s, n)| Op::Spend(s, n)),
        (0usize..5).prop_map(Op::HandBack),
        Just(Op::Reclaim),
    ]
}

proptest! {
    /// Whatever order grants, usage and reclaims come in, and however the
    /// sidecars spend within what they hold, the allowances outstanding
    /// never exceed what remains, so spend never exceeds the limit.
    #[test]
    fn outstanding_never_exceeds_what_remains(ops in proptest::collection::vec(op(), 1..200), limit in 1u64..2000) {
        let p = Policy { reclaim_after_ms: 5, ..Policy::default() };
        let mut l = Ledger::new(v(limit * 1000, UNLIMITED, limit), Vector::ZERO);
        let names = ["a", "b", "c", "d", "e"];
        for (t, op) in ops.into_iter().enumerate() {
            let t = t as u64;
            match op {
                Op::Grant(s) => { l.grant(names[s], t, &p); }
                Op::Spend(s, n) => {
                    // A well-behaved sidecar spends only what it holds.
                    let held = l.allowance(names[s]);
                    let n = n.min(held.requests).min(held.cost_nanos / 1000).min(held.tokens / 10);
                    l.fold(names[s], v(n * 1000, n * 10, n), t, &p);
                }
                Op::HandBack(s) => {
                    if let Some(keep) = l.surplus_above(names[s], t, &p) {
                        let back = l.allowance(names[s]).saturating_sub(keep);
                        l.release(names[s], back, t);
                    }
                }
                Op::Reclaim => { l.reclaim(t, &p); }
            }
            prop_assert!(l.committed().fits_in(l.remaining()), "committed {:?} > remaining {:?}", l.committed(), l.remaining());
        }
        prop_assert!(l.spent().requests <= limit);
    }
}
