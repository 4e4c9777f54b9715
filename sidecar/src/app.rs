//! The state every request shares, built once in `main` (or a test) and
//! passed in: configuration handle, egress client, metrics, limits, and
//! the governance state that outlives configuration reloads.

use std::sync::Arc;
use std::time::Duration;

use crate::attempt::Bounds;
use crate::cache::Cached;
use crate::config::ConfigHandle;
use crate::egress::Egress;
use crate::idempotency::Idempotency;
use crate::ingress::Limits;
use crate::metering::{Accountant, SpendSink};
use crate::metrics::Metrics;

/// How long a completed answer is replayed for a repeated `idempotency-key`.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);
/// Completed answers kept for idempotent replays.
pub const IDEMPOTENCY_ENTRIES: usize = 10_000;
/// Usage records queued for the accounting task before it settles inline.
pub const ACCOUNTING_QUEUE: usize = 4_096;

/// Shared state of the servers.
#[derive(Debug)]
pub struct App {
    pub config: ConfigHandle,
    pub egress: Egress,
    pub metrics: Metrics,
    /// One line per request, written off the request path.
    pub access_log: crate::access_log::AccessLog,
    pub limits: Limits,
    pub bounds: Bounds,
    /// Breakers and per-target figures, across configuration reloads.
    pub health: crate::health::Health,
    /// Settles budget reservations and forwards spend, off the hot path.
    pub accountant: Accountant,
    /// Answers by `idempotency-key`, across configuration reloads.
    pub idempotency: Idempotency<Arc<Cached>>,
    /// Asking the operator for a renewed budget allowance (cluster mode).
    pub renewal: Renewal,
}

/// How a request that found this sidecar's budget allowance spent asks for
/// more: it wakes the report task (the report flags the budget) and waits
/// for the next configuration, which carries the renewed allowance.
#[derive(Debug)]
pub struct Renewal {
    /// Wakes the report task; `None` standalone (nobody to ask).
    report_now: Option<Arc<tokio::sync::Notify>>,
    applied: tokio::sync::watch::Sender<u64>,
}

impl Default for Renewal {
    fn default() -> Self {
        Self {
            report_now: None,
            applied: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Renewal {
    /// Renewal through the cluster session's report task.
    pub fn cluster(report_now: Arc<tokio::sync::Notify>) -> Self {
        Self {
            report_now: Some(report_now),
            ..Self::default()
        }
    }

    /// A new configuration is in force.
    pub fn applied(&self) {
        self.applied.send_modify(|n| *n += 1);
    }

    /// Asks for a renewal and waits at most `wait` for the next
    /// configuration. False when nobody can renew (standalone) or none came.
    pub async fn ask(&self, wait: Duration) -> bool {
        let Some(report_now) = &self.report_now else {
            return false;
        };
        let mut applied = self.applied.subscribe();
        applied.mark_unchanged();
        report_now.notify_one();
        tokio::time::timeout(wait, applied.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl App {
    /// The shared state, spend going to `sink`; spawns the accounting task
    /// (so it must be called inside a tokio runtime). The access log starts
    /// disabled: set [`App::access_log`] to start it.
    pub fn new(
        config: ConfigHandle,
        egress: Egress,
        limits: Limits,
        bounds: Bounds,
        sink: Arc<dyn SpendSink>,
    ) -> Self {
        let (accountant, task) = Accountant::new(sink, ACCOUNTING_QUEUE);
        tokio::spawn(task);
        Self {
            config,
            egress,
            metrics: Metrics::new(),
            access_log: crate::access_log::AccessLog::disabled(),
            limits,
            bounds,
            health: Default::default(),
            accountant,
            idempotency: Idempotency::new(IDEMPOTENCY_TTL, IDEMPOTENCY_ENTRIES),
            renewal: Renewal::default(),
        }
    }
}
