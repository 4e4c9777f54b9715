//! OpenAI's wire format: `POST /v1/chat/completions` (JSON and SSE
//! `chat.completion.chunk` stream ending in `data: [DONE]`), `POST
//! /v1/embeddings`, `GET /v1/models`, `Authorization: Bearer` keys, the error
//! object `{"error":{"message","type","param","code"}}` and the
//! `x-ratelimit-*` / `retry-after(-ms)` / `x-request-id` headers. Stream
//! chunks carry `service_tier` and the `obfuscation` padding field unless
//! `stream_options.include_obfuscation` is false.
//!
//! Azure OpenAI shares the bodies (`Flavor::Azure` adds its content-filter
//! annotations); its paths, auth and a few errors live in `azure.rs`. Errors
//! are rendered in `openai/errors.rs`.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::Ctx;
use super::render::{Rendered, RequestView, Routed, mask_key, sse};
use super::reply::{self, Call, Content, Finish, Op, Reply};

mod errors;

pub use errors::go_duration;
pub(crate) use errors::{error, error_object, stream_error};

/// Which service's variant of the OpenAI format to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Azure,
}

/// Padding characters for the `obfuscation` field of stream chunks.
const OBFUSCATION: &str = "Xq3ZpL0aVt7KmB2w";

/// Requests per minute the success headers advertise.
pub const RATE_LIMIT_REQUESTS: u32 = 10_000;
/// Tokens per minute the success headers advertise.
pub const RATE_LIMIT_TOKENS: u32 = 30_000_000;

pub(crate) fn route(req: &RequestView<'_>) -> Routed {
    let op = match (req.method, req.path) {
        (&Method::POST, "/v1/chat/completions") => Op::Chat,
        (&Method::POST, "/v1/embeddings") => Op::Embeddings,
        (&Method::GET, "/v1/models") => {
            if let Err(r) = check_auth(req) {
                return Routed::Immediate(r);
            }
            return Routed::Immediate(models(req));
        }
        _ => {
            return Routed::Immediate(error_object(
                StatusCode::NOT_FOUND,
                &format!("Invalid URL ({} {})", req.method, req.path),
                "invalid_request_error",
                None,
                None,
            ));
        }
    };
    if let Err(r) = check_auth(req) {
        return Routed::Immediate(r);
    }
    match parse(req, op, None) {
        Ok(call) => Routed::Call(call),
        Err(r) => Routed::Immediate(r),
    }
}

#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
fn check_auth(req: &RequestView<'_>) -> Result<(), Rendered> {
    let Some(auth) = req.header("authorization") else {
        return Err(error_object(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            None,
        ));
    };
    let key = auth.strip_prefix("Bearer ").unwrap_or(auth).trim();
    match &req.config.api_key {
        Some(expected) if key != expected => Err(invalid_key(key)),
        _ if key.is_empty() => Err(invalid_key(key)),
        _ => Ok(()),
    }
}

pub(super) fn invalid_key(key: &str) -> Rendered {
    error_object(
        StatusCode::UNAUTHORIZED,
        &format!(
            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
            mask_key(key)
        ),
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    )
}

fn models(req: &RequestView<'_>) -> Rendered {
    let names: Vec<String> = if req.config.models.is_empty() {
        vec![
            "gpt-4o".into(),
            "gpt-4o-mini".into(),
            "text-embedding-3-small".into(),
        ]
    } else {
        req.config.models.clone()
    };
    let data: Vec<Value> = names
        .iter()
        .map(
            |m| json!({"id": m, "object": "model", "created": 1_715_367_049, "owned_by": "system"}),
        )
        .collect();
    Rendered::json(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// Parse a chat or embeddings body. `model` overrides the body's model (Azure
/// takes it from the deployment in the path).
#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
pub(crate) fn parse(req: &RequestView<'_>, op: Op, model: Option<&str>) -> Result<Call, Rendered> {
    let Some(body) = req.json.filter(|v| v.is_object()) else {
        return Err(error_object(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
            "invalid_request_error",
            None,
            None,
        ));
    };
    let model = match model.or_else(|| body["model"].as_str()) {
        Some(m) => m.to_owned(),
        None => {
            return Err(error_object(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                "invalid_request_error",
                None,
                None,
            ));
        }
    };
    if op == Op::Embeddings {
        let inputs: Vec<usize> = match &body["input"] {
            Value::String(s) => vec![s.chars().count()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or(1, |s| s.chars().count()))
                .collect(),
            _ => {
                return Err(missing("input"));
            }
        };
        return Ok(Call {
            op,
            model,
            input_chars: inputs.iter().sum(),
            dimensions: body["dimensions"]
                .as_u64()
                .and_then(|d| usize::try_from(d).ok()),
            embedding_inputs: inputs,
            ..Call::default()
        });
    }
    let Some(messages) = body["messages"].as_array() else {
        return Err(missing("messages"));
    };
    let texts: Vec<String> = messages
        .iter()
        .map(|m| content_text(&m["content"]))
        .collect();
    let last_user_chars = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .map_or(0, |i| texts[i].chars().count());
    let tools_allowed = body["tool_choice"] != "none";
    let tools = body["tools"]
        .as_array()
        .filter(|_| tools_allowed)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Call {
        op,
        model,
        stream: body["stream"].as_bool().unwrap_or(false),
        include_usage: body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false),
        obfuscation: body["stream_options"]["include_obfuscation"]
            .as_bool()
            .unwrap_or(true),
        input_chars: texts.join("\n").chars().count(),
        last_user_chars,
        tools,
        tool_result_last: messages.last().is_some_and(|m| m["role"] == "tool"),
        max_tokens: body["max_completion_tokens"]
            .as_u64()
            .or_else(|| body["max_tokens"].as_u64())
            .and_then(|n| u32::try_from(n).ok()),
        ..Call::default()
    })
}

fn missing(param: &str) -> Rendered {
    error_object(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{param}'."),
        "invalid_request_error",
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// The text of a message's `content`: a string, or the `text` of its parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

pub(crate) fn success(flavor: Flavor, call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    let rendered = match call.op {
        Op::Embeddings => embeddings(call),
        Op::Chat if call.stream => chat_stream(flavor, call, reply, ctx),
        Op::Chat => Rendered::json(StatusCode::OK, &chat_completion(flavor, reply, ctx)),
    };
    let remaining_tokens = RATE_LIMIT_TOKENS.saturating_sub(call.input_tokens());
    with_ids(flavor, rendered, ctx)
        .header(
            "x-ratelimit-limit-requests",
            RATE_LIMIT_REQUESTS.to_string(),
        )
        .header(
            "x-ratelimit-remaining-requests",
            (RATE_LIMIT_REQUESTS - 1).to_string(),
        )
        .header("x-ratelimit-reset-requests", "6ms")
        .header("x-ratelimit-limit-tokens", RATE_LIMIT_TOKENS.to_string())
        .header("x-ratelimit-remaining-tokens", remaining_tokens.to_string())
        .header("x-ratelimit-reset-tokens", "0s")
}

/// The request-id headers each flavor sends on every answer.
pub(crate) fn with_ids(flavor: Flavor, r: Rendered, ctx: &Ctx<'_>) -> Rendered {
    match flavor {
        Flavor::OpenAi => r
            .header("x-request-id", format!("req_{}", ctx.hex_id()))
            .header("openai-version", "2020-10-01")
            .header("openai-processing-ms", ctx.latency_ms.to_string()),
        Flavor::Azure => r
            .header("x-request-id", ctx.uuid())
            .header("apim-request-id", ctx.uuid())
            .header("x-ms-region", "East US"),
    }
}

fn embeddings(call: &Call) -> Rendered {
    let dims = call.dimensions.unwrap_or(8).clamp(1, 4096);
    let data: Vec<Value> = call
        .embedding_inputs
        .iter()
        .enumerate()
        .map(|(i, chars)| {
            json!({"object": "embedding", "index": i, "embedding": reply::embedding(i, *chars, dims)})
        })
        .collect();
    let tokens: u32 = call
        .embedding_inputs
        .iter()
        .map(|c| reply::tokens_for_chars(*c))
        .sum();
    Rendered::json(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

pub(crate) fn usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

fn finish_reason(flavor: Flavor, finish: Finish) -> &'static str {
    match (finish, flavor) {
        (Finish::Stop, _) => "stop",
        (Finish::Length, _) => "length",
        (Finish::ToolUse, _) => "tool_calls",
        // OpenAI reports a model refusal in `message.refusal` with "stop";
        // Azure's filter cuts the output with "content_filter".
        (Finish::Refusal, Flavor::OpenAi) => "stop",
        (Finish::Refusal, Flavor::Azure) => "content_filter",
    }
}

fn created() -> i64 {
    chrono::Utc::now().timestamp()
}

fn chat_completion(flavor: Flavor, reply: &Reply, ctx: &Ctx<'_>) -> Value {
    let message = match (&reply.content, reply.finish, flavor) {
        (_, Finish::Refusal, Flavor::OpenAi) => json!({
            "role": "assistant", "content": null, "refusal": reply.text(), "annotations": [],
        }),
        (_, Finish::Refusal, Flavor::Azure) => json!({"role": "assistant", "content": null}),
        (Content::Text(t), _, _) => json!({
            "role": "assistant", "content": t, "refusal": null, "annotations": [],
        }),
        (
            Content::ToolCall {
                id_suffix,
                name,
                arguments,
            },
            _,
            _,
        ) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": format!("call_{id_suffix}"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }],
            "refusal": null,
            "annotations": [],
        }),
    };
    let mut choice = json!({
        "index": 0,
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason(flavor, reply.finish),
    });
    let mut body = json!({
        "id": format!("chatcmpl-mock{:06}", ctx.seq),
        "object": "chat.completion",
        "created": created(),
        "model": ctx.model(),
        "choices": [],
        "usage": usage(reply),
        "system_fingerprint": "fp_mock",
    });
    match flavor {
        Flavor::OpenAi => body["service_tier"] = json!("default"),
        Flavor::Azure => {
            choice["content_filter_results"] = filter_results(reply.finish == Finish::Refusal);
            body["prompt_filter_results"] = prompt_filter_results();
        }
    }
    body["choices"] = json!([choice]);
    body
}

/// Azure's per-category annotations; `filtered` marks violence as the cause.
pub(crate) fn filter_results(filtered: bool) -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({
        "hate": safe,
        "self_harm": safe,
        "sexual": safe,
        "violence": if filtered { json!({"filtered": true, "severity": "medium"}) } else { safe.clone() },
    })
}

fn prompt_filter_results() -> Value {
    json!([{
        "prompt_index": 0,
        "content_filter_results": {
            "hate": {"filtered": false, "severity": "safe"},
            "jailbreak": {"filtered": false, "detected": false},
            "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"},
            "violence": {"filtered": false, "severity": "safe"},
        },
    }])
}

fn chat_stream(flavor: Flavor, call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    let id = format!("chatcmpl-mock{:06}", ctx.seq);
    let created = created();
    let model = ctx.model().to_owned();
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut choice =
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish});
        if flavor == Flavor::Azure {
            choice["content_filter_results"] = if finish.is_some() {
                json!({})
            } else {
                filter_results(false)
            };
        }
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [choice],
        });
        if call.include_usage {
            c["usage"] = Value::Null;
        }
        if flavor == Flavor::OpenAi {
            c["service_tier"] = json!("default");
            if call.obfuscation {
                // OpenAI pads delta events to hide token lengths; clients
                // must ignore the field.
                let len = 16 - delta.to_string().len() % 16;
                c["obfuscation"] = json!(&OBFUSCATION[..len]);
            }
        }
        sse(None, &c)
    };
    let mut frames = Vec::new();
    if flavor == Flavor::Azure {
        // Azure opens every stream with the prompt's filter results.
        frames.push(sse(
            None,
            &json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                    "prompt_filter_results": prompt_filter_results()}),
        ));
    }
    match (&reply.content, reply.finish, flavor) {
        (_, Finish::Refusal, Flavor::Azure) => {
            frames.push(chunk(json!({"role": "assistant", "content": ""}), None));
        }
        (_, Finish::Refusal, Flavor::OpenAi) => {
            frames.push(chunk(
                json!({"role": "assistant", "content": null, "refusal": ""}),
                None,
            ));
            for piece in reply::text_pieces(reply.text()) {
                frames.push(chunk(json!({"refusal": piece}), None));
            }
        }
        (Content::Text(t), _, _) => {
            frames.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
            for piece in reply::text_pieces(t) {
                frames.push(chunk(json!({"content": piece}), None));
            }
        }
        (
            Content::ToolCall {
                id_suffix,
                name,
                arguments,
            },
            _,
            _,
        ) => {
            frames.push(chunk(
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": format!("call_{id_suffix}"),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }],
                    "refusal": null,
                }),
                None,
            ));
            for frag in reply::argument_fragments(arguments) {
                frames.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
                    None,
                ));
            }
        }
    }
    frames.push(chunk(json!({}), Some(finish_reason(flavor, reply.finish))));
    if call.include_usage {
        frames.push(sse(
            None,
            &json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [],
                "usage": usage(reply),
            }),
        ));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Rendered::stream("text/event-stream; charset=utf-8", frames)
}
