//! Circuit breaker of one endpoint (a provider and model).
//!
//! Closed → open on `consecutiveFailures` in a row, on `errorRatePercent`
//! over the rolling `window` once it holds `minRequests` calls, or when the
//! window's p95 latency (time to first token for streams) exceeds
//! `latencyP95` or drifts above `latencyDriftFactor` × its rolling baseline
//! (and at least 50 ms above it) — a provider answering 200s in 8 s instead of 800 ms is degraded even
//! without errors. Open for `openFor`, doubling on each trip in a row up to
//! `maxOpenFor`; then half-open lets `halfOpenProbes` calls through and
//! closes only when all succeed.
//!
//! The request path only reads the state (one atomic load in
//! [`Breaker::admits`]); outcomes are recorded under a short lock. Which
//! outcomes count is the caller's decision (see the failure table in
//! `attempt.rs`): rate limits and cancelled clients never do.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sluice_crds::provider::CircuitBreakerSpec;
use sluice_crds::report::BreakerState;
use tokio::time::Instant;

use window::{Window, p95};

mod window;

/// The breaker's settings, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub consecutive_failures: u32,
    pub error_rate_percent: u32,
    pub window: Duration,
    pub min_requests: u32,
    pub latency_p95: Option<Duration>,
    pub latency_drift_factor: Option<f64>,
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub half_open_probes: u32,
}

impl From<&CircuitBreakerSpec> for Settings {
    fn from(s: &CircuitBreakerSpec) -> Self {
        Self {
            consecutive_failures: s.consecutive_failures.max(1),
            error_rate_percent: s.error_rate_percent.clamp(1, 100),
            window: s.window.get().max(Duration::from_secs(1)),
            min_requests: s.min_requests.max(1),
            latency_p95: s.latency_p95.map(|d| d.get()),
            latency_drift_factor: s.latency_drift_factor.filter(|f| *f >= 1.0),
            open_for: s.open_for.get(),
            max_open_for: s.max_open_for.get().max(s.open_for.get()),
            half_open_probes: s.half_open_probes.max(1),
        }
    }
}

/// How a call ended, as far as the breaker is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; `latency` is time to first token (stream) or to the whole body.
    Success { latency: Duration },
    /// A failure that counts against the endpoint.
    Failure,
}

/// Why the breaker opened, for logs, metrics and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trip {
    ConsecutiveFailures,
    ErrorRate,
    LatencyP95,
    LatencyDrift,
    ProbeFailed,
}

/// A state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened { reason: Trip, open_for: Duration },
    HalfOpened,
    Closed,
}

/// The least a p95 must rise above its baseline to count as drift: an
/// endpoint answering in a few milliseconds (a local model, a cache, a
/// mock on loopback) would otherwise trip on scheduling jitter alone. LLM
/// latencies are hundreds of milliseconds, where the factor decides.
const DRIFT_MIN: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    trips_in_a_row: u32,
    window: Window,
    /// Rolling baseline of healthy p95s, for drift.
    baseline: Option<Duration>,
    last_failure: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: Settings,
    gate: AtomicU8,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(settings: Settings) -> Self {
        let window = Window::new(settings.window);
        Self {
            settings,
            gate: AtomicU8::new(CLOSED),
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                trips_in_a_row: 0,
                window,
                baseline: None,
                last_failure: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state for reports and metrics.
    pub fn state(&self) -> BreakerState {
        match self.gate.load(Ordering::Acquire) {
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// When the endpoint last failed, to pick the least-recently-failed
    /// endpoint when every breaker of a route is open.
    pub fn last_failure(&self) -> Option<Instant> {
        self.lock().last_failure
    }

    /// Whether a call may go to this endpoint now. Closed: one atomic load.
    /// Open past its time: turns half-open and admits a probe. Half-open:
    /// admits up to `halfOpenProbes` probes.
    pub fn admits(&self, now: Instant) -> (bool, Option<Transition>) {
        if self.gate.load(Ordering::Acquire) == CLOSED {
            return (true, None);
        }
        let mut inner = self.lock();
        match inner.state {
            State::Closed => (true, None),
            State::Open { until } if now < until => (false, None),
            State::Open { .. } => {
                inner.state = State::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                };
                self.gate.store(HALF_OPEN, Ordering::Release);
                (true, Some(Transition::HalfOpened))
            }
            State::HalfOpen {
                admitted,
                succeeded,
            } => {
                if admitted < self.settings.half_open_probes {
                    inner.state = State::HalfOpen {
                        admitted: admitted + 1,
                        succeeded,
                    };
                    (true, None)
                } else {
                    (false, None)
                }
            }
        }
    }

    /// The p95 latency (time to first token for streams) over the rolling
    /// window, for the `latency` strategy; `None` before any success.
    pub fn p95(&self, now: Instant) -> Option<Duration> {
        let mut inner = self.lock();
        p95(inner.window.totals(now).2)
    }

    /// When an open breaker will let a probe through.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.lock().state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// A call this breaker admitted ended without telling anything about
    /// the endpoint (rate limited, cancelled by the client): a half-open
    /// probe slot is given back so the breaker cannot stall.
    pub fn neutral(&self) {
        let mut inner = self.lock();
        if let State::HalfOpen {
            admitted,
            succeeded,
        } = inner.state
        {
            inner.state = State::HalfOpen {
                admitted: admitted.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// Records how a call ended; returns a state change, if any.
    pub fn record(&self, now: Instant, outcome: Outcome) -> Option<Transition> {
        let mut inner = self.lock();
        inner.window.record(
            now,
            match outcome {
                Outcome::Success { latency } => Some(latency),
                Outcome::Failure => None,
            },
        );
        match (inner.state, outcome) {
            (
                State::HalfOpen {
                    admitted,
                    succeeded,
                },
                Outcome::Success { .. },
            ) => {
                let succeeded = succeeded + 1;
                if succeeded >= self.settings.half_open_probes {
                    self.close(&mut inner);
                    Some(Transition::Closed)
                } else {
                    inner.state = State::HalfOpen {
                        admitted,
                        succeeded,
                    };
                    None
                }
            }
            (State::HalfOpen { .. }, Outcome::Failure) => {
                inner.last_failure = Some(now);
                Some(self.open(&mut inner, now, Trip::ProbeFailed))
            }
            (State::Open { .. }, _) => None,
            (State::Closed, Outcome::Failure) => {
                inner.last_failure = Some(now);
                inner.consecutive += 1;
                if inner.consecutive >= self.settings.consecutive_failures {
                    return Some(self.open(&mut inner, now, Trip::ConsecutiveFailures));
                }
                self.check_window(&mut inner, now)
            }
            (State::Closed, Outcome::Success { .. }) => {
                inner.consecutive = 0;
                self.check_window(&mut inner, now)
            }
        }
    }

    fn check_window(&self, inner: &mut Inner, now: Instant) -> Option<Transition> {
        let (calls, failures, hist) = inner.window.totals(now);
        if calls < self.settings.min_requests {
            return None;
        }
        if u64::from(failures) * 100
            >= u64::from(calls) * u64::from(self.settings.error_rate_percent)
        {
            return Some(self.open(inner, now, Trip::ErrorRate));
        }
        if self.settings.latency_p95.is_none() && self.settings.latency_drift_factor.is_none() {
            return None;
        }
        let p95 = p95(hist)?;
        if self.settings.latency_p95.is_some_and(|limit| p95 > limit) {
            return Some(self.open(inner, now, Trip::LatencyP95));
        }
        match (self.settings.latency_drift_factor, inner.baseline) {
            (Some(f), Some(base)) if p95 > base.mul_f64(f).max(base + DRIFT_MIN) => {
                return Some(self.open(inner, now, Trip::LatencyDrift));
            }
            _ => {}
        }
        // Healthy: the baseline follows slowly (1/16 per full window of
        // calls), so a gradual drift is caught but a slow recovery is learnt.
        inner.baseline = Some(match inner.baseline {
            None => p95,
            Some(b) => b.mul_f64(15.0 / 16.0) + p95.mul_f64(1.0 / 16.0),
        });
        None
    }

    fn open(&self, inner: &mut Inner, now: Instant, reason: Trip) -> Transition {
        let doubling = 2u32.saturating_pow(inner.trips_in_a_row.min(16));
        let open_for = self
            .settings
            .open_for
            .saturating_mul(doubling)
            .min(self.settings.max_open_for);
        inner.trips_in_a_row = inner.trips_in_a_row.saturating_add(1);
        inner.state = State::Open {
            until: now + open_for,
        };
        inner.consecutive = 0;
        // Start the next closed period from a clean window.
        inner.window.clear();
        self.gate.store(OPEN, Ordering::Release);
        Transition::Opened { reason, open_for }
    }

    fn close(&self, inner: &mut Inner) {
        inner.state = State::Closed;
        inner.trips_in_a_row = 0;
        inner.consecutive = 0;
        self.gate.store(CLOSED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
