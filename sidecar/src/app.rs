//! The state every request shares, built once in `main` (or a test) and
//! passed in: configuration handle, egress client, metrics, limits.

use crate::attempt::Bounds;
use crate::config::ConfigHandle;
use crate::egress::Egress;
use crate::ingress::Limits;
use crate::metrics::Metrics;

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
}
