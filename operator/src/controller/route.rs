//! LLMRoute status: `Accepted`, `ResolvedRefs`, `Programmed`, sidecars
//! selected/synced, per-target health.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use sluice_crds::LLMRoute;

use super::{apply_status, backoff, status_differs, succeeded};
use crate::error::Error;
use crate::events;
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
    // A sidecar running the current configuration at an older version
    // (only spend and allowances differ) counts as synced.
    let mut snapshots = None;
    {
        let agg = ctx.aggregator();
        for pod in &verdict.selected_pods {
            let (Some(applied), Some(current)) = (agg.applied(pod), compiled.snapshots.get(pod))
            else {
                continue;
            };
            if applied != current.version && ctx.hub.same_config(pod, applied, &current.version) {
                // Only the selected pods' entries are read by route_status.
                let map = snapshots.get_or_insert_with(|| {
                    verdict
                        .selected_pods
                        .iter()
                        .filter_map(|p| Some((p.clone(), compiled.snapshots.get(p)?.clone())))
                        .collect::<std::collections::BTreeMap<_, _>>()
                });
                if let Some(s) = map.get_mut(pod) {
                    s.version = applied.to_owned();
                }
            }
        }
    }
    let snapshots = snapshots.as_ref().unwrap_or(&compiled.snapshots);
    let status = ctx.aggregator().route_status(
        &key,
        verdict,
        snapshots,
        route.status.as_ref(),
        Time(jiff::Timestamp::now()),
        now_ms(),
    );
    if status_differs(route.status.as_ref(), &status) {
        apply_status(&ctx, route.as_ref(), &status).await?;
        let notices = events::route(route.status.as_ref(), &status);
        ctx.events.publish(route.as_ref(), notices).await;
    }
    succeeded(&ctx, route.as_ref());
    Ok(Action::await_change())
}

pub fn error_policy(route: Arc<LLMRoute>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff(&ctx, route.as_ref(), error)
}
