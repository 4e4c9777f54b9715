//! Route: which route serves the requested model, and in which order its
//! targets are tried.
//!
//! Today: the virtual model or an alias picks the route, and targets are
//! tried in `priority` order. Issue 4 adds, here and in this order: `rules`
//! (complexity, input tokens, tools, images, headers), the capability
//! filter (context window, tools, vision, json), the other strategies
//! (weighted, latency, cost, least-busy) and skipping open breakers.

use std::sync::Arc;

use crate::config::{Config, Route, Target};
use crate::error::ApiError;

/// The route serving `model`, or 404 `model_not_found`.
pub fn resolve(config: &Config, model: &str) -> Result<Arc<Route>, ApiError> {
    config
        .route(model)
        .cloned()
        .ok_or_else(|| ApiError::model_not_found(model))
}

/// The targets to try, in order. Never empty for a valid route; an empty
/// plan answers 503 `no_healthy_target`.
pub fn plan(route: &Route) -> Vec<Target> {
    // Config already sorted targets by priority (stable for ties).
    route.targets.clone()
}
