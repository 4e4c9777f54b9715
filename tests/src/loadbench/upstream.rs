//! The fast upstream: canned OpenAI answers with no JSON parsing, so that it
//! is never the bottleneck. The `sluice_tests::mock` servers record every
//! request behind a mutex and parse every body, which is right for tests and
//! wrong for a load test, so the benchmark has its own.
//!
//! - non-stream: one fixed `chat.completion` body with `usage`;
//! - stream (`"stream":true` in the body): the role chunk and the first
//!   content chunk at once, the rest after `stream_gap` so that time to first
//!   byte measures the first token and not the whole stream;
//! - hold (`bench-hold` in the body): the first content chunk at once, then
//!   one chunk a second until `hold` has passed or the caller leaves — the
//!   slow streams of the RSS measurement.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::net::{announce, exit_when_parent_leaves};

pub const CHAT_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;

const CHUNK: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[{"index":0,"delta":"#;

fn chunk(delta: &str, finish: &str) -> String {
    format!("data: {CHUNK}{delta},\"finish_reason\":{finish}}}]}}\n\n")
}

fn stream_head() -> Bytes {
    let mut s = chunk(r#"{"role":"assistant","content":""}"#, "null");
    s.push_str(&chunk(r#"{"content":"Hello"}"#, "null"));
    Bytes::from(s)
}

fn stream_tail() -> Bytes {
    let mut s = chunk(r#"{"content":" from the"}"#, "null");
    s.push_str(&chunk(r#"{"content":" benchmark."}"#, "null"));
    s.push_str(&chunk("{}", r#""stop""#));
    s.push_str(concat!(
        r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-model","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}"#,
        "\n\ndata: [DONE]\n\n"
    ));
    Bytes::from(s)
}

#[derive(Clone, Copy)]
pub struct Shape {
    pub stream_gap: Duration,
    pub hold: Duration,
}

type Body = Either<Full<Bytes>, Channel<Bytes>>;

/// Serves until the parent process goes away (stdin closes).
pub async fn serve(listen: SocketAddr, shape: Shape) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    announce(listener.local_addr()?)?;
    tokio::spawn(exit_when_parent_leaves());
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, shape));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn answer(req: Request<Incoming>, shape: Shape) -> Result<Response<Body>, Infallible> {
    // Read the whole request, as a real provider does before answering.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let hold = contains(&body, b"bench-hold");
    let stream = hold || contains(&body, b"\"stream\":true");
    if !stream {
        let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(
            CHAT_BODY.as_bytes(),
        ))));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    let (mut tx, body) = Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        if tx.send(Frame::data(stream_head())).await.is_err() {
            return;
        }
        if hold {
            let until = tokio::time::Instant::now() + shape.hold;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let beat = Bytes::from(chunk(r#"{"content":"."}"#, "null"));
                if tx.send(Frame::data(beat)).await.is_err() {
                    return;
                }
            }
        } else if !shape.stream_gap.is_zero() {
            tokio::time::sleep(shape.stream_gap).await;
        }
        let _ = tx.send(Frame::data(stream_tail())).await;
    });
    let mut resp = Response::new(Either::Right(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(resp)
}

/// The upstream's own runtime: `threads` workers.
pub fn run(listen: SocketAddr, shape: Shape, threads: usize) -> anyhow::Result<()> {
    super::runtime(threads)?.block_on(serve(listen, shape))
}
