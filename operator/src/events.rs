//! Kubernetes Events for what an operator wants to hear about without
//! polling status: a breaker opened or all closed again, a budget past its
//! soft limit, degraded or exhausted (and back within limits), a
//! configuration rejected by a sidecar.
//!
//! Which events a status change deserves is decided by pure functions of
//! the old and new status ([`budget`], [`provider`], [`route`]); the
//! controllers publish them through one [`Publisher`] when they write
//! status. Publishing is best effort: a failure is logged, never retried
//! at the expense of status.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use sluice_crds::budget::{BudgetState, BudgetStatus};
use sluice_crds::provider::ProviderStatus;
use sluice_crds::route::LLMRouteStatus;

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

fn warn(reason: &'static str, note: String) -> Notice {
    Notice {
        warning: true,
        reason,
        note,
    }
}

fn normal(reason: &'static str, note: String) -> Notice {
    Notice {
        warning: false,
        reason,
        note,
    }
}

/// Events of a budget status change.
pub fn budget(old: Option<&BudgetStatus>, new: &BudgetStatus) -> Vec<Notice> {
    let before = old.map(|s| s.state).unwrap_or_default();
    if before == new.state {
        return Vec::new();
    }
    let used = new.percent_used;
    let resets = new
        .window
        .as_ref()
        .map(|w| w.end.clone())
        .unwrap_or_default();
    vec![match new.state {
        BudgetState::Ok => normal(
            "WithinLimit",
            format!("{used}% used; the budget is within its limits"),
        ),
        BudgetState::SoftLimit => warn(
            "SoftLimitReached",
            format!("{used}% used: past the soft limit"),
        ),
        BudgetState::Degraded => warn(
            "Degraded",
            format!(
                "{used}% used: degrade step {} in force",
                new.degrade_step.unwrap_or(0)
            ),
        ),
        BudgetState::Exhausted => warn(
            "BudgetExhausted",
            format!("{used}% used: limit reached; resets at {resets}"),
        ),
    }]
}

fn open_breakers(s: &ProviderStatus) -> u32 {
    s.models.iter().map(|m| m.breakers.open).sum()
}

fn opened(s: &ProviderStatus) -> u32 {
    s.models.iter().map(|m| m.breakers_opened).sum()
}

/// Events of a provider status change.
pub fn provider(old: Option<&ProviderStatus>, new: &ProviderStatus) -> Vec<Notice> {
    let before = old.map_or(0, open_breakers);
    let now = open_breakers(new);
    if before == 0 && now > 0 {
        let models: Vec<&str> = new
            .models
            .iter()
            .filter(|m| m.breakers.open > 0)
            .map(|m| m.name.as_str())
            .collect();
        vec![warn(
            "BreakerOpened",
            format!(
                "{now} breaker(s) open across {} sidecar(s), models: {}",
                new.sidecars,
                models.join(", ")
            ),
        )]
    } else if before == 0 && now == 0 && opened(new) > 0 {
        // Opened and closed again between two reports: nobody saw it
        // open in status, but it flapped.
        let models: Vec<&str> = new
            .models
            .iter()
            .filter(|m| m.breakers_opened > 0)
            .map(|m| m.name.as_str())
            .collect();
        vec![warn(
            "BreakerOpened",
            format!(
                "breakers opened {} time(s) and closed again within a report interval, models: {}",
                opened(new),
                models.join(", ")
            ),
        )]
    } else if before > 0 && now == 0 {
        vec![normal(
            "BreakersClosed",
            "no breaker is open any more".to_owned(),
        )]
    } else {
        Vec::new()
    }
}

/// Events of a route status change.
pub fn route(old: Option<&LLMRouteStatus>, new: &LLMRouteStatus) -> Vec<Notice> {
    let rejected = |s: &LLMRouteStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Programmed" && c.reason == "Rejected")
            .map(|c| c.message.clone())
    };
    match (old.and_then(rejected), rejected(new)) {
        (None, Some(message)) => vec![warn("ConfigRejected", message)],
        _ => Vec::new(),
    }
}

/// Publishes notices through a [`Recorder`], skipping a notice that
/// repeats the last one published for the same object: status may be
/// compared against a cache that has not yet seen our previous write, and
/// one transition should make one Event.
pub struct Publisher {
    recorder: Recorder,
    last: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    pub fn new(recorder: Recorder) -> Self {
        Self {
            recorder,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `notices` about `obj`.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, notices: Vec<Notice>) {
        if notices.is_empty() {
            return;
        }
        let reference = obj.object_ref(&());
        let object = format!(
            "{}/{}/{}",
            K::kind(&()),
            reference.namespace.as_deref().unwrap_or(""),
            reference.name.as_deref().unwrap_or("")
        );
        for n in notices {
            let fingerprint = if n.reason == "ConfigRejected" {
                format!("{}: {}", n.reason, n.note)
            } else {
                n.reason.to_owned()
            };
            {
                let Ok(mut last) = self.last.lock() else {
                    return;
                };
                if last.get(&object) == Some(&fingerprint) {
                    continue;
                }
                last.insert(object.clone(), fingerprint);
            }
            let event = Event {
                type_: if n.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: n.reason.to_owned(),
                note: Some(n.note),
                action: "Reconcile".to_owned(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, reason = n.reason, "publishing an Event failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::provider::{BreakerCounts, ModelStatus};

    fn budget_in(state: BudgetState) -> BudgetStatus {
        BudgetStatus {
            state,
            percent_used: 90,
            ..BudgetStatus::default()
        }
    }

    #[test]
    fn budget_events_on_state_changes_only() {
        let ok = budget_in(BudgetState::Ok);
        let soft = budget_in(BudgetState::SoftLimit);
        let out = budget_in(BudgetState::Exhausted);
        assert!(budget(None, &ok).is_empty());
        assert!(budget(Some(&soft), &soft).is_empty());
        assert_eq!(budget(Some(&ok), &soft)[0].reason, "SoftLimitReached");
        assert_eq!(budget(Some(&soft), &out)[0].reason, "BudgetExhausted");
        assert!(budget(Some(&soft), &out)[0].warning);
        assert_eq!(budget(Some(&out), &ok)[0].reason, "WithinLimit");
        assert!(!budget(Some(&out), &ok)[0].warning);
    }

    fn provider_with(open: u32) -> ProviderStatus {
        ProviderStatus {
            sidecars: 3,
            models: vec![ModelStatus {
                name: "gpt-4o".into(),
                breakers: BreakerCounts {
                    closed: 3 - open,
                    open,
                    half_open: 0,
                },
                ..ModelStatus::default()
            }],
            ..ProviderStatus::default()
        }
    }

    #[test]
    fn provider_events_when_breakers_open_and_all_close() {
        assert!(provider(None, &provider_with(0)).is_empty());
        let opened = provider(Some(&provider_with(0)), &provider_with(1));
        assert_eq!(opened[0].reason, "BreakerOpened");
        assert!(opened[0].note.contains("gpt-4o"));
        assert!(provider(Some(&provider_with(1)), &provider_with(2)).is_empty());
        assert_eq!(
            provider(Some(&provider_with(2)), &provider_with(0))[0].reason,
            "BreakersClosed"
        );
    }

    #[test]
    fn a_breaker_that_opened_and_closed_between_reports_is_an_event() {
        let mut flapped = provider_with(0);
        flapped.models[0].breakers_opened = 2;
        let notices = provider(Some(&provider_with(0)), &flapped);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, "BreakerOpened");
        assert!(notices[0].warning);
        assert!(
            notices[0].note.contains("closed again"),
            "{}",
            notices[0].note
        );
        assert!(notices[0].note.contains("gpt-4o"));
        // Still open in status: the usual event, not a second one.
        let mut open = provider_with(1);
        open.models[0].breakers_opened = 1;
        let notices = provider(Some(&provider_with(0)), &open);
        assert_eq!(notices.len(), 1);
        assert!(!notices[0].note.contains("closed again"));
    }
}
