//! The Gemini API's wire format: `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent` (`?alt=sse` for SSE events separated by
//! `\r\n\r\n`, otherwise a progressively streamed JSON array), keys in
//! `x-goog-api-key` or `?key=`, `candidates[].content.parts[]` (`text`,
//! `functionCall`), `finishReason` (`STOP`, `MAX_TOKENS`, `SAFETY`),
//! `promptFeedback.blockReason` for a blocked prompt (inside a 200) and
//! `usageMetadata`; embeddings by `:embedContent` and `:batchEmbedContents`.
//!
//! Errors are Google's `{"error":{"code","message","status","details"}}`:
//! missing key 403 `PERMISSION_DENIED`; wrong key 400 `INVALID_ARGUMENT` with
//! an `ErrorInfo` detail of reason `API_KEY_INVALID`; bad request, context
//! length and too large 400 `INVALID_ARGUMENT`; permission 403; not found 404
//! `NOT_FOUND`; rate limit 429 `RESOURCE_EXHAUSTED` with `QuotaFailure`
//! (per-minute quota id) and `RetryInfo.retryDelay` (`"2s"`); quota 429
//! `RESOURCE_EXHAUSTED` with a per-day quota id and no `RetryInfo`; server
//! error 500 `INTERNAL`; overloaded / not ready 503 `UNAVAILABLE`; timeout
//! 504 `DEADLINE_EXCEEDED`. A mid-stream error is an event whose data is that
//! error object.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::render::{Rendered, RequestView, Routed};
use super::reply::{self, Call, Content, Finish, Op, Reply};
use super::{Ctx, ErrorKind};

pub(crate) fn route(req: &RequestView<'_>) -> Routed {
    let target = req
        .path
        .strip_prefix("/v1beta/models/")
        .or_else(|| req.path.strip_prefix("/v1/models/"))
        .and_then(|rest| rest.rsplit_once(':'))
        .filter(|(_, method)| {
            matches!(
                *method,
                "generateContent" | "streamGenerateContent" | "embedContent" | "batchEmbedContents"
            )
        });
    let Some((model, method)) = target.filter(|_| req.method == Method::POST) else {
        return Routed::Immediate(google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Method not found: {} {}", req.method, req.path),
            vec![],
        ));
    };
    let key = req
        .header("x-goog-api-key")
        .map(str::to_owned)
        .or_else(|| req.query_param("key"));
    match key {
        None => {
            return Routed::Immediate(google_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                vec![],
            ));
        }
        Some(k) if k.is_empty() || req.config.api_key.as_deref().is_some_and(|e| e != k) => {
            return Routed::Immediate(api_key_invalid());
        }
        Some(_) => {}
    }
    if method == "embedContent" || method == "batchEmbedContents" {
        return match parse_embeddings(req, model, method == "batchEmbedContents") {
            Ok(call) => Routed::Call(call),
            Err(r) => Routed::Immediate(r),
        };
    }
    let stream = method == "streamGenerateContent";
    let sse = req.query_param("alt").as_deref() == Some("sse");
    match parse(req, model) {
        Ok(call) => Routed::Call(Call {
            stream,
            json_array_stream: stream && !sse,
            ..call
        }),
        Err(r) => Routed::Immediate(r),
    }
}

fn api_key_invalid() -> Rendered {
    google_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        vec![
            json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }),
            json!({
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key.",
            }),
        ],
    )
}

#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
fn parse(req: &RequestView<'_>, model: &str) -> Result<Call, Rendered> {
    let invalid =
        |msg: &str| google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg, vec![]);
    let Some(body) = req.json.filter(|v| v.is_object()) else {
        return Err(invalid("Invalid JSON payload received. Unexpected token."));
    };
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    };
    let mut texts = vec![parts_text(&body["systemInstruction"]["parts"])];
    texts.extend(contents.iter().map(|c| parts_text(&c["parts"])));
    let last_user_chars = contents
        .iter()
        .rposition(|c| c["role"] == "user" || c["role"].is_null())
        .map_or(0, |i| texts[i + 1].chars().count());
    let tool_result_last = contents.last().is_some_and(|c| {
        c["parts"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p.get("functionResponse").is_some()))
    });
    let tools = body["tools"]
        .as_array()
        .filter(|_| body["toolConfig"]["functionCallingConfig"]["mode"] != "NONE")
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["functionDeclarations"].as_array())
                .flatten()
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Call {
        model: model.to_owned(),
        input_chars: texts.join("\n").chars().count(),
        last_user_chars,
        tools,
        tool_result_last,
        max_tokens: body["generationConfig"]["maxOutputTokens"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok()),
        ..Call::default()
    })
}

/// `embedContent` (`{"content": …}`) or `batchEmbedContents`
/// (`{"requests": [{"content": …}, …]}`), with `outputDimensionality`.
#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
fn parse_embeddings(req: &RequestView<'_>, model: &str, batch: bool) -> Result<Call, Rendered> {
    let invalid =
        |msg: &str| google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg, vec![]);
    let Some(body) = req.json.filter(|v| v.is_object()) else {
        return Err(invalid("Invalid JSON payload received. Unexpected token."));
    };
    let requests: Vec<&Value> = if batch {
        body["requests"]
            .as_array()
            .map(|r| r.iter().collect())
            .unwrap_or_default()
    } else {
        vec![body]
    };
    if requests.is_empty() || requests.iter().any(|r| !r["content"].is_object()) {
        return Err(invalid(
            "* EmbedContentRequest.content: content is not specified\n",
        ));
    }
    let inputs: Vec<usize> = requests
        .iter()
        .map(|r| parts_text(&r["content"]["parts"]).chars().count())
        .collect();
    let dims = requests[0]["outputDimensionality"]
        .as_u64()
        .and_then(|d| usize::try_from(d).ok());
    Ok(Call {
        op: Op::Embeddings,
        model: model.to_owned(),
        input_chars: inputs.iter().sum(),
        embedding_inputs: inputs,
        dimensions: dims,
        batch,
        ..Call::default()
    })
}

fn parts_text(parts: &Value) -> String {
    parts
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| match (&p["text"], &p["functionResponse"]) {
                    (Value::String(t), _) => t.clone(),
                    (_, r @ Value::Object(_)) => r["response"].to_string(),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::ToolUse => "STOP",
        Finish::Length => "MAX_TOKENS",
        Finish::Refusal => "SAFETY",
    }
}

fn usage(input: u32, output: u32) -> Value {
    json!({
        "promptTokenCount": input,
        "candidatesTokenCount": output,
        "totalTokenCount": input + output,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input}],
    })
}

fn blocked_ratings() -> Value {
    json!([
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    ])
}

/// One `GenerateContentResponse` with `parts` (none: no `content`).
fn response(ctx: &Ctx<'_>, parts: Option<Value>, finish: Option<Finish>, usage: Value) -> Value {
    let mut candidate = json!({"index": 0});
    if let Some(parts) = parts {
        candidate["content"] = json!({"parts": parts, "role": "model"});
    }
    if let Some(f) = finish {
        candidate["finishReason"] = json!(finish_reason(f));
        if f == Finish::Refusal {
            candidate["safetyRatings"] = blocked_ratings();
        }
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": ctx.model(),
        "responseId": format!("mock{:020}", ctx.seq),
    })
}

pub(crate) fn success(call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    if call.op == Op::Embeddings {
        return embeddings(call);
    }
    let (input, output) = (reply.input_tokens, reply.output_tokens);
    let events: Vec<Value> = match (&reply.content, reply.finish) {
        (_, Finish::Refusal) => vec![response(ctx, None, Some(Finish::Refusal), usage(input, 0))],
        (
            Content::ToolCall {
                name, arguments, ..
            },
            f,
        ) => {
            let args = serde_json::from_str::<Value>(arguments).unwrap_or(Value::Null);
            vec![response(
                ctx,
                Some(json!([{"functionCall": {"name": name, "args": args}}])),
                Some(f),
                usage(input, output),
            )]
        }
        (Content::Text(t), f) if call.stream => {
            // Every chunk reports usage so far, as Gemini does: the
            // candidates count grows chunk by chunk to the final total.
            let pieces = reply::text_pieces(t);
            let last = pieces.len().saturating_sub(1);
            let mut so_far = String::new();
            pieces
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let done = i == last;
                    so_far.push_str(&p);
                    let out = if done {
                        output
                    } else {
                        reply::token_count(&so_far).min(output)
                    };
                    response(
                        ctx,
                        Some(json!([{"text": p}])),
                        done.then_some(f),
                        usage(input, out),
                    )
                })
                .collect()
        }
        (Content::Text(t), f) => vec![response(
            ctx,
            Some(json!([{"text": t}])),
            Some(f),
            usage(input, output),
        )],
    };
    render_events(call, events)
}

/// `{"embedding": {"values"}}`, or `{"embeddings": [...]}` for a batch.
fn embeddings(call: &Call) -> Rendered {
    let dims = call.dimensions.unwrap_or(8).clamp(1, 4096);
    let vectors: Vec<Value> = call
        .embedding_inputs
        .iter()
        .enumerate()
        .map(|(i, chars)| json!({"values": reply::embedding(i, *chars, dims)}))
        .collect();
    let body = if call.batch {
        json!({ "embeddings": vectors })
    } else {
        json!({ "embedding": vectors.into_iter().next().unwrap_or(Value::Null) })
    };
    Rendered::json(StatusCode::OK, &body)
}

/// Events as one JSON body, an SSE stream, or a streamed JSON array.
fn render_events(call: &Call, events: Vec<Value>) -> Rendered {
    if !call.stream {
        let body = events.into_iter().next().unwrap_or(Value::Null);
        return Rendered::json(StatusCode::OK, &body);
    }
    if call.json_array_stream {
        let n = events.len();
        let frames = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let open = if i == 0 { "[" } else { ",\r\n" };
                let close = if i + 1 == n { "]" } else { "" };
                Bytes::from(format!("{open}{e}{close}"))
            })
            .collect();
        return Rendered::stream("application/json; charset=UTF-8", frames);
    }
    let frames = events.iter().map(sse_event).collect();
    Rendered::stream("text/event-stream", frames)
}

fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\r\n\r\n"))
}

fn google_error(status: StatusCode, code: &str, message: &str, details: Vec<Value>) -> Rendered {
    let mut error = json!({"code": status.as_u16(), "message": message, "status": code});
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    Rendered::json(status, &json!({ "error": error }))
        .header("content-type", "application/json; charset=UTF-8")
}

fn quota_failure(quota_id: &str, model: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": quota_id,
            "quotaDimensions": {"location": "global", "model": model},
            "quotaValue": "15",
        }],
    })
}

fn help() -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
        }],
    })
}

pub(crate) fn error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Rendered {
    let model = ctx.model();
    let invalid =
        |msg: &str| google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg, vec![]);
    match kind {
        ErrorKind::BadRequest => invalid("Request contains an invalid argument."),
        ErrorKind::Auth => api_key_invalid(),
        ErrorKind::PermissionDenied => google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            vec![],
        ),
        ErrorKind::NotFound => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
            ),
            vec![],
        ),
        ErrorKind::ContextLength => {
            let window = ctx.config.context_window.unwrap_or(1_048_576);
            let wanted = ctx.call.map_or(window + 1, |c| c.input_tokens());
            invalid(&format!(
                "The input token count ({wanted}) exceeds the maximum number of tokens allowed ({window})."
            ))
        }
        ErrorKind::ContentFilter => {
            // Gemini blocks a prompt inside a 200: no candidates, a block reason.
            let input = ctx.call.map_or(0, Call::input_tokens);
            let body = json!({
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": blocked_ratings()},
                "usageMetadata": {"promptTokenCount": input, "totalTokenCount": input},
                "modelVersion": model,
            });
            match ctx.call {
                Some(call) if call.stream => render_events(call, vec![body]),
                _ => Rendered::json(StatusCode::OK, &body),
            }
        }
        ErrorKind::RequestTooLarge => {
            invalid("Request payload size exceeds the limit: 20971520 bytes.")
        }
        ErrorKind::RateLimited(rl) => {
            let mut details = vec![
                help(),
                quota_failure(
                    "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    model,
                ),
            ];
            let delay = match (&rl.retry_after_raw, rl.retry_after) {
                (Some(raw), _) => Some(raw.clone()),
                (None, Some(d)) => Some(format!("{}s", d.as_secs())),
                (None, None) => None,
            };
            let mut message = format!(
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 15, model: {model}"
            );
            if let Some(d) = &delay {
                message.push_str(&format!("\nPlease retry in {d}."));
                details.push(
                    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d}),
                );
            }
            google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                &message,
                details,
            )
        }
        ErrorKind::QuotaExhausted => google_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            &format!(
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 1500, model: {model}"
            ),
            vec![
                help(),
                quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier", model),
            ],
        ),
        ErrorKind::ServerError => google_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            vec![],
        ),
        ErrorKind::Overloaded | ErrorKind::ModelNotReady => google_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            vec![],
        ),
        ErrorKind::Timeout => google_error(
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
            vec![],
        ),
    }
}

/// The error object as one more stream element.
pub(crate) fn stream_error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Bytes {
    let body: Value = serde_json::from_slice(&error(kind, ctx).body()).unwrap_or(Value::Null);
    match ctx.call {
        Some(call) if call.json_array_stream => Bytes::from(format!(",\r\n{body}]")),
        _ => sse_event(&body),
    }
}
