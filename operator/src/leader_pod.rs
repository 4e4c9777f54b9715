//! Marks the pod of the replica that serves sidecars with
//! `sluice.dev/leader=true`. The chart's distribution Service selects that
//! label, so kube-proxy sends sidecars to the leader only, while both
//! replicas stay Ready (a readiness probe that failed on the standby would
//! stall every rolling update and take the standby out of the webhook's
//! Service). This is the pattern Vault uses for its active node.
//!
//! The rules:
//! - a replica starting (first start or container restart) removes the
//!   label from its own pod: it is not serving yet;
//! - the leader, once its caches are synced and it serves, labels its pod
//!   and removes the label from its release's other pods (a leader that
//!   was SIGKILLed could not take its own off); it checks again every
//!   [`RECHECK`], sooner after a failure;
//! - a leader shutting down or losing the Lease removes its label before
//!   it lets go.
//!
//! Outside a pod (no `POD_NAME`, or no such pod) nothing is labelled and
//! sidecars that reach the standby get `503 not_leader` and reconnect.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::error::Error;

/// The label the distribution Service selects.
pub const LABEL: &str = "sluice.dev/leader";

/// Labels of our own pod that identify the release: another pod must
/// carry the same values for us to take its leader label off.
const RELEASE_LABELS: [&str; 3] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
];

/// How often the leader makes sure the labels are right.
pub const RECHECK: Duration = Duration::from_secs(30);
/// How soon it tries again after an API error.
pub const RETRY: Duration = Duration::from_secs(2);

/// This replica's pod.
#[derive(Clone, Debug)]
pub struct LeaderPod {
    api: Api<Pod>,
    name: String,
}

/// The merge patch that sets (`true`) or removes (`null`) the label.
pub fn patch(leading: bool) -> serde_json::Value {
    let value = if leading {
        serde_json::Value::from("true")
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({ "metadata": { "labels": { LABEL: value } } })
}

/// The selector for pods of the same release that carry the label, from
/// our own pod's labels.
pub fn others_selector(own: &BTreeMap<String, String>) -> String {
    let mut terms = vec![format!("{LABEL}=true")];
    for key in RELEASE_LABELS {
        if let Some(v) = own.get(key) {
            terms.push(format!("{key}={v}"));
        }
    }
    terms.join(",")
}

impl LeaderPod {
    /// The pod named `name` in `namespace` (where the operator runs).
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
        }
    }

    /// Sets or removes the label on our own pod. `Ok(false)` when there is
    /// no such pod (not running in one).
    pub async fn mark(&self, leading: bool) -> Result<bool, Error> {
        self.label(&self.name, leading).await
    }

    /// Sets or removes the label on `pod`; `Ok(false)` when it is gone.
    async fn label(&self, pod: &str, leading: bool) -> Result<bool, Error> {
        match self
            .api
            .patch(pod, &PatchParams::default(), &Patch::Merge(patch(leading)))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the label off the release's other pods; returns how many had it.
    pub async fn strip_others(&self) -> Result<usize, Error> {
        let Some(own) = self.api.get_opt(&self.name).await? else {
            return Ok(0);
        };
        let labels = own.metadata.labels.unwrap_or_default();
        let list = self
            .api
            .list(&ListParams::default().labels(&others_selector(&labels)))
            .await?;
        let mut stripped = 0;
        for pod in list {
            let Some(name) = pod.metadata.name.filter(|n| *n != self.name) else {
                continue;
            };
            if self.label(&name, false).await? {
                tracing::info!(pod = %name, "took the leader label off a former leader's pod");
                stripped += 1;
            }
        }
        Ok(stripped)
    }

    /// Removes our label at start-up; errors are logged, not fatal.
    pub async fn unmark_quietly(&self) {
        if let Err(e) = self.mark(false).await {
            tracing::warn!(pod = %self.name, error = %e, "cannot remove the leader label from this pod");
        }
    }

    /// While leading: keeps our pod labelled and the others not. Never
    /// returns (the caller drops it when leadership ends).
    pub async fn hold(&self) {
        let mut announced = false;
        loop {
            let outcome = match self.strip_others().await {
                Ok(_) => self.mark(true).await,
                Err(e) => Err(e),
            };
            let wait = match outcome {
                Ok(found) => {
                    if !announced {
                        if found {
                            tracing::info!(pod = %self.name, label = LABEL, "labelled this pod as the leader: the distribution Service now sends sidecars here");
                        } else {
                            tracing::info!(pod = %self.name, "no pod of this name: not labelling (sidecars reaching the standby are told not_leader)");
                        }
                        announced = true;
                    }
                    RECHECK
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name, error = %e, "cannot label this pod as the leader; retrying");
                    RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_or_removes_only_the_leader_label() {
        assert_eq!(
            patch(true).to_string(),
            r#"{"metadata":{"labels":{"sluice.dev/leader":"true"}}}"#
        );
        assert_eq!(
            patch(false).to_string(),
            r#"{"metadata":{"labels":{"sluice.dev/leader":null}}}"#
        );
    }

    #[test]
    fn former_leaders_are_looked_for_in_the_same_release_only() {
        let own: BTreeMap<String, String> = [
            ("app.kubernetes.io/name", "sluice"),
            ("app.kubernetes.io/instance", "prod"),
            ("app.kubernetes.io/component", "operator"),
            ("pod-template-hash", "abc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            others_selector(&own),
            "sluice.dev/leader=true,app.kubernetes.io/name=sluice,\
             app.kubernetes.io/instance=prod,app.kubernetes.io/component=operator"
        );
        assert_eq!(others_selector(&BTreeMap::new()), "sluice.dev/leader=true");
    }
}
