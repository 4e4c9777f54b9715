//! Scenario 4: a live change. `kubectl patch` moves a weighted route's
//! traffic from one provider to another; every sidecar runs the new
//! version soon after (the figure is printed, not asserted: performance is
//! measured, never asserted) and traffic follows.

use std::time::Instant;

use crate::rig::{Rig, SCENARIO, all_answer, condition, eventually_or, route_yaml};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patched_route_reaches_every_sidecar_and_traffic_follows() {
    tokio::time::timeout(SCENARIO, async {
        let ns = "live";
        let rig = Rig::start(ns).await;
        let a = rig.mock("a").await;
        let b = rig.mock("b").await;
        rig.providers(ns, &[("a", &a), ("b", &b)]).await;
        rig.kubectl
            .apply(&route_yaml(ns, "chat", "weighted", &[("a", 1), ("b", 0)]))
            .await;
        let sidecars = rig.pods(ns, &["web-1", "web-2", "web-3"]).await;
        rig.programmed(ns, "chat").await;
        // Snapshots are per pod (each carries its own budget allowances),
        // so each sidecar's version is compared with its own.
        let mut old = Vec::new();
        for s in &sidecars {
            old.push(s.version().await.expect("a version in /debug/config"));
        }
        all_answer(&sidecars, "chat", "a", 3).await;

        let patched = Instant::now();
        rig.kubectl
            .ok(&[
                "patch", "llmroute", "chat", "-n", ns, "--type=json", "-p",
                r#"[{"op":"replace","path":"/spec/targets/0/weight","value":0},{"op":"replace","path":"/spec/targets/1/weight","value":1}]"#,
            ])
            .await;
        for (s, old) in sidecars.iter().zip(&old) {
            eventually_or(&format!("{} runs a new version", s.pod), || async {
                match s.version().await {
                    Some(v) if &v != old => Ok(()),
                    other => Err(format!("{other:?} (was {old})")),
                }
            })
            .await;
        }
        let everywhere = patched.elapsed();
        println!("patch → every sidecar on the new version: {everywhere:?}");

        // Traffic follows, on every sidecar.
        all_answer(&sidecars, "chat", "b", 3).await;
        // And the status says all three run it.
        rig.wait_for("llmroute", ns, "chat", "Programmed on the new version", |r| {
            r["status"]["observedGeneration"] == r["metadata"]["generation"]
                && condition(r, "Programmed").as_deref() == Some("True")
                && r["status"]["synced"] == "3/3"
        })
        .await;
    })
    .await
    .expect("the scenario finishes in time");
}
