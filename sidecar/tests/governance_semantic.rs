//! The semantic cache's guard measured on a labelled set of near-duplicate
//! prompt pairs (`fixtures/semantic_pairs.jsonl`): same-meaning pairs should
//! hit, opposite- or different-meaning pairs must not.
//!
//! Embeddings here are a deterministic hashed bag of words, a stand-in for
//! the route's embedding model that, like real embeddings, puts "enable X"
//! and "disable X" close together. Run with `--nocapture` for the figures.

use std::time::Duration;

use sluice_sidecar::cache::Cached;
use sluice_sidecar::cache::semantic::{
    Features, Lookup, Refusal, Scope, SemanticCache, embedding_input,
};
use sluice_sidecar::openai::ChatRequest;
use tokio::time::Instant;

const DIMS: usize = 512;

fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIMS];
    for w in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
    {
        // FNV-1a of the lower-cased word.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in w.to_lowercase().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        v[(h % DIMS as u64) as usize] += 1.0;
    }
    v
}

fn request(system: Option<&str>, user: &str) -> ChatRequest {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    serde_json::from_value(
        serde_json::json!({"model": "chat", "temperature": 0, "messages": messages}),
    )
    .expect("request")
}

fn answer() -> Cached {
    Cached::Stream(vec![bytes::Bytes::from_static(b"data: [DONE]\n\n")])
}

#[derive(serde::Deserialize)]
struct Pair {
    a: String,
    b: String,
    same: bool,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    system_a: Option<String>,
    #[serde(default)]
    system_b: Option<String>,
}

fn pairs() -> Vec<Pair> {
    include_str!("fixtures/semantic_pairs.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("pair"))
        .collect()
}

/// (hit, similarity ≥ threshold) for serving `b` from an entry stored for `a`.
fn serve(p: &Pair, threshold: f32, guarded: bool) -> (bool, bool) {
    let cache = SemanticCache::with_limits(threshold, Duration::from_secs(60), 100);
    let now = Instant::now();
    let ra = request(p.system_a.as_deref(), &p.a);
    let rb = request(p.system_b.as_deref(), &p.b);
    let scope = Scope::of(&ra, "gpt-4o", None);
    assert_eq!(scope, Scope::of(&rb, "gpt-4o", None));
    let fa = Features::of(&ra);
    let fb = if guarded {
        Features::of(&rb)
    } else {
        fa.clone()
    };
    cache.insert(
        scope.clone(),
        embed(&embedding_input(&ra)),
        fa,
        answer(),
        now,
    );
    match cache.lookup(&scope, &embed(&embedding_input(&rb)), &fb, now) {
        Lookup::Hit { .. } => (true, true),
        Lookup::Refused { .. } => (false, true),
        Lookup::Miss => (false, false),
    }
}

#[tokio::test(start_paused = true)]
async fn guard_false_hit_rate_on_labelled_pairs() {
    let pairs = pairs();
    let same = pairs.iter().filter(|p| p.same).count();
    let diff = pairs.len() - same;
    assert!(same >= 20 && diff >= 20);
    let threshold = 0.80;
    let mut false_unguarded = 0;
    let mut false_guarded = Vec::new();
    let mut true_hits = 0;
    for p in &pairs {
        let (hit_unguarded, _) = serve(p, threshold, false);
        let (hit, _) = serve(p, threshold, true);
        if p.same {
            true_hits += usize::from(hit);
        } else {
            false_unguarded += usize::from(hit_unguarded);
            if hit {
                false_guarded.push(format!("{} | {} ({})", p.a, p.b, p.kind));
            }
        }
    }
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d as f64;
    eprintln!(
        "semantic guard @ cosine {threshold}: false hits without guard {false_unguarded}/{diff} ({:.1}%), \
         with guard {}/{diff} ({:.1}%); same-meaning hits {true_hits}/{same} ({:.1}%)",
        pct(false_unguarded, diff),
        false_guarded.len(),
        pct(false_guarded.len(), diff),
        pct(true_hits, same),
    );
    for f in &false_guarded {
        eprintln!("  false hit: {f}");
    }
    // The guard must cut most false hits the similarity lets through, and
    // keep most true hits.
    assert!(false_unguarded >= diff / 2, "the pairs are near-duplicates");
    assert!(pct(false_guarded.len(), diff) <= 10.0);
    assert!(pct(true_hits, same) >= 75.0);
}

#[tokio::test(start_paused = true)]
async fn scoped_by_tenant_and_model_and_expires() {
    let cache = SemanticCache::with_limits(0.9, Duration::from_secs(60), 10);
    let r = request(None, "What is the capital of France?");
    let f = Features::of(&r);
    let v = embed(&embedding_input(&r));
    let scope = |t: &str, m: &str| Scope::of(&r, m, Some(t));
    cache.insert(
        scope("a", "gpt"),
        v.clone(),
        f.clone(),
        answer(),
        Instant::now(),
    );
    assert!(matches!(
        cache.lookup(&scope("a", "gpt"), &v, &f, Instant::now()),
        Lookup::Hit { .. }
    ));
    assert!(matches!(
        cache.lookup(&scope("b", "gpt"), &v, &f, Instant::now()),
        Lookup::Miss
    ));
    assert!(matches!(
        cache.lookup(&scope("a", "mini"), &v, &f, Instant::now()),
        Lookup::Miss
    ));
    let neg = request(None, "What is not the capital of France?");
    assert!(matches!(
        cache.lookup(&scope("a", "gpt"), &v, &Features::of(&neg), Instant::now()),
        Lookup::Refused {
            reason: Refusal::Polarity,
            ..
        }
    ));
    // Another response format never shares answers.
    let mut json = r.clone();
    json.response_format = Some(serde_json::json!({"type": "json_object"}));
    assert!(matches!(
        cache.lookup(&Scope::of(&json, "gpt", Some("a")), &v, &f, Instant::now()),
        Lookup::Miss
    ));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(matches!(
        cache.lookup(&scope("a", "gpt"), &v, &f, Instant::now()),
        Lookup::Miss
    ));
}

#[test]
fn guard_features() {
    let f = |s: &str| Features::new("", s);
    // Capitalised sentence openers and "I" are not entities; names are.
    assert!(
        f("How do I reset it? Where is it.")
            .check(&f("how do I reset it? where is it."))
            .is_ok()
    );
    assert_eq!(
        f("Ship to Paris").check(&f("Ship to Lyon")),
        Err(Refusal::Entities)
    );
    // Contractions count as negations.
    assert_eq!(
        f("Why does it work?").check(&f("Why doesn't it work?")),
        Err(Refusal::Polarity)
    );
    assert_eq!(
        f("Top 5 films").check(&f("Top 10 films")),
        Err(Refusal::Numbers)
    );
    // The system prompt and earlier turns are part of the context.
    assert_eq!(
        Features::new("system: be brief", "hi").check(&Features::new("system: be verbose", "hi")),
        Err(Refusal::Context)
    );
}
