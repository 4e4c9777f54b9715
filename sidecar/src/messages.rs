//! The Anthropic-compatible ingress (`POST /v1/messages`), so applications
//! written against the `anthropic` SDK can call any route whatever
//! provider serves it: an Anthropic Messages request becomes the canonical
//! OpenAI [`ChatRequest`], and the OpenAI response, stream and errors
//! become Anthropic's again. Pure translation, no I/O.
//!
//! Choices:
//! - `system` (string or text blocks) → one `system` message.
//! - `tool_result` blocks → `tool` messages, placed before the rest of the
//!   user turn; an `is_error` result's text is prefixed with `Error: `.
//! - `thinking` blocks in assistant turns are dropped; `top_k`, `thinking`
//!   and other Anthropic-only fields are not carried (OpenAI-family
//!   upstreams reject unknown fields); server tools and `document` blocks
//!   are refused with a 400.
//! - `finish_reason` → `stop_reason`: `stop` → `end_turn`, `length` →
//!   `max_tokens`, `tool_calls` → `tool_use`, `content_filter` → `refusal`.
//! - Tool-call arguments that are not a JSON object become `{}` in
//!   `tool_use.input` (Anthropic requires an object).

use serde_json::{Map, Value, json};

use crate::openai::{
    ChatChunk, ChatRequest, ChatResponse, Content, ContentPart, ErrorBody, FunctionCall,
    FunctionDef, ImageUrl, Message, Stop, StreamOptions, Tool, ToolCall, Usage,
};
use crate::provider::anthropic::{
    AnthropicContent, AnthropicUsage, Block, MessagesRequest, MessagesResponse,
};
use crate::provider::wire::safe_message;

/// A request the ingress refuses, in Anthropic's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressError {
    pub status: u16,
    pub message: String,
}

impl IngressError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    /// `{"type":"error","error":{"type","message"}}`.
    pub fn body(&self) -> Value {
        error_body(self.status, &self.message)
    }
}

// ------------------------------------------------------------------ request

/// Parses and translates a `/v1/messages` body.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, IngressError> {
    let req: MessagesRequest = serde_json::from_slice(body).map_err(|e| {
        IngressError::invalid(format!(
            "invalid request body: {}",
            safe_message(&e.to_string())
        ))
    })?;
    to_chat_request(req)
}

/// Anthropic Messages request → OpenAI chat request.
pub fn to_chat_request(req: MessagesRequest) -> Result<ChatRequest, IngressError> {
    if req.messages.is_empty() {
        return Err(IngressError::invalid(
            "messages: at least one message is required",
        ));
    }
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        let text = system.text();
        if !text.is_empty() {
            messages.push(message("system", Some(Content::Text(text))));
        }
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        match m.role.as_str() {
            "user" => user_turn(m.content, &mut messages, i)?,
            "assistant" => messages.push(assistant_turn(m.content, i)?),
            other => {
                return Err(IngressError::invalid(format!(
                    "messages.{i}.role: unexpected role {other:?}"
                )));
            }
        }
    }

    let mut extra = Map::new();
    let mut tools = None;
    if let Some(list) = req.tools.filter(|t| !t.is_empty()) {
        let mut out = Vec::with_capacity(list.len());
        for (i, t) in list.into_iter().enumerate() {
            let Some(schema) = t.input_schema else {
                return Err(IngressError::invalid(format!(
                    "tools.{i}: server tools are not supported by this gateway"
                )));
            };
            out.push(Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: t.name,
                    description: t.description,
                    parameters: Some(schema),
                    strict: None,
                },
            });
        }
        tools = Some(out);
    }
    let tool_choice = match &req.tool_choice {
        None => None,
        Some(c) => {
            if c.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                extra.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
            match c.get("type").and_then(Value::as_str) {
                Some("auto") => Some(json!("auto")),
                Some("any") => Some(json!("required")),
                Some("none") => Some(json!("none")),
                Some("tool") => {
                    let name = c.get("name").and_then(Value::as_str).ok_or_else(|| {
                        IngressError::invalid("tool_choice: type tool needs a name")
                    })?;
                    Some(json!({"type": "function", "function": {"name": name}}))
                }
                _ => return Err(IngressError::invalid("tool_choice: unknown type")),
            }
        }
    };
    let stream = req.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: req.model,
        messages,
        stream: stream.then_some(true),
        // The final `message_delta` reports usage: always ask for it.
        stream_options: stream.then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        max_tokens: Some(req.max_tokens),
        max_completion_tokens: None,
        temperature: req.temperature,
        top_p: req.top_p,
        n: None,
        stop: req.stop_sequences.filter(|s| !s.is_empty()).map(Stop::Many),
        tools,
        tool_choice,
        response_format: None,
        user: req
            .metadata
            .as_ref()
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        extra,
    })
}

fn message(role: &str, content: Option<Content>) -> Message {
    Message {
        role: role.to_owned(),
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
        extra: Map::new(),
    }
}

/// A user turn: its tool results become `tool` messages (first, as they
/// answer the previous assistant turn), the rest one `user` message.
fn user_turn(
    content: AnthropicContent,
    out: &mut Vec<Message>,
    i: usize,
) -> Result<(), IngressError> {
    let blocks = match content {
        AnthropicContent::Text(t) => {
            out.push(message("user", Some(Content::Text(t))));
            return Ok(());
        }
        AnthropicContent::Blocks(b) => b,
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        match b.kind.as_str() {
            "tool_result" => {
                let mut text = b
                    .content
                    .as_ref()
                    .map(AnthropicContent::text)
                    .unwrap_or_default();
                if b.is_error == Some(true) {
                    text = format!("Error: {text}");
                }
                let mut m = message("tool", Some(Content::Text(text)));
                m.tool_call_id = b.tool_use_id;
                out.push(m);
            }
            "text" => parts.push(ContentPart {
                kind: "text".into(),
                text: Some(b.text.unwrap_or_default()),
                image_url: None,
                extra: Map::new(),
            }),
            "image" => parts.push(ContentPart {
                kind: "image_url".into(),
                text: None,
                image_url: Some(ImageUrl {
                    url: image_url(b.source.as_ref()).ok_or_else(|| {
                        IngressError::invalid(format!(
                            "messages.{i}.content.{j}: unsupported image source"
                        ))
                    })?,
                    detail: None,
                }),
                extra: Map::new(),
            }),
            other => {
                return Err(IngressError::invalid(format!(
                    "messages.{i}.content.{j}: block type {other:?} is not supported by this gateway"
                )));
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    // A lone text part is sent as plain text, as most clients do.
    let content = match parts.as_slice() {
        [p] if p.kind == "text" => Content::Text(p.text.clone().unwrap_or_default()),
        _ => Content::Parts(parts),
    };
    out.push(message("user", Some(content)));
    Ok(())
}

/// `{"type":"base64",…}` → a data URL; `{"type":"url",…}` → the URL.
fn image_url(source: Option<&Value>) -> Option<String> {
    let s = source?;
    match s.get("type").and_then(Value::as_str)? {
        "base64" => {
            let mime = s.get("media_type").and_then(Value::as_str)?;
            let data = s.get("data").and_then(Value::as_str)?;
            Some(format!("data:{mime};base64,{data}"))
        }
        "url" => s.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn assistant_turn(content: AnthropicContent, i: usize) -> Result<Message, IngressError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in content.into_blocks().into_iter().enumerate() {
        match b.kind.as_str() {
            "text" => text.push_str(b.text.as_deref().unwrap_or("")),
            "tool_use" => calls.push(ToolCall {
                id: b.id.unwrap_or_default(),
                kind: "function".into(),
                function: FunctionCall {
                    name: b.name.unwrap_or_default(),
                    arguments: b.input.unwrap_or_else(|| json!({})).to_string(),
                },
            }),
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(IngressError::invalid(format!(
                    "messages.{i}.content.{j}: block type {other:?} is not supported by this gateway"
                )));
            }
        }
    }
    let mut m = message(
        "assistant",
        (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
    );
    m.tool_calls = (!calls.is_empty()).then_some(calls);
    Ok(m)
}

// ----------------------------------------------------------------- response

/// `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn anthropic_usage(u: &Usage) -> AnthropicUsage {
    let cached = u.cached_tokens();
    AnthropicUsage {
        input_tokens: Some(u.prompt_tokens.saturating_sub(cached)),
        output_tokens: Some(u.completion_tokens),
        cache_creation_input_tokens: Some(0),
        cache_read_input_tokens: Some(cached),
        extra: Map::new(),
    }
}

fn input_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// OpenAI `chat.completion` → Anthropic message (first choice).
pub fn from_chat_response(resp: &ChatResponse) -> MessagesResponse {
    let choice = resp.choices.first();
    let mut content = Vec::new();
    if let Some(m) = choice.map(|c| &c.message) {
        let text = m.content.as_ref().map(Content::text).unwrap_or_default();
        if !text.is_empty() {
            content.push(Block::text(text));
        }
        for call in m.tool_calls.iter().flatten() {
            content.push(Block {
                kind: "tool_use".into(),
                id: Some(call.id.clone()),
                name: Some(call.function.name.clone()),
                input: Some(input_object(&call.function.arguments)),
                ..Block::default()
            });
        }
    }
    MessagesResponse {
        id: resp.id.clone(),
        kind: "message".into(),
        role: "assistant".into(),
        model: resp.model.clone(),
        content,
        stop_reason: Some(stop_reason(choice.and_then(|c| c.finish_reason.as_deref())).into()),
        stop_sequence: None,
        usage: anthropic_usage(&resp.usage.unwrap_or_default()),
        extra: Map::new(),
    }
}

// ------------------------------------------------------------------- errors

/// Anthropic's `error.type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type":"error","error":{"type","message"}}` for a status.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// The gateway's OpenAI error object, said the Anthropic way (same status).
pub fn from_openai_error(status: u16, err: &ErrorBody) -> Value {
    error_body(status, &err.error.message)
}

// ------------------------------------------------------------------- stream

/// Which content block is open in the Anthropic stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text { index: u32 },
    Tool { index: u32, call: u32 },
}

/// OpenAI chunks → the Anthropic SSE sequence: `message_start`, then per
/// block `content_block_start`/`_delta`/`_stop` (text, or `tool_use` with
/// `input_json_delta`), then `message_delta` (stop reason, usage) and
/// `message_stop`. Each method returns the SSE text to send.
#[derive(Debug)]
pub struct MessagesStream {
    id: String,
    model: String,
    input_estimate: u64,
    started: bool,
    open: Option<Open>,
    next_index: u32,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    finished: bool,
}

fn sse(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

impl MessagesStream {
    /// `input_estimate` is the prompt token estimate `message_start`
    /// reports; the real count comes in the final `message_delta`.
    pub fn new(id: impl Into<String>, model: impl Into<String>, input_estimate: u64) -> Self {
        Self {
            id: id.into(),
            model: model.into(),
            input_estimate,
            started: false,
            open: None,
            next_index: 0,
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    /// `message_start` (once).
    pub fn start(&mut self) -> String {
        let mut out = String::new();
        self.ensure_started(&mut out);
        out
    }

    fn ensure_started(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        sse(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut String) {
        if let Some(Open::Text { index } | Open::Tool { index, .. }) = self.open.take() {
            sse(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, out: &mut String, block: Value) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        sse(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    /// One OpenAI chunk (only choice 0 is translated).
    pub fn on_chunk(&mut self, chunk: &ChatChunk) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.ensure_started(&mut out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else {
            return out;
        };
        let text = [&choice.delta.content, &choice.delta.refusal]
            .into_iter()
            .flatten()
            .filter(|t| !t.is_empty());
        for t in text {
            let index = match self.open {
                Some(Open::Text { index }) => index,
                _ => self.open_block(&mut out, json!({"type": "text", "text": ""})),
            };
            self.open = Some(Open::Text { index });
            sse(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": t}}),
            );
        }
        for tc in choice.delta.tool_calls.iter().flatten() {
            let same = matches!(self.open, Some(Open::Tool { call, .. }) if call == tc.index);
            let index = if same && tc.id.is_none() {
                match self.open {
                    Some(Open::Tool { index, .. }) => index,
                    _ => continue,
                }
            } else {
                let name = tc.function.as_ref().and_then(|f| f.name.clone());
                let index = self.open_block(
                    &mut out,
                    json!({"type": "tool_use", "id": tc.id.clone().unwrap_or_default(),
                           "name": name.unwrap_or_default(), "input": {}}),
                );
                self.open = Some(Open::Tool {
                    index,
                    call: tc.index,
                });
                index
            };
            let args = tc.function.as_ref().and_then(|f| f.arguments.as_deref());
            if let Some(args) = args.filter(|a| !a.is_empty()) {
                sse(
                    &mut out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(r) = &choice.finish_reason {
            self.finish_reason = Some(r.clone());
        }
        out
    }

    /// Usage reported apart from a chunk.
    pub fn on_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// The end of the stream: closes the open block, then `message_delta`
    /// and `message_stop`.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.ensure_started(&mut out);
        self.close(&mut out);
        self.finished = true;
        let usage = self.usage.map_or_else(
            || json!({"output_tokens": 0}),
            |u| {
                let a = anthropic_usage(&u);
                json!({
                    "input_tokens": a.input_tokens,
                    "output_tokens": a.output_tokens,
                    "cache_read_input_tokens": a.cache_read_input_tokens,
                    "cache_creation_input_tokens": a.cache_creation_input_tokens,
                })
            },
        );
        sse(
            &mut out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()),
                              "stop_sequence": null},
                    "usage": usage}),
        );
        sse(&mut out, "message_stop", &json!({"type": "message_stop"}));
        out
    }

    /// A failure after the stream started: an `error` event, and nothing
    /// after it (no `message_stop`).
    pub fn error(&mut self, status: u16, message: &str) -> String {
        let mut out = String::new();
        if self.finished {
            return out;
        }
        self.finished = true;
        sse(&mut out, "error", &error_body(status, message));
        out
    }
}
