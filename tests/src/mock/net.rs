//! Endpoints that fail below HTTP, for the `connect` failure class: an
//! address that refuses connections, and a server that accepts TCP but
//! answers a TLS handshake with plain HTTP (what a misconfigured proxy or a
//! plaintext port does), so a TLS client fails during the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::MockError;

/// A loopback address nothing listens on (bound, then released), so a
/// connection to it is refused at once.
pub async fn refusing_addr() -> Result<SocketAddr, MockError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let listener = TcpListener::bind(any)
        .await
        .map_err(|source| MockError::Bind { addr: any, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MockError::Bind { addr: any, source })?;
    drop(listener);
    Ok(addr)
}

/// The reply to whatever a client sends first: a plaintext HTTP 400, which a
/// TLS client reads as a corrupt record and aborts the handshake on.
pub const NOT_TLS_REPLY: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nconnection: close\r\n\r\nBad Request";

/// A server on loopback that breaks every TLS handshake. Stops on drop.
pub struct NotTlsServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl NotTlsServer {
    /// Start on `127.0.0.1` on a free port.
    pub async fn start() -> Result<Self, MockError> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener = TcpListener::bind(any)
            .await
            .map_err(|source| MockError::Bind { addr: any, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MockError::Bind { addr: any, source })?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Wait for the ClientHello (or anything), answer in
                    // plaintext and close.
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(NOT_TLS_REPLY).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`, the URL a provider endpoint would name.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for NotTlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
