//! The request path, top to bottom: ingress → policy → route → attempt
//! (provider adapters and egress inside) → respond and account.
//!
//! Nothing is sent to the client before the commit point (see `attempt`).
//! After it, a stream is pumped chunk by chunk by its own task; a failure
//! then ends the stream with an OpenAI-shaped error frame and no `[DONE]`.
//! A client that goes away drops the response body, which the pump notices
//! at once and drops the upstream call: counted as `client-cancelled`,
//! never against the provider.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use sluice_crds::FailureClass;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::App;
use crate::attempt::{self, Answer, Call, Committed, Outcome};
use crate::body::{self, Body};
use crate::config::{Route, Target};
use crate::error::{ApiError, Fault};
use crate::ingress;
use crate::messages;
use crate::metrics::{self, TargetLabels};
use crate::openai::Usage;
use crate::policy;
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
    /// The `gen_ai.operation.name`.
    fn as_str(self) -> &'static str {
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
    let (chat, embeddings) = match op {
        Operation::Chat => (Some(ingress::parse_chat(&raw, &app.limits)?), None),
        Operation::Messages => (Some(ingress::parse_messages(&raw, &app.limits)?), None),
        Operation::Embeddings => (None, Some(ingress::parse_embeddings(&raw, &app.limits)?)),
    };
    // What the OpenAI-family adapters pass through: the client's own bytes,
    // or the translation of an Anthropic request.
    let raw = match (op, &chat) {
        (Operation::Messages, Some(req)) => serde_json::to_vec(req)
            .map(Bytes::from)
            .map_err(|e| ApiError::invalid_json(format!("cannot encode the request: {e}")))?,
        _ => raw,
    };
    let model = chat
        .as_ref()
        .map(|c| c.model.as_str())
        .or(embeddings.as_ref().map(|e| e.model.as_str()))
        .unwrap_or_default();

    // route (which route), then policy on it, then the order of targets
    let route = route::resolve(&config, model)?;
    tracker.route = Some(route.name.clone());
    let _admitted = policy::admit(&route, headers)?;
    let targets = route::plan(&route);
    if targets.is_empty() {
        return Err(ApiError::no_target(&route.name));
    }

    // attempt
    let call = match (&chat, &embeddings) {
        (Some(req), _) => Call::Chat {
            raw: &raw,
            req,
            stream: req.is_stream(),
        },
        (None, Some(req)) => Call::Embeddings { req },
        (None, None) => return Err(ApiError::invalid_json("empty request")),
    };
    let outcome = attempt::run(&app.egress, app.bounds, &route, &targets, &call).await;
    let framing = match op {
        Operation::Messages => Framing::Anthropic(Box::new(messages::MessagesStream::new(
            format!("msg_{}", request_id::generate()),
            outcome.target.as_ref().map_or("", |t| t.model.as_str()),
            chat.as_ref().map_or(0, estimate_input_tokens),
        ))),
        Operation::Chat | Operation::Embeddings => Framing::OpenAi {
            wants_usage: chat
                .as_ref()
                .and_then(|c| c.stream_options.as_ref())
                .and_then(|o| o.include_usage)
                == Some(true),
        },
    };

    // respond
    respond(app, &route, outcome, framing, tracker)
}

/// A rough prompt size for Anthropic's `message_start` (the real count
/// comes in `message_delta`): a token per four characters.
fn estimate_input_tokens(req: &crate::openai::ChatRequest) -> u64 {
    let chars: usize = req
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| c.text().len())
        .sum();
    (chars as u64).div_ceil(4)
}

/// How events become bytes for the client.
enum Framing {
    /// OpenAI `chat.completion.chunk` frames; the usage chunk only when the
    /// client asked for it.
    OpenAi { wants_usage: bool },
    /// Anthropic's SSE event sequence and message object.
    Anthropic(Box<messages::MessagesStream>),
}

impl Framing {
    /// The bytes for a chunk, if any.
    fn chunk(&mut self, chunk: &crate::openai::ChatChunk, raw: Option<Bytes>) -> Option<Bytes> {
        match self {
            Framing::OpenAi { wants_usage } => {
                if chunk.choices.is_empty() && chunk.usage.is_some() && !*wants_usage {
                    return None;
                }
                let data = match raw {
                    Some(raw) => raw,
                    None => serde_json::to_vec(chunk)
                        .map(Bytes::from)
                        .unwrap_or_default(),
                };
                Some(sse_frame(&data))
            }
            Framing::Anthropic(s) => non_empty(s.on_chunk(chunk)),
        }
    }

    fn usage(&mut self, usage: Usage) {
        match self {
            Framing::OpenAi { .. } => {}
            Framing::Anthropic(s) => s.on_usage(usage),
        }
    }

    fn done(&mut self) -> Bytes {
        match self {
            Framing::OpenAi { .. } => Bytes::from_static(b"data: [DONE]\n\n"),
            Framing::Anthropic(s) => Bytes::from(s.finish()),
        }
    }

    fn error(&mut self, failure: &Failure) -> Bytes {
        let e = ApiError::from_failure(failure);
        match self {
            Framing::OpenAi { .. } => sse_frame(&e.json()),
            Framing::Anthropic(s) => Bytes::from(s.error(e.status.as_u16(), &e.message)),
        }
    }

    /// A whole response body for the client.
    fn whole(&self, body: Bytes) -> Result<Bytes, ApiError> {
        match self {
            Framing::OpenAi { .. } => Ok(body),
            Framing::Anthropic(_) => {
                let resp: crate::openai::ChatResponse =
                    serde_json::from_slice(&body).map_err(|_| {
                        ApiError::from_failure(&Failure::new(
                            FailureClass::Malformed,
                            "the upstream answer is not a chat completion",
                        ))
                    })?;
                serde_json::to_vec(&messages::from_chat_response(&resp))
                    .map(Bytes::from)
                    .map_err(|e| ApiError::invalid_json(format!("cannot encode the answer: {e}")))
            }
        }
    }
}

fn non_empty(s: String) -> Option<Bytes> {
    (!s.is_empty()).then(|| Bytes::from(s))
}

fn respond(
    app: &Arc<App>,
    route: &Route,
    outcome: Outcome,
    framing: Framing,
    tracker: &mut Tracker,
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
    if let Some(t) = &outcome.target {
        tracker.target = Some(t.clone());
    }
    match outcome.result {
        Err(failure) => Err(final_error(route, &failure)),
        Ok(Answer::Whole(whole)) => {
            let body = framing.whole(whole.body)?;
            tracker.succeed(whole.usage);
            let mut resp = Response::new(body::full(body));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
        Ok(Answer::Stream(committed)) => {
            let (tx, body) = body::channel(16);
            let pump_tracker = tracker.hand_over();
            tokio::spawn(pump(committed, tx, framing, pump_tracker));
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
) {
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
                StreamEvent::Chunk { chunk, raw } => {
                    let Some(frame) = framing.chunk(&chunk, raw) else {
                        continue;
                    };
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
                    let _ = tx.send(framing.done()).await;
                    tracker.succeed(usage);
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
            Some(Ok(bytes)) => events.extend(c.decoder.feed(&bytes)),
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

fn sse_frame(data: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 8);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
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

/// Follows one request to its end for metrics and the access log. A
/// tracker dropped before it was finished means the client went away.
struct Tracker {
    app: Arc<App>,
    op: Operation,
    request_id: String,
    route: Option<String>,
    target: Option<Target>,
    attempts: u32,
    started: Instant,
    finished: bool,
}

impl Tracker {
    fn new(app: Arc<App>, op: Operation, request_id: String) -> Self {
        Self {
            app,
            op,
            request_id,
            route: None,
            target: None,
            attempts: 0,
            started: Instant::now(),
            finished: false,
        }
    }

    fn labels(&self) -> TargetLabels {
        match &self.target {
            Some(t) => TargetLabels {
                route: self
                    .route
                    .clone()
                    .unwrap_or_else(|| metrics::UNKNOWN.into()),
                provider: t.provider.name.clone(),
                model: t.model.clone(),
            },
            None => TargetLabels::unrouted(self.route.as_deref()),
        }
    }

    /// The pump takes over; this one must not count a cancellation.
    fn hand_over(&mut self) -> Tracker {
        self.finished = true;
        Tracker {
            app: self.app.clone(),
            op: self.op,
            request_id: self.request_id.clone(),
            route: self.route.clone(),
            target: self.target.clone(),
            attempts: self.attempts,
            started: self.started,
            finished: false,
        }
    }

    /// The first token reached the client: time since the request came in.
    fn first_token(&self) {
        self.app
            .metrics
            .first_token(&self.labels(), self.started.elapsed().as_secs_f64());
    }

    fn succeed(&mut self, usage: Option<Usage>) {
        self.finished = true;
        let labels = self.labels();
        let m = &self.app.metrics;
        m.operation(
            self.op.as_str(),
            &labels,
            self.started.elapsed().as_secs_f64(),
        );
        if let Some(u) = usage {
            m.tokens(&labels, u.prompt_tokens, u.completion_tokens);
        }
        m.request(&labels.route, metrics::Outcome::Success);
        tracing::info!(
            request_id = %self.request_id,
            operation = self.op.as_str(),
            route = %labels.route,
            provider = %labels.provider,
            model = %labels.model,
            attempts = self.attempts,
            duration_ms = self.started.elapsed().as_millis() as u64,
            input_tokens = usage.map(|u| u.prompt_tokens),
            output_tokens = usage.map(|u| u.completion_tokens),
            outcome = "success",
            "request"
        );
    }

    /// Records an error answer and builds it in the shape of `op`'s API.
    fn refuse(&mut self, e: ApiError, op: Operation) -> Response<Body> {
        self.finished = true;
        let labels = self.labels();
        self.app.metrics.error(&labels, e.class, e.fault);
        self.app
            .metrics
            .request(&labels.route, metrics::Outcome::Error);
        tracing::info!(
            request_id = %self.request_id,
            operation = self.op.as_str(),
            route = %labels.route,
            provider = %labels.provider,
            model = %labels.model,
            attempts = self.attempts,
            duration_ms = self.started.elapsed().as_millis() as u64,
            status = e.status.as_u16(),
            code = e.code,
            class = e.class.map(FailureClass::as_str),
            outcome = "error",
            "request"
        );
        match op {
            Operation::Messages => e.into_anthropic_response(),
            Operation::Chat | Operation::Embeddings => e.into_response(),
        }
    }

    fn fail_stream(&mut self, f: &Failure, usage: Option<Usage>) {
        self.finished = true;
        let labels = self.labels();
        let m = &self.app.metrics;
        m.error(&labels, Some(f.class), Fault::Provider);
        m.request(&labels.route, metrics::Outcome::Error);
        if let Some(u) = usage {
            m.tokens(&labels, u.prompt_tokens, u.completion_tokens);
        }
        tracing::warn!(
            request_id = %self.request_id,
            route = %labels.route,
            provider = %labels.provider,
            model = %labels.model,
            class = %f.class,
            detail = %f.message,
            outcome = "error",
            "stream failed after commit"
        );
    }

    fn cancel(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let labels = self.labels();
        let m = &self.app.metrics;
        m.error(&labels, Some(FailureClass::ClientCancelled), Fault::Caller);
        m.request(&labels.route, metrics::Outcome::ClientCancelled);
        tracing::info!(
            request_id = %self.request_id,
            route = %labels.route,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome = "client_cancelled",
            "request"
        );
    }

    /// Adds the response headers every answer carries.
    fn stamp(&self, mut resp: Response<Body>) -> Response<Body> {
        let h = resp.headers_mut();
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        put("x-request-id", &self.request_id);
        if let Some(route) = &self.route {
            put("x-sluice-route", route);
            put("x-sluice-attempts", &self.attempts.to_string());
        }
        if let Some(t) = &self.target {
            put("x-sluice-provider", &t.provider.name);
            put("x-sluice-model", &t.model);
        }
        resp
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.cancel();
    }
}
