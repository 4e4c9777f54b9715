//! Sidecar injection through the API: the emulator calls the real
//! operator's webhook on pod creation, as a cluster's API server would.

mod rig;

use rig::{Rig, WAIT, b64};
use serde_json::{Value, json};

async fn webhook_rig() -> (Rig, sluice_operator::run::Running, String) {
    let rig = Rig::start().await;
    let op = rig.leader("op-a").await;
    let ca = rig.operator_ca().await;
    rig.create(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        None,
        json!({
            "metadata": {"name": "sluice-operator"},
            "webhooks": [{
                "name": "inject.sluice.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": {"url": format!("https://{}/mutate-pods", op.webhook), "caBundle": b64(&ca)},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["sluice-system", "kube-system"]}
                ]}
            }]
        }),
    )
    .await;
    (rig, op, ca)
}

async fn create_pod(rig: &Rig, ns: &str, name: &str, annotations: Value) -> Value {
    rig.create(
        "v1",
        "Pod",
        Some(ns),
        json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "example/app"}]},
        }),
    )
    .await;
    rig.get("v1", "Pod", ns, name).await
}

fn sidecar(pod: &Value) -> Option<&Value> {
    pod["spec"]["initContainers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "sluice-sidecar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_in_a_labelled_namespace_get_the_sidecar_from_the_real_webhook() {
    tokio::time::timeout(WAIT * 2, async {
        let (rig, _op, ca) = webhook_rig().await;
        rig.api("v1", "Namespace", None)
            .patch(
                "shop",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&json!({"metadata": {"labels": {"sluice.dev/inject": "enabled"}}})),
            )
            .await
            .expect("labelled");
        let pod = create_pod(&rig, "shop", "web-1", json!({})).await;
        let s = sidecar(&pod).unwrap_or_else(|| panic!("not injected: {pod:#}"));
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(pod["metadata"]["labels"]["sluice.dev/sidecar"], "injected");
        assert_eq!(pod["metadata"]["annotations"]["sluice.dev/operator-ca"], ca.as_str());
        let env = pod["spec"]["containers"][0]["env"].as_array().expect("env");
        assert!(env.iter().any(|e| e["name"] == "OPENAI_BASE_URL" && e["value"] == "http://127.0.0.1:4100/v1"));

        // A namespace without the label: only an annotated pod is injected.
        let plain = create_pod(&rig, "other", "plain", json!({})).await;
        assert!(sidecar(&plain).is_none());
        let asked = create_pod(&rig, "other", "asked", json!({"sluice.dev/inject": "true"})).await;
        assert!(sidecar(&asked).is_some());
        // And a pod can opt out of its namespace's injection.
        let out = create_pod(&rig, "shop", "opted-out", json!({"sluice.dev/inject": "false"})).await;
        assert!(sidecar(&out).is_none());
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resource_annotation_is_refused_with_its_reason() {
    tokio::time::timeout(WAIT * 2, async {
        let (rig, _op, _) = webhook_rig().await;
        let api = rig.api("v1", "Pod", Some("other"));
        let pod: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bad", "annotations": {"sluice.dev/inject": "true", "sluice.dev/sidecar-memory-limit": "lots"}},
            "spec": {"containers": [{"name": "app", "image": "example/app"}]},
        }))
        .expect("pod");
        let err = api
            .create(&kube::api::PostParams::default(), &pod)
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("sluice.dev/sidecar-memory-limit"), "{text}");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_publishes_its_ca_to_the_webhook_configuration() {
    tokio::time::timeout(WAIT * 2, async {
        let rig = Rig::start().await;
        let op = rig.leader("op-a").await;
        let ca = rig.operator_ca().await;
        rig.create(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            None,
            json!({
                "metadata": {"name": "sluice-operator"},
                "webhooks": [{
                    "name": "inject.sluice.dev",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "clientConfig": {"url": format!("https://{}/mutate-pods", op.webhook)},
                    "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
                }]
            }),
        )
        .await;
        sluice_operator::admission::publish_ca_bundle(rig.client.clone(), "sluice-operator", &ca)
            .await
            .expect("patched");
        let hook = rig
            .api("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None)
            .get("sluice-operator")
            .await
            .expect("exists");
        let hook = serde_json::to_value(hook).expect("json");
        assert_eq!(hook["webhooks"][0]["clientConfig"]["caBundle"], b64(&ca));
        // Now the API server trusts the operator: an annotated pod is injected.
        let pod = create_pod(&rig, "other", "asked", json!({"sluice.dev/inject": "true"})).await;
        assert!(sidecar(&pod).is_some());
    })
    .await
    .expect("bounded");
}
