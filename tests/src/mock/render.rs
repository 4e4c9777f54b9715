//! The contract between the server core and the provider modules: what a
//! provider hands back for a request ([`Routed`], [`Rendered`]) and the small
//! builders they share (JSON bodies, SSE frames).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::MockConfig;
use super::reply::Call;

/// The parts of a request a provider module looks at.
pub(crate) struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The URI's authority (HTTP/2 carries the host here, not in a header).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
    pub headers: &'a HeaderMap,
    pub json: Option<&'a serde_json::Value>,
    pub config: &'a MockConfig,
}

impl RequestView<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of query parameter `name`, percent-decoded.
    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// What a provider module makes of a request.
pub(crate) enum Routed {
    /// Answer now without consuming a script step: auth failures, unknown
    /// paths, unparsable bodies, model listings.
    Immediate(Rendered),
    /// A model call: the core consumes a script step and asks the provider to
    /// render the outcome.
    Call(Call),
}

/// Everything the core needs to send a response.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, frame by frame. A non-stream body is one frame.
    pub frames: Vec<Bytes>,
    /// Whether frames are stream events (paced by chunk delays).
    pub streaming: bool,
}

impl Rendered {
    /// A complete JSON body under `status`.
    pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Self {
            status,
            headers,
            frames: vec![Bytes::from(body.to_string())],
            streaming: false,
        }
    }

    /// A stream of `frames` with `content_type`, status 200.
    pub(crate) fn stream(content_type: &'static str, frames: Vec<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        Self {
            status: StatusCode::OK,
            headers,
            frames,
            streaming: true,
        }
    }

    /// A 200 HTML page, or under another status: what a proxy in front of the
    /// provider sends when it fails.
    pub(crate) fn html(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("Error");
        let code = status.as_u16();
        let page = format!(
            "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        Self {
            status,
            headers,
            frames: vec![Bytes::from(page)],
            streaming: false,
        }
    }

    /// Set `name: value`, ignoring values that are not valid header text.
    pub(crate) fn header(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self
    }

    /// Set header `name: value` given at run time (replacing that name);
    /// invalid names or values are skipped.
    pub(crate) fn set_header(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.insert(n, v);
        }
    }

    /// The whole body as one buffer.
    pub(crate) fn body(&self) -> Bytes {
        self.frames.concat().into()
    }

    /// Replace the status (an error object under 200, for instance).
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

/// One SSE event: `event: {name}` (when given) and `data: {data}`.
pub(crate) fn sse(event: Option<&str>, data: &serde_json::Value) -> Bytes {
    match event {
        Some(e) => Bytes::from(format!("event: {e}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// Percent-decode a URL component (`%3A` → `:`, `+` kept as is).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Mask a credential the way providers echo it back: a short prefix and the
/// last four characters, the rest starred. Never the whole key.
pub(crate) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("anthropic.claude-3-haiku-20240307-v1%3A0"),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn masking_never_shows_the_key() {
        assert_eq!(mask_key("sk-test-1234567890"), "sk-***********7890");
        assert_eq!(mask_key("short"), "*****");
    }
}
