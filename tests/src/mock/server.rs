//! The mock's HTTP server (hyper 1, HTTP/1.1 and h2c on one port) and its
//! handle: records every request, hands out scripted behaviours, and applies
//! the transport faults — latency, hangs, closed connections, paced, stalled
//! and cut bodies — the same way for every provider kind.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::behaviour::{Behaviour, Fault, Script};
use super::record::RecordedRequest;
use super::render::{Rendered, RequestView, Routed};
use super::reply::{Call, Reply};
use super::{Ctx, ErrorKind, MockConfig, ProviderKind, control};

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
}

/// A running mock. Dropping it stops the server and every open connection.
pub struct MockHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

pub(crate) struct Shared {
    pub(crate) kind: ProviderKind,
    pub(crate) config: MockConfig,
    state: Mutex<State>,
    arrived: Notify,
    seq: AtomicU64,
    in_flight: AtomicUsize,
    aborted: AtomicUsize,
    started: Instant,
    shutdown: watch::Receiver<bool>,
}

struct State {
    script: Script,
    requests: Vec<RecordedRequest>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written
        // (every critical section is a single push/pop), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push_script(&self, times: usize, b: Behaviour) {
        self.state().script.push(times, b);
    }

    pub(crate) fn set_default(&self, b: Behaviour) {
        self.state().script.set_default(b);
    }

    pub(crate) fn reset(&self) {
        let mut st = self.state();
        st.script.clear();
        st.script.set_default(self.config.default.clone());
        st.requests.clear();
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }
}

pub(crate) async fn start(
    kind: ProviderKind,
    config: MockConfig,
    addr: SocketAddr,
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
            requests: Vec::new(),
        }),
        config,
        arrived: Notify::new(),
        seq: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        aborted: AtomicUsize::new(0),
        started: Instant::now(),
        shutdown: shutdown_rx.clone(),
    });
    tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
    Ok(MockHandle {
        shared,
        addr,
        shutdown,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
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
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| handle(svc_shared.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                // Dropping the connection closes the socket.
                _ = shutdown.changed() => {}
            }
        });
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
        st.requests.push(RecordedRequest {
            seq,
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            version: parts.version,
            body: body.clone(),
            json: json.clone(),
            at: shared.started.elapsed(),
        });
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
    let call = match super::route(shared.kind, &view) {
        Routed::Immediate(rendered) => return Ok(into_response(rendered)),
        Routed::Call(call) => call,
    };
    let ctx = Ctx {
        config: &shared.config,
        call: Some(&call),
        seq,
        latency_ms: 0,
    };
    if let Some(kind) = precondition_error(&shared.config, &call) {
        return Ok(into_response(super::error(shared.kind, &kind, &ctx)));
    }

    let behaviour = shared.state().script.next();
    let guard = InFlight::new(shared.clone());
    let mut shutdown = shared.shutdown.clone();
    if !behaviour.latency.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(behaviour.latency) => {}
            _ = shutdown.changed() => return Err(MockError::Closed),
        }
    }
    let ctx = Ctx {
        latency_ms: u64::try_from(behaviour.latency.as_millis()).unwrap_or(u64::MAX),
        ..ctx
    };
    let (rendered, end) = match apply(&shared, &call, &behaviour.fault, &ctx) {
        Applied::Respond(rendered, end) => (rendered, end),
        Applied::Close => return Err(MockError::Closed),
        Applied::Hang => {
            // Hold the request until the client gives up (hyper drops this
            // future) or the mock shuts down.
            let _ = shutdown.changed().await;
            return Err(MockError::Closed);
        }
    };
    Ok(respond(rendered, end, &behaviour, guard))
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

/// How a response body ends after its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Complete,
    Abort,
    Stall,
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

fn into_response(r: Rendered) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::Full(Some(r.body())));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
    resp
}

fn respond(r: Rendered, end: End, b: &Behaviour, guard: InFlight) -> Response<MockBody> {
    let paced = !b.first_chunk_delay.is_zero() || !b.chunk_delay.is_zero();
    if end == End::Complete && !paced && !r.streaming {
        return into_response(r);
    }
    let (tx, rx) = mpsc::channel(1);
    let mut resp = Response::new(MockBody::Channel(rx));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
    let (first, each) = (b.first_chunk_delay, b.chunk_delay);
    tokio::spawn(pace(r.frames, end, first, each, tx, guard));
    resp
}

async fn pace(
    frames: Vec<Bytes>,
    end: End,
    first: Duration,
    each: Duration,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    guard: InFlight,
) {
    let mut shutdown = guard.shared.shutdown.clone();
    for (i, frame) in frames.into_iter().enumerate() {
        let delay = if i == 0 { first } else { each };
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = tx.closed() => return guard.aborted(),
                _ = shutdown.changed() => return,
            }
        }
        if tx.send(Ok(frame)).await.is_err() {
            return guard.aborted();
        }
    }
    match end {
        End::Complete => {}
        End::Abort => {
            let _ = tx
                .send(Err(std::io::Error::other("mock cut the stream (scripted)")))
                .await;
        }
        End::Stall => tokio::select! {
            _ = tx.closed() => guard.aborted(),
            _ = shutdown.changed() => {}
        },
    }
}

/// Counts a model call as in flight until its response body is done.
struct InFlight {
    shared: Arc<Shared>,
}

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        Self { shared }
    }

    /// The client went away before the body was complete.
    fn aborted(&self) {
        self.shared.aborted.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body: whole, or fed frame by frame from a pacing task.
pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Channel(_) => SizeHint::default(),
        }
    }
}

impl MockHandle {
    /// Which provider this mock speaks.
    pub fn kind(&self) -> ProviderKind {
        self.shared.kind
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queue `behaviour` for the next `times` model calls (after anything
    /// already queued). Auth failures, unknown paths and model listings do
    /// not consume steps.
    pub fn enqueue(&self, times: usize, behaviour: impl Into<Behaviour>) {
        self.shared.push_script(times, behaviour.into());
    }

    /// What every model call gets once the queue is empty.
    pub fn set_default(&self, behaviour: impl Into<Behaviour>) {
        self.shared.set_default(behaviour.into());
    }

    /// Drop queued steps (the default stays).
    pub fn clear_script(&self) {
        self.shared.state().script.clear();
    }

    /// Queued steps not yet consumed.
    pub fn pending_steps(&self) -> usize {
        self.shared.state().script.pending()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// How many requests were received (control API calls excluded).
    pub fn request_count(&self) -> usize {
        self.shared.state().requests.len()
    }

    /// How many requests were received on `path`.
    pub fn count_path(&self, path: &str) -> usize {
        self.shared
            .state()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Forget recorded requests.
    pub fn clear_requests(&self) {
        self.shared.state().requests.clear();
    }

    /// Model calls whose response is still being produced.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Paced, stalled or streamed responses the client abandoned before
    /// their end (it closed the connection or reset the stream).
    pub fn aborted_responses(&self) -> usize {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` requests arrived, or `timeout` passed; returns
    /// whether they did.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.request_count() >= n;
            }
        }
    }

    /// Wait until `aborted_responses()` reaches `n`, or `timeout` passed.
    pub async fn wait_for_aborts(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.aborted_responses() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stop serving and close every connection (also done on drop).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
