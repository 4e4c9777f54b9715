//! `kube-emulator --listen 127.0.0.1:PORT --kubeconfig FILE`: runs the
//! Kubernetes API emulator until killed. Prints the bound address on stdout
//! (port 0 picks a free one) after writing a kubeconfig for itself.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;
use sluice_tests::emulator::{Emulator, EmulatorOptions};

/// Kubernetes API emulator for Sluice tests.
#[derive(Debug, Parser)]
#[command(name = "kube-emulator")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this emulator.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Serve plain HTTP instead of HTTPS (then requests without a token act
    /// as the admin, since kubectl sends no token over http).
    #[arg(long)]
    plain_http: bool,
    /// How many past events watches can resume from before 410 Expired.
    #[arg(long, default_value_t = sluice_tests::emulator::store::DEFAULT_HISTORY)]
    watch_history: usize,
    /// Address of a webhook service, `name.namespace=HOST:PORT` (repeatable).
    #[arg(long = "webhook-service", value_name = "NAME.NAMESPACE=ADDR")]
    webhook_services: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut webhook_services = BTreeMap::new();
    for entry in &args.webhook_services {
        let Some((service, addr)) = entry.split_once('=') else {
            bail!("--webhook-service expects NAME.NAMESPACE=ADDR, got {entry:?}");
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--webhook-service {entry}"))?;
        webhook_services.insert(service.to_string(), addr);
    }
    let emulator = Emulator::start(EmulatorOptions {
        listen: args.listen,
        webhook_services,
        plain_http: args.plain_http,
        watch_history: args.watch_history,
    })
    .await?;
    emulator.write_kubeconfig(&args.kubeconfig)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", emulator.address())?;
    stdout.flush()?;
    tokio::signal::ctrl_c().await?;
    emulator.shutdown().await;
    Ok(())
}
