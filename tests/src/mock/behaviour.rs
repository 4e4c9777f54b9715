//! What a mock does with the next request: the one fault model shared by every
//! provider kind, and the script that hands it out request by request.
//!
//! A [`Behaviour`] is provider-neutral. Transport faults (hang, close, cut,
//! stall, delays) are applied by the server core the same way for every kind;
//! provider faults ([`Fault::Error`], [`Fault::ErrorIn200`], [`Fault::Refusal`],
//! [`Fault::MidStreamError`], …) are rendered by each provider module in that
//! provider's own wire format.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A provider failure, named by what it means rather than by any one
/// provider's status code. Each provider module renders it with its real
/// status, headers and error body (see the module docs for the mapping); a
/// provider that has no such failure renders the nearest thing it does have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ErrorKind {
    /// Malformed or invalid request (400).
    BadRequest,
    /// Missing, wrong or revoked credentials (401; Gemini 400 `API_KEY_INVALID`;
    /// Bedrock 403 `UnrecognizedClientException`).
    Auth,
    /// Authenticated but not allowed (403).
    PermissionDenied,
    /// Unknown model or deployment (404).
    NotFound,
    /// Prompt longer than the model's context window (400).
    ContextLength,
    /// Input blocked by the provider's content filter (Azure 400
    /// `content_filter`; Gemini and Bedrock block inside a 200).
    ContentFilter,
    /// Request body too large (Anthropic 413).
    RequestTooLarge,
    /// Transient rate limit (429) with the provider's retry hints.
    RateLimited(RateLimit),
    /// Out of quota or credit (OpenAI 429 `insufficient_quota`, Bedrock
    /// `ServiceQuotaExceededException`, Anthropic 402 `billing_error`, Gemini 429 per-day quota).
    QuotaExhausted,
    /// Internal error (500).
    ServerError,
    /// Overloaded or unavailable (OpenAI/Gemini 503, Anthropic 529, Bedrock 503
    /// `ServiceUnavailableException`).
    Overloaded,
    /// Model not ready yet (Bedrock 429 `ModelNotReadyException`; others render
    /// their overloaded error).
    ModelNotReady,
    /// The provider timed out processing the request (Bedrock 408
    /// `ModelTimeoutException`, Gemini 504 `DEADLINE_EXCEEDED`, 504 elsewhere).
    Timeout,
}

/// Retry hints carried by a rate-limit answer. Each provider renders them in
/// its own headers (`retry-after`, `retry-after-ms`, `x-ratelimit-reset-*`,
/// `anthropic-ratelimit-*-reset`) or body (Gemini `RetryInfo.retryDelay`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// How long until a retry may succeed; `None` sends no hint at all.
    #[serde(default, with = "opt_millis")]
    pub retry_after: Option<Duration>,
    /// When set, sent verbatim as the `retry-after` header instead of the
    /// value derived from `retry_after` (e.g. `"soon"` or `"-1"`), so tests can
    /// check that garbage hints are ignored.
    #[serde(default)]
    pub retry_after_raw: Option<String>,
}

impl RateLimit {
    /// A rate limit that says "retry after `d`".
    pub fn after(d: Duration) -> Self {
        Self {
            retry_after: Some(d),
            retry_after_raw: None,
        }
    }
}

/// What goes wrong (or not) with one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Answer with the provider's error for `kind` (status, headers, body).
    Error(ErrorKind),
    /// Answer 200 whose body is the provider's error object for `kind`.
    ErrorIn200(ErrorKind),
    /// Answer with an HTML page (a proxy's error page) under `status`.
    Html {
        /// Status code to send with the HTML (200 for "HTML with 200").
        status: u16,
    },
    /// Answer 200 with a body that is not valid JSON (truncated).
    InvalidJson,
    /// Answer 200 whose output was refused or filtered (OpenAI/Azure
    /// `finish_reason: content_filter`, Anthropic `stop_reason: refusal`,
    /// Gemini `finishReason: SAFETY`, Bedrock `stopReason: content_filtered`).
    Refusal,
    /// Stream the first `after` frames of the normal stream (every frame
    /// counts, `message_start` and `ping` included), then the provider's
    /// in-stream error event for `kind`, then end the stream. Non-stream calls
    /// get `kind` as a plain error. (Gemini's JSON-array stream needs
    /// `after >= 1` to stay a well-formed array.)
    MidStreamError {
        /// Content frames sent before the error event.
        after: usize,
        /// What the error event says.
        kind: ErrorKind,
    },
    /// Never send response headers (until the client gives up or the mock
    /// shuts down).
    HangBeforeHeaders,
    /// Close the connection without sending any response.
    CloseBeforeHeaders,
    /// Send headers and the first `after` frames, then nothing more, keeping
    /// the connection open. `after: 0` is "hang after headers before the first
    /// token". A non-stream body counts as two frames (its two halves).
    StallAfter {
        /// Frames sent before stalling.
        after: usize,
    },
    /// Send headers and the first `after` frames, then abort the connection
    /// (no terminating frame, no `[DONE]`). A non-stream body counts as two
    /// frames (its two halves) and keeps its full `content-length`.
    CutAfter {
        /// Frames sent before the cut.
        after: usize,
    },
    /// Answer exactly this, for what the model above does not cover.
    Raw {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: String,
    },
}

/// A fault plus timing: what the mock does with one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behaviour {
    /// What goes wrong, if anything.
    #[serde(default)]
    pub fault: Fault,
    /// Delay before the response headers.
    #[serde(default, with = "millis")]
    pub latency: Duration,
    /// Delay between headers and the first body frame (time to first token).
    #[serde(default, with = "millis")]
    pub first_chunk_delay: Duration,
    /// Delay before every body frame after the first.
    #[serde(default, with = "millis")]
    pub chunk_delay: Duration,
    /// Headers set on the response after the provider rendered it
    /// (replacing any of the same name), e.g. chosen rate-limit values.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

impl Behaviour {
    /// Answer normally, at once.
    pub fn ok() -> Self {
        Self::default()
    }

    /// Answer with the provider's error for `kind`.
    pub fn error(kind: ErrorKind) -> Self {
        Self::fault(Fault::Error(kind))
    }

    /// Apply `fault` with no added timing.
    pub fn fault(fault: Fault) -> Self {
        Self {
            fault,
            ..Self::default()
        }
    }

    /// Wait `d` before sending headers.
    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Wait `d` between headers and the first body frame.
    pub fn with_first_chunk_delay(mut self, d: Duration) -> Self {
        self.first_chunk_delay = d;
        self
    }

    /// Wait `d` before each body frame after the first.
    pub fn with_chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Set header `name: value` on the response, over what the provider sent.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl From<Fault> for Behaviour {
    fn from(fault: Fault) -> Self {
        Self::fault(fault)
    }
}

/// Queued steps: `(remaining, behaviour)`, consumed front first.
type Steps = VecDeque<(usize, Behaviour)>;

fn pop(steps: &mut Steps) -> Option<Behaviour> {
    let (remaining, behaviour) = steps.front_mut()?;
    let out = behaviour.clone();
    *remaining -= 1;
    if *remaining == 0 {
        steps.pop_front();
    }
    Some(out)
}

/// What one model's calls get before the shared script.
#[derive(Clone, Debug, Default)]
struct ModelScript {
    steps: Steps,
    default: Option<Behaviour>,
}

/// The run-time script. A call to model `m` takes, in order: a step queued
/// for `m`, a step from the shared queue, `m`'s default, the shared default.
/// Per-model entries let one mock play a provider whose models fail apart
/// (breakers are per provider and model).
#[derive(Clone, Debug, Default)]
pub(crate) struct Script {
    steps: Steps,
    default: Behaviour,
    by_model: HashMap<String, ModelScript>,
}

impl Script {
    pub(crate) fn new(default: Behaviour) -> Self {
        Self {
            default,
            ..Self::default()
        }
    }

    /// Queue `behaviour` for the next `times` calls (to `model` only, when
    /// given), after what is already queued.
    pub(crate) fn push(&mut self, model: Option<&str>, times: usize, behaviour: Behaviour) {
        if times == 0 {
            return;
        }
        match model {
            Some(m) => self
                .by_model
                .entry(m.to_owned())
                .or_default()
                .steps
                .push_back((times, behaviour)),
            None => self.steps.push_back((times, behaviour)),
        }
    }

    /// The default for calls to `model`, or for every call.
    pub(crate) fn set_default(&mut self, model: Option<&str>, behaviour: Behaviour) {
        match model {
            Some(m) => self.by_model.entry(m.to_owned()).or_default().default = Some(behaviour),
            None => self.default = behaviour,
        }
    }

    /// Drop every queued step; defaults stay.
    pub(crate) fn clear(&mut self) {
        self.steps.clear();
        self.by_model.values_mut().for_each(|m| m.steps.clear());
    }

    /// Forget everything: no steps, no per-model defaults, `default`.
    pub(crate) fn reset(&mut self, default: Behaviour) {
        *self = Self::new(default);
    }

    pub(crate) fn pending(&self) -> usize {
        let count = |s: &Steps| s.iter().map(|(n, _)| n).sum::<usize>();
        count(&self.steps)
            + self
                .by_model
                .values()
                .map(|m| count(&m.steps))
                .sum::<usize>()
    }

    /// The behaviour for the next call to `model`, consuming one step.
    pub(crate) fn next(&mut self, model: &str) -> Behaviour {
        if let Some(b) = self.by_model.get_mut(model).and_then(|m| pop(&mut m.steps)) {
            return b;
        }
        if let Some(b) = pop(&mut self.steps) {
            return b;
        }
        self.by_model
            .get(model)
            .and_then(|m| m.default.clone())
            .unwrap_or_else(|| self.default.clone())
    }
}

/// Durations as integer milliseconds in JSON (the control API and the binary).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_hands_out_steps_then_default() {
        let mut s = Script::new(Behaviour::ok());
        s.push(None, 2, Behaviour::error(ErrorKind::ServerError));
        s.push(None, 1, Behaviour::fault(Fault::CloseBeforeHeaders));
        assert_eq!(s.pending(), 3);
        assert_eq!(s.next("m").fault, Fault::Error(ErrorKind::ServerError));
        assert_eq!(s.next("m").fault, Fault::Error(ErrorKind::ServerError));
        assert_eq!(s.next("m").fault, Fault::CloseBeforeHeaders);
        assert_eq!(s.next("m").fault, Fault::None);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn model_steps_come_first_then_shared_then_model_default() {
        let mut s = Script::new(Behaviour::ok());
        s.set_default(Some("a"), Behaviour::error(ErrorKind::Overloaded));
        s.push(None, 1, Behaviour::error(ErrorKind::ServerError));
        s.push(Some("a"), 1, Behaviour::fault(Fault::Refusal));
        assert_eq!(s.next("a").fault, Fault::Refusal);
        assert_eq!(s.next("a").fault, Fault::Error(ErrorKind::ServerError));
        assert_eq!(s.next("a").fault, Fault::Error(ErrorKind::Overloaded));
        assert_eq!(s.next("b").fault, Fault::None);
        s.reset(Behaviour::ok());
        assert_eq!(s.next("a").fault, Fault::None);
    }

    #[test]
    fn behaviour_round_trips_through_json() {
        let b = Behaviour::error(ErrorKind::RateLimited(RateLimit::after(
            Duration::from_millis(1500),
        )))
        .with_latency(Duration::from_millis(20));
        let json = serde_json::to_string(&b).expect("serialize");
        let back: Behaviour = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, b);
        let parsed: Behaviour =
            serde_json::from_str(r#"{"fault":{"type":"cut_after","after":3},"chunk_delay":5}"#)
                .expect("hand-written json");
        assert_eq!(parsed.fault, Fault::CutAfter { after: 3 });
        assert_eq!(parsed.chunk_delay, Duration::from_millis(5));
    }
}
