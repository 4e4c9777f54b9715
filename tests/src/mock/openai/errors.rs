//! OpenAI's error object and rate-limit headers.
//!
//! Mapping (status, `type`, `code`): bad request 400
//! `invalid_request_error`/`invalid_type`; auth 401 `invalid_api_key`;
//! permission 403 `unsupported_country_region_territory`; not found 404
//! `model_not_found`; context length 400 `context_length_exceeded`; content
//! filter 400 `content_policy_violation`; too large 413
//! `string_above_max_length`; rate limited 429 `requests`/`rate_limit_exceeded`;
//! quota 429 `insufficient_quota`; server error 500 `server_error`;
//! overloaded and model-not-ready 503 `server_error`; timeout 504
//! `server_error`. A mid-stream error is a `data: {"error":…}` event and no
//! `[DONE]`, which the official SDKs raise as an `APIError`.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{Flavor, RATE_LIMIT_REQUESTS, RATE_LIMIT_TOKENS, invalid_key, with_ids};
use crate::mock::render::{Rendered, sse};
use crate::mock::{Ctx, ErrorKind, RateLimit};

/// `{"error": {message, type, param, code}}` under `status`.
pub(crate) fn error_object(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Rendered {
    Rendered::json(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

pub(crate) fn error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Rendered {
    let model = ctx.model();
    let r = match kind {
        ErrorKind::BadRequest => error_object(
            StatusCode::BAD_REQUEST,
            "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an integer instead.",
            "invalid_request_error",
            Some("messages[0].content"),
            Some("invalid_type"),
        ),
        ErrorKind::Auth => invalid_key("sk-revoked-mock-key-0000"),
        ErrorKind::PermissionDenied => error_object(
            StatusCode::FORBIDDEN,
            "Country, region, or territory not supported",
            "request_forbidden",
            None,
            Some("unsupported_country_region_territory"),
        ),
        ErrorKind::NotFound => error_object(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
        ErrorKind::ContextLength => error_object(
            StatusCode::BAD_REQUEST,
            &context_message(ctx),
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        ErrorKind::ContentFilter => error_object(
            StatusCode::BAD_REQUEST,
            "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.",
            "invalid_request_error",
            None,
            Some("content_policy_violation"),
        ),
        ErrorKind::RequestTooLarge => error_object(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Invalid 'messages[0].content': string too long. Expected a string with maximum length 10485760, but got a string with length 10485761 instead.",
            "invalid_request_error",
            Some("messages[0].content"),
            Some("string_above_max_length"),
        ),
        ErrorKind::RateLimited(rl) => {
            let wait = rl.retry_after.unwrap_or(Duration::from_millis(120));
            let r = error_object(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Rate limit reached for {model} in organization org-mock on requests per min (RPM): Limit {RATE_LIMIT_REQUESTS}, Used {RATE_LIMIT_REQUESTS}, Requested 1. Please try again in {}. Visit https://platform.openai.com/account/rate-limits to learn more.",
                    go_duration(wait)
                ),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
            rate_limit_headers(r, rl)
        }
        ErrorKind::QuotaExhausted => error_object(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        ),
        ErrorKind::ServerError => server_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
        ),
        ErrorKind::Overloaded | ErrorKind::ModelNotReady => server_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later",
        ),
        ErrorKind::Timeout => server_error(StatusCode::GATEWAY_TIMEOUT, "Request timed out."),
    };
    with_ids(Flavor::OpenAi, r, ctx)
}

fn server_error(status: StatusCode, message: &str) -> Rendered {
    error_object(status, message, "server_error", None, None)
}

pub(crate) fn context_message(ctx: &Ctx<'_>) -> String {
    let window = ctx.config.context_window.unwrap_or(128_000);
    let wanted = ctx.call.map_or(window + 1, |c| {
        c.input_tokens().saturating_add(c.max_tokens.unwrap_or(0))
    });
    format!(
        "This model's maximum context length is {window} tokens. However, your messages resulted in {wanted} tokens. Please reduce the length of the messages."
    )
}

/// The 429 headers: the exhausted request budget with its reset, and the
/// retry hints (`retry-after` in whole seconds, `retry-after-ms`).
pub(crate) fn rate_limit_headers(r: Rendered, rl: &RateLimit) -> Rendered {
    let mut r = r
        .header(
            "x-ratelimit-limit-requests",
            RATE_LIMIT_REQUESTS.to_string(),
        )
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-limit-tokens", RATE_LIMIT_TOKENS.to_string())
        .header(
            "x-ratelimit-remaining-tokens",
            RATE_LIMIT_TOKENS.to_string(),
        )
        .header("x-ratelimit-reset-tokens", "0s");
    if let Some(d) = rl.retry_after {
        r = r
            .header("x-ratelimit-reset-requests", go_duration(d))
            .header("retry-after", d.as_millis().div_ceil(1000).to_string())
            .header("retry-after-ms", d.as_millis().to_string());
    }
    if let Some(raw) = &rl.retry_after_raw {
        r = r.header("retry-after", raw);
    }
    r
}

/// A duration the way OpenAI's reset headers write it: `20ms`, `1.5s`,
/// `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s_ms = ms % 60_000;
    let secs = if s_ms.is_multiple_of(1000) {
        format!("{}s", s_ms / 1000)
    } else {
        let frac = format!("{:03}", s_ms % 1000);
        format!("{}.{}s", s_ms / 1000, frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// The in-stream error event: the same error object as a `data:` line.
pub(crate) fn stream_error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Bytes {
    let body = error(kind, ctx).body();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    sse(None, &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
    }
}
