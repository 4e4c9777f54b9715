//! Serving the injection webhook: `POST /mutate-pods` on the webhook port.
//! The decision itself is the pure [`crate::webhook::review`]; this module
//! reads the request, looks up the namespace's labels and answers.
//!
//! What the sidecar looks like comes from the environment the chart sets:
//! `SLUICE_SIDECAR_IMAGE`, `SLUICE_SIDECAR_IMAGE_PULL_POLICY`,
//! `SLUICE_SIDECAR_RESOURCES` (JSON `{requests, limits}`),
//! `SLUICE_SIDECAR_TOKEN_EXPIRY_SECONDS`, and `SLUICE_SERVICE_HOST` (the
//! operator Service, from which the distribution URL is formed).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::Api;

use crate::distribute::Body;
use crate::webhook::{self, Injection};

/// The largest AdmissionReview accepted (pods with huge specs exist, but
/// not this huge).
const MAX_REVIEW: usize = 4 << 20;

/// The injection settings from the environment, with the operator's CA.
pub fn injection_from_env(ca_pem: &str, distribution_port: u16) -> Injection {
    let mut cfg = Injection {
        ca_pem: ca_pem.to_owned(),
        ..Injection::default()
    };
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(v) = var("SLUICE_SIDECAR_IMAGE") {
        cfg.image = v;
    }
    if let Some(v) = var("SLUICE_SIDECAR_IMAGE_PULL_POLICY") {
        cfg.image_pull_policy = v;
    }
    if let Some(v) = var("SLUICE_SIDECAR_RESOURCES") {
        match serde_json::from_str::<BTreeMap<String, BTreeMap<String, serde_json::Value>>>(&v) {
            Ok(r) => {
                cfg.resources = r
                    .into_iter()
                    .map(|(k, m)| {
                        let m = m
                            .into_iter()
                            .map(|(r, q)| {
                                (r, q.as_str().map_or_else(|| q.to_string(), str::to_owned))
                            })
                            .collect();
                        (k, m)
                    })
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "SLUICE_SIDECAR_RESOURCES is not JSON; using defaults")
            }
        }
    }
    if let Some(v) = var("SLUICE_SIDECAR_TOKEN_EXPIRY_SECONDS").and_then(|v| v.parse().ok()) {
        cfg.token_expiry_seconds = v;
    }
    if let Some(host) = var("SLUICE_SERVICE_HOST") {
        cfg.operator_url = format!("https://{host}:{distribution_port}");
    }
    cfg
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    respond(
        status,
        serde_json::to_vec(&serde_json::json!({"error": message})).unwrap_or_default(),
    )
}

/// Answers one request on the webhook port.
pub async fn handle(req: Request<Incoming>, client: Client, cfg: Arc<Injection>) -> Response<Body> {
    if req.method() != Method::POST || req.uri().path() != "/mutate-pods" {
        return error(
            StatusCode::NOT_FOUND,
            "only POST /mutate-pods is served here",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the AdmissionReview is too large",
            );
        }
    };
    // The namespace's labels decide unless the pod says otherwise.
    let namespace = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/request/namespace")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        });
    let labels = match &namespace {
        Some(ns) => match Api::<Namespace>::all(client).get_opt(ns).await {
            Ok(n) => n.and_then(|n| n.metadata.labels),
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "cannot read the namespace; judging by the pod alone");
                None
            }
        },
        None => None,
    };
    let labels: BTreeMap<String, String> = labels.unwrap_or_default();
    match webhook::review(&body, &|_| Some(labels.clone()), &cfg) {
        Ok(out) => respond(StatusCode::OK, out),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Sets `caBundle` of every webhook of the MutatingWebhookConfiguration
/// `name` to the operator's CA (a JSON patch per webhook, so other fields
/// and other managers' webhooks stay as they are).
pub async fn publish_ca_bundle(
    client: Client,
    name: &str,
    ca_pem: &str,
) -> Result<(), kube::Error> {
    use base64::Engine;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Patch, PatchParams};
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let Some(current) = api.get_opt(name).await? else {
        tracing::warn!(webhook = %name, "the injection webhook configuration does not exist (yet)");
        return Ok(());
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let ops: Vec<serde_json::Value> = (0..current.webhooks.as_ref().map_or(0, Vec::len))
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    tracing::info!(webhook = %name, "injection webhook trusts the operator's CA");
    Ok(())
}
