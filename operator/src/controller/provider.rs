//! Provider status: `CredentialsResolved`, `Ready`, `Healthy`, per-model
//! figures and breaker counts across sidecars.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use sluice_crds::Provider;

use super::{apply_status, backoff, status_differs, succeeded};
use crate::error::Error;
use crate::events;
use crate::state::{Context, now_ms};

pub async fn reconcile(provider: Arc<Provider>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("Provider");
    let key = (
        provider.namespace().unwrap_or_default(),
        provider.name_any(),
    );
    let compiled = ctx.compiled();
    let Some(verdict) = compiled
        .providers
        .get(&key)
        .filter(|v| v.generation == provider.metadata.generation)
    else {
        return Ok(Action::await_change());
    };
    let status = ctx.aggregator().provider_status(
        &key,
        verdict,
        &compiled.snapshots,
        provider.status.as_ref(),
        Time(jiff::Timestamp::now()),
        now_ms(),
    );
    if status_differs(provider.status.as_ref(), &status) {
        apply_status(&ctx, provider.as_ref(), &status).await?;
        let notices = events::provider(provider.status.as_ref(), &status);
        ctx.events.publish(provider.as_ref(), notices).await;
    }
    succeeded(&ctx, provider.as_ref());
    Ok(Action::await_change())
}

pub fn error_policy(provider: Arc<Provider>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff(&ctx, provider.as_ref(), error)
}
