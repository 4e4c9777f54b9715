//! Egress: the one place that talks to providers.
//!
//! hyper connections over rustls (webpki roots plus an optional extra CA
//! bundle), HTTP/1.1 and HTTP/2 (ALPN), pooled per origin ([`pool`]), with
//! a connect timeout per provider covering TCP and TLS. The caller bounds the
//! time to response headers; [`UpstreamBody::next`] bounds the time between
//! chunks and the total deadline. `mock://` requests are answered in-process
//! by [`crate::provider::mock::respond`], through the same types, so the
//! mock exercises the real decode and timeout paths.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use sluice_crds::FailureClass;
use tokio::time::{Instant, timeout_at};

use crate::provider::mock::{self, MockReply};
use crate::provider::{Endpoint, Failure, UpstreamRequest};

mod pool;

use pool::{Connector, Destination, Lease, Origin, SendError, source_chain};

/// Why the egress client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot read extra CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Upstream URLs parsed so far; cleared past this many (they come from
/// the configuration, so only reloads add new ones).
const URIS: usize = 1024;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The shared upstream client.
pub struct Egress {
    connector: Connector,
    /// Each upstream URL parsed once (parsing one cost ≈1.2 k instructions
    /// and two allocations a request), with its `Host` header and its
    /// origin's connections.
    destinations: Mutex<Destinations>,
    /// Requests served per mock provider, for deterministic failures.
    mock_counts: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Egress")
    }
}

/// A response whose headers have arrived.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

/// How much of a body [`UpstreamBody::release`] reads past its last event.
const DRAIN_BYTES: usize = 64 << 10;

/// The destinations known so far, and the origins they share.
#[derive(Default)]
struct Destinations {
    by_url: FastMap<String, Arc<Destination>>,
    origins: FastMap<String, Arc<Origin>>,
}

/// A response body being read.
pub enum UpstreamBody {
    /// With the HTTP/1 connection, given back at the body's end.
    Http(Incoming, Option<Lease>),
    Mock {
        chunks: VecDeque<Bytes>,
        gap: Duration,
    },
}

impl Egress {
    /// A client trusting the webpki roots and, if given, the PEM
    /// certificates in `extra_ca`.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, EgressError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            use rustls_pki_types::pem::PemObject;
            let err = |reason: String| EgressError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificates found".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EgressError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: Connector::new(tls),
            destinations: Mutex::default(),
            mock_counts: Mutex::new(HashMap::new()),
        })
    }

    /// Where `url` goes; `None` when it is not an absolute URL.
    fn destination(&self, url: &str) -> Option<Arc<Destination>> {
        let mut known = match self.destinations.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(dest) = known.by_url.get(url) {
            return Some(dest.clone());
        }
        let uri = Uri::try_from(url).ok()?;
        let origin_key = format!("{}://{}", uri.scheme_str()?, uri.authority()?);
        if known.by_url.len() >= URIS {
            // Only reloads add URLs; their idle connections go with them.
            *known = Destinations::default();
        }
        let origin = known.origins.entry(origin_key).or_default().clone();
        let dest = Arc::new(Destination::new(uri, origin));
        known.by_url.insert(url.to_owned(), dest.clone());
        Some(dest)
    }

    /// Sends `req` and waits for the response headers until `headers_by`.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: UpstreamRequest,
        connect_timeout: Duration,
        headers_by: Instant,
    ) -> Result<UpstreamResponse, Failure> {
        if let Some(rest) = req.url.strip_prefix(mock::SCHEME) {
            return self.send_mock(endpoint, rest, &req.body, headers_by).await;
        }
        let Some(dest) = self.destination(&req.url) else {
            return Err(Failure::new(
                FailureClass::BadRequest,
                format!("cannot build upstream request: invalid URL {:?}", req.url),
            ));
        };
        let mut request = Request::new(Full::new(req.body));
        *request.method_mut() = req.method;
        *request.headers_mut() = req.headers;
        let send = self.connector.send(&dest, request, connect_timeout);
        match timeout_at(headers_by, send).await {
            Err(_) => Err(Failure::new(
                FailureClass::TimeoutHeaders,
                "no response headers in time",
            )),
            Ok(Err(SendError::Connect(reason))) => Err(Failure::new(
                FailureClass::Connect,
                format!("cannot connect to {}: {reason}", endpoint.provider),
            )),
            Ok(Err(SendError::Reset(reason))) => Err(Failure::new(
                FailureClass::Reset,
                format!("connection closed before response headers: {reason}"),
            )),
            Ok(Ok((resp, lease))) => {
                let (parts, body) = resp.into_parts();
                Ok(UpstreamResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: UpstreamBody::Http(body, lease),
                })
            }
        }
    }

    async fn send_mock(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &[u8],
        headers_by: Instant,
    ) -> Result<UpstreamResponse, Failure> {
        let n = {
            let mut counts = match self.mock_counts.lock() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            let count = counts.entry(endpoint.provider.clone()).or_insert(0);
            let n = *count;
            *count += 1;
            n
        };
        let reply: MockReply = mock::respond(endpoint.mock.as_ref(), path, body, n);
        if timeout_at(headers_by, tokio::time::sleep(reply.latency))
            .await
            .is_err()
        {
            return Err(Failure::new(
                FailureClass::TimeoutHeaders,
                "no response headers in time",
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(reply.content_type),
        );
        Ok(UpstreamResponse {
            status: reply.status,
            headers,
            body: UpstreamBody::Mock {
                chunks: reply.chunks.into(),
                gap: reply.gap,
            },
        })
    }
}

impl UpstreamBody {
    /// The next chunk of data, `None` at the end. `idle` bounds the wait
    /// for this chunk, `deadline` the whole call; `idle_class` says what a
    /// stall is (`timeout-first-token` before the first token,
    /// `timeout-idle` after).
    pub async fn next(
        &mut self,
        idle: Duration,
        deadline: Instant,
        idle_class: FailureClass,
    ) -> Option<Result<Bytes, Failure>> {
        let idle_by = Instant::now() + idle;
        let (by, class) = if idle_by < deadline {
            (idle_by, idle_class)
        } else {
            (deadline, FailureClass::TimeoutTotal)
        };
        let stalled = || Failure::new(class, "upstream stalled");
        match self {
            UpstreamBody::Mock { chunks, gap } => {
                if chunks.is_empty() {
                    return None;
                }
                if !gap.is_zero() && timeout_at(by, tokio::time::sleep(*gap)).await.is_err() {
                    return Some(Err(stalled()));
                }
                chunks.pop_front().map(Ok)
            }
            UpstreamBody::Http(body, lease) => loop {
                match timeout_at(by, body.frame()).await {
                    Err(_) => return Some(Err(stalled())),
                    Ok(None) => {
                        if let Some(lease) = lease.take() {
                            lease.give_back();
                        }
                        return None;
                    }
                    Ok(Some(Err(e))) => {
                        return Some(Err(Failure::new(
                            FailureClass::StreamInterrupted,
                            format!("upstream body cut: {}", source_chain(&e)),
                        )));
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Some(Ok(data));
                        }
                        // Trailers or an empty frame: keep reading.
                    }
                }
            },
        }
    }

    /// Done with a body whose last event has been read (a stream's
    /// `[DONE]`): its HTTP/1 connection goes back to the pool once the rest
    /// of the body has arrived ([`pool::Lease::park`]: within two seconds,
    /// at most [`DRAIN_BYTES`]) instead of being closed.
    pub fn release(self) {
        if let UpstreamBody::Http(body, Some(lease)) = self {
            lease.park(body, DRAIN_BYTES);
        }
    }

    /// Reads the rest of the body, up to `max` bytes. `Ok(None)` when it is
    /// larger than that.
    pub async fn collect(
        &mut self,
        max: usize,
        idle: Duration,
        deadline: Instant,
    ) -> Result<Option<Bytes>, Failure> {
        // A body that arrives in one chunk (most) is kept as it came,
        // without a copy; a second chunk starts a buffer.
        let mut first: Option<Bytes> = None;
        let mut joined = Vec::new();
        let mut len = 0;
        while let Some(chunk) = self.next(idle, deadline, FailureClass::TimeoutIdle).await {
            let chunk = chunk?;
            len += chunk.len();
            if len > max {
                return Ok(None);
            }
            if first.is_none() && joined.is_empty() {
                first = Some(chunk);
                continue;
            }
            if let Some(first) = first.take() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&chunk);
        }
        Ok(Some(first.unwrap_or_else(|| Bytes::from(joined))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> UpstreamBody {
        UpstreamBody::Mock {
            chunks: chunks.iter().map(|c| Bytes::from_static(c)).collect(),
            gap: Duration::ZERO,
        }
    }

    async fn collect(chunks: &[&'static [u8]], max: usize) -> Option<Bytes> {
        let deadline = Instant::now() + Duration::from_secs(5);
        body(chunks)
            .collect(max, Duration::from_secs(1), deadline)
            .await
            .expect("no failure")
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_is_kept_as_it_came() {
        static ONE: &[u8] = b"{\"id\":1}";
        let got = collect(&[ONE], 64).await.expect("fits");
        assert_eq!(got.as_ptr(), ONE.as_ptr(), "not copied");
    }

    #[tokio::test]
    async fn chunks_are_joined_in_order_up_to_the_cap() {
        let parts: &[&'static [u8]] = &[b"ab", b"cd", b"ef"];
        assert_eq!(collect(parts, 6).await.as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(collect(parts, 5).await, None, "one byte over the cap");
        assert_eq!(collect(&[], 5).await.as_deref(), Some(&b""[..]));
    }
}
