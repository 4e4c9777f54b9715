//! Google Gemini API (`models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, key in `x-goog-api-key`): pure
//! translation to and from the OpenAI chat format, its SSE stream and its
//! errors.
//!
//! Choices:
//! - `system`/`developer` messages → `systemInstruction`; `assistant` →
//!   role `model`; `tool` messages → `functionResponse` parts in a user
//!   turn, named after the call they answer (looked up by id).
//! - Tool schemas go in `parametersJsonSchema` (full JSON Schema), JSON
//!   mode in `responseMimeType` (+ `responseJsonSchema`).
//! - Replayed function calls carry `thoughtSignature:
//!   skip_thought_signature_validator` (Gemini 3 requires a signature; the
//!   OpenAI format cannot keep the real one).
//! - Images: data URLs → `inlineData`; other URLs → `fileData` (mime type
//!   guessed from the extension, `image/jpeg` by default).
//! - `finishReason`: `STOP`/`OTHER`/unknown → `stop` (or `tool_calls` when
//!   the candidate called a function); `MAX_TOKENS` → `length`; `SAFETY`,
//!   `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`,
//!   `IMAGE_SAFETY`, `LANGUAGE` → [`FailureClass::Refusal`] (the output was
//!   filtered); `MALFORMED_FUNCTION_CALL` → [`FailureClass::Malformed`];
//!   `promptFeedback.blockReason` → [`FailureClass::ContentFilter`] (the
//!   input was blocked).
//! - Errors: `API_KEY_INVALID` (any status) → auth; `RESOURCE_EXHAUSTED` →
//!   rate-limited, or quota-exhausted when a violated quota is per day;
//!   `RetryInfo.retryDelay` is the retry hint; `UNAVAILABLE` → overloaded.

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

use request::SYNTHETIC_CALL_ID;
pub use request::to_generate_request;

pub use stream::GeminiStream;
pub use types::*;

// ------------------------------------------------------------------ request

/// The Gemini adapter.
#[derive(Debug)]
pub struct Gemini;

impl Adapter for Gemini {
    fn build_chat(
        &self,
        endpoint: &Endpoint,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        build_chat(endpoint, req, upstream_model, stream)
    }

    fn parse_chat(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, Failure> {
        let now = SystemTime::now();
        parse_chat(
            status.as_u16(),
            headers,
            body,
            "gemini",
            wire::unix_seconds(now),
            now,
        )
    }

    fn stream_decoder(&self, ctx: &StreamContext) -> Box<dyn StreamDecoder> {
        Box::new(GeminiStream::new(ctx))
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        classify(status.as_u16(), headers, body, SystemTime::now())
    }
}

/// `POST {base}/v1beta/models/{model}:generateContent` (or
/// `:streamGenerateContent?alt=sse`) with `x-goog-api-key`.
pub fn build_chat(
    endpoint: &Endpoint,
    req: &ChatRequest,
    upstream_model: &str,
    stream: bool,
) -> Result<UpstreamRequest, Failure> {
    if stream && req.n.is_some_and(|n| n > 1) {
        // Only the first candidate would be streamed: refuse rather than
        // silently answer fewer choices than asked.
        return Err(bad_request("n > 1 cannot be streamed from gemini"));
    }
    let body = to_generate_request(req)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| failure(FailureClass::BadRequest, None, format!("encoding: {e}")))?;
    let base = wire::trim_base(&endpoint.base_url);
    // An endpoint naming its API version (`…/v1`, `…/v1beta`) keeps it;
    // a bare host gets `v1beta`, where every field used here exists.
    let versioned = ["/v1", "/v1beta", "/v1alpha"]
        .iter()
        .any(|v| base.ends_with(v));
    let base = if versioned {
        base.to_owned()
    } else {
        format!("{base}/v1beta")
    };
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    let model = super::bedrock::encode_path_segment(model);
    let url = if stream {
        format!("{base}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/models/{model}:generateContent")
    };
    let mut out = UpstreamRequest::json_post(endpoint, url, Bytes::from(body));
    if let Some(key) = &endpoint.credential {
        let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
            failure(
                FailureClass::Auth,
                None,
                "the API key is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        out.headers.insert("x-goog-api-key", value);
    }
    Ok(out)
}

// ----------------------------------------------------------------- response

/// A finished upstream response: 2xx → chat response, else classified.
pub fn parse_chat(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    fallback_model: &str,
    created: u64,
    now: SystemTime,
) -> Result<ChatResponse, Failure> {
    if !(200..300).contains(&status) {
        return Err(classify(status, headers, body, now));
    }
    let resp: GenerateContentResponse = serde_json::from_slice(body).map_err(|_| {
        failure(
            FailureClass::Malformed,
            Some(status),
            "gemini returned a body that is not a GenerateContentResponse",
        )
    })?;
    if resp.error.is_some() {
        let mut f = classify(status, headers, body, now);
        f.class = FailureClass::Malformed;
        return Err(f);
    }
    to_chat_response(resp, fallback_model, created)
}

/// `GenerateContentResponse` → OpenAI `chat.completion`.
pub fn to_chat_response(
    resp: GenerateContentResponse,
    fallback_model: &str,
    created: u64,
) -> Result<ChatResponse, Failure> {
    prompt_blocked(&resp)?;
    let id = resp.response_id.clone().unwrap_or_else(|| "gemini".into());
    let mut choices = Vec::new();
    for c in &resp.candidates {
        let mut text = String::new();
        let mut calls = Vec::new();
        for p in c.content.iter().flat_map(|c| &c.parts) {
            if p.thought == Some(true) {
                continue;
            }
            if let Some(t) = &p.text {
                text.push_str(t);
            }
            if let Some(fc) = &p.function_call {
                calls.push(ToolCall {
                    id: call_id(fc, &id, c.index, calls.len()),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: fc.name.clone(),
                        arguments: args_text(&fc.args),
                    },
                });
            }
        }
        let finish = finish_reason(c.finish_reason.as_deref(), !calls.is_empty())?;
        choices.push(Choice {
            index: c.index,
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
        });
    }
    if choices.is_empty() {
        return Err(failure(
            FailureClass::Malformed,
            Some(200),
            "gemini returned no candidates",
        ));
    }
    Ok(ChatResponse {
        id: format!("chatcmpl-{id}"),
        object: "chat.completion".into(),
        created,
        model: resp
            .model_version
            .clone()
            .unwrap_or_else(|| fallback_model.to_owned()),
        choices,
        usage: resp.usage_metadata.map(UsageMetadata::to_openai),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

fn call_id(fc: &GeminiFunctionCall, response_id: &str, candidate: u32, n: usize) -> String {
    fc.id
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("{SYNTHETIC_CALL_ID}{response_id}_{candidate}_{n}"))
}

fn args_text(args: &Value) -> String {
    if args.is_null() {
        "{}".into()
    } else {
        args.to_string()
    }
}

fn prompt_blocked(resp: &GenerateContentResponse) -> Result<(), Failure> {
    let reason = resp
        .prompt_feedback
        .as_ref()
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str);
    match reason {
        Some(r) if r != "BLOCK_REASON_UNSPECIFIED" || resp.candidates.is_empty() => Err(failure(
            FailureClass::ContentFilter,
            Some(200),
            format!("gemini blocked the prompt: {}", safe_message(r)),
        )),
        _ => Ok(()),
    }
}

/// `finishReason` → `finish_reason`; filtered output is a failure.
pub fn finish_reason(reason: Option<&str>, called: bool) -> Result<Option<String>, Failure> {
    let out = match reason {
        None | Some("") => return Ok(None),
        Some("MAX_TOKENS") => "length",
        Some(
            r @ ("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
            | "IMAGE_SAFETY" | "LANGUAGE"),
        ) => {
            return Err(failure(
                FailureClass::Refusal,
                Some(200),
                format!("gemini stopped with finishReason {r}"),
            ));
        }
        Some(r @ ("MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL")) => {
            return Err(failure(
                FailureClass::Malformed,
                Some(200),
                format!("gemini stopped with finishReason {r}"),
            ));
        }
        Some(_) if called => "tool_calls",
        Some(_) => "stop",
    };
    Ok(Some(out.to_owned()))
}

// ------------------------------------------------------------------- errors

/// A Gemini error (`{"error":{"code","message","status","details"}}`, bare
/// or wrapped in a one-element array) → one failure class and retry hint.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Failure {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = match &value {
        Value::Array(items) => items.first().and_then(|v| v.get("error")),
        v => v.get("error"),
    };
    match error {
        Some(e) => {
            let mut f = classify_error(status, e);
            f.retry_after = f
                .retry_after
                .or_else(|| wire::header_retry_after(headers, now));
            f
        }
        None => {
            let mut f = failure(
                wire::class_for_status(status),
                Some(status),
                format!("gemini status {status}"),
            );
            f.retry_after = wire::header_retry_after(headers, now);
            f
        }
    }
}

/// The `error` object of a response or of a stream event.
pub fn classify_error(status: u16, error: &Value) -> Failure {
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(status);
    let grpc = error.get("status").and_then(Value::as_str).unwrap_or("");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let details: &[Value] = error
        .get("details")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let detail = |suffix: &'static str| {
        details.iter().filter(move |d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(suffix))
        })
    };
    let key_invalid = detail("google.rpc.ErrorInfo").any(|d| {
        d.get("reason")
            .and_then(Value::as_str)
            .is_some_and(|r| r.starts_with("API_KEY_") || r == "ACCESS_TOKEN_EXPIRED")
    });
    let per_day = detail("google.rpc.QuotaFailure")
        .flat_map(|d| {
            d.get("violations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
        .chain(
            detail("google.rpc.ErrorInfo")
                .filter_map(|d| d.pointer("/metadata/quota_limit").and_then(Value::as_str)),
        )
        .any(|q| q.contains("PerDay"));
    let retry_after = detail("google.rpc.RetryInfo")
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .find_map(wire::parse_seconds_suffix);
    let lower = message.to_ascii_lowercase();

    let class = match grpc {
        _ if key_invalid => FailureClass::Auth,
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => FailureClass::Auth,
        "RESOURCE_EXHAUSTED" if per_day => FailureClass::QuotaExhausted,
        "RESOURCE_EXHAUSTED" => FailureClass::RateLimited,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE"
            if lower.contains("token count")
                || lower.contains("exceeds the maximum number of tokens")
                || lower.contains("too many tokens") =>
        {
            FailureClass::ContextLength
        }
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => FailureClass::BadRequest,
        "NOT_FOUND" => FailureClass::NotFound,
        "UNAVAILABLE" => FailureClass::Overloaded,
        "INTERNAL" | "DEADLINE_EXCEEDED" | "UNKNOWN" => FailureClass::ServerError,
        "CANCELLED" | "ABORTED" => FailureClass::ServerError,
        _ => wire::class_for_status(code),
    };
    let mut f = failure(
        class,
        Some(code),
        format!("gemini {grpc} ({code}): {}", safe_message(message)),
    );
    f.retry_after = retry_after;
    f
}
