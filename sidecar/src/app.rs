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
    pub limits: Limits,
    pub bounds: Bounds,
    /// Breakers and per-target figures, across configuration reloads.
    pub health: crate::health::Health,
    /// Settles budget reservations and forwards spend, off the hot path.
    pub accountant: Accountant,
    /// Answers by `idempotency-key`, across configuration reloads.
    pub idempotency: Idempotency<Arc<Cached>>,
}

impl App {
    /// The shared state, spend going to `sink`; spawns the accounting task
    /// (so it must be called inside a tokio runtime).
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
            limits,
            bounds,
            health: Default::default(),
            accountant,
            idempotency: Idempotency::new(IDEMPOTENCY_TTL, IDEMPOTENCY_ENTRIES),
        }
    }
}
