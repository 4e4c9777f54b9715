//! Target order by strategy: `priority`, `weighted` (smooth weighted round
//! robin), `latency` (lowest recent p95 / time to first token, with a small
//! exploration share), `cost` (cheapest for this request's estimated
//! tokens), `least-busy` (fewest estimated tokens in flight — a long prompt
//! weighs more than a short one).
//!
//! The first target in the order is tried first; the rest are the
//! fallbacks, best first. Breakers and the capability filter are applied
//! by the caller before (filter) and after (skip open) ordering.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_crds::Money;
use sluice_crds::route::Strategy;

/// What the strategies know about one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Candidate {
    pub weight: u32,
    pub priority: u32,
    /// Recent p95 latency (time to first token when the request streams).
    pub latency: Option<Duration>,
    /// Estimated cost of this request on this target (left out by
    /// `route::plan` unless the strategy is `cost`).
    pub cost: Option<Money>,
    /// Estimated tokens in flight on this target now.
    pub in_flight_tokens: u64,
}

/// Per route (or rule) state of the stateful strategies.
#[derive(Debug)]
pub struct Balancer {
    current: Mutex<Vec<i64>>,
    rng: Mutex<SplitMix64>,
    /// Share of requests, in per mille, that try a non-best target first
    /// under `latency`, so a recovered target is measured again.
    pub explore_per_mille: u64,
    /// Per target, its model's tokens as a percentage of the o200k count
    /// ([`crate::tokens::for_model`]), worked out on first use: a balancer
    /// belongs to one fixed list of targets (a reload builds new ones).
    token_percents: std::sync::OnceLock<Vec<u32>>,
}

impl Balancer {
    pub fn new(targets: usize, seed: u64) -> Self {
        Self {
            current: Mutex::new(vec![0; targets]),
            rng: Mutex::new(SplitMix64(seed)),
            explore_per_mille: 50,
            token_percents: std::sync::OnceLock::new(),
        }
    }

    /// Per target, its model's tokens as a percentage of the o200k count;
    /// `models` (this balancer's targets' models, in order) are read on
    /// the first call only.
    pub fn token_percents<'m>(&self, models: impl Iterator<Item = &'m str>) -> &[u32] {
        self.token_percents.get_or_init(|| {
            models
                .map(|m| crate::tokens::for_model(m).percent)
                .collect()
        })
    }

    fn draw(&self) -> u64 {
        self.rng.lock().map(|mut r| r.next_u64()).unwrap_or(0)
    }

    /// Indices of `candidates` in the order to try them.
    pub fn order(&self, strategy: Strategy, candidates: &[Candidate]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..candidates.len()).collect();
        match strategy {
            Strategy::Priority => idx.sort_by_key(|&i| (candidates[i].priority, i)),
            Strategy::Weighted => {
                let first = self.smooth_weighted(candidates);
                idx.sort_by_key(|&i| (i != first, std::cmp::Reverse(candidates[i].weight), i));
            }
            Strategy::Latency => {
                // Unmeasured targets first: they need a measurement.
                idx.sort_by_key(|&i| (candidates[i].latency.unwrap_or(Duration::ZERO), i));
                if idx.len() > 1 && self.draw() % 1000 < self.explore_per_mille {
                    let pick = 1 + (self.draw() as usize) % (idx.len() - 1);
                    idx.swap(0, pick);
                }
            }
            Strategy::Cost => {
                // Unpriced targets last: their cost is unknown, not zero.
                idx.sort_by_key(|&i| (candidates[i].cost.is_none(), candidates[i].cost, i));
            }
            Strategy::LeastBusy => idx.sort_by_key(|&i| (candidates[i].in_flight_tokens, i)),
        }
        idx
    }

    /// nginx's smooth weighted round robin: every pick adds each weight to
    /// its counter, takes the largest and subtracts the total from it —
    /// exact shares, evenly interleaved, deterministic.
    fn smooth_weighted(&self, candidates: &[Candidate]) -> usize {
        let Ok(mut current) = self.current.lock() else {
            return 0;
        };
        if current.len() != candidates.len() {
            *current = vec![0; candidates.len()];
        }
        let total: i64 = candidates.iter().map(|c| i64::from(c.weight)).sum();
        if total == 0 {
            return 0;
        }
        let mut best = 0;
        for (i, c) in candidates.iter().enumerate() {
            current[i] += i64::from(c.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }
}

/// Estimated tokens in flight on one endpoint.
#[derive(Debug, Default)]
pub struct InFlight(AtomicU64);

impl InFlight {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts `tokens` until the guard is dropped (success, failure or cancel).
    pub fn enter(&self, tokens: u64) -> InFlightGuard<'_> {
        self.0.fetch_add(tokens, Ordering::Relaxed);
        InFlightGuard { of: self, tokens }
    }
}

/// Releases in-flight tokens on drop.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    of: &'a InFlight,
    tokens: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.of.0.fetch_sub(self.tokens, Ordering::Relaxed);
    }
}

/// A small, fast, seedable generator: enough for exploration draws, and
/// deterministic under test.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Full-jitter exponential backoff: a `unit` share (in [0, 1)) of
/// `base × 2^n`, capped at `max`.
pub fn full_jitter(base: Duration, max: Duration, n: u32, unit: f64) -> Duration {
    base.saturating_mul(1u32 << n.min(20))
        .min(max)
        .mul_f64(unit.clamp(0.0, 1.0))
}

/// A jitter draw in [0, 1) for backoffs: the clock's nanoseconds, mixed,
/// de-synchronise sidecars and requests that back off together (no
/// cryptographic quality needed).
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut r = SplitMix64(u64::from(nanos));
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Estimated cost of a request on a model with these prices.
pub fn estimated_cost(
    input_per_million: Money,
    output_per_million: Money,
    input_tokens: u64,
    max_output: u64,
) -> Money {
    Money::per_million(input_per_million, input_tokens)
        + Money::per_million(output_per_million, max_output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: u32) -> Candidate {
        Candidate {
            weight,
            ..Candidate::default()
        }
    }

    #[test]
    fn weighted_split_is_exact_and_interleaved() {
        let b = Balancer::new(3, 7);
        let cands = [c(70), c(30), c(0)];
        let mut counts = [0; 3];
        let mut firsts = Vec::new();
        for n in 0..10_000 {
            let order = b.order(Strategy::Weighted, &cands);
            counts[order[0]] += 1;
            if n < 10 {
                firsts.push(order[0]);
            }
            assert_eq!(order.len(), 3, "every target stays a fallback");
        }
        assert_eq!(counts, [7_000, 3_000, 0]);
        // Smooth: the 30 % target is spread out, not bunched.
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 3, "{firsts:?}");
    }

    #[test]
    fn priority_orders_by_priority_then_listing() {
        let b = Balancer::new(3, 1);
        let cands = [
            Candidate {
                priority: 2,
                ..c(1)
            },
            Candidate {
                priority: 0,
                ..c(1)
            },
            Candidate {
                priority: 2,
                ..c(1)
            },
        ];
        assert_eq!(b.order(Strategy::Priority, &cands), vec![1, 0, 2]);
    }

    #[test]
    fn latency_prefers_the_fastest_but_explores() {
        let b = Balancer::new(2, 42);
        let cands = [
            Candidate {
                latency: Some(Duration::from_millis(900)),
                ..c(1)
            },
            Candidate {
                latency: Some(Duration::from_millis(200)),
                ..c(1)
            },
        ];
        let firsts: Vec<usize> = (0..2_000)
            .map(|_| b.order(Strategy::Latency, &cands)[0])
            .collect();
        let slow = firsts.iter().filter(|&&i| i == 0).count();
        assert!(
            (60..=140).contains(&slow),
            "about 5 % exploration, got {slow}/2000"
        );
        let unmeasured = [
            Candidate {
                latency: Some(Duration::from_millis(1)),
                ..c(1)
            },
            c(1),
        ];
        let b = Balancer::new(2, 1);
        let firsts: Vec<usize> = (0..100)
            .map(|_| b.order(Strategy::Latency, &unmeasured)[0])
            .collect();
        assert!(
            firsts.iter().filter(|&&i| i == 1).count() > 80,
            "an unmeasured target is tried first"
        );
    }

    #[test]
    fn cost_picks_the_cheapest_and_puts_unpriced_last() {
        let b = Balancer::new(3, 1);
        let price = |i: &str, o: &str| {
            estimated_cost(i.parse().expect("m"), o.parse().expect("m"), 2_000, 500)
        };
        let cands = [
            Candidate {
                cost: Some(price("2.50", "10")),
                ..c(1)
            },
            Candidate { cost: None, ..c(1) },
            Candidate {
                cost: Some(price("0.15", "0.60")),
                ..c(1)
            },
        ];
        assert_eq!(b.order(Strategy::Cost, &cands), vec![2, 0, 1]);
        assert_eq!(
            price("2.50", "10").to_string(),
            "0.01",
            "2000×2.5e-6 + 500×1e-5"
        );
    }

    #[test]
    fn least_busy_counts_tokens_not_requests() {
        let a = InFlight::default();
        let b = InFlight::default();
        // One long prompt on a, three short ones on b.
        let _long = a.enter(30_000);
        let _s: Vec<_> = (0..3).map(|_| b.enter(200)).collect();
        let cands = [
            Candidate {
                in_flight_tokens: a.get(),
                ..c(1)
            },
            Candidate {
                in_flight_tokens: b.get(),
                ..c(1)
            },
        ];
        assert_eq!(Balancer::new(2, 1).order(Strategy::LeastBusy, &cands)[0], 1);
        drop(_long);
        assert_eq!(a.get(), 0, "released when the call ends");
    }
}
