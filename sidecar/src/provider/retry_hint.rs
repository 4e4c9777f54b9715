//! Retry hints from a provider's response headers: how long until the same
//! request may succeed.
//!
//! Providers say it in many ways: `retry-after` (seconds or an HTTP date),
//! `retry-after-ms`, OpenAI's `x-ratelimit-reset-requests`/`-tokens` (Go
//! durations such as `6m0s`, `1s`, `20ms`) and Anthropic's
//! `anthropic-ratelimit-*-reset` (RFC 3339 times). A hint that cannot be
//! parsed, is negative, or is longer than [`MAX_HINT`] is treated as no hint
//! at all: a sentinel such as `retry-after: 99999999` must not park a target
//! for years (after linkerd's `retry_after.rs`, which caps the same way).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Longest hint believed. Longer values are sentinels or mistakes.
pub const MAX_HINT: Duration = Duration::from_secs(60 * 60);

/// The longest believable hint among the headers, or `None`. `now` is the
/// wall clock, for HTTP-date and RFC 3339 forms.
pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // The most specific wins: milliseconds, then seconds/date, then resets.
    if let Some(d) = text("retry-after-ms").and_then(parse_millis) {
        return Some(d);
    }
    if let Some(d) = text("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(d);
    }
    let mut longest: Option<Duration> = None;
    for (name, value) in headers {
        let name = name.as_str();
        let Ok(value) = value.to_str() else { continue };
        let hint = if name.starts_with("x-ratelimit-reset") {
            parse_go_duration(value)
        } else if name.starts_with("anthropic-ratelimit-") && name.ends_with("-reset") {
            parse_rfc3339_delay(value, now)
        } else {
            None
        };
        if let Some(h) = hint {
            longest = Some(longest.map_or(h, |l| l.max(h)));
        }
    }
    longest
}

fn believable(d: Duration) -> Option<Duration> {
    (d <= MAX_HINT).then_some(d)
}

/// `retry-after-ms: 1500`.
pub fn parse_millis(value: &str) -> Option<Duration> {
    let v: f64 = value.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    believable(Duration::from_secs_f64(v.min(1e12) / 1000.0))
}

/// `retry-after: 30` or `retry-after: Wed, 21 Oct 2026 07:28:00 GMT`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        return believable(Duration::from_secs_f64(secs.min(1e12)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now".
    believable(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Go-style durations as OpenAI sends them: `6m0s`, `1s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let s = value.trim();
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
    }
    if !total.is_finite() || total < 0.0 {
        return None;
    }
    believable(Duration::from_secs_f64(total.min(1e12)))
}

/// `2026-11-21T14:00:00Z` as a delay from `now` (Anthropic's reset headers).
fn parse_rfc3339_delay(value: &str, now: SystemTime) -> Option<Duration> {
    // httpdate only reads HTTP dates; RFC 3339 is parsed by hand for the one
    // form providers send: `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
    let v = value.trim();
    let b = v.as_bytes();
    if b.len() < 20 || !v.ends_with('Z') || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as i64, d as i64);
    let secs = days.checked_mul(86_400)? + (h * 3600 + mi * 60 + s) as i64;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?);
    believable(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn seconds_millis_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            from_headers(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            from_headers(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(
            from_headers(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "1x", "-1s", "abc", "1s2"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
        let now = SystemTime::now();
        assert_eq!(
            from_headers(
                &headers(&[
                    ("x-ratelimit-reset-requests", "1s"),
                    ("x-ratelimit-reset-tokens", "6m0s")
                ]),
                now
            ),
            Some(Duration::from_secs(360))
        );
    }

    #[test]
    fn garbage_negative_and_huge_are_no_hint() {
        let now = SystemTime::now();
        for bad in ["-5", "soon", "99999999", "NaN", "inf", "1e400"] {
            assert_eq!(
                from_headers(&headers(&[("retry-after", bad)]), now),
                None,
                "{bad}"
            );
        }
        assert_eq!(
            from_headers(&headers(&[("retry-after-ms", "-1")]), now),
            None
        );
    }

    #[test]
    fn anthropic_reset_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // 1_700_000_000 = 2023-11-14T22:13:20Z
        assert_eq!(
            from_headers(
                &headers(&[("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:50Z")]),
                now
            ),
            Some(Duration::from_secs(30))
        );
    }
}
