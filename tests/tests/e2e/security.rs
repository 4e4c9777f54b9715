//! Scenario 7: security. A sidecar token of namespace A cannot read
//! namespace B's snapshot; and the provider key — a distinctive fake —
//! appears in no log, metric, status, event or `/debug/config` output
//! captured during the run, though every answer proves it was used.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sluice_tests::mock::client::{self, Proto};

use crate::rig::{PROVIDER_KEY, Rig, SCENARIO, http_get, route_yaml};

/// `GET path` on the operator's distribution port with `token`.
async fn distribution_get(
    tls: &Arc<rustls::ClientConfig>,
    base: &str,
    path: &str,
    token: &str,
) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let mut r = client::open_tls(
        tls.clone(),
        Proto::Http1,
        http::Method::GET,
        &format!("{base}{path}"),
        &[("authorization", &auth)],
        bytes::Bytes::new(),
    )
    .await
    .expect("the operator answers");
    let status = r.status.as_u16();
    // A stream stays open: the first chunk says enough.
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), r.next_chunk())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&first).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_in_their_namespace_and_keys_never_leak() {
    tokio::time::timeout(SCENARIO, async {
        let (a, b) = ("team-a", "team-b");
        let mut rig = Rig::start(a).await;
        rig.namespace(b).await;
        let mock = rig.mock("primary").await;
        for ns in [a, b] {
            rig.providers(ns, &[("primary", &mock)]).await;
            rig.kubectl
                .apply(&route_yaml(ns, "chat", "priority", &[("primary", 1)]))
                .await;
        }
        let mut sidecars = rig.pods(a, &["a-1"]).await;
        sidecars.extend(rig.pods(b, &["b-1"]).await);
        for ns in [a, b] {
            rig.programmed(ns, "chat").await;
        }

        // Namespace A's sidecar token, as kubelet projects it.
        let token_a = rig
            .kubectl
            .ok(&[
                "create",
                "token",
                "web",
                "-n",
                a,
                "--audience",
                "sluice",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "a-1",
            ])
            .await;
        let token_a = token_a.trim();
        let operator = rig.operator().await;
        let roots: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(operator.ca_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("the CA parses");
        let tls = sluice_tests::mock::tls::client_config(&roots[0], &[b"http/1.1"])
            .expect("a TLS client");
        let (own, _) = distribution_get(
            &tls,
            &operator.distribution,
            &format!("/v1/snapshots/stream?namespace={a}&pod=a-1"),
            token_a,
        )
        .await;
        assert_eq!(own, 200, "the token reads its own pod's snapshot");
        for (ns, pod) in [(b, "b-1"), (a, "b-1")] {
            let (status, body) = distribution_get(
                &tls,
                &operator.distribution,
                &format!("/v1/snapshots/stream?namespace={ns}&pod={pod}"),
                token_a,
            )
            .await;
            assert!(matches!(status, 401 | 403), "{ns}/{pod}: {status} {body}");
            assert!(!body.contains(PROVIDER_KEY), "a refusal carries no key");
            assert!(
                !body.contains("\"routes\""),
                "{ns}/{pod}: no snapshot in {body}"
            );
        }

        // Traffic, a failure or two, then everything a user or an operator
        // of the cluster can read.
        for s in &sidecars {
            for _ in 0..3 {
                let r = s.chat("chat").await.expect("an answer");
                assert_eq!(
                    r.status.as_u16(),
                    200,
                    "the key was sent and accepted: {}",
                    r.text()
                );
            }
        }
        mock.fail().await;
        for s in &sidecars {
            let _ = s.chat("chat").await;
        }
        mock.heal().await;
        let mut captured = Vec::new();
        for s in &sidecars {
            for path in ["/metrics", "/debug/config", "/readyz"] {
                let (_, body) = http_get(&s.admin_url(path)).await.expect("admin answers");
                captured.push((format!("{} {path}", s.pod), body));
            }
        }
        let (_, metrics) = http_get(&format!("{}/metrics", operator.metrics))
            .await
            .expect("operator metrics");
        captured.push(("operator /metrics".into(), metrics));
        for what in ["llmroutes,providers,budgets", "events", "pods"] {
            let out = rig.kubectl.ok(&["get", what, "-A", "-o", "yaml"]).await;
            captured.push((format!("kubectl get {what}"), out));
        }
        // The product's logs (the mocks are the providers: theirs may
        // hold the key, as a real provider's would).
        let logs = rig.product_logs(&sidecars).await;
        assert!(
            logs.iter()
                .any(|(w, t)| w.starts_with("sidecar") && !t.is_empty()),
            "sidecar logs were captured"
        );
        captured.extend(logs);
        let encoded = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(PROVIDER_KEY)
        };
        for (what, text) in &captured {
            // Say where, never print the text: it would hold the key.
            assert!(
                !text.contains(PROVIDER_KEY) && !text.contains(&encoded),
                "the provider key appears in {what}"
            );
        }
        println!(
            "searched {} captured outputs, {} bytes",
            captured.len(),
            captured.iter().map(|(_, t)| t.len()).sum::<usize>()
        );
    })
    .await
    .expect("the scenario finishes in time");
}
