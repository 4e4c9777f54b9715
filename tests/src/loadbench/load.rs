//! The load generator: open loop on a fixed timeline with latency measured
//! from each request's *scheduled* send time (so a stall in the system under
//! test shows up as latency instead of silently lowering the rate — the
//! coordinated-omission correction), closed loop for throughput, streams for
//! time to first byte, and a crowd of held streams for memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Handle;

/// The request every path gets; the sidecar rewrites `model` to the target's.
pub const CHAT: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say hello to the benchmark, please."}],"max_tokens":16}"#;
pub const STREAM: &str = r#"{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello to the benchmark, please."}],"max_tokens":16}"#;
pub const HOLD: &str = r#"{"model":"bench-hold","stream":true,"messages":[{"role":"user","content":"Hold this stream open."}],"max_tokens":16}"#;

/// No request waits longer than this; past it, it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One path under test: where to send, and (for gateways) whose CPU to read.
#[derive(Clone)]
pub struct Path {
    pub name: &'static str,
    pub uri: Uri,
    pub client: Client<HttpConnector, Full<Bytes>>,
    pub gateway_pid: Option<u32>,
    /// The bodies sent: [`CHAT`] and [`STREAM`] unless [`Path::for_model`].
    chat: Bytes,
    stream: Bytes,
}

impl Path {
    pub fn new(
        name: &'static str,
        base: std::net::SocketAddr,
        gateway_pid: Option<u32>,
    ) -> anyhow::Result<Path> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Path {
            name,
            uri: format!("http://{base}/v1/chat/completions").parse()?,
            client,
            gateway_pid,
            chat: Bytes::from_static(CHAT.as_bytes()),
            stream: Bytes::from_static(STREAM.as_bytes()),
        })
    }

    /// The same requests, asking for `model` instead of `bench`.
    pub fn for_model(mut self, model: &str) -> anyhow::Result<Path> {
        let with_model = |body: &str| -> anyhow::Result<Bytes> {
            let mut v: serde_json::Value = serde_json::from_str(body)?;
            v["model"] = model.into();
            Ok(serde_json::to_vec(&v)?.into())
        };
        self.chat = with_model(CHAT)?;
        self.stream = with_model(STREAM)?;
        Ok(self)
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        req
    }

    /// Sends one request and reads it to the end. Returns the time from
    /// `from` to the first body byte and to the end, or `None` on any error.
    pub async fn call(&self, body: Bytes, from: Instant) -> Option<(Duration, Duration)> {
        let work = async {
            let resp = self.client.request(self.request(body)).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let mut body = resp.into_body();
            let mut first = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.ok()?;
                if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    first = Some(from.elapsed());
                }
            }
            let end = from.elapsed();
            Some((first.unwrap_or(end), end))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .ok()
            .flatten()
    }
}

/// What one round measured on one path.
#[derive(Default)]
pub struct Round {
    /// Nanoseconds, per successful request: to the end (non-stream) or to
    /// the first body byte (stream), from the scheduled send time.
    pub latencies: Vec<u64>,
    /// Open loop: each latency's request, when it was due (nanoseconds
    /// after the round's start), in the same order.
    pub due: Vec<u64>,
    /// Once rounds are added up: each round's latencies, sorted.
    pub per_round: Vec<Vec<u64>>,
    pub errors: u64,
    pub completed: u64,
    pub elapsed: Duration,
    /// The gateway's CPU time over the round: `/proc/<pid>/stat` utime+stime
    /// (clock ticks) and the per-thread schedstat sum (nanoseconds).
    pub cpu_ticks: u64,
    pub cpu_ns: u64,
}

/// A gateway's CPU counters at one instant.
struct CpuSample(u64, HashMap<u32, u64>);

fn sample(path: &Path) -> CpuSample {
    match path.gateway_pid {
        Some(pid) => CpuSample(
            super::net::cpu_ticks(pid).unwrap_or(0),
            super::net::thread_cpu_ns(pid).unwrap_or_default(),
        ),
        None => CpuSample(0, HashMap::new()),
    }
}

impl Round {
    fn charge(&mut self, before: &CpuSample, after: &CpuSample) {
        self.cpu_ticks = after.0.saturating_sub(before.0);
        self.cpu_ns = super::net::cpu_ns_between(&before.1, &after.1);
    }
}

/// Open loop: request `i` is due at `start + i / rate`, whatever happened to
/// the ones before. The timeline is kept by a plain thread sleeping to each
/// instant (finer than tokio's millisecond timer); each request then runs as
/// a task on the generator's runtime.
pub async fn open_loop(path: &Path, rate: f64, secs: f64, stream: bool) -> Round {
    open_loop_all(std::slice::from_ref(path), rate, (secs, secs), stream)
        .await
        .pop()
        .unwrap_or_default()
}

/// [`open_loop`] on several paths taking turns: each path in turn gets its
/// requests at `rate` for `turn_secs`, then the next path, in the order
/// given, until every path has had `rate × secs` requests. Each path still
/// sees the fixed rate while it is loaded and one path's requests never
/// overlap another's (but at a turn's edge), and whatever else the machine
/// does over the round hits every path alike. `turn_secs` of `secs` or more
/// is one path's whole round after another.
pub async fn open_loop_all(
    paths: &[Path],
    rate: f64,
    (secs, turn_secs): (f64, f64),
    stream: bool,
) -> Vec<Round> {
    let n = paths.len().max(1) as u64;
    let total = (rate * secs).round().max(1.0) as u64;
    let turn = (rate * turn_secs).round().clamp(1.0, total as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = Handle::current();
    let cpu_before: Vec<CpuSample> = paths.iter().map(sample).collect();
    let start = Instant::now() + Duration::from_millis(5);
    let dispatcher = {
        let paths = paths.to_vec();
        std::thread::spawn(move || {
            for slot in 0..total.div_ceil(turn) * turn * n {
                let Some(k) = whose_slot(slot, turn, n, total) else {
                    continue;
                };
                let Some(path) = paths.get(k) else {
                    continue;
                };
                let due = start + interval.mul_f64(slot as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let path = path.clone();
                let tx = tx.clone();
                let body = if stream {
                    path.stream.clone()
                } else {
                    path.chat.clone()
                };
                let at = (due - start).as_nanos() as u64;
                handle.spawn(async move {
                    let _ = tx.send((k, at, path.call(body, due).await));
                });
            }
        })
    };
    let mut rounds: Vec<Round> = paths.iter().map(|_| Round::default()).collect();
    while let Some((k, at, result)) = rx.recv().await {
        let round = &mut rounds[k];
        match result {
            Some((first, end)) => {
                let d = if stream { first } else { end };
                round.latencies.push(d.as_nanos() as u64);
                round.due.push(at);
                round.completed += 1;
            }
            None => round.errors += 1,
        }
    }
    let _ = dispatcher.join();
    // Each path was loaded for its turns: its share of the round.
    let elapsed = start.elapsed() / n as u32;
    for ((round, path), before) in rounds.iter_mut().zip(paths).zip(&cpu_before) {
        round.elapsed = elapsed;
        round.charge(before, &sample(path));
    }
    rounds
}

/// Which path's request slot `slot` of a turn-taking timeline is (slot `s`
/// is due `s / rate` after the start): turn `slot / turn` belongs to path
/// `(slot / turn) % paths`, and a path's last turn may be short of `turn`
/// (its `total` requests sent), leaving slots to no one.
fn whose_slot(slot: u64, turn: u64, paths: u64, total: u64) -> Option<usize> {
    let path = (slot / turn) % paths;
    let nth = (slot / (turn * paths)) * turn + slot % turn;
    (nth < total).then_some(path as usize)
}

/// Closed loop: `connections` callers, each sending its next request as soon
/// as the last one ended, for `secs`.
pub async fn closed_loop(path: &Path, connections: usize, secs: f64) -> Round {
    let cpu_before = sample(path);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let path = path.clone();
        let ok = ok.clone();
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match path.call(path.chat.clone(), Instant::now()).await {
                    Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut round = Round {
        completed: ok.load(Ordering::Relaxed),
        errors: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        ..Round::default()
    };
    round.charge(&cpu_before, &sample(path));
    round
}

/// What holding many streams open cost a gateway.
pub struct Held {
    pub opened: u64,
    pub failed: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Opens `n` slow streams through `path` (50 at a time), waits for each one's
/// first byte, samples the gateway's memory while all are open, then lets
/// them go.
pub async fn hold_streams(path: &Path, pid: u32, n: usize) -> anyhow::Result<Held> {
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gate = Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let path = path.clone();
        let opened = opened.clone();
        let failed = failed.clone();
        let mut stop = stop_rx.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let first_byte = async {
                let _permit = gate.acquire().await.ok()?;
                let resp = path
                    .client
                    .request(path.request(Bytes::from_static(HOLD.as_bytes())))
                    .await
                    .ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let mut body = resp.into_body();
                loop {
                    let frame = body.frame().await?.ok()?;
                    if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                        return Some(body);
                    }
                }
            };
            let Ok(Some(mut body)) =
                tokio::time::timeout(Duration::from_secs(30), first_byte).await
            else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            // Keep reading the heartbeats until told to let go.
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    frame = body.frame() => if !matches!(frame, Some(Ok(_))) { return },
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let every stream deliver a heartbeat or two through the gateway.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss_kib, hwm_kib) = super::net::rss_kib(pid)?;
    let held = Held {
        opened: opened.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        rss_kib,
        hwm_kib,
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::whose_slot;

    #[test]
    fn paths_take_whole_turns_in_order_and_each_gets_its_requests() {
        // Three paths, turns of 4 requests, 10 requests each.
        let (turn, paths, total): (u64, u64, u64) = (4, 3, 10);
        let owners: Vec<Option<usize>> = (0..total.div_ceil(turn) * turn * paths)
            .map(|s| whose_slot(s, turn, paths, total))
            .collect();
        let expected: Vec<Option<usize>> = [0, 1, 2, 0, 1, 2]
            .iter()
            .flat_map(|&p| [Some(p); 4])
            .chain([Some(0), Some(0), None, None])
            .chain([Some(1), Some(1), None, None])
            .chain([Some(2), Some(2), None, None])
            .collect();
        assert_eq!(owners, expected);
        // One path alone: every slot, in order, is its.
        assert!((0..7).all(|s| whose_slot(s, 7, 1, 7) == Some(0)));
    }
}
