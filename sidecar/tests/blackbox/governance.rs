//! Governance through the real request path: budgets, rate limits, the
//! response caches, PII scrubbing and idempotency keys, against a counting
//! OpenAI mock upstream on loopback.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::mock::client::{self, Response};
use sluice_tests::mock::{Behaviour, MockConfig, MockHandle, MockProvider, ProviderKind};

use crate::harness::{Sidecar, ask};

/// Providers `up` (the mock upstream: `gpt-4o` dear, `gpt-4o-mini` cheap)
/// and `embed` (the built-in offline mock, for semantic-cache embeddings),
/// then `extra` documents (routes, budgets).
fn yaml(upstream: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: up}}
spec:
  type: openai
  endpoint: {upstream}/v1
  credentials: {{env: TEST_KEY}}
  models:
  - {{name: gpt-4o, maxOutputTokens: 1000, pricing: {{inputPerMillion: "10", outputPerMillion: "30"}}}}
  - {{name: gpt-4o-mini, pricing: {{inputPerMillion: "1", outputPerMillion: "2"}}}}
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: embed}}
spec:
  type: mock
  models: [{{name: embedder, capabilities: [embeddings]}}]
{extra}"#
    )
}

/// A route `name` on `up`/`gpt-4o` with `more` spec lines (indented 2).
fn route(name: &str, more: &str) -> String {
    format!(
        r#"
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: {name}}}
spec:
  model: {name}
  retry: {{attempts: 1}}
  targets: [{{providerRef: {{name: up}}, model: gpt-4o}}]
{more}"#
    )
}

/// A budget `name` on route `route` with `spec` lines (indented 2).
fn budget(name: &str, route: &str, spec: &str) -> String {
    format!(
        r#"
---
apiVersion: sluice.dev/v1alpha1
kind: Budget
metadata: {{name: {name}}}
spec:
  routes: [{route}]
  window: month
{spec}"#
    )
}

async fn upstream() -> MockHandle {
    MockProvider::start(ProviderKind::OpenAi, MockConfig::default())
        .await
        .expect("mock upstream")
}

async fn post(sc: &Sidecar, headers: &[(&str, &str)], body: &Value) -> Response {
    client::post_json(&sc.url("/v1/chat/completions"), headers, body)
        .await
        .expect("response")
}

fn deterministic(model: &str, text: &str) -> Value {
    let mut body = ask(model, text);
    body["temperature"] = json!(0);
    body
}

#[tokio::test]
async fn a_request_budget_rejects_with_budget_exceeded_once_spent() {
    let up = upstream().await;
    let docs = route("chat", "") + &budget("b", "chat", "  limits: {requests: 3}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    for i in 0..3 {
        let r = sc.chat(ask("chat", "hi")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = sc.chat(ask("chat", "hi")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(
        retry > 0 && retry <= 31 * 86_400,
        "resets at the month's end: {retry}"
    );
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!(up.request_count(), 3, "the refused request never left");
}

#[tokio::test]
async fn a_budget_a_route_refers_to_counts_its_traffic() {
    // The budget names no route; the route names the budget (`budgetRefs`),
    // as examples/quickstart.yaml does.
    let up = upstream().await;
    let docs = route("chat", "  budgetRefs: [{name: b}]")
        + r#"
---
apiVersion: sluice.dev/v1alpha1
kind: Budget
metadata: {name: b}
spec:
  window: day
  limits: {requests: 2}"#;
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    for i in 0..2 {
        let r = sc.chat(ask("chat", "hi")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = sc.chat(ask("chat", "hi")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
}

#[tokio::test]
async fn past_the_soft_limit_answers_carry_a_warning() {
    let up = upstream().await;
    let docs = route("chat", "")
        + &budget(
            "team",
            "chat",
            "  limits: {requests: 4}\n  softLimitPercent: 50",
        );
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let mut warnings = Vec::new();
    for _ in 0..4 {
        let r = sc.chat(ask("chat", "hi")).await;
        assert_eq!(r.status, 200);
        warnings.push(r.header("x-sluice-budget-warning").map(str::to_owned));
    }
    assert_eq!(warnings[0], None);
    assert_eq!(warnings[1], None);
    let w = warnings[2].as_deref().expect("a warning at 50%");
    assert!(w.contains("team") && w.contains("50%"), "{w}");
    assert!(warnings[3].is_some());
}

#[tokio::test]
async fn tenants_have_their_own_budget() {
    let up = upstream().await;
    let docs = route("chat", "")
        + &budget(
            "per-team",
            "chat",
            "  tenantHeader: x-team\n  limits: {requests: 1}",
        );
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let as_team = |t: &'static str| [("x-team", t)];
    assert_eq!(
        post(&sc, &as_team("a"), &ask("chat", "hi")).await.status,
        200
    );
    let again = post(&sc, &as_team("a"), &ask("chat", "hi")).await;
    assert_eq!(again.status, 429);
    assert_eq!(again.json()["error"]["code"], "budget_exceeded");
    assert_eq!(
        post(&sc, &as_team("b"), &ask("chat", "hi")).await.status,
        200,
        "team b is not charged for team a"
    );
}

#[tokio::test]
async fn an_exhausted_budget_can_downgrade_and_the_ladder_degrades_first() {
    let up = upstream().await;
    let docs = route("chat", "")
        + &budget(
            "b",
            "chat",
            "  limits: {requests: 4}\n  degrade:\n  - {atPercent: 50, to: {providerRef: {name: up}, model: gpt-4o-mini}}\n  onExceeded: {action: downgrade, to: {providerRef: {name: up}, model: gpt-4o-mini}}",
        );
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let mut models = Vec::new();
    for _ in 0..6 {
        let r = sc.chat(ask("chat", "hi")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        models.push(r.header("x-sluice-model").unwrap_or_default().to_owned());
    }
    assert_eq!(
        models,
        [
            "gpt-4o",
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o-mini",
            "gpt-4o-mini",
            "gpt-4o-mini"
        ],
        "degraded at 50%, downgraded past 100%"
    );
    let sent: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.json.as_ref()?["model"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(sent[2..], models[2..], "the upstream saw the cheaper model");
}

#[tokio::test]
async fn a_failed_call_releases_its_reservation() {
    let up = upstream().await;
    up.enqueue(
        1,
        Behaviour::error(sluice_tests::mock::ErrorKind::ServerError),
    );
    let docs = route("chat", "") + &budget("b", "chat", "  limits: {requests: 1}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let failed = sc.chat(ask("chat", "hi")).await;
    assert_eq!(failed.status, 502, "{}", failed.text());
    let ok = sc.chat(ask("chat", "hi")).await;
    assert_eq!(ok.status, 200, "the failure was not charged: {}", ok.text());
    assert_eq!(sc.chat(ask("chat", "hi")).await.status, 429);
}

#[tokio::test]
async fn a_client_that_leaves_before_any_output_is_not_charged() {
    let up = upstream().await;
    up.enqueue(1, Behaviour::ok().with_latency(Duration::from_secs(3)));
    let docs = route("chat", "") + &budget("b", "chat", "  limits: {requests: 1}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let url = sc.url("/v1/chat/completions");
    let gone =
        tokio::spawn(async move { client::post_json(&url, &[], &ask("chat", "slow")).await });
    assert!(
        up.wait_for_requests(1, Duration::from_secs(5)).await,
        "the call reached the upstream"
    );
    gone.abort();
    // The reservation is released once the sidecar sees the client gone.
    let mut status = 0;
    for _ in 0..50 {
        status = sc.chat(ask("chat", "hi")).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the abandoned request's reservation came back");
}

#[tokio::test]
async fn a_dollar_budget_is_not_overspent_under_concurrency() {
    let up = upstream().await;
    // Worst case per request: ~10 prompt tokens at $10/M + 100 at $30/M
    // ≈ $0.0031; the limit admits a handful of the 40 concurrent requests.
    let docs = route("chat", "") + &budget("b", "chat", "  limits: {costUSD: \"0.02\"}");
    let sc = std::sync::Arc::new(Sidecar::start(&yaml(&up.url(), &docs)).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let sc = sc.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = ask("chat", &format!("question {i}"));
            body["max_tokens"] = json!(100);
            sc.chat(body).await
        }));
    }
    let mut ok = 0;
    let mut exceeded = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.json()["error"]["code"], "budget_exceeded");
                exceeded += 1;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!(ok + exceeded, 40);
    assert!(ok >= 6, "at least the worst cases that fit: {ok}");
    assert_eq!(up.request_count(), ok, "refused requests never left");
    // What was charged, from the metrics, stays within the limit.
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    let cost: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_cost_usd_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(cost > 0.0 && cost <= 0.02 + 1e-9, "spent {cost}");
}

#[tokio::test]
async fn rate_limits_answer_429_with_openai_headers() {
    let up = upstream().await;
    let docs = route("chat", "") + &budget("rl", "chat", "  rateLimits: {requestsPerMinute: 2}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let first = sc.chat(ask("chat", "hi")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(sc.chat(ask("chat", "hi")).await.status, 200);
    let limited = sc.chat(ask("chat", "hi")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(limited.header("x-ratelimit-remaining-requests"), Some("0"));
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        (1..=30).contains(&retry),
        "one request refills in 30s: {retry}"
    );
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn the_exact_cache_answers_repeats_and_honours_no_cache() {
    let up = upstream().await;
    let docs = route("chat", "  cache: {mode: exact, ttl: 1s}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let body = deterministic("chat", "What is 2+2?");
    let first = sc.chat(body.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    let second = sc.chat(body.clone()).await;
    assert_eq!(second.header("x-sluice-cache"), Some("hit"));
    assert_eq!(
        second.text(),
        first.text(),
        "the same answer, byte for byte"
    );
    assert_eq!(up.request_count(), 1);
    let fresh = post(&sc, &[("cache-control", "no-cache")], &body).await;
    assert_eq!(fresh.header("x-sluice-cache"), Some("bypass"));
    assert_eq!(up.request_count(), 2);
    let mut creative = body.clone();
    creative["temperature"] = json!(0.8);
    let r = sc.chat(creative).await;
    assert_eq!(r.header("x-sluice-cache"), Some("bypass"));
    assert_eq!(up.request_count(), 3);
    // Past the TTL the entry is gone.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(sc.chat(body).await.header("x-sluice-cache"), Some("miss"));
    assert_eq!(up.request_count(), 4);
}

#[tokio::test]
async fn a_cached_stream_replays_exactly_as_it_was_streamed() {
    let up = upstream().await;
    let docs = route("chat", "  cache: {mode: exact}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let mut body = deterministic("chat", "Tell me a story");
    body["stream"] = json!(true);
    let first = sc.chat(body.clone()).await;
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    assert!(
        first.text().ends_with("data: [DONE]\n\n"),
        "{}",
        first.text()
    );
    let second = sc.chat(body.clone()).await;
    assert_eq!(second.header("x-sluice-cache"), Some("hit"));
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    assert_eq!(second.text(), first.text());
    assert_eq!(up.request_count(), 1);
    // The same question without streaming is another entry.
    body["stream"] = json!(false);
    assert_eq!(sc.chat(body).await.header("x-sluice-cache"), Some("miss"));
}

#[tokio::test]
async fn the_cache_never_answers_one_tenant_with_anothers_entry() {
    let up = upstream().await;
    let docs = route("chat", "  cache: {mode: exact}")
        + &budget(
            "per-team",
            "chat",
            "  tenantHeader: x-team\n  limits: {requests: 1000}",
        );
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let body = deterministic("chat", "What is our revenue?");
    let a = post(&sc, &[("x-team", "a")], &body).await;
    assert_eq!(a.header("x-sluice-cache"), Some("miss"));
    let b = post(&sc, &[("x-team", "b")], &body).await;
    assert_eq!(b.header("x-sluice-cache"), Some("miss"), "tenant b");
    let a2 = post(&sc, &[("x-team", "a")], &body).await;
    assert_eq!(a2.header("x-sluice-cache"), Some("hit"));
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn the_semantic_cache_serves_paraphrases_but_not_opposites() {
    let up = upstream().await;
    let docs = route(
        "chat",
        "  cache: {mode: semantic, similarity: 0.95, embedding: {providerRef: {name: embed}, model: embedder}}",
    );
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let first = sc
        .chat(deterministic(
            "chat",
            "How do I enable dark mode in the settings?",
        ))
        .await;
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    let again = sc
        .chat(deterministic(
            "chat",
            "How do I enable dark mode in the settings ?",
        ))
        .await;
    assert_eq!(
        again.header("x-sluice-cache"),
        Some("hit"),
        "a near-identical prompt"
    );
    assert_eq!(again.text(), first.text());
    let opposite = sc
        .chat(deterministic(
            "chat",
            "How do I disable dark mode in the settings?",
        ))
        .await;
    assert_eq!(
        opposite.header("x-sluice-cache"),
        Some("miss"),
        "the guard refuses the opposite question"
    );
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn the_semantic_cache_embedding_is_charged_to_the_budget() {
    let up = upstream().await;
    // An embedder at a dollar a token: one prompt's embedding alone spends
    // the $1 budget, while the chat calls cost a fraction of a cent.
    let dear_embedder = r#"
---
apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {name: dear-embed}
spec:
  type: mock
  models: [{name: embedder, capabilities: [embeddings], pricing: {inputPerMillion: "1000000", outputPerMillion: "0"}}]"#;
    let docs = dear_embedder.to_owned()
        + &route(
            "chat",
            "  cache: {mode: semantic, embedding: {providerRef: {name: dear-embed}, model: embedder}}",
        )
        + &budget("b", "chat", "  limits: {costUSD: \"1\"}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let first = sc
        .chat(deterministic("chat", "How do I enable dark mode?"))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    // Settled off the request path: the refusal may take a request more.
    let mut refused = None;
    for i in 0..3 {
        let r = sc
            .chat(deterministic(
                "chat",
                &format!("Question {i}: where are the logs?"),
            ))
            .await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the embeddings' cost exhausts the budget");
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    // The metrics show the embedding calls under the embedder.
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    let embedder = |name: &str| {
        metrics.lines().any(|l| {
            l.starts_with(name)
                && l.contains("provider=\"dear-embed\"")
                && l.contains("model=\"embedder\"")
        })
    };
    assert!(embedder("gen_ai_client_token_usage_sum"), "{metrics}");
    assert!(embedder("sluice_cost_usd_total"), "{metrics}");
}

#[tokio::test]
async fn pii_is_redacted_before_the_provider_or_blocked_by_category() {
    let up = upstream().await;
    let docs = route("redacting", "  pii: {mode: redact}")
        + &route("blocking", "  pii: {mode: block, detectors: [credit-card]}");
    let sc = Sidecar::start(&yaml(&up.url(), &docs)).await;
    let r = sc
        .chat(ask(
            "redacting",
            "Mail jane.doe@example.com about card 4111 1111 1111 1111",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = String::from_utf8_lossy(&up.requests()[0].body).into_owned();
    assert!(
        !sent.contains("jane.doe@example.com") && !sent.contains("4111 1111"),
        "{sent}"
    );
    assert!(
        sent.contains("[EMAIL]") && sent.contains("[CREDIT_CARD]"),
        "{sent}"
    );

    let blocked = sc
        .chat(ask("blocking", "charge 4111 1111 1111 1111 please"))
        .await;
    assert_eq!(blocked.status, 400);
    let err = blocked.json();
    assert_eq!(err["error"]["code"], "pii_blocked");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("credit-card"), "{message}");
    assert!(!blocked.text().contains("4111"), "never the value");
    assert_eq!(up.request_count(), 1);
    // An email is not what this route blocks.
    assert_eq!(
        sc.chat(ask("blocking", "mail jane.doe@example.com"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn concurrent_repeats_of_an_idempotency_key_call_the_provider_once() {
    let up = upstream().await;
    up.set_default(Behaviour::ok().with_latency(Duration::from_millis(300)));
    let sc = std::sync::Arc::new(Sidecar::start(&yaml(&up.url(), &route("chat", ""))).await);
    let call = |key: &'static str| {
        let sc = sc.clone();
        tokio::spawn(async move {
            post(&sc, &[("idempotency-key", key)], &ask("chat", "book it")).await
        })
    };
    let (a, b) = (call("order-42"), call("order-42"));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    assert_eq!(a.text(), b.text());
    assert_eq!(up.request_count(), 1, "one upstream call for one key");
    // Later repeats replay too; another key calls again; the same key with
    // another body is refused.
    let c = call("order-42").await.expect("c");
    assert_eq!(c.text(), a.text());
    assert_eq!(up.request_count(), 1);
    assert_eq!(call("order-43").await.expect("d").status, 200);
    assert_eq!(up.request_count(), 2);
    let conflict = post(
        &sc,
        &[("idempotency-key", "order-42")],
        &ask("chat", "cancel it"),
    )
    .await;
    assert_eq!(conflict.status, 422, "{}", conflict.text());
    assert_eq!(conflict.json()["error"]["param"], "idempotency-key");
}

/// An OpenAI-compatible upstream that answers every request with `body`
/// and no `usage`, over HTTP/1.1 on loopback.
async fn usageless_upstream(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = 0;
                // Read the head and the announced body, then answer.
                loop {
                    let Ok(n) = socket.read(&mut buf[seen..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen += n;
                    let text = String::from_utf8_lossy(&buf[..seen]).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen >= end + 4 + length {
                            break;
                        }
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_answer_without_usage_is_metered_from_its_text() {
    // 400 characters of answer: about 100 tokens by the estimate.
    const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}]}"#;
    let up = usageless_upstream(ANSWER).await;
    let docs = route("chat", "") + &budget("b", "chat", "  limits: {tokens: 80}");
    let sc = Sidecar::start(&yaml(&up, &docs)).await;
    let mut body = ask("chat", "hi");
    body["max_tokens"] = json!(10);
    let first = sc.chat(body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // The estimate (prompt + ~100 answer tokens) is charged, not the
    // 10-token reservation: the budget is spent.
    let mut refused = false;
    for _ in 0..50 {
        let r = sc.chat(body.clone()).await;
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "budget_exceeded");
            refused = true;
            break;
        }
        // Settlement runs on the accounting task: give it a moment.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the estimated usage was charged");
    let metrics = sc.get(&sc.admin_url("/metrics")).await.text();
    let estimated: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_accounting_records{kind=\"estimated\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(estimated >= 1, "metered from the estimate: {metrics}");
}
