//! HTTPS to the operator: the snapshot stream and the report loop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_crds::report::ReportAck;

use super::{Backoff, Lines, Session};

/// A client that trusts only the operator's CA.
pub type OperatorClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The largest snapshot line accepted.
const MAX_SNAPSHOT: usize = 32 << 20;

/// Builds the client from the CA bundle the webhook projected.
pub fn client(ca_file: &Path) -> Result<OperatorClient, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(ca_file)
        .map_err(|e| format!("cannot read --ca-file {}: {e}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--ca-file {} holds no certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

fn token(session: &Session) -> Result<String, String> {
    let path = &session.options.token_file;
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
    Ok(t.trim().to_owned())
}

fn request(
    session: &Session,
    method: hyper::Method,
    path: &str,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let base = session.options.operator.trim_end_matches('/');
    hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {}", token(session)?))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())
}

/// One connection of the snapshot stream, until it ends.
async fn stream_once(
    session: &Session,
    client: &OperatorClient,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let path = format!(
        "/v1/snapshots/stream?namespace={}&pod={}",
        session.options.namespace, session.options.pod
    );
    let req = request(session, hyper::Method::GET, &path, Bytes::new())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach the operator: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        return Err(format!("the operator answered {status}: {text}"));
    }
    backoff.reset();
    let mut lines = Lines::new(MAX_SNAPSHOT);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the snapshot stream broke: {e}"))?;
        if let Some(data) = frame.data_ref() {
            for line in lines.feed(data)? {
                // A refused snapshot is reported, not fatal to the stream.
                let _ = session.receive(&line);
            }
        }
    }
    Err("the operator closed the snapshot stream".into())
}

/// Keeps the snapshot stream open, reconnecting with jittered backoff. The
/// last good configuration keeps serving meanwhile.
pub async fn run_stream(session: Arc<Session>, client: OperatorClient) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    loop {
        if let Err(e) = stream_once(&session, &client, &mut backoff).await {
            tracing::warn!(error = %e, "snapshot stream down; serving the last good configuration");
        }
        tokio::time::sleep(backoff.next(crate::balance::jitter())).await;
    }
}

/// Posts a report every interval; usage stays pending until acknowledged.
pub async fn run_reports(session: Arc<Session>, client: OperatorClient) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(session.report_interval()) => {}
            _ = session.report_now.notified() => {
                // Early, on request; still at most ten reports a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let report = session.next_report();
        let body = match serde_json::to_vec(&report) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a report");
                continue;
            }
        };
        let req = match request(&session, hyper::Method::POST, "/v1/reports", body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a report");
                continue;
            }
        };
        match client.request(req).await {
            Ok(resp) if resp.status().is_success() => {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                match serde_json::from_slice::<ReportAck>(&body) {
                    Ok(ack) => session.acknowledged(&ack),
                    Err(e) => tracing::warn!(error = %e, "unreadable report acknowledgement"),
                }
            }
            Ok(resp) => {
                tracing::warn!(status = %resp.status(), "report refused; usage stays pending")
            }
            Err(e) => tracing::warn!(error = %e, "report not delivered; usage stays pending"),
        }
    }
}
