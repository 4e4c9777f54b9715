//! A plain hyper client and an SSE reader for tests that talk to mocks (or
//! to anything else on loopback) without the sidecar's own client: one
//! connection per request, HTTP/1.1 or h2c, whole bodies or frame by frame.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Why a request got no (complete) response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad url {0}")]
    Url(String),
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Build(#[from] http::Error),
    #[error("tls: {0}")]
    Tls(String),
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response whose body is read frame by frame.
pub struct Streaming {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

impl Streaming {
    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next data frame; `None` at the end, `Err` when the connection
    /// broke mid-body.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, hyper::Error>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Read to the end: every byte received, and the error if the body broke.
    pub async fn read_all(mut self) -> (Bytes, Option<hyper::Error>) {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            match chunk {
                Ok(c) => all.extend_from_slice(&c),
                Err(e) => return (all.into(), Some(e)),
            }
        }
        (all.into(), None)
    }
}

/// HTTP version to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 with prior knowledge (h2c in clear; h2 inside TLS).
    H2c,
}

/// Send a request and return the response with its body unread.
pub async fn open(
    proto: Proto,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Streaming, ClientError> {
    open_with(None, proto, method, url, headers, body.into()).await
}

/// Like [`open`] over TLS with `config` (see `mock::tls::client_config`);
/// `proto` picks the HTTP version spoken inside the TLS session.
pub async fn open_tls(
    config: std::sync::Arc<rustls::ClientConfig>,
    proto: Proto,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Streaming, ClientError> {
    open_with(Some(config), proto, method, url, headers, body.into()).await
}

async fn open_with(
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    proto: Proto,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Streaming, ClientError> {
    let uri: http::Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::Url(url.to_owned()))?
        .clone();
    let stream = TcpStream::connect(authority.as_str()).await?;
    let _ = stream.set_nodelay(true);
    let mut builder = Request::builder().method(method).uri(uri);
    if proto == Proto::Http1 {
        builder = builder.header(http::header::HOST, authority.as_str());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Full::new(body))?;
    let resp = match tls {
        None => exchange(stream, proto, req).await?,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(authority.host().to_owned())
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| ClientError::Tls(e.to_string()))?;
            exchange(stream, proto, req).await?
        }
    };
    let (parts, body) = resp.into_parts();
    Ok(Streaming {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn exchange<I>(
    io: I,
    proto: Proto,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, ClientError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    Ok(match proto {
        Proto::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        }
        Proto::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?
        }
    })
}

/// Send a request over HTTP/1.1 and read the whole response.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Response, ClientError> {
    let s = open(Proto::Http1, method, url, headers, body).await?;
    let (status, headers) = (s.status, s.headers.clone());
    let body = s.body.collect().await?.to_bytes();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `POST url` with a JSON body and `content-type: application/json`.
pub async fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Result<Response, ClientError> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(Method::POST, url, &all, body.to_string()).await
}

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON (`Null` when it is not JSON, e.g. `[DONE]`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// Parse an SSE body into events, per the HTML spec's rules: lines end in
/// `\n`, `\r\n` or `\r`; a blank line dispatches; `:` lines are comments; an
/// unterminated last event is dropped (it was never dispatched).
pub fn sse_events(text: &str) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let mut cur = SseEvent::default();
    let mut has_data = false;
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = normalized.split('\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            // The text after the last newline is an incomplete line.
            break;
        }
        if line.is_empty() {
            if has_data {
                out.push(std::mem::take(&mut cur));
            }
            cur = SseEvent::default();
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => cur.event = Some(value.to_owned()),
            "data" => {
                if has_data {
                    cur.data.push('\n');
                }
                cur.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parsing() {
        let evs =
            sse_events("event: a\ndata: {\"x\":1}\n\n: comment\ndata: [DONE]\r\n\r\ndata: partial");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some("a"));
        assert_eq!(evs[0].json()["x"], 1);
        assert_eq!(evs[1].data, "[DONE]");
    }
}

/// A minimal valid model call for a mock kind, with the default key in the
/// kind's own header: what tests send when the request itself is not the
/// point. Bedrock gets a well-formed (unverified) SigV4 header.
#[derive(Clone, Debug)]
pub struct ExampleRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

/// The SigV4 `Authorization` value examples use (signature not verified).
pub fn example_sigv4(access_key_id: &str, region: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/20250101/{region}/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={}",
        "0f".repeat(32)
    )
}

impl ExampleRequest {
    /// A chat call to `model` with one user message `text` on the mock at
    /// `base` (its `url()`).
    pub fn chat(
        kind: super::ProviderKind,
        base: &str,
        model: &str,
        text: &str,
        stream: bool,
    ) -> Self {
        use super::ProviderKind as K;
        use serde_json::json;
        let key = super::DEFAULT_API_KEY.to_owned();
        let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let (path, headers, body) = match kind {
            K::OpenAi => (
                "/v1/chat/completions".to_owned(),
                vec![h("authorization", &format!("Bearer {key}"))],
                json!({"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}),
            ),
            K::Azure => (
                format!("/openai/deployments/{model}/chat/completions?api-version=2024-10-21"),
                vec![h("api-key", &key)],
                json!({"messages": [{"role": "user", "content": text}], "stream": stream}),
            ),
            K::Anthropic => (
                "/v1/messages".to_owned(),
                vec![h("x-api-key", &key), h("anthropic-version", "2023-06-01")],
                json!({"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": text}], "stream": stream}),
            ),
            K::Gemini => (
                if stream {
                    format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
                } else {
                    format!("/v1beta/models/{model}:generateContent")
                },
                vec![h("x-goog-api-key", &key)],
                json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}),
            ),
            K::Bedrock => (
                format!(
                    "/model/{model}/{}",
                    if stream {
                        "converse-stream"
                    } else {
                        "converse"
                    }
                ),
                vec![
                    h("authorization", &example_sigv4(&key, "us-east-1")),
                    h("x-amz-date", "20250101T000000Z"),
                ],
                json!({"messages": [{"role": "user", "content": [{"text": text}]}]}),
            ),
        };
        let mut headers = headers;
        headers.push(h("content-type", "application/json"));
        Self {
            url: format!("{base}{path}"),
            headers,
            body,
        }
    }

    fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Send over HTTP/1.1 and read the whole response.
    pub async fn send(&self) -> Result<Response, ClientError> {
        send(
            Method::POST,
            &self.url,
            &self.header_refs(),
            self.body.to_string(),
        )
        .await
    }

    /// Send and return the response with its body unread.
    pub async fn open(&self, proto: Proto) -> Result<Streaming, ClientError> {
        open(
            proto,
            Method::POST,
            &self.url,
            &self.header_refs(),
            self.body.to_string(),
        )
        .await
    }
}
