//! Anthropic Messages API (`POST /v1/messages`): pure translation between
//! the OpenAI chat format and Anthropic's, both ways, plus its SSE stream
//! and its errors. The wire types here name only the fields we touch and
//! carry the rest through; `messages.rs` reuses them for the
//! Anthropic-compatible ingress.
//!
//! Choices (see the tables in the module tests):
//! - `system`/`developer` messages, wherever they appear, become `system`.
//! - `max_tokens` is required by Anthropic: the request's
//!   `max_completion_tokens`/`max_tokens`, else [`DEFAULT_MAX_TOKENS`].
//! - `temperature` is clamped to Anthropic's `[0, 1]`.
//! - `response_format` `json_object`/`json_schema`: Anthropic has no JSON
//!   mode, so an instruction (with the schema) is appended to `system`.
//! - `stop_reason`: `end_turn`, `stop_sequence`, `pause_turn` → `stop`;
//!   `max_tokens`, `model_context_window_exceeded` → `length`; `tool_use` →
//!   `tool_calls`; `refusal` → a [`FailureClass::Refusal`] failure.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use sluice_crds::common::FailureClass;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::wire::{self, ToolChoice, bad_request, failure, safe_message};
use super::{Adapter, Endpoint, Failure, StreamContext, StreamDecoder, UpstreamRequest};
use crate::openai::{ChatRequest, ChatResponse, Choice, Content, FunctionCall, Message, ToolCall};

mod stream;
mod types;

pub use stream::AnthropicStream;
pub use types::*;

/// The `anthropic-version` header every call carries.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` sent when the client set none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Request fields without an OpenAI equivalent that a client may still
/// send in the OpenAI body (or that the Anthropic ingress carries over) and
/// that are forwarded to Anthropic untouched.
const PASS_THROUGH: &[&str] = &["top_k", "thinking", "service_tier"];

// ------------------------------------------------------------------ request

/// The Anthropic adapter.
#[derive(Debug)]
pub struct Anthropic;

impl Adapter for Anthropic {
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
        parse_chat(status.as_u16(), headers, body, wire::unix_seconds(now), now)
    }

    fn stream_decoder(&self, ctx: &StreamContext) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicStream::new(ctx))
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        classify(status.as_u16(), headers, body, SystemTime::now())
    }
}

/// The full upstream call: `POST {base}/v1/messages` with `x-api-key` and
/// `anthropic-version`.
pub fn build_chat(
    endpoint: &Endpoint,
    req: &ChatRequest,
    upstream_model: &str,
    stream: bool,
) -> Result<UpstreamRequest, Failure> {
    let body = to_messages_request(req, upstream_model, stream)?;
    let body = serde_json::to_vec(&body)
        .map_err(|e| failure(FailureClass::BadRequest, None, format!("encoding: {e}")))?;
    let base = wire::trim_base(&endpoint.base_url);
    let url = if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    };
    let mut out = UpstreamRequest::json_post(endpoint, url, Bytes::from(body));
    // A version (or beta) set in `spec.headers` wins over the default.
    out.headers
        .entry("anthropic-version")
        .or_insert(HeaderValue::from_static(API_VERSION));
    if let Some(key) = &endpoint.credential {
        let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
            failure(
                FailureClass::Auth,
                None,
                "the API key is not a valid header value",
            )
        })?;
        value.set_sensitive(true);
        out.headers.insert("x-api-key", value);
    }
    Ok(out)
}

/// OpenAI chat request → Anthropic Messages request.
pub fn to_messages_request(
    req: &ChatRequest,
    upstream_model: &str,
    stream: bool,
) -> Result<MessagesRequest, Failure> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(bad_request("n > 1 is not supported by anthropic"));
    }
    let mut system: Vec<Block> = Vec::new();
    let mut turns: Vec<AnthropicMessage> = Vec::new();
    for m in &req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                if let Some(c) = &m.content {
                    let text = c.text();
                    if !text.is_empty() {
                        system.push(Block::text(text));
                    }
                }
            }
            "user" => push_turn(&mut turns, "user", user_blocks(m)?),
            "assistant" => push_turn(&mut turns, "assistant", assistant_blocks(m)?),
            "tool" | "function" => push_turn(&mut turns, "user", vec![tool_result(m)]),
            other => return Err(bad_request(format!("unknown message role {other:?}"))),
        }
    }
    if let Some(instruction) = wire::json_instruction(req) {
        system.push(Block::text(instruction));
    }

    let mut out = MessagesRequest {
        model: upstream_model.to_owned(),
        messages: turns,
        max_tokens: req.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then_some(AnthropicContent::Blocks(system)),
        stop_sequences: req.stop.as_ref().map(|s| s.to_vec()),
        stream: stream.then_some(true),
        temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: req.top_p,
        tools: None,
        tool_choice: None,
        metadata: req.user.as_ref().map(|u| json!({ "user_id": u })),
        extra: Map::new(),
    };
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        out.tools = Some(
            tools
                .iter()
                .map(|t| AnthropicTool {
                    name: t.function.name.clone(),
                    description: t.function.description.clone(),
                    input_schema: Some(
                        t.function
                            .parameters
                            .clone()
                            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                    ),
                    extra: Map::new(),
                })
                .collect(),
        );
        out.tool_choice = tool_choice(req)?;
    }
    for key in PASS_THROUGH {
        if let Some(v) = req.extra.get(*key) {
            out.extra.insert((*key).to_owned(), v.clone());
        }
    }
    Ok(out)
}

/// Anthropic wants strictly alternating turns: a turn of the same role as
/// the previous one is merged into it (tool results after tool results,
/// a user message after tool results).
fn push_turn(turns: &mut Vec<AnthropicMessage>, role: &str, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut().filter(|t| t.role == role) {
        let prev = std::mem::replace(&mut last.content, AnthropicContent::Blocks(Vec::new()));
        let mut merged = prev.into_blocks();
        merged.extend(blocks);
        last.content = AnthropicContent::Blocks(merged);
        return;
    }
    turns.push(AnthropicMessage {
        role: role.to_owned(),
        content: AnthropicContent::Blocks(blocks),
    });
}

/// Anthropic rejects empty text blocks, so empty text is left out.
fn user_blocks(m: &Message) -> Result<Vec<Block>, Failure> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![Block::text(t.clone())]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter(|p| !(p.kind == "text" && p.text.as_deref().unwrap_or("").is_empty()))
            .map(|p| match p.kind.as_str() {
                "text" => Ok(Block::text(p.text.clone().unwrap_or_default())),
                "image_url" => {
                    let url = wire::image_url(p)?;
                    Ok(Block {
                        kind: "image".into(),
                        source: Some(image_source(url)?),
                        ..Block::default()
                    })
                }
                other => Err(bad_request(format!(
                    "content part type {other:?} is not supported by anthropic"
                ))),
            })
            .collect(),
    }
}

/// A data URL becomes a base64 source, an http(s) URL a url source.
fn image_source(url: &str) -> Result<Value, Failure> {
    if let Some((media_type, data)) = wire::parse_data_url(url) {
        return Ok(json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(bad_request("image url must be https or a base64 data URL"))
}

fn assistant_blocks(m: &Message) -> Result<Vec<Block>, Failure> {
    let mut blocks = Vec::new();
    if let Some(c) = &m.content {
        let text = c.text();
        // Anthropic rejects empty text blocks.
        if !text.is_empty() {
            blocks.push(Block::text(text));
        }
    }
    for call in m.tool_calls.iter().flatten() {
        blocks.push(Block {
            kind: "tool_use".into(),
            id: Some(call.id.clone()),
            name: Some(call.function.name.clone()),
            input: Some(wire::arguments_object(&call.function.arguments)?),
            ..Block::default()
        });
    }
    Ok(blocks)
}

fn tool_result(m: &Message) -> Block {
    let content = match &m.content {
        Some(Content::Text(t)) => AnthropicContent::Text(t.clone()),
        Some(c @ Content::Parts(_)) => AnthropicContent::Text(c.text()),
        None => AnthropicContent::Text(String::new()),
    };
    Block {
        kind: "tool_result".into(),
        tool_use_id: Some(m.tool_call_id.clone().unwrap_or_default()),
        content: Some(content),
        ..Block::default()
    }
}

/// `auto` → auto, `required` → any, `none` → none, a named function →
/// tool; `parallel_tool_calls: false` → `disable_parallel_tool_use`.
fn tool_choice(req: &ChatRequest) -> Result<Option<Value>, Failure> {
    let mut choice = wire::tool_choice(req.tool_choice.as_ref())?.map(|c| match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    });
    if req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c.get("type").and_then(Value::as_str) != Some("none") {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    Ok(choice)
}

// ----------------------------------------------------------------- response

/// A finished upstream response: 2xx → chat response, else classified.
pub fn parse_chat(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    created: u64,
    now: SystemTime,
) -> Result<ChatResponse, Failure> {
    if !(200..300).contains(&status) {
        return Err(classify(status, headers, body, now));
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        failure(
            FailureClass::Malformed,
            Some(status),
            "anthropic returned a body that is not JSON",
        )
    })?;
    if value.get("type").and_then(Value::as_str) == Some("error") {
        let mut f = classify(status, headers, body, now);
        f.class = FailureClass::Malformed;
        return Err(f);
    }
    let resp: MessagesResponse = serde_json::from_value(value).map_err(|_| {
        failure(
            FailureClass::Malformed,
            Some(status),
            "anthropic returned an unexpected message shape",
        )
    })?;
    to_chat_response(resp, created)
}

/// Anthropic message → OpenAI `chat.completion`.
pub fn to_chat_response(resp: MessagesResponse, created: u64) -> Result<ChatResponse, Failure> {
    let finish = finish_reason(resp.stop_reason.as_deref())?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in &resp.content {
        match b.kind.as_str() {
            "text" => text.push_str(b.text.as_deref().unwrap_or("")),
            "tool_use" => calls.push(ToolCall {
                id: b.id.clone().unwrap_or_default(),
                kind: "function".into(),
                function: FunctionCall {
                    name: b.name.clone().unwrap_or_default(),
                    arguments: b
                        .input
                        .as_ref()
                        .map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            }),
            // thinking, redacted_thinking, server tool blocks: not part of
            // the OpenAI message.
            _ => {}
        }
    }
    let message = Message {
        role: "assistant".into(),
        content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        refusal: None,
        extra: Map::new(),
    };
    Ok(ChatResponse {
        id: resp.id,
        object: "chat.completion".into(),
        created,
        model: resp.model,
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: finish,
            logprobs: None,
        }],
        usage: Some(resp.usage.to_openai()),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

/// `stop_reason` → `finish_reason`; a refusal is a failure, not a reply.
pub fn finish_reason(stop_reason: Option<&str>) -> Result<Option<String>, Failure> {
    let reason = match stop_reason {
        None => return Ok(None),
        Some("end_turn" | "stop_sequence" | "pause_turn") => "stop",
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => {
            return Err(failure(
                FailureClass::Refusal,
                Some(200),
                "anthropic stopped with stop_reason refusal",
            ));
        }
        Some(_) => "stop",
    };
    Ok(Some(reason.to_owned()))
}

// ------------------------------------------------------------------- errors

/// An Anthropic error response (status, headers, body) → one failure class
/// with its retry hint: `retry-after`, else the latest
/// `anthropic-ratelimit-*-reset` among the exhausted limits.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Failure {
    let detail = serde_json::from_slice::<ErrorEnvelope>(body)
        .map(|e| e.error)
        .unwrap_or_default();
    let class = error_class(status, &detail.kind, &detail.message);
    let what = if detail.kind.is_empty() {
        format!("anthropic status {status}")
    } else {
        format!(
            "anthropic {} ({status}): {}",
            detail.kind,
            safe_message(&detail.message)
        )
    };
    let mut f = failure(class, Some(status), what);
    f.retry_after =
        wire::header_retry_after(headers, now).or_else(|| ratelimit_reset(headers, now));
    f
}

/// The class of an `error.type` (from an error body or a stream's
/// `event: error`), falling back on the status.
pub fn error_class(status: u16, kind: &str, message: &str) -> FailureClass {
    let lower = message.to_ascii_lowercase();
    match kind {
        "invalid_request_error" if is_context_length(&lower) => FailureClass::ContextLength,
        "invalid_request_error" if is_out_of_credit(&lower) => FailureClass::QuotaExhausted,
        "invalid_request_error" => FailureClass::BadRequest,
        "authentication_error" | "permission_error" => FailureClass::Auth,
        "billing_error" => FailureClass::QuotaExhausted,
        "not_found_error" => FailureClass::NotFound,
        "request_too_large" => FailureClass::BadRequest,
        "rate_limit_error" if is_out_of_credit(&lower) => FailureClass::QuotaExhausted,
        "rate_limit_error" => FailureClass::RateLimited,
        "overloaded_error" => FailureClass::Overloaded,
        "api_error" | "timeout_error" => FailureClass::ServerError,
        _ => wire::class_for_status(status),
    }
}

fn is_context_length(lower: &str) -> bool {
    lower.contains("prompt is too long")
        || lower.contains("context window")
        || lower.contains("context length")
        || lower.contains("input length and `max_tokens` exceed")
}

fn is_out_of_credit(lower: &str) -> bool {
    lower.contains("credit balance") || lower.contains("spend limit")
}

const RESET_HEADERS: &[(&str, &str)] = &[
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];

/// The latest RFC 3339 reset among limits whose `remaining` is 0 (or not
/// given); past or unparsable resets are no hint.
fn ratelimit_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    RESET_HEADERS
        .iter()
        .filter(|(remaining, _)| text(remaining).is_none_or(|r| r.trim() == "0"))
        .filter_map(|(_, reset)| text(reset))
        .filter_map(|r| chrono::DateTime::parse_from_rfc3339(r.trim()).ok())
        .filter_map(|at| SystemTime::from(at).duration_since(now).ok())
        .filter(|d| *d <= super::retry_hint::MAX_HINT)
        .max()
}
