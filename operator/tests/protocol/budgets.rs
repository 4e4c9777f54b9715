//! Budgets across real sidecars: the limit holds under concurrency, the
//! status sums every sidecar exactly, and allowances follow use.

use std::path::PathBuf;

use serde_json::json;

use crate::rig::{Rig, WAIT};
use crate::{call, chat, cleanup, files_for, objects, sidecar, until_ready};

/// A Budget of `limit` requests a day on the `chat` route, pods `pods` in
/// `shop` (web-1 exists already), a leader, and a ready sidecar for each
/// pod following it. Returns the operator, the sidecars and their dirs.
pub(crate) async fn budget_with_sidecars(
    rig: &Rig,
    budget: &str,
    limit: u64,
    pods: &[&str],
) -> (
    sluice_operator::run::Running,
    Vec<sluice_sidecar::run::Running>,
    Vec<PathBuf>,
) {
    objects(rig).await;
    rig.create(
        "sluice.dev/v1alpha1",
        "Budget",
        Some("shop"),
        json!({"metadata": {"name": budget}, "spec": {"routes": ["chat"], "window": "day", "limits": {"requests": limit}}}),
    )
    .await;
    for pod in pods.iter().filter(|p| **p != "web-1") {
        rig.pod("shop", pod, "web").await;
    }
    let op = rig.leader("op-a").await;
    let ca = rig.operator_ca().await;
    let mut sidecars = Vec::new();
    let mut dirs = Vec::new();
    for pod in pods {
        let (dir, mut cluster) = files_for(rig, &ca, &format!("{budget}-{pod}"), pod);
        cluster.operator = format!("https://{}", op.distribution);
        let sc = sidecar(cluster).await;
        until_ready(sc.admin).await;
        sidecars.push(sc);
        dirs.push(dir);
    }
    (op, sidecars, dirs)
}

/// A hard budget hammered concurrently through three sidecars: the
/// requests admitted never exceed the limit (requests are counted exactly,
/// so there is no estimation error to allow for), every sidecar ends up
/// refusing with `budget_exceeded`, and `Budget.status` sums the spend of
/// all three exactly — no report lost, none counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_three_sidecars_and_its_status_sums_them_exactly() {
    const LIMIT: u64 = 24;
    tokio::time::timeout(WAIT * 6, async {
        let rig = Rig::start().await;
        let (op, sidecars, dirs) =
            budget_with_sidecars(&rig, "hard", LIMIT, &["web-1", "web-2", "web-3"]).await;

        // Waves of concurrent requests through all three until every
        // sidecar refuses: allowances are renewed as reports arrive.
        let mut admitted = 0u64;
        let deadline = tokio::time::Instant::now() + WAIT * 4;
        loop {
            let mut wave = Vec::new();
            for sc in &sidecars {
                for _ in 0..4 {
                    let api = sc.api;
                    wave.push(tokio::spawn(async move {
                        call(api, "POST", "/v1/chat/completions", Some(chat())).await
                    }));
                }
            }
            let mut refused = 0;
            for w in wave {
                let (status, body) = w.await.expect("request");
                match status {
                    200 => admitted += 1,
                    429 => {
                        assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                        refused += 1;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            assert!(
                admitted <= LIMIT,
                "{admitted} admitted past a limit of {LIMIT}"
            );
            if admitted == LIMIT && refused == 12 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the budget was never spent: {admitted} of {LIMIT} admitted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        // The status sums what the three sidecars reported, exactly.
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "Budget",
            "shop",
            "hard",
            "exact spend",
            |v| v["status"]["spent"]["requests"] == LIMIT && v["status"]["state"] == "Exhausted",
        )
        .await;
        drop(sidecars);
        drop(op);
        for dir in &dirs {
            cleanup(dir);
        }
    })
    .await
    .expect("bounded");
}

/// Allowances follow use: of two sidecars splitting a 40-request budget,
/// the one that stays idle is asked to keep only its share and hands the
/// rest back in a report, so the busy one can spend far more than the
/// half it was first granted — and the two together still never pass 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_hands_its_share_back_to_a_busy_one() {
    const LIMIT: u64 = 40;
    tokio::time::timeout(WAIT * 6, async {
        let rig = Rig::start().await;
        let (op, sidecars, dirs) =
            budget_with_sidecars(&rig, "shared", LIMIT, &["web-1", "web-2"]).await;
        let (busy, idle) = (&sidecars[0], &sidecars[1]);

        // Only web-1 is called. The first split gave each sidecar 18 of
        // the 40 (4 kept in reserve); without hand-backs web-1 would stall
        // near 22 while web-2 sat on its 18.
        let mut admitted = 0u64;
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        while admitted < 30 {
            let (status, body) = call(busy.api, "POST", "/v1/chat/completions", Some(chat())).await;
            match status {
                200 => admitted += 1,
                429 => {
                    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the busy sidecar stalled at {admitted} of {LIMIT}: the idle one never handed its share back"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }

        // The idle sidecar kept a share it can still spend; everything
        // either admits stays within the limit.
        let mut idle_admitted = 0u64;
        loop {
            let (status, _) = call(idle.api, "POST", "/v1/chat/completions", Some(chat())).await;
            if status != 200 {
                break;
            }
            idle_admitted += 1;
        }
        assert!(idle_admitted > 0, "the idle sidecar kept nothing for itself");
        assert!(
            admitted + idle_admitted <= LIMIT,
            "{admitted} + {idle_admitted} admitted past a limit of {LIMIT}"
        );
        // The Budget's status counts exactly what was admitted: a
        // hand-back is not spend.
        let total = admitted + idle_admitted;
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "Budget",
            "shop",
            "shared",
            "spend without hand-backs",
            |v| v["status"]["spent"]["requests"] == total,
        )
        .await;
        drop(sidecars);
        drop(op);
        for dir in &dirs {
            cleanup(dir);
        }
    })
    .await
    .expect("bounded");
}
