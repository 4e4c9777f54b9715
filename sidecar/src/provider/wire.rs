//! Pieces every translating adapter needs and no provider owns: SSE
//! framing, retry hints from headers, data URLs, the failure constructor
//! and the log-safe message rule.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_crds::common::FailureClass;

use super::retry_hint::{self, MAX_HINT};
use super::{Failure, StreamContext, StreamEvent};
use crate::openai::{ChatChunk, ChatRequest, ChunkChoice, ContentPart, Delta, Usage};

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

/// A request the provider's API cannot express: refused before the call.
pub fn bad_request(message: impl Into<String>) -> Failure {
    failure(FailureClass::BadRequest, None, message)
}

/// The URL of an `image_url` content part; a part without one is refused.
pub fn image_url(part: &ContentPart) -> Result<&str, Failure> {
    part.image_url
        .as_ref()
        .map(|i| i.url.as_str())
        .ok_or_else(|| bad_request("image_url part without a url"))
}

/// What an OpenAI `tool_choice` asks for, read once for every
/// translating adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    Auto,
    Required,
    None,
    /// `{"type":"function","function":{"name":…}}`.
    Function(&'a str),
}

/// `tool_choice` read: `None` when absent, a 400 for an unknown string
/// or an object without `function.name`.
pub fn tool_choice(choice: Option<&Value>) -> Result<Option<ToolChoice<'_>>, Failure> {
    let choice = match choice {
        None => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            "none" => ToolChoice::None,
            other => return Err(bad_request(format!("unknown tool_choice {other:?}"))),
        },
        Some(v) => ToolChoice::Function(
            v.pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice object without function.name"))?,
        ),
    };
    Ok(Some(choice))
}

/// A provider's error message made fit for logs: control characters
/// dropped, quoted values longer than [`MAX_QUOTED`] characters replaced
/// (providers sometimes echo an offending value, which may be prompt
/// text), cut at [`MAX_MESSAGE`] characters. What remains describes the
/// request's shape (limits, parameter names), not its content.
pub fn safe_message(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        match after.find('"') {
            Some(close) => {
                let quoted = &after[..close];
                if quoted.chars().count() > MAX_QUOTED {
                    out.push_str("<redacted>");
                } else {
                    out.push_str(quoted);
                }
                out.push('"');
                rest = &after[close + 1..];
            }
            None => {
                // An unterminated quote: drop what follows it.
                out.push_str("<redacted>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    let mut cut: String = out
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE)
        .collect();
    if out.chars().count() > MAX_MESSAGE {
        cut.push('…');
    }
    cut
}

/// Longest quoted value kept in a provider message.
const MAX_QUOTED: usize = 40;

/// The class a bare status implies when the body says nothing we know.
pub fn class_for_status(status: u16) -> FailureClass {
    match status {
        200..=299 => FailureClass::Malformed,
        401 | 403 => FailureClass::Auth,
        402 => FailureClass::QuotaExhausted,
        // As the shared table reads a bare 408.
        408 => FailureClass::TimeoutHeaders,
        404 => FailureClass::NotFound,
        413 => FailureClass::BadRequest,
        429 => FailureClass::RateLimited,
        503 | 529 => FailureClass::Overloaded,
        500..=599 => FailureClass::ServerError,
        _ => FailureClass::BadRequest,
    }
}

/// `retry-after-ms`, else `retry-after` (seconds or an HTTP date); no
/// hint when absent, garbage or past [`MAX_HINT`].
pub fn header_retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    text("retry-after-ms")
        .and_then(retry_hint::parse_millis)
        .or_else(|| text("retry-after").and_then(|v| retry_hint::parse_retry_after(v, now)))
}

/// A duration string as Google APIs write it (`"30s"`, `"1.5s"`).
pub fn parse_seconds_suffix(s: &str) -> Option<Duration> {
    let secs = s.trim().strip_suffix('s')?.parse::<f64>().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let d = Duration::from_secs_f64(secs.min(1e9));
    (d <= MAX_HINT).then_some(d)
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

/// Builds the chunks of one translated stream. The role goes out with
/// the first token, never alone, so the first chunk is a real token.
#[derive(Debug)]
pub struct ChunkBuilder {
    pub id: String,
    pub model: String,
    pub created: u64,
    role_sent: bool,
}

impl ChunkBuilder {
    pub fn new(ctx: &StreamContext) -> Self {
        Self {
            id: ctx.id.clone(),
            model: ctx.model.clone(),
            created: ctx.created,
            role_sent: false,
        }
    }

    pub fn event(&mut self, mut delta: Delta, finish_reason: Option<String>) -> StreamEvent {
        if !self.role_sent && (delta.content.is_some() || delta.tool_calls.is_some()) {
            delta.role = Some("assistant".into());
            self.role_sent = true;
        }
        StreamEvent::Chunk {
            chunk: ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason,
                    logprobs: None,
                }],
                usage: None,
                system_fingerprint: None,
            },
            raw: None,
        }
    }
}

impl ChunkBuilder {
    /// The end-of-stream usage, twice: as OpenAI's usage chunk (empty
    /// `choices`, sent to clients that asked for `include_usage`) and as
    /// the [`StreamEvent::Usage`] accounting reads.
    pub fn usage(&self, usage: Usage) -> [StreamEvent; 2] {
        [
            StreamEvent::Chunk {
                chunk: ChatChunk {
                    id: self.id.clone(),
                    object: "chat.completion.chunk".into(),
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage: Some(usage),
                    system_fingerprint: None,
                },
                raw: None,
            },
            StreamEvent::Usage(usage),
        ]
    }
}

/// Seconds since the Unix epoch of `t` (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_choice_is_read_once_for_every_adapter() {
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        for (v, want) in [
            (json!("auto"), ToolChoice::Auto),
            (json!("required"), ToolChoice::Required),
            (json!("none"), ToolChoice::None),
            (named, ToolChoice::Function("get_weather")),
        ] {
            assert_eq!(tool_choice(Some(&v)).ok().flatten(), Some(want), "{v}");
        }
        assert_eq!(tool_choice(None).ok().flatten(), None);
        for (v, message) in [
            (json!("sometimes"), "unknown tool_choice \"sometimes\""),
            (
                json!({"type": "function"}),
                "tool_choice object without function.name",
            ),
        ] {
            let f = tool_choice(Some(&v)).expect_err("refused");
            assert_eq!(
                (f.class, f.message.as_str()),
                (FailureClass::BadRequest, message)
            );
        }
    }

    #[test]
    fn google_durations() {
        assert_eq!(parse_seconds_suffix("30s"), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_seconds_suffix("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_seconds_suffix("NaNs"), None);
        assert_eq!(parse_seconds_suffix("-1s"), None);
        assert_eq!(parse_seconds_suffix("99999999s"), None);
        assert_eq!(parse_seconds_suffix("30"), None);
    }

    #[test]
    fn messages_lose_long_quoted_values() {
        assert_eq!(
            safe_message(
                "Invalid value at 'x' (TYPE_INT), \"tell me a very long secret story about dragons\""
            ),
            "Invalid value at 'x' (TYPE_INT), \"<redacted>\""
        );
        assert_eq!(
            safe_message("Unknown name \"foo\"."),
            "Unknown name \"foo\"."
        );
        assert_eq!(safe_message("bad \"unterminated"), "bad \"<redacted>");
        assert_eq!(safe_message("a\nb"), "ab");
        assert_eq!(
            safe_message(&"x".repeat(300)).chars().count(),
            MAX_MESSAGE + 1
        );
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
