//! Leader election with a `coordination.k8s.io/v1` Lease in the operator's
//! namespace. The leader alone serves sidecars, writes status and grants
//! allowances.
//!
//! The rules, kept deliberately small:
//! - no Lease, or one whose `renewTime + leaseDurationSeconds` has passed:
//!   take it (create, or replace at the observed `resourceVersion`, so of
//!   two replicas racing exactly one wins);
//! - ours: renew every third of the duration;
//! - someone else's and fresh: stand by and look again.
//!
//! A leader that cannot renew before its own Lease would expire gives up
//! ([`Error::LeaseLost`]); the binary then exits and restarts as a standby,
//! which is simpler and safer than unwinding every task. Expiry is judged
//! on the timestamps in the Lease, so replicas' clocks are assumed to agree
//! within a fraction of the duration (as client-go's elector also assumes).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::error::Error;

/// Whether a Lease held by someone else may be taken: nobody holds it, or
/// its holder has not renewed it within its duration.
pub fn takeable(spec: &LeaseSpec, now: jiff::Timestamp) -> bool {
    let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(secs)) => renewed
            .checked_add(jiff::SignedDuration::from_secs(i64::from(secs)))
            .is_ok_and(|end| end < now),
        _ => true,
    };
    vacant || expired
}

/// What to elect on.
#[derive(Clone, Debug)]
pub struct Election {
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// The outcome of one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    Leading,
    Standby,
}

impl Election {
    fn spec(
        &self,
        now: jiff::Timestamp,
        acquired: Option<MicroTime>,
        transitions: i32,
    ) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs().max(1)).unwrap_or(15),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One acquire-or-renew attempt.
    pub async fn round(&self, api: &Api<Lease>) -> Result<Round, Error> {
        let now = jiff::Timestamp::now();
        let Some(current) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Standby),
                Err(e) => Err(e.into()),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !takeable(&spec, now) {
            return Ok(Round::Standby);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut next = current.clone();
        next.spec = Some(self.spec(now, acquired, transitions));
        // `replace` carries the observed resourceVersion: a concurrent
        // writer makes this fail with 409 instead of both leading.
        match api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Standby),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up if this replica holds it, so a standby takes over
    /// at once instead of after the Lease expires (graceful shutdown).
    pub async fn release(&self, api: &Api<Lease>) -> Result<(), Error> {
        let Some(mut current) = api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = current.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        api.replace(&self.name, &PostParams::default(), &current)
            .await?;
        tracing::info!(identity = %self.identity, "released the Lease");
        Ok(())
    }

    /// Campaigns until leading (publishing `true` on `leader`), then renews
    /// until the Lease is lost, which ends it with an error.
    pub async fn run(&self, api: Api<Lease>, leader: watch::Sender<bool>) -> Result<(), Error> {
        let renew_every = self.duration / 3;
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let outcome = self.round(&api).await;
            match (outcome, last_renewed) {
                (Ok(Round::Leading), _) => {
                    if last_renewed.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became the leader");
                    }
                    last_renewed = Some(tokio::time::Instant::now());
                    leader.send_replace(true);
                }
                (Ok(Round::Standby), Some(_)) => {
                    leader.send_replace(false);
                    return Err(Error::LeaseLost(format!(
                        "Lease {} taken by another replica",
                        self.name
                    )));
                }
                (Ok(Round::Standby), None) => {}
                (Err(e), Some(at)) => {
                    tracing::warn!(error = %e, "renewing the Lease failed");
                    if at.elapsed() + renew_every >= self.duration {
                        leader.send_replace(false);
                        return Err(Error::LeaseLost(format!("could not renew: {e}")));
                    }
                }
                (Err(e), None) => tracing::warn!(error = %e, "reading the Lease failed"),
            }
            tokio::time::sleep(renew_every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: Option<&str>, renewed: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: by.map(str::to_owned),
            renew_time: Some(MicroTime(renewed.parse().expect("time"))),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_takeable_when_vacant_or_expired() {
        let now: jiff::Timestamp = "2026-11-21T12:00:20Z".parse().expect("time");
        assert!(!takeable(&held(Some("a"), "2026-11-21T12:00:10Z", 15), now));
        assert!(takeable(&held(Some("a"), "2026-11-21T12:00:04Z", 15), now));
        assert!(takeable(&held(None, "2026-11-21T12:00:19Z", 15), now));
        assert!(takeable(&held(Some(""), "2026-11-21T12:00:19Z", 15), now));
        assert!(takeable(&LeaseSpec::default(), now));
    }
}
