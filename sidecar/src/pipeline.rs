//! The request path, top to bottom: ingress → policy → route → attempt
//! (provider adapters and egress inside) → respond and account.
//!
//! Nothing is sent to the client before the commit point (see `attempt`).
//! After it, a stream is pumped chunk by chunk (by the response body
//! itself, on the connection's task: `body::driven`); a failure
//! then ends the stream with an OpenAI-shaped error frame and no `[DONE]`.
//! A client that goes away drops the response body, the pump with it, and
//! so the upstream call: counted as `client-cancelled`,
//! never against the provider.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use sluice_crds::FailureClass;
use tokio::sync::mpsc;

use crate::accounting::Tracker;
use crate::app::App;
use crate::attempt::{self, Answer, Call, Committed, Outcome};
use crate::body::{self, Body};
use crate::cache::Cached;
use crate::config::{Config, Route, Target};
use crate::error::{ApiError, Fault};
use crate::framing::Framing;
use crate::ingress;
use crate::metrics::TargetLabels;
use crate::openai::{ChatRequest, EmbeddingsRequest, Usage};
use crate::policy::{self, Verdict};
use crate::provider::{Failure, StreamEvent};
use crate::request_id;
use crate::route;

/// Which API a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/messages`: Anthropic's API in, the same chat path inside.
    Messages,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Operation {
    /// The API a request came in on (answers are cached per API).
    pub fn as_api(self) -> &'static str {
        match self {
            Operation::Chat => "chat.completions",
            Operation::Messages => "messages",
            Operation::Embeddings => "embeddings",
        }
    }

    /// The `gen_ai.operation.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat | Operation::Messages => "chat",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// `POST /v1/chat/completions`, `POST /v1/messages` and `POST /v1/embeddings`.
pub async fn handle<B>(app: Arc<App>, op: Operation, headers: HeaderMap, body: B) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut tracker = Tracker::new(app.clone(), op, request_id::from_headers(&headers));
    let resp = match serve(&app, op, &headers, body, &mut tracker).await {
        Ok(resp) => resp,
        Err(e) => tracker.refuse(e, op),
    };
    tracker.stamp(resp)
}

async fn serve<B>(
    app: &Arc<App>,
    op: Operation,
    headers: &HeaderMap,
    body: B,
    tracker: &mut Tracker,
) -> Result<Response<Body>, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let config = app.config.current().ok_or_else(ApiError::not_ready)?;

    // ingress
    let raw = ingress::read_body(headers, body, app.limits.max_body).await?;
    let mut parsed = match op {
        Operation::Chat => Parsed::Chat(Box::new(ingress::parse_chat(&raw, &app.limits)?)),
        Operation::Messages => Parsed::Chat(Box::new(ingress::parse_messages(&raw, &app.limits)?)),
        Operation::Embeddings => Parsed::Embeddings(ingress::parse_embeddings(&raw, &app.limits)?),
    };

    // which route, what routing will look at, then policy on it
    let route = route::resolve(&config, parsed.model())?;
    tracker.route = Some(route.tag.clone());
    let info = match &parsed {
        Parsed::Chat(req) => route::RequestInfo::of_chat(req, headers, &route),
        Parsed::Embeddings(_) => route::RequestInfo {
            embeddings: true,
            ..Default::default()
        },
    };
    let verdict = policy::admit(app, &config, &route, op, headers, &mut parsed, &info).await?;
    let mut admitted = match verdict {
        Verdict::Call(admitted) => admitted,
        Verdict::Answered(value, admitted) => {
            tracker.policy_headers = policy_headers(&admitted);
            tracker.succeed(None);
            return Ok(replay(&value));
        }
    };
    tracker.policy_headers = policy_headers(&admitted);
    tracker.settlement = admitted.settlement();
    // What the OpenAI-family adapters pass through: the client's own bytes,
    // unless PII redaction rewrote the request or it came in as Anthropic's.
    let raw = match (&parsed, op == Operation::Messages || admitted.redacted) {
        (Parsed::Chat(req), true) => serde_json::to_vec(req)
            .map(Bytes::from)
            .map_err(|e| ApiError::invalid_json(format!("cannot encode the request: {e}")))?,
        _ => raw,
    };

    // the order of targets: the budget's replacement, or the route's plan
    let replacement = admitted
        .target_override
        .as_ref()
        .and_then(|to| override_target(&config, &route, to));
    let targets = match &replacement {
        Some(t) => route::Planned::only(t, &app.health),
        None => route::plan(&route, &info, &app.health),
    };
    if targets.is_empty() {
        return Err(ApiError::no_target(&route.name));
    }

    // attempt
    let call = match &parsed {
        Parsed::Chat(req) => Call::Chat {
            raw: &raw,
            req,
            stream: req.is_stream(),
            input_tokens: info.input_tokens,
        },
        Parsed::Embeddings(req) => Call::Embeddings { req },
    };
    let propagate = attempt::Propagate {
        request_id: HeaderValue::from_str(tracker.request_id()).ok(),
        traceparent: headers.get(attempt::TRACEPARENT).cloned(),
    };
    let outcome = attempt::run(
        &app.egress,
        &app.health,
        app.bounds,
        &route,
        &targets,
        &call,
        &propagate,
    )
    .await;

    // respond
    let model = outcome.target.as_ref().map_or("", |t| t.model.as_str());
    let framing = match &parsed {
        Parsed::Chat(req) => Framing::for_chat(op == Operation::Messages, req, model),
        Parsed::Embeddings(_) => Framing::OpenAi { wants_usage: false },
    };
    let stream = matches!(&parsed, Parsed::Chat(req) if req.is_stream());
    let catch_all = matches!(&parsed, Parsed::Chat(_))
        .then(|| route.catch_all.as_ref().and_then(|c| c.response.clone()))
        .flatten();
    match (outcome.result.is_err(), catch_all) {
        (true, Some(reply)) => {
            catch_all_reply(app, &route, outcome, &reply, stream, framing, tracker)
        }
        _ => respond(app, &route, outcome, framing, tracker, admitted),
    }
}

/// The headers that say what the policy stage decided.
fn policy_headers(a: &policy::Admitted) -> Vec<(&'static str, String)> {
    let mut h = a.rate_headers.clone();
    if let Some(status) = a.cache_status {
        h.push(("x-sluice-cache", status.as_str().to_owned()));
    }
    if !a.warnings.is_empty() {
        h.push(("x-sluice-budget-warning", a.warnings.join(", ")));
    }
    h
}

/// The target a budget's degrade step or downgrade names, if the
/// configuration has it (else the route's own plan serves, with a warning).
fn override_target(
    config: &Config,
    route: &Route,
    to: &sluice_crds::common::ModelRef,
) -> Option<Target> {
    let found = config
        .provider(&route.namespace, &to.provider_ref.name)
        .map(|p| Target::of(p, &to.model, &route.name));
    if found.is_none() {
        tracing::warn!(route = %route.name, provider = %to.provider_ref.name, "a budget names a provider this sidecar does not have; routing as usual");
    }
    found
}

/// An answer the policy stage had already: replayed as the client first
/// received it.
fn replay(value: &Cached) -> Response<Body> {
    let (body, content_type) = match value {
        Cached::Response(b) => (b.clone(), "application/json"),
        Cached::Stream(frames) => {
            let mut all = Vec::with_capacity(frames.iter().map(Bytes::len).sum());
            for f in frames {
                all.extend_from_slice(f);
            }
            (Bytes::from(all), "text/event-stream")
        }
    };
    let mut resp = Response::new(body::full(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// The typed request, whichever API it came in on.
pub enum Parsed {
    /// `/v1/chat/completions`, or `/v1/messages` translated.
    Chat(Box<ChatRequest>),
    Embeddings(EmbeddingsRequest),
}

impl Parsed {
    /// The model the client asked for: a route's virtual model or alias.
    fn model(&self) -> &str {
        match self {
            Parsed::Chat(req) => &req.model,
            Parsed::Embeddings(req) => &req.model,
        }
    }
}

/// Records what trying cost (fallbacks, failures), then answers: the whole
/// body, a stream handed to its pump, or the last failure as an error.
fn respond(
    app: &Arc<App>,
    route: &Route,
    outcome: Outcome,
    framing: Framing,
    tracker: &mut Tracker,
    mut admitted: policy::Admitted,
) -> Result<Response<Body>, ApiError> {
    tracker.attempts = outcome.attempts;
    for (i, (from, failure)) in outcome.fell_back.iter().enumerate() {
        app.metrics
            .error(&labels(route, from), Some(failure.class), Fault::Provider);
        let to = outcome
            .fell_back
            .get(i + 1)
            .map(|(t, _)| t)
            .or(outcome.target.as_ref());
        if let Some(to) = to {
            app.metrics.fallback(
                &route.name,
                &from.provider.name,
                &to.provider.name,
                failure.class,
            );
        }
    }
    if let Some(t) = outcome.target {
        tracker.target = Some(t.clone());
    }
    match outcome.result {
        Err(failure) => Err(final_error(route, &failure)),
        Ok(Answer::Whole(whole)) => {
            if whole.usage.is_none() && tracker.settlement.is_some() {
                // No usage from the provider: meter the answer's text.
                tracker.streamed_chars = answer_chars(&whole.body);
            }
            let body = framing.whole(whole.body)?;
            if admitted.records() {
                admitted.complete(Cached::Response(body.clone()));
            }
            tracker.succeed(whole.usage);
            let mut resp = Response::new(body::full(body));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        Ok(Answer::Stream(committed)) => {
            let pump_tracker = tracker.hand_over();
            let body = body::driven(16, |tx| {
                pump(committed, tx, framing, pump_tracker, admitted)
            });
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            Ok(resp)
        }
    }
}

/// Every target failed and the route has a fixed `catchAll.response`: it
/// is the answer, as a completion or a stream, from no provider.
fn catch_all_reply(
    app: &Arc<App>,
    route: &Route,
    outcome: Outcome,
    reply: &str,
    stream: bool,
    mut framing: Framing,
    tracker: &mut Tracker,
) -> Result<Response<Body>, ApiError> {
    tracker.attempts = outcome.attempts;
    // No provider answered: nothing is charged (the reservations drop).
    tracker.settlement = None;
    let failed = outcome
        .fell_back
        .iter()
        .map(|(t, f)| (t, f))
        .chain(outcome.target.as_ref().zip(outcome.result.as_ref().err()));
    for (target, failure) in failed {
        app.metrics
            .error(&labels(route, target), Some(failure.class), Fault::Provider);
    }
    let id = format!("chatcmpl-{}", request_id::generate());
    let created = attempt::unix_now();
    let (body, content_type) = if stream {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            serde_json::from_value::<crate::openai::ChatChunk>(serde_json::json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": route.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }))
        };
        let first = chunk(
            serde_json::json!({"role": "assistant", "content": reply}),
            serde_json::Value::Null,
        );
        let last = chunk(serde_json::json!({}), serde_json::json!("stop"));
        let mut out = Vec::new();
        for c in [first, last].into_iter().flatten() {
            if let Some(frame) = framing.chunk(&c, None) {
                out.extend_from_slice(&frame);
            }
        }
        out.extend_from_slice(&framing.done());
        (Bytes::from(out), "text/event-stream")
    } else {
        let whole = serde_json::json!({
            "id": id, "object": "chat.completion", "created": created, "model": route.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        });
        (
            framing.whole(Bytes::from(whole.to_string()))?,
            "application/json",
        )
    };
    tracker.succeed(None);
    let mut resp = Response::new(body::full(body));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert("x-sluice-catch-all", HeaderValue::from_static("true"));
    Ok(resp)
}

/// The client's answer when every target failed: the route's `catchAll`
/// status and message if it has one, else the last failure's error.
fn final_error(route: &Route, failure: &Failure) -> ApiError {
    let mut e = if failure.class == FailureClass::Malformed
        && failure.message.starts_with(attempt::TOO_LARGE)
    {
        ApiError::response_too_large()
    } else {
        ApiError::from_failure(failure)
    };
    if let Some(catch_all) = &route.catch_all
        && let Some(status) = catch_all.status.and_then(|s| StatusCode::from_u16(s).ok())
    {
        e.status = status;
        if let Some(m) = &catch_all.message {
            e.message = m.clone();
        }
    }
    e
}

/// Streams a committed response to the client until its end.
async fn pump(
    mut c: Committed,
    tx: mpsc::Sender<Bytes>,
    mut framing: Framing,
    mut tracker: Tracker,
    mut admitted: policy::Admitted,
) {
    let mut recorder = admitted.recorder();
    let mut usage: Option<Usage> = None;
    let mut first = true;
    let mut events: VecDeque<Result<StreamEvent, Failure>> = c.pending.drain(..).map(Ok).collect();
    loop {
        while let Some(ev) = events.pop_front() {
            let ev = match ev {
                Ok(ev) => ev,
                Err(f) => {
                    let _ = tx.send(framing.error(&f)).await;
                    tracker.fail_stream(&f, usage);
                    return;
                }
            };
            let token = ev.is_token();
            match ev {
                StreamEvent::Chunk { .. } | StreamEvent::Pass(_) => {
                    tracker.streamed_chars += output_chars(&ev);
                    let Some(frame) = framing.event(ev) else {
                        continue;
                    };
                    if let Some(r) = recorder.as_mut() {
                        r.push(&frame);
                    }
                    if tx.send(frame).await.is_err() {
                        tracker.cancel();
                        return;
                    }
                    if first && token {
                        first = false;
                        tracker.first_token();
                    }
                }
                StreamEvent::Usage(u) => {
                    usage = Some(u);
                    framing.usage(u);
                }
                StreamEvent::Done => {
                    let done = framing.done();
                    if let Some(mut r) = recorder.take() {
                        r.push(&done);
                        if let Some(entry) = r.finish() {
                            admitted.complete(entry);
                        }
                    }
                    let _ = tx.send(done).await;
                    tracker.succeed(usage);
                    c.body.release();
                    return;
                }
            }
        }
        let next = tokio::select! {
            _ = tx.closed() => {
                tracker.cancel();
                return;
            }
            next = c.body.next(c.idle, c.deadline, FailureClass::TimeoutIdle) => next,
        };
        match next {
            Some(Ok(bytes)) => events.extend(c.decoder.feed_shared(bytes)),
            Some(Err(f)) => events.push_back(Err(f)),
            None => {
                events.extend(c.decoder.finish());
                events.push_back(Err(Failure::new(
                    FailureClass::StreamInterrupted,
                    "upstream stream ended without its final event",
                )));
            }
        }
    }
}

/// Characters of text in a whole OpenAI-shaped answer (0 if unreadable).
fn answer_chars(body: &[u8]) -> u64 {
    serde_json::from_slice::<crate::openai::ChatResponse>(body).map_or(0, |r| {
        r.choices
            .iter()
            .filter_map(|c| c.message.content.as_ref())
            .map(|c| c.text().len() as u64)
            .sum()
    })
}

/// Characters of output in a stream event, for the usage estimate of a
/// stream whose provider sends no usage: the text of a parsed chunk; a
/// passed-through chunk with output counts as one token's worth (four).
fn output_chars(ev: &StreamEvent) -> u64 {
    match ev {
        StreamEvent::Chunk { chunk, .. } => chunk
            .choices
            .iter()
            .map(|c| c.delta.content.as_deref().map_or(0, str::len) as u64)
            .sum(),
        StreamEvent::Pass(p) => 4 * u64::from(p.token),
        StreamEvent::Usage(_) | StreamEvent::Done => 0,
    }
}

fn labels(route: &Route, target: &Target) -> TargetLabels {
    TargetLabels {
        route: route.name.clone(),
        provider: target.provider.name.clone(),
        model: target.model.clone(),
    }
}

/// `GET /v1/models`: the routes' virtual models and aliases.
pub fn models(app: &App) -> Response<Body> {
    let Some(config) = app.config.current() else {
        return ApiError::not_ready().into_response();
    };
    let data: Vec<serde_json::Value> = config
        .model_names()
        .into_iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    let mut resp = Response::new(body::full(body.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
