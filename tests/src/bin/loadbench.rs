//! `loadbench`: the sidecar load benchmark (see `tests/LOADBENCH.md`).
//!
//! `loadbench [run] [flags]` runs the whole benchmark and prints a markdown
//! table; `loadbench upstream` and `loadbench proxy` are the child processes
//! it starts (the fast upstream and the bare proxy), each in its own process
//! so that its CPU and memory can be read from `/proc` on their own.

#[path = "../loadbench/mod.rs"]
mod loadbench;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Sidecar load benchmark: direct vs bare proxy vs sidecar, on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark (the default).
    Run(RunFlags),
    /// The fast upstream (a child of `run`).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Pause between a stream's first chunk and the rest, milliseconds.
        #[arg(long, default_value_t = 2)]
        stream_gap_ms: u64,
        /// How long a held stream lasts at most, seconds.
        #[arg(long, default_value_t = 120)]
        hold_secs: u64,
    },
    /// Runs a command and kills it when stdin closes (how `run` starts the sidecar).
    Guard {
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Load on one address only, for profiling a gateway (`perf`, `/proc`):
    /// closed loop, or open loop with `--rate`; prints rate and latency.
    Drive {
        /// Where to send `POST /v1/chat/completions`.
        #[arg(long)]
        target: SocketAddr,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Closed-loop connections (ignored with `--rate`).
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Open loop at this many req/s instead of the closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// Stream requests (open loop only): latency to the first byte.
        #[arg(long)]
        stream: bool,
        /// The model asked for (a route of the gateway).
        #[arg(long, default_value = "bench")]
        model: String,
        /// Open loop: also write every request's due time and latency
        /// (microseconds, one request a line) to this file, to see when
        /// the slow ones happened.
        #[arg(long)]
        latencies: Option<PathBuf>,
    },
    /// The bare pass-through proxy (a child of `run`).
    Proxy {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
}

#[derive(Args, Clone)]
struct RunFlags {
    /// Rounds per phase; each round runs every path, the rounds taking the
    /// six orders of the three paths in turn.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Fixed-rate rounds one path after another, as before 2026-11-22,
    /// instead of the three paths taking turns within each round.
    #[arg(long)]
    sequential: bool,
    /// In a fixed-rate round, how long each path's turn lasts before the
    /// next path's, seconds.
    #[arg(long, default_value_t = 0.5)]
    turn_secs: f64,
    /// Length of one path's round, seconds.
    #[arg(long, default_value_t = 1.5)]
    round_secs: f64,
    /// Open-loop rates for non-stream requests, req/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rates: Vec<f64>,
    /// An open-loop round lasts at least this many requests' worth of
    /// time (at 200 req/s, 1,000 samples: 5 s), so that its p99 is the
    /// tenth-slowest request and not the third.
    #[arg(long, default_value_t = 1000)]
    tail_samples: usize,
    /// Connections of the closed-loop (max throughput) phase.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Rounds of the closed-loop phase (more than the others: a round's
    /// rate moves with whatever else the two cores run).
    #[arg(long, default_value_t = 10)]
    max_rounds: usize,
    /// Open-loop rate of the stream (time to first byte) phase, req/s.
    #[arg(long, default_value_t = 200.0)]
    stream_rate: f64,
    /// Concurrent slow streams held open for the memory figure.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// The sidecar binary (default: `sluice-sidecar` beside this binary).
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// An A/A control run: a second bare proxy where the sidecar goes. The
    /// ratios it reports are the benchmark's own noise, the yardstick for
    /// reading the sidecar's (tests/LOADBENCH.md, "The benchmark's own noise").
    #[arg(long)]
    control: bool,
    /// Run the bare proxy from this executable's own file instead of a
    /// copy, so that it shares its code's pages and cache lines with the
    /// load generator and the upstream (the way before 2026-11-22 11:50).
    #[arg(long)]
    shared_proxy_binary: bool,
    /// Also write every fixed-rate request's latency to this directory
    /// (`path round nanoseconds` lines, a file per phase).
    #[arg(long)]
    samples_dir: Option<PathBuf>,
    /// RUST_LOG for the sidecar; `info` (its default) keeps the access log on.
    #[arg(long, default_value = "info")]
    sidecar_log: String,
    /// Worker threads of the upstream process.
    #[arg(long, default_value_t = 1)]
    upstream_threads: usize,
    /// Pause between a stream's first chunk and the rest, milliseconds.
    #[arg(long, default_value_t = 2)]
    stream_gap_ms: u64,
    /// Give up (and kill the children) after this many seconds.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Upstream {
            listen,
            threads,
            stream_gap_ms,
            hold_secs,
        }) => loadbench::upstream::run(
            listen,
            loadbench::upstream::Shape {
                stream_gap: Duration::from_millis(stream_gap_ms),
                hold: Duration::from_secs(hold_secs),
            },
            threads,
        ),
        Some(Command::Guard { command }) => loadbench::net::guard(&command),
        Some(Command::Drive {
            target,
            secs,
            connections,
            rate,
            stream,
            model,
            latencies,
        }) => drive(
            target,
            secs,
            connections,
            rate,
            stream,
            &model,
            latencies.as_deref(),
        ),
        Some(Command::Proxy { listen, upstream }) => loadbench::proxy::run(listen, upstream),
        Some(Command::Run(flags)) => bench(flags),
        None => bench(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(flags: RunFlags) -> anyhow::Result<()> {
    let sidecar_bin = match flags.sidecar.clone() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("sluice-sidecar"),
    };
    let opts = loadbench::Options {
        rounds: flags.rounds.max(1),
        sequential: flags.sequential,
        turn_secs: flags.turn_secs,
        round_secs: flags.round_secs,
        tail_samples: flags.tail_samples,
        max_rounds: flags.max_rounds.max(1),
        rates: flags.rates.clone(),
        connections: flags.connections.max(1),
        stream_rate: flags.stream_rate,
        streams: flags.streams,
        sidecar_bin,
        control: flags.control,
        samples_dir: flags.samples_dir.clone(),
        shared_proxy_binary: flags.shared_proxy_binary,
        sidecar_log: flags.sidecar_log.clone(),
        upstream_threads: flags.upstream_threads,
        stream_gap_ms: flags.stream_gap_ms,
    };
    anyhow::ensure!(
        opts.round_secs > 0.0
            && opts.turn_secs > 0.0
            && opts.stream_rate > 0.0
            && opts.rates.iter().all(|r| *r > 0.0),
        "--round-secs, --turn-secs, --rates and --stream-rate must be positive"
    );
    let report = load_generator()?.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(flags.max_secs), loadbench::run(opts)) => {
                r.map_err(|_| anyhow::anyhow!("gave up after --max-secs {}", flags.max_secs))?
            }
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = terminated() => anyhow::bail!("terminated"),
        }
    })?;
    print!("{report}");
    if let Some(out) = &flags.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

/// The load generator's own runtime: one worker, so that it takes at most
/// one core's share from the processes it measures.
fn load_generator() -> std::io::Result<tokio::runtime::Runtime> {
    loadbench::runtime(1)
}

fn drive(
    target: SocketAddr,
    secs: f64,
    connections: usize,
    rate: Option<f64>,
    stream: bool,
    model: &str,
    dump: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        secs > 0.0 && rate.is_none_or(|r| r > 0.0),
        "--secs and --rate must be positive"
    );
    let round = load_generator()?.block_on(async {
        let path = loadbench::load::Path::new("target", target, None)?.for_model(model)?;
        let _ = loadbench::load::closed_loop(&path, 4, 0.5).await;
        anyhow::Ok(match rate {
            Some(rate) => loadbench::load::open_loop(&path, rate, secs, stream).await,
            None => loadbench::load::closed_loop(&path, connections.max(1), secs).await,
        })
    })?;
    if let Some(file) = dump {
        let lines: String = round
            .due
            .iter()
            .zip(&round.latencies)
            .map(|(due, l)| format!("{} {}\n", due / 1000, l / 1000))
            .collect();
        std::fs::write(file, lines)?;
    }
    let mut latencies = round.latencies;
    latencies.sort_unstable();
    let q = |p| {
        loadbench::report::quantile_us(&latencies, p)
            .map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"))
    };
    println!(
        "{} ok, {} errors, {:.0} req/s, p50 {} µs, p99 {} µs",
        round.completed,
        round.errors,
        round.completed as f64 / round.elapsed.as_secs_f64().max(1e-9),
        q(0.5),
        q(0.99),
    );
    Ok(())
}

/// SIGTERM, so that a `kill` ends the run through the same path as Ctrl-C
/// (children dropped, hence ended).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
