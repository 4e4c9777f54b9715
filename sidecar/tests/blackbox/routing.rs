//! Routing and resilience through the real sidecar, against fault-injecting
//! OpenAI mocks on loopback: the weighted split, least-busy under uneven
//! prompts, a breaker's whole cycle and latency drift tripping one without
//! any error, timeouts
//! before headers and before the first token, and the retry budget's exact
//! cap on upstream calls during an outage.
//!
//! No assertion is on elapsed time: timeouts are configured short and the
//! tests assert which class each failure was counted as.

use std::time::Duration;

use serde_json::json;
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind,
};

use crate::harness::{Sidecar, ask, stream_text};

async fn mock() -> MockHandle {
    MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock")
}

/// An OpenAI-compatible Provider `name` at `url` serving model `m`, with
/// `extra` spec lines (each indented two spaces).
fn provider(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {{name: {name}}}\nspec:\n  type: openai-compatible\n  endpoint: {url}/v1\n  credentials: {{env: TEST_KEY}}\n{extra}  models: [{{name: m}}]\n---\n"
    )
}

/// A route `chat` over providers `a` and `b` (model `m`).
fn route(strategy: &str, a: &str, b: &str, spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {{name: chat}}\nspec:\n  model: chat\n  strategy: {strategy}\n{spec}  targets:\n  - {{providerRef: {{name: a}}, model: m, {a}}}\n  - {{providerRef: {{name: b}}, model: m, {b}}}\n"
    )
}

/// `a` first, `b` its fallback (strategy priority); `a_spec` adds to
/// Provider `a`'s spec, `route_spec` to the route's.
fn failover(a: &MockHandle, b: &MockHandle, a_spec: &str, route_spec: &str) -> String {
    provider("a", &a.url(), a_spec)
        + &provider("b", &b.url(), "")
        + &route("priority", "priority: 0", "priority: 1", route_spec)
}

async fn metrics(sc: &Sidecar) -> String {
    sc.get(&sc.admin_url("/metrics")).await.text()
}

#[tokio::test]
async fn weighted_split_is_exact_over_many_requests() {
    let (a, b) = (mock().await, mock().await);
    let yaml = provider("a", &a.url(), "")
        + &provider("b", &b.url(), "")
        + &route("weighted", "weight: 70", "weight: 30", "");
    let sc = Sidecar::start(&yaml).await;
    let mut providers = Vec::new();
    for _ in 0..200 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        providers.push(resp.header("x-sluice-provider").unwrap_or("").to_owned());
    }
    // Smooth weighted round robin is deterministic: exact shares, evenly
    // interleaved (never more than three `a` in a row at 70/30).
    assert_eq!((a.request_count(), b.request_count()), (140, 60));
    let longest_a_run = providers
        .split(|p| p == "b")
        .map(<[String]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_a_run <= 3, "{providers:?}");
}

#[tokio::test]
async fn least_busy_counts_prompt_tokens_not_requests() {
    let (a, b) = (mock().await, mock().await);
    // Both answer slowly, so what was sent stays in flight.
    for m in [&a, &b] {
        m.set_default(Behaviour::ok().with_latency(Duration::from_secs(3)));
    }
    let yaml = provider("a", &a.url(), "")
        + &provider("b", &b.url(), "")
        + &route("least-busy", "weight: 1", "weight: 1", "");
    let sc = std::sync::Arc::new(Sidecar::start(&yaml).await);
    let send = |text: String| {
        let sc = sc.clone();
        tokio::spawn(async move {
            let mut body = ask("chat", &text);
            body["max_tokens"] = json!(16);
            sc.chat(body).await
        })
    };
    // A long prompt (about 20,000 tokens) goes to the first idle target…
    let long = send("word ".repeat(20_000));
    assert!(a.wait_for_requests(1, Duration::from_secs(10)).await);
    // …then four short ones all go to the other, although it then has more
    // requests in flight: it has far fewer tokens in flight.
    let mut short = Vec::new();
    for n in 1..=4 {
        short.push(send(format!("short question {n}")));
        assert!(b.wait_for_requests(n, Duration::from_secs(10)).await, "{n}");
    }
    // A second long prompt also goes to `b`: four short prompts weigh less
    // than one long one.
    let long2 = send("word ".repeat(20_000));
    assert!(b.wait_for_requests(5, Duration::from_secs(10)).await);
    for task in short.into_iter().chain([long, long2]) {
        let resp = task.await.expect("join");
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!((a.request_count(), b.request_count()), (1, 5));
}

#[tokio::test]
async fn latency_drift_opens_the_breaker_without_any_error() {
    let (a, b) = (mock().await, mock().await);
    let breaker = "  circuitBreaker: {consecutiveFailures: 3, minRequests: 5, latencyDriftFactor: 3, openFor: 1m}\n";
    let yaml = failover(&a, &b, breaker, "");
    // A healthy baseline: answers from `a` in 100 ms, well above scheduling
    // jitter (and a p95 must rise 50 ms above its baseline to drift).
    a.set_default(Behaviour::ok().with_latency(Duration::from_millis(100)));
    let sc = Sidecar::start(&yaml).await;
    for _ in 0..12 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.header("x-sluice-provider"), Some("a"));
    }
    // Then `a` answers, correctly, but slowly: far beyond 3× its baseline.
    a.set_default(Behaviour::ok().with_latency(Duration::from_secs(2)));
    let resp = sc.chat(ask("chat", "hi")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-sluice-provider"),
        Some("a"),
        "slow, not failed"
    );
    // The breaker opened on that success: traffic moves to `b` at once.
    for _ in 0..3 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.header("x-sluice-provider"), Some("b"));
        assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
    }
    assert_eq!(a.request_count(), 13);
    let text = metrics(&sc).await;
    assert!(
        text.contains(r#"sluice_breaker_open{provider="a",model="m"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_breaker_transitions_total{provider="a",model="m",to="open"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"fault="provider",route="chat",provider="a""#),
        "no error was counted against a: {text}"
    );
}

#[tokio::test]
async fn a_breaker_opens_half_opens_after_open_for_and_closes_on_a_good_probe() {
    let (a, b) = (mock().await, mock().await);
    let breaker = "  circuitBreaker: {consecutiveFailures: 3, openFor: 1s, maxOpenFor: 1s, halfOpenProbes: 1}\n";
    let yaml = failover(&a, &b, breaker, "  retry: {attempts: 1}\n");
    let sc = Sidecar::start(&yaml).await;
    a.set_default(Behaviour::error(ErrorKind::ServerError));
    for _ in 0..3 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.header("x-sluice-provider"), Some("b"));
        assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    }
    // Open: `a` is skipped without a call.
    let resp = sc.chat(ask("chat", "hi")).await;
    assert_eq!(resp.header("x-sluice-attempts"), Some("1"));
    assert_eq!(a.request_count(), 3);
    // Recovered; past openFor one probe goes to `a`, succeeds and closes it.
    a.set_default(Behaviour::ok());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.header("x-sluice-provider"), Some("a"));
    }
    let text = metrics(&sc).await;
    for (to, n) in [("open", 1), ("half_open", 1), ("closed", 1)] {
        let series =
            format!(r#"sluice_breaker_transitions_total{{provider="a",model="m",to="{to}"}} {n}"#);
        assert!(text.contains(&series), "{series} in\n{text}");
    }
    assert!(
        text.contains(r#"sluice_breaker_open{provider="a",model="m"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn hangs_before_headers_and_before_the_first_token_time_out_and_fall_back() {
    let (a, b) = (mock().await, mock().await);
    let timeouts = "  timeouts: {connect: 500ms, firstToken: 300ms, idle: 1s, total: 5s}\n";
    let yaml = failover(&a, &b, timeouts, "  retry: {attempts: 1}\n");
    let sc = Sidecar::start(&yaml).await;
    // No response headers at all, for a plain and a streamed call.
    for stream in [false, true] {
        a.enqueue(1, Behaviour::fault(Fault::HangBeforeHeaders));
        let mut body = ask("chat", "hi");
        body["stream"] = json!(stream);
        let resp = sc.chat(body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-sluice-provider"), Some("b"));
        assert_eq!(resp.header("x-sluice-attempts"), Some("2"));
    }
    // Headers, then nothing: a 200 that never reaches its first token.
    a.enqueue(1, Behaviour::fault(Fault::StallAfter { after: 0 }));
    let mut body = ask("chat", "tell me a story");
    body["stream"] = json!(true);
    let resp = sc.chat(body).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-sluice-provider"), Some("b"));
    let (text, done, errors) = stream_text(&resp.text());
    assert!(
        !text.is_empty() && done && errors.is_empty(),
        "{}",
        resp.text()
    );
    assert_eq!((a.request_count(), b.request_count()), (3, 3));
    let text = metrics(&sc).await;
    for (class, n) in [("timeout-headers", 2), ("timeout-first-token", 1)] {
        let series = format!(
            r#"sluice_errors_total{{class="{class}",fault="provider",route="chat",provider="a",model="m"}} {n}"#
        );
        assert!(text.contains(&series), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn the_retry_budget_caps_upstream_calls_exactly_during_an_outage() {
    let a = mock().await;
    a.set_default(Behaviour::error(ErrorKind::ServerError));
    // Breakers out of the way, so only the budget limits retries.
    let breaker = "  circuitBreaker: {consecutiveFailures: 1000, minRequests: 100000}\n";
    let yaml = provider("a", &a.url(), breaker)
        + "apiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: chat}\nspec:\n  model: chat\n  retry: {attempts: 3, budgetPercent: 20, backoff: {base: 1ms, max: 5ms}}\n  targets: [{providerRef: {name: a}, model: m}]\n";
    let sc = Sidecar::start(&yaml).await;
    let mut attempts = 0;
    for _ in 0..40 {
        let resp = sc.chat(ask("chat", "hi")).await;
        assert_eq!(resp.status, 502, "{}", resp.text());
        attempts += resp
            .header("x-sluice-attempts")
            .and_then(|a| a.parse::<usize>().ok())
            .expect("attempts header");
    }
    // Without a budget: 40 × 3 = 120 calls. The budget starts with a floor
    // of 10 retries and every request adds a fifth of one: the first five
    // requests retry twice each (10), the sixth once, then one request in
    // five — 18 retries, 58 calls.
    assert_eq!(a.request_count(), 58);
    assert_eq!(attempts, 58, "x-sluice-attempts agrees with the upstream");
}
