//! Operator metrics (prometheus-client), passed around in the context and
//! served on `--metrics-listen` with `/healthz` and `/readyz`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every operator metric.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    pub compiles: Counter,
    pub snapshots_pushed: Counter,
    pub snapshots_built: Counter,
    pub connected_sidecars: Gauge,
    pub leader: Gauge,
    pub push_latency: Histogram,
    pub report_lag: Histogram,
    pub status_writes: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn kind(kind: &str) -> Labels {
    vec![("kind".to_owned(), kind.to_owned())]
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("sluice_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let status_writes = Family::<Labels, Counter>::default();
        let compiles = Counter::default();
        let snapshots_pushed = Counter::default();
        let snapshots_built = Counter::default();
        let connected_sidecars = Gauge::default();
        let leader = Gauge::default();
        let push_latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let report_lag = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconciles", "Reconciles by kind", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind",
            errors.clone(),
        );
        registry.register(
            "status_writes",
            "Status subresource writes by kind",
            status_writes.clone(),
        );
        registry.register("compiles", "Cluster state compilations", compiles.clone());
        registry.register(
            "snapshots_pushed",
            "Snapshots published to connected or future sidecars because their version changed",
            snapshots_pushed.clone(),
        );
        registry.register(
            "snapshots_built",
            "Pod snapshots rebuilt because their inputs changed (the others are kept from the previous compile)",
            snapshots_built.clone(),
        );
        registry.register(
            "connected_sidecars",
            "Open snapshot streams",
            connected_sidecars.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the Lease",
            leader.clone(),
        );
        registry.register(
            "snapshot_push_latency_seconds",
            "From a snapshot's publication to its write on a sidecar's stream",
            push_latency.clone(),
        );
        registry.register(
            "report_lag_seconds",
            "From a report's arrival to its acknowledgement (spend persisted)",
            report_lag.clone(),
        );
        Arc::new(Self {
            registry,
            reconciles,
            errors,
            compiles,
            snapshots_pushed,
            snapshots_built,
            connected_sidecars,
            leader,
            push_latency,
            report_lag,
            status_writes,
        })
    }

    pub fn reconciled(&self, k: &str) {
        self.reconciles.get_or_create(&kind(k)).inc();
    }

    pub fn failed(&self, k: &str) {
        self.errors.get_or_create(&kind(k)).inc();
    }

    pub fn status_written(&self, k: &str) {
        self.status_writes.get_or_create(&kind(k)).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
