//! The mock's HTTP server (hyper 1, HTTP/1.1 and h2c on one port): records
//! every request, routes it to the provider module, hands out scripted
//! behaviours, and applies the transport faults — latency, hangs, closed
//! connections, stalled and cut bodies, corrupt 200s — the same way for every
//! provider kind.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::behaviour::{Behaviour, Fault, Script};
use super::body::{End, InFlight, MockBody, into_response, respond};
use super::handle::MockHandle;
use super::record::RecordedRequest;
use super::render::{Rendered, RequestView, Routed};
use super::reply::{Call, Reply};
use super::tls::TlsMaterial;
use super::{Ctx, ErrorKind, MockConfig, ProviderKind, RateLimit, control};

/// Why a mock could not start or a request was dropped on purpose.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading the request body: {0}")]
    Body(#[from] hyper::Error),
    /// The scripted "close the connection before headers" fault.
    #[error("mock closed the connection before headers (scripted)")]
    Closed,
    #[error("setting up TLS: {0}")]
    Tls(String),
}

pub(crate) struct Shared {
    pub(crate) kind: ProviderKind,
    pub(crate) config: MockConfig,
    state: Mutex<State>,
    pub(crate) arrived: Notify,
    seq: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) aborted: AtomicUsize,
    /// Connections accepted (TCP, before any TLS handshake).
    pub(crate) connections: AtomicUsize,
    started: Instant,
    pub(crate) shutdown: watch::Receiver<bool>,
}

pub(crate) struct State {
    pub(crate) script: Script,
    /// The most recent `MockConfig::keep_requests` requests.
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// Requests received since the last clear, kept or not.
    pub(crate) received: usize,
    /// When the model calls of the last minute were accepted
    /// (`MockConfig::requests_per_minute`).
    accepted: VecDeque<Instant>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written
        // (every critical section is a single push/pop), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push_script(&self, model: Option<&str>, times: usize, b: Behaviour) {
        self.state().script.push(model, times, b);
    }

    pub(crate) fn set_default(&self, model: Option<&str>, b: Behaviour) {
        self.state().script.set_default(model, b);
    }

    pub(crate) fn reset(&self) {
        let mut st = self.state();
        st.script.reset(self.config.default.clone());
        st.requests.clear();
        st.received = 0;
        st.accepted.clear();
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.iter().cloned().collect()
    }

    /// Note the status answered to request `seq`.
    fn set_status(&self, seq: u64, status: StatusCode) {
        let mut st = self.state();
        if let Some(r) = st.requests.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = Some(status.as_u16());
        }
    }

    /// Admit a model call under the configured requests-per-minute limit, or
    /// say how long until the oldest call of the window leaves it.
    fn admit(&self) -> Result<(), Duration> {
        let Some(rpm) = self.config.requests_per_minute else {
            return Ok(());
        };
        let now = Instant::now();
        let mut st = self.state();
        while st
            .accepted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            st.accepted.pop_front();
        }
        if st.accepted.len() >= usize::try_from(rpm).unwrap_or(usize::MAX) {
            let oldest = st.accepted.front().copied().unwrap_or(now);
            return Err(RATE_WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        st.accepted.push_back(now);
        Ok(())
    }
}

/// The window `requests_per_minute` counts over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

pub(crate) async fn start(
    kind: ProviderKind,
    config: MockConfig,
    addr: SocketAddr,
    tls: Option<TlsMaterial>,
) -> Result<MockHandle, MockError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MockError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MockError::Bind { addr, source })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        kind,
        state: Mutex::new(State {
            script: Script::new(config.default.clone()),
            requests: VecDeque::new(),
            received: 0,
            accepted: VecDeque::new(),
        }),
        config,
        arrived: Notify::new(),
        seq: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        aborted: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        started: Instant::now(),
        shutdown: shutdown_rx.clone(),
    });
    let (acceptor, ca) = match tls {
        Some(t) => (Some(t.acceptor), Some((t.ca_pem, t.ca_der))),
        None => (None, None),
    };
    tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx, acceptor));
    Ok(MockHandle {
        shared,
        addr,
        shutdown,
        ca,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: keep serving.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(stream, shared, shutdown).await,
                Some(acceptor) => {
                    // A failed handshake just closes the connection.
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, shared, shutdown).await;
                    }
                }
            }
        });
    }
}

/// Serve HTTP/1.1 or HTTP/2 (by preface) on one connection until it ends or
/// the mock shuts down.
async fn serve<I>(io: I, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(shared.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket.
        _ = shutdown.changed() => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, MockError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);

    if path.starts_with(control::PREFIX) {
        return Ok(into_response(control::handle(
            &shared,
            &parts.method,
            &path,
            &body,
        )));
    }

    let seq = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
    {
        let mut st = shared.state();
        st.requests.push_back(RecordedRequest {
            seq,
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            version: parts.version,
            body: body.clone(),
            json: json.clone(),
            at: shared.started.elapsed(),
            status: None,
        });
        st.received += 1;
        // Long benchmark runs must not grow the mock without bound.
        while st.requests.len() > shared.config.keep_requests {
            st.requests.pop_front();
        }
    }
    shared.arrived.notify_waiters();

    let view = RequestView {
        method: &parts.method,
        path: &path,
        query: query.as_deref(),
        authority: parts.uri.authority().map(|a| a.as_str()),
        body: &body,
        headers: &parts.headers,
        json: json.as_ref(),
        config: &shared.config,
    };
    let (rendered, end, behaviour, guard) = match model_call(&shared, &view, seq).await {
        Outcome::Respond(rendered) => (rendered, End::Complete, Behaviour::ok(), None),
        Outcome::Paced(rendered, end, behaviour, guard) => (rendered, end, behaviour, Some(guard)),
        Outcome::Drop => return Err(MockError::Closed),
    };
    shared.set_status(seq, rendered.status);
    Ok(match guard {
        Some(guard) => respond(rendered, end, &behaviour, guard),
        None => into_response(rendered),
    })
}

enum Outcome {
    /// Answer at once, no faults applied.
    Respond(Rendered),
    /// Answer under a scripted behaviour.
    Paced(Rendered, End, Behaviour, InFlight),
    /// Send no response (closed or hung connection).
    Drop,
}

/// Route the request, then apply the provider's own checks, the rate limit
/// and the script.
async fn model_call(shared: &Arc<Shared>, view: &RequestView<'_>, seq: u64) -> Outcome {
    let call = match super::route(shared.kind, view) {
        Routed::Immediate(rendered) => return Outcome::Respond(rendered),
        Routed::Call(call) => call,
    };
    let ctx = Ctx {
        config: &shared.config,
        call: Some(&call),
        seq,
        latency_ms: 0,
    };
    if let Some(kind) = precondition_error(&shared.config, &call) {
        return Outcome::Respond(super::error(shared.kind, &kind, &ctx));
    }
    if let Err(wait) = shared.admit() {
        let limited = ErrorKind::RateLimited(RateLimit::after(wait));
        return Outcome::Respond(super::error(shared.kind, &limited, &ctx));
    }

    let behaviour = shared.state().script.next(&call.model);
    // If the client leaves while this future waits, hyper drops it and the
    // unsettled guard counts an abandoned response.
    let guard = InFlight::new(shared.clone());
    let mut shutdown = shared.shutdown.clone();
    if !behaviour.latency.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(behaviour.latency) => {}
            _ = shutdown.changed() => {
                guard.settle();
                return Outcome::Drop;
            }
        }
    }
    let ctx = Ctx {
        latency_ms: u64::try_from(behaviour.latency.as_millis()).unwrap_or(u64::MAX),
        ..ctx
    };
    match apply(shared, &call, &behaviour.fault, &ctx) {
        Applied::Respond(mut rendered, end) => {
            for (k, v) in &behaviour.headers {
                rendered.set_header(k, v);
            }
            Outcome::Paced(rendered, end, behaviour, guard)
        }
        Applied::Close => {
            guard.settle();
            Outcome::Drop
        }
        Applied::Hang => {
            // Hold the request until the client gives up (hyper drops this
            // future) or the mock shuts down.
            let _ = shutdown.changed().await;
            guard.settle();
            Outcome::Drop
        }
    }
}

/// Errors the provider would raise on its own, whatever the script says.
fn precondition_error(config: &MockConfig, call: &Call) -> Option<ErrorKind> {
    if !config.models.is_empty() && !config.models.contains(&call.model) {
        return Some(ErrorKind::NotFound);
    }
    let window = config.context_window?;
    let wanted = call
        .input_tokens()
        .saturating_add(call.max_tokens.unwrap_or(0));
    (wanted > window).then_some(ErrorKind::ContextLength)
}

enum Applied {
    Respond(Rendered, End),
    Close,
    Hang,
}

fn apply(shared: &Shared, call: &Call, fault: &Fault, ctx: &Ctx<'_>) -> Applied {
    let kind = shared.kind;
    let fixed = shared.config.reply.as_deref();
    let normal = || super::success(kind, call, &Reply::build(call, fixed, false, ctx.seq), ctx);
    let rendered = match fault {
        Fault::None => normal(),
        Fault::Refusal => {
            super::success(kind, call, &Reply::build(call, fixed, true, ctx.seq), ctx)
        }
        Fault::Error(e) => super::error(kind, e, ctx),
        Fault::ErrorIn200(e) => super::error(kind, e, ctx).with_status(StatusCode::OK),
        Fault::Html { status } => {
            Rendered::html(StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY))
        }
        Fault::InvalidJson => corrupt(normal()),
        Fault::MidStreamError { after, kind: e } => {
            if !call.stream {
                super::error(kind, e, ctx)
            } else {
                let mut r = normal();
                r.frames.truncate(*after);
                r.frames.push(super::stream_error(kind, e, ctx));
                r
            }
        }
        Fault::HangBeforeHeaders => return Applied::Hang,
        Fault::CloseBeforeHeaders => return Applied::Close,
        Fault::StallAfter { after } => {
            return Applied::Respond(truncate(normal(), *after), End::Stall);
        }
        Fault::CutAfter { after } => {
            return Applied::Respond(truncate(normal(), *after), End::Abort);
        }
        Fault::Raw {
            status,
            headers,
            body,
        } => {
            let mut r = Rendered::json(StatusCode::OK, &serde_json::Value::Null);
            r.status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r.headers.clear();
            r.frames = vec![Bytes::from(body.clone())];
            for (k, v) in headers {
                r.set_header(k, v);
            }
            r
        }
    };
    Applied::Respond(rendered, End::Complete)
}

/// Keep the first `after` frames; a non-stream body is split in two halves
/// first and keeps its full `content-length`, so the client sees a short body.
fn truncate(mut r: Rendered, after: usize) -> Rendered {
    if !r.streaming {
        let body = r.body();
        let mid = body.len() / 2;
        if let Ok(v) = HeaderValue::from_str(&body.len().to_string()) {
            r.headers.insert(http::header::CONTENT_LENGTH, v);
        }
        r.frames = vec![body.slice(..mid), body.slice(mid..)];
    }
    r.frames.truncate(after);
    r
}

/// Make a 200's body unparsable: cut the JSON (or the first SSE event's JSON)
/// in half; for the binary event stream, break the first frame's checksum.
fn corrupt(mut r: Rendered) -> Rendered {
    let ct = r
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if r.streaming && ct.starts_with("application/vnd.amazon.eventstream") {
        if let Some(first) = r.frames.first_mut() {
            let mut bytes = first.to_vec();
            if let Some(last) = bytes.last_mut() {
                *last ^= 0xff;
            }
            *first = Bytes::from(bytes);
        }
        return r;
    }
    if r.streaming {
        if let Some(first) = r.frames.first_mut() {
            let half = first.slice(..first.len() / 2);
            let mut v = half.to_vec();
            if ct.starts_with("text/event-stream") {
                v.extend_from_slice(b"\n\n");
            }
            *first = Bytes::from(v);
        }
        return r;
    }
    let body = r.body();
    r.frames = vec![body.slice(..body.len() / 2)];
    r
}
