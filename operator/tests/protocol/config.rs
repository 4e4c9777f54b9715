//! Configuration over the protocol: a sidecar serves what the operator
//! sends and keeps serving without it, tokens stay in their namespace, a
//! rotated key arrives, a refused snapshot leaves the old one in force.

use serde_json::json;

use crate::rig::{Rig, WAIT};
use crate::{call, chat, cleanup, files, objects, sidecar, until_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_the_operators_config_and_keeps_serving_without_it() {
    tokio::time::timeout(WAIT * 3, async {
        let rig = Rig::start().await;
        objects(&rig).await;
        let op = rig.leader("op-a").await;
        let ca = rig.operator_ca().await;
        let (dir, mut cluster) = files(&rig, &ca, "serve");
        cluster.operator = format!("https://{}", op.distribution);

        let sc = sidecar(cluster.clone()).await;
        until_ready(sc.admin).await;
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "from the operator's config"
        );

        // The sidecar reports the version it runs: the route is Programmed.
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            "shop",
            "chat",
            "Programmed",
            |v| {
                v["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Programmed" && c["status"] == "True")
                })
            },
        )
        .await;

        // Its health reports reach the Provider's status.
        rig.wait_for(
            "sluice.dev/v1alpha1",
            "Provider",
            "shop",
            "offline",
            "reported healthy",
            |v| v["status"]["sidecars"] == 1 && v["status"]["state"] == "Healthy",
        )
        .await;

        // And `kubectl get` is the dashboard: the real kubectl shows the
        // printer columns filled from that status.
        let kubeconfig = dir.join("kubeconfig");
        rig.emulator
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig");
        let kubectl = |args: &[&str]| {
            let out = std::process::Command::new("kubectl")
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .expect("kubectl runs");
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let routes = kubectl(&["get", "llmroutes", "-n", "shop"]);
        let header: Vec<&str> = routes
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            vec![
                "NAME", "MODEL", "STRATEGY", "TARGETS", "SYNCED", "HEALTHY", "AGE"
            ],
            "{routes}"
        );
        let row: Vec<&str> = routes
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            &row[..6],
            &["chat", "chat", "priority", "1", "1/1", "1/1"],
            "{routes}"
        );
        // Health is what sidecars observed in the last three report
        // intervals (1.5 s here), which a loaded machine can pass between
        // the wait above and this read: keep traffic flowing while polling.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
            let providers = kubectl(&["get", "providers", "-n", "shop"]);
            let row: Vec<String> = providers
                .lines()
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if row.len() >= 3 && row[..3] == ["offline", "mock", "Healthy"] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kubectl never showed the provider Healthy: {providers}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        // A live change reaches the sidecar.
        rig.api("sluice.dev/v1alpha1", "Provider", Some("shop"))
            .patch(
                "offline",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&json!({"spec": {"mock": {"reply": "changed live"}}})),
            )
            .await
            .expect("patched");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
            if body["choices"][0]["message"]["content"] == "changed live" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the change never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // The operator goes away: the sidecar keeps serving.
        drop(op);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(
            (status, &body["choices"][0]["message"]["content"]),
            (200, &json!("changed live"))
        );

        // The sidecar restarts while the operator is away: it serves from its state file.
        drop(sc);
        let state = std::fs::metadata(cluster.state_dir.join("state.json")).expect("state file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(state.permissions().mode() & 0o777, 0o600);
        }
        let restarted = sidecar(cluster).await;
        until_ready(restarted.admin).await;
        let (status, body) =
            call(restarted.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(
            (status, &body["choices"][0]["message"]["content"]),
            (200, &json!("changed live"))
        );
        cleanup(&dir);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_another_namespaces_token_gets_nothing() {
    tokio::time::timeout(WAIT * 2, async {
        let rig = Rig::start().await;
        objects(&rig).await;
        rig.pod("other", "intruder", "web").await;
        let op = rig.leader("op-a").await;
        let ca = rig.operator_ca().await;
        let (dir, mut cluster) = files(&rig, &ca, "intruder");
        cluster.operator = format!("https://{}", op.distribution);
        let token = rig
            .emulator
            .issue_pod_token("other", "web", "intruder", &["sluice"])
            .expect("token");
        std::fs::write(&cluster.token_file, token).expect("token");
        let sc = sidecar(cluster).await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            call(sc.admin, "GET", "/readyz", None).await.0,
            503,
            "no config for a foreign token"
        );
        let (status, body) = call(sc.api, "GET", "/v1/models", None).await;
        assert!(
            status != 200 || body["data"].as_array().is_none_or(|d| d.is_empty()),
            "{body}"
        );
        cleanup(&dir);
    })
    .await
    .expect("bounded");
}

/// With a real sidecar: a rotated Secret reaches the provider as the new
/// key on the next request, and a snapshot the sidecar cannot apply (a
/// Provider naming an environment variable its container lacks) is
/// refused — the routes' status says why — while the previous
/// configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_reaches_the_provider_and_a_refused_snapshot_keeps_the_old_one() {
    use sluice_tests::mock::{MockConfig, MockProvider, ProviderKind};
    tokio::time::timeout(WAIT * 4, async {
        let upstream = MockProvider::start(
            ProviderKind::OpenAi,
            MockConfig {
                api_key: None,
                ..MockConfig::default()
            },
        )
        .await
        .expect("mock upstream");
        let rig = Rig::start().await;
        rig.create("v1", "Secret", Some("shop"), json!({"metadata": {"name": "keys"}, "stringData": {"openai": "key-1"}})).await;
        rig.create(
            "sluice.dev/v1alpha1",
            "Provider",
            Some("shop"),
            json!({"metadata": {"name": "upstream"}, "spec": {"type": "openai-compatible", "endpoint": format!("{}/v1", upstream.url()), "credentials": {"secretRef": {"name": "keys", "key": "openai"}}, "models": [{"name": "m"}]}}),
        )
        .await;
        rig.create(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            Some("shop"),
            json!({"metadata": {"name": "chat"}, "spec": {"model": "chat", "targets": [{"providerRef": {"name": "upstream"}, "model": "m"}]}}),
        )
        .await;
        rig.pod("shop", "web-1", "web").await;
        let op = rig.leader("op-a").await;
        let ca = rig.operator_ca().await;
        let (dir, mut cluster) = files(&rig, &ca, "rotate");
        cluster.operator = format!("https://{}", op.distribution);
        let sc = sidecar(cluster).await;
        until_ready(sc.admin).await;
        let key_seen = || {
            upstream
                .requests()
                .last()
                .and_then(|r| r.header("authorization").map(str::to_owned))
        };
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(key_seen().as_deref(), Some("Bearer key-1"));

        // The key rotates in the Secret: the next requests carry the new one.
        rig.merge("v1", "Secret", "shop", "keys", json!({"stringData": {"openai": "key-2"}}))
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
            assert_eq!(status, 200, "{body}");
            if key_seen().as_deref() == Some("Bearer key-2") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the rotated key never arrived");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // A Provider whose key comes from an env var this sidecar lacks:
        // its snapshot is refused and the route's status says so.
        rig.create(
            "sluice.dev/v1alpha1",
            "Provider",
            Some("shop"),
            json!({"metadata": {"name": "local"}, "spec": {"type": "openai-compatible", "endpoint": format!("{}/v1", upstream.url()), "credentials": {"env": "SLUICE_PROTOCOL_TEST_UNSET_KEY"}, "models": [{"name": "m"}]}}),
        )
        .await;
        rig.create(
            "sluice.dev/v1alpha1",
            "LLMRoute",
            Some("shop"),
            json!({"metadata": {"name": "local-chat"}, "spec": {"model": "local-chat", "targets": [{"providerRef": {"name": "local"}, "model": "m"}]}}),
        )
        .await;
        let refused = rig
            .wait_for(
                "sluice.dev/v1alpha1",
                "LLMRoute",
                "shop",
                "local-chat",
                "Programmed=False, Rejected",
                |v| {
                    v["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| c["type"] == "Programmed" && c["reason"] == "Rejected")
                    })
                },
            )
            .await;
        let message = refused["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Programmed"))
            .map(|c| c["message"].to_string())
            .unwrap_or_default();
        assert!(message.contains("SLUICE_PROTOCOL_TEST_UNSET_KEY"), "{message}");
        // The previous configuration keeps serving, with the rotated key;
        // the refused route is not there.
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(chat())).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(key_seen().as_deref(), Some("Bearer key-2"));
        let local = json!({"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]});
        let (status, body) = call(sc.api, "POST", "/v1/chat/completions", Some(local)).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "model_not_found");
        drop(sc);
        drop(op);
        cleanup(&dir);
    })
    .await
    .expect("bounded");
}
