//! Response caches: exact (identical normalized requests) and semantic
//! (similar prompts, behind a guard against near-duplicates that ask the
//! opposite). Both are per sidecar, in memory, bounded in entries and TTL.
//!
//! The pipeline calls, in order:
//! 1. [`decide`] with the route's [`CacheSpec`], the request and its
//!    `Cache-Control` header — whether to read and whether to store;
//! 2. exact mode: [`key`] (model after routing rules, tenant, API) then
//!    [`exact::ExactCache::get`]; semantic mode: embed
//!    [`semantic::embedding_input`] with the route's `cache.embedding` target,
//!    then [`semantic::SemanticCache::lookup`] in [`semantic::Scope::of`]
//!    with [`semantic::Features::of`];
//! 3. on a miss, after the response completed: `insert` a
//!    [`Cached::Response`], or for a stream the frames gathered by a
//!    [`StreamRecorder`] (only if the stream finished cleanly);
//! 4. `x-sluice-cache` is `hit` when the cache answered, else
//!    [`Decision::status_if_not_served`] (see [`Status::as_str`]).
//!
//! What is deterministic: only requests with `temperature: 0` are cached by
//! default. An unset temperature means the provider's default (1.0 for
//! OpenAI), so such requests are creative and bypass the cache unless the
//! route sets `cacheNonDeterministic`.
//!
//! Limits: entries live in one sidecar (no sharing between pods, so the hit
//! rate falls with the replica count) and can be stale up to the TTL (a
//! cached answer does not change when the model or the world does).

pub mod exact;
pub mod semantic;

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_crds::route::{CacheMode, CacheSpec};

use crate::openai::ChatRequest;

/// The `x-sluice-cache` header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Bypass => "bypass",
        }
    }
}

/// What the cache may do for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The route has no cache: no lookup, no store, no header.
    Off,
    /// Skip the lookup (`x-sluice-cache: bypass`); `store` says whether the
    /// fresh answer may still be stored (`Cache-Control: no-cache`).
    Bypass { store: bool },
    /// Look up, and store on a miss.
    Lookup,
}

impl Decision {
    pub fn reads(self) -> bool {
        self == Decision::Lookup
    }

    pub fn stores(self) -> bool {
        matches!(self, Decision::Lookup | Decision::Bypass { store: true })
    }

    /// The header value when the cache did not answer.
    pub fn status_if_not_served(self) -> Option<Status> {
        match self {
            Decision::Off => None,
            Decision::Bypass { .. } => Some(Status::Bypass),
            Decision::Lookup => Some(Status::Miss),
        }
    }
}

/// Whether to read and store, from the route's cache spec, the request's
/// determinism and its `Cache-Control` header (`no-cache`: do not read,
/// still store the fresh answer; `no-store`: neither).
pub fn decide(spec: &CacheSpec, req: &ChatRequest, cache_control: Option<&str>) -> Decision {
    if spec.mode == CacheMode::Off {
        return Decision::Off;
    }
    let directive = |d: &str| {
        cache_control.is_some_and(|v| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(d)))
    };
    let deterministic = req.temperature == Some(0.0) || spec.cache_non_deterministic;
    if !deterministic || directive("no-store") {
        Decision::Bypass { store: false }
    } else if directive("no-cache") {
        Decision::Bypass { store: true }
    } else {
        Decision::Lookup
    }
}

/// Request fields that do not change the answer and stay out of the key.
const IGNORED_EXTRA: [&str; 5] = [
    "user",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
];

/// The exact-cache key: SHA-256 of the canonical JSON (object keys sorted
/// at every level, so field order never matters) of everything that shapes
/// the answer — the model after routing, messages, tools, tool choice,
/// sampling parameters, output limits, format, `n`, stop sequences, whether
/// it streams, and unknown fields — plus the tenant, so tenants never share
/// entries. PII redaction runs before this, so keys hold no raw PII.
pub fn key(req: &ChatRequest, routed_model: &str, tenant: Option<&str>) -> [u8; 32] {
    let mut extra: Map<String, Value> = req.extra.clone();
    for k in IGNORED_EXTRA {
        extra.remove(k);
    }
    let stop = req.stop.as_ref().map(|s| s.to_vec());
    let doc = serde_json::json!({
        "model": routed_model,
        "messages": req.messages,
        "tools": req.tools,
        "tool_choice": req.tool_choice,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_tokens": req.max_output_tokens(),
        "response_format": req.response_format,
        "n": req.n,
        "stop": stop,
        "stream": req.is_stream(),
        "extra": extra,
    });
    let mut h = Sha256::new();
    match tenant {
        Some(t) => {
            h.update(b"tenant:");
            h.update((t.len() as u64).to_be_bytes());
            h.update(t.as_bytes());
        }
        None => h.update(b"no-tenant"),
    }
    canonical(&doc, &mut h);
    h.finalize().into()
}

/// Feeds `v` as JSON with sorted object keys.
fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            h.update(b"{");
            for k in keys {
                canonical(&Value::String(k.clone()), h);
                h.update(b":");
                if let Some(x) = m.get(k) {
                    canonical(x, h);
                }
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for x in a {
                canonical(x, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => h.update(other.to_string().as_bytes()),
    }
}

/// A route's cache, built with its configuration and carried over to the
/// next configuration while the route's `cache` spec does not change.
#[derive(Clone, Debug)]
pub enum RouteCache {
    Off,
    Exact(exact::ExactCache),
    Semantic {
        cache: std::sync::Arc<semantic::SemanticCache>,
        /// The `cache.embedding` target the prompts are embedded with.
        embedding: crate::config::Target,
    },
}

impl RouteCache {
    /// The cache `spec` asks for; semantic mode needs its embedding target.
    pub fn new(spec: &CacheSpec, embedding: Option<crate::config::Target>) -> Self {
        match (spec.mode, embedding) {
            (CacheMode::Off, _) => RouteCache::Off,
            (CacheMode::Exact, _) => RouteCache::Exact(exact::ExactCache::new(spec)),
            (CacheMode::Semantic, Some(embedding)) => RouteCache::Semantic {
                cache: std::sync::Arc::new(semantic::SemanticCache::new(spec)),
                embedding,
            },
            // Refused at config conversion; no cache rather than a wrong one.
            (CacheMode::Semantic, None) => RouteCache::Off,
        }
    }

    /// The same entries under a new configuration (the embedding target is
    /// the new configuration's).
    pub fn carried_over(&self, fresh: &RouteCache) -> RouteCache {
        match (self, fresh) {
            (RouteCache::Semantic { cache, .. }, RouteCache::Semantic { embedding, .. }) => {
                RouteCache::Semantic {
                    cache: cache.clone(),
                    embedding: embedding.clone(),
                }
            }
            (RouteCache::Exact(c), RouteCache::Exact(_)) => RouteCache::Exact(c.clone()),
            _ => fresh.clone(),
        }
    }
}

/// A cached answer, byte for byte as the client received it (so a
/// `/v1/messages` answer is Anthropic-shaped: the key includes the API).
#[derive(Clone, Debug, PartialEq)]
pub enum Cached {
    /// A whole (non-stream) response body.
    Response(Bytes),
    /// The SSE frames of a completed stream, byte for byte as the client
    /// received them; replaying them in order reproduces the stream.
    Stream(Vec<Bytes>),
}

/// Gathers a stream's frames while they are forwarded; yields a
/// [`Cached::Stream`] only when the stream completed and stayed under the
/// size limit.
#[derive(Debug)]
pub struct StreamRecorder {
    frames: Vec<Bytes>,
    bytes: usize,
    limit: usize,
    overflowed: bool,
}

impl StreamRecorder {
    /// Records at most `limit_bytes`; longer streams are not cached.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            frames: Vec::new(),
            bytes: 0,
            limit: limit_bytes,
            overflowed: false,
        }
    }

    /// Records one frame (a cheap reference-counted clone of the bytes sent).
    pub fn push(&mut self, frame: &Bytes) {
        if self.overflowed {
            return;
        }
        self.bytes += frame.len();
        if self.bytes > self.limit {
            self.overflowed = true;
            self.frames = Vec::new();
        } else {
            self.frames.push(frame.clone());
        }
    }

    /// The entry to cache, after the stream ended with its final frame.
    /// Do not call for a stream that failed or was cut off.
    pub fn finish(self) -> Option<Cached> {
        (!self.overflowed && !self.frames.is_empty()).then_some(Cached::Stream(self.frames))
    }
}

#[cfg(test)]
mod tests;
