//! The breaker's rolling window: calls, failures and a latency histogram
//! over the last `window`, cut into [`SLOTS`] sub-windows, with their sums
//! kept as calls are recorded.
//!
//! Why the sums are kept rather than added up when read: the breaker reads
//! the window's totals and p95 on every call it records, under its lock.
//! Adding up ten slots' 56-bucket histograms touched ≈40 cache lines a
//! request (2.2 KB of slots), cold at low rates, and ≈230 instructions
//! (callgrind); now a call touches its slot's counters, the sums and the
//! slots' start times.

use std::time::Duration;

use tokio::time::Instant;

/// Sub-windows the rolling window is cut into.
pub const SLOTS: usize = 10;
/// Latency histogram buckets: bucket `i` holds latencies below `1.25^i` ms.
pub const BUCKETS: usize = 56;

/// Calls, failures and latencies over the last `span`.
#[derive(Clone, Debug)]
pub struct Window {
    span: Duration,
    /// When each slot started; `None`: empty.
    starts: [Option<Instant>; SLOTS],
    calls: [u32; SLOTS],
    failures: [u32; SLOTS],
    latencies: Box<[[u32; BUCKETS]; SLOTS]>,
    /// The live slots' sums.
    sum_calls: u32,
    sum_failures: u32,
    sum_latencies: [u32; BUCKETS],
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            starts: [None; SLOTS],
            calls: [0; SLOTS],
            failures: [0; SLOTS],
            latencies: Box::new([[0; BUCKETS]; SLOTS]),
            sum_calls: 0,
            sum_failures: 0,
            sum_latencies: [0; BUCKETS],
        }
    }

    /// Counts a call that ended at `now`: a success with its latency, or a
    /// failure (`None`).
    pub fn record(&mut self, now: Instant, latency: Option<Duration>) {
        self.expire(now);
        let i = self.slot(now);
        self.calls[i] += 1;
        self.sum_calls += 1;
        match latency {
            Some(l) => {
                let b = bucket_of(l);
                self.latencies[i][b] += 1;
                self.sum_latencies[b] += 1;
            }
            None => {
                self.failures[i] += 1;
                self.sum_failures += 1;
            }
        }
    }

    /// Calls and failures in the window at `now`, and the successes'
    /// latency histogram.
    pub fn totals(&mut self, now: Instant) -> (u32, u32, &[u32; BUCKETS]) {
        self.expire(now);
        (self.sum_calls, self.sum_failures, &self.sum_latencies)
    }

    /// Forgets every call.
    pub fn clear(&mut self) {
        *self = Self::new(self.span);
    }

    /// Empties the slots that fell out of the window.
    fn expire(&mut self, now: Instant) {
        for i in 0..SLOTS {
            if self.starts[i].is_some_and(|st| now.saturating_duration_since(st) >= self.span) {
                self.empty(i);
            }
        }
    }

    fn empty(&mut self, i: usize) {
        self.sum_calls -= self.calls[i];
        self.sum_failures -= self.failures[i];
        for (sum, n) in self.sum_latencies.iter_mut().zip(self.latencies[i]) {
            *sum -= n;
        }
        self.starts[i] = None;
        self.calls[i] = 0;
        self.failures[i] = 0;
        self.latencies[i] = [0; BUCKETS];
    }

    /// The slot `now` falls in: the one started less than a slot's width
    /// before it, else a new one (an empty slot, or the oldest emptied).
    fn slot(&mut self, now: Instant) -> usize {
        let width = self.span / SLOTS as u32;
        if let Some(i) = self
            .starts
            .iter()
            .position(|s| s.is_some_and(|st| now >= st && now < st + width))
        {
            return i;
        }
        let i = (0..SLOTS).min_by_key(|&i| self.starts[i]).unwrap_or(0);
        self.empty(i);
        self.starts[i] = Some(now);
        i
    }
}

fn bucket_of(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1000.0;
    if ms <= 1.0 {
        return 0;
    }
    ((ms.ln() / 1.25f64.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> Duration {
    Duration::from_secs_f64(1.25f64.powi(i as i32) / 1000.0)
}

/// The p95 of a latency histogram (upper bound of its bucket).
pub fn p95(hist: &[u32; BUCKETS]) -> Option<Duration> {
    let n: u32 = hist.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = (u64::from(n) * 95).div_ceil(100);
    let mut seen = 0u64;
    for (i, c) in hist.iter().enumerate() {
        seen += u64::from(*c);
        if seen >= rank {
            return Some(bucket_upper(i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The sums kept as calls come and slots expire are what adding up the
    /// live slots gives.
    #[test]
    fn the_sums_follow_the_slots_as_they_expire_and_are_reused() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        // Calls every 70 ms for 30 s: slots are reused three times over.
        for k in 0..430u32 {
            let now = t0 + MS * (70 * k);
            let latency = (k % 7 != 0).then(|| MS * (k % 900));
            w.record(now, latency);
            let (calls, failures, hist) = w.totals(now);
            let (calls, failures, hist) = (calls, failures, *hist);
            let live: Vec<usize> = (0..SLOTS).filter(|&i| w.starts[i].is_some()).collect();
            assert_eq!(calls, live.iter().map(|&i| w.calls[i]).sum::<u32>());
            assert_eq!(failures, live.iter().map(|&i| w.failures[i]).sum::<u32>());
            let mut want = [0u32; BUCKETS];
            for &i in &live {
                for (s, n) in want.iter_mut().zip(w.latencies[i]) {
                    *s += n;
                }
            }
            assert_eq!(hist, want);
            // At most the last 10 s of calls, at least the last 9 s.
            let in_last =
                |secs: u32| (0..=k).filter(|&j| 70 * (k - j) < 1000 * secs).count() as u32;
            assert!(calls <= in_last(10) && calls >= in_last(9), "{k}: {calls}");
        }
    }

    #[test]
    fn a_quiet_window_empties_and_clear_forgets() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(1));
        w.record(t0, None);
        w.record(t0 + MS * 150, Some(MS * 20));
        assert_eq!(w.totals(t0 + MS * 200).0, 2);
        assert_eq!(
            w.totals(t0 + MS * 1100).0,
            1,
            "the first slot left the window"
        );
        assert_eq!(w.totals(t0 + MS * 1300), (0, 0, &[0; BUCKETS]));
        w.record(t0 + MS * 1400, Some(MS * 20));
        w.clear();
        assert_eq!(w.totals(t0 + MS * 1400).0, 0);
    }

    #[test]
    fn p95_reads_the_histogram() {
        let mut h = [0u32; BUCKETS];
        h[bucket_of(Duration::from_millis(100))] = 95;
        h[bucket_of(Duration::from_millis(5_000))] = 5;
        let p = p95(&h).expect("some");
        assert!(
            p >= Duration::from_millis(100) && p < Duration::from_millis(130),
            "{p:?}"
        );
        assert_eq!(p95(&[0; BUCKETS]), None);
    }
}
