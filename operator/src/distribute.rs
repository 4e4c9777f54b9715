//! The sidecar-facing server (`--distribution-listen`, HTTPS, HTTP/1.1).
//!
//! # Wire contract
//!
//! TLS: the server certificate is signed by the CA in the `--tls-secret`
//! Secret (`ca.crt`), valid for `<service>`, `<service>.<ns>`,
//! `<service>.<ns>.svc`, `<service>.<ns>.svc.cluster.local`, `localhost` and
//! `127.0.0.1`.
//!
//! Authentication: every `/v1/` request carries
//! `Authorization: Bearer <projected ServiceAccount token, audience "sluice">`.
//! The token's service account must belong to the namespace named by the
//! request, and that namespace must hold the named pod, labelled
//! `sluice.dev/sidecar=injected`, running under that service account.
//!
//! ## `GET /v1/snapshots/stream?namespace=<ns>&pod=<name>`
//! `200`, `content-type: application/x-ndjson`, a body that stays open:
//! one [`Snapshot`](sluice_crds::snapshot::Snapshot) as JSON per line
//! (`\n`-terminated). The current snapshot comes at once (as soon as the
//! operator has compiled one for the pod), then every new `version`;
//! intermediate versions may be skipped, the latest always arrives. An
//! empty line is a keepalive (sent every 15 s of silence): skip it. The
//! stream ends when the pod goes away or the replica stops leading;
//! reconnect with backoff and jitter.
//!
//! ## `POST /v1/reports`
//! Body: one [`Report`] as JSON (at most
//! 4 MiB); its `namespace` and `pod` name the caller, checked as above.
//! `200` with a [`ReportAck`](sluice_crds::report::ReportAck):
//! `{"usageAckedThrough": N}` means every usage delta with `seq <= N` is
//! folded into totals *already persisted* in the Budgets' status: drop them.
//! Any other answer acknowledges nothing: resend the same deltas (the
//! operator folds each `(instance, seq)` once, so resending never counts
//! twice).
//!
//! ## Errors
//! Status with `{"error":{"message","type","code"}}` (OpenAI's shape):
//! - `400 invalid_request` — missing query parameter, body not a Report;
//! - `401 missing_token` / `invalid_token` — no bearer token, or the
//!   TokenReview refused it (wrong audience, unknown, expired);
//! - `403 not_a_service_account`, `namespace_mismatch` (a token of
//!   namespace A asking for B), `pod_mismatch` (a pod-bound token asking
//!   for another pod), `pod_not_found` (no such sidecar pod under that
//!   service account, or not the pod the token was bound to by uid);
//! - `404 not_found`, `405 method_not_allowed`;
//! - `503 not_leader` (this replica is the standby; `Retry-After: 1`),
//!   `token_review_failed`, `persist_failed` (retry later).
//!
//! `GET /readyz` answers `200` on the leader once its caches are synced
//! and `503` otherwise, so a readiness probe on this port sends the
//! Service's traffic to the leader only; `GET /healthz` is always `200`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sluice_crds::report::Report;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Refusal, ReviewCache, bearer};
use crate::compile::Key;
use crate::controller::budget::persist;
use crate::hub::Published;
use crate::metrics::Metrics;
use crate::state::{Context, now_ms};

/// Response body: whole or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

const KEEPALIVE: Duration = Duration::from_secs(15);
const MAX_REPORT: usize = 4 << 20;
/// Bound on a TLS handshake and on reading a request's headers, so idle
/// or slow clients cannot hold connections open without asking anything.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's state.
#[derive(Debug)]
pub struct Distribution {
    pub ctx: Arc<Context>,
    pub reviews: ReviewCache,
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A refusal as an OpenAI-shaped error response.
pub fn refuse(refusal: &Refusal) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match refusal.status {
        401 => "authentication_error",
        403 => "permission_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let mut r = json(
        status,
        &serde_json::json!({"error": {"message": refusal.message, "type": kind, "code": refusal.code}}),
    );
    if refusal.status == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Distribution {
    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let serving = *self.ctx.serving.borrow();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"ok": true})),
            (&Method::GET, "/readyz") if serving => {
                json(StatusCode::OK, &serde_json::json!({"ready": true}))
            }
            (&Method::GET, "/readyz") => {
                refuse(&Refusal::new(503, "not_leader", "standby replica"))
            }
            (_, "/v1/snapshots/stream" | "/v1/reports") if !serving => refuse(&Refusal::new(
                503,
                "not_leader",
                "this replica is the standby; the Service sends traffic to the leader",
            )),
            (&Method::GET, "/v1/snapshots/stream") => match self.stream(req).await {
                Ok(r) => r,
                Err(refusal) => refuse(&refusal),
            },
            (&Method::POST, "/v1/reports") => match self.report(req).await {
                Ok(r) => r,
                Err(refusal) => refuse(&refusal),
            },
            (_, "/v1/snapshots/stream" | "/v1/reports" | "/healthz" | "/readyz") => refuse(
                &Refusal::new(405, "method_not_allowed", "method not allowed"),
            ),
            _ => refuse(&Refusal::new(404, "not_found", "no such endpoint")),
        }
    }

    async fn stream(&self, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        let q = query(&req);
        let (Some(ns), Some(pod)) = (q.get("namespace"), q.get("pod")) else {
            return Err(Refusal::new(
                400,
                "invalid_request",
                "namespace and pod query parameters are required",
            ));
        };
        let token = bearer(
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        );
        let info = self.reviews.authorize(&self.ctx, token, ns, pod).await?;
        let rx = self
            .ctx
            .hub
            .subscribe(&(info.namespace.clone(), info.name.clone()));
        // A pod that just appeared may not be compiled yet.
        self.ctx.request_compile();
        tracing::info!(namespace = %info.namespace, pod = %info.name, "sidecar connected");
        let state = StreamState {
            rx,
            first: true,
            keepalive: tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE),
            connected: Connected::new(self.ctx.metrics.clone()),
        };
        let body = futures::stream::unfold(state, |mut s| async move {
            let frame = s.next().await?;
            Some((Ok::<_, Infallible>(Frame::data(frame)), s))
        });
        let mut r = Response::new(StreamBody::new(body).boxed());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-ndjson"),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        Ok(r)
    }

    async fn report(&self, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        let started = Instant::now();
        let token = bearer(
            req.headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .map(str::to_owned);
        let body = Limited::new(req.into_body(), MAX_REPORT)
            .collect()
            .await
            .map_err(|e| Refusal::new(400, "invalid_request", format!("reading the body: {e}")))?
            .to_bytes();
        let report: Report = serde_json::from_slice(&body)
            .map_err(|e| Refusal::new(400, "invalid_request", format!("not a report: {e}")))?;
        let info = self
            .reviews
            .authorize(&self.ctx, token.as_deref(), &report.namespace, &report.pod)
            .await?;
        let budgets = self.ctx.budgets_of(&info.namespace);
        let by_name: BTreeMap<String, (&sluice_crds::Budget, _)> = budgets
            .iter()
            .map(|(b, w)| {
                (
                    kube::ResourceExt::name_any(b.as_ref()),
                    (b.as_ref(), w.clone()),
                )
            })
            .collect();
        // Every budget the report names, folded now or by an earlier
        // attempt whose persist failed.
        let mut named: Vec<Key> = report
            .usage
            .iter()
            .map(|d| (info.namespace.clone(), d.budget.clone()))
            .collect();
        named.sort();
        named.dedup();
        let ingested = {
            let mut agg = self.ctx.aggregator();
            let ingested = agg.ingest(report, info.workload.clone(), &by_name, now_ms());
            self.ctx.persistence.mark(&ingested.budgets_touched);
            ingested
        };
        if let Err(e) = persist(&self.ctx, &named).await {
            tracing::warn!(error = %e, namespace = %info.namespace, pod = %info.name, "persisting spend failed; report not acknowledged");
            return Err(Refusal::new(
                503,
                "persist_failed",
                "spend could not be persisted yet; resend",
            ));
        }
        // The next snapshots carry the new spend and renewed allowances.
        self.ctx.request_compile();
        self.ctx
            .metrics
            .report_lag
            .observe(started.elapsed().as_secs_f64());
        let ack = serde_json::to_value(&ingested.ack)
            .map_err(|e| Refusal::new(500, "internal", e.to_string()))?;
        Ok(json(StatusCode::OK, &ack))
    }
}

/// Counts an open stream for as long as it lives.
struct Connected(Arc<Metrics>);

impl Connected {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connected_sidecars.inc();
        Self(metrics)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected_sidecars.dec();
    }
}

struct StreamState {
    rx: tokio::sync::watch::Receiver<Option<Arc<Published>>>,
    first: bool,
    keepalive: tokio::time::Interval,
    connected: Connected,
}

impl StreamState {
    fn line(&self, p: &Published) -> Bytes {
        self.connected
            .0
            .push_latency
            .observe(p.at.elapsed().as_secs_f64());
        p.line.clone()
    }

    /// The next frame: a snapshot line or a keepalive; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if self.first {
            self.first = false;
            let current = self.rx.borrow_and_update().clone();
            if let Some(p) = current {
                return Some(self.line(&p));
            }
        }
        loop {
            tokio::select! {
                changed = self.rx.changed() => {
                    changed.ok()?;
                    let current = self.rx.borrow_and_update().clone();
                    if let Some(p) = current {
                        self.keepalive.reset();
                        return Some(self.line(&p));
                    }
                }
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b"\n")),
            }
        }
    }
}

/// Accepts TLS connections and serves each with `handle`. Never returns;
/// dropping it closes every connection it accepted (they live in a
/// `JoinSet`).
pub async fn serve_tls<F, Fut>(listener: TcpListener, acceptor: TlsAcceptor, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (tcp, peer): (_, SocketAddr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
