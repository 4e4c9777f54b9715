//! The two HTTP servers: the app-facing API (`--listen`) and the admin
//! endpoints (`--admin`). hyper lives here and only here on the inbound
//! side; everything behind a route is a plain async fn.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::app::App;
use crate::body::{self, Body};
use crate::error::ApiError;
use crate::pipeline::{self, Operation};
use crate::repoll::Repoll;

/// Which server a listener is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Admin,
}

/// Accepts connections on `listener` until `stop` turns true, then stops
/// accepting, asks open connections to finish (HTTP/1 keep-alive off,
/// HTTP/2 GOAWAY) and waits for them, at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    role: Role,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: std::time::Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move {
                    Ok::<_, Infallible>(match role {
                        Role::Api => api(app, req).await,
                        Role::Admin => admin(&app, req, peer),
                    })
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client that never finishes its request headers is dropped.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // The connection wakes itself on every request (see `repoll`).
            if let Err(e) = Repoll::new(watcher.watch(conn.into_owned())).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(role = ?role, "connections still open after the grace period; closing them");
    }
}

async fn api(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/');
    match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => {
            pipeline::handle(app, Operation::Chat, parts.headers, body).await
        }
        (&Method::POST, "/v1/embeddings") => {
            pipeline::handle(app, Operation::Embeddings, parts.headers, body).await
        }
        (&Method::POST, "/v1/messages") => {
            pipeline::handle(app, Operation::Messages, parts.headers, body).await
        }
        (&Method::GET, "/v1/models") => pipeline::models(&app),
        (_, "/v1/chat/completions" | "/v1/embeddings" | "/v1/models" | "/v1/messages") => {
            ApiError::method_not_allowed().into_response()
        }
        _ => ApiError::no_such_path().into_response(),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn admin(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match app.config.current() {
            Some(_) => text(StatusCode::OK, "ready\n"),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no valid configuration loaded yet\n",
            ),
        },
        "/metrics" => {
            app.metrics.breakers(&app.health.breaker_states());
            app.metrics.accounting(app.accountant.stats());
            let mut resp = Response::new(body::full(app.metrics.encode()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/debug/config" => {
            // Even redacted, the layout of the config is for the pod's own eyes.
            if !peer.ip().is_loopback() {
                return text(StatusCode::FORBIDDEN, "only answered on loopback\n");
            }
            let Some(config) = app.config.current() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no valid configuration loaded yet\n",
                );
            };
            let json = serde_json::to_vec_pretty(&config.redacted()).unwrap_or_default();
            let mut resp = Response::new(body::full(json));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
