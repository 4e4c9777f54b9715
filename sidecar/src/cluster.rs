//! The sidecar's side of the operator protocol (`--operator URL --ca-file
//! --token-file`): receive snapshots, apply them atomically, keep the last
//! good one on disk, and report health and usage.
//!
//! - `GET {operator}/v1/snapshots/stream?namespace=…&pod=…` with
//!   `Authorization: Bearer <projected token>` streams newline-delimited
//!   JSON snapshots. Each is validated and applied whole, or refused with a
//!   reason that the next report carries (the old one keeps serving).
//! - `POST {operator}/v1/reports` every report interval: the version in
//!   use, the last refusal, target health, and every usage delta not yet
//!   acknowledged. A delta is dropped only once the operator acknowledges
//!   its sequence number, so spend survives reconnects; the operator
//!   de-duplicates by `(instance, seq)`.
//! - `--state-dir/state.json` (mode 0600) keeps the last good snapshot, the
//!   instance name, the next sequence and unacknowledged usage, so a
//!   restarted sidecar serves at once and loses no spend.
//! - The token file is read on every connection: projected tokens rotate.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_crds::budget::Spend;
use sluice_crds::report::{ConfigState, Rejection, Report, ReportAck, TargetHealth, UsageDelta};
use sluice_crds::route::FallbackRecord;
use sluice_crds::snapshot::Snapshot;

/// What the rest of the sidecar offers the protocol.
pub trait Runtime: Send + Sync + 'static {
    /// Validates and applies a snapshot atomically. `Err` keeps the
    /// current configuration and names the reason.
    fn apply(&self, snapshot: &Snapshot) -> Result<(), String>;
    /// Health per target and the latest fallback per route since the last call.
    fn health(&self) -> (Vec<TargetHealth>, BTreeMap<String, FallbackRecord>);
    /// Budgets whose allowance is running low.
    fn allowance_low(&self) -> Vec<String> {
        Vec::new()
    }
    /// Hands back surplus allowance the applied snapshot asked for,
    /// through `record` (budget, window start, amount → report sequence).
    fn release_surplus(&self, _record: &dyn Fn(&str, &str, &Spend) -> u64) {}
}

/// Where to reach the operator and who this sidecar is.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub operator: String,
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    pub state_dir: PathBuf,
    pub namespace: String,
    pub pod: String,
}

/// A snapshot with its held routes filled in from the previous one: a
/// route the operator holds (its new spec is invalid) keeps the version
/// this sidecar already has; a held route it never had is simply absent.
pub fn merge_held(previous: Option<&Snapshot>, mut next: Snapshot) -> Snapshot {
    if let Some(prev) = previous {
        for name in &next.held_routes {
            if next.routes.iter().any(|r| &r.name == name) {
                continue;
            }
            if let Some(r) = prev.routes.iter().find(|r| &r.name == name) {
                next.routes.push(r.clone());
                // Its providers too, as they were.
                let needed: Vec<&str> = r.spec.uses().map(|(provider, _)| provider).collect();
                for p in prev
                    .providers
                    .iter()
                    .filter(|p| needed.contains(&p.name.as_str()))
                {
                    if !next.providers.iter().any(|q| q.name == p.name) {
                        next.providers.push(p.clone());
                    }
                }
            }
        }
    }
    next
}

/// Usage waiting to be acknowledged.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outbox {
    /// Random per sidecar, kept across restarts of the container.
    pub instance: String,
    /// The next report sequence.
    pub next_report: u64,
    /// The next usage delta sequence.
    pub next_seq: u64,
    /// Sent (or sealed to be sent) and not yet acknowledged, oldest first.
    pub pending: VecDeque<UsageDelta>,
    /// Spend and handed-back allowance since the last seal, by (budget,
    /// tenant, window start).
    #[serde(skip)]
    open: BTreeMap<(String, Option<String>, String), (Spend, Spend)>,
}

impl Outbox {
    pub fn new(instance: String) -> Self {
        Self {
            instance,
            next_report: 1,
            next_seq: 1,
            ..Self::default()
        }
    }

    /// Counts spend against a budget (off the hot path: the accounting task calls this).
    pub fn record(
        &mut self,
        budget: &str,
        tenant: Option<&str>,
        window_start: &str,
        spent: &Spend,
    ) {
        self.open_entry(budget, tenant, window_start).0.add(spent);
    }

    /// Counts allowance handed back (of the budget's total).
    pub fn record_release(&mut self, budget: &str, window_start: &str, released: &Spend) {
        self.open_entry(budget, None, window_start).1.add(released);
    }

    fn open_entry(
        &mut self,
        budget: &str,
        tenant: Option<&str>,
        window_start: &str,
    ) -> &mut (Spend, Spend) {
        self.open
            .entry((
                budget.to_owned(),
                tenant.map(str::to_owned),
                window_start.to_owned(),
            ))
            .or_default()
    }

    /// Turns open spend into numbered deltas. A delta never changes once
    /// numbered, so a resend is byte-for-byte the same usage.
    pub fn seal(&mut self) {
        for ((budget, tenant, window_start), (spent, released)) in std::mem::take(&mut self.open) {
            self.pending.push_back(UsageDelta {
                seq: self.next_seq,
                budget,
                tenant,
                window_start,
                spent,
                released,
            });
            self.next_seq += 1;
        }
    }

    /// Drops what the operator has folded.
    pub fn ack(&mut self, ack: &ReportAck) {
        while self
            .pending
            .front()
            .is_some_and(|d| d.seq <= ack.usage_acked_through)
        {
            self.pending.pop_front();
        }
    }
}

/// What survives a restart of the sidecar container.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(default)]
    pub outbox: Outbox,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Reads the state file, if there is a readable one.
    pub fn load(dir: &Path) -> Option<State> {
        let bytes = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes atomically (temp file, then rename) with mode 0600: it holds
    /// provider keys.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("state.json.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, Self::path(dir))
    }
}

/// Reconnect delays: full jitter over an exponential ceiling.
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            attempt: 0,
            base,
            max,
        }
    }

    /// The next delay; `unit` in [0, 1) is the jitter draw.
    pub fn next(&mut self, unit: f64) -> Duration {
        let d = crate::balance::full_jitter(self.base, self.max, self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Splits a byte stream into newline-delimited frames, refusing a frame
/// longer than `max`.
#[derive(Debug)]
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Feeds bytes; returns complete lines (without the newline).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.buf.extend_from_slice(chunk);
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
                let line = std::mem::take(&mut self.buf);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    out.push(line);
                }
            } else if self.buf.len() > self.max {
                self.buf.clear();
                return Err(format!("a snapshot line exceeds {} bytes", self.max));
            }
        }
        Ok(out)
    }
}

/// The protocol state shared by the stream and report tasks.
pub struct Session {
    pub options: ClusterOptions,
    /// Wakes the report task before its interval (a request found a budget
    /// allowance spent and waits for a renewed one).
    pub report_now: Arc<tokio::sync::Notify>,
    runtime: Arc<dyn Runtime>,
    state: Mutex<State>,
    config: Mutex<ConfigState>,
}

impl Session {
    /// Starts from the state file: a sidecar restarted while the operator
    /// is away serves its last good snapshot at once.
    pub fn new(
        options: ClusterOptions,
        runtime: Arc<dyn Runtime>,
        instance: impl FnOnce() -> String,
    ) -> Arc<Self> {
        let mut state = State::load(&options.state_dir).unwrap_or_default();
        if state.outbox.instance.is_empty() {
            state.outbox = Outbox::new(instance());
        }
        let mut config = ConfigState::default();
        if let Some(s) = &state.snapshot {
            match runtime.apply(s) {
                Ok(()) => config.applied = Some(s.version.clone()),
                Err(reason) => {
                    tracing::warn!(%reason, "the saved snapshot no longer applies");
                    state.snapshot = None;
                }
            }
        }
        Arc::new(Self {
            options,
            report_now: Arc::new(tokio::sync::Notify::new()),
            runtime,
            state: Mutex::new(state),
            config: Mutex::new(config),
        })
    }

    /// Whether a snapshot is in use.
    pub fn has_config(&self) -> bool {
        self.config
            .lock()
            .map(|c| c.applied.is_some())
            .unwrap_or(false)
    }

    /// Applies one received snapshot (a line of the stream).
    pub fn receive(&self, line: &[u8]) -> Result<(), String> {
        let snapshot: Snapshot =
            serde_json::from_slice(line).map_err(|e| format!("not a snapshot: {e}"))?;
        if !snapshot.is_sealed() {
            return self.refuse(
                &snapshot.version,
                "the version does not match the contents".into(),
            );
        }
        if self
            .config
            .lock()
            .ok()
            .and_then(|c| c.applied.clone())
            .as_deref()
            == Some(snapshot.version.as_str())
        {
            return Ok(());
        }
        let previous = self.state.lock().ok().and_then(|s| s.snapshot.clone());
        let version = snapshot.version.clone();
        let merged = merge_held(previous.as_ref(), snapshot);
        match self.runtime.apply(&merged) {
            Ok(()) => {
                tracing::info!(%version, routes = merged.routes.len(), "configuration applied");
                if let Ok(mut c) = self.config.lock() {
                    c.applied = Some(version);
                }
                if let Ok(mut s) = self.state.lock() {
                    s.snapshot = Some(merged);
                    if let Err(e) = s.save(&self.options.state_dir) {
                        tracing::warn!(error = %e, "cannot write the state file");
                    }
                }
                self.runtime.release_surplus(&|budget, window, amount| {
                    self.record_release(budget, window, amount)
                });
                Ok(())
            }
            Err(reason) => self.refuse(&version, reason),
        }
    }

    fn refuse(&self, version: &str, reason: String) -> Result<(), String> {
        tracing::warn!(%version, %reason, "configuration refused; the previous one keeps serving");
        if let Ok(mut c) = self.config.lock() {
            c.rejected = Some(Rejection {
                version: version.to_owned(),
                reason: reason.clone(),
            });
        }
        Err(reason)
    }

    /// Counts spend for the next report; returns that report's sequence.
    pub fn record_usage(
        &self,
        budget: &str,
        tenant: Option<&str>,
        window_start: &str,
        spent: &Spend,
    ) -> u64 {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.outbox.record(budget, tenant, window_start, spent);
        s.outbox.next_report
    }

    /// Counts allowance handed back for the next report; returns that
    /// report's sequence.
    pub fn record_release(&self, budget: &str, window_start: &str, released: &Spend) -> u64 {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.outbox.record_release(budget, window_start, released);
        s.outbox.next_report
    }

    /// The next report: everything not yet acknowledged.
    pub fn next_report(&self) -> Report {
        let (targets, fallbacks) = self.runtime.health();
        let config = self.config.lock().map(|c| c.clone()).unwrap_or_default();
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        state.outbox.seal();
        let sequence = state.outbox.next_report;
        state.outbox.next_report += 1;
        let report = Report {
            namespace: self.options.namespace.clone(),
            pod: self.options.pod.clone(),
            instance: state.outbox.instance.clone(),
            sequence,
            config,
            targets,
            usage: state.outbox.pending.iter().cloned().collect(),
            fallbacks,
            allowance_low: self.runtime.allowance_low(),
        };
        if let Err(e) = state.save(&self.options.state_dir) {
            tracing::warn!(error = %e, "cannot write the state file");
        }
        report
    }

    /// Records the operator's answer to a report.
    pub fn acknowledged(&self, ack: &ReportAck) {
        if let Ok(mut s) = self.state.lock() {
            s.outbox.ack(ack);
        }
    }

    /// The report interval of the snapshot in use (2s until there is one).
    pub fn report_interval(&self) -> Duration {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.snapshot.as_ref().map(|s| s.report_interval.get()))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(2))
    }
}

mod transport;
pub use transport::{OperatorClient, client, run_reports, run_stream};

#[cfg(test)]
mod tests;
