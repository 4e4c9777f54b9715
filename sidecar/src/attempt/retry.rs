//! Retrying the same target: the full-jitter backoff with a provider's
//! `Retry-After` honoured up to the route's `max`, and the route's retry
//! budget, which keeps retries from multiplying load during an outage.

use std::time::Duration;

/// The delay before retry `n` (1-based) of the same target: a uniformly
/// random share (`unit` in [0, 1)) of `base × 2^(n-1)`, capped at `max`
/// (full jitter). A provider's `Retry-After` is honoured up to `max`;
/// longer than that, `None`: move on instead of sleeping.
pub fn retry_delay(
    backoff: &sluice_crds::route::Backoff,
    n: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Option<Duration> {
    let max = backoff.max.get();
    if let Some(hint) = retry_after {
        return (hint <= max).then_some(hint);
    }
    Some(crate::balance::full_jitter(
        backoff.base.get(),
        max,
        n.saturating_sub(1),
        unit,
    ))
}

/// Retries may add at most `budgetPercent` of a route's requests (plus a
/// small floor), so retries cannot multiply load during an outage: every
/// request deposits `budgetPercent / 100` of a retry, every retry
/// withdraws one.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry.
    milli: std::sync::atomic::AtomicI64,
    percent: i64,
}

/// Retries a route may make before its own traffic has paid for any.
const RETRY_FLOOR: i64 = 10;
/// Most retries a quiet route can save up.
const RETRY_CAP: i64 = 100;

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        Self {
            milli: std::sync::atomic::AtomicI64::new(RETRY_FLOOR * 1000),
            percent: i64::from(percent.min(100)),
        }
    }

    /// One request's contribution.
    pub fn deposit(&self) {
        use std::sync::atomic::Ordering;
        let add = self.percent * 10;
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + add).min(RETRY_CAP * 1000))
            });
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}
