//! Pieces every translating adapter needs and no provider owns: SSE
//! framing, retry hints from headers, data URLs, the failure constructor
//! and the log-safe message rule.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_crds::common::FailureClass;

use super::Failure;
use crate::openai::ChatRequest;

/// Longest retry hint we believe. A provider asking for more is treated as
/// asking for this much: the attempt stage fails over long before anyway.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(3600);

/// Longest SSE line (and event) accepted before the stream is declared
/// malformed, so a hostile upstream cannot make us buffer without bound.
pub const MAX_SSE_LINE: usize = 4 * 1024 * 1024;

/// Longest provider message carried into a [`Failure`].
const MAX_MESSAGE: usize = 200;

pub fn failure(class: FailureClass, status: Option<u16>, message: impl Into<String>) -> Failure {
    Failure {
        class,
        status,
        retry_after: None,
        message: message.into(),
    }
}

/// A provider's error message made fit for logs: control characters
/// dropped, cut at [`MAX_MESSAGE`] characters. Provider error messages
/// describe the request's shape (limits, parameter names), not its text.
pub fn safe_message(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE)
        .collect();
    if s.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

/// The class a bare status implies when the body says nothing we know.
pub fn class_for_status(status: u16) -> FailureClass {
    match status {
        200..=299 => FailureClass::Malformed,
        401 | 403 => FailureClass::Auth,
        402 => FailureClass::QuotaExhausted,
        404 => FailureClass::NotFound,
        413 => FailureClass::BadRequest,
        429 => FailureClass::RateLimited,
        503 | 529 => FailureClass::Overloaded,
        500..=599 => FailureClass::ServerError,
        _ => FailureClass::BadRequest,
    }
}

/// `retry-after-ms` (float milliseconds) or `retry-after` (delta seconds or
/// an HTTP date). Garbage, negative or past values mean no hint; values
/// above [`MAX_RETRY_HINT`] are capped.
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(cap(Duration::from_secs_f64(ms.min(1e12) / 1000.0)));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(cap(Duration::from_secs(secs)));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| cap(Duration::from_secs_f64(secs.min(1e9))));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    until(at.into(), now)
}

/// The time from `now` until `at`, capped; `None` when `at` is past.
pub fn until(at: SystemTime, now: SystemTime) -> Option<Duration> {
    at.duration_since(now).ok().map(cap)
}

/// A duration string as Google APIs write it (`"30s"`, `"1.5s"`).
pub fn parse_seconds_suffix(s: &str) -> Option<Duration> {
    let secs = s.trim().strip_suffix('s')?.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| cap(Duration::from_secs_f64(secs.min(1e9))))
}

fn cap(d: Duration) -> Duration {
    d.min(MAX_RETRY_HINT)
}

/// A `data:<mime>;base64,<data>` URL split into its media type and its
/// base64 payload (checked to decode). Other URLs give `None`.
pub fn parse_data_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    if mime.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .ok()?;
    Some((mime.to_ascii_lowercase(), data.to_owned()))
}

/// `base` without a trailing slash.
pub fn trim_base(base: &str) -> &str {
    base.trim_end_matches('/')
}

/// Tool-call arguments as the JSON object Anthropic and Bedrock want.
pub fn arguments_object(arguments: &str) -> Result<Value, Failure> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(failure(
            FailureClass::BadRequest,
            None,
            "tool call arguments are not a JSON object",
        )),
    }
}

/// The instruction standing in for OpenAI's JSON mode on providers that
/// have none.
pub fn json_instruction(req: &ChatRequest) -> Option<String> {
    let format = req.response_format.as_ref()?;
    match format.get("type").and_then(Value::as_str)? {
        "json_object" => Some("Respond only with a single valid JSON object.".into()),
        "json_schema" => {
            let schema = format
                .pointer("/json_schema/schema")
                .cloned()
                .unwrap_or(Value::Null);
            Some(format!(
                "Respond only with a single valid JSON object matching this JSON Schema: {schema}"
            ))
        }
        _ => None,
    }
}

/// One server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Incremental SSE framing (the WHATWG rules the providers follow): bytes
/// in any split, complete events out. Holds at most one partial line plus
/// the event being assembled.
#[derive(Debug, Default)]
pub struct SseFramer {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames the bytes; an error means the stream is not SSE we accept
    /// (invalid UTF-8 or an over-long line) and nothing more should be fed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.take_line(&line, &mut out)?;
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_SSE_LINE || self.data.len() > MAX_SSE_LINE {
            return Err("an SSE line or event exceeds the size limit".into());
        }
        Ok(out)
    }

    /// Flushes an event the stream ended without a blank line after.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            // A bad last line is dropped: the stream is over either way.
            let _ = self.take_line(&line, &mut out);
        }
        let _ = self.take_line(b"", &mut out);
        out
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        if line.is_empty() {
            if self.has_data {
                if self.data.ends_with('\n') {
                    self.data.pop();
                }
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| "SSE line is not UTF-8".to_owned())?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A synthetic chat id for providers whose responses carry none.
pub fn chat_id(prefix: &str, seed: &str) -> String {
    format!("chatcmpl-{prefix}-{seed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_framer_handles_any_split_and_comments() {
        let text = b": hello\nevent: a\ndata: 1\ndata: 2\n\r\nevent: b\r\ndata:x\n\ndata: tail";
        for split in 0..text.len() {
            let mut f = SseFramer::new();
            let mut got = f.push(&text[..split]).expect("frames");
            got.extend(f.push(&text[split..]).expect("frames"));
            got.extend(f.finish());
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        event: "a".into(),
                        data: "1\n2".into()
                    },
                    SseEvent {
                        event: "b".into(),
                        data: "x".into()
                    },
                    SseEvent {
                        event: "".into(),
                        data: "tail".into()
                    },
                ]
            );
        }
    }

    #[test]
    fn retry_hints_parse_and_ignore_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |k: &'static str, v: &'static str| {
            let mut m = http::HeaderMap::new();
            m.insert(k, http::HeaderValue::from_static(v));
            m
        };
        assert_eq!(
            retry_after(&h("retry-after", "7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&h("retry-after-ms", "1500"), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&h("retry-after", "soon"), now), None);
        assert_eq!(retry_after(&h("retry-after", "-3"), now), None);
        assert_eq!(
            retry_after(&h("retry-after", "99999999"), now),
            Some(MAX_RETRY_HINT)
        );
        assert_eq!(
            retry_after(&h("retry-after", "Tue, 14 Nov 2023 22:13:30 GMT"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_seconds_suffix("30s"), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_seconds_suffix("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_seconds_suffix("NaNs"), None);
    }

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/PNG;base64,AAAA"),
            Some(("image/png".into(), "AAAA".into()))
        );
        assert_eq!(parse_data_url("data:image/png;base64,!!"), None);
        assert_eq!(parse_data_url("https://x/y.png"), None);
    }
}
