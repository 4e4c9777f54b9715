//! `sluice-operator`: runs the operator, or prints the CRDs (`crds`).

use clap::{Parser, Subcommand};
use sluice_operator::options::Options;

#[derive(Parser)]
#[command(name = "sluice-operator", version, about = "Sluice operator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crds) = cli.command {
        let mut out = String::new();
        for (_, crd) in sluice_crds::crd::all() {
            out.push_str("---\n");
            out.push_str(&sluice_crds::crd::to_yaml(&crd)?);
        }
        print!("{out}");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let client = kube::Client::try_default().await?;
    let mut running = sluice_operator::run::start(cli.options, client).await?;
    tracing::info!(
        distribution = %running.distribution,
        webhook = %running.webhook,
        metrics = %running.metrics,
        "sluice-operator started"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = tokio::select! {
        r = running.stopped() => return Ok(r?),
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    // Losing the Lease ends the process from inside `run` (see `lease`);
    // here a signal stops it and hands the Lease over.
    tracing::info!(signal = stop, "shutting down");
    running.shutdown().await?;
    Ok(())
}
