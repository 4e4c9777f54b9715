//! Budget status: window, spend, percent used, state, top tenants and
//! workloads, and the `folded` sequence marks that make spend exactly-once.
//!
//! Both this controller and the report endpoint write budget status; both go
//! through [`persist`] under [`Context::persist`], so writes land in the
//! order their content was computed.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use sluice_crds::Budget;

use super::{apply_status, backoff, status_differs};
use crate::compile::Key;
use crate::error::Error;
use crate::events;
use crate::state::Context;

pub async fn reconcile(budget: Arc<Budget>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled("Budget");
    let key = (budget.namespace().unwrap_or_default(), budget.name_any());
    let compiled = ctx.compiled();
    if compiled
        .budgets
        .get(&key)
        .is_none_or(|v| v.generation != budget.metadata.generation)
    {
        return Ok(Action::await_change());
    }
    let mut pending = ctx.persist.lock().await;
    pending.insert(key);
    persist(&ctx, &mut pending).await?;
    Ok(Action::await_change())
}

pub fn error_policy(budget: Arc<Budget>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff(&ctx, "Budget", &budget.name_any(), error)
}

/// Writes the status of every budget in `pending` whose status changed,
/// removing each once written. The caller holds [`Context::persist`].
/// Budgets deleted meanwhile are dropped; budgets not compiled yet stay
/// pending and make this fail, so a report is not acknowledged before its
/// spend is persisted.
pub async fn persist(ctx: &Context, pending: &mut BTreeSet<Key>) -> Result<(), Error> {
    let compiled = ctx.compiled();
    for key in pending.clone() {
        let Some(budget) = ctx
            .stores
            .budgets
            .get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            pending.remove(&key);
            continue;
        };
        let Some(verdict) = compiled.budgets.get(&key) else {
            return Err(Error::NotReady(format!(
                "Budget {}/{} is not compiled yet",
                key.0, key.1
            )));
        };
        let window = budget.spec.window.bounds_rfc3339(jiff::Timestamp::now());
        let status = ctx.aggregator().budget_status(
            &key,
            &budget,
            verdict,
            &window,
            Time(jiff::Timestamp::now()),
        );
        if status_differs(budget.status.as_ref(), &status) {
            apply_status(ctx, budget.as_ref(), &status).await?;
            let notices = events::budget(budget.status.as_ref(), &status);
            ctx.events.publish(budget.as_ref(), notices).await;
        }
        pending.remove(&key);
    }
    Ok(())
}
