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

/// The delay before retrying after `failures` consecutive failures:
/// 500 ms doubling up to 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    Duration::from_millis(500)
        .checked_mul(
            1u32.checked_shl(failures.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .map_or(MAX, |d| d.min(MAX))
}

/// `error_policy` for every kind: count, log, requeue with exponential
/// backoff per object.
pub fn backoff<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, error: &Error) -> Action {
    let kind = K::kind(&());
    ctx.metrics.failed(&kind);
    let key = format!(
        "{kind}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    );
    let failures = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = backoff_delay(failures);
    tracing::warn!(object = %key, failures, ?delay, error = %error, "reconcile failed; requeueing");
    Action::requeue(delay)
}

/// Resets the backoff of an object whose reconcile succeeded.
pub fn succeeded<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K) {
    if let Ok(mut f) = ctx.failures.lock()
        && !f.is_empty()
    {
        f.remove(&format!(
            "{}/{}/{}",
            K::kind(&()),
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_millis(500));
        assert_eq!(backoff_delay(2), Duration::from_secs(1));
        assert_eq!(backoff_delay(4), Duration::from_secs(4));
        assert_eq!(backoff_delay(20), Duration::from_secs(300));
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
    }
}
