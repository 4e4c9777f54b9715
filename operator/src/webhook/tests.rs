use super::*;

fn pod(meta: Value, containers: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": containers}});
    if p["metadata"]["namespace"].is_null() {
        p["metadata"]["namespace"] = json!("shop");
    }
    p
}

fn app() -> Value {
    json!([{"name": "app", "image": "shop:1"}])
}

fn review_of(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false
        }
    }))
    .expect("serializes")
}

fn labels(ns: &str) -> Option<BTreeMap<String, String>> {
    (ns == "shop").then(|| [(NAMESPACE_LABEL.to_string(), "enabled".to_string())].into())
}

fn cfg() -> Injection {
    Injection {
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ..Injection::default()
    }
}

/// Runs the webhook and applies its patch; returns the response and the patched pod.
fn run(p: &Value) -> (Value, Value) {
    let out = review(&review_of(p), &labels, &cfg()).expect("answered");
    let out: Value = serde_json::from_slice(&out).expect("json");
    let response = out["response"].clone();
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let mut patched = p.clone();
    if let Some(b64) = response["patch"].as_str() {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSONPatch");
        json_patch::patch(&mut patched, &patch).expect("the patch applies");
        assert_eq!(response["patchType"], "JSONPatch");
    }
    (response, patched)
}

fn sidecar(p: &Value) -> &Value {
    p["spec"]["initContainers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == CONTAINER))
        .expect("the sidecar is there")
}

#[test]
fn a_pod_in_a_labelled_namespace_gets_a_native_sidecar() {
    let (resp, p) = run(&pod(json!({"name": "web-1"}), app()));
    assert_eq!(resp["allowed"], true);
    let s = sidecar(&p);
    assert_eq!(s["restartPolicy"], "Always");
    let args: Vec<&str> = s["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--operator=https://sluice-operator.sluice-system.svc:8443"));
    assert!(args.contains(&"--token-file=/var/run/sluice/token/token"));
    assert!(args.contains(&"--ca-file=/var/run/sluice/ca/ca.crt"));
    assert!(args.contains(&"--state-dir=/var/run/sluice/state"));
    assert_eq!(s["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(s["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(s["resources"]["requests"]["memory"], "32Mi");
    let sc = &s["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let vols = p["spec"]["volumes"].as_array().expect("volumes");
    let token = vols
        .iter()
        .find(|v| v["name"] == "sluice-token")
        .expect("token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "sluice"
    );
    let state = vols
        .iter()
        .find(|v| v["name"] == "sluice-state")
        .expect("state volume");
    assert_eq!(state["emptyDir"]["medium"], "Memory");
    assert_eq!(p["metadata"]["labels"][SIDECAR_LABEL], "injected");
    assert!(
        p["metadata"]["annotations"][CA_ANNOTATION]
            .as_str()
            .is_some_and(|s| s.contains("BEGIN CERTIFICATE"))
    );
    let env = p["spec"]["containers"][0]["env"].as_array().expect("env");
    let get = |k: &str| {
        env.iter()
            .find(|e| e["name"] == k)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        get("OPENAI_BASE_URL"),
        Some(json!("http://127.0.0.1:4100/v1"))
    );
    assert_eq!(
        get("ANTHROPIC_BASE_URL"),
        Some(json!("http://127.0.0.1:4100"))
    );
    assert!(get("OPENAI_API_KEY").is_some());
    // The result is still a valid Pod.
    let _: Pod = serde_json::from_value(p).expect("a Pod");
}

#[test]
fn only_labelled_namespaces_or_annotated_pods_are_injected() {
    let (resp, p) = run(&pod(json!({"name": "x", "namespace": "plain"}), app()));
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_null());
    assert!(p["spec"]["initContainers"].is_null());

    let annotated = pod(
        json!({"name": "x", "namespace": "plain", "annotations": {INJECT_ANNOTATION: "true"}}),
        app(),
    );
    let (_, p) = run(&annotated);
    sidecar(&p);

    let opted_out = pod(
        json!({"name": "x", "annotations": {INJECT_ANNOTATION: "false"}}),
        app(),
    );
    let (resp, _) = run(&opted_out);
    assert!(
        resp["patch"].is_null(),
        "false opts out even in a labelled namespace"
    );
}

#[test]
fn injection_is_idempotent_and_reinvocation_only_fills_in_env() {
    let (_, once) = run(&pod(json!({"name": "web-1"}), app()));
    let (resp, twice) = run(&once);
    assert!(resp["patch"].is_null(), "nothing left to do: {resp}");
    assert_eq!(once, twice);
    // Another webhook added a container after us; on re-invocation it gets the env only.
    let mut more = once.clone();
    more["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "late", "image": "x"}));
    let (_, p) = run(&more);
    assert_eq!(
        p["spec"]["initContainers"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        p["spec"]["containers"][1]["env"][0]["name"],
        "OPENAI_BASE_URL"
    );
}

#[test]
fn an_app_keeps_the_base_url_it_set() {
    let containers = json!([{"name": "app", "image": "shop:1", "env": [{"name": "OPENAI_BASE_URL", "value": "https://proxy.example/v1"}]}]);
    let (_, p) = run(&pod(
        json!({"name": "web-1", "labels": {"app": "web"}, "annotations": {"a": "b"}}),
        containers,
    ));
    let env = p["spec"]["containers"][0]["env"].as_array().expect("env");
    assert_eq!(env[0]["value"], "https://proxy.example/v1");
    assert_eq!(
        env.iter()
            .filter(|e| e["name"] == "OPENAI_BASE_URL")
            .count(),
        1
    );
    assert!(env.iter().any(|e| e["name"] == "ANTHROPIC_BASE_URL"));
    assert_eq!(
        p["metadata"]["labels"]["app"], "web",
        "existing labels kept"
    );
    assert_eq!(
        p["metadata"]["annotations"]["a"], "b",
        "existing annotations kept"
    );
}

#[test]
fn the_sidecar_goes_before_existing_init_containers() {
    let mut p = pod(json!({"name": "web-1"}), app());
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let (_, p) = run(&p);
    assert_eq!(p["spec"]["initContainers"][0]["name"], CONTAINER);
    assert_eq!(p["spec"]["initContainers"][1]["name"], "migrate");
    assert_eq!(p["spec"]["volumes"].as_array().map(Vec::len), Some(4));
}

#[test]
fn resources_can_be_overridden_per_pod_and_bad_values_are_refused() {
    let ok = pod(
        json!({"name": "w", "annotations": {"sluice.dev/sidecar-memory-limit": "256Mi", "sluice.dev/sidecar-cpu-request": "100m"}}),
        app(),
    );
    let (_, p) = run(&ok);
    assert_eq!(sidecar(&p)["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(sidecar(&p)["resources"]["requests"]["cpu"], "100m");
    let bad = pod(
        json!({"name": "w", "annotations": {"sluice.dev/sidecar-memory-limit": "lots"}}),
        app(),
    );
    let (resp, _) = run(&bad);
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains("sluice.dev/sidecar-memory-limit")
            && msg.contains("not a Kubernetes quantity"),
        "{msg}"
    );
}

#[test]
fn the_cpu_limit_sets_the_sidecars_worker_threads() {
    let workers = |annotations: Value| {
        let (_, p) = run(&pod(
            json!({"name": "w", "annotations": annotations}),
            app(),
        ));
        sidecar(&p)["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--workers="))
            .map(str::to_owned)
    };
    // The chart's default limit is one CPU: the sidecar's default, one worker.
    assert_eq!(workers(json!({})), None);
    assert_eq!(
        workers(json!({"sluice.dev/sidecar-cpu-limit": "500m"})),
        None
    );
    assert_eq!(
        workers(json!({"sluice.dev/sidecar-cpu-limit": "2"})).as_deref(),
        Some("2")
    );
    assert_eq!(
        workers(json!({"sluice.dev/sidecar-cpu-limit": "1500m"})).as_deref(),
        Some("2")
    );
    assert_eq!(cpu_limit_workers(&json!({"limits": {"cpu": "1000"}})), 64);
    assert_eq!(cpu_limit_workers(&json!({"limits": {"cpu": "2k"}})), 64);
    assert_eq!(cpu_limit_workers(&json!({"limits": {"cpu": "2.5"}})), 3);
    assert_eq!(cpu_limit_workers(&json!({"limits": {"memory": "1Gi"}})), 1);
}

#[test]
fn malformed_reviews_are_errors_not_panics() {
    assert!(matches!(
        review(b"not json", &labels, &cfg()),
        Err(WebhookError::NotAReview(_))
    ));
    let no_request = serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .expect("json");
    assert!(review(&no_request, &labels, &cfg()).is_err());
    // A pod whose spec is not a pod is denied with the reason, not injected.
    let mut weird = pod(json!({"name": "w"}), app());
    weird["spec"]["containers"] = json!("not a list");
    let out: Value =
        serde_json::from_slice(&review(&review_of(&weird), &labels, &cfg()).expect("answered"))
            .expect("json");
    assert_eq!(out["response"]["allowed"], false);
    assert!(
        out["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be read"))
    );
}

#[test]
fn quantities_are_recognised() {
    for ok in ["1", "100m", "0.5", "64Mi", "1Gi", "2k"] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["", "lots", "1 Gi", "-1", "1GB", "Mi"] {
        assert!(!is_quantity(bad), "{bad}");
    }
}
