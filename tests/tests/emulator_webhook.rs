//! Mutating admission webhooks called by the emulator on pod creation: a
//! plain loopback webhook reached by URL, and an https one reached through
//! `clientConfig.service` and verified against `caBundle`.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use common::Cluster;
use http_body_util::{BodyExt as _, Full};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use sluice_tests::emulator::EmulatorOptions;

/// Every AdmissionReview request the webhook received.
type Seen = Arc<Mutex<Vec<Value>>>;

/// Allows pods (adding label `injected=<tag>`) except one named `denied`.
fn review_response(review: &Value, tag: &str) -> Value {
    let request = &review["request"];
    let uid = request["uid"].clone();
    if request["object"]["metadata"]["name"] == "denied" {
        return json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": false, "status": {"code": 403, "message": "pods named denied are not welcome"}}});
    }
    let patch = if request["object"]["metadata"]["labels"].is_object() {
        json!([{"op": "add", "path": "/metadata/labels/injected", "value": tag}])
    } else {
        json!([{"op": "add", "path": "/metadata/labels", "value": {"injected": tag}}])
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": encoded}})
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Seen,
    tag: &'static str,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = review_response(&review, tag);
    seen.lock().expect("seen lock").push(review);
    Ok(hyper::Response::new(Full::new(Bytes::from(
        response.to_string(),
    ))))
}

/// Serves the webhook on a loopback port, over TLS when `tls` is given.
async fn start_webhook(
    tls: Option<tokio_rustls::TlsAcceptor>,
    tag: &'static str,
) -> (std::net::SocketAddr, Seen, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind webhook");
    let addr = listener.local_addr().expect("webhook addr");
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, log.clone(), tag));
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls_stream) => {
                            builder
                                .serve_connection(hyper_util::rt::TokioIo::new(tls_stream), service)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    (addr, seen, task)
}

fn webhook_configuration(name: &str, client_config: Value, failure_policy: &str) -> String {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": format!("{name}.example.com"),
            "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"sluice.dev/inject": "enabled"}},
            "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    })
    .to_string()
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))
    .expect("pod")
}

fn injected(pod: &Pod) -> Option<String> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("injected").cloned())
}

async fn labelled_namespace(cluster: &Cluster, name: &str) {
    cluster.kubectl_ok(&["create", "namespace", name]).await;
    cluster
        .kubectl_ok(&["label", "namespace", name, "sluice.dev/inject=enabled"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn url_webhook_mutates_selected_pods_and_can_deny() {
    let (addr, seen, server) = start_webhook(None, "plain").await;
    let cluster = Cluster::start().await;
    labelled_namespace(&cluster, "shop").await;
    let config = webhook_configuration(
        "inject",
        json!({"url": format!("http://{addr}/mutate")}),
        "Fail",
    );
    cluster.apply(&config, &[]).await;
    let client = cluster.client().await;
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let created = shop
        .create(&PostParams::default(), &pod("app", json!({"app": "x"})))
        .await
        .expect("pod created");
    assert_eq!(injected(&created).as_deref(), Some("plain"));
    {
        let seen = seen.lock().expect("seen lock");
        let request = &seen[0]["request"];
        assert_eq!(request["operation"], "CREATE");
        assert_eq!(request["namespace"], "shop");
        assert_eq!(
            request["kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(request["object"]["spec"]["containers"][0]["image"], "app:1");
        assert_eq!(
            request["object"]["spec"]["serviceAccountName"], "default",
            "defaulted before admission"
        );
    }

    let skipped = shop
        .create(
            &PostParams::default(),
            &pod("skipped", json!({"skip": "yes"})),
        )
        .await
        .expect("pod created");
    assert_eq!(injected(&skipped), None, "objectSelector excludes it");
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "default");
    let plain = elsewhere
        .create(&PostParams::default(), &pod("app", json!({})))
        .await
        .expect("pod created");
    assert_eq!(injected(&plain), None, "namespaceSelector excludes it");

    // Pods created by server-side apply go through the webhooks too.
    let applied = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "applied", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    cluster
        .kubectl_with_input(
            &["apply", "--server-side", "-f", "-"],
            Some(&applied.to_string()),
        )
        .await;
    let label = cluster
        .kubectl_ok(&[
            "-n",
            "shop",
            "get",
            "pod",
            "applied",
            "-o",
            "jsonpath={.metadata.labels.injected} {.spec.serviceAccountName}",
        ])
        .await;
    assert_eq!(label, "plain default");

    // kubectl shows the denial message.
    let denied = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "denied", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    let out = cluster
        .kubectl_with_input(&["apply", "-f", "-"], Some(&denied.to_string()))
        .await;
    assert!(
        common::stderr(&out).contains(r#"admission webhook "inject.example.com" denied the request: pods named denied are not welcome"#),
        "{}",
        common::stderr(&out)
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_policy_decides_when_the_webhook_is_down() {
    let cluster = Cluster::start().await;
    labelled_namespace(&cluster, "shop").await;
    // Bind then drop: a loopback port with nothing listening.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    cluster
        .apply(
            &webhook_configuration(
                "strict",
                json!({"url": format!("http://{dead}/mutate")}),
                "Fail",
            ),
            &[],
        )
        .await;
    let shop: Api<Pod> = Api::namespaced(cluster.client().await, "shop");
    match shop
        .create(&PostParams::default(), &pod("app", json!({})))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 500);
            assert!(
                status
                    .message
                    .contains(r#"failed calling webhook "strict.example.com""#),
                "{}",
                status.message
            );
        }
        other => panic!("expected the webhook failure, got {other:?}"),
    }
    cluster
        .kubectl_ok(&["delete", "mutatingwebhookconfiguration", "strict"])
        .await;
    cluster
        .apply(
            &webhook_configuration(
                "lenient",
                json!({"url": format!("http://{dead}/mutate")}),
                "Ignore",
            ),
            &[],
        )
        .await;
    let created = shop
        .create(&PostParams::default(), &pod("app", json!({})))
        .await
        .expect("Ignore lets the pod through");
    assert_eq!(injected(&created), None);
}

/// A CA and a serving certificate for `inject.sluice-system.svc`, made with
/// the openssl CLI: (CA PEM, certificate chain DER, private key DER).
fn certificates(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:inject.sluice-system.svc\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=inject",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    run(&[
        "x509", "-in", "tls.pem", "-outform", "DER", "-out", "tls.der",
    ]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "tls.key",
        "-outform",
        "DER",
        "-out",
        "tls.key.der",
    ]);
    let read = |name: &str| std::fs::read(dir.join(name)).expect("certificate file");
    (read("ca.pem"), read("tls.der"), read("tls.key.der"))
}

#[tokio::test(flavor = "multi_thread")]
async fn service_webhook_over_https_with_ca_bundle() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let (ca_pem, cert_der, key_der) = certificates(scratch.path());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .expect("server config");
    let (addr, seen, server) = start_webhook(
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config))),
        "tls",
    )
    .await;
    let mut options = EmulatorOptions::default();
    options
        .webhook_services
        .insert("inject.sluice-system".to_string(), addr);
    let cluster = Cluster::start_with(options).await;
    labelled_namespace(&cluster, "shop").await;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ca_pem);
    let client_config = json!({"service": {"name": "inject", "namespace": "sluice-system", "path": "/mutate", "port": 443}, "caBundle": ca_bundle});
    cluster
        .apply(&webhook_configuration("inject", client_config, "Fail"), &[])
        .await;
    let shop: Api<Pod> = Api::namespaced(cluster.client().await, "shop");
    let created = shop
        .create(&PostParams::default(), &pod("app", json!({})))
        .await
        .expect("pod created");
    assert_eq!(injected(&created).as_deref(), Some("tls"));
    assert_eq!(seen.lock().expect("seen lock").len(), 1);

    // The wrong CA is refused, as the real server refuses it.
    let other = tempfile::tempdir().expect("temp dir");
    let (other_ca, _, _) = certificates(other.path());
    let wrong = json!({"service": {"name": "inject", "namespace": "sluice-system", "path": "/mutate"},
        "caBundle": base64::engine::general_purpose::STANDARD.encode(&other_ca)});
    cluster
        .apply(&webhook_configuration("inject", wrong, "Fail"), &[])
        .await;
    let refused = shop
        .create(&PostParams::default(), &pod("second", json!({})))
        .await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 500),
        "{refused:?}"
    );
    server.abort();
}
