//! Mutating admission webhooks, called on pod creation the way the real
//! server calls them: every matching webhook of every
//! `MutatingWebhookConfiguration` (in name order) gets an
//! `admission.k8s.io/v1` AdmissionReview and its base64 JSONPatch is applied.
//!
//! Where a webhook is reached:
//! - `clientConfig.url`: that URL. `http://` is accepted too (the real
//!   server insists on https) so tests can use a plain loopback server.
//! - `clientConfig.service {namespace, name, port, path}`: the address the
//!   emulator was given for `name.namespace`
//!   ([`EmulatorOptions::webhook_services`](super::EmulatorOptions)), over
//!   https, verifying the serving certificate against `caBundle` for the
//!   server name `name.namespace.svc` — what the real server checks.
//!
//! `namespaceSelector`, `objectSelector`, `rules` (CREATE on pods),
//! `failurePolicy` (default Fail) and `timeoutSeconds` (default 10) are
//! honoured; `reinvocationPolicy: IfNeeded` webhooks are called once more
//! when a later webhook changed the pod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::selector::selector_object_matches;
use super::server::Shared;
use super::store::ObjectKey;

/// Why a webhook call produced no usable answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    BadResponse(String),
}

/// Runs the mutating webhooks for a pod being created in `namespace`.
pub async fn admit_pod(shared: &Shared, namespace: &str, pod: Value) -> ApiResult<Value> {
    let (configs, namespace_labels) = {
        let state = shared.lock();
        let mut configs = state.store.list(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
        );
        configs.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        let key = ObjectKey {
            group: String::new(),
            plural: "namespaces".to_string(),
            namespace: String::new(),
            name: namespace.to_string(),
        };
        let labels = state
            .store
            .get(&key)
            .map(|ns| ns["metadata"]["labels"].clone())
            .unwrap_or(Value::Null);
        (configs, labels)
    };
    let webhooks: Vec<Value> = configs
        .iter()
        .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
        .filter(|w| {
            rules_match(w) && selector_object_matches(&w["namespaceSelector"], &namespace_labels)
        })
        .collect();
    let mut pod = pod;
    let mut reinvoke = Vec::new();
    for webhook in &webhooks {
        if !selector_object_matches(&webhook["objectSelector"], &pod["metadata"]["labels"]) {
            continue;
        }
        pod = invoke(shared, webhook, namespace, pod).await?;
        if webhook["reinvocationPolicy"].as_str() == Some("IfNeeded") {
            reinvoke.push((webhook, pod.clone()));
        }
    }
    // An IfNeeded webhook is called once more when a later one changed the
    // pod after it ran.
    for (webhook, seen) in reinvoke {
        if seen != pod
            && selector_object_matches(&webhook["objectSelector"], &pod["metadata"]["labels"])
        {
            pod = invoke(shared, webhook, namespace, pod).await?;
        }
    }
    Ok(pod)
}

/// Whether a webhook's rules select CREATE of core/v1 pods.
fn rules_match(webhook: &Value) -> bool {
    let has = |list: &Value, wanted: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v == "*" || v == wanted))
    };
    webhook["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| {
            has(&rule["operations"], "CREATE")
                && has(&rule["apiGroups"], "")
                && has(&rule["apiVersions"], "v1")
                && (has(&rule["resources"], "pods") || has(&rule["resources"], "*"))
        })
}

async fn invoke(shared: &Shared, webhook: &Value, namespace: &str, pod: Value) -> ApiResult<Value> {
    let name = webhook["name"].as_str().unwrap_or("").to_string();
    let timeout = Duration::from_secs(webhook["timeoutSeconds"].as_u64().unwrap_or(10));
    let review = review_request(namespace, &pod);
    let outcome = match tokio::time::timeout(
        timeout,
        call(shared, &webhook["clientConfig"], &review),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(CallError::Transport(
            "context deadline exceeded".to_string(),
        )),
    };
    let ignore = webhook["failurePolicy"].as_str() == Some("Ignore");
    let response = match outcome {
        Ok(response) => response,
        Err(error) if ignore => {
            tracing::warn!(webhook = %name, %error, "webhook failed; failurePolicy Ignore");
            return Ok(pod);
        }
        Err(error) => {
            return Err(ApiError::internal(format!(
                "Internal error occurred: failed calling webhook \"{name}\": {error}"
            )));
        }
    };
    let answer = &response["response"];
    if answer["allowed"].as_bool() != Some(true) {
        let message = answer["status"]["message"].as_str().unwrap_or("");
        let code = answer["status"]["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(400);
        let mut error = ApiError::bad_request(format!(
            "admission webhook \"{name}\" denied the request: {message}"
        ));
        error.code = code;
        error.reason = if code == 403 {
            "Forbidden"
        } else {
            "BadRequest"
        };
        return Err(error);
    }
    let Some(encoded) = answer["patch"].as_str() else {
        return Ok(pod);
    };
    let bad_patch = |why: String| {
        ApiError::internal(format!(
            "Internal error occurred: admission webhook \"{name}\" returned an invalid patch: {why}"
        ))
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad_patch(e.to_string()))?;
    let patch: json_patch::Patch =
        serde_json::from_slice(&raw).map_err(|e| bad_patch(e.to_string()))?;
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch).map_err(|e| bad_patch(e.to_string()))?;
    Ok(patched)
}

fn review_request(namespace: &str, pod: &Value) -> Value {
    let uid = format!(
        "{:032x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// Where and how to reach a webhook.
struct Target {
    addr: String,
    server_name: String,
    path: String,
    tls: bool,
}

fn resolve(shared: &Shared, client_config: &Value) -> Result<Target, CallError> {
    if let Some(url) = client_config["url"].as_str() {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| CallError::Transport(format!("bad url {url}: {e}")))?;
        let tls = uri.scheme_str() != Some("http");
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        return Ok(Target {
            addr: format!("{host}:{port}"),
            server_name: host,
            path: uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".to_string()),
            tls,
        });
    }
    let service = &client_config["service"];
    let (Some(name), Some(namespace)) = (service["name"].as_str(), service["namespace"].as_str())
    else {
        return Err(CallError::Transport(
            "clientConfig has neither url nor service".to_string(),
        ));
    };
    let addr: SocketAddr = *shared
        .webhook_services
        .get(&format!("{name}.{namespace}"))
        .ok_or_else(|| CallError::Transport(format!("service \"{name}.{namespace}\" is not mapped to an address (EmulatorOptions::webhook_services)")))?;
    Ok(Target {
        addr: addr.to_string(),
        server_name: format!("{name}.{namespace}.svc"),
        path: service["path"].as_str().unwrap_or("/").to_string(),
        tls: true,
    })
}

async fn call(shared: &Shared, client_config: &Value, review: &Value) -> Result<Value, CallError> {
    let target = resolve(shared, client_config)?;
    let stream = tokio::net::TcpStream::connect(&target.addr)
        .await
        .map_err(|e| CallError::Transport(format!("dial tcp {}: {e}", target.addr)))?;
    let request = hyper::Request::post(&target.path)
        .header(hyper::header::HOST, &target.server_name)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let body = if target.tls {
        let connector = tls_connector(client_config)?;
        let server_name = rustls::pki_types::ServerName::try_from(target.server_name.clone())
            .map_err(|e| CallError::Transport(format!("bad server name: {e}")))?;
        let tls = connector
            .connect(server_name, stream)
            .await
            .map_err(|e| CallError::Transport(format!("tls: {e}")))?;
        send(tls, request).await?
    } else {
        send(stream, request).await?
    };
    serde_json::from_slice(&body)
        .map_err(|e| CallError::BadResponse(format!("decoding AdmissionReview: {e}")))
}

async fn send<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<Bytes, CallError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "webhook connection ended");
        }
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(CallError::BadResponse(format!(
            "webhook answered HTTP {status}"
        )));
    }
    Ok(body)
}

fn tls_connector(client_config: &Value) -> Result<tokio_rustls::TlsConnector, CallError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let encoded = client_config["caBundle"].as_str().ok_or_else(|| {
        CallError::Transport(
            "https webhook without caBundle (the emulator has no system roots)".to_string(),
        )
    })?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| CallError::Transport(format!("caBundle is not base64: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CallError::Transport(format!("caBundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| CallError::Transport(format!("caBundle: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CallError::Transport(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
