use std::sync::{Arc, Mutex};

use super::*;

/// A writer appending to a shared buffer.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }
}

fn info_enabled<T>(f: impl FnOnce() -> T) -> T {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, f)
}

fn labels(
    route: &str,
    provider: &str,
    model: &str,
) -> std::sync::Arc<crate::metrics::TargetLabels> {
    std::sync::Arc::new(crate::metrics::TargetLabels {
        route: route.into(),
        provider: provider.into(),
        model: model.into(),
    })
}

fn success() -> Entry {
    Entry {
        request_id: "abc".into(),
        operation: Some("chat"),
        labels: labels("chat", "p", "m"),
        target: true,
        attempts: Some(1),
        duration_ms: 12,
        input_tokens: Some(10),
        output_tokens: Some(3),
        cost_usd: Some("0.0025".parse().expect("money")),
        outcome: "success",
        ..Default::default()
    }
}

#[test]
fn a_line_has_the_json_formatter_shape_and_leaves_out_what_is_absent() {
    let mut buf = Vec::new();
    format_line(
        &mut buf,
        &mut Clock::default(),
        SystemTime::UNIX_EPOCH,
        &success(),
    );
    assert_eq!(buf.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "sluice_sidecar::accounting");
    assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
    let f = &v["fields"];
    assert_eq!(f["message"], "request");
    assert_eq!(f["request_id"], "abc");
    assert_eq!(f["route"], "chat");
    assert_eq!((&f["provider"], &f["model"]), (&"p".into(), &"m".into()));
    assert_eq!(f["attempts"], 1);
    assert_eq!(f["input_tokens"], 10);
    assert_eq!(f["cost_usd"], "0.0025");
    assert_eq!(f["outcome"], "success");
    assert!(f.get("status").is_none() && f.get("class").is_none());
}

#[test]
fn hostile_values_are_escaped() {
    let mut buf = Vec::new();
    let e = Entry {
        request_id: r#"a"b\c"#.into(),
        labels: labels("r\n\u{1}", "p", "m"),
        outcome: "error",
        ..Default::default()
    };
    format_line(&mut buf, &mut Clock::default(), SystemTime::now(), &e);
    assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
    let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
    assert_eq!(v["fields"]["request_id"], r#"a"b\c"#);
    assert_eq!(v["fields"]["route"], "r\n\u{1}");
    // No target: the line names the route only.
    assert!(v["fields"].get("provider").is_none());
}

#[test]
fn entries_are_written_off_the_caller_and_flushed_on_demand() {
    let out = Shared::default();
    let w = out.clone();
    let log = AccessLog::with_writer(Counter::default(), 64, move || w.clone());
    info_enabled(|| {
        for _ in 0..3 {
            log.record(success());
        }
    });
    log.flush(Duration::from_secs(5));
    let lines = out.lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(log.dropped(), 0);
}

#[test]
fn nothing_is_queued_when_info_is_off() {
    let out = Shared::default();
    let w = out.clone();
    let log = AccessLog::with_writer(Counter::default(), 64, move || w.clone());
    log.record(success()); // no subscriber: info is not enabled
    log.flush(Duration::from_secs(5));
    assert!(out.lines().is_empty());
}

#[test]
fn a_full_channel_drops_and_counts_instead_of_blocking() {
    let out = Shared::default();
    let w = out.clone();
    let log = AccessLog::with_writer(Counter::default(), 4, move || w.clone());
    info_enabled(|| {
        for _ in 0..50 {
            log.record(success());
        }
    });
    // Room for 4, and fifty sent in a tight loop, faster than a woken
    // writer formats lines: a sender that waited for room would drop
    // nothing.
    assert!(log.dropped() > 0, "dropped {}", log.dropped());
    log.flush(Duration::from_secs(5));
    assert_eq!(out.lines().len() as u64 + log.dropped(), 50);
}

#[test]
fn timestamps_are_rfc3339_with_microseconds_across_seconds() {
    let mut clock = Clock::default();
    let mut buf = Vec::new();
    let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_763_740_926_000_042);
    clock.write(&mut buf, t);
    buf.push(b' ');
    clock.write(&mut buf, t + Duration::from_micros(999_999));
    buf.push(b' ');
    clock.write(&mut buf, t + Duration::from_secs(61));
    assert_eq!(
        String::from_utf8(buf).expect("utf-8"),
        "2025-11-21T16:02:06.000042Z 2025-11-21T16:02:07.000041Z 2025-11-21T16:03:07.000042Z"
    );
}

#[test]
fn numbers_are_written_whole() {
    for n in [0, 7, 10, 12_345, u64::MAX] {
        let mut buf = Vec::new();
        number(&mut buf, "n", n);
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            format!(",\"n\":{n}")
        );
    }
}

#[test]
fn the_writer_sleeps_as_long_as_it_takes_to_queue_a_batch() {
    let pace = Pace::default();
    let ms = Duration::from_millis;
    // Idle, and 200 req/s (5 lines in 25 ms): the longest sleep.
    assert_eq!(pace.next_sleep(ms(25), 0), IDLE_SLEEP);
    assert_eq!(pace.next_sleep(ms(25), 5), IDLE_SLEEP);
    // 2,560 req/s: a batch takes 100 ms.
    assert_eq!(pace.next_sleep(ms(250), 640), ms(100));
    // 50,000 req/s: the shortest sleep, whatever the batch.
    assert_eq!(pace.next_sleep(ms(25), 1250), FLUSH_EVERY);
    assert_eq!(pace.next_sleep(ms(250), 12_500), FLUSH_EVERY);
}

/// A writer that would sleep an hour, so only a wake-up gets lines out.
fn sleepy(capacity: usize, out: &Shared) -> AccessLog {
    let w = out.clone();
    let hour = Duration::from_secs(3600);
    let pace = Pace {
        shortest: hour,
        longest: hour,
    };
    AccessLog::paced(Counter::default(), capacity, pace, move || w.clone())
}

fn wait_for_lines(out: &Shared, n: usize) -> usize {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while out.lines().len() < n && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    out.lines().len()
}

#[test]
fn a_channel_a_quarter_full_wakes_the_writer() {
    let out = Shared::default();
    let log = sleepy(64, &out);
    info_enabled(|| {
        for _ in 0..15 {
            log.record(success());
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(out.lines().is_empty(), "15 of 64 queued: no wake yet");
    info_enabled(|| log.record(success()));
    assert_eq!(wait_for_lines(&out, 16), 16);
}

#[test]
fn flush_wakes_a_sleeping_writer() {
    let out = Shared::default();
    let log = sleepy(64, &out);
    info_enabled(|| log.record(success()));
    log.flush(Duration::from_secs(10));
    assert_eq!(out.lines().len(), 1);
}
