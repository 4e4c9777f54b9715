//! The `sluice-sidecar` binary: flags, logging, configuration source, the
//! two servers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice_sidecar::attempt::Bounds;
use sluice_sidecar::ingress::Limits;
use sluice_sidecar::{run, standalone};

/// Sluice sidecar: an OpenAI-compatible LLM gateway on 127.0.0.1.
#[derive(Parser, Debug)]
#[command(name = "sluice-sidecar", version)]
struct Flags {
    /// The app-facing API. Loopback only unless --allow-non-loopback.
    #[arg(long, default_value = "127.0.0.1:4100")]
    listen: SocketAddr,
    /// Allows --listen on a non-loopback address.
    #[arg(long)]
    allow_non_loopback: bool,
    /// Admin endpoints: /healthz, /readyz, /metrics, /debug/config.
    #[arg(long, default_value = "127.0.0.1:4101")]
    admin: SocketAddr,
    /// Standalone mode: Provider/LLMRoute/Budget YAML, reloaded on change.
    #[arg(long, conflicts_with = "operator")]
    config: Option<PathBuf>,
    /// Cluster mode: the operator's config distribution URL.
    #[arg(long, requires_all = ["ca_file", "token_file"])]
    operator: Option<String>,
    /// CA certificate of the operator (cluster mode).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Projected ServiceAccount token (cluster mode).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where the last good snapshot is kept (cluster mode; mode 0600).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Extra PEM CA certificates trusted for provider endpoints.
    #[arg(long)]
    extra_ca_file: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_request_bytes: usize,
    /// Largest non-stream upstream response body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_response_bytes: usize,
    /// Longest upstream SSE line or event, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_sse_line_bytes: usize,
    /// Most messages in one chat request.
    #[arg(long, default_value_t = 4096)]
    max_messages: usize,
    /// Deepest JSON nesting accepted in a request.
    #[arg(long, default_value_t = 64)]
    max_json_depth: usize,
    /// How long SIGTERM waits for requests in flight, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// How often the --config file is checked for changes, milliseconds.
    #[arg(long, default_value_t = 1000)]
    reload_interval_ms: u64,
    /// Runtime worker threads. One serves ≈40 k req/s of pass-through on
    /// one core, far beyond one pod's LLM traffic, and costs 15–20 % less
    /// CPU a request than one worker per core (no work stealing or
    /// wake-ups between workers), and a sidecar under a one-CPU limit
    /// cannot use two anyway.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let flags = Flags::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(flags.workers))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sluice-sidecar stopped");
            eprintln!("sluice-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    if !flags.listen.ip().is_loopback() && !flags.allow_non_loopback {
        anyhow::bail!(
            "--listen {} is not a loopback address; the app-facing API is for the pod's own containers (add --allow-non-loopback to mean it)",
            flags.listen
        );
    }
    let stop = shutdown_signal().map_err(|e| anyhow::anyhow!("cannot watch for SIGTERM: {e}"))?;
    let path = match (&flags.config, &flags.operator) {
        (Some(path), _) => path.clone(),
        (None, Some(_)) => PathBuf::new(),
        (None, None) => {
            anyhow::bail!("give --config FILE (standalone) or --operator URL (cluster)")
        }
    };
    let mut opts = run::Options::new(path, flags.listen, flags.admin);
    opts.extra_ca = flags.extra_ca_file.clone();
    opts.limits = Limits {
        max_body: flags.max_request_bytes,
        max_messages: flags.max_messages,
        max_depth: flags.max_json_depth,
    };
    opts.bounds = Bounds {
        max_response: flags.max_response_bytes,
        max_line: flags.max_sse_line_bytes,
    };
    opts.reload_interval = Duration::from_millis(flags.reload_interval_ms.max(50));
    opts.grace = Duration::from_millis(flags.shutdown_grace_ms);
    let started = match (&flags.operator, &flags.ca_file, &flags.token_file) {
        (Some(operator), Some(ca_file), Some(token_file)) => {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let cluster = sluice_sidecar::cluster::ClusterOptions {
                operator: operator.clone(),
                ca_file: ca_file.clone(),
                token_file: token_file.clone(),
                state_dir: flags
                    .state_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/var/run/sluice/state")),
                namespace: env("POD_NAMESPACE").ok_or_else(|| {
                    anyhow::anyhow!("cluster mode needs POD_NAMESPACE (the downward API sets it)")
                })?,
                pod: env("POD_NAME").ok_or_else(|| {
                    anyhow::anyhow!("cluster mode needs POD_NAME (the downward API sets it)")
                })?,
            };
            run::cluster(opts, cluster).await
        }
        _ => run::standalone(opts, standalone::process_env).await,
    };
    let running = started.map_err(|e| {
            if let run::StartError::Config(e) = &e {
                for reason in &e.reasons {
                    tracing::error!(path = %e.path.display(), reason = %reason, "configuration refused");
                }
            }
            anyhow::anyhow!("{e}")
        })?;
    stop.await;
    tracing::info!(
        grace_ms = flags.shutdown_grace_ms,
        "shutting down: draining requests in flight"
    );
    running
        .shutdown(Duration::from_millis(flags.shutdown_grace_ms))
        .await;
    Ok(())
}

/// Registers for SIGTERM and SIGINT now, before serving, so a signal that
/// comes early is not lost to its default action; resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Ctrl-C, where there are no Unix signals.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
