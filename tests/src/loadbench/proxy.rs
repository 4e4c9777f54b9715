//! The bare pass-through proxy, the floor the sidecar is measured against:
//! hyper server → hyper-util pooled client → the upstream, bodies streamed
//! frame by frame both ways, nothing parsed, nothing logged. What one more
//! loopback hop costs, with the same runtime shape as the sidecar's
//! default (one worker thread: `sluice-sidecar --workers`) and
//! `TCP_NODELAY` on both sides.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::net::{announce, exit_when_parent_leaves};

type Out = BoxBody<Bytes, hyper::Error>;

async fn forward(
    req: Request<Incoming>,
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Out>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match format!("http://{upstream}{path}").parse::<Uri>() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return Ok(bad_gateway()),
    }
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(_) => Ok(bad_gateway()),
    }
}

fn bad_gateway() -> Response<Out> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

pub async fn serve(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    announce(listener.local_addr()?)?;
    tokio::spawn(exit_when_parent_leaves());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(req, client.clone(), upstream));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

pub fn run(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    super::runtime(1)?.block_on(serve(listen, upstream))
}
