//! The golden-file harness and helpers shared by the adapter tests.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sluice_crds::ProviderType;
use sluice_crds::snapshot::Credential;
use sluice_sidecar::provider::{
    Endpoint, Failure, StreamContext, StreamDecoder, StreamEvent, UpstreamRequest,
};

/// 2023-11-14T22:13:20Z: every test's idea of "now".
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub const CREATED: u64 = 1_700_000_000;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The input file `name`.
pub fn read(name: &str) -> String {
    std::fs::read_to_string(path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

pub fn read_json(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("parsing {name}: {e}"))
}

/// Compares `actual` with the golden file `name` (rewrites it when
/// `UPDATE_GOLDEN` is set).
pub fn check(name: &str, actual: &str) {
    let p = path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, actual).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        return;
    }
    let expected = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {name}: {e} (run with UPDATE_GOLDEN=1 to create it)"));
    assert!(
        expected == actual,
        "{name} differs from the golden file.\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

pub fn check_json(name: &str, actual: &Value) {
    let mut text = serde_json::to_string_pretty(actual).expect("serializes");
    text.push('\n');
    check(name, &text);
}

pub fn endpoint(kind: ProviderType, base_url: &str, key: &str) -> Endpoint {
    Endpoint {
        provider: "p".into(),
        kind,
        base_url: base_url.into(),
        credential: Some(Credential::new(key)),
        headers: Vec::new(),
        api_version: None,
        region: None,
        mock: None,
    }
}

pub fn ctx() -> StreamContext {
    StreamContext {
        model: "upstream-model".into(),
        id: "chatcmpl-ctx".into(),
        created: CREATED,
        max_line: 1 << 20,
    }
}

/// An upstream request as JSON: method, URL, headers (credential headers
/// shown as `<redacted>` unless `show_secrets`), body.
pub fn request_json(req: &UpstreamRequest, show_secrets: bool) -> Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in &req.headers {
        let value = if v.is_sensitive() && !show_secrets {
            "<redacted>".to_owned()
        } else {
            v.to_str().unwrap_or("<binary>").to_owned()
        };
        headers.insert(k.as_str().to_owned(), Value::String(value));
    }
    json!({
        "method": req.method.as_str(),
        "url": req.url,
        "headers": headers,
        "body": serde_json::from_slice::<Value>(&req.body).expect("body is JSON"),
    })
}

pub fn failure_json(f: &Failure) -> Value {
    json!({
        "failure": {
            "class": f.class.to_string(),
            "status": f.status,
            "retry_after_ms": f.retry_after.map(|d| d.as_millis() as u64),
            "message": f.message,
        }
    })
}

/// One decoded stream event as a JSON line.
pub fn event_json(e: &Result<StreamEvent, Failure>) -> Value {
    match e {
        Ok(StreamEvent::Chunk { chunk, .. }) => json!({ "chunk": chunk }),
        // Pass-through chunks compare as what they parse to.
        Ok(StreamEvent::Pass(p)) => {
            json!({ "chunk": p.parse().expect("a pass-through chunk parses") })
        }
        Ok(StreamEvent::Usage(u)) => json!({ "usage": u }),
        Ok(StreamEvent::Done) => json!("done"),
        Err(f) => failure_json(f),
    }
}

pub fn events_text(events: &[Result<StreamEvent, Failure>]) -> String {
    events
        .iter()
        .map(|e| format!("{}\n", event_json(e)))
        .collect()
}

/// Feeds `bytes` to a fresh decoder in the given pieces, then finishes.
pub fn decode_split(
    mut decoder: Box<dyn StreamDecoder>,
    bytes: &[u8],
    cuts: &[usize],
) -> Vec<Result<StreamEvent, Failure>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts {
        let cut = cut.clamp(at, bytes.len());
        out.extend(decoder.feed(&bytes[at..cut]));
        at = cut;
    }
    out.extend(decoder.feed(&bytes[at..]));
    out.extend(decoder.finish());
    out
}

/// A small deterministic generator for split points.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

/// Decodes `bytes` whole, byte by byte and in 200 random splits, checks
/// every way gives the same events, and returns them.
pub fn decode_every_way(
    make: &dyn Fn() -> Box<dyn StreamDecoder>,
    bytes: &[u8],
) -> Vec<Result<StreamEvent, Failure>> {
    let whole = decode_split(make(), bytes, &[]);
    let bytewise: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(
        decode_split(make(), bytes, &bytewise),
        whole,
        "byte by byte"
    );
    let mut rng = Lcg::new(bytes.len() as u64);
    for round in 0..200 {
        let n = rng.next(12) + 1;
        let mut cuts: Vec<usize> = (0..n).map(|_| rng.next(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        assert_eq!(
            decode_split(make(), bytes, &cuts),
            whole,
            "split round {round} at {cuts:?}"
        );
    }
    whole
}
