//! The real `sluice-operator` binary: `crds` prints the CRDs; run with
//! `KUBECONFIG` pointing at the emulator it serves probes, writes status,
//! streams snapshots, and on SIGTERM hands its Lease over and exits 0.

mod rig;

use std::time::Duration;

use rig::{Rig, Sidecar, WAIT};

#[test]
fn crds_subcommand_prints_the_three_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
        .arg("crds")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let names: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(d).expect("yaml");
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "providers.sluice.dev",
            "llmroutes.sluice.dev",
            "budgets.sluice.dev"
        ]
    );
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn the_binary_runs_against_the_emulator_and_hands_over_on_sigterm() {
    let rig = Rig::start().await;
    rig.shop().await;
    let mut op = rig.operator_process("binary", &["--report-interval", "500ms"]);
    let (dist, hook, metrics) = (op.distribution, op.webhook, op.metrics);
    let child = &mut op.child;

    tokio::time::timeout(WAIT * 2, async {
        loop {
            if http_get(metrics, "/healthz")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rig.accepted("chat").await;
        let ca = rig.operator_ca().await;
        let token = rig.emulator.issue_token("shop", "web", &["sluice"]);
        let sidecar = Sidecar::new(([127, 0, 0, 1], dist).into(), &ca, &token);
        loop {
            let (status, _) = sidecar.json("GET", "/readyz", None).await;
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let snapshot = sidecar.stream("shop", "web-1").await.next().await;
        assert_eq!(snapshot["providers"][0]["credential"], "key-1");
        let webhook = Sidecar::new(([127, 0, 0, 1], hook).into(), &ca, &token);
        assert_eq!(webhook.json("POST", "/mutate", None).await.0, 404);
        let text = http_get(metrics, "/metrics").await.expect("metrics");
        assert!(
            text.contains("sluice_operator_connected_sidecars"),
            "{text}"
        );

        let pid = child.id().expect("running");
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = child.wait().await.expect("exits");
        assert!(status.success(), "exit status {status:?}");
        let lease = rig
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "sluice-system",
                "sluice-operator",
            )
            .await;
        assert!(
            lease["spec"]["holderIdentity"].is_null(),
            "released: {lease:#}"
        );
    })
    .await
    .expect("test finished in time");
}
