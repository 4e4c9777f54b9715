//! Bedrock runtime's Converse wire format: `POST /model/{modelId}/converse`
//! (JSON: `output.message.content`, `stopReason`, `usage`, `metrics`) and
//! `/converse-stream` in the AWS event-stream framing (see
//! [`super::eventstream`]) with `messageStart`, `contentBlockStart` (tool
//! use), `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata`
//! events, each payload padded with a `"p"` field as Bedrock does, and
//! exception messages (`:message-type: exception`) mid-stream.
//!
//! Auth: a SigV4 `Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/
//! region/bedrock/aws4_request, SignedHeaders=…, Signature=<64 hex>` with an
//! `x-amz-date` header, checked for form (access key id, service, region,
//! `host` signed) and, when the mock has the secret key
//! (`MockConfig::aws_secret_key`), verified; or a Bedrock API key as `Bearer`.
//!
//! Errors are restJson1: `x-amzn-ErrorType: <Name>:http://internal.amazon.com/coral/com.amazon.bedrock/`
//! and `{"message": …}`, statuses from the service model (botocore
//! `bedrock-runtime` `service-2.json`): ValidationException 400 (bad request,
//! context length, too large), UnrecognizedClientException 403 (auth),
//! AccessDeniedException 403, ResourceNotFoundException 404,
//! ThrottlingException 429, ServiceQuotaExceededException 400,
//! InternalServerException 500, ServiceUnavailableException 503,
//! ModelNotReadyException 429, ModelTimeoutException 408. A blocked prompt
//! is a 200 with `stopReason: guardrail_intervened`; refused output
//! `stopReason: content_filtered`.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::render::{Rendered, RequestView, Routed, percent_decode};
use super::reply::{self, Call, Content, Finish, Reply};
use super::{Ctx, ErrorKind};
use super::{eventstream, sigv4};

/// The text a guardrail answers with when it blocks a prompt.
pub const GUARDRAIL_TEXT: &str = "Sorry, the model cannot answer this question.";

const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

pub(crate) fn route(req: &RequestView<'_>) -> Routed {
    let target = req.path.strip_prefix("/model/").and_then(|rest| {
        if let Some(m) = rest.strip_suffix("/converse-stream") {
            Some((m, true))
        } else {
            rest.strip_suffix("/converse").map(|m| (m, false))
        }
    });
    let Some((model, stream)) = target.filter(|_| req.method == Method::POST) else {
        return Routed::Immediate(aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "",
        ));
    };
    if let Err(r) = check_auth(req) {
        return Routed::Immediate(r);
    }
    match parse(req, &percent_decode(model)) {
        Ok(call) => Routed::Call(Call { stream, ..call }),
        Err(r) => Routed::Immediate(r),
    }
}

fn aws_error(status: StatusCode, name: &str, message: &str) -> Rendered {
    Rendered::json(status, &json!({ "message": message })).header(
        "x-amzn-errortype",
        format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    )
}

/// Check the SigV4 header's form (or a Bedrock API key as a bearer token).
#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
fn check_auth(req: &RequestView<'_>) -> Result<(), Rendered> {
    let forbidden = |name: &str, msg: &str| aws_error(StatusCode::FORBIDDEN, name, msg);
    let Some(auth) = req.header("authorization") else {
        return Err(forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return match &req.config.api_key {
            Some(k) if k != token.trim() => Err(forbidden(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )),
            _ => Ok(()),
        };
    }
    let Some(params) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(forbidden(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization=AWS4-HMAC-SHA256",
        ));
    };
    let field = |name: &str| {
        params.split(',').map(str::trim).find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then_some(v)
        })
    };
    let (credential, signed, signature) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    );
    let missing: Vec<String> = [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed),
    ]
    .iter()
    .filter(|(_, v)| v.is_none())
    .map(|(n, _)| format!("Authorization header requires '{n}' parameter."))
    .collect();
    if !missing.is_empty() {
        return Err(forbidden(
            "IncompleteSignatureException",
            &missing.join(" "),
        ));
    }
    if req.header("x-amz-date").is_none() && req.header("date").is_none() {
        return Err(forbidden(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    }
    let scope: Vec<&str> = credential.unwrap_or_default().split('/').collect();
    let [key_id, date, region, service, terminator] = scope[..] else {
        return Err(forbidden(
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term",
        ));
    };
    if terminator != "aws4_request" || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(forbidden(
            "IncompleteSignatureException",
            "Credential should be scoped with a valid terminator: 'aws4_request'",
        ));
    }
    if service != "bedrock" {
        return Err(forbidden(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'. ",
        ));
    }
    if req.config.region.as_deref().is_some_and(|r| r != region) {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!("Credential should be scoped to a valid region, not '{region}'. "),
        ));
    }
    let signed_ok = signed.unwrap_or_default().split(';').any(|h| h == "host");
    let sig = signature.unwrap_or_default();
    if !signed_ok || sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    if req.config.api_key.as_deref().is_some_and(|k| k != key_id) {
        return Err(forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if let Some(secret) = &req.config.aws_secret_key {
        let headers = signed
            .unwrap_or_default()
            .split(';')
            .map(|name| {
                let value = match (req.header(name), name) {
                    (Some(v), _) => v,
                    (None, "host") => req.authority.unwrap_or_default(),
                    (None, _) => "",
                };
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let signed_request = sigv4::SignedRequest {
            method: req.method.as_str(),
            path: req.path,
            query: req.query,
            headers,
            body: req.body,
        };
        let scope = sigv4::Scope {
            access_key_id: key_id,
            amz_date: req.header("x-amz-date").unwrap_or(date),
            region,
            service,
        };
        if sigv4::signature(&signed_request, &scope, secret) != sig {
            return Err(forbidden(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            ));
        }
    }
    Ok(())
}

#[allow(
    clippy::result_large_err,
    reason = "an early answer on a cold path of a test mock; boxing buys nothing"
)]
fn parse(req: &RequestView<'_>, model: &str) -> Result<Call, Rendered> {
    let Some(body) = req.json.filter(|v| v.is_object()) else {
        return Err(aws_error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "Unexpected character in request body",
        ));
    };
    let Some(messages) = body["messages"].as_array() else {
        return Err(aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null",
        ));
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
            .is_some_and(|bs| bs.iter().any(|b| b.get("toolResult").is_some()))
    });
    let tools = body["toolConfig"]["tools"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["toolSpec"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Call {
        model: model.to_owned(),
        input_chars: texts.join("\n").chars().count(),
        last_user_chars,
        tools,
        tool_result_last,
        max_tokens: body["inferenceConfig"]["maxTokens"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok()),
        ..Call::default()
    })
}

/// Text of a content-block list: `text` blocks and tool results' text.
fn blocks_text(blocks: &Value) -> String {
    blocks
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| match (&b["text"], &b["toolResult"]["content"]) {
                    (Value::String(t), _) => t.clone(),
                    (_, c @ Value::Array(_)) => blocks_text(c),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolUse => "tool_use",
        Finish::Refusal => "content_filtered",
    }
}

fn usage(reply: &Reply) -> Value {
    json!({
        "inputTokens": reply.input_tokens,
        "outputTokens": reply.output_tokens,
        "totalTokens": reply.input_tokens + reply.output_tokens,
    })
}

pub(crate) fn success(call: &Call, reply: &Reply, ctx: &Ctx<'_>) -> Rendered {
    render(call, reply, stop_reason(reply.finish), ctx)
}

fn render(call: &Call, reply: &Reply, stop: &str, ctx: &Ctx<'_>) -> Rendered {
    let metrics = json!({"latencyMs": ctx.latency_ms});
    let r = if call.stream {
        stream(reply, stop, &metrics)
    } else {
        let content = match &reply.content {
            Content::Text(t) => json!([{"text": t}]),
            Content::ToolCall {
                id_suffix,
                name,
                arguments,
            } => json!([{"toolUse": {
                "toolUseId": format!("tooluse_{id_suffix}"),
                "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or(Value::Null),
            }}]),
        };
        Rendered::json(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop,
                "usage": usage(reply),
                "metrics": metrics,
            }),
        )
    };
    r.header("x-amzn-requestid", ctx.uuid())
}

/// One event message; the payload gets Bedrock's `"p"` padding field.
fn event(name: &str, mut payload: Value, n: usize) -> Bytes {
    let pad = &PADDING[..(n * 7) % PADDING.len() + 1];
    payload["p"] = json!(pad);
    eventstream::encode(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn stream(reply: &Reply, stop: &str, metrics: &Value) -> Rendered {
    let mut frames = Vec::new();
    let mut push = |name: &str, payload: Value| {
        let n = frames.len();
        frames.push(event(name, payload, n));
    };
    push("messageStart", json!({"role": "assistant"}));
    match &reply.content {
        Content::Text(t) => {
            for piece in reply::text_pieces(t) {
                push(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": piece}}),
                );
            }
        }
        Content::ToolCall {
            id_suffix,
            name,
            arguments,
        } => {
            push(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {
                    "toolUseId": format!("tooluse_{id_suffix}"), "name": name,
                }}}),
            );
            for frag in reply::argument_fragments(arguments) {
                push(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": frag}}}),
                );
            }
        }
    }
    push("contentBlockStop", json!({"contentBlockIndex": 0}));
    push("messageStop", json!({"stopReason": stop}));
    push(
        "metadata",
        json!({"usage": usage(reply), "metrics": metrics}),
    );
    Rendered::stream("application/vnd.amazon.eventstream", frames)
}

/// (status, exception name, message) for `kind`.
fn describe(kind: &ErrorKind) -> (StatusCode, &'static str, &'static str) {
    match kind {
        ErrorKind::BadRequest => (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "1 validation error detected: Value '0' at 'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1",
        ),
        ErrorKind::Auth => (
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ),
        ErrorKind::PermissionDenied => (
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        ErrorKind::NotFound => (
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        ErrorKind::ContextLength | ErrorKind::RequestTooLarge => (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Input is too long for requested model.",
        ),
        // Rendered as a 200 by `error`; this is the in-stream wording.
        ErrorKind::ContentFilter => (StatusCode::OK, "ValidationException", GUARDRAIL_TEXT),
        ErrorKind::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        ErrorKind::QuotaExhausted => (
            StatusCode::BAD_REQUEST,
            "ServiceQuotaExceededException",
            "Your request exceeds the service quota for your account. You can view your quotas at https://docs.aws.amazon.com/servicequotas/latest/userguide/gs-request-quota.html. You can resubmit your request later.",
        ),
        ErrorKind::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
        ErrorKind::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        ErrorKind::ModelNotReady => (
            StatusCode::TOO_MANY_REQUESTS,
            "ModelNotReadyException",
            "Model is not ready to serve inference requests. The AWS SDK will automatically retry the operation up to 5 times.",
        ),
        ErrorKind::Timeout => (
            StatusCode::REQUEST_TIMEOUT,
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        ),
    }
}

pub(crate) fn error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Rendered {
    if let (ErrorKind::ContentFilter, Some(call)) = (kind, ctx.call) {
        // A guardrail blocks the prompt inside a 200.
        let reply = Reply {
            content: Content::Text(GUARDRAIL_TEXT.to_owned()),
            finish: Finish::Stop,
            input_tokens: call.input_tokens(),
            output_tokens: 0,
        };
        return render(call, &reply, "guardrail_intervened", ctx);
    }
    let (status, name, message) = describe(kind);
    aws_error(status, name, message).header("x-amzn-requestid", ctx.uuid())
}

/// An exception message in the event stream. ConverseStream's union names
/// five exceptions; anything else travels as `modelStreamErrorException`.
pub(crate) fn stream_error(kind: &ErrorKind, _ctx: &Ctx<'_>) -> Bytes {
    let (status, _, message) = describe(kind);
    let (name, payload) = match kind {
        ErrorKind::RateLimited(_) => ("throttlingException", json!({"message": message})),
        ErrorKind::ServerError => ("internalServerException", json!({"message": message})),
        ErrorKind::Overloaded => ("serviceUnavailableException", json!({"message": message})),
        ErrorKind::BadRequest | ErrorKind::ContextLength | ErrorKind::RequestTooLarge => {
            ("validationException", json!({"message": message}))
        }
        ErrorKind::Auth
        | ErrorKind::PermissionDenied
        | ErrorKind::NotFound
        | ErrorKind::ContentFilter
        | ErrorKind::QuotaExhausted
        | ErrorKind::ModelNotReady
        | ErrorKind::Timeout => (
            "modelStreamErrorException",
            json!({
                "message": "An error occurred while streaming the response. Retry your request.",
                "originalStatusCode": status.as_u16(),
                "originalMessage": message,
            }),
        ),
    };
    eventstream::encode(
        &[
            (":exception-type", name),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.to_string().as_bytes(),
    )
}
