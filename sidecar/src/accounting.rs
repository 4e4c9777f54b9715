//! Accounting: follows each request to its end and records what happened —
//! metrics, the access log (ids, routes, targets, classes and numbers, never
//! prompts, completions or keys), the response headers that say it — and
//! settles what the policy stage reserved: budget reservations are charged
//! the metered spend through the accounting task (never on the response's
//! path) and rate-limit charges corrected with the actual tokens.
//!
//! What is charged when: a success, its usage (the provider's, else an
//! estimate marked as such); a stream cut or cancelled after its first
//! token, the usage so far (estimated when the provider sent none); a
//! failure or cancellation before any output, nothing — the reservation is
//! released.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Response};
use sluice_crds::FailureClass;
use tokio::time::Instant;

use crate::access_log;
use crate::app::App;
use crate::body::Body;
use crate::config::{RouteTag, Target};
use crate::error::{ApiError, Fault};
use crate::metrics::{self, TargetLabels};
use crate::openai::Usage;
use crate::pipeline::Operation;
use crate::provider::Failure;
use sluice_crds::Money;

/// What `usage` cost at the target model's pricing, if it has one (see
/// [`crate::metering::cost`]).
pub fn cost(target: &Target, usage: &Usage) -> Option<Money> {
    Some(crate::metering::cost(target.pricing.as_ref()?, usage))
}

/// What a request reserved in the policy stage, settled when it ends.
#[derive(Debug, Default)]
pub struct Settlement {
    pub reservations: Vec<crate::budget::Reservation>,
    pub rate: crate::budget::RateCharge,
    /// Estimated prompt tokens, used when the provider reports no usage.
    pub input_estimate: u64,
}

/// Follows one request to its end for metrics and the access log. A
/// tracker dropped before it was finished means the client went away.
pub struct Tracker {
    /// Reservations to settle; `None` when nothing was reserved.
    pub settlement: Option<Settlement>,
    /// Text characters streamed to the client so far (an output estimate
    /// for streams without a usage chunk).
    pub streamed_chars: u64,
    /// Response headers the policy stage decided (`x-sluice-cache`,
    /// `x-sluice-budget-warning`, `x-ratelimit-*`).
    pub policy_headers: Vec<(&'static str, String)>,
    /// Whether the answer was committed (a stream handed to its pump): a
    /// cancellation then still pays for what was produced.
    committed: bool,
    app: Arc<App>,
    op: Operation,
    request_id: String,
    /// The route, once known.
    pub route: Option<RouteTag>,
    /// The target that answered or failed last.
    pub target: Option<Target>,
    /// Targets tried.
    pub attempts: u32,
    started: Instant,
    finished: bool,
}

impl Tracker {
    /// Starts following a request.
    pub fn new(app: Arc<App>, op: Operation, request_id: String) -> Self {
        Self {
            app,
            op,
            request_id,
            route: None,
            target: None,
            attempts: 0,
            started: Instant::now(),
            finished: false,
            settlement: None,
            streamed_chars: 0,
            policy_headers: Vec::new(),
            committed: false,
        }
    }

    /// Where the request went, as metric labels: made with the
    /// configuration, so a request only takes a reference.
    fn labels(&self) -> Arc<TargetLabels> {
        match (&self.target, &self.route) {
            (Some(t), Some(r)) if t.labels.route == r.labels.route => t.labels.clone(),
            (Some(t), route) => Arc::new(TargetLabels {
                route: route
                    .as_ref()
                    .map_or_else(|| metrics::UNKNOWN.to_owned(), |r| r.labels.route.clone()),
                ..(*t.labels).clone()
            }),
            (None, Some(r)) => r.labels.clone(),
            (None, None) => Arc::new(TargetLabels::unrouted(None)),
        }
    }

    /// The request's id (the client's `x-request-id` or a fresh one).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The stream pump takes over; this one must not count a cancellation.
    pub fn hand_over(&mut self) -> Tracker {
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
            settlement: self.settlement.take(),
            streamed_chars: 0,
            policy_headers: Vec::new(),
            committed: true,
        }
    }

    /// Charges the reservations with the call's usage — the provider's, or
    /// the estimate — off the hot path; releases them when `charge` is false.
    fn settle(&mut self, usage: Option<Usage>, charge: bool) {
        let Some(s) = self.settlement.take() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let target = match (&self.target, charge) {
            (Some(t), true) => t,
            _ => {
                s.rate.correct(0, now);
                return; // the reservations drop: released
            }
        };
        let estimate = Usage::new(s.input_estimate, self.streamed_chars.div_ceil(4), 0);
        let metered = crate::metering::Metered::new(
            target.pricing.as_ref().unwrap_or(&crate::metering::FREE),
            usage,
            estimate,
        );
        s.rate.correct(
            metered.usage.prompt_tokens + metered.usage.completion_tokens,
            now,
        );
        self.app.accountant.submit(crate::metering::UsageRecord {
            metered,
            reservations: s.reservations,
            side_call: false,
        });
    }

    /// The first token reached the client: time since the request came in.
    pub fn first_token(&self) {
        self.app
            .metrics
            .first_token(&self.labels(), self.started.elapsed().as_secs_f64());
    }

    /// The request succeeded with `usage`.
    pub fn succeed(&mut self, usage: Option<Usage>) {
        self.finished = true;
        self.settle(usage, true);
        let labels = self.labels();
        let cost = usage
            .zip(self.target.as_ref())
            .and_then(|(u, t)| cost(t, &u));
        let took = self.started.elapsed();
        self.app.metrics.succeeded(
            self.op.as_str(),
            &labels,
            took.as_secs_f64(),
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            cost.map(sluice_crds::Money::as_f64),
        );
        let ms = took.as_millis() as u64;
        self.app.access_log.record(access_log::Entry {
            input_tokens: usage.map(|u| u.prompt_tokens),
            output_tokens: usage.map(|u| u.completion_tokens),
            cost_usd: cost,
            ..access_log::Entry::request(
                &self.request_id,
                self.op.as_str(),
                labels,
                self.attempts,
                ms,
                "success",
            )
        });
    }

    /// Records an error answer and builds it in the shape of `op`'s API.
    pub fn refuse(&mut self, e: ApiError, op: Operation) -> Response<Body> {
        self.finished = true;
        self.settle(None, false);
        let labels = self.labels();
        self.app.metrics.error(&labels, e.class, e.fault);
        self.app
            .metrics
            .request(&labels.route, metrics::Outcome::Error);
        let ms = self.started.elapsed().as_millis() as u64;
        self.app.access_log.record(access_log::Entry {
            status: Some(e.status.as_u16()),
            code: Some(e.code),
            class: e.class.map(FailureClass::as_str),
            ..access_log::Entry::request(
                &self.request_id,
                self.op.as_str(),
                labels,
                self.attempts,
                ms,
                "error",
            )
        });
        match op {
            Operation::Messages => e.into_anthropic_response(),
            Operation::Chat | Operation::Embeddings => e.into_response(),
        }
    }

    /// A committed stream failed after its first token.
    pub fn fail_stream(&mut self, f: &Failure, usage: Option<Usage>) {
        self.finished = true;
        self.settle(usage, true);
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

    /// The client went away (also what dropping an unfinished tracker means).
    pub fn cancel(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.settle(None, self.committed);
        let labels = self.labels();
        let m = &self.app.metrics;
        m.error(&labels, Some(FailureClass::ClientCancelled), Fault::Caller);
        m.request(&labels.route, metrics::Outcome::ClientCancelled);
        self.app.access_log.record(access_log::Entry {
            request_id: self.request_id.clone(),
            labels,
            duration_ms: self.started.elapsed().as_millis() as u64,
            outcome: "client_cancelled",
            ..Default::default()
        });
    }

    /// Adds the response headers every answer carries.
    pub fn stamp(&self, mut resp: Response<Body>) -> Response<Body> {
        // Names built once: parsing a `&str` name costs more than the
        // insert itself, on every response.
        static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
        static ROUTE: HeaderName = HeaderName::from_static("x-sluice-route");
        static ATTEMPTS: HeaderName = HeaderName::from_static("x-sluice-attempts");
        static PROVIDER: HeaderName = HeaderName::from_static("x-sluice-provider");
        static MODEL: HeaderName = HeaderName::from_static("x-sluice-model");
        let h = resp.headers_mut();
        let put = |h: &mut http::HeaderMap, name: &HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name.clone(), v);
            }
        };
        put(h, &REQUEST_ID, &self.request_id);
        if let Some(route) = &self.route {
            if let Some(v) = &route.header {
                h.insert(ROUTE.clone(), v.clone());
            }
            h.insert(ATTEMPTS.clone(), HeaderValue::from(self.attempts));
        }
        if let Some(t) = &self.target {
            if let Some(v) = &t.provider_header {
                h.insert(PROVIDER.clone(), v.clone());
            }
            if let Some(v) = &t.model_header {
                h.insert(MODEL.clone(), v.clone());
            }
        }
        for (name, value) in &self.policy_headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(*name, v);
            }
        }
        resp
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_the_model_pricing_exactly() {
        let yaml = r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: p}
spec:
  type: mock
  models:
  - {name: priced, pricing: {inputPerMillion: "2.50", outputPerMillion: "10.00", cachedInputPerMillion: "1.25"}}
  - {name: free}
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {name: r}
spec:
  model: r
  targets: [{providerRef: {name: p}, model: priced}, {providerRef: {name: p}, model: free}]
"#;
        let config = crate::standalone::load(&sluice_crds::load::Admission::new(), yaml, &|_| None)
            .expect("loads");
        let route = config.route("r").expect("route");
        let usage = Usage::new(1_000, 200, 400);
        let c = cost(&route.targets[0], &usage).expect("priced");
        // 600 × 2.50 + 400 × 1.25 + 200 × 10.00, per million.
        assert_eq!(c.to_string(), "0.004");
        assert_eq!(cost(&route.targets[1], &usage), None);
    }
}
