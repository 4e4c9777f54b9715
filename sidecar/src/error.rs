//! The errors the sidecar answers with: always the OpenAI error object
//! `{"error":{"message","type","param","code"}}`, the right status, the
//! stable `code`s of DESIGN.md, and `x-should-retry: false` (the sidecar has
//! already done what retrying and falling back could do).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use sluice_crds::FailureClass;

use crate::body::{self, Body};
use crate::openai::{ErrorBody, ErrorObject};
use crate::provider::Failure;

/// Whose fault an error is, for `sluice_errors_total{fault}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The application sent something wrong.
    Caller,
    /// A policy (budget, rate limit, PII) refused it.
    Policy,
    /// The provider failed.
    Provider,
    /// The sidecar itself (not ready, internal error).
    Gateway,
}

impl Fault {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Caller => "caller",
            Fault::Policy => "policy",
            Fault::Provider => "provider",
            Fault::Gateway => "gateway",
        }
    }
}

/// An error answer, before it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// One of DESIGN.md's stable codes.
    pub code: &'static str,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, …
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<Duration>,
    pub fault: Fault,
    /// The failure class behind it, when a provider failed.
    pub class: Option<FailureClass>,
    /// `x-ratelimit-*` on a rate-limit refusal (boxed: errors travel in
    /// `Result`s on the hot path and stay small).
    pub rate_headers: Option<Box<crate::ratelimit::RateHeaders>>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        kind: &'static str,
        fault: Fault,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
            fault,
            class: None,
            rate_headers: None,
        }
    }

    /// 400 `pii_blocked`: the route's PII policy is `block` and the request
    /// carries the named categories (never the values).
    pub fn pii_blocked(categories: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "pii_blocked",
            "invalid_request_error",
            Fault::Policy,
            format!(
                "the request contains personal data or secrets ({}); this route blocks them",
                categories.join(", ")
            ),
        )
    }

    /// 429 `rate_limit_exceeded` from a budget's `rateLimits`, with
    /// `Retry-After` and OpenAI's `x-ratelimit-*` headers.
    pub fn rate_limited(l: &crate::ratelimit::Limited) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "rate_limit_error",
            Fault::Policy,
            format!(
                "rate limit exceeded for this workload; retry after {}s",
                l.retry_after_secs
            ),
        );
        e.retry_after = Some(Duration::from_secs(l.retry_after_secs));
        e.rate_headers = Some(Box::new(l.headers.clone()));
        e
    }

    /// 429 `budget_exceeded`, `Retry-After` = seconds to the window's reset.
    pub fn budget_exceeded(r: &crate::budget::Rejected) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exceeded",
            "insufficient_quota",
            Fault::Policy,
            format!(
                "budget {} is exhausted for this window; it resets in {}s",
                r.budget, r.retry_after_secs
            ),
        );
        e.retry_after = Some(Duration::from_secs(r.retry_after_secs));
        e
    }

    /// 422 on an `idempotency-key` reused with a different request body.
    pub fn idempotency_conflict() -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
            "invalid_request_error",
            Fault::Caller,
            "this idempotency-key was already used with a different request",
        );
        e.param = Some("idempotency-key".into());
        e
    }

    /// 400 `invalid_json`.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "invalid_request_error",
            Fault::Caller,
            message,
        )
    }

    /// 400 `invalid_parameter` naming the field.
    pub fn invalid_parameter(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "invalid_request_error",
            Fault::Caller,
            message,
        );
        e.param = Some(param.into());
        e
    }

    /// 413 `request_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "invalid_request_error",
            Fault::Caller,
            message,
        )
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        let shown: String = model.chars().take(100).collect();
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            "invalid_request_error",
            Fault::Caller,
            format!(
                "The model `{shown}` does not exist: no route serves it (GET /v1/models lists them)"
            ),
        );
        e.param = Some("model".into());
        e
    }

    /// 404 for a path the sidecar does not serve.
    pub fn no_such_path() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "invalid_request_error",
            Fault::Caller,
            "unknown path",
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "invalid_request_error",
            Fault::Caller,
            "method not allowed",
        )
    }

    /// 503 before the first configuration is loaded.
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_target",
            "server_error",
            Fault::Gateway,
            "the sidecar has no valid configuration yet",
        )
    }

    /// 503 `no_healthy_target`: the route has nothing to try.
    pub fn no_target(route: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_target",
            "server_error",
            Fault::Gateway,
            format!("route {route} has no target that can serve this request"),
        )
    }

    /// The answer after every attempt failed, from the last failure.
    pub fn from_failure(f: &Failure) -> Self {
        use FailureClass as C;
        let (status, code, kind, fault) = match f.class {
            C::Connect | C::Reset | C::ServerError | C::Malformed | C::NotFound | C::Auth => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "server_error",
                Fault::Provider,
            ),
            // The provider refused the request itself: the caller's to fix,
            // and an SDK's BadRequestError says so.
            C::BadRequest => (
                StatusCode::BAD_REQUEST,
                "upstream_error",
                "invalid_request_error",
                Fault::Caller,
            ),
            C::TimeoutHeaders | C::TimeoutFirstToken | C::TimeoutIdle | C::TimeoutTotal => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "server_error",
                Fault::Provider,
            ),
            C::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "server_error",
                Fault::Provider,
            ),
            C::RateLimited | C::QuotaExhausted => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "rate_limit_error",
                Fault::Provider,
            ),
            C::ContextLength => (
                StatusCode::BAD_REQUEST,
                "context_length_exceeded",
                "invalid_request_error",
                Fault::Caller,
            ),
            C::ContentFilter | C::Refusal => (
                StatusCode::BAD_REQUEST,
                "content_policy_violation",
                "invalid_request_error",
                Fault::Caller,
            ),
            C::StreamInterrupted => (
                StatusCode::BAD_GATEWAY,
                "upstream_stream_interrupted",
                "server_error",
                Fault::Provider,
            ),
            // Nobody reads this answer; it exists for the log and metrics.
            C::ClientCancelled => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_cancelled",
                "invalid_request_error",
                Fault::Caller,
            ),
        };
        let mut e = Self::new(status, code, kind, fault, format!("upstream failed: {f}"));
        e.retry_after = f.retry_after;
        e.class = Some(f.class);
        e
    }

    /// 502 `upstream_response_too_large`.
    pub fn response_too_large() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_response_too_large",
            "server_error",
            Fault::Provider,
            "the upstream response exceeded the size limit",
        )
    }

    /// The OpenAI error object.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.clone(),
                code: Some(self.code.to_owned()),
            },
        }
    }

    /// The JSON bytes of the error object.
    pub fn json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_else(|_| b"{\"error\":{}}".to_vec()))
    }

    /// The whole HTTP answer.
    pub fn into_response(self) -> Response<Body> {
        let json = self.json();
        self.respond_with(json)
    }

    /// The whole HTTP answer in Anthropic's error shape (`/v1/messages`).
    pub fn into_anthropic_response(self) -> Response<Body> {
        let value = crate::messages::from_openai_error(self.status.as_u16(), &self.body());
        self.respond_with(Bytes::from(value.to_string()))
    }

    fn respond_with(self, json: Bytes) -> Response<Body> {
        let mut resp = Response::new(body::full(json));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert("x-should-retry", HeaderValue::from_static("false"));
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.rate_headers.iter().flat_map(|r| r.to_headers()) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}
