//! A Kubernetes API emulator for tests (DESIGN.md, "Testing strategy"; the
//! crate README says what it covers): an HTTPS server on loopback speaking
//! enough of the real API — discovery, CRUD, patches, server-side apply, the
//! status subresource, watch, CRDs with schema and CEL validation, Tables,
//! TokenReview and mutating webhooks — that the real `kubectl` and kube-rs
//! clients work against it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_tests::emulator::EmulatorError> {
//! use sluice_tests::emulator::{Emulator, EmulatorOptions};
//! let emulator = Emulator::start(EmulatorOptions::default()).await?;
//! emulator.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! // KUBECONFIG=/tmp/kubeconfig kubectl get ns
//! # Ok(()) }
//! ```
//!
//! It serves HTTPS by default, with a CA made at start (see [`tls`]) written
//! into the kubeconfig: kubectl and kube-rs then verify it and send the
//! kubeconfig's bearer token, and every request must carry a token the
//! emulator issued (no RBAC is enforced beyond that). With
//! [`EmulatorOptions::plain_http`] it serves HTTP instead, where client-go
//! sends no token, so requests without one act as the admin.

pub mod apply;
mod builtin;
mod crd;
pub mod error;
mod handlers;
mod openapi;
pub mod patch;
mod protobuf;
pub mod registry;
mod routes;
pub mod schema;
pub mod selector;
mod server;
pub mod store;
pub mod table;
pub mod tls;
pub mod tokens;
mod watcher;
mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use self::server::Shared;

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The serving certificate could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The kubeconfig could not be written.
    #[error("writing kubeconfig: {0}")]
    Kubeconfig(#[from] std::io::Error),
}

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Addresses of webhook services, keyed `name.namespace`: a webhook
    /// configured with `clientConfig.service` is called there over https,
    /// its certificate checked against `caBundle` for `name.namespace.svc`.
    pub webhook_services: BTreeMap<String, SocketAddr>,
    /// Serve plain HTTP instead of HTTPS (requests without a token are then
    /// accepted as the admin).
    pub plain_http: bool,
    /// How many past events watches can resume from; older resourceVersions
    /// get 410 Expired. Small values let tests exercise re-listing.
    pub watch_history: usize,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_services: BTreeMap::new(),
            plain_http: false,
            watch_history: store::DEFAULT_HISTORY,
        }
    }
}

/// A running emulator; stops when dropped (or on [`Emulator::shutdown`]).
#[derive(Debug)]
pub struct Emulator {
    address: SocketAddr,
    admin_token: String,
    ca_pem: Option<String>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(options: EmulatorOptions) -> Result<Self, EmulatorError> {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: options.listen,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: options.listen,
                source,
            })?;
        let admin_token = format!(
            "emu-admin.{:016x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        );
        let (identity, acceptor) = if options.plain_http {
            (None, None)
        } else {
            let identity = tls::ServingIdentity::generate()?;
            let acceptor = identity.acceptor()?;
            (Some(identity), Some(acceptor))
        };
        let scheme = if options.plain_http { "http" } else { "https" };
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            format!("{scheme}://{address}"),
            &admin_token,
            options.webhook_services,
            stopped,
            !options.plain_http,
            options.watch_history,
        ));
        let task = tokio::spawn(server::serve(listener, shared.clone(), acceptor));
        Ok(Self {
            address,
            admin_token,
            ca_pem: identity.map(|i| i.ca_pem),
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `https://127.0.0.1:PORT` (or `http://` with `plain_http`).
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bearer token of the `admin` user (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The CA certificate (PEM) that signed the serving certificate, or
    /// `None` with `plain_http`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A kubeconfig for this emulator: cluster (with its CA), `admin` user
    /// with the admin token, context `emulator` with namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        use base64::Engine as _;
        let ca = match &self.ca_pem {
            Some(pem) => format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            ),
            None => String::new(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {url}\n{ca}contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: admin\n    namespace: default\ncurrent-context: emulator\nusers:\n- name: admin\n  user:\n    token: {token}\n",
            url = self.url(),
            token = self.admin_token
        )
    }

    /// Writes [`Emulator::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), EmulatorError> {
        std::fs::write(path, self.kubeconfig_yaml())?;
        Ok(())
    }

    /// Issues a token for service account `service_account` in `namespace`,
    /// valid for `audiences` (none: the API server's own). TokenReviews
    /// answer for it; it also authenticates API requests (no RBAC is
    /// enforced). Over HTTP: `POST /emulator/v1/tokens` with
    /// `{"namespace", "serviceAccount", "audiences", "pod"?}` answers
    /// `{"token"}`.
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) -> String {
        let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
        routes::issue_token(&self.shared, namespace, service_account, &audiences, None)
            .unwrap_or_default()
    }

    /// Issues a token bound to pod `pod` (as a projected service-account
    /// token is): TokenReviews name the pod in `user.extra`
    /// (`authentication.kubernetes.io/pod-name`, `pod-uid`) and stop
    /// authenticating it once the pod is deleted. Fails if the pod does not
    /// exist.
    pub fn issue_pod_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audiences: &[&str],
    ) -> Result<String, error::ApiError> {
        let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
        routes::issue_token(
            &self.shared,
            namespace,
            service_account,
            &audiences,
            Some(pod),
        )
    }

    /// Stops serving and waits for the accept loop to end. Open watches and
    /// connections are closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Receivers may already be gone; either way the server stops.
        let _ = self.stop.send(true);
    }
}
