//! The Helm chart, checked with the real `helm` binary: it lints, renders
//! with every toggle, refuses bad values, and what it renders is what a
//! careful cluster admin would approve (restricted containers, no RBAC
//! wildcards, the webhook never sent its own namespace, the generated CRDs).
//!
//! `scripts/test` installs helm (../shared/tools/get-helm) and sets
//! `SLUICE_HELM`.

use std::process::Command;

use serde_json::Value;
use sluice_tests::tools::{chart, helm};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).output().expect("helm runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TOGGLES: [&[&str]; 6] = [
    &[],
    &["--set", "certificates.certManager.enabled=true"],
    &[
        "--set",
        "certificates.certManager.enabled=true",
        "--set",
        "certificates.certManager.issuerRef.kind=ClusterIssuer",
        "--set",
        "certificates.certManager.issuerRef.name=corp-ca",
    ],
    &[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ],
    &[
        "--set",
        "networkPolicy.enabled=false",
        "--set",
        "webhook.failurePolicy=Fail",
    ],
    &[
        "--set",
        "operator.watchNamespace=shop",
        "--set",
        "operator.replicas=3",
    ],
];

fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "sluice",
        chart.to_str().expect("utf-8 path"),
        "-n",
        "sluice-system",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(&args);
    assert!(ok, "helm template {extra:?} failed: {err}");
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn the_chart_lints_strictly_with_every_toggle() {
    let chart = chart();
    for extra in TOGGLES {
        let mut args = vec!["lint", "--strict", chart.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let (ok, out, err) = run(&args);
        assert!(ok, "helm lint {extra:?}: {out}{err}");
    }
}

#[test]
fn bad_values_fail_at_install() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    for (set, why) in [
        ("operator.replicas=0", "minimum"),
        ("webhook.failurePolicy=Maybe", "failurePolicy"),
        ("operator.reportInterval=2 seconds", "reportInterval"),
        ("sidecar.resources.limits.memory=lots", "memory"),
        ("operater.replicas=2", "operater"),
    ] {
        let (ok, _, err) = run(&["template", "t", chart, "--set", set]);
        assert!(!ok, "{set} should be refused");
        assert!(err.contains(why), "{set}: {err}");
    }
}

fn containers(doc: &Value) -> Vec<&Value> {
    let spec = &doc["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn every_container_runs_restricted() {
    for extra in TOGGLES {
        let docs = render(extra);
        let workloads: Vec<&Value> = docs
            .iter()
            .filter(|d| {
                matches!(
                    d["kind"].as_str(),
                    Some("Deployment" | "DaemonSet" | "StatefulSet" | "Job")
                )
            })
            .collect();
        assert!(!workloads.is_empty());
        for w in workloads {
            assert_eq!(
                w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
                true
            );
            for c in containers(w) {
                let sc = &c["securityContext"];
                let name = &c["name"];
                assert_eq!(sc["runAsNonRoot"], true, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
                assert!(
                    sc["privileged"].is_null() || sc["privileged"] == false,
                    "{name}"
                );
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{name} has a memory limit"
                );
                assert!(
                    c["readinessProbe"].is_object() && c["livenessProbe"].is_object(),
                    "{name} has probes"
                );
            }
        }
    }
}

#[test]
fn rbac_names_every_verb_and_resource() {
    for extra in TOGGLES {
        for doc in render(extra) {
            if !matches!(doc["kind"].as_str(), Some("Role" | "ClusterRole")) {
                continue;
            }
            for rule in doc["rules"].as_array().expect("rules") {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values = rule[field].as_array().expect("a list");
                    assert!(!values.is_empty(), "{field} empty in {rule}");
                    assert!(
                        values.iter().all(|v| v != "*"),
                        "wildcard {field} in {}: {rule}",
                        doc["metadata"]["name"]
                    );
                }
                assert!(rule["nonResourceURLs"].is_null());
                // The operator never writes specs, only status.
                let writes = rule["verbs"]
                    .as_array()
                    .expect("verbs")
                    .iter()
                    .any(|v| v == "update" || v == "patch");
                let sluice = rule["apiGroups"]
                    .as_array()
                    .expect("groups")
                    .iter()
                    .any(|g| g == "sluice.dev");
                if writes && sluice {
                    for r in rule["resources"].as_array().expect("resources") {
                        assert!(
                            r.as_str().is_some_and(|r| r.ends_with("/status")),
                            "writes {r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_webhook_never_sees_its_own_namespace_or_kube_system() {
    for extra in TOGGLES {
        let docs = render(extra);
        let hook = docs
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .expect("a webhook configuration");
        let w = &hook["webhooks"][0];
        let exprs = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .expect("namespace selector");
        let excluded = exprs
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
            .expect("excludes namespaces by name");
        let names: Vec<&str> = excluded["values"]
            .as_array()
            .expect("values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            names.contains(&"sluice-system") && names.contains(&"kube-system"),
            "{names:?}"
        );
        assert_eq!(w["clientConfig"]["service"]["path"], "/mutate-pods");
        assert_eq!(w["sideEffects"], "None");
        let expected = if extra.contains(&"webhook.failurePolicy=Fail") {
            "Fail"
        } else {
            "Ignore"
        };
        assert_eq!(w["failurePolicy"], expected);
        let cert_manager = extra
            .iter()
            .any(|a| a.starts_with("certificates.certManager.enabled=true"));
        assert_eq!(
            hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_string(),
            cert_manager,
            "cert-manager injects the CA only when enabled"
        );
    }
}

#[test]
fn the_operator_is_highly_available() {
    let docs = render(&[]);
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
    let pdb = docs
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .expect("a PDB");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

/// Sidecars reach the leader alone (its pod carries `sluice.dev/leader`),
/// the API server reaches the webhook on either replica, and the
/// certificate names both Services.
#[test]
fn sidecars_reach_the_leader_and_the_webhook_every_replica() {
    let docs = render(&["--set", "certificates.certManager.enabled=true"]);
    let service = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("a Service {name}"))
            .clone()
    };
    let ports = |s: &Value| -> Vec<String> {
        s["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p["name"].as_str().expect("port name").to_owned())
            .collect()
    };
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    let distribution = service("sluice-operator");
    assert_eq!(ports(&distribution), ["distribution"]);
    let selector = distribution["spec"]["selector"]
        .as_object()
        .expect("selector");
    assert_eq!(selector["sluice.dev/leader"], "true");
    assert!(
        pod_labels.get("sluice.dev/leader").is_none(),
        "the operator sets the leader label, not the template"
    );
    for (k, v) in selector.iter().filter(|(k, _)| *k != "sluice.dev/leader") {
        assert_eq!(&pod_labels[k], v, "the Service selects the operator's pods");
    }

    let hook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("a webhook configuration");
    let hook_service = hook["webhooks"][0]["clientConfig"]["service"]["name"]
        .as_str()
        .expect("a service name");
    let webhook = service(hook_service);
    assert!(ports(&webhook).contains(&"webhook".to_owned()));
    assert!(
        webhook["spec"]["selector"]
            .get("sluice.dev/leader")
            .is_none()
    );
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let env_value = |name: &str| {
        env.as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("env {name}"))
            .to_owned()
    };
    assert_eq!(env_value("SLUICE_WEBHOOK_SERVICE_NAME"), hook_service);
    assert_eq!(env_value("SLUICE_SERVICE_NAME"), "sluice-operator");

    let cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .expect("a Certificate");
    let names: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for host in [
        "sluice-operator.sluice-system.svc".to_owned(),
        format!("{hook_service}.sluice-system.svc"),
    ] {
        assert!(names.contains(&host.as_str()), "{host} in {names:?}");
    }
}

#[test]
fn the_chart_ships_exactly_the_generated_crds() {
    let docs = render(&[]);
    let rendered: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let generated = sluice_crds::crd::all();
    assert_eq!(rendered.len(), generated.len());
    for (_, crd) in generated {
        let want = serde_json::to_value(&crd).expect("serializes");
        let name = &want["metadata"]["name"];
        let got = rendered
            .iter()
            .find(|d| &d["metadata"]["name"] == name)
            .expect("rendered");
        assert_eq!(*got, &want, "{name} differs from the generated CRD");
    }
}

#[test]
fn optional_monitoring_renders_a_dashboard_with_the_key_panels() {
    let docs = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ]);
    assert!(docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
    let cm = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("dashboard ConfigMap");
    let dash: Value = serde_json::from_str(cm["data"]["sluice.json"].as_str().expect("json"))
        .expect("valid JSON");
    let titles: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str().map(str::to_lowercase))
        .collect();
    for want in [
        "requests",
        "errors",
        "p95",
        "first token",
        "tokens",
        "cost",
        "cache",
        "fallbacks",
        "breakers",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want}: {titles:?}"
        );
    }
    assert!(
        render(&[]).iter().all(|d| d["kind"] != "ServiceMonitor"),
        "off by default"
    );
}
