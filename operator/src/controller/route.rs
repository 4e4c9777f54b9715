//! LLMRoute status: `Accepted`, `ResolvedRefs`, `Programmed`, sidecars
//! selected/synced, per-target health.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use sluice_crds::LLMRoute;

use super::{apply_status, backoff, status_differs};
use crate::error::Error;
use crate::state::{Context, now_ms};

pub async fn reconcile(route: Arc<LLMRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("LLMRoute");
    let key = (route.namespace().unwrap_or_default(), route.name_any());
    let compiled = ctx.compiled();
    // Not compiled yet, or compiled from an older generation: the compile
    // that catches up triggers another reconcile.
    let Some(verdict) = compiled
        .routes
        .get(&key)
        .filter(|v| v.generation == route.metadata.generation)
    else {
        return Ok(Action::await_change());
    };
    let status = ctx.aggregator().route_status(
        &key,
        verdict,
        &compiled.snapshots,
        route.status.as_ref(),
        Time(jiff::Timestamp::now()),
        now_ms(),
    );
    if status_differs(route.status.as_ref(), &status) {
        apply_status(&ctx, route.as_ref(), &status).await?;
    }
    Ok(Action::await_change())
}

pub fn error_policy(route: Arc<LLMRoute>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff(&ctx, "LLMRoute", &route.name_any(), error)
}
