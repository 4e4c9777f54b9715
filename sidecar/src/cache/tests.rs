use std::time::Duration;

use super::exact::ExactCache;
use super::*;

fn req(v: serde_json::Value) -> ChatRequest {
    serde_json::from_value(v).expect("request")
}

fn spec(mode: &str) -> CacheSpec {
    serde_json::from_value(serde_json::json!({"mode": mode, "ttl": "60s", "maxEntries": 2}))
        .expect("spec")
}

fn base() -> ChatRequest {
    req(serde_json::json!({
        "model": "chat", "temperature": 0, "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is 2+2?"}]
    }))
}

fn response(text: &str) -> Cached {
    Cached::Response(Bytes::from(
        serde_json::json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]
        })
        .to_string(),
    ))
}

#[test]
fn key_ignores_field_order_and_irrelevant_fields() {
    let a = req(serde_json::json!({
        "model": "chat", "temperature": 0, "max_tokens": 100, "user": "u1",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"a": 1, "b": 2}}},
        "messages": [{"role": "user", "content": "What is 2+2?"}]
    }));
    let b = req(serde_json::json!({
        "messages": [{"content": "What is 2+2?", "role": "user"}],
        "response_format": {"json_schema": {"schema": {"b": 2, "a": 1}, "name": "x"}, "type": "json_schema"},
        "max_tokens": 100, "user": "u2", "temperature": 0, "model": "other-alias"
    }));
    assert_eq!(key(&a, "gpt-4o", None), key(&b, "gpt-4o", None));
}

#[test]
fn key_changes_with_what_shapes_the_answer() {
    let k = key(&base(), "gpt-4o", None);
    let mut other = base();
    other.max_tokens = Some(101);
    assert_ne!(k, key(&other, "gpt-4o", None));
    let mut other = base();
    other.extra.insert("seed".into(), 7.into());
    assert_ne!(k, key(&other, "gpt-4o", None));
    assert_ne!(k, key(&base(), "gpt-4o-mini", None));
    assert_ne!(k, key(&base(), "gpt-4o", Some("tenant-a")));
    assert_ne!(
        key(&base(), "gpt-4o", Some("a")),
        key(&base(), "gpt-4o", Some("b"))
    );
}

#[test]
fn only_deterministic_requests_unless_allowed() {
    let s = spec("exact");
    assert_eq!(decide(&s, &base(), None), Decision::Lookup);
    let mut creative = base();
    creative.temperature = None;
    assert_eq!(
        decide(&s, &creative, None),
        Decision::Bypass { store: false }
    );
    creative.temperature = Some(0.7);
    assert_eq!(
        decide(&s, &creative, None),
        Decision::Bypass { store: false }
    );
    let mut allowed = s.clone();
    allowed.cache_non_deterministic = true;
    assert_eq!(decide(&allowed, &creative, None), Decision::Lookup);
    assert_eq!(decide(&spec("off"), &base(), None), Decision::Off);
    assert_eq!(
        decide(&spec("off"), &base(), None).status_if_not_served(),
        None
    );
}

#[test]
fn cache_control_bypasses() {
    let s = spec("exact");
    let d = decide(&s, &base(), Some("max-age=0, No-Cache"));
    assert_eq!(d, Decision::Bypass { store: true });
    assert!(!d.reads() && d.stores());
    assert_eq!(d.status_if_not_served().map(Status::as_str), Some("bypass"));
    assert_eq!(
        decide(&s, &base(), Some("no-store")),
        Decision::Bypass { store: false }
    );
    assert_eq!(
        decide(&s, &base(), None).status_if_not_served(),
        Some(Status::Miss)
    );
}

#[test]
fn hit_miss_and_ttl_expiry() {
    // moka measures expiry with its own clock: a short real TTL.
    let cache = ExactCache::with_limits(Duration::from_millis(300), 10);
    let k = key(&base(), "gpt-4o", None);
    assert!(cache.get(&k).is_none());
    cache.insert(k, response("4"));
    assert_eq!(cache.get(&k).as_deref(), Some(&response("4")));
    std::thread::sleep(Duration::from_millis(450));
    assert!(cache.get(&k).is_none());
    assert!(cache.is_empty());
}

#[test]
fn bounded_by_max_entries() {
    let cache = ExactCache::with_limits(Duration::from_secs(60), 2);
    for i in 0..50u8 {
        cache.insert([i; 32], response("x"));
    }
    assert!(cache.len() <= 2, "held {}", cache.len());
    cache.insert([1; 32], response("a2"));
    assert_eq!(cache.get(&[1; 32]).as_deref(), Some(&response("a2")));
}

#[test]
fn no_cross_tenant_hits() {
    let cache = ExactCache::new(&spec("exact"));
    cache.insert(key(&base(), "gpt-4o", Some("a")), response("for a"));
    assert!(cache.get(&key(&base(), "gpt-4o", Some("b"))).is_none());
    assert!(cache.get(&key(&base(), "gpt-4o", None)).is_none());
    assert!(cache.get(&key(&base(), "gpt-4o", Some("a"))).is_some());
}

#[test]
fn a_completed_stream_replays_identically() {
    let frames: Vec<Bytes> = [
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"4\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n",
    ]
    .into_iter()
    .map(|s: &'static str| Bytes::from_static(s.as_bytes()))
    .collect();
    let mut rec = StreamRecorder::new(1 << 20);
    for f in &frames {
        rec.push(f);
    }
    let cache = ExactCache::new(&spec("exact"));
    let mut streamed = base();
    streamed.stream = Some(true);
    let k = key(&streamed, "gpt-4o", None);
    assert_ne!(k, key(&base(), "gpt-4o", None));
    cache.insert(k, rec.finish().expect("complete"));
    let Some(hit) = cache.get(&k) else {
        panic!("miss");
    };
    let Cached::Stream(replayed) = &*hit else {
        panic!("not a stream");
    };
    let original: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let bytes: Vec<u8> = replayed.iter().flat_map(|f| f.iter().copied()).collect();
    assert_eq!(bytes, original);
    assert_eq!(replayed, &frames);
}

#[test]
fn oversized_streams_are_not_recorded() {
    let mut rec = StreamRecorder::new(8);
    rec.push(&Bytes::from_static(b"data: 12345\n\n"));
    assert!(rec.finish().is_none());
    assert!(StreamRecorder::new(8).finish().is_none());
}
