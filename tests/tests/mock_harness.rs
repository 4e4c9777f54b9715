//! The harness around every mock: scripted sequences (shared and per
//! model), the requests-per-minute limit, request recording, h2c, HTTPS, the
//! control API and the `mock-provider` binary.

use std::future::Future;
use std::time::Duration;

use http::{Method, StatusCode};
use sluice_tests::mock::client::{self, ExampleRequest, Proto};
use sluice_tests::mock::{
    Behaviour, ErrorKind, MockConfig, MockHandle, MockProvider, ProviderKind,
};

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded its time bound")
}

async fn start(kind: ProviderKind) -> MockHandle {
    MockProvider::start(kind, MockConfig::default())
        .await
        .expect("mock starts")
}

fn example(kind: ProviderKind, mock: &MockHandle, stream: bool) -> ExampleRequest {
    ExampleRequest::chat(kind, &mock.url(), "model-a", "hello there", stream)
}

#[tokio::test]
async fn script_fails_three_times_then_succeeds_on_every_kind() {
    bounded(async {
        for kind in ProviderKind::ALL {
            let mock = start(kind).await;
            mock.enqueue(3, Behaviour::error(ErrorKind::ServerError));
            let req = example(kind, &mock, false);
            let mut statuses = Vec::new();
            for _ in 0..4 {
                statuses.push(req.send().await.expect("response").status);
            }
            let s500 = StatusCode::INTERNAL_SERVER_ERROR;
            assert_eq!(statuses, [s500, s500, s500, StatusCode::OK], "{kind}");
            assert_eq!(mock.request_count(), 4, "{kind}");
            assert_eq!(mock.pending_steps(), 0, "{kind}");
        }
    })
    .await;
}

#[tokio::test]
async fn auth_failures_do_not_consume_script_steps() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        mock.enqueue(1, Behaviour::error(ErrorKind::Overloaded));
        let r = client::post_json(
            &format!("{}/v1/chat/completions", mock.url()),
            &[],
            &serde_json::json!({"model": "m", "messages": []}),
        )
        .await
        .expect("response");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(mock.pending_steps(), 1);
        let r = example(ProviderKind::OpenAi, &mock, false)
            .send()
            .await
            .expect("response");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    })
    .await;
}

#[tokio::test]
async fn records_what_was_sent() {
    bounded(async {
        let mock = start(ProviderKind::Azure).await;
        let req = example(ProviderKind::Azure, &mock, false);
        req.send().await.expect("response");
        let recs = mock.requests();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.seq, 1);
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.path, "/openai/deployments/model-a/chat/completions");
        assert_eq!(r.query.as_deref(), Some("api-version=2024-10-21"));
        assert_eq!(r.header("api-key"), Some("mock-key"));
        let json = r.json.as_ref().expect("json body");
        assert_eq!(json["messages"][0]["content"], "hello there");
        assert_eq!(
            mock.count_path("/openai/deployments/model-a/chat/completions"),
            1
        );
        mock.clear_requests();
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn serves_h2c() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        let s = example(ProviderKind::OpenAi, &mock, true)
            .open(Proto::H2c)
            .await
            .expect("h2c response");
        assert_eq!(s.status, StatusCode::OK);
        let (body, err) = s.read_all().await;
        assert!(err.is_none());
        assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
        assert_eq!(mock.requests()[0].version, http::Version::HTTP_2);
    })
    .await;
}

#[tokio::test]
async fn control_api_scripts_and_reports() {
    bounded(async {
        let mock = start(ProviderKind::Gemini).await;
        let enqueue = serde_json::json!({
            "times": 2,
            "behaviour": {"fault": {"type": "error", "kind": "rate_limited", "retry_after": 3000}},
        });
        let r = client::post_json(&format!("{}/__mock/enqueue", mock.url()), &[], &enqueue)
            .await
            .expect("control");
        assert_eq!(r.status, StatusCode::OK);
        let req = example(ProviderKind::Gemini, &mock, false);
        assert_eq!(
            req.send().await.expect("r").status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            req.send().await.expect("r").status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(req.send().await.expect("r").status, StatusCode::OK);
        let listing = client::send(
            Method::GET,
            &format!("{}/__mock/requests", mock.url()),
            &[],
            "",
        )
        .await
        .expect("listing");
        let v = listing.json();
        assert_eq!(v["count"], 3);
        assert_eq!(v["requests"][0]["headers"]["x-goog-api-key"], "mock-key");
        let r = client::post_json(
            &format!("{}/__mock/enqueue", mock.url()),
            &[],
            &serde_json::json!({"times": "x"}),
        )
        .await
        .expect("control");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        client::send(
            Method::POST,
            &format!("{}/__mock/reset", mock.url()),
            &[],
            "",
        )
        .await
        .expect("reset");
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn waits_for_requests() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        assert!(!mock.wait_for_requests(1, Duration::from_millis(50)).await);
        let req = example(ProviderKind::OpenAi, &mock, false);
        let task = tokio::spawn(async move { req.send().await.map(|r| r.status) });
        assert!(mock.wait_for_requests(1, Duration::from_secs(5)).await);
        assert_eq!(task.await.expect("join").expect("response"), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    bounded(async {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mock-provider"))
            .args(["--listen", "127.0.0.1:0", "--kind", "anthropic"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mock-provider");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("address line");
        let addr: std::net::SocketAddr = line.trim().parse().expect("an address");
        let req = ExampleRequest::chat(
            ProviderKind::Anthropic,
            &format!("http://{addr}"),
            "claude-x",
            "hi",
            false,
        );
        let r = req.send().await.expect("response");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["type"], "message");
        child.kill().await.expect("kill");
    })
    .await;
}

#[tokio::test]
async fn per_model_scripts_fail_one_model_only() {
    bounded(async {
        let mock = start(ProviderKind::Anthropic).await;
        mock.set_default_for("claude-big", Behaviour::error(ErrorKind::Overloaded));
        mock.enqueue_for("claude-small", 1, Behaviour::error(ErrorKind::ServerError));
        let url = mock.url();
        let big = ExampleRequest::chat(ProviderKind::Anthropic, &url, "claude-big", "hi", false);
        let small =
            ExampleRequest::chat(ProviderKind::Anthropic, &url, "claude-small", "hi", false);
        assert_eq!(big.send().await.expect("r").status.as_u16(), 529);
        assert_eq!(small.send().await.expect("r").status.as_u16(), 500);
        assert_eq!(small.send().await.expect("r").status.as_u16(), 200);
        assert_eq!(big.send().await.expect("r").status.as_u16(), 529);
        assert_eq!(mock.count_status(529), 2);
        assert_eq!(mock.count_status(200), 1);
        let statuses: Vec<_> = mock.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [Some(529), Some(500), Some(200), Some(529)]);

        // The same through the control API, for a mock run as a process.
        let r = client::post_json(
            &format!("{url}/__mock/default"),
            &[],
            &serde_json::json!({"model": "claude-big", "fault": {"type": "none"}}),
        )
        .await
        .expect("control");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(big.send().await.expect("r").status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn requests_per_minute_answers_the_providers_429_with_an_exact_hint() {
    bounded(async {
        for kind in ProviderKind::ALL {
            let config = MockConfig {
                requests_per_minute: Some(2),
                ..MockConfig::default()
            };
            let mock = MockProvider::start(kind, config).await.expect("mock");
            mock.enqueue(5, Behaviour::error(ErrorKind::ServerError));
            let req = example(kind, &mock, false);
            let statuses: Vec<u16> = {
                let mut v = Vec::new();
                for _ in 0..3 {
                    v.push(req.send().await.expect("r").status.as_u16());
                }
                v
            };
            // Over the limit the rate limit wins, and no script step is used.
            assert_eq!(statuses, [500, 500, 429], "{kind}");
            assert_eq!(mock.pending_steps(), 3, "{kind}");
            if kind == ProviderKind::OpenAi {
                let r = req.send().await.expect("r");
                let secs: u64 = r
                    .header("retry-after")
                    .expect("hint")
                    .parse()
                    .expect("secs");
                assert!((55..=60).contains(&secs), "{secs}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn keeps_only_the_most_recent_requests_but_counts_all() {
    bounded(async {
        let config = MockConfig {
            keep_requests: 2,
            ..MockConfig::default()
        };
        let mock = MockProvider::start(ProviderKind::OpenAi, config)
            .await
            .expect("mock");
        let req = example(ProviderKind::OpenAi, &mock, false);
        for _ in 0..5 {
            req.send().await.expect("r");
        }
        assert_eq!(mock.request_count(), 5);
        let seqs: Vec<u64> = mock.requests().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [4, 5]);
    })
    .await;
}

#[tokio::test]
async fn tls_mock_serves_https_with_its_own_ca() {
    use sluice_tests::mock::tls::client_config;
    bounded(async {
        let mock = MockProvider::start_tls(ProviderKind::Anthropic, MockConfig::default())
            .await
            .expect("tls mock");
        assert!(mock.url().starts_with("https://127.0.0.1:"));
        assert!(
            mock.ca_pem()
                .expect("pem")
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let ca = mock.ca_der().expect("der").clone();
        let req = ExampleRequest::chat(ProviderKind::Anthropic, &mock.url(), "c", "hi", true);
        let headers: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (proto, alpn) in [(Proto::Http1, &b"http/1.1"[..]), (Proto::H2c, &b"h2"[..])] {
            let config = client_config(&ca, &[alpn]).expect("client config");
            let s = client::open_tls(
                config,
                proto,
                Method::POST,
                &req.url,
                &headers,
                req.body.to_string(),
            )
            .await
            .expect("https response");
            assert_eq!(s.status, StatusCode::OK);
            let (body, err) = s.read_all().await;
            assert!(err.is_none());
            assert!(String::from_utf8_lossy(&body).contains("event: message_stop"));
        }
        let versions: Vec<_> = mock.requests().iter().map(|r| r.version).collect();
        assert_eq!(versions, [http::Version::HTTP_11, http::Version::HTTP_2]);

        // A client that does not trust the mock's CA fails the handshake.
        let other = MockProvider::start_tls(ProviderKind::OpenAi, MockConfig::default())
            .await
            .expect("another tls mock");
        let wrong = client_config(other.ca_der().expect("der"), &[b"http/1.1"]).expect("config");
        let err = client::open_tls(wrong, Proto::Http1, Method::POST, &req.url, &headers, "")
            .await
            .err()
            .expect("untrusted certificate");
        assert!(matches!(err, client::ClientError::Tls(_)), "{err}");
        // Plain HTTP to the TLS port gets no HTTP answer.
        let plain = req.url.replace("https://", "http://");
        assert!(
            client::send(Method::POST, &plain, &headers, "")
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test]
async fn many_concurrent_calls_are_all_answered_and_counted() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        mock.set_default(Behaviour::ok().with_chunk_delay(Duration::from_millis(1)));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let req =
                ExampleRequest::chat(ProviderKind::OpenAi, &mock.url(), "m", "hi", i % 2 == 0);
            tasks.push(tokio::spawn(
                async move { req.send().await.map(|r| r.status) },
            ));
        }
        for t in tasks {
            assert_eq!(t.await.expect("join").expect("response"), StatusCode::OK);
        }
        assert_eq!(mock.request_count(), 200);
        assert_eq!(mock.count_status(200), 200);
        // Pacing tasks finish just after their last frame reaches the client.
        while mock.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(mock.aborted_responses(), 0);
    })
    .await;
}
