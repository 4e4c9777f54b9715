//! The access log: one JSON line per request (ids, route, target, classes
//! and numbers; never prompts, completions or keys), formatted and written
//! off the request path.
//!
//! The request path only moves an [`Entry`] into a bounded channel
//! (`try_send`: it never blocks and never waits for the writer). A
//! background thread wakes on a timer, drains the channel, formats every
//! entry into one buffer and writes it to stderr in one `write`, so that
//! neither formatting nor a syscall per request is paid while a client
//! waits. The timer follows the traffic (`Pace::next_sleep`): about
//! [`BATCH`] lines a wake, between [`FLUSH_EVERY`] under heavy load and
//! [`IDLE_SLEEP`] at low rates and idle, so a line is written at the
//! latest about [`IDLE_SLEEP`] after its request ended. A sender that
//! finds the channel a quarter full wakes the writer at once (a burst
//! after a quiet spell). When the channel is full (the writer is stuck on
//! a slow stderr) entries are dropped and counted in
//! `sluice_access_log_dropped_total`, instead of slowing requests down.
//!
//! Why: formatting the line through `tracing-subscriber`'s JSON formatter
//! on the request path cost ≈25 k instructions and ≈40 allocations per
//! request (callgrind, `tests/LOADBENCH.md`), a sixth of the sidecar's
//! cost. Why the timer follows the traffic: a wake every 25 ms at
//! 200 req/s cost ≈11 µs of CPU a request (`/proc/<pid>/task/*/schedstat`),
//! each wake on an idle core dearer than the five lines it wrote. The lines
//! keep the shape the JSON formatter gave them (`timestamp`, `level`,
//! `fields`, `target`), so log pipelines need no change; they are written
//! only when `RUST_LOG` enables `info` for `sluice_sidecar::accounting`, as
//! before.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use sluice_crds::Money;

use crate::metrics::TargetLabels;

/// Entries waiting to be written, at most; beyond it they are dropped.
/// 8,192 is 320,000 requests a second at [`FLUSH_EVERY`], and 32,000 a
/// second arriving while the writer is at its longest idle sleep; the
/// channel reserves its slots up front (≈256 KB of address space, resident
/// only as far as a burst has filled it).
pub const CAPACITY: usize = 8192;
/// The shortest the writer sleeps, under heavy traffic. Short, so that
/// few entries are alive at once under load (each holds a few small heap
/// strings, and a large backlog raises the heap's high-water mark, hence
/// the idle RSS after load).
pub const FLUSH_EVERY: Duration = Duration::from_millis(25);
/// The longest the writer sleeps: at low rates and when idle (most of a
/// cluster's sidecars), four wakes a second instead of forty.
pub const IDLE_SLEEP: Duration = Duration::from_millis(250);
/// Lines the writer aims to find at each wake: it sleeps as long as the
/// last interval's rate takes to queue this many, within
/// [`FLUSH_EVERY`]..=[`IDLE_SLEEP`].
pub const BATCH: u32 = 256;
/// The `target` the lines carry (the module that used to log them).
const TARGET: &str = "sluice_sidecar::accounting";

/// One request's line. Fields left `None` are left out of the line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub request_id: String,
    /// `chat`, `embeddings`.
    pub operation: Option<&'static str>,
    /// The route; also the provider and model when `target` is set.
    pub labels: Arc<TargetLabels>,
    /// Whether the line names the provider and model of `labels`.
    pub target: bool,
    pub attempts: Option<u32>,
    pub duration_ms: u64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: Option<Money>,
    /// The HTTP status of an error answer.
    pub status: Option<u16>,
    /// The stable error code of an error answer.
    pub code: Option<&'static str>,
    /// The failure class behind an error answer.
    pub class: Option<&'static str>,
    /// `success`, `error`, `client_cancelled`.
    pub outcome: &'static str,
}

impl Entry {
    /// The fields every request line has: its id, operation, where it
    /// went, how many targets it tried, how long it took, how it ended.
    pub fn request(
        request_id: &str,
        operation: &'static str,
        target: Arc<TargetLabels>,
        attempts: u32,
        duration_ms: u64,
        outcome: &'static str,
    ) -> Self {
        Self {
            request_id: request_id.to_owned(),
            operation: Some(operation),
            labels: target,
            target: true,
            attempts: Some(attempts),
            duration_ms,
            outcome,
            ..Default::default()
        }
    }
}

enum Msg {
    Entry(SystemTime, Box<Entry>),
    /// Write everything before this, then answer.
    Flush(mpsc::Sender<()>),
}

/// The request path's handle on the access log.
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    /// The writer thread, to wake it early.
    writer: Option<std::thread::Thread>,
    /// Entries sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    /// `queued` at which a sender wakes the writer.
    wake_at: usize,
    dropped: Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.tx.is_some())
            .field("dropped", &self.dropped.get())
            .finish()
    }
}

impl AccessLog {
    /// Starts the writer thread (writing to stderr); `dropped` counts the
    /// entries refused because the channel was full. If the thread cannot
    /// be started, lines are dropped and counted.
    pub fn start(dropped: Counter) -> Self {
        Self::with_writer(dropped, CAPACITY, std::io::stderr)
    }

    /// Like [`AccessLog::start`], with room for `capacity` waiting entries,
    /// writing to what `writer` opens (tests).
    pub fn with_writer<W, F>(dropped: Counter, capacity: usize, writer: F) -> Self
    where
        W: Write,
        F: FnMut() -> W + Send + 'static,
    {
        Self::paced(dropped, capacity, Pace::default(), writer)
    }

    /// Like [`AccessLog::with_writer`], sleeping within `pace` (tests).
    fn paced<W, F>(dropped: Counter, capacity: usize, pace: Pace, writer: F) -> Self
    where
        W: Write,
        F: FnMut() -> W + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let started = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, &taken, pace, writer));
        let writer = started.as_ref().ok().map(|h| h.thread().clone());
        Self {
            tx: started.ok().map(|_| tx),
            writer,
            queued,
            wake_at: (capacity / 4).max(1),
            dropped,
        }
    }

    /// An access log that writes nothing.
    pub fn disabled() -> Self {
        Self {
            tx: None,
            writer: None,
            queued: Arc::new(AtomicUsize::new(0)),
            wake_at: usize::MAX,
            dropped: Counter::default(),
        }
    }

    /// Queues `entry`; never blocks. Nothing is queued when `info` is not
    /// enabled for the access log's target.
    pub fn record(&self, entry: Entry) {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let Some(tx) = &self.tx else { return };
        // Counted before it is sent, so the writer never takes more than
        // was counted.
        let before = self.queued.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(Msg::Entry(SystemTime::now(), Box::new(entry))) {
            Ok(()) => {
                if before + 1 == self.wake_at {
                    self.wake();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.dropped.inc();
            }
        }
    }

    fn wake(&self) {
        if let Some(writer) = &self.writer {
            writer.unpark();
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is
    /// written: at shutdown, so the last requests' lines are not lost.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = mpsc::channel();
        // A full channel: the sender that filled it woke the writer.
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(done);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        self.wake();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = wait.recv_timeout(left);
    }

    /// Entries dropped so far because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// Bytes of lines written at once, at most: the buffer never grows past
/// it, so a burst does not leave a large buffer behind (idle RSS).
const WRITE_AT: usize = 32 << 10;

/// The writer thread: sleeps as [`Pace::next_sleep`] says (a sender or
/// [`AccessLog::flush`] may wake it early; senders never wake it on
/// every request, so a request costs no thread wake-up), drains, formats,
/// writes in [`WRITE_AT`]-sized batches. Ends when every sender is gone,
/// after writing what was left.
fn write_loop<W: Write>(
    rx: Receiver<Msg>,
    queued: &AtomicUsize,
    pace: Pace,
    mut writer: impl FnMut() -> W,
) {
    let mut buf = Vec::with_capacity(WRITE_AT + 1024);
    let mut clock = Clock::default();
    // A log that cannot be written is not a reason to fail requests.
    let mut write = |buf: &mut Vec<u8>| {
        if !buf.is_empty() {
            let mut w = writer();
            let _ = w.write_all(buf).and_then(|()| w.flush());
            buf.clear();
        }
    };
    let mut sleep = pace.shortest;
    loop {
        let slept_from = std::time::Instant::now();
        std::thread::park_timeout(sleep);
        let slept = slept_from.elapsed();
        let mut found = 0u32;
        let mut acks = Vec::new();
        let ended = loop {
            match rx.try_recv() {
                Ok(Msg::Entry(at, e)) => {
                    found = found.saturating_add(1);
                    queued.fetch_sub(1, Ordering::Relaxed);
                    format_line(&mut buf, &mut clock, at, &e);
                    if buf.len() >= WRITE_AT {
                        write(&mut buf);
                    }
                }
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        write(&mut buf);
        sleep = pace.next_sleep(slept, found);
        for ack in acks {
            let _ = ack.send(());
        }
        if ended {
            return;
        }
    }
}

/// How long the writer sleeps between drains.
#[derive(Clone, Copy, Debug)]
struct Pace {
    shortest: Duration,
    longest: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            shortest: FLUSH_EVERY,
            longest: IDLE_SLEEP,
        }
    }
}

impl Pace {
    /// The next sleep, having found `found` lines after sleeping `slept`:
    /// as long as that rate takes to queue [`BATCH`] lines, within
    /// `shortest..=longest`; `longest` when it found none.
    fn next_sleep(self, slept: Duration, found: u32) -> Duration {
        if found == 0 {
            return self.longest;
        }
        (slept * BATCH / found).clamp(self.shortest, self.longest)
    }
}

/// RFC 3339 timestamps with microseconds; the date and time to the second
/// are formatted once per second, not once per line.
#[derive(Default)]
pub struct Clock {
    secs: u64,
    /// `2026-11-21T16:02:06` of `secs`; empty before the first line.
    prefix: Vec<u8>,
}

impl Clock {
    fn write(&mut self, buf: &mut Vec<u8>, at: SystemTime) {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if self.prefix.is_empty() || since.as_secs() != self.secs {
            self.secs = since.as_secs();
            self.prefix.clear();
            let second = SystemTime::UNIX_EPOCH + Duration::from_secs(self.secs);
            match jiff::Timestamp::try_from(second) {
                Ok(ts) => {
                    let _ = write!(self.prefix, "{}", ts.strftime("%Y-%m-%dT%H:%M:%S"));
                }
                Err(_) => self.prefix.extend_from_slice(b"1970-01-01T00:00:00"),
            }
        }
        buf.extend_from_slice(&self.prefix);
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 7];
        digits[0] = b'.';
        let mut n = micros;
        for d in digits[1..].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        buf.extend_from_slice(&digits);
        buf.push(b'Z');
    }
}

/// Appends one line: the shape `tracing-subscriber`'s JSON formatter wrote.
pub fn format_line(buf: &mut Vec<u8>, clock: &mut Clock, at: SystemTime, e: &Entry) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    clock.write(buf, at);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\"");
    string(buf, "request_id", &e.request_id);
    if let Some(op) = e.operation {
        string(buf, "operation", op);
    }
    string(buf, "route", &e.labels.route);
    if e.target {
        string(buf, "provider", &e.labels.provider);
        string(buf, "model", &e.labels.model);
    }
    if let Some(n) = e.attempts {
        number(buf, "attempts", u64::from(n));
    }
    number(buf, "duration_ms", e.duration_ms);
    if let Some(n) = e.input_tokens {
        number(buf, "input_tokens", n);
    }
    if let Some(n) = e.output_tokens {
        number(buf, "output_tokens", n);
    }
    if let Some(c) = e.cost_usd {
        let mut digits = [0u8; 64];
        string(buf, "cost_usd", c.write_digits(&mut digits));
    }
    if let Some(s) = e.status {
        number(buf, "status", u64::from(s));
    }
    if let Some(c) = e.code {
        string(buf, "code", c);
    }
    if let Some(c) = e.class {
        string(buf, "class", c);
    }
    string(buf, "outcome", e.outcome);
    buf.extend_from_slice(b"},\"target\":\"");
    buf.extend_from_slice(TARGET.as_bytes());
    buf.extend_from_slice(b"\"}\n");
}

fn key(buf: &mut Vec<u8>, key: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
}

fn string(buf: &mut Vec<u8>, k: &str, value: &str) {
    key(buf, k);
    if crate::json::push_string(buf, value).is_err() {
        buf.extend_from_slice(b"\"\"");
    }
}

fn number(buf: &mut Vec<u8>, k: &str, mut n: u64) {
    key(buf, k);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests;
