//! Budget status: window, spend, percent used, state, top tenants and
//! workloads, and the `folded` sequence marks that make spend exactly-once.
//!
//! Both this controller and the report endpoint write budget status; both go
//! through [`persist`], which serializes writes (so they land in the order
//! their content was computed) and commits many reports' spend at once
//! (see [`crate::state::Persistence`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use sluice_crds::Budget;

use super::{apply_status, backoff, status_differs, succeeded};
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
    {
        // Marked like an ingest, so the persist below writes it.
        let _agg = ctx.aggregator();
        ctx.persistence.mark(std::slice::from_ref(&key));
    }
    persist(&ctx, std::slice::from_ref(&key)).await?;
    succeeded(&ctx, budget.as_ref());
    Ok(Action::await_change())
}

pub fn error_policy(budget: Arc<Budget>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff(&ctx, budget.as_ref(), error)
}

/// Writes the status of each of `budgets` that is pending (see
/// [`crate::state::Persistence`]) and whose status changed. Budgets deleted
/// meanwhile are dropped; a budget not compiled yet stays pending and makes
/// this fail, so a report is never acknowledged before its spend is
/// persisted.
pub async fn persist(ctx: &Context, budgets: &[Key]) -> Result<(), Error> {
    let p = &ctx.persistence;
    let _writer = p.writer.lock().await;
    let start = p.ingests.load(Ordering::SeqCst);
    let todo: Vec<Key> = match p.pending.lock() {
        Ok(pending) => budgets
            .iter()
            .filter(|b| pending.contains_key(*b))
            .cloned()
            .collect(),
        Err(_) => return Err(Error::NotReady("pending budgets lock poisoned".into())),
    };
    let compiled = ctx.compiled();
    for key in todo {
        let done = |p: &crate::state::Persistence| {
            if let Ok(mut pending) = p.pending.lock()
                && pending.get(&key).is_some_and(|m| *m <= start)
            {
                pending.remove(&key);
            }
        };
        let Some(budget) = ctx
            .stores
            .budgets
            .get(&ObjectRef::new(&key.1).within(&key.0))
        else {
            done(p);
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
        done(p);
    }
    Ok(())
}
