//! The sidecar load benchmark (issue 3, "Performance"): the same requests
//! sent straight to a fast upstream, through a bare hyper proxy, and through
//! the sidecar, so that whatever else the machine is doing hits all of them
//! alike: at a fixed rate the three paths' requests take turns within each
//! round; for throughput the paths run one after another in short rounds,
//! in every order in turn. Figures are reported as the sidecar's added cost over
//! the bare proxy's. See `tests/LOADBENCH.md`.

pub mod load;
pub mod net;
pub mod proxy;
pub mod report;
pub mod upstream;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use load::{Path, Round};
use net::Proc;
use report::{Check, Row, quantile_us};

/// What to run; every knob is a flag of `loadbench run`.
pub struct Options {
    pub rounds: usize,
    /// Fixed-rate rounds one path at a time instead of in turns.
    pub sequential: bool,
    /// How long one path's turn lasts in a fixed-rate round, seconds.
    pub turn_secs: f64,
    pub round_secs: f64,
    pub tail_samples: usize,
    pub max_rounds: usize,
    pub rates: Vec<f64>,
    pub connections: usize,
    pub stream_rate: f64,
    pub streams: usize,
    pub sidecar_bin: PathBuf,
    /// A second bare proxy in the sidecar's place (an A/A run).
    pub control: bool,
    /// Run the bare (and control) proxy from loadbench's own file rather
    /// than a copy: its code then shares the load generator's and the
    /// upstream's pages and cache lines (the way before 2026-11-22 11:50).
    pub shared_proxy_binary: bool,
    /// Write every fixed-rate request's latency here, a file per phase.
    pub samples_dir: Option<PathBuf>,
    pub sidecar_log: String,
    pub upstream_threads: usize,
    pub stream_gap_ms: u64,
}

/// A process's own tokio runtime with `workers` worker threads (at least
/// one): the load generator's, the upstream's and the bare proxy's.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

fn sidecar_yaml(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: Provider
metadata: {{name: bench-upstream}}
spec:
  type: openai-compatible
  endpoint: http://{upstream}/v1
  models:
    - name: bench-model
      contextWindow: 128000
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
    - name: bench-hold
      contextWindow: 128000
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: bench}}
spec:
  model: bench
  targets:
    - providerRef: {{name: bench-upstream}}
      model: bench-model
---
apiVersion: sluice.dev/v1alpha1
kind: LLMRoute
metadata: {{name: bench-hold}}
spec:
  model: bench-hold
  targets:
    - providerRef: {{name: bench-upstream}}
      model: bench-hold
"#
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Adds one path's round to its totals, and prints it.
fn record(acc: &mut Round, round: Round, label: &str, of: (usize, usize), name: &str) {
    let mut latencies = round.latencies;
    latencies.sort_unstable();
    let at = |p| quantile_us(&latencies, p).map_or_else(|| "–".into(), |v| format!("{v:.0}"));
    eprintln!(
        "  {label} round {}/{} {name:<10} {:>6} ok {:>4} errors {:>8.0} req/s  p50 {:>5} p99 {:>5} µs",
        of.0,
        of.1,
        round.completed,
        round.errors,
        round.completed as f64 / round.elapsed.as_secs_f64().max(1e-9),
        at(0.5),
        at(0.99),
    );
    acc.per_round.push(latencies);
    acc.errors += round.errors;
    acc.completed += round.completed;
    acc.elapsed += round.elapsed;
    acc.cpu_ticks += round.cpu_ticks;
    acc.cpu_ns += round.cpu_ns;
}

/// The order of the three paths in round `r`: all six orders in turn, so
/// that each path goes first after a pause as often as the others, and
/// follows each other path as often as the other way round. (Rotating one
/// order — 0 1 2, 1 2 0, 2 0 1 — kept one succession: with turns repeating
/// within a round, the sidecar always followed the bare proxy and the
/// bare proxy always followed the direct path, whose processes run the
/// same code the proxy runs.)
fn order(r: usize) -> [usize; 3] {
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [1, 0, 2],
        [2, 0, 1],
        [0, 2, 1],
        [1, 2, 0],
        [2, 1, 0],
    ];
    ORDERS[r % ORDERS.len()]
}

/// Rounds of one kind, all three paths per round one after another, in
/// the [`order`] of the round.
async fn alternate<F, Fut>(paths: &[Path; 3], rounds: usize, label: &str, run: F) -> [Round; 3]
where
    F: Fn(Path) -> Fut,
    Fut: std::future::Future<Output = Round>,
{
    let mut acc: [Round; 3] = Default::default();
    for r in 0..rounds {
        for i in order(r) {
            let round = run(paths[i].clone()).await;
            record(&mut acc[i], round, label, (r + 1, rounds), paths[i].name);
        }
    }
    acc
}

/// Fixed-rate rounds with the three paths taking short turns
/// ([`load::open_loop_all`]), in the [`order`] of the round; or, with
/// `sequential`, [`alternate`]d rounds of one path at a time.
async fn fixed_rate(
    paths: &[Path; 3],
    opts: &Options,
    label: &str,
    (rate, secs, stream): (f64, f64, bool),
) -> [Round; 3] {
    if opts.sequential {
        return alternate(paths, opts.rounds, label, |p| async move {
            load::open_loop(&p, rate, secs, stream).await
        })
        .await;
    }
    let mut acc: [Round; 3] = Default::default();
    for r in 0..opts.rounds {
        let order = order(r);
        let turns: Vec<Path> = order.iter().map(|&i| paths[i].clone()).collect();
        let results = load::open_loop_all(&turns, rate, (secs, opts.turn_secs), stream).await;
        for (&i, round) in order.iter().zip(results) {
            record(
                &mut acc[i],
                round,
                label,
                (r + 1, opts.rounds),
                paths[i].name,
            );
        }
    }
    acc
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The median over rounds of each round's `p` quantile: one round that a
/// neighbour's compile burst hit does not move it, where pooling every
/// round's samples would hand that round most of the tail.
fn q(r: &Round, p: f64) -> Option<f64> {
    median(
        r.per_round
            .iter()
            .filter_map(|l| quantile_us(l, p))
            .collect(),
    )
}

/// What `path` adds to `direct` at quantile `p`: the median over rounds of
/// the difference within each round, where both paths met the same machine.
fn added(path: &Round, direct: &Round, p: f64) -> Option<f64> {
    median(
        path.per_round
            .iter()
            .zip(&direct.per_round)
            .filter_map(|(a, d)| Some(quantile_us(a, p)? - quantile_us(d, p)?))
            .collect(),
    )
}

/// With `--samples-dir`: a phase's latencies as `path round nanoseconds`
/// lines (path 0 direct, 1 bare proxy, 2 the sidecar or control proxy),
/// for estimators other than the report's to be tried on the same runs.
fn write_samples(opts: &Options, phase: &str, acc: &[Round; 3]) -> std::io::Result<()> {
    let Some(dir) = &opts.samples_dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let mut out = String::new();
    for (path, r) in acc.iter().enumerate() {
        for (round, lat) in r.per_round.iter().enumerate() {
            for ns in lat {
                out.push_str(&format!("{path} {round} {ns}\n"));
            }
        }
    }
    std::fs::write(dir.join(format!("{phase}.txt")), out)
}

/// Schedstat nanoseconds when the kernel has them, else stat's ticks.
fn cpu_us_per_request(r: &Round, tick_us: f64) -> Option<f64> {
    let us = if r.cpu_ns > 0 {
        r.cpu_ns as f64 / 1000.0
    } else {
        r.cpu_ticks as f64 * tick_us
    };
    (r.completed > 0).then(|| us / r.completed as f64)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Latency rows for one set of rounds: absolute p50/p99 (each the median
/// over rounds), then what the proxy and the sidecar add to the direct path
/// (the median over rounds of the difference within a round).
fn latency_rows(rows: &mut Vec<Row>, what: &str, acc: &[Round; 3]) {
    for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
        let [d, x, s] = [q(&acc[0], p), q(&acc[1], p), q(&acc[2], p)];
        rows.push(Row {
            metric: format!("{what} {name} (µs)"),
            direct: d,
            proxy: x,
            sidecar: s,
            check: Check::None,
        });
        rows.push(Row {
            metric: format!("**added** {what} {name} (µs)"),
            direct: None,
            proxy: added(&acc[1], &acc[0], p),
            sidecar: added(&acc[2], &acc[0], p),
            check: Check::RatioAtMost(1.5),
        });
    }
}

/// Runs everything and returns the report (markdown).
pub async fn run(opts: Options) -> anyhow::Result<String> {
    let load_before = loadavg();
    let started = chrono::Utc::now();
    let tick_us = 1e6 / net::ticks_per_second();
    anyhow::ensure!(
        opts.control || opts.sidecar_bin.is_file(),
        "no sidecar binary at {} (cargo build --release -p sluice-sidecar, or pass --sidecar)",
        opts.sidecar_bin.display()
    );

    let (upstream, upstream_addr) = Proc::own(
        "upstream",
        &[
            "upstream".into(),
            "--threads".into(),
            opts.upstream_threads.to_string(),
            "--stream-gap-ms".into(),
            opts.stream_gap_ms.to_string(),
        ],
    )
    .await?;
    // Removed when dropped, however `run` ends: it holds the sidecar's
    // configuration and the proxies' copies of this executable.
    let tmp = tempfile::Builder::new().prefix("loadbench-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let proxy_args = [
        "proxy".into(),
        "--upstream".into(),
        upstream_addr.to_string(),
    ];
    // The control proxy always runs from a copy: with
    // `--shared-proxy-binary` an A/A run then measures what sharing the
    // load generator's code is worth to the bare proxy.
    let start_proxy = |name, shared: bool| {
        let (dir, args) = (&dir, &proxy_args);
        async move {
            if shared {
                Proc::own(name, args).await
            } else {
                Proc::own_copy(dir, name, args).await
            }
        }
    };
    let (proxy, proxy_addr) = start_proxy("bare proxy", opts.shared_proxy_binary).await?;
    let config = dir.join("sidecar.yaml");
    std::fs::write(&config, sidecar_yaml(upstream_addr))?;
    let (listen, admin) = (
        sluice_tests::ports::free_port(),
        sluice_tests::ports::free_port(),
    );
    let third = if opts.control {
        "control proxy"
    } else {
        "sidecar"
    };
    let (sidecar, listen) = if opts.control {
        start_proxy(third, false).await?
    } else {
        let proc = Proc::sidecar(&opts.sidecar_bin, &config, listen, admin, &opts.sidecar_log)
            .await
            .context("starting the sidecar")?;
        (proc, listen)
    };
    eprintln!(
        "loadbench: upstream pid {} on {upstream_addr}, bare proxy pid {} on {proxy_addr}, {third} pid {} on {listen}",
        upstream.pid, proxy.pid, sidecar.pid
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_proxy = net::rss_kib(proxy.pid)?.0;
    let idle_sidecar = net::rss_kib(sidecar.pid)?.0;

    let paths = [
        Path::new("direct", upstream_addr, None)?,
        Path::new("bare proxy", proxy_addr, Some(proxy.pid))?,
        Path::new(third, listen, Some(sidecar.pid))?,
    ];
    eprintln!("loadbench: warm-up");
    for p in &paths {
        let _ = load::closed_loop(p, 8, 1.0).await;
        let _ = load::open_loop(p, 50.0, 0.5, true).await;
    }

    let mut rows = Vec::new();
    let mut cpu_rows = Vec::new();
    let mut errors = [0u64; 3];
    // (stat ticks, schedstat ns) per gateway over every phase: a cross-check.
    let mut cpu_total = [(0u64, 0u64); 3];
    let secs = opts.round_secs;
    // An open-loop round at `rate`: long enough for `tail_samples`.
    let open_secs = |rate: f64| secs.max(opts.tail_samples as f64 / rate);
    for &rate in &opts.rates {
        let secs = open_secs(rate);
        eprintln!("loadbench: open loop at {rate} req/s, non-stream");
        let acc = fixed_rate(&paths, &opts, &format!("{rate}/s"), (rate, secs, false)).await;
        write_samples(&opts, &format!("rate-{rate}"), &acc)?;
        latency_rows(&mut rows, &format!("latency @{rate} req/s"), &acc);
        cpu_rows.push(Row {
            metric: format!("gateway CPU per request @{rate} req/s (µs)"),
            direct: None,
            proxy: cpu_us_per_request(&acc[1], tick_us),
            sidecar: cpu_us_per_request(&acc[2], tick_us),
            check: Check::RatioAtMost(2.0),
        });
        for i in 0..3 {
            errors[i] += acc[i].errors;
            cpu_total[i].0 += acc[i].cpu_ticks;
            cpu_total[i].1 += acc[i].cpu_ns;
        }
    }

    eprintln!("loadbench: closed loop, {} connections", opts.connections);
    let conns = opts.connections;
    let acc = alternate(&paths, opts.max_rounds, "max", |p| async move {
        load::closed_loop(&p, conns, secs).await
    })
    .await;
    let rps = |r: &Round| Some(r.completed as f64 / r.elapsed.as_secs_f64().max(1e-9));
    rows.push(Row {
        metric: format!("max throughput, {conns} connections (req/s)"),
        direct: rps(&acc[0]),
        proxy: rps(&acc[1]),
        sidecar: rps(&acc[2]),
        check: Check::RatioAtLeast(0.8),
    });
    cpu_rows.push(Row {
        metric: "gateway CPU per request at max throughput (µs)".into(),
        direct: None,
        proxy: cpu_us_per_request(&acc[1], tick_us),
        sidecar: cpu_us_per_request(&acc[2], tick_us),
        check: Check::None,
    });
    for i in 0..3 {
        errors[i] += acc[i].errors;
        cpu_total[i].0 += acc[i].cpu_ticks;
        cpu_total[i].1 += acc[i].cpu_ns;
    }

    let stream_rate = opts.stream_rate;
    eprintln!("loadbench: open loop at {stream_rate} req/s, streams");
    let stream_secs = open_secs(stream_rate);
    let acc = fixed_rate(&paths, &opts, "stream", (stream_rate, stream_secs, true)).await;
    write_samples(&opts, "stream", &acc)?;
    latency_rows(
        &mut rows,
        &format!("stream TTFB @{stream_rate} req/s"),
        &acc,
    );
    for i in 0..3 {
        errors[i] += acc[i].errors;
        cpu_total[i].0 += acc[i].cpu_ticks;
        cpu_total[i].1 += acc[i].cpu_ns;
    }
    rows.extend(cpu_rows);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_proxy = net::rss_kib(proxy.pid)?.0;
    let after_sidecar = net::rss_kib(sidecar.pid)?.0;
    eprintln!("loadbench: {} held streams", opts.streams);
    let held_proxy = load::hold_streams(&paths[1], proxy.pid, opts.streams).await?;
    let held_sidecar = load::hold_streams(&paths[2], sidecar.pid, opts.streams).await?;
    rows.push(Row {
        metric: "RSS idle, after start (MiB)".into(),
        direct: None,
        proxy: Some(mib(idle_proxy)),
        sidecar: Some(mib(idle_sidecar)),
        check: Check::Below(20.0),
    });
    rows.push(Row {
        metric: "RSS idle, after the load (MiB)".into(),
        direct: None,
        proxy: Some(mib(after_proxy)),
        sidecar: Some(mib(after_sidecar)),
        check: Check::Below(20.0),
    });
    rows.push(Row {
        metric: format!("RSS with {} open streams (MiB)", opts.streams),
        direct: None,
        proxy: Some(mib(held_proxy.rss_kib)),
        sidecar: Some(mib(held_sidecar.rss_kib)),
        check: Check::Below(150.0),
    });
    rows.push(Row {
        metric: "peak RSS over the whole run, VmHWM (MiB)".into(),
        direct: None,
        proxy: Some(mib(held_proxy.hwm_kib)),
        sidecar: Some(mib(held_sidecar.hwm_kib)),
        check: Check::None,
    });
    rows.push(Row {
        metric: "failed requests (all phases, count)".into(),
        direct: Some(errors[0] as f64),
        proxy: Some((errors[1] + held_proxy.failed) as f64),
        sidecar: Some((errors[2] + held_sidecar.failed) as f64),
        check: Check::None,
    });

    let load_after = loadavg();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    sidecar.stop().await;
    proxy.stop().await;
    upstream.stop().await;
    drop(tmp);

    let mut out = String::new();
    out.push_str(&format!(
        "loadbench {} — {cores} cores, load average {load_before} before, {load_after} after; \
         {} rounds per path and phase ({} closed-loop) of {secs} s, or of {} requests at a fixed rate \
         ({}); streams held: proxy {}/{}, {third} {}/{}{}{}\n\n",
        started.format("%Y-%m-%d %H:%M UTC"),
        opts.rounds,
        opts.max_rounds,
        opts.tail_samples,
        if opts.sequential {
            "one path at a time"
        } else {
            "the paths taking turns"
        },
        held_proxy.opened,
        opts.streams,
        held_sidecar.opened,
        opts.streams,
        if opts.shared_proxy_binary {
            "; the bare proxy runs from loadbench's own file"
        } else {
            ""
        },
        if opts.control {
            ". A/A control: the third column is a second bare proxy, so its \
             ratios are the benchmark's own noise"
        } else {
            ""
        },
    ));
    out.push_str(&report::table(&rows, third));
    out.push_str(&format!(
        "\nGateway CPU over all timed phases, /proc stat utime+stime vs per-thread schedstat: \
         bare proxy {:.2} s vs {:.2} s, {third} {:.2} s vs {:.2} s.\n",
        cpu_total[1].0 as f64 * tick_us / 1e6,
        cpu_total[1].1 as f64 / 1e9,
        cpu_total[2].0 as f64 * tick_us / 1e6,
        cpu_total[2].1 as f64 / 1e9,
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::order;

    #[test]
    fn six_rounds_give_every_path_every_place_and_every_predecessor() {
        let mut first = [0; 3];
        // follows[a][b]: turns of `a` right after turns of `b` (turns repeat
        // within a round, so the last path is followed by the first).
        let mut follows = [[0; 3]; 3];
        for r in 0..6 {
            let o = order(r);
            first[o[0]] += 1;
            for k in 0..3 {
                follows[o[(k + 1) % 3]][o[k]] += 1;
            }
        }
        assert_eq!(first, [2, 2, 2]);
        for (a, row) in follows.iter().enumerate() {
            for (b, &n) in row.iter().enumerate() {
                assert_eq!(n, if a == b { 0 } else { 3 }, "{a} after {b}");
            }
        }
    }
}
