//! Ingress: the first stage. Reads the body under a size cap, checks it is
//! UTF-8 and not nested deeper than the limit (before parsing, so a hostile
//! document cannot exhaust the stack), parses it into the typed request
//! naming the offending field on a type error, and validates what the
//! gateway relies on. Everything here answers 4xx, never panics.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::openai::{ChatRequest, EmbeddingsRequest};

/// Input limits, from flags.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request body, bytes.
    pub max_body: usize,
    /// Messages in one chat request.
    pub max_messages: usize,
    /// JSON nesting depth.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 8 << 20,
            max_messages: 4096,
            max_depth: 64,
        }
    }
}

/// Reads the whole request body, refusing more than `max` bytes.
pub async fn read_body<B>(headers: &http::HeaderMap, body: B, max: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || ApiError::too_large(format!("request body larger than {max} bytes"));
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::invalid_json("the request body could not be read")),
    }
}

/// Parses and validates a chat completion request.
pub fn parse_chat(raw: &[u8], limits: &Limits) -> Result<ChatRequest, ApiError> {
    let req: ChatRequest = parse(raw, limits)?;
    validate_chat(req, limits)
}

/// Parses an Anthropic Messages request (`POST /v1/messages`) into the
/// canonical chat request, with the same limits and validation.
pub fn parse_messages(raw: &[u8], limits: &Limits) -> Result<ChatRequest, ApiError> {
    if std::str::from_utf8(raw).is_err() {
        return Err(ApiError::invalid_json(
            "the request body is not valid UTF-8",
        ));
    }
    check_depth(raw, limits.max_depth)?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
        return Err(ApiError::invalid_json(format!(
            "the request body is not valid JSON: {e}"
        )));
    }
    let req = crate::messages::parse_request(raw)
        .map_err(|e| ApiError::invalid_parameter("", e.message))?;
    validate_chat(req, limits)
}

/// What every chat request must satisfy, however it came in.
fn validate_chat(req: ChatRequest, limits: &Limits) -> Result<ChatRequest, ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid_parameter(
            "model",
            "`model` must not be empty",
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid_parameter(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    if req.messages.len() > limits.max_messages {
        return Err(ApiError::too_large(format!(
            "{} messages; at most {} are accepted",
            req.messages.len(),
            limits.max_messages
        )));
    }
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" | "user" | "assistant" | "tool" | "function" => {}
            _ => {
                return Err(ApiError::invalid_parameter(
                    format!("messages[{i}].role"),
                    "role must be one of system, developer, user, assistant, tool",
                ));
            }
        }
    }
    if req.n.is_some_and(|n| n == 0 || n > 128) {
        return Err(ApiError::invalid_parameter(
            "n",
            "`n` must be between 1 and 128",
        ));
    }
    if req.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::invalid_parameter(
            "temperature",
            "`temperature` must be between 0 and 2",
        ));
    }
    Ok(req)
}

/// Parses and validates an embeddings request.
pub fn parse_embeddings(raw: &[u8], limits: &Limits) -> Result<EmbeddingsRequest, ApiError> {
    let req: EmbeddingsRequest = parse(raw, limits)?;
    if req.model.is_empty() {
        return Err(ApiError::invalid_parameter(
            "model",
            "`model` must not be empty",
        ));
    }
    let ok = match &req.input {
        serde_json::Value::String(_) => true,
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => false,
    };
    if !ok {
        return Err(ApiError::invalid_parameter(
            "input",
            "`input` must be a string or a non-empty array",
        ));
    }
    Ok(req)
}

/// UTF-8 and depth checks, then a typed parse naming the bad field.
///
/// A well-formed body (the common case) is read in two passes: the depth
/// scan and one typed parse, which succeeding proves the body UTF-8 and
/// valid JSON. Only a body that fails them goes through the checks one by
/// one, for the exact error: UTF-8, depth, syntax, then the field at fault
/// (the path tracking costs a third of a parse, so it is not paid on every
/// request).
pub fn parse<T: DeserializeOwned>(raw: &[u8], limits: &Limits) -> Result<T, ApiError> {
    // UTF-8 checked once for the whole body, then parsed as `&str`:
    // `from_slice` would check each string on its own, which costs more.
    if check_depth(raw, limits.max_depth).is_ok()
        && let Ok(text) = std::str::from_utf8(raw)
        && let Ok(value) = serde_json::from_str::<T>(text)
    {
        return Ok(value);
    }
    parse_slowly(raw, limits)
}

/// [`parse`] one check at a time, for the error.
fn parse_slowly<T: DeserializeOwned>(raw: &[u8], limits: &Limits) -> Result<T, ApiError> {
    if std::str::from_utf8(raw).is_err() {
        return Err(ApiError::invalid_json(
            "the request body is not valid UTF-8",
        ));
    }
    check_depth(raw, limits.max_depth)?;
    // Syntax first, without building anything: `flatten` (used to keep
    // unknown fields) turns syntax errors into data errors, so the typed
    // parse below cannot tell the two apart by itself.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
        return Err(ApiError::invalid_json(format!(
            "the request body is not valid JSON: {e}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let param = if path == "." || path.is_empty() {
            missing_field(&message).unwrap_or_default()
        } else {
            path
        };
        ApiError::invalid_parameter(param, strip_position(&message))
    })?;
    Ok(value)
}

/// `missing field `model`` → `model`.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// serde_json appends ` at line 1 column 42`; the param already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Refuses JSON nested deeper than `max`, scanning bytes without recursion.
pub fn check_depth(raw: &[u8], max: usize) -> Result<(), ApiError> {
    // Depth cannot pass the number of opening brackets: a body with no
    // more than `max` of them (most) needs no walk through its strings.
    // Counting is a loop the compiler vectorises; the walk is not.
    let opening = raw.iter().filter(|&&b| b == b'{' || b == b'[').count();
    if opening <= max {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::invalid_json(format!(
                        "the request body is nested deeper than {max} levels"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(raw: &[u8]) -> ApiError {
        parse_chat(raw, &Limits::default()).expect_err("refused")
    }

    #[test]
    fn bad_inputs_get_the_right_codes() {
        assert_eq!(err(b"{").code, "invalid_json");
        assert_eq!(err(b"\xff\xfe").code, "invalid_json");
        assert_eq!(err(b"{} x").code, "invalid_json");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = err(deep.as_bytes());
        assert_eq!(e.code, "invalid_json");
        assert!(e.message.contains("nested"), "{}", e.message);

        let e = err(
            br#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        );
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_parameter", Some("temperature"))
        );
        let e = err(br#"{"model":"chat","messages":[{"role":"user","content":5}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        // A bad content part is named down to the part.
        let e = err(br#"{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":7}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].text"));
        let e = err(br#"{"messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = err(br#"{"model":"chat","messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(br#"{"model":"chat","messages":[{"role":"wizard","content":"hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn message_count_is_capped() {
        let limits = Limits {
            max_messages: 2,
            ..Limits::default()
        };
        let raw = br#"{"model":"c","messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"user","content":"c"}]}"#;
        assert_eq!(
            parse_chat(raw, &limits).expect_err("too many").code,
            "request_too_large"
        );
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert!(check_depth(br#"{"a":"[[[[[[[[[[\"[[[["}"#, 2).is_ok());
        assert!(check_depth(b"[[[]]]", 2).is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_chat(&raw, &Limits::default());
            let _ = parse_embeddings(&raw, &Limits::default());
        }

        #[test]
        fn json_shaped_inputs_never_panic(s in r#"\{("model":"[a-z]{0,4}",)?("messages":\[(\{"role":"(user|x)","content":("[^"\\]{0,8}"|[0-9]|null|\[\])\},?){0,3}\])?[,}\]\[]{0,3}"#) {
            let _ = parse_chat(s.as_bytes(), &Limits::default());
        }
    }
}
