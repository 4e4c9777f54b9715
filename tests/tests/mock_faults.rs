//! Transport faults and scripting, the same for every mock kind: scripted
//! sequences, latency, hangs, closed connections, stalled and cut bodies,
//! paced chunks, malformed 200s, request recording, h2c, the control API and
//! the `mock-provider` binary.

use std::future::Future;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use sluice_tests::mock::client::{self, ExampleRequest, Proto};
use sluice_tests::mock::{
    Behaviour, ErrorKind, Fault, MockConfig, MockHandle, MockProvider, ProviderKind,
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
async fn latency_delays_headers() {
    bounded(async {
        let mock = start(ProviderKind::Anthropic).await;
        mock.enqueue(1, Behaviour::ok().with_latency(Duration::from_millis(200)));
        let t = Instant::now();
        let r = example(ProviderKind::Anthropic, &mock, false)
            .send()
            .await
            .expect("response");
        assert_eq!(r.status, StatusCode::OK);
        assert!(t.elapsed() >= Duration::from_millis(200));
    })
    .await;
}

#[tokio::test]
async fn hang_before_headers_never_answers() {
    bounded(async {
        let mock = start(ProviderKind::Gemini).await;
        mock.set_default(Fault::HangBeforeHeaders);
        let req = example(ProviderKind::Gemini, &mock, false);
        let r = tokio::time::timeout(Duration::from_millis(300), req.send()).await;
        assert!(r.is_err(), "no response headers within 300 ms");
        assert_eq!(mock.request_count(), 1);
        // The client gave up (its connection dropped with the timed-out
        // future): the mock sees the request abandoned.
        assert!(mock.wait_for_aborts(1, Duration::from_secs(5)).await);
        assert_eq!(mock.in_flight(), 0);
        assert_eq!(mock.requests()[0].status, None);
    })
    .await;
}

#[tokio::test]
async fn close_before_headers_sends_no_response() {
    bounded(async {
        for kind in ProviderKind::ALL {
            let mock = start(kind).await;
            mock.enqueue(1, Fault::CloseBeforeHeaders);
            let err = example(kind, &mock, true).send().await;
            assert!(
                err.is_err(),
                "{kind}: expected a broken connection, got {err:?}"
            );
            // The next request is answered normally.
            let ok = example(kind, &mock, false).send().await.expect("response");
            assert_eq!(ok.status, StatusCode::OK, "{kind}");
        }
    })
    .await;
}

#[tokio::test]
async fn stall_after_headers_then_client_gives_up_is_counted() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        mock.set_default(Fault::StallAfter { after: 0 });
        let mut s = example(ProviderKind::OpenAi, &mock, true)
            .open(Proto::Http1)
            .await
            .expect("headers arrive");
        assert_eq!(s.status, StatusCode::OK);
        assert_eq!(
            s.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        let first = tokio::time::timeout(Duration::from_millis(300), s.next_chunk()).await;
        assert!(first.is_err(), "no token within 300 ms");
        assert_eq!(mock.in_flight(), 1);
        drop(s);
        assert!(mock.wait_for_aborts(1, Duration::from_secs(5)).await);
        assert_eq!(mock.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn stall_mid_stream_sends_the_first_frames_only() {
    bounded(async {
        let mock = start(ProviderKind::Anthropic).await;
        mock.set_default(Fault::StallAfter { after: 3 });
        let mut s = example(ProviderKind::Anthropic, &mock, true)
            .open(Proto::Http1)
            .await
            .expect("headers");
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), s.next_chunk()).await {
                Ok(Some(Ok(c))) => got.extend_from_slice(&c),
                Ok(other) => panic!("stream ended instead of stalling: {other:?}"),
                Err(_) => break,
            }
        }
        let events = client::sse_events(&String::from_utf8_lossy(&got));
        let names: Vec<_> = events.iter().filter_map(|e| e.event.clone()).collect();
        assert_eq!(names, ["message_start", "content_block_start", "ping"]);
    })
    .await;
}

#[tokio::test]
async fn cut_after_n_frames_breaks_the_stream_on_every_kind() {
    bounded(async {
        for kind in ProviderKind::ALL {
            let mock = start(kind).await;
            let full = example(kind, &mock, true)
                .send()
                .await
                .expect("full stream");
            mock.set_default(Fault::CutAfter { after: 2 });
            let s = example(kind, &mock, true)
                .open(Proto::Http1)
                .await
                .expect("headers");
            assert_eq!(s.status, StatusCode::OK, "{kind}");
            let (got, err) = s.read_all().await;
            assert!(err.is_some(), "{kind}: the body must end in an error");
            assert!(!got.is_empty() && got.len() < full.body.len(), "{kind}");
            let frames = if kind == ProviderKind::Bedrock {
                sluice_tests::mock::eventstream::decode_all(&got)
                    .expect("whole frames")
                    .len()
            } else {
                client::sse_events(&String::from_utf8_lossy(&got)).len()
            };
            assert_eq!(frames, 2, "{kind}: exactly the first two frames");
            if kind == ProviderKind::OpenAi {
                assert!(!String::from_utf8_lossy(&got).contains("[DONE]"));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn cut_non_stream_body_is_short_of_its_content_length() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        mock.set_default(Fault::CutAfter { after: 1 });
        let s = example(ProviderKind::OpenAi, &mock, false)
            .open(Proto::Http1)
            .await
            .expect("headers");
        let declared: usize = s
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        let (got, err) = s.read_all().await;
        assert!(err.is_some());
        assert_eq!(got.len(), declared / 2);
    })
    .await;
}

#[tokio::test]
async fn chunk_delays_pace_the_stream() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        mock.set_default(
            Behaviour::ok()
                .with_first_chunk_delay(Duration::from_millis(150))
                .with_chunk_delay(Duration::from_millis(20)),
        );
        let t = Instant::now();
        let mut s = example(ProviderKind::OpenAi, &mock, true)
            .open(Proto::Http1)
            .await
            .expect("headers");
        let headers_at = t.elapsed();
        assert!(
            headers_at < Duration::from_millis(150),
            "headers come first"
        );
        s.next_chunk().await.expect("a frame").expect("ok");
        let first_at = t.elapsed();
        assert!(first_at >= Duration::from_millis(150));
        let mut frames = 1;
        while let Some(c) = s.next_chunk().await {
            c.expect("ok");
            frames += 1;
        }
        // Every later frame waited its 20 ms.
        assert!(t.elapsed() >= first_at + Duration::from_millis(20 * (frames - 1)));
    })
    .await;
}

#[tokio::test]
async fn html_and_invalid_json_and_error_in_200() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        let req = example(ProviderKind::OpenAi, &mock, false);

        mock.enqueue(1, Fault::Html { status: 200 });
        let r = req.send().await.expect("response");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.text().starts_with("<html>"));

        mock.enqueue(1, Fault::InvalidJson);
        let r = req.send().await.expect("response");
        assert_eq!(r.status, StatusCode::OK);
        assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());

        mock.enqueue(1, Fault::ErrorIn200(ErrorKind::ServerError));
        let r = req.send().await.expect("response");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["error"]["type"], "server_error");

        mock.enqueue(1, Fault::InvalidJson);
        let r = example(ProviderKind::OpenAi, &mock, true)
            .send()
            .await
            .expect("response");
        let events = client::sse_events(&r.text());
        assert!(events[0].json().is_null(), "first event's data is not JSON");
    })
    .await;
}

#[tokio::test]
async fn invalid_event_stream_frame_fails_its_crc() {
    bounded(async {
        let mock = start(ProviderKind::Bedrock).await;
        mock.set_default(Fault::InvalidJson);
        let r = example(ProviderKind::Bedrock, &mock, true)
            .send()
            .await
            .expect("response");
        assert_eq!(r.status, StatusCode::OK);
        let err = sluice_tests::mock::eventstream::decode(&r.body).expect_err("corrupt");
        assert!(matches!(
            err,
            sluice_tests::mock::eventstream::DecodeError::MessageCrc { .. }
        ));
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
                assert!((59..=60).contains(&secs), "{secs}");
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
async fn refused_and_not_tls_endpoints_fail_below_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let addr = sluice_tests::mock::net::refusing_addr()
            .await
            .expect("addr");
        let err = tokio::net::TcpStream::connect(addr)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

        let server = sluice_tests::mock::net::NotTlsServer::start()
            .await
            .expect("server");
        assert!(server.url().starts_with("https://127.0.0.1:"));
        let mut s = tokio::net::TcpStream::connect(server.addr())
            .await
            .expect("tcp connects");
        // The start of a TLS ClientHello record.
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x2f, 0x01])
            .await
            .expect("write");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply, sluice_tests::mock::net::NOT_TLS_REPLY);
        assert_ne!(reply[0], 0x16, "not a TLS handshake record");
        assert_eq!(server.connections(), 1);
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
