//! Amazon Bedrock Converse API (`POST /model/{modelId}/converse` and
//! `/converse-stream`), signed with SigV4: pure translation to and from the
//! OpenAI chat format, ConverseStream's binary event-stream framing, and
//! Bedrock's errors.
//!
//! Choices:
//! - The credential string is `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`;
//!   requests are signed for service `bedrock` in the provider's region at
//!   a time the caller passes in.
//! - Images: only base64 data URLs (`png`, `jpeg`, `gif`, `webp`); Converse
//!   cannot fetch URLs, and adapters do no I/O, so a URL is a bad request.
//! - `tool_choice`: `auto` → `{auto:{}}`, `required` → `{any:{}}`, named →
//!   `{tool:{name}}`; `none` has no Converse equivalent: the tools are left
//!   out when the conversation has no tool blocks, else sent with `auto`.
//!   (Bedrock honours `any` and `tool` only for models that support them,
//!   e.g. Anthropic and Nova; others answer a validation error.)
//! - `response_format` JSON: an instruction appended to `system`.
//! - `stopReason`: `end_turn`, `stop_sequence` → `stop`; `max_tokens`,
//!   `model_context_window_exceeded` → `length`; `tool_use` → `tool_calls`;
//!   `guardrail_intervened` → [`FailureClass::ContentFilter`] (guardrails are
//!   policy, usually on the input); `content_filtered` →
//!   [`FailureClass::Refusal`].
//! - `ModelTimeoutException` → server-error: the model timed out on
//!   Bedrock's side; our own timers own the `timeout-*` classes.

use std::time::SystemTime;

use serde_json::{Map, Value, json};
use sluice_crds::common::FailureClass;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::wire::{self, ToolChoice, bad_request, failure, safe_message};
use super::{Adapter, Endpoint, Failure, StreamContext, StreamDecoder, UpstreamRequest};
use crate::openai::{ChatRequest, ChatResponse, Choice, Content, FunctionCall, Message, ToolCall};

mod request;
mod stream;
mod types;

pub use request::to_converse_request;

pub use stream::BedrockStream;
pub use types::*;

pub mod eventstream;

/// SigV4 service name of the Bedrock runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

// ------------------------------------------------------------------ request

/// The Bedrock adapter.
#[derive(Debug)]
pub struct Bedrock;

impl Adapter for Bedrock {
    fn build_chat(
        &self,
        endpoint: &Endpoint,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        build_chat(endpoint, req, upstream_model, stream, SystemTime::now())
    }

    fn parse_chat(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, Failure> {
        let now = SystemTime::now();
        let created = wire::unix_seconds(now);
        // Converse answers carry no id or model; the request id is the
        // best id there is.
        let id = headers
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || format!("chatcmpl-bedrock-{created}"),
                |r| format!("chatcmpl-{r}"),
            );
        parse_chat(status.as_u16(), headers, body, &id, "bedrock", created, now)
    }

    fn stream_decoder(&self, ctx: &StreamContext) -> Box<dyn StreamDecoder> {
        Box::new(BedrockStream::new(ctx))
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        classify(status.as_u16(), headers, body, SystemTime::now())
    }
}

/// The signed upstream call to `{base}/model/{modelId}/converse` (or
/// `/converse-stream`), base defaulting to the region's runtime endpoint.
pub fn build_chat(
    endpoint: &Endpoint,
    req: &ChatRequest,
    upstream_model: &str,
    stream: bool,
    signing_time: SystemTime,
) -> Result<UpstreamRequest, Failure> {
    let region = endpoint
        .region
        .as_deref()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            failure(
                FailureClass::BadRequest,
                None,
                "bedrock provider has no region",
            )
        })?;
    let body = to_converse_request(req)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| failure(FailureClass::BadRequest, None, format!("encoding: {e}")))?;
    let op = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    let base = if endpoint.base_url.is_empty() {
        format!("https://bedrock-runtime.{region}.amazonaws.com")
    } else {
        wire::trim_base(&endpoint.base_url).to_owned()
    };
    let url = format!("{base}/model/{}/{op}", encode_path_segment(upstream_model));
    let mut out = UpstreamRequest::json_post(endpoint, url, Bytes::from(body));
    let accept = if stream {
        "application/vnd.amazon.eventstream"
    } else {
        "application/json"
    };
    out.headers
        .insert(http::header::ACCEPT, HeaderValue::from_static(accept));
    if let Some(credential) = &endpoint.credential {
        sign(&mut out, credential.expose(), region, signing_time)?;
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so model
/// ids and ARNs (`:` and `/`) stay one path segment.
pub fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Adds SigV4 headers (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` with a session token) to the request.
pub fn sign(
    req: &mut UpstreamRequest,
    credential: &str,
    region: &str,
    time: SystemTime,
) -> Result<(), Failure> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;

    let mut parts = credential.trim().splitn(3, ':');
    let (Some(access_key), Some(secret)) = (parts.next(), parts.next()) else {
        return Err(failure(
            FailureClass::Auth,
            None,
            "bedrock credential is not ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]",
        ));
    };
    let token = parts.next().filter(|t| !t.is_empty()).map(str::to_owned);
    if access_key.is_empty() || secret.is_empty() {
        return Err(failure(
            FailureClass::Auth,
            None,
            "bedrock credential has an empty part",
        ));
    }
    // The signer needs an authority to derive `host` from (and panics
    // without one), so check it here.
    let uri: http::Uri = req.url.parse().map_err(|_| {
        failure(
            FailureClass::BadRequest,
            None,
            "bedrock endpoint URL is invalid",
        )
    })?;
    if uri.authority().is_none() {
        return Err(failure(
            FailureClass::BadRequest,
            None,
            "bedrock endpoint URL has no host",
        ));
    }
    let identity =
        aws_credential_types::Credentials::new(access_key, secret, token, None, "sluice-provider")
            .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| {
            failure(
                FailureClass::Auth,
                None,
                "bedrock signing parameters are invalid",
            )
        })?
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let signable = SignableRequest::new(
        req.method.as_str(),
        req.url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&req.body),
    )
    .map_err(|_| {
        failure(
            FailureClass::BadRequest,
            None,
            "bedrock request cannot be signed",
        )
    })?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|_| failure(FailureClass::Auth, None, "bedrock request signing failed"))?
        .into_parts();
    let mut add = Vec::new();
    for (name, value) in instructions.headers() {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| failure(FailureClass::Auth, None, "bad signature header"))?;
        let mut value = http::HeaderValue::from_str(value)
            .map_err(|_| failure(FailureClass::Auth, None, "bad signature header value"))?;
        if name == http::header::AUTHORIZATION || name.as_str() == "x-amz-security-token" {
            value.set_sensitive(true);
        }
        add.push((name, value));
    }
    for (name, value) in add {
        req.headers.insert(name, value);
    }
    Ok(())
}

// ----------------------------------------------------------------- response

/// A finished upstream response: 2xx → chat response, else classified.
pub fn parse_chat(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    id: &str,
    model: &str,
    created: u64,
    now: SystemTime,
) -> Result<ChatResponse, Failure> {
    if !(200..300).contains(&status) {
        return Err(classify(status, headers, body, now));
    }
    let resp: ConverseResponse = serde_json::from_slice(body).map_err(|_| {
        failure(
            FailureClass::Malformed,
            Some(status),
            "bedrock returned a body that is not a Converse response",
        )
    })?;
    to_chat_response(resp, id, model, created)
}

/// Converse response → OpenAI `chat.completion`. Converse responses carry
/// no id or model, so the caller supplies them.
pub fn to_chat_response(
    resp: ConverseResponse,
    id: &str,
    model: &str,
    created: u64,
) -> Result<ChatResponse, Failure> {
    let finish = finish_reason(resp.stop_reason.as_deref())?;
    let Some(message) = resp.output.and_then(|o| o.message) else {
        return Err(failure(
            FailureClass::Malformed,
            Some(200),
            "bedrock response has no output message",
        ));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in &message.content {
        if let Some(t) = &b.text {
            text.push_str(t);
        }
        if let Some(tu) = &b.tool_use {
            calls.push(ToolCall {
                id: tu.tool_use_id.clone(),
                kind: "function".into(),
                function: FunctionCall {
                    name: tu.name.clone(),
                    arguments: if tu.input.is_null() {
                        "{}".into()
                    } else {
                        tu.input.to_string()
                    },
                },
            });
        }
    }
    Ok(ChatResponse {
        id: id.to_owned(),
        object: "chat.completion".into(),
        created,
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                tool_call_id: None,
                refusal: None,
                extra: Map::new(),
            },
            finish_reason: finish,
            logprobs: None,
        }],
        usage: resp.usage.map(BedrockUsage::to_openai),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

/// `stopReason` → `finish_reason`; filtered output is a failure.
pub fn finish_reason(reason: Option<&str>) -> Result<Option<String>, Failure> {
    let out = match reason {
        None => return Ok(None),
        Some("end_turn" | "stop_sequence") => "stop",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened") => {
            return Err(failure(
                FailureClass::ContentFilter,
                Some(200),
                "bedrock stopped with guardrail_intervened",
            ));
        }
        Some("content_filtered") => {
            return Err(failure(
                FailureClass::Refusal,
                Some(200),
                "bedrock stopped with content_filtered",
            ));
        }
        Some(_) => "stop",
    };
    Ok(Some(out.to_owned()))
}

// ------------------------------------------------------------------- errors

/// A Bedrock error (`x-amzn-ErrorType` header, or `__type` in the body, and
/// `{"message":…}`) → one failure class.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Failure {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            value
                .get("__type")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let kind = error_type_name(&kind);
    let message = value
        .get("message")
        .or_else(|| value.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut f = failure(
        error_class(status, kind, message),
        Some(status),
        if kind.is_empty() {
            format!("bedrock status {status}")
        } else {
            format!("bedrock {kind} ({status}): {}", safe_message(message))
        },
    );
    f.retry_after = wire::header_retry_after(headers, now);
    f
}

/// `ThrottlingException:http://internal.amazon.com/…` or
/// `com.amazon.coral.service#ThrottlingException` → `ThrottlingException`.
fn error_type_name(raw: &str) -> &str {
    let raw = raw.split(':').next().unwrap_or(raw);
    raw.rsplit('#').next().unwrap_or(raw).trim()
}

/// The class of a Bedrock exception name (case-insensitive, so the stream's
/// camelCase `throttlingException` maps too), falling back on the status.
pub fn error_class(status: u16, kind: &str, message: &str) -> FailureClass {
    let lower = message.to_ascii_lowercase();
    match kind.to_ascii_lowercase().as_str() {
        "throttlingexception" => FailureClass::RateLimited,
        "servicequotaexceededexception" => FailureClass::QuotaExhausted,
        "modelnotreadyexception" | "serviceunavailableexception" => FailureClass::Overloaded,
        "validationexception" if is_context_length(&lower) => FailureClass::ContextLength,
        "validationexception" => FailureClass::BadRequest,
        "accessdeniedexception"
        | "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "expiredtokenexception"
        | "incompletesignatureexception"
        | "missingauthenticationtokenexception" => FailureClass::Auth,
        "resourcenotfoundexception" => FailureClass::NotFound,
        "modeltimeoutexception"
        | "internalserverexception"
        | "modelerrorexception"
        | "modelstreamerrorexception" => FailureClass::ServerError,
        _ => wire::class_for_status(status),
    }
}

fn is_context_length(lower: &str) -> bool {
    lower.contains("too many input tokens")
        || lower.contains("prompt is too long")
        || lower.contains("input is too long")
        || lower.contains("context window")
        || lower.contains("context length")
        || lower.contains("max_tokens exceed")
}
