//! Controllers for the three kinds, in kube-rs runtime's shape:
//! `reconcile(obj, ctx) -> Result<Action>` plus `error_policy`, one
//! [`Context`]. Reconcile only writes status: the verdicts come from the
//! latest compile ([`Context::compiled`]) and the figures from the
//! aggregator, so each reconcile is a pure computation followed by at most
//! one server-side apply on `/status`, under field manager
//! [`FIELD_MANAGER`], made only when the status changed.
//!
//! Every compile (on a change, and once per report interval) triggers a
//! reconcile of every object, which is how report-driven figures reach
//! status.

pub mod budget;
pub mod provider;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::state::{Context, FIELD_MANAGER};

/// Writes `status` to `obj`'s `/status` with server-side apply.
pub async fn apply_status<K>(ctx: &Context, obj: &K, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.status_written(&K::kind(&()));
    Ok(())
}

/// Whether the object's status differs from `wanted` (as JSON, so fields
/// the API server defaulted compare like ours).
pub fn status_differs<T: Serialize>(current: Option<&T>, wanted: &T) -> bool {
    match current {
        None => true,
        Some(c) => serde_json::to_value(c).ok() != serde_json::to_value(wanted).ok(),
    }
}

/// Requeue with backoff: a quick retry, then the report interval.
pub fn backoff(ctx: &Context, kind: &str, name: &str, error: &Error) -> Action {
    ctx.metrics.failed(kind);
    tracing::warn!(kind, name, error = %error, "reconcile failed; requeueing");
    let interval: Duration = ctx.report_interval.into();
    Action::requeue(interval.max(Duration::from_secs(1)))
}

/// Every compile (a bump of the `compiled_tx` counter) as a trigger for
/// `reconcile_all_on`.
fn compile_ticks(
    rx: tokio::sync::watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// Runs the three controllers; never returns.
pub async fn run(ctx: Arc<Context>) {
    let cfg = watcher::Config::default;
    let routes = Controller::new(ctx.api::<sluice_crds::LLMRoute>(), cfg())
        .reconcile_all_on(compile_ticks(ctx.compiled_tx.subscribe()))
        .run(route::reconcile, route::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let providers = Controller::new(ctx.api::<sluice_crds::Provider>(), cfg())
        .reconcile_all_on(compile_ticks(ctx.compiled_tx.subscribe()))
        .run(provider::reconcile, provider::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let budgets = Controller::new(ctx.api::<sluice_crds::Budget>(), cfg())
        .reconcile_all_on(compile_ticks(ctx.compiled_tx.subscribe()))
        .run(budget::reconcile, budget::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    futures::join!(routes, providers, budgets);
}
