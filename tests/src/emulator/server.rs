//! The HTTP edge: the shared state, the accept loop (TLS or plain),
//! authentication, request parsing (query, body in JSON, YAML or protobuf)
//! and response helpers (JSON, Status errors, `Warning` headers). Routing is
//! in [`super::routes`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::error::{ApiError, ApiResult};
use super::registry::{self, ResourceType};
use super::store::Store;
use super::tokens::Tokens;
use super::{builtin, protobuf, routes};

/// Response body: a whole JSON document or a watch stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Where webhook services (`name.namespace`) are reachable.
    pub webhook_services: BTreeMap<String, SocketAddr>,
    /// Flips to `true` when the emulator shuts down; long-lived watches end.
    pub shutdown: watch::Receiver<bool>,
    /// Whether requests without a bearer token are refused (https mode).
    pub require_token: bool,
}

/// The mutable state, behind one lock: handlers never await while holding it.
#[derive(Debug)]
pub struct State {
    /// Objects.
    pub store: Store,
    /// Served resources: built-ins plus established CRDs.
    pub types: Vec<ResourceType>,
    /// Issued tokens.
    pub tokens: Tokens,
}

impl State {
    /// Creates the `default` service account every namespace has (the
    /// real server's service-account controller does it).
    pub fn add_default_service_account(&mut self, namespace: &str) {
        let accounts = self
            .types
            .iter()
            .find(|t| t.group.is_empty() && t.plural == "serviceaccounts")
            .cloned();
        if let Some(accounts) = accounts {
            // Already there (or the namespace is gone): nothing to do.
            let _ = self.store.create(
                &accounts,
                namespace,
                json!({"metadata": {"name": "default"}}),
            );
        }
    }

    /// Recomputes served types from the stored CRDs.
    pub fn refresh_types(&mut self) {
        let mut types = registry::builtin_types();
        for crd in self
            .store
            .list("apiextensions.k8s.io", "customresourcedefinitions", None)
        {
            if crd["metadata"].get("deletionTimestamp").is_none() {
                types.extend(registry::types_from_crd(&crd));
            }
        }
        self.types = types;
    }
}

impl Shared {
    /// A fresh state with the namespaces every cluster has.
    pub fn new(
        base_url: String,
        admin_token: &str,
        webhook_services: BTreeMap<String, SocketAddr>,
        shutdown: watch::Receiver<bool>,
        require_token: bool,
        watch_history: usize,
    ) -> Self {
        let mut state = State {
            store: Store::with_history(watch_history),
            types: registry::builtin_types(),
            tokens: Tokens::default(),
        };
        state.tokens.add_admin(admin_token);
        if let Some(namespaces) = state
            .types
            .iter()
            .find(|t| t.plural == "namespaces")
            .cloned()
        {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let mut namespace = json!({"metadata": {"name": name}});
                builtin::on_create(&namespaces, &mut namespace);
                // Fresh store: these names cannot collide.
                let _ = state.store.create(&namespaces, "", namespace);
                state.add_default_service_account(name);
            }
        }
        Self {
            state: Mutex::new(state),
            base_url,
            webhook_services,
            shutdown,
            require_token,
        }
    }

    /// Locks the state. A poisoned lock (a handler panicked) is recovered:
    /// the store is only ever mutated through complete operations.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves connections until `shutdown` flips, over TLS when `tls` is set.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, shared).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                None => serve_connection(stream, shared).await,
            }
        });
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut conn_shutdown = shared.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        result = conn => if let Err(error) = result {
            tracing::debug!(%error, "connection ended");
        },
        _ = conn_shutdown.changed() => {}
    }
}

/// A parsed request.
#[derive(Debug)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// `Accept` header.
    pub accept: String,
    /// `Content-Type` header.
    pub content_type: String,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Body bytes.
    pub body: Bytes,
}

impl ApiRequest {
    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The field manager of a write: `fieldManager`, else the User-Agent's
    /// program name, as the real server defaults it.
    pub fn manager(&self) -> String {
        match self.param("fieldManager") {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => self
                .user_agent
                .split('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        }
    }

    /// The body as JSON (or YAML, which kubectl sends for apply patches, or
    /// protobuf for a few kinds kubectl creates).
    pub fn json_body(&self) -> ApiResult<Value> {
        if self
            .content_type
            .starts_with("application/vnd.kubernetes.protobuf")
        {
            return protobuf::decode(&self.body);
        }
        serde_json::from_slice(&self.body)
            .or_else(|_| serde_yaml::from_slice(&self.body))
            .map_err(|e| ApiError::bad_request(format!("unable to decode request body: {e}")))
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match handle_inner(shared, req).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn handle_inner(shared: Arc<Shared>, req: Request<Incoming>) -> ApiResult<Response<Body>> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let authorization = header(hyper::header::AUTHORIZATION);
    let accept = header(hyper::header::ACCEPT);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let user_agent = header(hyper::header::USER_AGENT);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    // Over https every request needs a token the emulator issued, as on a
    // real cluster. Over plain http a request without one acts as the
    // admin: client-go never sends bearer tokens over http.
    if !matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        let token = authorization.strip_prefix("Bearer ");
        let known = token.is_some_and(|t| shared.lock().tokens.lookup(t).is_some());
        if !known && (token.is_some() || shared.require_token) {
            return Err(ApiError::unauthorized());
        }
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?
        .to_bytes();
    let request = ApiRequest {
        method,
        path,
        query,
        accept,
        content_type,
        user_agent,
        body,
    };
    routes::route(shared, request).await
}

/// A JSON response with optional `Warning` headers.
pub fn json_response(code: u16, value: &Value, warnings: &[String]) -> Response<Body> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        builder = builder.header("Warning", format!("299 - \"{escaped}\""));
    }
    let body = Full::new(Bytes::from(value.to_string())).boxed();
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

pub fn text_response(code: u16, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
}

/// A Status error response.
pub fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status(), &[])
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (query strings).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=true&x");
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
