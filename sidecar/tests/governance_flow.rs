//! The governance stages composed in the order the pipeline calls them
//! (PII → rate limit → budget reserve → idempotency → cache lookup →
//! upstream → cache store → accounting), against a counting fake upstream.
//! The pipeline composes them the same way (`policy.rs`, `accounting.rs`);
//! this test hammers the composition with concurrency a black-box test
//! cannot reach as cheaply.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_crds::budget::BudgetSpec;
use sluice_crds::provider::Pricing;
use sluice_crds::route::{CacheSpec, PiiDetector, PiiMode, PiiSpec};
use sluice_crds::units::Money;
use sluice_sidecar::budget::{Budget, Budgets, Rejected};
use sluice_sidecar::cache::{self, Cached, Status, exact::ExactCache};
use sluice_sidecar::idempotency::{Begin, Idempotency, Key};
use sluice_sidecar::metering::{self, Accountant, Metered, Totals, UsageRecord};
use sluice_sidecar::openai::{ChatRequest, ChatResponse, Usage};
use sluice_sidecar::pii::Scrubber;
use tokio::time::Instant;

struct Gateway {
    scrubber: Scrubber,
    budgets: Budgets,
    cache: ExactCache,
    cache_spec: CacheSpec,
    idempotency: Idempotency<Arc<Cached>>,
    accountant: Accountant,
    pricing: Pricing,
    upstream_calls: AtomicUsize,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Served {
        body: String,
        cache: Option<&'static str>,
        warning: Vec<String>,
    },
    Budget(Rejected),
    RateLimited(u64),
}

fn money(s: &str) -> Money {
    Money::from_str(s).expect("money")
}

fn now_ts() -> jiff::Timestamp {
    "2026-11-21T10:00:00Z".parse().expect("timestamp")
}

impl Gateway {
    fn new() -> (Self, Arc<Totals>, impl std::future::Future<Output = ()>) {
        let spec: BudgetSpec = serde_json::from_value(serde_json::json!({
            "window": "month",
            "tenantHeader": "x-team",
            "limits": {"costUSD": "0.05"},
            "rateLimits": {"requestsPerMinute": 100},
            "softLimitPercent": 50
        }))
        .expect("budget");
        let totals = Arc::new(Totals::default());
        let (accountant, task) = Accountant::new(totals.clone(), 64);
        let gw = Self {
            scrubber: Scrubber::new(&PiiSpec {
                mode: PiiMode::Redact,
                detectors: PiiDetector::all(),
            })
            .expect("pii"),
            budgets: Budgets::new(vec![Budget::standalone(
                "team",
                spec,
                vec!["chat".into()],
                true,
                now_ts(),
            )]),
            cache_spec: serde_json::from_value(serde_json::json!({"mode": "exact"}))
                .expect("cache"),
            cache: ExactCache::with_limits(std::time::Duration::from_secs(300), 100),
            idempotency: Idempotency::new(std::time::Duration::from_secs(600), 100),
            accountant,
            pricing: Pricing {
                input_per_million: money("10"),
                output_per_million: money("30"),
                cached_input_per_million: None,
            },
            upstream_calls: AtomicUsize::new(0),
        };
        (gw, totals, task)
    }

    /// Handles a request, then lets the accounting task run.
    async fn handle(&self, req: ChatRequest, team: &str, idem: Option<&str>) -> Outcome {
        let out = self.policy_and_call(req, team, idem).await;
        tokio::task::yield_now().await;
        out
    }

    async fn policy_and_call(
        &self,
        mut req: ChatRequest,
        team: &str,
        idem: Option<&str>,
    ) -> Outcome {
        let header = |h: &str| (h == "x-team").then_some(team);
        // policy: PII first, so logs, keys and the provider see placeholders.
        self.scrubber
            .apply(&mut req)
            .expect("redact mode never blocks");
        // rate limits and budgets of every budget that applies.
        let input_estimate = 1_000;
        let max_tokens = u64::from(req.max_output_tokens().unwrap_or(1_000));
        if let Err(l) =
            self.budgets
                .rate_limit("chat", header, input_estimate + max_tokens, Instant::now())
        {
            return Outcome::RateLimited(l.retry_after_secs);
        }
        let worst = metering::worst_case(&self.pricing, input_estimate, max_tokens);
        let admitted = match self.budgets.admit("chat", header, &worst, now_ts()) {
            Ok(a) => a,
            Err(r) => return Outcome::Budget(r),
        };
        let ticket = match idem {
            Some(k) => {
                let key = Key {
                    tenant: Some(team.into()),
                    route: "chat".into(),
                    key: k.into(),
                };
                let fp = cache::key(&req, "gpt-4o", Some(team));
                match self.idempotency.begin(key, fp, Instant::now()).await {
                    Begin::Replay(v) => return served(&v, None, admitted.warnings),
                    Begin::Conflict => panic!("conflict"),
                    Begin::Leader(t) => Some(t),
                }
            }
            None => None,
        };
        let decision = cache::decide(&self.cache_spec, &req, None);
        let key = cache::key(&req, "gpt-4o", Some(team));
        // The reservations drop on a hit: it costs nothing.
        let hit = decision.reads().then(|| self.cache.get(&key)).flatten();
        if let Some(hit) = hit {
            return served(&hit, Some(Status::Hit.as_str()), admitted.warnings);
        }
        // upstream
        self.upstream_calls.fetch_add(1, Ordering::SeqCst);
        let prompt = req
            .messages
            .iter()
            .filter_map(|m| m.content.as_ref())
            .map(|c| c.text())
            .collect::<Vec<_>>()
            .join("\n");
        let resp: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": format!("echo: {prompt}")}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
        }))
        .expect("response");
        // egress: cache store, idempotency, accounting (off the hot path).
        let metered = Metered::new(&self.pricing, resp.usage, Usage::new(input_estimate, 0, 0));
        let cached = Arc::new(Cached::Response(bytes::Bytes::from(
            serde_json::to_vec(&resp).expect("encodes"),
        )));
        if decision.stores() {
            self.cache.insert(key, (*cached).clone());
        }
        if let Some(t) = ticket {
            t.complete(cached.clone(), Instant::now());
        }
        self.accountant.submit(UsageRecord {
            metered,
            reservations: admitted.reservations,
            side_call: false,
        });
        served(
            &cached,
            decision.status_if_not_served().map(Status::as_str),
            admitted.warnings,
        )
    }
}

fn served(c: &Cached, cache: Option<&'static str>, warning: Vec<String>) -> Outcome {
    let Cached::Response(r) = c else {
        panic!("not a response")
    };
    let r: ChatResponse = serde_json::from_slice(r).expect("a chat response");
    let body = r.choices[0]
        .message
        .content
        .as_ref()
        .map(|c| c.text())
        .unwrap_or_default();
    Outcome::Served {
        body,
        cache,
        warning,
    }
}

fn request(text: &str) -> ChatRequest {
    request_max(text, 300)
}

fn request_max(text: &str, max_tokens: u32) -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "chat", "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}]
    }))
    .expect("request")
}

#[tokio::test(start_paused = true)]
async fn policy_stages_in_order() {
    let (gw, totals, task) = Gateway::new();
    let task = tokio::spawn(task);
    // worst case: 1000 in @ $10/M + 300 out @ $30/M = $0.019; actual $0.013.
    let first = gw
        .handle(request("mail me at jane@example.com"), "blue", None)
        .await;
    assert_eq!(
        first,
        Outcome::Served {
            body: "echo: mail me at [EMAIL]".into(),
            cache: Some("miss"),
            warning: vec![]
        }
    );
    // Same request: a cache hit, no upstream call, nothing charged.
    let again = gw
        .handle(request("mail me at jane@example.com"), "blue", None)
        .await;
    assert!(matches!(
        again,
        Outcome::Served {
            cache: Some("hit"),
            ..
        }
    ));
    assert_eq!(gw.upstream_calls.load(Ordering::SeqCst), 1);
    // Another tenant never sees blue's entry.
    let green = gw
        .handle(request("mail me at jane@example.com"), "green", None)
        .await;
    assert!(matches!(
        green,
        Outcome::Served {
            cache: Some("miss"),
            ..
        }
    ));
    assert_eq!(gw.upstream_calls.load(Ordering::SeqCst), 2);

    // Idempotent repeats of a new prompt: one upstream call.
    let a = gw.handle(request("second"), "blue", Some("k-1")).await;
    let b = gw.handle(request("second"), "blue", Some("k-1")).await;
    assert_eq!(gw.upstream_calls.load(Ordering::SeqCst), 3);
    let (
        Outcome::Served { body: ba, .. },
        Outcome::Served {
            body: bb, warning, ..
        },
    ) = (a, b)
    else {
        panic!("served");
    };
    assert_eq!(ba, bb);
    // blue spent 2 × $0.013 = $0.026 of $0.05: past the 50 % soft limit.
    assert_eq!(
        warning,
        vec!["budget team at 52% of its month limit".to_owned()]
    );
    // A call that may cost $0.04 more on top of $0.026 is rejected.
    let third = gw.handle(request_max("third", 1_000), "blue", None).await;
    let Outcome::Budget(r) = third else {
        panic!("{third:?}")
    };
    assert_eq!(r.budget, "team");
    assert_eq!(r.retry_after_secs, (9 * 24 + 14) * 3600);

    drop(gw);
    task.await.expect("accounting");
    let spent: Vec<_> = totals
        .snapshot()
        .into_iter()
        .map(|(k, s)| (k.tenant.unwrap_or_default(), s.cost_usd, s.requests))
        .collect();
    assert_eq!(
        spent,
        vec![
            ("blue".into(), money("0.026"), 2),
            ("green".into(), money("0.013"), 1)
        ]
    );
}
