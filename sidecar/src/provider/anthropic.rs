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

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_crds::common::FailureClass;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::sse::SseParser;
use super::wire::{self, ChunkBuilder, failure, safe_message};
use super::{
    Adapter, Endpoint, Failure, StreamContext, StreamDecoder, StreamEvent, UpstreamRequest,
};
use crate::openai::{
    ChatRequest, ChatResponse, Choice, Content, Delta, FunctionCall, FunctionCallDelta, Message,
    ToolCall, ToolCallDelta, Usage,
};

/// The `anthropic-version` header every call carries.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` sent when the client set none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Request fields without an OpenAI equivalent that a client may still
/// send in the OpenAI body (or that the Anthropic ingress carries over) and
/// that are forwarded to Anthropic untouched.
const PASS_THROUGH: &[&str] = &["top_k", "thinking", "service_tier"];

// ---------------------------------------------------------------- wire types

/// `POST /v1/messages` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<AnthropicMessage>,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<AnthropicContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<AnthropicTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub content: AnthropicContent,
}

/// A string, or content blocks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum AnthropicContent {
    Text(String),
    Blocks(Vec<Block>),
}

impl AnthropicContent {
    /// The content as blocks (a string is one text block).
    pub fn into_blocks(self) -> Vec<Block> {
        match self {
            AnthropicContent::Text(t) => vec![Block::text(t)],
            AnthropicContent::Blocks(b) => b,
        }
    }

    /// All text blocks joined by newlines.
    pub fn text(&self) -> String {
        match self {
            AnthropicContent::Text(t) => t.clone(),
            AnthropicContent::Blocks(b) => b
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One content block: `text`, `image`, `tool_use`, `tool_result`,
/// `thinking`… Fields of other kinds pass through in `extra`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `image`: `{"type":"base64","media_type","data"}` or `{"type":"url","url"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
    /// `tool_use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// `tool_result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<AnthropicContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Block {
    pub fn text(text: impl Into<String>) -> Self {
        Block {
            kind: "text".into(),
            text: Some(text.into()),
            ..Block::default()
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnthropicTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Absent on Anthropic's server tools (which carry a `type` in `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A non-stream `/v1/messages` response (also `message_start.message`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MessagesResponse {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub content: Vec<Block>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: AnthropicUsage,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AnthropicUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AnthropicUsage {
    /// OpenAI counts every prompt token in `prompt_tokens`; Anthropic
    /// splits out cache reads and cache writes. Cache reads are the cached
    /// tokens; cache writes are ordinary (if dearer) prompt tokens.
    pub fn to_openai(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + read + self.cache_creation_input_tokens.unwrap_or(0);
        Usage::new(prompt, self.output_tokens.unwrap_or(0), read)
    }

    /// Later counts (a `message_delta`) override earlier ones.
    fn merge(&mut self, later: &AnthropicUsage) {
        let pick = |a: &mut Option<u64>, b: Option<u64>| {
            if b.is_some() {
                *a = b;
            }
        };
        pick(&mut self.input_tokens, later.input_tokens);
        pick(&mut self.output_tokens, later.output_tokens);
        pick(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        pick(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }
}

/// `{"type":"error","error":{"type","message"}}`.
#[derive(Deserialize, Debug, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Debug, Default)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

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
    out.headers
        .insert("anthropic-version", HeaderValue::from_static(API_VERSION));
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

fn bad_request(message: impl Into<String>) -> Failure {
    failure(FailureClass::BadRequest, None, message)
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
                    let url = p
                        .image_url
                        .as_ref()
                        .map(|i| i.url.as_str())
                        .ok_or_else(|| bad_request("image_url part without a url"))?;
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
    let mut choice = match &req.tool_choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            other => return Err(bad_request(format!("unknown tool_choice {other:?}"))),
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("tool_choice object without function.name"))?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
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

// ------------------------------------------------------------------- stream

/// Anthropic SSE (`message_start`, `content_block_*`, `ping`,
/// `message_delta`, `message_stop`, `error`) → OpenAI chunks, one event at
/// a time. The role is sent with the first token, never alone, so the
/// first chunk out is a real token (the commit point).
#[derive(Debug)]
pub struct AnthropicStream {
    sse: SseParser,
    out: ChunkBuilder,
    /// Anthropic block index → OpenAI tool call index.
    tool_index: Vec<(u64, u32)>,
    usage: AnthropicUsage,
    stopped: bool,
    done: bool,
}

impl AnthropicStream {
    /// The context's `id` and `model` are used until `message_start`
    /// names its own.
    pub fn new(ctx: &StreamContext) -> Self {
        Self {
            sse: SseParser::new(ctx.max_line),
            out: ChunkBuilder::new(ctx),
            tool_index: Vec::new(),
            usage: AnthropicUsage::default(),
            stopped: false,
            done: false,
        }
    }

    fn chunk(&mut self, delta: Delta, finish_reason: Option<String>) -> StreamEvent {
        self.out.event(delta, finish_reason)
    }

    fn on_event(&mut self, event: &str, data: &str, out: &mut Vec<Result<StreamEvent, Failure>>) {
        let value: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => {
                out.push(Err(malformed("an anthropic stream event is not JSON")));
                self.done = true;
                return;
            }
        };
        // The `type` in the data is authoritative; `event:` is a hint.
        let kind = value.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => {
                if let Some(m) = value.get("message") {
                    if let Some(id) = m.get("id").and_then(Value::as_str) {
                        self.out.id = id.to_owned();
                    }
                    if let Some(model) = m.get("model").and_then(Value::as_str) {
                        self.out.model = model.to_owned();
                    }
                    if let Some(u) = m.get("usage") {
                        self.merge_usage(u);
                    }
                }
            }
            "content_block_start" => {
                let block = value.get("content_block");
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("tool_use") => {
                        let n = self.tool_index.len() as u32;
                        self.tool_index.push((index, n));
                        let field = |k| block.and_then(|b| b.get(k)).and_then(Value::as_str);
                        let delta = Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: n,
                                id: field("id").map(str::to_owned),
                                kind: Some("function".into()),
                                function: Some(FunctionCallDelta {
                                    name: field("name").map(str::to_owned),
                                    arguments: Some(String::new()),
                                }),
                            }]),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                    Some("text") => {
                        let text = block
                            .and_then(|b| b.get("text"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if !text.is_empty() {
                            let delta = Delta {
                                content: Some(text.to_owned()),
                                ..Delta::default()
                            };
                            out.push(Ok(self.chunk(delta, None)));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = value.get("delta");
                let field = |k| delta.and_then(|d| d.get(k)).and_then(Value::as_str);
                match field("type") {
                    Some("text_delta") => {
                        let delta = Delta {
                            content: Some(field("text").unwrap_or("").to_owned()),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                    Some("input_json_delta") => {
                        let Some(&(_, n)) = self.tool_index.iter().find(|(i, _)| *i == index)
                        else {
                            return;
                        };
                        let partial = field("partial_json").unwrap_or("");
                        if partial.is_empty() {
                            return;
                        }
                        let delta = Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: n,
                                function: Some(FunctionCallDelta {
                                    name: None,
                                    arguments: Some(partial.to_owned()),
                                }),
                                ..ToolCallDelta::default()
                            }]),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                    // thinking_delta, signature_delta, citations_delta.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = value.get("usage") {
                    self.merge_usage(u);
                }
                let reason = value.pointer("/delta/stop_reason").and_then(Value::as_str);
                match finish_reason(reason) {
                    Ok(Some(r)) => {
                        self.stopped = true;
                        out.push(Ok(self.chunk(Delta::default(), Some(r))));
                    }
                    Ok(None) => {}
                    Err(f) => {
                        out.push(Err(f));
                        self.done = true;
                    }
                }
            }
            "message_stop" => {
                out.push(Ok(StreamEvent::Usage(self.usage.to_openai())));
                out.push(Ok(StreamEvent::Done));
                self.done = true;
            }
            "error" => {
                let kind = value
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // Mid-stream errors carry no HTTP status of their own.
                let class = error_class(0, kind, message);
                let class = if class == FailureClass::BadRequest && kind.is_empty() {
                    FailureClass::StreamInterrupted
                } else {
                    class
                };
                out.push(Err(failure(
                    class,
                    None,
                    format!("anthropic stream error {kind}: {}", safe_message(message)),
                )));
                self.done = true;
            }
            // ping, and event types newer than this code.
            _ => {}
        }
    }

    fn merge_usage(&mut self, u: &Value) {
        if let Ok(u) = serde_json::from_value::<AnthropicUsage>(u.clone()) {
            self.usage.merge(&u);
        }
    }
}

fn malformed(message: &str) -> Failure {
    failure(FailureClass::Malformed, Some(200), message)
}

impl StreamDecoder for AnthropicStream {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>> {
        let events = self.sse.feed(bytes);
        self.take(events)
    }

    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>> {
        let events = self.sse.finish();
        let mut out = self.take(events);
        if !self.done {
            self.done = true;
            let what = if self.stopped {
                "anthropic stream ended before message_stop"
            } else {
                "anthropic stream ended before its stop reason"
            };
            out.push(Err(failure(FailureClass::StreamInterrupted, None, what)));
        }
        out
    }
}

impl AnthropicStream {
    fn take(
        &mut self,
        events: Vec<Result<super::sse::SseEvent, Failure>>,
    ) -> Vec<Result<StreamEvent, Failure>> {
        let mut out = Vec::new();
        for e in events {
            if self.done {
                break;
            }
            match e {
                Ok(e) => self.on_event(e.event.as_deref().unwrap_or(""), &e.data, &mut out),
                Err(f) => {
                    out.push(Err(f));
                    self.done = true;
                }
            }
        }
        out
    }
}
