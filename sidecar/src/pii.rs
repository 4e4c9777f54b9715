//! PII scrubbing: finds email addresses, phone numbers, credit-card numbers,
//! US social security numbers, IP addresses and secrets in prompts, and
//! either replaces them with typed placeholders (`redact`) or refuses the
//! request naming only the categories found (`block`).
//!
//! One combined regular expression finds every candidate in a single pass
//! over the text (the regex crate's lazy DFA); the few candidates then go
//! through cheap validators that the regular language cannot express: the
//! Luhn checksum and issuer prefix of cards, the SSA's never-issued SSN
//! ranges, octet bounds of IPv4, a real IPv6 parse, digit counts of phone
//! numbers, and letter+digit mix of API keys.
//!
//! The pipeline builds one [`Scrubber`] per route at config conversion and
//! calls [`Scrubber::apply`] on the request before logs, cache keys and the
//! provider call. Known limits: a candidate rejected by its validator is
//! skipped whole (text inside it is not rescanned); phone formats are
//! international `+CC …` and North American; SSNs only in `AAA-GG-SSSS`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use regex::Regex;
use sluice_crds::route::{PiiDetector, PiiMode, PiiSpec};

use crate::openai::{ChatRequest, Content};

/// ASCII-only (`-u`): `\d` means 0-9 and `\b` is an ASCII word boundary,
/// which keeps the whole pattern on the lazy DFA even for non-ASCII text
/// (Unicode word boundaries would fall back to a slower engine).
const PATTERN: &str = r"(?x-u)
  (?P<secret>
      -----BEGIN\ (?:[A-Z0-9]+\ )*PRIVATE\ KEY-----
    | \bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}
    | \bAKIA[0-9A-Z]{16}\b
    | \bgh[pousr]_[A-Za-z0-9]{36,}
    | \bxox[abposr]-[A-Za-z0-9-]{10,}
    | \bBearer\s+[A-Za-z0-9._~+/=-]{16,}
  )
| (?P<email>
    \b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b
  )
| (?P<ipv6> (?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4} )
| (?P<card> \b\d(?:[\ -]?\d){12,18}\b )
| (?P<ssn> \b\d{3}-\d{2}-\d{4}\b )
| (?P<ipv4> \b(?:\d{1,3}\.){3}\d{1,3}\b )
| (?P<phone>
      \+\d{1,3}[\ .-]?(?:\(\d{1,4}\)[\ .-]?)?\d{1,4}(?:[\ .-]?\d{2,4}){1,4}\b
    | (?:\(\d{3}\)\ ?|\b\d{3}[\ .-])\d{3}[\ .-]\d{4}\b
  )
";

/// Capture groups of [`PATTERN`] and the kind each reports.
const GROUPS: [(&str, PiiDetector); 7] = [
    ("secret", PiiDetector::Secret),
    ("email", PiiDetector::Email),
    ("ipv6", PiiDetector::IpAddress),
    ("card", PiiDetector::CreditCard),
    ("ssn", PiiDetector::Ssn),
    ("ipv4", PiiDetector::IpAddress),
    ("phone", PiiDetector::Phone),
];

/// The placeholder `redact` writes for a kind.
pub fn placeholder(kind: PiiDetector) -> &'static str {
    match kind {
        PiiDetector::Email => "[EMAIL]",
        PiiDetector::Phone => "[PHONE]",
        PiiDetector::CreditCard => "[CREDIT_CARD]",
        PiiDetector::Ssn => "[SSN]",
        PiiDetector::IpAddress => "[IP_ADDRESS]",
        PiiDetector::Secret => "[SECRET]",
    }
}

/// The category name used in errors and metrics (the CRD spelling).
pub fn category(kind: PiiDetector) -> &'static str {
    match kind {
        PiiDetector::Email => "email",
        PiiDetector::Phone => "phone",
        PiiDetector::CreditCard => "credit-card",
        PiiDetector::Ssn => "ssn",
        PiiDetector::IpAddress => "ip-address",
        PiiDetector::Secret => "secret",
    }
}

/// One piece of personal data: its kind and byte range in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: PiiDetector,
    pub range: Range<usize>,
}

/// A request refused in `block` mode: 400 `pii_blocked`. The message names
/// the categories, never the values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the request contains personal data or secrets ({})", self.names().join(", "))]
pub struct PiiBlocked {
    pub categories: BTreeSet<PiiDetector>,
}

impl PiiBlocked {
    pub fn names(&self) -> Vec<&'static str> {
        self.categories.iter().map(|k| category(*k)).collect()
    }
}

/// What [`Scrubber::apply`] replaced, per kind (for metrics and the access
/// log; counts only).
pub type Redactions = BTreeMap<PiiDetector, usize>;

/// A compiled PII policy.
#[derive(Clone, Debug)]
pub struct Scrubber {
    mode: PiiMode,
    enabled: BTreeSet<PiiDetector>,
    re: Regex,
}

impl Scrubber {
    /// Compiles the detectors of `spec`. Fails only if the built-in pattern
    /// does not compile (a bug caught by the tests).
    ///
    /// The pattern is compiled once per process and shared (a configuration
    /// is rebuilt on every snapshot; recompiling per route would cost
    /// milliseconds each time).
    pub fn new(spec: &PiiSpec) -> Result<Self, regex::Error> {
        static COMPILED: std::sync::OnceLock<Result<Regex, regex::Error>> =
            std::sync::OnceLock::new();
        let re = COMPILED.get_or_init(|| Regex::new(PATTERN)).clone()?;
        Ok(Self {
            mode: spec.mode,
            enabled: spec.detectors.iter().copied().collect(),
            re,
        })
    }

    pub fn mode(&self) -> PiiMode {
        self.mode
    }

    /// Every enabled finding in `text`, in order, in one pass.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        for caps in self.re.captures_iter(text) {
            let Some((group, kind, m)) = GROUPS
                .iter()
                .find_map(|&(g, k)| caps.name(g).map(|m| (g, k, m)))
            else {
                continue;
            };
            if !self.enabled.contains(&kind) {
                continue;
            }
            if valid(group, text, m.range()) {
                out.push(Finding {
                    kind,
                    range: m.range(),
                });
            }
        }
        out
    }

    /// `text` with every enabled finding replaced by its placeholder;
    /// borrowed when there was nothing to replace.
    pub fn redact<'a>(&self, text: &'a str, counts: &mut Redactions) -> Cow<'a, str> {
        let found = self.find(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.range.start]);
            out.push_str(placeholder(f.kind));
            at = f.range.end;
            *counts.entry(f.kind).or_default() += 1;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// Applies the policy to every text of a request (message content and
    /// content parts, tool-call arguments, refusals): `redact` rewrites them
    /// in place and returns the counts; `block` returns the categories found;
    /// `off` does nothing.
    pub fn apply(&self, req: &mut ChatRequest) -> Result<Redactions, PiiBlocked> {
        self.apply_to(|f| for_each_text(req, f))
    }

    /// The same for an embeddings `input` (a string or an array of them;
    /// token arrays carry no text to scan).
    pub fn apply_embeddings(
        &self,
        input: &mut serde_json::Value,
    ) -> Result<Redactions, PiiBlocked> {
        self.apply_to(|f| for_each_string(input, f))
    }

    /// The policy over every text `walk` visits.
    fn apply_to(
        &self,
        walk: impl FnOnce(&mut dyn FnMut(&mut String)),
    ) -> Result<Redactions, PiiBlocked> {
        let mut counts = Redactions::new();
        match self.mode {
            PiiMode::Off => Ok(counts),
            PiiMode::Redact => {
                walk(&mut |s: &mut String| {
                    if let Cow::Owned(new) = self.redact(s, &mut counts) {
                        *s = new;
                    }
                });
                Ok(counts)
            }
            PiiMode::Block => {
                let mut categories = BTreeSet::new();
                walk(&mut |s: &mut String| {
                    categories.extend(self.find(s).into_iter().map(|f| f.kind));
                });
                if categories.is_empty() {
                    Ok(counts)
                } else {
                    Err(PiiBlocked { categories })
                }
            }
        }
    }
}

fn for_each_string(v: &mut serde_json::Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(items) => {
            for item in items {
                if let serde_json::Value::String(s) = item {
                    f(s);
                }
            }
        }
        _ => {}
    }
}

fn for_each_text(req: &mut ChatRequest, f: &mut dyn FnMut(&mut String)) {
    for m in &mut req.messages {
        match &mut m.content {
            Some(Content::Text(s)) => f(s),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    if let Some(s) = p.text.as_mut() {
                        f(s);
                    }
                }
            }
            None => {}
        }
        for call in m.tool_calls.iter_mut().flatten() {
            f(&mut call.function.arguments);
        }
        if let Some(s) = m.refusal.as_mut() {
            f(s);
        }
    }
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn luhn(d: &[u32]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

fn valid(group: &str, text: &str, r: Range<usize>) -> bool {
    let s = &text[r.clone()];
    match group {
        "secret" => {
            // Key bodies are random: letters and digits both. Keeps
            // `sk-learn-compatible-estimators` and prose after "Bearer" out.
            let body = s
                .trim_start_matches("Bearer")
                .trim_start()
                .trim_start_matches("sk-");
            s.starts_with("-----BEGIN")
                || (body.chars().any(|c| c.is_ascii_digit())
                    && body.chars().any(|c| c.is_ascii_alphabetic()))
        }
        "email" => true,
        "card" => {
            let d = digits(s);
            (13..=19).contains(&d.len())
                // Issuer prefixes 2–6 (Mastercard 2-series, Amex/Diners/JCB,
                // Visa, Mastercard, Discover/UnionPay): rules out
                // timestamps and most order numbers.
                && matches!(d.first(), Some(2..=6))
                && d.iter().any(|&x| x != d[0])
                && luhn(&d)
        }
        "ssn" => {
            let d = digits(s);
            if d.len() != 9 {
                return false;
            }
            let area = d[..3].iter().fold(0, |a, x| a * 10 + x);
            let group = d[3..5].iter().fold(0, |a, x| a * 10 + x);
            let serial = d[5..].iter().fold(0, |a, x| a * 10 + x);
            area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        }
        "ipv4" => {
            // Not part of a longer dotted run (version strings, OIDs).
            let pre = &text[..r.start];
            let post = &text[r.end..];
            let digit = |c: char| c.is_ascii_digit();
            if pre.strip_suffix('.').is_some_and(|p| p.ends_with(digit))
                || post.strip_prefix('.').is_some_and(|p| p.starts_with(digit))
            {
                return false;
            }
            s.parse::<std::net::Ipv4Addr>().is_ok()
        }
        "ipv6" => {
            // Not glued to a word, a longer colon run, or a dotted name; a
            // full stop ending the sentence is fine.
            let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == ':');
            let dotted_after = text[r.end..]
                .strip_prefix('.')
                .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_alphanumeric()));
            if glued(before(text, r.start))
                || before(text, r.start) == Some('.')
                || glued(after(text, r.end))
                || dotted_after
            {
                return false;
            }
            let groups = s.split(':').filter(|g| !g.is_empty()).count();
            s.parse::<std::net::Ipv6Addr>().is_ok() && (groups >= 3 || s == "::1")
        }
        "phone" => {
            let n = digits(s).len();
            if s.starts_with('+') {
                (8..=15).contains(&n)
            } else {
                // North American: the area code does not start with 0 or 1.
                let d = digits(s);
                n == 10 && d[0] >= 2
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
