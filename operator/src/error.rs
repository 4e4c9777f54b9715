//! The operator's error type: what can go wrong in its I/O.

/// Errors of the operator's I/O (the pure modules do not fail).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("leadership lost: {0}")]
    LeaseLost(String),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    NotReady(String),
    #[error("the operator task ended: {0}")]
    Stopped(String),
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Tls(e.to_string())
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Error::Tls(e.to_string())
    }
}
