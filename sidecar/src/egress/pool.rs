//! Upstream connections, kept per origin (scheme, host and port).
//!
//! hyper's connection API with a pool of our own instead of hyper-util's
//! legacy `Client`: an [`Origin`] is found once per upstream URL (the
//! caller caches it with the parsed URL), so a request reaches its idle
//! connections without hashing a key, and an HTTP/1 connection goes back
//! to its origin when the response body has been read to its end, without
//! a task spawned per request to wait for it. The legacy client's pool
//! (SipHash of its key, the checkout future, the spawned return) was
//! ≈10 k of the sidecar's 79 k instructions per request (callgrind,
//! `scripts/profile-sidecar.sh`); with this pool a request costs 68.8 k.
//!
//! What it keeps from that client: ALPN picks HTTP/2 over TLS (one shared
//! connection per origin, multiplexed) or HTTP/1.1 (one request at a time,
//! idle connections reused newest first); a request that a reused
//! connection closed before sending is sent again on another, since it
//! provably never left; HTTP/1 requests carry the origin-form target and a
//! `Host` header. Idle connections are dropped after [`IDLE_FOR`], and at
//! most [`MAX_IDLE`] are kept per origin.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower_service::Service;

/// How long an idle connection is kept for reuse.
pub const IDLE_FOR: Duration = Duration::from_secs(90);

/// Idle HTTP/1 connections kept per origin, at most: a burst of a
/// thousand concurrent requests does not leave a thousand sockets and
/// their buffers behind.
pub const MAX_IDLE: usize = 256;

type Body = Full<Bytes>;

/// Where requests to one upstream URL go: the URL in the two request-target
/// forms, the `Host` value, and the origin's connections.
#[derive(Debug)]
pub struct Destination {
    /// Absolute form: what the connector dials and HTTP/2 sends.
    pub uri: Uri,
    /// Origin form (path and query): what HTTP/1 sends.
    pub origin_form: Uri,
    /// `host[:port]`, the port only when it is not the scheme's default.
    pub host: Option<HeaderValue>,
    pub origin: Arc<Origin>,
}

impl Destination {
    /// `uri` with `origin`'s connections.
    pub fn new(uri: Uri, origin: Arc<Origin>) -> Self {
        let origin_form = match uri.path_and_query() {
            Some(p) if p.as_str() != "/" => {
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = Some(p.clone());
                Uri::from_parts(parts).unwrap_or_default()
            }
            _ => Uri::default(),
        };
        Self {
            host: host_header(&uri),
            origin_form,
            uri,
            origin,
        }
    }
}

/// The `Host` header for `uri`: the host, with `:port` unless the port is
/// the scheme's default (what hyper-util sends).
pub fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    };
    match uri.port_u16() {
        Some(port) if Some(port) != default => {
            HeaderValue::from_str(&format!("{host}:{port}")).ok()
        }
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// One origin's idle connections.
#[derive(Debug, Default)]
pub struct Origin {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Oldest first; taken from the end.
    h1: Vec<(http1::SendRequest<Body>, Instant)>,
    h2: Option<http2::SendRequest<Body>>,
    /// Connections whose caller is done but whose response has not quite
    /// ended (a stream's terminating chunk, a moment behind its last
    /// event); see [`Lease::park`].
    draining: Vec<Draining>,
}

/// A connection on its way back to the idle list: until the rest of its
/// response has been read and it asks for its next request.
struct Draining {
    /// What is left of the response; `None` once it has ended.
    body: Option<Incoming>,
    sender: http1::SendRequest<Body>,
    since: Instant,
    /// Bytes of body it may still read before it is given up.
    left: usize,
}

impl std::fmt::Debug for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draining")
            .field("ended", &self.body.is_none())
            .field("left", &self.left)
            .finish()
    }
}

/// How long a parked connection may take to finish its response.
pub const DRAIN_FOR: Duration = Duration::from_secs(2);

/// What is left of a body, read without waiting: `Some(true)` at its end,
/// `Some(false)` when more is to come, `None` when it failed or passed
/// `left` bytes.
fn read_what_is_here(body: &mut Incoming, left: &mut usize) -> Option<bool> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        match http_body::Body::poll_frame(std::pin::Pin::new(&mut *body), &mut cx) {
            std::task::Poll::Ready(None) => return Some(true),
            std::task::Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                *left = left.checked_sub(n)?;
            }
            std::task::Poll::Ready(Some(Err(_))) => return None,
            std::task::Poll::Pending => return Some(false),
        }
    }
}

impl Idle {
    /// Moves parked connections whose responses have ended to the idle
    /// list; drops those that failed, overran or took too long.
    fn settle(&mut self, now: Instant) {
        if self.draining.is_empty() {
            return;
        }
        let mut i = 0;
        while let Some(d) = self.draining.get_mut(i) {
            let usable = if now.duration_since(d.since) >= DRAIN_FOR || d.sender.is_closed() {
                Some(false)
            } else {
                match d.body.as_mut().map(|b| read_what_is_here(b, &mut d.left)) {
                    Some(None) => Some(false),
                    Some(Some(false)) => None,
                    Some(Some(true)) | None => {
                        d.body = None;
                        d.sender.is_ready().then_some(true)
                    }
                }
            };
            match usable {
                // Still on its way: looked at again next time.
                None => i += 1,
                Some(false) => {
                    self.draining.swap_remove(i);
                }
                Some(true) => {
                    let d = self.draining.swap_remove(i);
                    self.push_h1(d.sender, now);
                }
            }
        }
    }

    /// Adds a ready connection to the idle list, dropping the stale ones
    /// and the oldest past [`MAX_IDLE`].
    fn push_h1(&mut self, sender: http1::SendRequest<Body>, now: Instant) {
        // Taken newest first, so the stale ones gather at the front.
        if self
            .h1
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_FOR)
        {
            self.h1
                .retain(|(s, since)| now.duration_since(*since) < IDLE_FOR && !s.is_closed());
        }
        if self.h1.len() >= MAX_IDLE {
            self.h1.remove(0);
        }
        self.h1.push((sender, now));
    }
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Origin {
    fn idle(&self) -> MutexGuard<'_, Idle> {
        match self.idle.lock() {
            Ok(i) => i,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A connection ready for a request, if one is open.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle();
        if let Some(h2) = &idle.h2 {
            if !h2.is_closed() {
                return Some(Conn::H2(h2.clone()));
            }
            idle.h2 = None;
        }
        let now = Instant::now();
        idle.settle(now);
        while let Some((sender, since)) = idle.h1.pop() {
            if sender.is_ready() && now.duration_since(since) < IDLE_FOR {
                return Some(Conn::H1(sender));
            }
        }
        None
    }

    /// Takes a connection back: into the idle list at once if its
    /// response has ended and it waits for its next request (the usual
    /// case), else parked until it does — looked at again whenever the
    /// origin is next used; no task waits for it.
    fn check_in(&self, back: Draining) {
        let now = back.since;
        let mut idle = self.idle();
        if idle.draining.len() >= MAX_IDLE {
            idle.draining.remove(0);
        }
        idle.draining.push(back);
        idle.settle(now);
    }

    fn put_h2(&self, sender: http2::SendRequest<Body>) {
        self.idle().h2 = Some(sender);
    }

    /// Idle HTTP/1 connections (parked ones that have become usable
    /// included, as the next request would find them) and whether an
    /// HTTP/2 one is held (tests).
    #[cfg(test)]
    pub fn idle_counts(&self) -> (usize, bool) {
        let mut idle = self.idle();
        idle.settle(Instant::now());
        (idle.h1.len(), idle.h2.is_some())
    }
}

/// An HTTP/1 connection lent to one request: [`Lease::give_back`] once the
/// response body has been read to its end; dropped otherwise, which closes
/// the connection (a half-read response cannot be followed by another).
pub struct Lease {
    origin: Arc<Origin>,
    sender: http1::SendRequest<Body>,
}

impl Lease {
    /// Returns the connection, whose response has been read to its end,
    /// to its origin's idle list (see [`Origin::check_in`]).
    pub fn give_back(self) {
        self.check_in(None, 0);
    }

    /// Returns the connection once the rest of `body` — at most `left`
    /// bytes, within [`DRAIN_FOR`] — has arrived. For a caller done with a
    /// response before its end (a stream's terminating chunk may follow
    /// its last event by a moment).
    pub fn park(self, body: Incoming, left: usize) {
        self.check_in(Some(body), left);
    }

    fn check_in(self, body: Option<Incoming>, left: usize) {
        let Lease { origin, sender } = self;
        origin.check_in(Draining {
            body,
            sender,
            since: Instant::now(),
            left,
        });
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the request was provably not sent.
    Connect(String),
    /// The connection failed after the request may have been sent.
    Reset(String),
}

/// Dials origins: TCP with `TCP_NODELAY`, TLS by rustls for `https`, ALPN.
#[derive(Clone)]
pub struct Connector {
    https: HttpsConnector<HttpConnector>,
}

impl Connector {
    pub fn new(tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Self { https }
    }

    /// Sends `req` (whose headers and body are set; its target is replaced)
    /// to `dest`, on an idle connection or a new one made within
    /// `connect_timeout` (TCP and TLS). The lease is `Some` for HTTP/1.
    pub async fn send(
        &self,
        dest: &Destination,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        loop {
            let (conn, reused) = match dest.origin.take() {
                Some(conn) => (conn, true),
                None => (self.connect(dest, connect_timeout).await?, false),
            };
            let sent = match conn {
                Conn::H2(mut sender) => {
                    *req.uri_mut() = dest.uri.clone();
                    req.headers_mut().remove(http::header::HOST);
                    sender.try_send_request(req).await.map(|r| (r, None))
                }
                Conn::H1(mut sender) => {
                    *req.uri_mut() = dest.origin_form.clone();
                    if let Some(host) = &dest.host {
                        req.headers_mut()
                            .entry(http::header::HOST)
                            .or_insert_with(|| host.clone());
                    }
                    match sender.try_send_request(req).await {
                        Ok(resp) => Ok((
                            resp,
                            Some(Lease {
                                origin: dest.origin.clone(),
                                sender,
                            }),
                        )),
                        Err(e) => Err(e),
                    }
                }
            };
            match sent {
                Ok(answer) => return Ok(answer),
                Err(mut e) => match e.take_message() {
                    // Closed under us before it was written: try another.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Reset(source_chain(&e.into_error()))),
                },
            }
        }
    }

    async fn connect(&self, dest: &Destination, timeout: Duration) -> Result<Conn, SendError> {
        let dial = async {
            let mut https = self.https.clone();
            poll_fn(|cx| https.poll_ready(cx))
                .await
                .map_err(|e| source_chain(&*e))?;
            let io = https
                .call(dest.uri.clone())
                .await
                .map_err(|e| source_chain(&*e))?;
            if io.connected().is_negotiated_h2() {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(|e| source_chain(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                dest.origin.put_h2(sender.clone());
                Ok(Conn::H2(sender))
            } else {
                let (sender, conn) = http1::handshake(io).await.map_err(|e| source_chain(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
                    }
                });
                Ok(Conn::H1(sender))
            }
        };
        match tokio::time::timeout(timeout, dial).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(reason)) => Err(SendError::Connect(reason)),
            Err(_) => Err(SendError::Connect(format!(
                "no connection within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// An error and its sources, `: `-joined.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests;
