//! Scenario 5: bad configuration. What one object shows to be wrong is
//! refused by kubectl with the schema's or the CEL rule's message; what
//! needs other objects (a provider that does not exist) is accepted, the
//! route gets `ResolvedRefs=False`, and the sidecars keep serving the
//! route as it was.

use crate::rig::{Rig, SCENARIO, all_answer, condition, route_yaml};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused_or_held_and_sidecars_keep_serving() {
    tokio::time::timeout(SCENARIO, async {
        let ns = "bad";
        let rig = Rig::start(ns).await;
        let (mock, sidecars) = rig.one_route(ns, &["web-1", "web-2", "web-3"]).await;

        // Refused at admission: an enum (schema) and CEL rules.
        for (yaml, message) in [
            (
                route_yaml(ns, "odd", "random", &[("primary", 1)]),
                r#"Unsupported value: "random""#,
            ),
            (
                route_yaml(ns, "weightless", "weighted", &[("primary", 0)]),
                "with strategy weighted at least one target needs a weight above 0",
            ),
            (
                format!(
                    r#"apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: flappy, namespace: {ns}}}
spec:
  type: mock
  models: [{{name: m}}]
  circuitBreaker: {{openFor: 10m, maxOpenFor: 1m}}
"#
                ),
                "circuitBreaker.openFor must not exceed circuitBreaker.maxOpenFor",
            ),
        ] {
            let out = rig.kubectl.run(&["apply", "-f", "-"], Some(&yaml)).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "accepted: {yaml}");
            assert!(stderr.contains(message), "kubectl said: {stderr}");
        }
        let names = rig
            .kubectl
            .ok(&["get", "llmroutes,providers", "-n", ns, "-o", "name"])
            .await;
        for refused in ["odd", "weightless", "flappy"] {
            assert!(!names.contains(refused), "{names}");
        }

        // Accepted, but it names a provider that does not exist.
        rig.kubectl
            .merge_patch(
                "llmroute",
                ns,
                "chat",
                r#"{"spec":{"targets":[{"providerRef":{"name":"nowhere"},"model":"m"}]}}"#,
            )
            .await;
        let route = rig
            .wait_for("llmroute", ns, "chat", "ResolvedRefs=False", |r| {
                r["status"]["observedGeneration"] == r["metadata"]["generation"]
                    && condition(r, "ResolvedRefs").as_deref() == Some("False")
            })
            .await;
        let message = route["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ResolvedRefs")
            .map(|c| c["message"].to_string())
            .unwrap_or_default();
        assert!(
            message.contains("nowhere"),
            "the condition names it: {message}"
        );

        // A few report intervals later every sidecar still runs the last
        // good route: same answers from the same provider.
        let calls = mock.calls().await;
        all_answer(&sidecars, "chat", "primary", 5).await;
        assert!(mock.calls().await >= calls + 15);
        for s in &sidecars {
            let (_, config) = crate::rig::http_get(&s.admin_url("/debug/config"))
                .await
                .expect("/debug/config answers");
            let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
            let targets = &config["routes"][0]["targets"];
            assert_eq!(targets[0]["provider"], "primary", "{}: {config:#}", s.pod);
        }

        // Fixing the reference brings the route back to Programmed.
        rig.kubectl
            .merge_patch(
                "llmroute",
                ns,
                "chat",
                r#"{"spec":{"targets":[{"providerRef":{"name":"primary"},"model":"m"}]}}"#,
            )
            .await;
        rig.wait_for(
            "llmroute",
            ns,
            "chat",
            "resolved and programmed again",
            |r| {
                r["status"]["observedGeneration"] == r["metadata"]["generation"]
                    && condition(r, "ResolvedRefs").as_deref() == Some("True")
                    && condition(r, "Programmed").as_deref() == Some("True")
            },
        )
        .await;
    })
    .await
    .expect("the scenario finishes in time");
}
