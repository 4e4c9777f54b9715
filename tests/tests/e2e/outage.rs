//! Scenario 2: provider outage. The primary fails while three sidecars
//! carry steady traffic: clients see no error (the fallback target is
//! healthy), every sidecar's breaker for the primary opens and
//! `kubectl get providers` says so; when the primary recovers the breakers
//! close and traffic returns to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::rig::{Rig, SCENARIO, Sidecar, route_yaml, row};

/// What the clients saw: (status, provider that answered) per request.
type Seen = Vec<(u16, String)>;

/// Two clients per sidecar sending requests back to back until `stop`.
fn load(
    sidecars: &Arc<Vec<Sidecar>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let mut tasks = Vec::new();
    for i in 0..sidecars.len() * 2 {
        let (sidecars, stop) = (sidecars.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let sidecar = &sidecars[i % sidecars.len()];
            let mut seen = Seen::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, provider) = match sidecar.chat("chat").await {
                    Some(r) => (
                        r.status.as_u16(),
                        r.header("x-sluice-provider").unwrap_or_default().to_owned(),
                    ),
                    None => (0, String::new()),
                };
                seen.push((status, provider));
                // Steady, not flat out: the machine is shared.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            seen
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outage_fails_over_without_client_errors() {
    tokio::time::timeout(SCENARIO, async {
        let ns = "outage";
        let rig = Rig::start(ns).await;
        let primary = rig.mock("primary").await;
        let backup = rig.mock("backup").await;
        rig.providers(ns, &[("primary", &primary), ("backup", &backup)])
            .await;
        rig.kubectl
            .apply(&route_yaml(
                ns,
                "chat",
                "priority",
                &[("primary", 1), ("backup", 1)],
            ))
            .await;
        let sidecars = Arc::new(rig.pods(ns, &["web-1", "web-2", "web-3"]).await);
        rig.programmed(ns, "chat").await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(&sidecars, &stop);

        // Steady state: everyone reports the primary healthy.
        let providers = |want_state: &'static str, want_open: &'static str| {
            let rig = &rig;
            async move {
                crate::rig::eventually_or(
                    &format!("kubectl get providers: primary {want_state}, {want_open} open"),
                    || async {
                        let table = rig.kubectl.table("providers", ns).await;
                        let r = row(&table, "primary").unwrap_or_default();
                        let ok = r.get("STATE").is_some_and(|s| s == want_state)
                            && r.get("OPEN").is_some_and(|o| o == want_open);
                        if ok {
                            Ok(table)
                        } else {
                            Err(format!("{table:?}"))
                        }
                    },
                )
                .await
            }
        };
        providers("Healthy", "0/3").await;

        // Outage.
        let outage = Instant::now();
        primary.fail().await;
        let table = providers("Down", "3/3").await;
        println!(
            "outage visible in `kubectl get providers` after {:?} (report interval {}):\n{}",
            outage.elapsed(),
            crate::rig::emulated::REPORT_INTERVAL,
            table
                .iter()
                .map(|r| r.join("  "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let during = backup.calls().await;

        // Recovery: half-open probes succeed and the breakers close.
        let recovery = Instant::now();
        primary.heal().await;
        providers("Healthy", "0/3").await;
        println!("recovery visible after {:?}", recovery.elapsed());
        let recovered_at = primary.calls().await;
        crate::rig::eventually("traffic returns to the primary", || async {
            (primary.calls().await > recovered_at + 10).then_some(())
        })
        .await;

        stop.store(true, Ordering::Relaxed);
        let mut seen = Seen::new();
        for c in clients {
            seen.extend(c.await.expect("client task"));
        }
        let errors: Vec<&(u16, String)> = seen.iter().filter(|(s, _)| *s != 200).collect();
        assert!(
            errors.is_empty(),
            "{} of {} requests failed: {:?}",
            errors.len(),
            seen.len(),
            &errors[..errors.len().min(10)]
        );
        assert!(during > 0, "the backup answered during the outage");
        assert!(seen.iter().any(|(_, p)| p == "backup"));
        println!("{} requests, none failed", seen.len());
    })
    .await
    .expect("the scenario finishes in time");
}
