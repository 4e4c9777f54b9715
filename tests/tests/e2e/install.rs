//! Scenario 1: install and first request. Three pods in an injected
//! namespace each get a sidecar; the route reaches `Programmed=True` and
//! `kubectl get llmroutes` shows `3/3` synced; the official `openai`
//! Python package gets its answer through a sidecar.

use crate::rig::{Rig, SCENARIO, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_and_first_request() {
    tokio::time::timeout(SCENARIO, async {
        let ns = "install";
        let rig = Rig::start(ns).await;
        let (mock, sidecars) = rig.one_route(ns, &["web-1", "web-2", "web-3"]).await;
        let table = rig.kubectl.table("llmroutes", ns).await;
        assert_eq!(
            table[0],
            [
                "NAME", "MODEL", "STRATEGY", "TARGETS", "SYNCED", "HEALTHY", "AGE"
            ],
            "{table:?}"
        );
        assert_eq!(
            &table[1][..5],
            ["chat", "chat", "priority", "1", "3/3"],
            "{table:?}"
        );

        for sidecar in &sidecars {
            let r = eventually(&format!("{} answers", sidecar.pod), || async {
                sidecar.chat("chat").await.filter(|r| r.status == 200)
            })
            .await;
            assert_eq!(r.header("x-sluice-provider"), Some("primary"));
            assert!(
                r.json()["choices"][0]["message"]["content"].is_string(),
                "{}",
                r.text()
            );
        }
        assert!(mock.calls().await >= 3);

        // The app container's own environment (set by the webhook) is what
        // the official SDK reads; only the port differs on this host.
        let pod = rig.kubectl.get_json("pod", ns, "web-1").await;
        let env = pod["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let base = env
            .iter()
            .find(|e| e["name"] == "OPENAI_BASE_URL")
            .expect("OPENAI_BASE_URL");
        assert_eq!(base["value"], "http://127.0.0.1:4100/v1");
        let key = env
            .iter()
            .find(|e| e["name"] == "OPENAI_API_KEY")
            .expect("OPENAI_API_KEY");
        let reply = crate::rig::python_chat(
            &sidecars[0].url("/v1"),
            key["value"].as_str().unwrap_or_default(),
            "chat",
        )
        .await;
        assert!(!reply.is_empty(), "the SDK got an empty reply");
    })
    .await
    .expect("the scenario finishes in time");
}
