use super::*;

fn limiter(rpm: Option<u32>, tpm: Option<u64>) -> RateLimiter {
    RateLimiter::new(RateLimits {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
    })
}

#[tokio::test(start_paused = true)]
async fn burst_then_steady_state() {
    let rl = limiter(Some(60), None);
    let start = Instant::now();
    // A full minute's allowance passes at once.
    for i in 0..60 {
        let h = rl.check(None, 0, Instant::now()).expect("burst");
        assert_eq!(h.remaining_requests, Some(59 - i));
    }
    let err = rl.check(None, 0, Instant::now()).expect_err("limited");
    assert_eq!(err.retry_after_secs, 1);
    assert_eq!(err.headers.limit_requests, Some(60));
    assert_eq!(err.headers.remaining_requests, Some(0));
    // Then one per second.
    let mut passed = 0;
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(100)).await;
        if rl.check(None, 0, Instant::now()).is_ok() {
            passed += 1;
        }
    }
    assert_eq!(passed, 10);
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn tokens_are_charged_by_estimate_and_corrected() {
    let rl = limiter(None, Some(6_000));
    let t = Instant::now();
    rl.check(Some("a"), 5_000, t).expect("fits");
    let err = rl.check(Some("a"), 2_000, t).expect_err("over");
    // 1_000 missing at 100 tokens/s.
    assert_eq!(err.retry_after_secs, 10);
    // The call used only 500: 4_500 are refunded.
    rl.correct(Some("a"), 5_000, 500, t);
    let h = rl.check(Some("a"), 2_000, t).expect("fits after refund");
    assert_eq!(h.remaining_tokens, Some(3_500));
    // Other tenants have their own buckets.
    rl.check(Some("b"), 6_000, t).expect("own bucket");
    // Under-estimates are charged afterwards and become a debt.
    rl.correct(Some("b"), 6_000, 12_000, t);
    let err = rl.check(Some("b"), 1, t).expect_err("in debt");
    assert_eq!(err.retry_after_secs, 61);
}

#[tokio::test(start_paused = true)]
async fn huge_requests_pass_when_the_bucket_is_full() {
    let rl = limiter(None, Some(1_000));
    rl.check(None, 50_000, Instant::now())
        .expect("whole bucket");
    assert!(rl.check(None, 1, Instant::now()).is_err());
}

#[test]
fn headers_in_openai_format() {
    assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
    assert_eq!(format_reset(Duration::from_millis(1_500)), "1.5s");
    assert_eq!(format_reset(Duration::from_secs(1)), "1s");
    assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    let h = RateHeaders {
        limit_requests: Some(60),
        remaining_requests: Some(59),
        reset_requests: Some(Duration::from_secs(1)),
        ..RateHeaders::default()
    };
    assert_eq!(
        h.to_headers(),
        vec![
            ("x-ratelimit-limit-requests", "60".to_owned()),
            ("x-ratelimit-remaining-requests", "59".to_owned()),
            ("x-ratelimit-reset-requests", "1s".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn release_gives_back_a_refused_request() {
    let rl = limiter(Some(1), Some(100));
    let now = Instant::now();
    rl.check(None, 100, now).expect("first");
    assert!(rl.check(None, 1, now).is_err());
    rl.release(None, 100, now);
    rl.check(None, 100, now).expect("given back");
}
