//! What the sidecar knows about each endpoint's health: its circuit
//! breaker, the estimated tokens in flight, and per route and target the
//! figures the next report to the operator carries.
//!
//! Kept in the shared [`crate::app::App`], keyed by provider and model, so
//! a configuration reload does not forget an endpoint's state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_crds::FailureClass;
use sluice_crds::report::TargetHealth;
use sluice_crds::route::FallbackRecord;
use tokio::time::Instant;

use crate::balance::InFlight;
use crate::breaker::{Breaker, Outcome, Settings, Transition};
use crate::config::Target;
use crate::metrics::TargetLabels;

/// One endpoint (provider and model).
#[derive(Debug)]
pub struct Endpoint {
    pub breaker: Breaker,
    pub in_flight: InFlight,
    settings: Settings,
    /// After a 429: not tried again before this instant (429 is not an
    /// outage, so it steers traffic away without feeding the breaker).
    throttled_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn new(settings: Settings) -> Self {
        Self {
            breaker: Breaker::new(settings.clone()),
            in_flight: InFlight::default(),
            settings,
            throttled_until: Mutex::new(None),
        }
    }

    /// Marks the endpoint throttled for `hint` (1 s without one, at most 5 min).
    pub fn throttle(&self, now: Instant, hint: Option<Duration>) {
        let d = hint
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(300));
        *self
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(now + d);
    }

    /// How long the endpoint stays throttled, if it is.
    pub fn throttled_for(&self, now: Instant) -> Option<Duration> {
        let until = *self
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.filter(|u| *u > now).map(|u| u - now)
    }
}

#[derive(Debug, Default)]
struct Figures {
    requests: u64,
    errors: BTreeMap<FailureClass, u64>,
    /// Latencies (ms) of this interval, bounded.
    latencies: Vec<u32>,
    ttfts: Vec<u32>,
}

const MAX_SAMPLES: usize = 4096;

/// How often a breaker changed state, by the state it went to; counted
/// since the process started (for `sluice_breaker_transitions_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
}

/// One endpoint's breaker, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerView {
    /// The Provider's name (without its namespace).
    pub provider: String,
    pub model: String,
    pub state: sluice_crds::report::BreakerState,
    pub transitions: Transitions,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Health {
    /// foldhash: keys from the configuration, looked up on every request.
    endpoints: Mutex<HashMap<(String, String), Arc<Endpoint>, foldhash::fast::RandomState>>,
    /// Kept apart from the endpoints so that recreating one (its provider's
    /// breaker settings changed) does not reset its counters.
    transitions: Mutex<HashMap<(String, String), Transitions>>,
    figures: Mutex<BTreeMap<TargetLabels, Figures>>,
    /// `Transitions::opened` of each endpoint as of the last report.
    reported_openings: Mutex<HashMap<(String, String), u64>>,
    fallbacks: Mutex<BTreeMap<String, FallbackRecord>>,
    #[allow(clippy::type_complexity)]
    limiters: Mutex<
        HashMap<
            String,
            (
                sluice_crds::budget::RateLimits,
                Arc<crate::ratelimit::RateLimiter>,
            ),
        >,
    >,
}

fn key(target: &Target) -> (String, String) {
    target.health_key.clone()
}

impl Health {
    /// The endpoint of `target`, created with its provider's breaker
    /// settings (and recreated if those change).
    pub fn endpoint(&self, target: &Target) -> Arc<Endpoint> {
        let settings = Settings::from(&target.provider.spec.circuit_breaker);
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up by the target's own key first: no key is built for
        // the endpoints that exist, i.e. on every request but the first.
        if let Some(e) = map.get(&target.health_key)
            && e.settings == settings
        {
            return e.clone();
        }
        let e = Arc::new(Endpoint::new(settings));
        map.insert(key(target), e.clone());
        e
    }

    /// The provider's own `limits.requestsPerMinute` / `tokensPerMinute`
    /// buckets, shared by all its models; `None` when it sets neither.
    pub fn provider_limiter(&self, target: &Target) -> Option<Arc<crate::ratelimit::RateLimiter>> {
        let limits = target.provider.spec.limits.as_ref()?;
        if limits.requests_per_minute.is_none() && limits.tokens_per_minute.is_none() {
            return None;
        }
        let wanted = sluice_crds::budget::RateLimits {
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
        };
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let k = target.health_key.0.clone();
        let entry = map.entry(k).or_insert_with(|| {
            (
                wanted.clone(),
                Arc::new(crate::ratelimit::RateLimiter::new(wanted.clone())),
            )
        });
        if entry.0 != wanted {
            *entry = (
                wanted.clone(),
                Arc::new(crate::ratelimit::RateLimiter::new(wanted)),
            );
        }
        Some(entry.1.clone())
    }

    /// Every endpoint's breaker: its state and how often it changed.
    pub fn breaker_states(&self) -> Vec<BreakerView> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let transitions = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(k, e)| BreakerView {
                provider: k.0.rsplit('/').next().unwrap_or(&k.0).to_owned(),
                model: k.1.clone(),
                state: e.breaker.state(),
                transitions: transitions.get(k).copied().unwrap_or_default(),
            })
            .collect()
    }

    /// Whether `endpoint` (of `target`) takes a call now: its breaker's
    /// [`Breaker::admits`], with the change to half-open an open breaker
    /// makes when its time is up logged and counted.
    pub fn admits(&self, target: &Target, endpoint: &Endpoint, now: Instant) -> bool {
        let (admitted, transition) = endpoint.breaker.admits(now);
        if let Some(t) = transition {
            self.changed(target, t);
        }
        admitted
    }

    /// Logs and counts a breaker's state change.
    fn changed(&self, target: &Target, transition: Transition) {
        match transition {
            Transition::Opened { reason, open_for } => tracing::warn!(
                provider = %target.provider.name, model = %target.model,
                reason = ?reason, open_for_ms = open_for.as_millis() as u64,
                "circuit breaker opened"
            ),
            Transition::HalfOpened => tracing::info!(
                provider = %target.provider.name, model = %target.model,
                "circuit breaker half-open: probing"
            ),
            Transition::Closed => tracing::info!(
                provider = %target.provider.name, model = %target.model,
                "circuit breaker closed"
            ),
        }
        let mut map = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let counts = map.entry(key(target)).or_default();
        match transition {
            Transition::Opened { .. } => counts.opened += 1,
            Transition::HalfOpened => counts.half_opened += 1,
            Transition::Closed => counts.closed += 1,
        }
    }

    /// Records a call's end for `target`'s `endpoint` (as [`Health::endpoint`]
    /// gave it) and for the report.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        route: &str,
        target: &Target,
        endpoint: &Endpoint,
        now: Instant,
        result: Result<Duration, FailureClass>,
        counts_against_breaker: bool,
        streamed: bool,
    ) {
        let transition = match result {
            Ok(latency) => endpoint.breaker.record(now, Outcome::Success { latency }),
            Err(_) if counts_against_breaker => endpoint.breaker.record(now, Outcome::Failure),
            Err(_) => {
                endpoint.breaker.neutral();
                None
            }
        };
        if let Some(t) = transition {
            self.changed(target, t);
        }
        let labels = if target.labels.route == route {
            std::borrow::Cow::Borrowed(&*target.labels)
        } else {
            std::borrow::Cow::Owned(TargetLabels {
                route: route.to_owned(),
                ..(*target.labels).clone()
            })
        };
        let mut figures = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        // One lookup when the interval already has the key (all records
        // but its first); a key is built only for the first.
        let f = match figures.get_mut(&*labels) {
            Some(f) => f,
            None => figures.entry(labels.into_owned()).or_default(),
        };
        f.requests += 1;
        match result {
            Ok(latency) => {
                let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
                let samples = if streamed {
                    &mut f.ttfts
                } else {
                    &mut f.latencies
                };
                if samples.len() < MAX_SAMPLES {
                    samples.push(ms);
                }
            }
            Err(class) => *f.errors.entry(class).or_default() += 1,
        }
    }

    /// Remembers the latest fallback of a route, for the report.
    pub fn fell_back(&self, route: &str, from: &Target, to: &Target, class: FailureClass) {
        let time = jiff::Timestamp::now().to_string();
        let record = FallbackRecord {
            from: format!("{}/{}", from.provider.name, from.model),
            to: format!("{}/{}", to.provider.name, to.model),
            reason: class.as_str().to_owned(),
            time,
        };
        self.fallbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route.to_owned(), record);
    }

    /// The figures since the last call, for the report; resets them.
    ///
    /// A target appears when it was called in the interval, and also when
    /// its breaker is open or half-open without a call: traffic skips an
    /// open breaker, and a report silent about it would tell the operator
    /// the breaker had closed.
    pub fn drain(&self) -> (Vec<TargetHealth>, BTreeMap<String, FallbackRecord>) {
        use sluice_crds::report::BreakerState;
        let mut figures = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let transitions = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let mut reported = self
            .reported_openings
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (
            TargetLabels {
                route,
                provider,
                model,
            },
            f,
        ) in figures.iter_mut()
        {
            let endpoint = endpoints.iter().find(|((p, m), _)| {
                m == model && p.rsplit('/').next().unwrap_or(p) == provider.as_str()
            });
            let breaker = endpoint.map(|(_, e)| e.breaker.state()).unwrap_or_default();
            // Openings since the last report, on the first route that
            // uses the endpoint (the operator counts a breaker once).
            let opened = endpoint.map_or(0, |(k, _)| {
                let now = transitions.get(k).map_or(0, |t| t.opened);
                let before = reported.insert(k.clone(), now).unwrap_or(0);
                u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX)
            });
            if f.requests == 0 && breaker == BreakerState::Closed && opened == 0 {
                continue;
            }
            let mut f = std::mem::take(f);
            let mut all = f.latencies.clone();
            all.extend_from_slice(&f.ttfts);
            out.push(TargetHealth {
                route: route.clone(),
                provider: provider.clone(),
                model: model.clone(),
                requests: f.requests,
                errors: f.errors,
                latency_p50_ms: percentile(&mut all, 50),
                latency_p95_ms: percentile(&mut all, 95),
                ttft_p95_ms: percentile(&mut f.ttfts, 95),
                breaker,
                opened,
            });
        }
        drop(reported);
        drop(transitions);
        drop(endpoints);
        drop(figures);
        let fallbacks =
            std::mem::take(&mut *self.fallbacks.lock().unwrap_or_else(|p| p.into_inner()));
        (out, fallbacks)
    }
}

fn percentile(samples: &mut [u32], p: usize) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1) - 1;
    samples.get(rank).map(|v| u64::from(*v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::report::BreakerState;

    /// Route `r` to provider `p` model `m`, whose breaker opens after one
    /// failure for 1 s and closes after one good probe.
    fn one_breaker_route() -> crate::config::Config {
        let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: Provider\nmetadata: {name: p}\nspec:\n  type: mock\n  circuitBreaker: {consecutiveFailures: 1, openFor: 1s, halfOpenProbes: 1}\n  models: [{name: m}]\n---\napiVersion: sluice.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\nspec:\n  model: r\n  targets: [{providerRef: {name: p}, model: m}]\n";
        crate::standalone::load_bytes(
            &sluice_crds::load::Admission::new(),
            yaml.as_bytes(),
            &|_| None,
        )
        .expect("config")
    }

    #[test]
    fn open_breakers_stay_in_the_report_and_changes_are_counted() {
        let config = one_breaker_route();
        let target = &config.route("r").expect("route").targets[0];
        let health = Health::default();
        let e = health.endpoint(target);
        let t0 = Instant::now();
        health.record(
            "r",
            target,
            &e,
            t0,
            Err(FailureClass::ServerError),
            true,
            false,
        );
        let (report, _) = health.drain();
        assert_eq!(report.len(), 1);
        assert_eq!(
            (report[0].requests, report[0].breaker, report[0].opened),
            (1, BreakerState::Open, 1)
        );
        // No call reaches an open breaker, yet the report still says so
        // (the opening itself was reported once).
        let (report, _) = health.drain();
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(
            (report[0].requests, report[0].breaker, report[0].opened),
            (0, BreakerState::Open, 0)
        );
        assert!(!health.admits(target, &e, t0 + Duration::from_millis(500)));
        // Past openFor a probe goes through and closes it.
        assert!(health.admits(target, &e, t0 + Duration::from_secs(2)));
        let (report, _) = health.drain();
        assert_eq!(report[0].breaker, BreakerState::HalfOpen, "{report:?}");
        let t1 = t0 + Duration::from_secs(2);
        health.record(
            "r",
            target,
            &e,
            t1,
            Ok(Duration::from_millis(20)),
            false,
            false,
        );
        let (report, _) = health.drain();
        assert_eq!(
            (report[0].requests, report[0].breaker),
            (1, BreakerState::Closed)
        );
        assert!(
            health.drain().0.is_empty(),
            "closed and idle: nothing to say"
        );
        let views = health.breaker_states();
        assert_eq!(views.len(), 1);
        assert_eq!(
            (views[0].provider.as_str(), views[0].model.as_str()),
            ("p", "m")
        );
        assert_eq!(
            views[0].transitions,
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 1
            }
        );
    }

    /// A breaker that opens and closes again between two reports is
    /// reported closed, but with its opening counted.
    #[test]
    fn a_breaker_that_flaps_within_an_interval_is_reported() {
        let config = one_breaker_route();
        let target = &config.route("r").expect("route").targets[0];
        let health = Health::default();
        let e = health.endpoint(target);
        let t0 = Instant::now();
        let fail = Err(FailureClass::ServerError);
        health.record("r", target, &e, t0, fail, true, false);
        let t1 = t0 + Duration::from_millis(1100);
        assert!(health.admits(target, &e, t1));
        health.record(
            "r",
            target,
            &e,
            t1,
            Ok(Duration::from_millis(20)),
            false,
            false,
        );
        let (report, _) = health.drain();
        assert_eq!(
            (report[0].requests, report[0].breaker, report[0].opened),
            (2, BreakerState::Closed, 1)
        );
        assert!(health.drain().0.is_empty(), "reported once");
    }

    #[test]
    fn percentiles_pick_the_rank() {
        let mut v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&mut v, 50), Some(50));
        assert_eq!(percentile(&mut v, 95), Some(95));
        assert_eq!(percentile(&mut [], 95), None);
        assert_eq!(percentile(&mut [7], 95), Some(7));
    }
}
