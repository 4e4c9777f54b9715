//! Wires the operator together: listeners, the serving certificate, the
//! watches (on both replicas, so a standby takes over warm), leader
//! election, and — on the leader only — the compile loop and the
//! controllers. Every replica serves the three ports; the leader labels
//! its pod so the distribution Service reaches it alone ([`leader_pod`]),
//! and a standby reached anyway answers `503 not_leader` there.
//!
//! [`leader_pod`]: crate::leader_pod

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::ReviewCache;
use crate::controller;
use crate::distribute::{Body, Distribution, serve_tls};
use crate::error::Error;
use crate::leader_pod::LeaderPod;
use crate::lease::Election;
use crate::metrics::Metrics;
use crate::options::Options;
use crate::state::Context;
use crate::tls::{ServingCert, subject_names};

/// A started operator.
#[derive(Debug)]
pub struct Running {
    pub distribution: SocketAddr,
    pub webhook: SocketAddr,
    pub metrics: SocketAddr,
    pub ctx: Arc<Context>,
    pub cert: ServingCert,
    election: Election,
    leases: Api<Lease>,
    pod: Option<LeaderPod>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    /// Resolves once this replica leads with synced caches (never on a
    /// standby that stays one).
    pub async fn serving(&self) {
        let mut rx = self.ctx.serving.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Waits until the operator stops by itself, which it only does on
    /// losing the Lease (an error: the binary exits and restarts as a
    /// standby).
    pub async fn stopped(&mut self) -> Result<(), Error> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let result = task
            .await
            .unwrap_or_else(|e| Err(Error::Stopped(e.to_string())));
        self.task = None;
        result
    }

    /// Stops everything and releases the Lease if held, so the standby
    /// takes over without waiting for it to expire.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.ctx.serving.send_replace(false);
        if let Some(pod) = &self.pod {
            unmark_before_leaving(pod).await;
        }
        self.election.release(&self.leases).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Takes our leader label off, giving up after a few seconds (the next
/// leader strips it anyway).
async fn unmark_before_leaving(pod: &LeaderPod) {
    let unmark = tokio::time::timeout(std::time::Duration::from_secs(3), pod.unmark_quietly());
    if unmark.await.is_err() {
        tracing::warn!("timed out removing the leader label from this pod");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

fn local(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, Error> {
    l.local_addr()
        .map_err(|source| Error::Bind { addr, source })
}

/// Binds, loads or makes the certificate, and starts everything on the
/// current runtime.
pub async fn start(opts: Options, client: Client) -> Result<Running, Error> {
    let own_ns = opts
        .operator_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let dist_l = bind(opts.distribution_listen).await?;
    let hook_l = bind(opts.webhook_listen).await?;
    let metrics_l = bind(opts.metrics_listen).await?;
    let distribution = local(&dist_l, opts.distribution_listen)?;
    let webhook = local(&hook_l, opts.webhook_listen)?;
    let metrics_addr = local(&metrics_l, opts.metrics_listen)?;

    let cert = ServingCert::ensure(
        &Api::<Secret>::namespaced(client.clone(), &own_ns),
        &opts.tls_secret,
        &subject_names(&[&opts.service_name, &opts.webhook_service_name], &own_ns),
    )
    .await?;
    let acceptor = cert.acceptor()?;
    if let Ok(name) = std::env::var("SLUICE_WEBHOOK_CONFIGURATION")
        && !name.is_empty()
    {
        // With a generated CA nobody else tells the API server whom to
        // trust for the injection webhook (cert-manager's cainjector does,
        // when it issues the certificate, and the chart then leaves this unset).
        if let Err(e) =
            crate::admission::publish_ca_bundle(client.clone(), &name, &cert.ca_pem).await
        {
            tracing::warn!(webhook = %name, error = %e, "cannot set the injection webhook's caBundle");
        }
    }

    let pod = opts
        .identity
        .as_deref()
        .map(|name| LeaderPod::new(client.clone(), &own_ns, name));
    let identity = opts
        .identity
        .clone()
        .unwrap_or_else(|| format!("sluice-operator-{:016x}", rand::random::<u64>()));
    let metrics = Metrics::new();
    let (ctx, writers) = Context::new(
        client.clone(),
        &identity,
        opts.namespace.clone(),
        opts.report_interval,
        metrics.clone(),
    );
    let election = Election {
        name: opts.lease_name.clone(),
        identity,
        duration: opts.lease_duration.into(),
    };
    let hook_client = client.clone();
    let leases: Api<Lease> = Api::namespaced(client, &own_ns);
    let (election_handle, leases_handle, pod_handle) =
        (election.clone(), leases.clone(), pod.clone());

    let dist = Arc::new(Distribution {
        ctx: ctx.clone(),
        reviews: ReviewCache::default(),
    });
    let dist_server = serve_tls(dist_l, acceptor.clone(), move |req| {
        dist.clone().handle(req)
    });
    let injection = Arc::new(crate::admission::injection_from_env(
        &cert.ca_pem,
        opts.distribution_listen.port(),
    ));
    let hook_server = serve_tls(hook_l, acceptor, move |req| {
        crate::admission::handle(req, hook_client.clone(), injection.clone())
    });
    let metrics_server = serve_metrics(metrics_l, metrics.clone());

    let lead_ctx = ctx.clone();
    let handle_ctx = ctx.clone();
    let task = tokio::spawn(async move {
        // A restarted container may find its pod still labelled.
        if let Some(p) = &pod {
            p.unmark_quietly().await;
        }
        let lead_pod = pod.clone();
        let (leader_tx, mut leader_rx) = watch::channel(false);
        let elect = election.run(leases, leader_tx);
        let lead = async move {
            if leader_rx.wait_for(|l| *l).await.is_err() {
                return;
            }
            lead_ctx.metrics.leader.set(1);
            let ready = async {
                lead_ctx.caches_ready().await;
                lead_ctx.compile_once();
                lead_ctx.serving.send_replace(true);
                tracing::info!("caches synced; serving sidecars");
                if let Some(p) = lead_pod {
                    p.hold().await;
                }
            };
            futures::join!(
                lead_ctx.clone().compile_loop(),
                controller::run(lead_ctx.clone()),
                ready,
            );
        };
        // Both replicas keep their caches warm, so a standby that takes
        // over compiles and serves at once; only the leader acts on them.
        let caches = ctx.clone().watch(writers);
        let serving = ctx.clone();
        let result = tokio::select! {
            r = elect => r,
            () = caches => Ok(()),
            () = lead => Ok(()),
            () = dist_server => Ok(()),
            () = hook_server => Ok(()),
            () = metrics_server => Ok(()),
        };
        serving.serving.send_replace(false);
        serving.metrics.leader.set(0);
        if let Some(p) = &pod {
            unmark_before_leaving(p).await;
        }
        result
    });
    Ok(Running {
        distribution,
        webhook,
        metrics: metrics_addr,
        ctx: handle_ctx,
        cert,
        election: election_handle,
        leases: leases_handle,
        pod: pod_handle,
        task: Some(task),
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

/// `/metrics`, `/healthz` and `/readyz` over plain HTTP. Both replicas are
/// ready here once started (the leader gate is the distribution port's
/// `/readyz`). Never returns.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let r = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => {
                            let mut r = text(StatusCode::OK, metrics.render());
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                header::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            r
                        }
                        (&Method::GET, "/healthz" | "/readyz") => text(StatusCode::OK, "ok\n"),
                        _ => text(StatusCode::NOT_FOUND, "not found\n"),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
