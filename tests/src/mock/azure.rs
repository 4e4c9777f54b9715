//! Azure OpenAI's wire format where it differs from OpenAI's: deployment
//! paths `POST /openai/deployments/{deployment}/chat/completions` and
//! `/embeddings` with a required `api-version` query, the `api-key` header,
//! Azure's own 401/404/429 bodies (`{"error":{"code","message"}}`), its
//! `retry-after`/`retry-after-ms` headers, and the content filter: 400
//! `content_filter` with `innererror.content_filter_result` for a blocked
//! prompt, `finish_reason: "content_filter"` with `content_filter_results` in
//! a 200 for filtered output (see `openai.rs`, [`super::openai`] renders the
//! success bodies with Azure's annotations).
//!
//! Other errors use OpenAI's error object, which Azure passes through.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use super::openai::{self, Flavor};
use super::render::{Rendered, RequestView, Routed};
use super::reply::Op;
use super::{Ctx, ErrorKind};

/// The api-version the 429 message names when the request's is unknown.
const API_VERSION: &str = "2024-10-21";

pub(crate) fn route(req: &RequestView<'_>) -> Routed {
    let rest = req.path.strip_prefix("/openai/deployments/");
    let target = rest.and_then(|r| {
        let (deployment, op) = r.split_once('/')?;
        let op = match op {
            "chat/completions" => Op::Chat,
            "embeddings" => Op::Embeddings,
            _ => return None,
        };
        Some((deployment.to_owned(), op))
    });
    let Some((deployment, op)) = target.filter(|_| req.method == Method::POST) else {
        return Routed::Immediate(resource_not_found());
    };
    match req.header("api-key") {
        Some(key) if req.config.api_key.as_deref().is_none_or(|k| k == key) && !key.is_empty() => {}
        _ => return Routed::Immediate(access_denied()),
    }
    if req.query_param("api-version").is_none_or(|v| v.is_empty()) {
        return Routed::Immediate(resource_not_found());
    }
    match openai::parse(req, op, Some(&deployment)) {
        Ok(call) => Routed::Call(call),
        Err(r) => Routed::Immediate(r),
    }
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Rendered {
    Rendered::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn access_denied() -> Rendered {
    azure_error(
        StatusCode::UNAUTHORIZED,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
    )
}

fn resource_not_found() -> Rendered {
    azure_error(StatusCode::NOT_FOUND, "404", "Resource not found")
}

pub(crate) fn error(kind: &ErrorKind, ctx: &Ctx<'_>) -> Rendered {
    let r = match kind {
        ErrorKind::Auth => access_denied(),
        ErrorKind::NotFound => azure_error(
            StatusCode::NOT_FOUND,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
        ),
        ErrorKind::RateLimited(rl) => {
            let wait = rl.retry_after.unwrap_or(Duration::from_secs(1));
            let secs = wait.as_millis().div_ceil(1000);
            let mut r = azure_error(
                StatusCode::TOO_MANY_REQUESTS,
                "429",
                &format!(
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {API_VERSION} have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after {secs} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
                ),
            )
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-remaining-tokens", "0");
            if rl.retry_after.is_some() {
                r = r
                    .header("retry-after", secs.to_string())
                    .header("retry-after-ms", wait.as_millis().to_string());
            }
            if let Some(raw) = &rl.retry_after_raw {
                r = r.header("retry-after", raw);
            }
            r
        }
        ErrorKind::ContentFilter => Rendered::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                "type": null,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        "hate": {"filtered": false, "severity": "safe"},
                        "jailbreak": {"filtered": false, "detected": false},
                        "self_harm": {"filtered": false, "severity": "safe"},
                        "sexual": {"filtered": false, "severity": "safe"},
                        "violence": {"filtered": true, "severity": "medium"},
                    },
                },
            }}),
        ),
        ErrorKind::BadRequest
        | ErrorKind::PermissionDenied
        | ErrorKind::ContextLength
        | ErrorKind::RequestTooLarge
        | ErrorKind::QuotaExhausted
        | ErrorKind::ServerError
        | ErrorKind::Overloaded
        | ErrorKind::ModelNotReady
        | ErrorKind::Timeout => {
            let mut r = openai::error(kind, ctx);
            // Azure sends its own ids, not OpenAI's.
            r.headers.remove("x-request-id");
            r.headers.remove("openai-version");
            r.headers.remove("openai-processing-ms");
            r
        }
    };
    openai::with_ids(Flavor::Azure, r, ctx)
}
