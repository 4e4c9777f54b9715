//! Sidecar injection: a mutating admission webhook on pod creation.
//!
//! A pod gets the Sluice sidecar when its namespace is labelled
//! `sluice.dev/inject=enabled` or the pod is annotated
//! `sluice.dev/inject: "true"`; the annotation `"false"` opts out either
//! way. The sidecar is a native sidecar (an init container with
//! `restartPolicy: Always`) so it starts before the app and stops after it.
//!
//! [`review`] is pure: AdmissionReview JSON in, AdmissionReview JSON out
//! (with a JSONPatch). It is idempotent: a pod that already has the sidecar
//! only gets the environment variables its containers still lack, which is
//! what a re-invocation needs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde_json::{Value, json};

/// Namespace label that turns injection on.
pub const NAMESPACE_LABEL: &str = "sluice.dev/inject";
/// Pod annotation that turns injection on (`"true"`) or off (`"false"`).
pub const INJECT_ANNOTATION: &str = "sluice.dev/inject";
/// Annotation and label set on injected pods; the operator watches the label.
pub const INJECTED_ANNOTATION: &str = "sluice.dev/injected";
pub const SIDECAR_LABEL: &str = "sluice.dev/sidecar";
/// Annotation carrying the operator's CA, projected into the sidecar as a file.
pub const CA_ANNOTATION: &str = "sluice.dev/operator-ca";
/// Name of the sidecar container.
pub const CONTAINER: &str = "sluice-sidecar";

/// Annotations that override the sidecar's resources, per pod.
pub const RESOURCE_ANNOTATIONS: [(&str, &str, &str); 4] = [
    ("sluice.dev/sidecar-cpu-request", "requests", "cpu"),
    ("sluice.dev/sidecar-memory-request", "requests", "memory"),
    ("sluice.dev/sidecar-cpu-limit", "limits", "cpu"),
    ("sluice.dev/sidecar-memory-limit", "limits", "memory"),
];

/// What the injected sidecar looks like; from the chart's values.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    pub image: String,
    pub image_pull_policy: String,
    /// The distribution server as sidecars reach it.
    pub operator_url: String,
    /// PEM of the CA that signed the distribution server's certificate.
    pub ca_pem: String,
    /// `requests`/`limits` → `cpu`/`memory` → quantity.
    pub resources: BTreeMap<String, BTreeMap<String, String>>,
    /// Lifetime of the projected ServiceAccount token.
    pub token_expiry_seconds: i64,
    pub extra_args: Vec<String>,
}

impl Default for Injection {
    fn default() -> Self {
        let q = |cpu: &str, mem: &str| -> BTreeMap<String, String> {
            [
                ("cpu".to_string(), cpu.to_string()),
                ("memory".to_string(), mem.to_string()),
            ]
            .into()
        };
        Self {
            image: "ghcr.io/sluice-dev/sluice-sidecar:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            operator_url: "https://sluice-operator.sluice-system.svc:8443".into(),
            ca_pem: String::new(),
            resources: [
                ("requests".to_string(), q("50m", "32Mi")),
                ("limits".to_string(), q("1", "128Mi")),
            ]
            .into(),
            token_expiry_seconds: 3600,
            extra_args: Vec::new(),
        }
    }
}

/// Why a review could not be answered at all (the HTTP layer answers 400).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is not an AdmissionReview: {0}")]
    NotAReview(serde_json::Error),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Answers one AdmissionReview. `namespace_labels` gives the labels of the
/// pod's namespace (the webhook caches namespaces).
pub fn review(
    body: &[u8],
    namespace_labels: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
    cfg: &Injection,
) -> Result<Vec<u8>, WebhookError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(WebhookError::NotAReview)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| WebhookError::NoRequest)?;
    let verdict = decide(&request, namespace_labels, cfg);
    serde_json::to_vec(&verdict.into_review(&request.uid)).map_err(WebhookError::NotAReview)
}

/// What the webhook answers.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Allow,
    Patch(Vec<Value>),
    Deny(String),
}

impl Verdict {
    /// The AdmissionReview response. Written by hand rather than with
    /// kube's `AdmissionResponse`, which serializes `patch` as an array of
    /// numbers where the API server requires base64 (kube-rs/kube#1781).
    fn into_review(self, uid: &str) -> Value {
        use base64::Engine;
        let mut response = json!({"uid": uid, "allowed": true});
        match self {
            Verdict::Allow => {}
            Verdict::Patch(ops) => {
                let bytes = serde_json::to_vec(&Value::Array(ops)).unwrap_or_default();
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            Verdict::Deny(message) => {
                response["allowed"] = json!(false);
                response["status"] =
                    json!({"code": 403, "reason": "Forbidden", "message": message});
            }
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }
}

fn decide(
    req: &AdmissionRequest<DynamicObject>,
    namespace_labels: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
    cfg: &Injection,
) -> Verdict {
    if req.operation != Operation::Create || req.kind.kind != "Pod" {
        return Verdict::Allow;
    }
    let Some(obj) = req.object.as_ref() else {
        return Verdict::Deny("the review carries no pod".into());
    };
    let pod: Pod = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return Verdict::Deny(format!("the pod could not be read: {e}")),
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let wanted = match annotations.get(INJECT_ANNOTATION).map(String::as_str) {
        Some("false") => false,
        Some("true") => true,
        _ => namespace_labels(&namespace)
            .and_then(|l| l.get(NAMESPACE_LABEL).cloned())
            .is_some_and(|v| v == "enabled"),
    };
    if !wanted {
        return Verdict::Allow;
    }
    match patch(&pod, cfg) {
        Err(msg) => Verdict::Deny(msg),
        Ok(ops) if ops.is_empty() => Verdict::Allow,
        Ok(ops) => Verdict::Patch(ops),
    }
}

/// The JSONPatch operations that inject the sidecar into `pod`.
pub fn patch(pod: &Pod, cfg: &Injection) -> Result<Vec<Value>, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let mut ops = Vec::new();
    let already = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == CONTAINER);
    if !already {
        let resources = resources(cfg, &annotations)?;
        let sidecar = sidecar_container(cfg, resources);
        if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}));
        } else {
            // Native sidecars start in order: put it first so other init
            // containers can already use it.
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}));
        }
        let volumes = volumes(cfg);
        if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
        } else {
            for v in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
            }
        }
        let mut marks = vec![(INJECTED_ANNOTATION, "true".to_string())];
        marks.push((CA_ANNOTATION, cfg.ca_pem.clone()));
        if pod.metadata.annotations.is_none() {
            let map: serde_json::Map<String, Value> = marks
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
        } else {
            for (k, v) in marks {
                ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(k)), "value": v}));
            }
        }
        if pod.metadata.labels.is_none() {
            ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {SIDECAR_LABEL: "injected"}}));
        } else {
            ops.push(json!({"op": "add", "path": format!("/metadata/labels/{}", escape(SIDECAR_LABEL)), "value": "injected"}));
        }
    }
    let env = [
        ("OPENAI_BASE_URL", "http://127.0.0.1:4100/v1"),
        // The SDKs refuse to start without a key; the sidecar holds the real ones.
        ("OPENAI_API_KEY", "sluice-sidecar"),
        ("ANTHROPIC_BASE_URL", "http://127.0.0.1:4100"),
    ];
    for (i, c) in spec.containers.iter().enumerate() {
        let have: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        let missing: Vec<Value> = env
            .iter()
            .filter(|(k, _)| !have.contains(k))
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if c.env.as_ref().is_none_or(Vec::is_empty) {
            ops.push(
                json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": missing}),
            );
        } else {
            for m in missing {
                ops.push(
                    json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": m}),
                );
            }
        }
    }
    Ok(ops)
}

/// JSON Pointer escaping of one path segment.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn resources(cfg: &Injection, annotations: &BTreeMap<String, String>) -> Result<Value, String> {
    let mut r = cfg.resources.clone();
    for (annotation, kind, resource) in RESOURCE_ANNOTATIONS {
        if let Some(v) = annotations.get(annotation) {
            if !is_quantity(v) {
                return Err(format!(
                    "annotation {annotation}: {v:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)"
                ));
            }
            r.entry(kind.to_string())
                .or_default()
                .insert(resource.to_string(), v.clone());
        }
    }
    serde_json::to_value(r).map_err(|e| e.to_string())
}

/// Whether `s` is a resource quantity: a decimal number with an optional
/// SI or binary suffix.
fn is_quantity(s: &str) -> bool {
    quantity(s).is_some()
}

/// The value of a resource quantity in base units (`1500m` → 1.5,
/// `64Mi` → 67108864), or `None` when `s` is not a decimal number with an
/// optional SI or binary suffix.
fn quantity(s: &str) -> Option<f64> {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Runtime workers for a sidecar under `resources`: its CPU limit rounded
/// up to whole CPUs (`1500m` → 2), 1 without a limit or below one CPU, at
/// most 64.
fn cpu_limit_workers(resources: &Value) -> u32 {
    match resources["limits"]["cpu"].as_str().and_then(quantity) {
        Some(c) if c.is_finite() && c > 1.0 => c.ceil().min(64.0) as u32,
        _ => 1,
    }
}

const TOKEN_DIR: &str = "/var/run/sluice/token";
const CA_DIR: &str = "/var/run/sluice/ca";
const STATE_DIR: &str = "/var/run/sluice/state";

fn sidecar_container(cfg: &Injection, resources: Value) -> Value {
    let mut args = vec![
        "--listen=127.0.0.1:4100".to_string(),
        "--admin=0.0.0.0:4101".to_string(),
        format!("--operator={}", cfg.operator_url),
        format!("--ca-file={CA_DIR}/ca.crt"),
        format!("--token-file={TOKEN_DIR}/token"),
        format!("--state-dir={STATE_DIR}"),
    ];
    // One runtime worker per whole CPU of the limit (the sidecar's default
    // is one), unless the chart's extra arguments set it.
    let workers = cpu_limit_workers(&resources);
    if workers > 1 && !cfg.extra_args.iter().any(|a| a.starts_with("--workers")) {
        args.push(format!("--workers={workers}"));
    }
    args.extend(cfg.extra_args.iter().cloned());
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "sluice-admin"}, "periodSeconds": 5, "failureThreshold": 3});
    json!({
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "restartPolicy": "Always",
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [{"name": "sluice-admin", "containerPort": 4101, "protocol": "TCP"}],
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "sluice-admin"}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": probe("/readyz"),
        "livenessProbe": probe("/healthz"),
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "sluice-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "sluice-ca", "mountPath": CA_DIR, "readOnly": true},
            {"name": "sluice-state", "mountPath": STATE_DIR},
        ],
    })
}

fn volumes(cfg: &Injection) -> Vec<Value> {
    vec![
        json!({"name": "sluice-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "sluice", "expirationSeconds": cfg.token_expiry_seconds, "path": "token"}}]}}),
        json!({"name": "sluice-ca", "downwardAPI": {"items": [{
            "path": "ca.crt", "fieldRef": {"fieldPath": format!("metadata.annotations['{CA_ANNOTATION}']")}}]}}),
        json!({"name": "sluice-state", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
    ]
}

#[cfg(test)]
mod tests;
