//! Starting a standalone sidecar: load the file, build the shared state,
//! bind both listeners, start the servers and the file watcher. Used by
//! `main` and by black-box tests (which bind port 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_crds::load::Admission;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::app::App;
use crate::attempt::Bounds;
use crate::config::ConfigHandle;
use crate::egress::{Egress, EgressError};
use crate::ingress::Limits;
use crate::server::{self, Role};
use crate::standalone::{self, LoadError};

/// Everything a standalone sidecar needs to start.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub extra_ca: Option<PathBuf>,
    pub limits: Limits,
    pub bounds: Bounds,
    pub reload_interval: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    /// Whether the access log is written (to stderr). In-process tests
    /// turn it off: its writer thread's stderr is not the test's captured
    /// output.
    pub access_log: bool,
}

impl Options {
    /// Defaults for `config`, on the given addresses.
    pub fn new(config: PathBuf, listen: SocketAddr, admin: SocketAddr) -> Self {
        Self {
            listen,
            admin,
            config,
            extra_ca: None,
            limits: Limits::default(),
            bounds: Bounds {
                max_response: 16 << 20,
                max_line: 1 << 20,
            },
            reload_interval: Duration::from_secs(1),
            grace: Duration::from_secs(10),
            access_log: true,
        }
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("cluster mode: {0}")]
    Cluster(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running sidecar; dropping it stops the servers and the watcher at
/// once, [`Running::shutdown`] drains them first.
pub struct Running {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    stop: tokio::sync::watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (at most `grace`),
    /// then stops everything.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        for server in std::mem::take(&mut self.servers) {
            let _ = tokio::time::timeout(grace + Duration::from_secs(1), server).await;
        }
        // The last requests' access log lines, before the process exits.
        let app = self.app.clone();
        let _ =
            tokio::task::spawn_blocking(move || app.access_log.flush(Duration::from_secs(2))).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.servers) {
            t.abort();
        }
    }
}

fn access_log(opts: &Options, metrics: &crate::metrics::Metrics) -> AccessLog {
    if opts.access_log {
        AccessLog::start(metrics.access_log_dropped())
    } else {
        AccessLog::disabled()
    }
}

/// Loads `opts.config` (credentials through `env`) and starts serving.
pub async fn standalone<E>(opts: Options, env: E) -> Result<Running, StartError>
where
    E: Fn(&str) -> Option<String> + Send + 'static,
{
    let admission = Admission::new();
    let bytes = std::fs::read(&opts.config).map_err(|e| LoadError {
        path: opts.config.clone(),
        reasons: vec![format!("cannot read: {e}")],
    })?;
    let config = standalone::load_bytes(&admission, &bytes, &env).map_err(|reasons| LoadError {
        path: opts.config.clone(),
        reasons,
    })?;
    tracing::info!(path = %opts.config.display(), version = %config.version, routes = config.routes.len(), providers = config.providers.len(), "configuration loaded");
    let handle = ConfigHandle::default();
    handle.set(config);
    // Standalone budgets keep their own ledgers; the totals are only a sink.
    let mut app = App::new(
        handle.clone(),
        Egress::new(opts.extra_ca.as_deref())?,
        opts.limits,
        opts.bounds,
        Arc::new(crate::metering::Totals::default()),
    );
    app.access_log = access_log(&opts, &app.metrics);
    let app = Arc::new(app);
    let tasks = vec![tokio::spawn(standalone::watch(
        admission,
        opts.config.clone(),
        bytes,
        handle,
        opts.reload_interval,
        env,
    ))];
    serve(&opts, app, tasks).await
}

/// Binds both listeners and serves `app`; `tasks` stop with the sidecar.
async fn serve(
    opts: &Options,
    app: Arc<App>,
    tasks: Vec<JoinHandle<()>>,
) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let api = bind(opts.listen).await?;
    let admin = bind(opts.admin).await?;
    let (api_addr, admin_addr) = (
        api.local_addr().unwrap_or(opts.listen),
        admin.local_addr().unwrap_or(opts.admin),
    );
    tracing::info!(listen = %api_addr, admin = %admin_addr, "sluice-sidecar serving");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let servers = vec![
        tokio::spawn(server::serve(
            api,
            app.clone(),
            Role::Api,
            stopped.clone(),
            opts.grace,
        )),
        tokio::spawn(server::serve(
            admin,
            app.clone(),
            Role::Admin,
            stopped,
            opts.grace,
        )),
    ];
    Ok(Running {
        api: api_addr,
        admin: admin_addr,
        app,
        stop,
        servers,
        tasks,
    })
}

/// Applies operator snapshots to the shared configuration.
struct ClusterRuntime {
    handle: ConfigHandle,
    app: std::sync::Weak<App>,
}

impl crate::cluster::Runtime for ClusterRuntime {
    fn apply(&self, snapshot: &sluice_crds::snapshot::Snapshot) -> Result<(), String> {
        // `env` credentials name the sidecar's own environment.
        let mut snapshot = snapshot.clone();
        for p in &mut snapshot.providers {
            if p.credential.is_none()
                && let Some(var) = p.spec.credentials.as_ref().and_then(|c| c.env.as_ref())
            {
                match standalone::process_env(var) {
                    Some(v) => p.credential = Some(sluice_crds::snapshot::Credential::new(v)),
                    None => {
                        return Err(format!(
                            "provider {}: environment variable {var} is not set",
                            p.name
                        ));
                    }
                }
            }
        }
        let config = crate::config::Config::try_from(&snapshot).map_err(|e| e.0.join("; "))?;
        self.handle.set(config);
        if let Some(app) = self.app.upgrade() {
            app.renewal.applied();
        }
        Ok(())
    }

    fn allowance_low(&self) -> Vec<String> {
        self.handle
            .current()
            .map(|c| c.budgets.allowance_low())
            .unwrap_or_default()
    }

    fn release_surplus(&self, record: &dyn Fn(&str, &str, &sluice_crds::budget::Spend) -> u64) {
        if let Some(c) = self.handle.current() {
            c.budgets.release_surplus(record, jiff::Timestamp::now());
        }
    }

    fn health(
        &self,
    ) -> (
        Vec<sluice_crds::report::TargetHealth>,
        std::collections::BTreeMap<String, sluice_crds::route::FallbackRecord>,
    ) {
        match self.app.upgrade() {
            Some(app) => app.health.drain(),
            None => (Vec::new(), std::collections::BTreeMap::new()),
        }
    }
}

/// Serves from the last good snapshot in the state directory (if any) at
/// once, then follows the operator's stream and reports to it.
pub async fn cluster(
    opts: Options,
    cluster: crate::cluster::ClusterOptions,
) -> Result<Running, StartError> {
    let handle = ConfigHandle::default();
    let egress = Egress::new(opts.extra_ca.as_deref())?;
    let client = crate::cluster::client(&cluster.ca_file).map_err(StartError::Cluster)?;
    // The session is the spend sink of the app, and the app is what the
    // session reports on: built together.
    let mut session = None;
    let app = Arc::new_cyclic(|app| {
        let runtime = Arc::new(ClusterRuntime {
            handle: handle.clone(),
            app: app.clone(),
        });
        let s = crate::cluster::Session::new(cluster, runtime, instance_name);
        session = Some(s.clone());
        let mut app = App::new(handle.clone(), egress, opts.limits, opts.bounds, s.clone());
        app.renewal = crate::app::Renewal::cluster(s.report_now.clone());
        app.access_log = access_log(&opts, &app.metrics);
        app
    });
    let session = session.ok_or_else(|| StartError::Cluster("no session".into()))?;
    tracing::info!(
        operator = %session.options.operator,
        serving_saved = session.has_config(),
        "cluster mode"
    );
    let tasks = vec![
        tokio::spawn(crate::cluster::run_stream(session.clone(), client.clone())),
        tokio::spawn(crate::cluster::run_reports(session, client)),
    ];
    serve(&opts, app, tasks).await
}

/// A name for this sidecar instance, unique enough across restarts.
fn instance_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}
