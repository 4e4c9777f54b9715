//! Transport faults, the same for every mock kind: latency, hangs, closed
//! connections, stalled and cut bodies, paced chunks, malformed 200s, chosen
//! headers and raw answers, and endpoints that fail below HTTP.

use std::future::Future;
use std::time::{Duration, Instant};

use http::StatusCode;
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
        assert!(mock.wait_for_requests(1, Duration::from_secs(5)).await);
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
                .with_first_chunk_delay(Duration::from_millis(400))
                .with_chunk_delay(Duration::from_millis(20)),
        );
        let t = Instant::now();
        let mut s = example(ProviderKind::OpenAi, &mock, true)
            .open(Proto::Http1)
            .await
            .expect("headers");
        // Headers are not held back by the time to first token (400 ms is a
        // wide margin, not a performance bound).
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "headers come first"
        );
        let mut body = Vec::new();
        while let Some(c) = s.next_chunk().await {
            if body.is_empty() {
                assert!(
                    t.elapsed() >= Duration::from_millis(400),
                    "first token waited"
                );
            }
            body.extend_from_slice(&c.expect("ok"));
        }
        // The first frame waited 400 ms and every later one 20 ms more.
        let frames = client::sse_events(&String::from_utf8_lossy(&body)).len();
        let floor = 400 + 20 * (frames as u64 - 1);
        assert!(t.elapsed() >= Duration::from_millis(floor));
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
async fn chosen_headers_and_raw_answers() {
    bounded(async {
        let mock = start(ProviderKind::OpenAi).await;
        let req = example(ProviderKind::OpenAi, &mock, false);
        mock.enqueue(
            1,
            Behaviour::error(ErrorKind::RateLimited(
                sluice_tests::mock::RateLimit::default(),
            ))
            .with_header("x-ratelimit-reset-requests", "17.5s")
            .with_header("retry-after", "3"),
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.header("x-ratelimit-reset-requests"), Some("17.5s"));
        assert_eq!(r.header("retry-after"), Some("3"));
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");

        mock.enqueue(
            1,
            Fault::Raw {
                status: 502,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: "upstream connect error or disconnect/reset before headers".into(),
            },
        );
        let r = req.send().await.expect("r");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert!(r.text().starts_with("upstream connect error"));
    })
    .await;
}
