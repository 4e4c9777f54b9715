//! Many sidecars at once: concurrent reports (with resends) sum exactly in
//! Budget status, and a route change reaches every connected sidecar.

mod rig;

use rig::{Rig, Sidecar, WAIT};
use serde_json::json;

const PODS: usize = 3;
const REPORTS: u64 = 15;

#[tokio::test]
async fn concurrent_reports_with_resends_sum_exactly() {
    tokio::time::timeout(WAIT * 4, async {
        let rig = Rig::start().await;
        rig.shop().await;
        for i in 2..=PODS {
            rig.pod("shop", &format!("web-{i}"), "web").await;
        }
        let op = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
        let first = Sidecar::new(op.distribution, &ca, &token).stream("shop", "web-1").await.next().await;
        let window_start = first["budgets"][0]["window"]["start"].clone();

        let mut tasks = Vec::new();
        for i in 1..=PODS {
            let sidecar = Sidecar::new(op.distribution, &ca, &token);
            let window_start = window_start.clone();
            tasks.push(tokio::spawn(async move {
                let pod = format!("web-{i}");
                for seq in 1..=REPORTS {
                    // Every report carries the previous delta again, as if
                    // its ack had been lost, plus a new one.
                    let deltas: Vec<_> = (seq.saturating_sub(1).max(1)..=seq)
                        .map(|s| json!({"seq": s, "budget": "team", "windowStart": window_start,
                            "spent": {"costUSD": "0.001", "tokens": 10, "requests": 1}}))
                        .collect();
                    let report = json!({"namespace": "shop", "pod": pod, "instance": format!("i-{i}"),
                        "sequence": seq, "config": {}, "usage": deltas});
                    let (status, ack) = sidecar.json("POST", "/v1/reports", Some(report)).await;
                    assert_eq!((status, ack["usageAckedThrough"].as_u64()), (200, Some(seq)), "{ack}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("a sidecar's reports");
        }
        let budget = rig.get("sluice.dev/v1alpha1", "Budget", "shop", "team").await;
        let total = PODS as u64 * REPORTS;
        assert_eq!(budget["status"]["spent"]["requests"], total, "{budget:#}");
        assert_eq!(budget["status"]["spent"]["tokens"], total * 10);
        assert_eq!(budget["status"]["spent"]["costUSD"], "0.045");
        for i in 1..=PODS {
            assert_eq!(budget["status"]["folded"][format!("i-{i}")], REPORTS);
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_route_change_reaches_every_connected_sidecar() {
    const FLEET: usize = 30;
    tokio::time::timeout(WAIT * 4, async {
        let rig = Rig::start().await;
        rig.shop().await;
        for i in 2..=FLEET {
            rig.pod("shop", &format!("web-{i}"), "web").await;
        }
        let op = rig.leader("a").await;
        let ca = rig.operator_ca().await;
        let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
        let mut streams = Vec::new();
        for i in 1..=FLEET {
            let mut lines = Sidecar::new(op.distribution, &ca, &token)
                .stream("shop", &format!("web-{i}"))
                .await;
            let first = lines.next().await;
            assert_eq!(
                first["routes"][0]["spec"]["aliases"],
                serde_json::Value::Null
            );
            streams.push(lines);
        }
        rig.merge(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            "shop",
            "chat",
            json!({"spec": {"aliases": ["gpt-4o-mini"]}}),
        )
        .await;
        for lines in &mut streams {
            let mut s = lines.next().await;
            while s["routes"][0]["spec"]["aliases"] != json!(["gpt-4o-mini"]) {
                s = lines.next().await;
            }
            assert_eq!(s["routes"][0]["generation"], 2);
        }
        let metrics = op.ctx.metrics.render();
        assert!(
            metrics.contains(&format!("sluice_operator_connected_sidecars {FLEET}")),
            "{metrics}"
        );
    })
    .await
    .expect("test finished in time");
}
