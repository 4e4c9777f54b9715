//! Scenario 6: control-plane faults. The operator is killed: sidecars keep
//! serving. A sidecar restarts while the operator is down: it serves from
//! its state file. The operator comes back: status resumes. A second
//! replica takes the Lease over when the leader dies, and sidecars follow
//! it (through the Service, which selects the pod the leader labels) to
//! the next change.
//!
//! Killing the operator and restarting one container are steps a test
//! takes only in the emulated environment; on a real cluster the scenario
//! says it is skipped.

use crate::rig::{Rig, SCENARIO, Sidecar, all_answer, condition, eventually, eventually_or};

const LEADER: &str = "sluice-operator-0";
const STANDBY: &str = "sluice-operator-1";

async fn all_serve(sidecars: &[Sidecar], rounds: usize) {
    all_answer(sidecars, "chat", "primary", rounds).await;
}

/// Waits until the Lease names `who`.
async fn lease_held_by(rig: &Rig, who: &str) {
    eventually_or(&format!("{who} holds the Lease"), || async {
        let holder = lease_holder(rig).await;
        if holder == who { Ok(()) } else { Err(holder) }
    })
    .await;
}

async fn lease_holder(rig: &Rig) -> String {
    rig.kubectl
        .ok(&[
            "get",
            "lease",
            "sluice-operator",
            "-n",
            "sluice-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await
}

/// The operator pods carrying the leader label the distribution Service
/// selects, as `kubectl get pods -l` lists them.
async fn labelled_leaders(rig: &Rig) -> String {
    rig.kubectl
        .ok(&[
            "get",
            "pods",
            "-n",
            "sluice-system",
            "-l",
            "sluice.dev/leader=true",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await
}

async fn labelled_leader_is(rig: &Rig, who: &str) {
    eventually_or(&format!("only {who} is labelled the leader"), || async {
        let labelled = labelled_leaders(rig).await;
        if labelled.trim() == who {
            Ok(())
        } else {
            Err(labelled)
        }
    })
    .await;
}

fn programmed_now(r: &serde_json::Value) -> bool {
    r["status"]["observedGeneration"] == r["metadata"]["generation"]
        && condition(r, "Programmed").as_deref() == Some("True")
        && r["status"]["synced"] == "2/2"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_ride_out_operator_loss_restarts_and_leader_change() {
    tokio::time::timeout(SCENARIO, async {
        let ns = "faults";
        let mut rig = Rig::start(ns).await;
        let (_mock, mut sidecars) = rig.one_route(ns, &["web-1", "web-2"]).await;
        all_serve(&sidecars, 1).await;
        if rig.emulated().is_none() {
            println!(
                "skipped on a real cluster: killing the operator and restarting one \
                 container are the kubelet's to do"
            );
            return;
        }

        // The operator dies without handing over: sidecars keep serving.
        if let Some(env) = rig.emulated() {
            env.kill_operator(LEADER).await;
        }
        all_serve(&sidecars, 5).await;

        // A sidecar restarts meanwhile: its state file is all it has.
        sidecars[0].restart().await;
        let restarted = &sidecars[0];
        eventually(
            "the restarted sidecar is ready from its state file",
            || async { restarted.ready().await.then_some(()) },
        )
        .await;
        all_serve(&sidecars, 2).await;

        // The operator comes back: status resumes (both sidecars report
        // the current version again).
        if let Some(env) = rig.emulated() {
            env.start_operator(LEADER).await;
        }
        lease_held_by(&rig, LEADER).await;
        rig.kubectl
            .merge_patch(
                "llmroute",
                ns,
                "chat",
                r#"{"spec":{"aliases":["gpt-4o-mini"]}}"#,
            )
            .await;
        let back = "Programmed after the operator's return";
        rig.wait_for("llmroute", ns, "chat", back, programmed_now)
            .await;

        // A second replica waits as standby; the leader dies; it takes the
        // Lease and serves the sidecars the next change.
        if let Some(env) = rig.emulated() {
            env.start_operator(STANDBY).await;
        }
        assert_eq!(lease_holder(&rig).await, LEADER);
        labelled_leader_is(&rig, LEADER).await;
        if let Some(env) = rig.emulated() {
            env.kill_operator(LEADER).await;
        }
        lease_held_by(&rig, STANDBY).await;
        // The new leader moves the label (the SIGKILLed one could not
        // take its own off), so the Service sends sidecars to it alone.
        labelled_leader_is(&rig, STANDBY).await;
        all_serve(&sidecars, 1).await;
        rig.kubectl
            .merge_patch("llmroute", ns, "chat", r#"{"spec":{"aliases":["gpt-4o"]}}"#)
            .await;
        rig.wait_for(
            "llmroute",
            ns,
            "chat",
            "Programmed by the new leader",
            programmed_now,
        )
        .await;
        for s in &sidecars {
            let r = s
                .chat_with(&crate::rig::ask("gpt-4o", "via the new alias"), &[])
                .await
                .expect("an answer");
            assert_eq!(r.status.as_u16(), 200, "{}: {}", s.pod, r.text());
        }
    })
    .await
    .expect("the scenario finishes in time");
}
