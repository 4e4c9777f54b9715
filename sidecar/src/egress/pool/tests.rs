use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

/// A plain HTTP/1.1 upstream on loopback that counts the connections it
/// accepts, records each request's head, and answers every request with
/// `{}`; with `close_after`, it closes each connection that long after
/// its first answer, without saying so (as an upstream's idle timeout
/// does).
struct Upstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

/// The end of the head in `buf`, and the body length it announces.
fn head_of(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    Some((end, length))
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    close_after: Option<Duration>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some((end, length)) = head_of(&buf).filter(|(e, l)| buf.len() >= e + 4 + l) else {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4 + length);
        seen.lock().expect("heads").push(head);
        if sock.write_all(ANSWER).await.is_err() {
            return;
        }
        if let Some(after) = close_after {
            tokio::time::sleep(after).await;
            return;
        }
    }
}

impl Upstream {
    async fn start(close_after: Option<Duration>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().expect("addr")
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock, seen.clone(), close_after));
            }
        });
        Upstream {
            url,
            accepted,
            heads,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn connector() -> Connector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Connector::new(tls)
}

fn destination(url: &str) -> Destination {
    Destination::new(url.parse().expect("uri"), Arc::new(Origin::default()))
}

fn post() -> Request<Body> {
    let mut req = Request::new(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")));
    *req.method_mut() = http::Method::POST;
    req
}

/// Sends one request and reads the answer to its end, giving the
/// connection back as the egress does.
async fn call(c: &Connector, dest: &Destination) -> Result<Bytes, SendError> {
    let (resp, lease) = c.send(dest, post(), Duration::from_secs(2)).await?;
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    if let Some(lease) = lease {
        lease.give_back();
    }
    Ok(body)
}

/// Until `dest` holds `n` idle connections (a give-back may wait for
/// hyper's connection task), at most a second.
async fn idle(dest: &Destination, n: usize) {
    for _ in 0..100 {
        if dest.origin.idle_counts().0 == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let up = Upstream::start(None).await;
    let (c, dest) = (connector(), destination(&up.url));
    for _ in 0..5 {
        assert_eq!(&call(&c, &dest).await.expect("answer")[..], b"{}");
        idle(&dest, 1).await;
    }
    assert_eq!(up.accepted(), 1);
    assert_eq!(dest.origin.idle_counts(), (1, false));
    let heads = up.heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 5);
    let port = dest.uri.port_u16().expect("port");
    for head in heads {
        // Origin form and the Host header, as an HTTP/1.1 server expects.
        assert!(
            head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("host: 127.0.0.1:{port}")), "{head}");
    }
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_are_kept_for_reuse() {
    let up = Upstream::start(None).await;
    let (c, dest) = (Arc::new(connector()), Arc::new(destination(&up.url)));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (c, dest) = (c.clone(), dest.clone());
            tokio::spawn(async move { call(&c, &dest).await.map(|_| ()) })
        })
        .collect();
    for call in calls {
        call.await.expect("join").expect("answer");
    }
    let opened = up.accepted();
    assert!((1..=4).contains(&opened), "{opened}");
    idle(&dest, opened).await;
    assert_eq!(dest.origin.idle_counts().0, opened);
    for _ in 0..4 {
        call(&c, &dest).await.expect("answer");
        idle(&dest, opened).await;
    }
    assert_eq!(up.accepted(), opened, "later requests reused them");
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
    let up = Upstream::start(Some(Duration::from_millis(20))).await;
    let (c, dest) = (connector(), destination(&up.url));
    for _ in 0..3 {
        call(&c, &dest).await.expect("answer");
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert_eq!(up.accepted(), 3);
}

#[tokio::test]
async fn a_body_left_unread_does_not_return_its_connection() {
    let up = Upstream::start(None).await;
    let (c, dest) = (connector(), destination(&up.url));
    let (resp, lease) = c
        .send(&dest, post(), Duration::from_secs(2))
        .await
        .expect("answer");
    assert!(lease.is_some(), "HTTP/1 connections are leased");
    drop((resp, lease));
    assert_eq!(dest.origin.idle_counts(), (0, false));
    call(&c, &dest).await.expect("answer");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let c = connector();
    let dest = destination(&format!("http://{addr}/v1/chat/completions"));
    match c.send(&dest, post(), Duration::from_secs(2)).await {
        Err(SendError::Connect(reason)) => assert!(!reason.is_empty()),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("answered"),
    }
}

#[test]
fn host_is_the_one_hyper_util_would_send() {
    for (url, host) in [
        ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
        ("https://api.openai.com/v1", "api.openai.com"),
        ("https://api.example:443/v1", "api.example"),
        ("http://api.example:80/v1", "api.example"),
        ("http://api.example:443/v1", "api.example:443"),
        ("http://[::1]:9000/v1", "[::1]:9000"),
    ] {
        let uri = Uri::try_from(url).expect("uri");
        assert_eq!(
            host_header(&uri).as_ref().and_then(|h| h.to_str().ok()),
            Some(host),
            "{url}"
        );
    }
}

#[test]
fn origin_form_is_the_path_and_query() {
    for (url, target) in [
        ("http://h:1/v1/chat/completions", "/v1/chat/completions"),
        (
            "https://h/v1/x?api-version=2024-10-21",
            "/v1/x?api-version=2024-10-21",
        ),
        ("https://h", "/"),
    ] {
        assert_eq!(destination(url).origin_form.to_string(), target, "{url}");
    }
}

/// Sends one request and parks its connection without reading the body.
async fn call_and_park(c: &Connector, dest: &Destination, left: usize) {
    let (resp, lease) = c
        .send(dest, post(), Duration::from_secs(2))
        .await
        .expect("answer");
    lease.expect("leased").park(resp.into_body(), left);
}

#[tokio::test]
async fn a_parked_connection_is_reused_once_its_response_has_ended() {
    let up = Upstream::start(None).await;
    let (c, dest) = (connector(), destination(&up.url));
    call_and_park(&c, &dest, 1024).await;
    // Let the body arrive: the next request finds the response ended.
    tokio::time::sleep(Duration::from_millis(50)).await;
    call(&c, &dest).await.expect("answer");
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_parked_connection_with_more_to_read_than_allowed_is_closed() {
    let up = Upstream::start(None).await;
    let (c, dest) = (connector(), destination(&up.url));
    // The body is two bytes; one may be read.
    call_and_park(&c, &dest, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    call(&c, &dest).await.expect("answer");
    assert_eq!(up.accepted(), 2);
}
