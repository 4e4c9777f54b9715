//! Egress: the one place that talks to providers.
//!
//! A pooled hyper client over rustls (webpki roots plus an optional extra
//! CA bundle), HTTP/1.1 and HTTP/2 (ALPN), with a connect timeout per
//! provider (one pool per distinct connect timeout). The caller bounds the
//! time to response headers; [`UpstreamBody::next`] bounds the time between
//! chunks and the total deadline. `mock://` requests are answered in-process
//! by [`crate::provider::mock::respond`], through the same types, so the
//! mock exercises the real decode and timeout paths.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_crds::FailureClass;
use tokio::time::{Instant, timeout_at};

use crate::provider::mock::{self, MockReply};
use crate::provider::{Endpoint, Failure, UpstreamRequest};

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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

/// The `Host` header hyper-util sets for `uri` when a request has none:
/// the host, with `:port` unless the port is the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
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

/// The shared upstream client.
pub struct Egress {
    tls: rustls::ClientConfig,
    clients: Mutex<FastMap<Duration, HttpsClient>>,
    /// Each upstream URL parsed once: parsing one (`Request::builder().uri`)
    /// cost ≈1.2 k instructions and two allocations a request; a clone of
    /// a parsed `Uri` shares its bytes. With it, its `Host` header, which
    /// hyper-util would otherwise format on every request.
    uris: Mutex<FastMap<String, (Uri, Option<HeaderValue>)>>,
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

/// A response body being read.
pub enum UpstreamBody {
    Http(Incoming),
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
            tls,
            clients: Mutex::default(),
            uris: Mutex::default(),
            mock_counts: Mutex::new(HashMap::new()),
        })
    }

    fn client(&self, connect_timeout: Duration) -> HttpsClient {
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(connect_timeout));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(self.tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(https)
            })
            .clone()
    }

    /// `url` parsed, and its `Host` value; `None` when it does not parse.
    fn uri(&self, url: &str) -> Option<(Uri, Option<HeaderValue>)> {
        let mut uris = match self.uris.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(parsed) = uris.get(url) {
            return Some(parsed.clone());
        }
        let uri = Uri::try_from(url).ok()?;
        let parsed = (uri.clone(), host_header(&uri));
        if uris.len() >= URIS {
            uris.clear();
        }
        uris.insert(url.to_owned(), parsed.clone());
        Some(parsed)
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
        let builder = Request::builder().method(req.method);
        let (mut builder, host) = match self.uri(&req.url) {
            Some((uri, host)) => (builder.uri(uri), host),
            // Unparsable: the builder says why.
            None => (builder.uri(req.url.as_str()), None),
        };
        if let Some(h) = builder.headers_mut() {
            *h = req.headers;
            if let Some(host) = host {
                h.entry(http::header::HOST).or_insert(host);
            }
        }
        let request = builder.body(Full::new(req.body)).map_err(|e| {
            Failure::new(
                FailureClass::BadRequest,
                format!("cannot build upstream request: {e}"),
            )
        })?;
        let client = self.client(connect_timeout);
        match timeout_at(headers_by, client.request(request)).await {
            Err(_) => Err(Failure::new(
                FailureClass::TimeoutHeaders,
                "no response headers in time",
            )),
            Ok(Err(e)) if e.is_connect() => Err(Failure::new(
                FailureClass::Connect,
                format!(
                    "cannot connect to {}: {}",
                    endpoint.provider,
                    source_chain(&e)
                ),
            )),
            Ok(Err(e)) => Err(Failure::new(
                FailureClass::Reset,
                format!(
                    "connection closed before response headers: {}",
                    source_chain(&e)
                ),
            )),
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                Ok(UpstreamResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: UpstreamBody::Http(body),
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

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
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
            UpstreamBody::Http(body) => loop {
                match timeout_at(by, body.frame()).await {
                    Err(_) => return Some(Err(stalled())),
                    Ok(None) => return None,
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

    /// Reads the rest of the body, up to `max` bytes. `Ok(None)` when it is
    /// larger than that.
    pub async fn collect(
        &mut self,
        max: usize,
        idle: Duration,
        deadline: Instant,
    ) -> Result<Option<Bytes>, Failure> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.next(idle, deadline, FailureClass::TimeoutIdle).await {
            let chunk = chunk?;
            if buf.len() + chunk.len() > max {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_one_hyper_util_would_send() {
        for (url, host) in [
            ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
            ("https://api.openai.com/v1", "api.openai.com"),
            ("https://api.example:443/v1", "api.example"),
            ("http://api.example:80/v1", "api.example"),
            ("http://api.example:443/v1", "api.example:443"),
            ("http://[::1]:9000/v1", "[::1]:9000"),
        ] {
            let uri = Uri::try_from(url).expect("uri");
            assert_eq!(
                host_header(&uri).as_ref().and_then(|h| h.to_str().ok()),
                Some(host),
                "{url}"
            );
        }
    }
}
