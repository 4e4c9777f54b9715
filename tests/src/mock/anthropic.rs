//! Anthropic's Messages API wire format: `POST /v1/messages` with the key in
//! `x-api-key` (or `Authorization: Bearer`, as anthropic-sdk-python 2.x sends
//! it) and a required `anthropic-version`, the `message` object with
//! content blocks (`text`, `tool_use`), `stop_reason` (`end_turn`,
//! `max_tokens`, `tool_use`, `refusal`), usage with cache counters, and the
//! SSE sequence `message_start`, `content_block_start`, `ping`,
//! `content_block_delta` (`text_delta` / `input_json_delta`),
//! `content_block_stop`, `message_delta` (stop reason and output usage),
//! `message_stop`, plus `event: error` mid-stream.
//!
//! Errors are `{"type":"error","error":{"type","message"},"request_id"}`:
//! 400 `invalid_request_error` (bad request, context length, output blocked
//! for the content filter), 401 `authentication_error`, 402 `billing_error`
//! (quota: the credit balance; the SDK's `PaymentRequiredError`), 403 `permission_error`, 404 `not_found_error`, 413
//! `request_too_large`, 429 `rate_limit_error` with `retry-after` and
//! `anthropic-ratelimit-requests-*` headers (reset in RFC 3339), 500
//! `api_error`, 504 `timeout_error`, 529 `overloaded_error` (also for
//! model-not-ready). Every answer carries `request-id`.
//!
//! Usage rule for caching: when any block carries `cache_control`, half the
//! input tokens (rounded down) are reported as `cache_read_input_tokens` and
//! the rest as `input_tokens`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::render::{Rendered, RequestView, Routed, sse};
use super::reply::{self, Call, Content, Finish, Reply};
use super::{Ctx, ErrorKind, RateLimit};

/// Requests per minute the rate-limit headers advertise.
pub const RATE_LIMIT_REQUESTS: u32 = 4_000;
/// Tokens per minute the rate-limit headers advertise.
pub const RATE_LIMIT_TOKENS: u32 = 2_000_000;

pub(crate) fn route(req: &RequestView<'_>) -> Routed {
    if (req.method, req.path) != (&Method::POST, "/v1/messages") {
        return Routed::Immediate(error_body(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "Not Found",
            None,
        ));
    }
    // The key comes in `x-api-key` or, as the current SDKs send it, as a
    // bearer token.
    let bearer = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "));
    let (key, message) = match (req.header("x-api-key"), bearer) {
        (Some(k), _) => (k, "invalid x-api-key"),
        (None, Some(t)) => (t, "Invalid bearer token"),
        (None, None) => {
            return Routed::Immediate(error_body(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
                None,
            ));
        }
    };
    if key.is_empty() || req.config.api_key.as_deref().is_some_and(|e| e != key) {
        return Routed::Immediate(error_body(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            message,
            None,
        ));
    }
    if req.header("anthropic-version").is_none() {
        return Routed::Immediate(error_body(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
            None,
        ));
    }
    match parse(req) {
        Ok(call) => Routed::Call(call),
        Err(r) => Routed::Immediate(r),
    }
}

#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
fn parse(req: &RequestView<'_>) -> Result<Call, Rendered> {
    let invalid =
        |msg: &str| error_body(StatusCode::BAD_REQUEST, "invalid_request_error", msg, None);
    let Some(body) = req.json.filter(|v| v.is_object()) else {
        return Err(invalid(
            "There was an error parsing the body of your request",
        ));
    };
    let Some(model) = body["model"].as_str() else {
        return Err(invalid("model: Field required"));
    };
    let Some(max_tokens) = body["max_tokens"].as_u64() else {
        return Err(invalid("max_tokens: Field required"));
    };
    let Some(messages) = body["messages"].as_array() else {
        return Err(invalid("messages: Field required"));
    };
    let mut texts = vec![blocks_text(&body["system"])];
    texts.extend(messages.iter().map(|m| blocks_text(&m["content"])));
    let last_user_chars = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .map_or(0, |i| texts[i + 1].chars().count());
    let tool_result_last = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|bs| bs.iter().any(|b| b["type"] == "tool_result"))
    });
    let tools = body["tools"]
        .as_array()
        .filter(|_| body["tool_choice"]["type"] != "none")
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Call {
        model: model.to_owned(),
        stream: body["stream"].as_bool().unwrap_or(false),
        input_chars: texts.join("\n").chars().count(),
        last_user_chars,
        tools,
        tool_result_last,
        max_tokens: u32::try_from(max_tokens).ok(),
        cache_control: body.to_string().contains("\"cache_control\""),
        ..Call::default()
    })
}

/// The text of a `content` (or `system`): a string, or its blocks' text
/// (tool results included).
fn blocks_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match (&b["text"], &b["content"]) {
                (Value::String(t), _) => t.clone(),
                (_, c @ (Value::String(_) | Value::Array(_))) => blocks_text(c),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolUse => "tool_use",
        Finish::Refusal => "refusal",
    }
}

/// Input usage split by the cache rule in the module docs.
fn usage(call: &Call, reply: &Reply, output_tokens: u32) -> Value {
    let cached = if call.cache_control {
        reply.input_tokens / 2
    } else {
        0
    };
    json!({
        "input_tokens": reply.input_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

fn message_id(ctx: &Ctx<'_>) -> String {
    format!("msg_mock{:018}", ctx.seq)
}

pub(crate) fn success(call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    let r = if call.stream {
        stream(call, reply, ctx)
    } else {
        let content = match &reply.content {
            Content::Text(t) => json!([{"type": "text", "text": t}]),
            Content::ToolCall {
                id_suffix,
                name,
                arguments,
            } => json!([{
                "type": "tool_use",
                "id": format!("toolu_{id_suffix}"),
                "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or(Value::Null),
            }]),
        };
        Rendered::json(
            StatusCode::OK,
            &json!({
                "id": message_id(ctx),
                "type": "message",
                "role": "assistant",
                "model": ctx.model(),
                "content": content,
                "stop_reason": stop_reason(reply.finish),
                "stop_sequence": null,
                "usage": usage(call, reply, reply.output_tokens),
            }),
        )
    };
    with_headers(r, ctx, RATE_LIMIT_REQUESTS - 1, Duration::from_secs(1))
}

fn stream(call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    let mut frames = vec![sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": {
            "id": message_id(ctx),
            "type": "message",
            "role": "assistant",
            "model": ctx.model(),
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(call, reply, 1),
        }}),
    )];
    let (block, deltas): (Value, Vec<Value>) = match &reply.content {
        Content::Text(t) => (
            json!({"type": "text", "text": ""}),
            reply::text_pieces(t)
                .into_iter()
                .map(|p| json!({"type": "text_delta", "text": p}))
                .collect(),
        ),
        Content::ToolCall {
            id_suffix,
            name,
            arguments,
        } => (
            json!({"type": "tool_use", "id": format!("toolu_{id_suffix}"), "name": name, "input": {}}),
            std::iter::once(String::new())
                .chain(reply::argument_fragments(arguments))
                .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                .collect(),
        ),
    };
    frames.push(sse(
        Some("content_block_start"),
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    frames.push(sse(Some("ping"), &json!({"type": "ping"})));
    for delta in deltas {
        frames.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    frames.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(sse(
        Some("message_delta"),
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reply.finish), "stop_sequence": null},
            "usage": {"output_tokens": reply.output_tokens},
        }),
    ));
    frames.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    Rendered::stream("text/event-stream; charset=utf-8", frames)
}

/// `request-id` and the `anthropic-ratelimit-requests-*` headers.
fn with_headers(r: Rendered, ctx: &Ctx<'_>, remaining: u32, reset_in: Duration) -> Rendered {
    let reset = chrono::Utc::now()
        + chrono::Duration::from_std(reset_in).unwrap_or_else(|_| chrono::Duration::seconds(1));
    r.header("request-id", request_id(ctx))
        .header(
            "anthropic-ratelimit-requests-limit",
            RATE_LIMIT_REQUESTS.to_string(),
        )
        .header(
            "anthropic-ratelimit-requests-remaining",
            remaining.to_string(),
        )
        .header(
            "anthropic-ratelimit-requests-reset",
            reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
        .header(
            "anthropic-ratelimit-tokens-limit",
            RATE_LIMIT_TOKENS.to_string(),
        )
        .header(
            "anthropic-ratelimit-tokens-remaining",
            RATE_LIMIT_TOKENS.to_string(),
        )
        .header(
            "anthropic-ratelimit-tokens-reset",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

fn request_id(ctx: &Ctx<'_>) -> String {
    format!("req_mock{}", &ctx.hex_id()[8..])
}

fn error_body(status: StatusCode, kind: &str, message: &str, ctx: Option<&Ctx<'_>>) -> Rendered {
    let request_id = ctx.map_or_else(|| "req_mock".to_owned(), request_id);
    Rendered::json(
        status,
        &json!({
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }),
    )
    .header("request-id", request_id)
}

/// (status, error type, message) for `kind`.
fn describe(kind: &ErrorKind, ctx: &Ctx<'_>) -> (StatusCode, &'static str, String) {
    match kind {
        ErrorKind::BadRequest => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages.0.content: Input should be a valid list".into(),
        ),
        ErrorKind::Auth => (
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key".into(),
        ),
        ErrorKind::PermissionDenied => (
            StatusCode::FORBIDDEN,
            "permission_error",
            "Your API key does not have permission to use the specified resource.".into(),
        ),
        ErrorKind::NotFound => (
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("model: {}", ctx.model()),
        ),
        ErrorKind::ContextLength => {
            let window = ctx.config.context_window.unwrap_or(200_000);
            let wanted = ctx.call.map_or(window + 1, |c| c.input_tokens());
            (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("prompt is too long: {wanted} tokens > {window} maximum"),
            )
        }
        ErrorKind::ContentFilter => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Output blocked by content filtering policy".into(),
        ),
        ErrorKind::RequestTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.".into(),
        ),
        ErrorKind::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "This request would exceed the rate limit for your organization (org-mock) of {RATE_LIMIT_REQUESTS} requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later."
            ),
        ),
        ErrorKind::QuotaExhausted => (
            StatusCode::PAYMENT_REQUIRED,
            "billing_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.".into(),
        ),
        ErrorKind::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "Internal server error".into(),
        ),
        ErrorKind::Overloaded | ErrorKind::ModelNotReady => (
            overloaded_status(),
            "overloaded_error",
            "Overloaded".into(),
        ),
        ErrorKind::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            "Request timed out".into(),
        ),
    }
}

/// Anthropic's non-standard 529.
fn overloaded_status() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

pub(crate) fn error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Rendered {
    let (status, ty, message) = describe(kind, ctx);
    let r = error_body(status, ty, &message, Some(ctx));
    match kind {
        ErrorKind::RateLimited(rl) => rate_limited(r, rl, ctx),
        _ => r,
    }
}

fn rate_limited(r: Rendered, rl: &RateLimit, ctx: &Ctx<'_>) -> Rendered {
    let wait = rl.retry_after.unwrap_or(Duration::from_secs(1));
    let mut r = with_headers(r, ctx, 0, wait);
    if rl.retry_after.is_some() {
        r = r.header("retry-after", wait.as_millis().div_ceil(1000).to_string());
    }
    if let Some(raw) = &rl.retry_after_raw {
        r = r.header("retry-after", raw);
    }
    r
}

/// `event: error` with the same error object as the HTTP error would carry.
/// (The documented example carries no `request_id` in the event.)
pub(crate) fn stream_error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Bytes {
    let (_, ty, message) = describe(kind, ctx);
    sse(
        Some("error"),
        &json!({"type": "error", "error": {"type": ty, "message": message}}),
    )
}
