//! The semantic cache: answers to earlier prompts whose embedding is close
//! enough (cosine similarity ≥ the route's `similarity`), behind a guard.
//!
//! Embeddings of near-duplicate prompts that ask opposite things ("how do I
//! enable X" / "how do I disable X") are almost identical, so similarity
//! alone serves wrong answers. The [`Features`] guard refuses a hit when the
//! two prompts differ in polarity words (negations and toggles such as
//! not/never/without/disable/remove/deny…), in numbers, in named entities
//! (capitalised words not opening a sentence, acronyms), or in the
//! conversation before the last user message (system prompt included).
//!
//! The pipeline embeds [`embedding_input`] with the route's `cache.embedding`
//! target and passes the vector; this module never calls a provider. Entries
//! are scoped by tenant and routed model. Lookup is a linear scan, so the
//! index should stay in the thousands of entries; it is bounded by
//! `maxEntries` and the TTL, oldest first. Known limits: per pod; stale up to
//! the TTL; the guard is lexical (a lower-case difference in the object —
//! "python" vs "java" — passes it, and relies on the similarity threshold).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_crds::route::CacheSpec;
use tokio::time::Instant;

use super::Cached;
use crate::openai::ChatRequest;

/// Words whose presence flips or changes what is asked.
const POLARITY: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nothing",
    "nobody",
    "neither",
    "nor",
    "without",
    "cannot",
    "cant",
    "dont",
    "doesnt",
    "isnt",
    "wont",
    "shouldnt",
    "didnt",
    "arent",
    "wasnt",
    "avoid",
    "prevent",
    "stop",
    "disable",
    "disabled",
    "disabling",
    "enable",
    "enabled",
    "enabling",
    "deny",
    "allow",
    "forbid",
    "remove",
    "add",
    "delete",
    "create",
    "exclude",
    "include",
    "uninstall",
    "install",
    "off",
    "on",
    "false",
    "true",
    "decrease",
    "increase",
    "reduce",
    "lower",
    "raise",
    "min",
    "minimum",
    "max",
    "maximum",
    "before",
    "after",
    "encrypt",
    "decrypt",
    "lock",
    "unlock",
    "open",
    "close",
    "start",
    "buy",
    "sell",
    "up",
    "down",
    "except",
    "against",
    "less",
    "more",
    "worst",
    "best",
    "unset",
    "set",
];

/// What the guard compares between two prompts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    polarity: BTreeSet<String>,
    numbers: BTreeMap<String, usize>,
    entities: BTreeSet<String>,
    /// Hash of every message before the last user message.
    context: [u8; 32],
}

/// Why the guard refused a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Polarity,
    Numbers,
    Entities,
    Context,
}

fn words(text: &str) -> impl Iterator<Item = (bool, &str)> {
    // (opens a sentence, word)
    let mut sentence_start = true;
    text.split(|c: char| {
        c.is_whitespace() || c == ',' || c == ';' || c == ':' || c == '(' || c == ')' || c == '"'
    })
    .filter(|w| !w.is_empty())
    .map(move |w| {
        let opens = sentence_start;
        sentence_start = w.ends_with(['.', '?', '!']);
        (
            opens,
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'' && c != '.' && c != '-'),
        )
    })
}

impl Features {
    /// The guard features of a prompt (`last_user`) in its conversation
    /// context (`context`, everything before it including the system prompt).
    pub fn new(context: &str, last_user: &str) -> Self {
        let mut polarity = BTreeSet::new();
        let mut numbers = BTreeMap::new();
        let mut entities = BTreeSet::new();
        for (opens, raw) in words(last_user) {
            let w = raw.trim_end_matches('.');
            if w.is_empty() {
                continue;
            }
            let folded: String = w
                .chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect();
            if w.chars().any(|c| c.is_ascii_digit()) {
                *numbers.entry(w.to_lowercase()).or_default() += 1;
                continue;
            }
            if w.to_lowercase().ends_with("n't") || POLARITY.contains(&folded.as_str()) {
                polarity.insert(folded.clone());
            }
            let first_upper = w.chars().next().is_some_and(char::is_uppercase);
            let acronym = w.len() > 1 && w.chars().all(|c| c.is_uppercase() || c.is_ascii_digit());
            if (first_upper && !opens && w != "I") || acronym {
                entities.insert(folded);
            }
        }
        Self {
            polarity,
            numbers,
            entities,
            context: Sha256::digest(context.as_bytes()).into(),
        }
    }

    /// The features of a request: its last user message in the context of
    /// every message before it.
    pub fn of(req: &ChatRequest) -> Self {
        let (context, last) = split(req);
        Self::new(&context, &last)
    }

    /// `Ok` when a cached answer to `self` may answer `other`.
    pub fn check(&self, other: &Features) -> Result<(), Refusal> {
        if self.context != other.context {
            Err(Refusal::Context)
        } else if self.polarity != other.polarity {
            Err(Refusal::Polarity)
        } else if self.numbers != other.numbers {
            Err(Refusal::Numbers)
        } else if self.entities != other.entities {
            Err(Refusal::Entities)
        } else {
            Ok(())
        }
    }
}

fn split(req: &ChatRequest) -> (String, String) {
    let last_user = req.messages.iter().rposition(|m| m.role == "user");
    let text =
        |m: &crate::openai::Message| m.content.as_ref().map(|c| c.text()).unwrap_or_default();
    let mut context = String::new();
    for (i, m) in req.messages.iter().enumerate() {
        if Some(i) == last_user {
            continue;
        }
        context.push_str(&m.role);
        context.push('\u{1f}');
        context.push_str(&text(m));
        context.push('\u{1e}');
    }
    let last = last_user
        .and_then(|i| req.messages.get(i))
        .map(text)
        .unwrap_or_default();
    (context, last)
}

/// The text to embed for a request: its last user message.
pub fn embedding_input(req: &ChatRequest) -> String {
    split(req).1
}

/// Cosine similarity; 0 for empty or mismatched vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Which entries a lookup may see: one tenant, one routed model, and one
/// set of request parameters (tools, format, sampling, limits…).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub tenant: Option<String>,
    pub model: String,
    /// Digest of everything but the messages; see [`Scope::of`].
    pub params: [u8; 32],
}

impl Scope {
    /// The scope of a request: only the prompt may differ between a lookup
    /// and the entry it hits; a different `response_format`, tool set or
    /// `max_tokens` never shares answers.
    pub fn of(req: &ChatRequest, routed_model: &str, tenant: Option<&str>) -> Self {
        let mut params = req.clone();
        params.messages.clear();
        Self {
            tenant: tenant.map(str::to_owned),
            model: routed_model.to_owned(),
            params: super::key(&params, routed_model, tenant),
        }
    }
}

#[derive(Debug)]
struct Entry {
    scope: Scope,
    vector: Vec<f32>,
    features: Features,
    value: Arc<Cached>,
    expires: Instant,
}

/// The result of a semantic lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit {
        value: Arc<Cached>,
        similarity: f32,
    },
    /// The nearest entry was similar enough but the guard refused it.
    Refused {
        similarity: f32,
        reason: Refusal,
    },
    Miss,
}

/// One route's semantic cache.
#[derive(Debug)]
pub struct SemanticCache {
    threshold: f32,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<VecDeque<Entry>>,
}

impl SemanticCache {
    pub fn new(spec: &CacheSpec) -> Self {
        Self::with_limits(
            spec.similarity.unwrap_or(0.95) as f32,
            spec.ttl.get(),
            spec.max_entries as usize,
        )
    }

    pub fn with_limits(threshold: f32, ttl: Duration, max_entries: usize) -> Self {
        Self {
            threshold,
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// The most similar live entry in `scope` at or above the threshold whose
    /// guard features match; `Refused` when only guarded entries were close.
    pub fn lookup(
        &self,
        scope: &Scope,
        vector: &[f32],
        features: &Features,
        now: Instant,
    ) -> Lookup {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.expires > now);
        let mut best: Option<(f32, &Entry)> = None;
        let mut refused: Option<(f32, Refusal)> = None;
        for e in entries.iter().filter(|e| &e.scope == scope) {
            let sim = cosine(vector, &e.vector);
            if sim < self.threshold {
                continue;
            }
            match e.features.check(features) {
                Ok(()) if best.is_none_or(|(s, _)| sim > s) => best = Some((sim, e)),
                Ok(()) => {}
                Err(reason) if refused.is_none_or(|(s, _)| sim > s) => {
                    refused = Some((sim, reason))
                }
                Err(_) => {}
            }
        }
        match (best, refused) {
            (Some((similarity, e)), _) => Lookup::Hit {
                value: e.value.clone(),
                similarity,
            },
            (None, Some((similarity, reason))) => Lookup::Refused { similarity, reason },
            (None, None) => Lookup::Miss,
        }
    }

    pub fn insert(
        &self,
        scope: Scope,
        vector: Vec<f32>,
        features: Features,
        value: Cached,
        now: Instant,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push_back(Entry {
            scope,
            vector,
            features,
            value: Arc::new(value),
            expires: now + self.ttl,
        });
        while entries.len() > self.max_entries {
            entries.pop_front();
        }
    }
}
