//! Attempt: tries the route's targets in order until one answers, up to the
//! commit point, and decides from the failure class alone whether to move
//! on. Nothing reaches the client before the commit point (the whole body,
//! or a stream's first token), so every failure before it can fall back
//! invisibly.
//!
//! The class table ([`class_policy`]) is the one exhaustive `match` that
//! says what each failure class means; from it come retries of the same
//! target (full-jitter backoff, `Retry-After`, the route's retry budget),
//! breaker bookkeeping, 429 throttling and fallback.

use std::time::Duration;

use bytes::Bytes;
use sluice_crds::FailureClass;
use tokio::time::Instant;

use crate::config::{Route, Slot, Target};
use crate::egress::{Egress, UpstreamBody, UpstreamResponse};
use crate::health::{Endpoint, Health};
use crate::openai::{ChatRequest, EmbeddingsRequest, Usage};
use crate::provider::{self, Failure, StreamContext, StreamDecoder, StreamEvent};
use crate::route::Planned;

mod retry;
pub use retry::{RetryBudget, retry_delay};

/// What one failure class means for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassPolicy {
    /// Whether trying the same target again can help.
    pub retry_same_target: bool,
    /// Whether it is evidence the target is unhealthy.
    pub counts_against_breaker: bool,
    /// Whether the next target may be tried (when `fallback.triggers`
    /// names the class's trigger).
    pub may_fall_back: bool,
}

/// The table of DESIGN.md's "Failure semantics", one row per class.
pub fn class_policy(class: FailureClass) -> ClassPolicy {
    use FailureClass as C;
    let p = |retry_same_target, counts_against_breaker, may_fall_back| ClassPolicy {
        retry_same_target,
        counts_against_breaker,
        may_fall_back,
    };
    match class {
        C::Connect | C::Reset => p(true, true, true),
        C::TimeoutHeaders | C::TimeoutFirstToken | C::TimeoutIdle | C::TimeoutTotal => {
            p(true, true, true)
        }
        C::ServerError | C::Overloaded => p(true, true, true),
        // 429 is not an outage: throttle, do not feed the breaker.
        C::RateLimited => p(true, false, true),
        // Long cooldowns, not breaker evidence; a retry cannot help.
        C::QuotaExhausted | C::Auth | C::NotFound => p(false, false, true),
        // The request itself is at fault: nothing else will do better.
        C::BadRequest => p(false, false, false),
        C::ContextLength => p(false, false, true),
        // Only when `fallback.triggers` names them.
        C::ContentFilter | C::Refusal => p(false, false, true),
        C::StreamInterrupted | C::Malformed => p(true, true, true),
        C::ClientCancelled => p(false, false, false),
    }
}

/// Whether `failure` moves on to the next target of `route`.
pub fn falls_back(route: &Route, class: FailureClass) -> bool {
    class_policy(class).may_fall_back
        && class
            .trigger()
            .is_some_and(|t| route.fallback_triggers.contains(&t))
}

impl Call<'_> {
    /// Tokens a call may occupy on its target while in flight, for
    /// `least-busy` and the provider's `tokensPerMinute`: the estimated
    /// prompt plus the completion asked for.
    pub fn estimated_tokens(&self) -> u64 {
        match self {
            Call::Chat {
                req, input_tokens, ..
            } => input_tokens + u64::from(req.max_output_tokens().unwrap_or(256)),
            Call::Embeddings { .. } => 0,
        }
    }
}

/// What is being asked of the targets.
pub enum Call<'a> {
    /// A chat completion; `raw` is the client's body for pass-through.
    Chat {
        raw: &'a [u8],
        req: &'a ChatRequest,
        stream: bool,
        /// The prompt's estimated tokens ([`crate::route::RequestInfo::input_tokens`]).
        input_tokens: u64,
    },
    Embeddings {
        req: &'a EmbeddingsRequest,
    },
}

/// Request headers carried to the upstream so one request can be followed
/// across both hops.
#[derive(Clone, Debug, Default)]
pub struct Propagate {
    /// `x-request-id`.
    pub request_id: Option<http::HeaderValue>,
    /// W3C `traceparent`, as the client sent it.
    pub traceparent: Option<http::HeaderValue>,
}

/// Header names as constants: a `&'static str` name is parsed again on
/// every insert.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

impl Propagate {
    fn apply(&self, headers: &mut http::HeaderMap) {
        if let Some(v) = &self.request_id {
            headers.insert(X_REQUEST_ID, v.clone());
        }
        if let Some(v) = &self.traceparent {
            headers.insert(TRACEPARENT, v.clone());
        }
    }
}

/// Size and time bounds of one attempt.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Largest non-stream response body.
    pub max_response: usize,
    /// Longest SSE line.
    pub max_line: usize,
}

/// A whole answer, ready to send.
pub struct Whole {
    /// The body for the client: the upstream's own bytes on pass-through,
    /// re-encoded OpenAI JSON after translation.
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// A stream past its commit point: the events so far and the rest to read.
pub struct Committed {
    /// The provider slot, held until the stream ends.
    pub slot: Slot,
    pub pending: Vec<StreamEvent>,
    pub decoder: Box<dyn StreamDecoder>,
    pub body: UpstreamBody,
    pub idle: Duration,
    pub deadline: Instant,
}

/// A successful attempt.
pub enum Answer {
    Whole(Whole),
    Stream(Committed),
}

/// How trying ended; the targets are the route's (or the budget's
/// replacement), borrowed rather than cloned.
pub struct Outcome<'t> {
    pub result: Result<Answer, Failure>,
    /// Targets tried.
    pub attempts: u32,
    /// The target that answered (or failed last).
    pub target: Option<&'t Target>,
    /// Failures of targets fallen back from, in order.
    pub fell_back: Vec<(&'t Target, Failure)>,
}

/// Prefix of the failure message of a response over the size cap.
pub const TOO_LARGE: &str = "upstream response larger than";

/// Targets in order, without those whose breaker is open (and not yet
/// due for a probe). When every breaker is open the least recently failed
/// target is still tried (`true`): the last option is never ejected.
fn admitted<'p, 't>(targets: &'p [Planned<'t>], now: Instant) -> (Vec<&'p Planned<'t>>, bool) {
    let blocked = |e: &Endpoint| {
        e.breaker.state() == sluice_crds::report::BreakerState::Open
            && e.breaker.retry_at().is_some_and(|at| now < at)
    };
    if targets.iter().all(|p| blocked(&p.endpoint)) {
        let least_recent = targets
            .iter()
            .min_by_key(|p| p.endpoint.breaker.last_failure())
            .into_iter()
            .collect();
        return (least_recent, true);
    }
    (
        targets.iter().filter(|p| !blocked(&p.endpoint)).collect(),
        false,
    )
}

/// Tries `targets` in order (at most `route.max_depth`) until one answers,
/// skipping endpoints whose breaker is open and recording every outcome
/// for the breakers and the report.
pub async fn run<'t>(
    egress: &Egress,
    health: &Health,
    bounds: Bounds,
    route: &Route,
    targets: &[Planned<'t>],
    call: &Call<'_>,
    propagate: &Propagate,
) -> Outcome<'t> {
    let mut fell_back = Vec::new();
    let mut attempts = 0;
    let mut targets_tried = 0usize;
    let mut throttled: Option<Duration> = None;
    route.retry_budget.deposit();
    let mut last: Option<(&'t Target, Failure)> = None;
    // After a context-length failure only a larger window can help.
    let mut larger_than: Option<u32> = None;
    let streamed = matches!(call, Call::Chat { stream: true, .. });
    // The clock is read once here, then as each try starts and ends: a
    // read costs tens of nanoseconds in a VM, and nothing between them
    // waits.
    let mut now = Instant::now();
    let (candidates, forced) = admitted(targets, now);
    for &Planned {
        target,
        ref endpoint,
    } in candidates
    {
        if targets_tried >= route.max_depth {
            break;
        }
        if let Some(min) = larger_than
            && target.context_window.is_none_or(|w| w <= min)
        {
            continue;
        }
        // Throttled after a 429, or at the provider's own per-minute limits:
        // route around it rather than collect a 429.
        if !forced {
            if let Some(wait) = endpoint.throttled_for(now) {
                throttled = Some(throttled.map_or(wait, |w: Duration| w.min(wait)));
                continue;
            }
            if let Some(limiter) = health.provider_limiter(target)
                && let Err(limited) = limiter.check(None, call.estimated_tokens(), now)
            {
                let wait = Duration::from_secs(limited.retry_after_secs);
                throttled = Some(throttled.map_or(wait, |w: Duration| w.min(wait)));
                continue;
            }
        }
        // A breaker due for a probe turns half-open here; a half-open one
        // admits only its probes.
        if !health.admits(target, endpoint, now) && !forced {
            continue;
        }
        if let Some(prev) = last.take() {
            fell_back.push(prev);
        }
        targets_tried += 1;
        let mut tries_here = 0u32;
        let result = loop {
            attempts += 1;
            tries_here += 1;
            let started = Instant::now();
            let result = {
                let _busy = endpoint.in_flight.enter(call.estimated_tokens());
                try_target(egress, bounds, route, target, call, propagate, started).await
            };
            now = Instant::now();
            match &result {
                Ok(_) => health.record(
                    &route.name,
                    target,
                    endpoint,
                    now,
                    Ok(now.saturating_duration_since(started)),
                    false,
                    streamed,
                ),
                Err(f) => health.record(
                    &route.name,
                    target,
                    endpoint,
                    now,
                    Err(f.class),
                    class_policy(f.class).counts_against_breaker,
                    streamed,
                ),
            }
            let Err(f) = &result else { break result };
            if f.class == FailureClass::RateLimited {
                endpoint.throttle(now, f.retry_after);
            }
            let retry = &route.spec.retry;
            let retryable = tries_here < retry.attempts
                && class_policy(f.class).retry_same_target
                && f.class
                    .trigger()
                    .is_some_and(|t| retry.triggers.contains(&t))
                && endpoint.breaker.state() == sluice_crds::report::BreakerState::Closed;
            if !retryable || !route.retry_budget.withdraw() {
                break result;
            }
            match retry_delay(
                &retry.backoff,
                tries_here,
                f.retry_after,
                crate::balance::jitter(),
            ) {
                Some(d) => tokio::time::sleep(d).await,
                // The provider asks for longer than the backoff allows:
                // fail over at once instead of sleeping.
                None => break result,
            }
        };
        if result.is_ok()
            && let Some((from, failure)) = fell_back.last()
        {
            health.fell_back(&route.name, from, target, failure.class);
        }
        match result {
            Ok(answer) => {
                return Outcome {
                    result: Ok(answer),
                    attempts,
                    target: Some(target),
                    fell_back,
                };
            }
            Err(failure) => {
                tracing::warn!(
                    route = %route.name,
                    provider = %target.provider.name,
                    model = %target.model,
                    class = %failure.class,
                    status = failure.status,
                    detail = %failure.message,
                    "attempt failed"
                );
                let next = falls_back(route, failure.class);
                if failure.class == FailureClass::ContextLength
                    && let Some(w) = target.context_window
                {
                    larger_than = Some(larger_than.map_or(w, |m| m.max(w)));
                }
                last = Some((target, failure));
                if !next {
                    break;
                }
            }
        }
    }
    match last {
        Some((target, failure)) => Outcome {
            result: Err(failure),
            attempts,
            target: Some(target),
            fell_back,
        },
        None if throttled.is_some() => {
            let mut f = Failure::new(
                FailureClass::RateLimited,
                format!("every target of route {} is at its rate limit", route.name),
            );
            f.retry_after = throttled.map(|w| w.max(Duration::from_secs(1)));
            Outcome {
                result: Err(f),
                attempts,
                target: None,
                fell_back,
            }
        }
        None => Outcome {
            result: Err(Failure::new(
                FailureClass::NotFound,
                format!("route {} has no target to try", route.name),
            )),
            attempts,
            target: None,
            fell_back,
        },
    }
}

/// One call to one target, started at `started`, up to the commit point.
async fn try_target(
    egress: &Egress,
    bounds: Bounds,
    route: &Route,
    target: &Target,
    call: &Call<'_>,
    propagate: &Propagate,
    started: Instant,
) -> Result<Answer, Failure> {
    let endpoint = &target.provider.endpoint;
    let adapter = provider::adapter(endpoint.kind);
    let t = target.timeouts(route);
    let deadline = started + t.total.get();
    let first_token_by = (started + t.first_token.get()).min(deadline);
    let idle = t.idle.get();
    let Some(slot) = target.provider.gate.enter(first_token_by).await else {
        return Err(Failure::new(
            FailureClass::Overloaded,
            format!(
                "provider {} is at its limits.maxConcurrent with its queue full",
                target.provider.name
            ),
        ));
    };
    let mut upstream = match call {
        Call::Chat {
            raw, req, stream, ..
        } => adapter.build_chat_raw(endpoint, raw, req, &target.model, *stream)?,
        Call::Embeddings { req } => adapter.build_embeddings(endpoint, req, &target.model)?,
    };
    // Unsigned extra headers are fine for SigV4 (it signs a named list).
    propagate.apply(&mut upstream.headers);
    let UpstreamResponse {
        status,
        headers,
        mut body,
    } = egress
        .send(endpoint, upstream, t.connect.get(), first_token_by)
        .await?;
    if !status.is_success() {
        let text = body
            .collect(64 << 10, idle, deadline)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        return Err(adapter.classify(status, &headers, &text));
    }
    match call {
        Call::Chat { stream: true, .. } if is_json(&headers) => {
            // A 2xx JSON answer to a stream request: an error object, or a
            // server that ignored `stream`. Either way not a stream.
            let bytes = read_whole(&mut body, bounds, idle, deadline).await?;
            let detail = match adapter.parse_chat(status, &headers, &bytes) {
                Ok(_) => "answered a stream request with a whole JSON body".to_owned(),
                Err(f) => f.message,
            };
            Err(Failure::new(FailureClass::Malformed, detail).with_status(status.as_u16()))
        }
        Call::Chat { stream: true, .. } => {
            // Translated streams need a chunk id; pass-through keeps the
            // provider's own.
            let id = if passes_through(endpoint.kind) {
                String::new()
            } else {
                format!("chatcmpl-{}", crate::request_id::generate())
            };
            let ctx = StreamContext {
                model: target.model.clone(),
                id,
                created: unix_now(),
                max_line: bounds.max_line,
            };
            let decoder = adapter.stream_decoder(&ctx);
            first_token(slot, decoder, body, first_token_by, idle, deadline).await
        }
        Call::Chat { stream: false, .. } => {
            let bytes = read_whole(&mut body, bounds, idle, deadline).await?;
            // The OpenAI family scans and passes the bytes through;
            // translating adapters parse and re-encode.
            let answer = adapter.read_chat(status, &headers, bytes)?;
            Ok(Answer::Whole(Whole {
                body: answer.body,
                usage: answer.usage,
            }))
        }
        Call::Embeddings { .. } => {
            let bytes = read_whole(&mut body, bounds, idle, deadline).await?;
            let parsed = adapter.parse_embeddings(status, &headers, &bytes)?;
            let usage = parsed.usage.map(|u| Usage::new(u.prompt_tokens, 0, 0));
            let body = if passes_through(endpoint.kind) {
                bytes
            } else {
                encode(&parsed)?
            };
            Ok(Answer::Whole(Whole { body, usage }))
        }
    }
}

/// Reads a stream until its first token (or its end), the commit point.
async fn first_token(
    slot: Slot,
    mut decoder: Box<dyn StreamDecoder>,
    mut body: UpstreamBody,
    first_token_by: Instant,
    idle: Duration,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let mut pending = Vec::new();
    loop {
        let wait = first_token_by.saturating_duration_since(Instant::now());
        let (events, ended) = match body
            .next(wait, deadline, FailureClass::TimeoutFirstToken)
            .await
        {
            Some(Ok(bytes)) => (decoder.feed_shared(bytes), false),
            Some(Err(f)) => return Err(f),
            None => (decoder.finish(), true),
        };
        let mut commit = false;
        for ev in events {
            let ev = ev?;
            commit |= ev.is_token() || ev == StreamEvent::Done;
            pending.push(ev);
        }
        if commit {
            return Ok(Answer::Stream(Committed {
                slot,
                pending,
                decoder,
                body,
                idle,
                deadline,
            }));
        }
        if ended {
            return Err(Failure::new(
                FailureClass::StreamInterrupted,
                "upstream stream ended before its first token",
            ));
        }
    }
}

async fn read_whole(
    body: &mut UpstreamBody,
    bounds: Bounds,
    idle: Duration,
    deadline: Instant,
) -> Result<Bytes, Failure> {
    body.collect(bounds.max_response, idle, deadline)
        .await?
        .ok_or_else(|| {
            Failure::new(
                FailureClass::Malformed,
                format!("{TOO_LARGE} {} bytes", bounds.max_response),
            )
        })
}

/// Whether a response says it is JSON.
fn is_json(headers: &http::HeaderMap) -> bool {
    const JSON: &[u8] = b"application/json";
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.as_bytes().trim_ascii_start())
        .is_some_and(|v| v.len() >= JSON.len() && v[..JSON.len()].eq_ignore_ascii_case(JSON))
}

/// Whether the provider already speaks the client's wire format, so its
/// bytes go back untouched.
pub fn passes_through(kind: sluice_crds::ProviderType) -> bool {
    use sluice_crds::ProviderType as P;
    match kind {
        P::Openai | P::OpenaiCompatible | P::AzureOpenai | P::Mock => true,
        P::Anthropic | P::Gemini | P::Bedrock => false,
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Bytes, Failure> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        Failure::new(
            FailureClass::Malformed,
            format!("cannot encode response: {e}"),
        )
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_and_cancellations_never_fall_back() {
        for class in FailureClass::ALL {
            let p = class_policy(class);
            if matches!(
                class,
                FailureClass::BadRequest | FailureClass::ClientCancelled
            ) {
                assert!(!p.may_fall_back && !p.retry_same_target, "{class}");
            }
            if class == FailureClass::RateLimited {
                assert!(!p.counts_against_breaker);
            }
        }
    }
}
