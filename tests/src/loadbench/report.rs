//! Percentiles, ratios and the markdown table.

use std::fmt::Write;

/// The `q` quantile (0..=1) of sorted nanoseconds, in microseconds.
pub fn quantile_us(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1000.0)
}

/// One figure per path; `None` where it does not apply or was not measured.
pub struct Row {
    pub metric: String,
    pub direct: Option<f64>,
    pub proxy: Option<f64>,
    pub sidecar: Option<f64>,
    pub check: Check,
}

/// What the issue asks of a row.
pub enum Check {
    /// Informational.
    None,
    /// sidecar ÷ proxy at most this.
    RatioAtMost(f64),
    /// sidecar ÷ proxy at least this.
    RatioAtLeast(f64),
    /// The sidecar's absolute figure below this.
    Below(f64),
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 100.0 || v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.proxy, self.sidecar) {
            // A ratio of differences means nothing when the floor itself is
            // lost in the noise.
            (Some(p), Some(s)) if p > 0.0 && s >= 0.0 => Some(s / p),
            _ => None,
        }
    }

    fn verdict(&self) -> (String, String) {
        let ratio = self.ratio();
        match self.check {
            Check::None => (String::new(), String::new()),
            Check::RatioAtMost(t) => (
                format!("≤ {t}×"),
                ratio.map_or("n/a".into(), |r| yes(r <= t)),
            ),
            Check::RatioAtLeast(t) => (
                format!("≥ {t}×"),
                ratio.map_or("n/a".into(), |r| yes(r >= t)),
            ),
            Check::Below(t) => (
                format!("< {t}"),
                self.sidecar.map_or("n/a".into(), |s| yes(s < t)),
            ),
        }
    }
}

fn yes(ok: bool) -> String {
    if ok { "yes".into() } else { "**no**".into() }
}

/// The table; `third` names the last path (the sidecar, or the control
/// proxy of an A/A run).
pub fn table(rows: &[Row], third: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| metric | direct | bare proxy | {third} | {third} ÷ proxy | target | met |"
    );
    out.push_str("|---|---:|---:|---:|---:|---|---|\n");
    for row in rows {
        let ratio = match row.check {
            Check::Below(_) => None,
            _ => row.ratio(),
        };
        let (target, met) = row.verdict();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.metric,
            cell(row.direct),
            cell(row.proxy),
            cell(row.sidecar),
            ratio.map_or("–".into(), |r| format!("{r:.2}×")),
            target,
            met
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_us(&v, 0.5), Some(50.0));
        assert_eq!(quantile_us(&v, 0.99), Some(99.0));
        assert_eq!(quantile_us(&v, 1.0), Some(100.0));
        assert_eq!(quantile_us(&[], 0.5), None);
    }

    #[test]
    fn a_floor_lost_in_noise_gives_no_ratio() {
        let row = Row {
            metric: "m".into(),
            direct: None,
            proxy: Some(-3.0),
            sidecar: Some(50.0),
            check: Check::RatioAtMost(1.5),
        };
        assert!(table(&[row], "sidecar").contains("n/a"));
    }
}
