//! Rate limits of a budget: token buckets for requests per minute and tokens
//! per minute, one pair per tenant when the budget has a `tenantHeader`.
//!
//! The request path calls [`RateLimiter::check`] with the request's estimated
//! tokens (prompt estimate + `max_tokens`) before the call; on success it adds
//! the returned [`RateHeaders`] to the response, on [`Limited`] it answers
//! 429 `rate_limit_exceeded` with `Retry-After` and the same headers. When the
//! call ends, [`RateLimiter::correct`] charges (or refunds) the difference
//! between the estimate and the actual usage.
//!
//! A bucket holds up to a minute's allowance and refills continuously, so a
//! burst of a full minute's allowance passes at once and then the steady rate
//! applies. A request estimated above the whole bucket is charged the whole
//! bucket, so that it can pass when the bucket is full instead of never.
//! Clocks are passed in (`tokio::time::Instant`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sluice_crds::budget::RateLimits;
use tokio::time::Instant;

/// Buckets are forgotten once full when more than this many tenants exist.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Clone, Debug)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: f64, now: Instant) -> Self {
        Self {
            capacity: per_minute,
            per_sec: per_minute / 60.0,
            level: per_minute,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// How long until `amount` is available.
    fn wait_for(&self, amount: f64) -> Duration {
        let missing = amount.min(self.capacity) - self.level;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.per_sec)
        }
    }

    fn until_full(&self) -> Duration {
        self.wait_for(self.capacity)
    }

    fn remaining(&self) -> u64 {
        self.level.max(0.0).floor() as u64
    }
}

#[derive(Clone, Debug)]
struct Pair {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Values of OpenAI's `x-ratelimit-*` headers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RateHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateHeaders {
    /// The headers to add to a response, in OpenAI's format.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        let mut push = |name, v: Option<String>| {
            if let Some(v) = v {
                h.push((name, v));
            }
        };
        push(
            "x-ratelimit-limit-requests",
            self.limit_requests.map(|v| v.to_string()),
        );
        push(
            "x-ratelimit-remaining-requests",
            self.remaining_requests.map(|v| v.to_string()),
        );
        push(
            "x-ratelimit-reset-requests",
            self.reset_requests.map(format_reset),
        );
        push(
            "x-ratelimit-limit-tokens",
            self.limit_tokens.map(|v| v.to_string()),
        );
        push(
            "x-ratelimit-remaining-tokens",
            self.remaining_tokens.map(|v| v.to_string()),
        );
        push(
            "x-ratelimit-reset-tokens",
            self.reset_tokens.map(format_reset),
        );
        h
    }
}

/// A duration the way OpenAI writes reset times: `20ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let secs = d.as_secs();
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

/// A request over the limit: 429 `rate_limit_exceeded`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded; retry after {retry_after_secs}s")]
pub struct Limited {
    /// `Retry-After`, in whole seconds (at least 1).
    pub retry_after_secs: u64,
    pub headers: RateHeaders,
}

/// The buckets of one budget.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<Option<String>, Pair>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn pair(&self, now: Instant) -> Pair {
        Pair {
            requests: self
                .limits
                .requests_per_minute
                .map(|r| Bucket::new(f64::from(r), now)),
            tokens: self
                .limits
                .tokens_per_minute
                .map(|t| Bucket::new(t as f64, now)),
        }
    }

    fn headers(p: &Pair) -> RateHeaders {
        RateHeaders {
            limit_requests: p.requests.as_ref().map(|b| b.capacity as u64),
            remaining_requests: p.requests.as_ref().map(Bucket::remaining),
            reset_requests: p.requests.as_ref().map(Bucket::until_full),
            limit_tokens: p.tokens.as_ref().map(|b| b.capacity as u64),
            remaining_tokens: p.tokens.as_ref().map(Bucket::remaining),
            reset_tokens: p.tokens.as_ref().map(Bucket::until_full),
        }
    }

    /// Admits one request estimated at `tokens`, charging both buckets, or
    /// says how long to wait. Check and charge are one atomic step.
    pub fn check(
        &self,
        tenant: Option<&str>,
        tokens: u64,
        now: Instant,
    ) -> Result<RateHeaders, Limited> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, p| {
                [&mut p.requests, &mut p.tokens]
                    .into_iter()
                    .flatten()
                    .any(|b| {
                        b.refill(now);
                        b.level < b.capacity
                    })
            });
        }
        let fresh = self.pair(now);
        let p = map.entry(tenant.map(str::to_owned)).or_insert(fresh);
        let want = tokens as f64;
        let mut wait = Duration::ZERO;
        if let Some(b) = p.requests.as_mut() {
            b.refill(now);
            wait = wait.max(b.wait_for(1.0));
        }
        if let Some(b) = p.tokens.as_mut() {
            b.refill(now);
            wait = wait.max(b.wait_for(want));
        }
        if wait > Duration::ZERO {
            return Err(Limited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                headers: Self::headers(p),
            });
        }
        if let Some(b) = p.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = p.tokens.as_mut() {
            b.level -= want.min(b.capacity);
        }
        Ok(Self::headers(p))
    }

    /// Gives back what [`RateLimiter::check`] charged, for a request that
    /// another budget then refused (it never reached a provider).
    pub fn release(&self, tenant: Option<&str>, tokens: u64, now: Instant) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = map.get_mut(&tenant.map(str::to_owned)) else {
            return;
        };
        if let Some(b) = p.requests.as_mut() {
            b.refill(now);
            b.level = (b.level + 1.0).min(b.capacity);
        }
        if let Some(b) = p.tokens.as_mut() {
            b.refill(now);
            b.level = (b.level + (tokens as f64).min(b.capacity)).min(b.capacity);
        }
    }

    /// Charges the difference between the tokens a request actually used
    /// and its estimate (a refund when it used fewer). The bucket may go
    /// below zero: the next requests wait for the debt.
    pub fn correct(&self, tenant: Option<&str>, estimated: u64, actual: u64, now: Instant) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = map
            .get_mut(&tenant.map(str::to_owned))
            .and_then(|p| p.tokens.as_mut())
        else {
            return;
        };
        b.refill(now);
        let charged = (estimated as f64).min(b.capacity);
        b.level = (b.level + charged - actual as f64).min(b.capacity);
    }
}

#[cfg(test)]
mod tests;
