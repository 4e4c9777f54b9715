use super::*;

fn settings() -> Settings {
    Settings::from(&CircuitBreakerSpec::default())
}

fn ok(ms: u64) -> Outcome {
    Outcome::Success {
        latency: Duration::from_millis(ms),
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_then_half_open_then_close() {
    let b = Breaker::new(settings());
    let t0 = Instant::now();
    for _ in 0..4 {
        assert_eq!(b.record(t0, Outcome::Failure), None);
    }
    assert_eq!(
        b.record(t0, Outcome::Failure),
        Some(Transition::Opened {
            reason: Trip::ConsecutiveFailures,
            open_for: Duration::from_secs(30)
        })
    );
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.admits(t0 + Duration::from_secs(29)), (false, None));
    let t1 = t0 + Duration::from_secs(30);
    assert_eq!(b.admits(t1), (true, Some(Transition::HalfOpened)));
    assert_eq!(b.admits(t1), (true, None));
    assert_eq!(b.admits(t1), (true, None));
    assert_eq!(b.admits(t1), (false, None), "three probes at most");
    assert_eq!(b.record(t1, ok(100)), None);
    assert_eq!(b.record(t1, ok(100)), None);
    assert_eq!(b.record(t1, ok(100)), Some(Transition::Closed));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.admits(t1), (true, None));
}

#[tokio::test(start_paused = true)]
async fn repeated_trips_double_the_open_time_up_to_the_max() {
    let b = Breaker::new(settings());
    let mut now = Instant::now();
    let mut opened = Vec::new();
    for _ in 0..6 {
        let mut last = None;
        while last.is_none() {
            last = b.record(now, Outcome::Failure);
            if b.state() == BreakerState::HalfOpen {
                break;
            }
        }
        if let Some(Transition::Opened { open_for, .. }) = last {
            opened.push(open_for.as_secs());
            now += open_for;
            assert!(b.admits(now).0, "a probe after open_for");
        }
    }
    assert_eq!(opened, vec![30, 60, 120, 240, 300, 300]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_at_once() {
    let b = Breaker::new(settings());
    let t0 = Instant::now();
    for _ in 0..5 {
        b.record(t0, Outcome::Failure);
    }
    let t1 = t0 + Duration::from_secs(30);
    assert!(b.admits(t1).0);
    assert_eq!(
        b.record(t1, Outcome::Failure),
        Some(Transition::Opened {
            reason: Trip::ProbeFailed,
            open_for: Duration::from_secs(60)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn error_rate_opens_only_once_the_window_has_enough_calls() {
    let b = Breaker::new(settings());
    let now = Instant::now();
    // Alternate so consecutive failures never reach 5: 50 % errors.
    let mut transitions = Vec::new();
    for i in 0..40 {
        let outcome = if i % 2 == 0 { Outcome::Failure } else { ok(50) };
        if let Some(t) = b.record(now, outcome) {
            transitions.push((i + 1, t));
        }
    }
    assert_eq!(transitions.len(), 1);
    let (calls, t) = transitions[0];
    assert_eq!(calls, 20, "minRequests is 20");
    assert!(matches!(
        t,
        Transition::Opened {
            reason: Trip::ErrorRate,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn old_failures_leave_the_window() {
    let b = Breaker::new(settings());
    let t0 = Instant::now();
    for i in 0..19 {
        b.record(t0, if i % 2 == 0 { Outcome::Failure } else { ok(10) });
    }
    // A minute later the earlier calls no longer count.
    let t1 = t0 + Duration::from_secs(61);
    for _ in 0..30 {
        assert_eq!(b.record(t1, ok(10)), None);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn latency_above_its_limit_opens_without_any_error() {
    let mut s = settings();
    s.latency_p95 = Some(Duration::from_secs(2));
    let b = Breaker::new(s);
    let now = Instant::now();
    let mut trip = None;
    for _ in 0..30 {
        trip = trip.or(b.record(now, ok(8_000)));
    }
    assert!(
        matches!(
            trip,
            Some(Transition::Opened {
                reason: Trip::LatencyP95,
                ..
            })
        ),
        "{trip:?}"
    );
}

/// Records `calls` answers taking `ms`, `step` apart from `now` on, and
/// asserts that one of them opened the breaker for latency drift.
fn assert_drift_trips(b: &Breaker, mut now: Instant, ms: u64, calls: usize, step: Duration) {
    let mut trip = None;
    for _ in 0..calls {
        trip = trip.or(b.record(now, ok(ms)));
        now += step;
    }
    assert!(
        matches!(
            trip,
            Some(Transition::Opened {
                reason: Trip::LatencyDrift,
                ..
            })
        ),
        "{trip:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn latency_drift_against_the_baseline_opens() {
    let mut s = settings();
    s.latency_drift_factor = Some(3.0);
    let b = Breaker::new(s);
    let mut now = Instant::now();
    // A healthy minute at ~800 ms sets the baseline.
    for _ in 0..100 {
        assert_eq!(b.record(now, ok(800)), None);
        now += Duration::from_millis(500);
    }
    // The provider slows to 8 s: p95 drifts past 3× the baseline.
    assert_drift_trips(&b, now, 8_000, 100, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn millisecond_jitter_is_not_drift() {
    let mut s = settings();
    s.latency_drift_factor = Some(3.0);
    s.min_requests = 5;
    let b = Breaker::new(s);
    let mut now = Instant::now();
    // A fast endpoint (2 ms) and a few calls in the window, so one answer
    // that takes 20 ms is the window's p95: ten times the baseline, but
    // only 18 ms more.
    for i in 0..12 {
        let ms = if i == 11 { 20 } else { 2 };
        assert_eq!(b.record(now, ok(ms)), None, "call {i}");
        now += Duration::from_millis(100);
    }
    // A real slowdown still trips it.
    assert_drift_trips(&b, now, 500, 20, Duration::from_millis(100));
}
