//! `mock-provider`: one mock LLM provider as a process, for benchmarks and
//! end-to-end tests. Prints its bound address (`127.0.0.1:PORT`) on stdout
//! (after writing `--ca-out` for a `--tls` mock), then serves until killed. Scripted at run time through its `/__mock/`
//! control API (see `sluice_tests::mock`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_tests::mock::{Behaviour, MockConfig, MockProvider, ProviderKind};

#[derive(Parser, Debug)]
#[command(about = "A mock LLM provider speaking one provider's wire format")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Wire format: openai, azure, anthropic, gemini or bedrock.
    #[arg(long)]
    kind: ProviderKind,
    /// The accepted API key (Bedrock: access key id).
    #[arg(long, default_value = sluice_tests::mock::DEFAULT_API_KEY)]
    api_key: String,
    /// Accept any key (a missing one is still refused).
    #[arg(long)]
    any_key: bool,
    /// Bedrock: the region SigV4 scopes must name.
    #[arg(long)]
    region: Option<String>,
    /// Bedrock: the secret access key; when given, signatures are verified.
    #[arg(long)]
    aws_secret_key: Option<String>,
    /// Models (Azure: deployments) that exist; repeatable. Default: any.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Context window in mock tokens (ceil(chars / 4)).
    #[arg(long)]
    context_window: Option<u32>,
    /// Model calls accepted per rolling minute before the provider's 429.
    #[arg(long)]
    requests_per_minute: Option<u32>,
    /// Recent requests kept for `/__mock/requests`.
    #[arg(long, default_value_t = 10_000)]
    keep_requests: usize,
    /// Fixed reply text.
    #[arg(long)]
    reply: Option<String>,
    /// Serve HTTPS with a fresh CA (written to --ca-out).
    #[arg(long)]
    tls: bool,
    /// Where to write the CA certificate (PEM) of a --tls mock.
    #[arg(long, requires = "tls")]
    ca_out: Option<std::path::PathBuf>,
    /// Delay before response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay before the first body frame, in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_chunk_delay_ms: u64,
    /// Delay before each later stream frame, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = MockConfig {
        api_key: (!args.any_key).then_some(args.api_key),
        region: args.region,
        aws_secret_key: args.aws_secret_key,
        models: args.models,
        context_window: args.context_window,
        requests_per_minute: args.requests_per_minute,
        keep_requests: args.keep_requests,
        reply: args.reply,
        default: Behaviour::ok()
            .with_latency(Duration::from_millis(args.latency_ms))
            .with_first_chunk_delay(Duration::from_millis(args.first_chunk_delay_ms))
            .with_chunk_delay(Duration::from_millis(args.chunk_delay_ms)),
    };
    let mock = if args.tls {
        MockProvider::start_on_tls(args.kind, config, args.listen).await
    } else {
        MockProvider::start_on(args.kind, config, args.listen).await
    }
    .context("starting the mock")?;
    if let (Some(path), Some(pem)) = (&args.ca_out, mock.ca_pem()) {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.addr())?;
    out.flush()?;
    drop(out);
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    mock.shutdown();
    Ok(())
}
