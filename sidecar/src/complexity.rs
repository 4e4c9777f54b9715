//! A fast local scorer of a prompt's complexity, for `rules[].match.complexity`.
//!
//! No model is called: a handful of features are read in one pass over the
//! conversation and weighed into a score in `[0, 1]`:
//!
//! | feature | why it signals a harder prompt | weight |
//! | --- | --- | --- |
//! | length of the last user turn (chars, log-scaled, saturating at 1500) | long asks carry more constraints | 0.35 |
//! | reasoning cues (`prove`, `derive`, `step by step`, `trade-off`, `analyze`, `optimi`…) | asks for reasoning, not recall | 0.12 each, up to 0.30 |
//! | code (fences, `fn `/`def `/`class `/`#include`, tracebacks, braces and semicolons) | code tasks need a capable model | 0.18 |
//! | a task verb (`write`, `explain`, `summarize`, `draft`, `list`, `plan`…) | asks for production, not a fact | 0.10 |
//! | math (equations, `integral`, `matrix`, `probability`…) | multi-step computation | 0.12 |
//! | conversation turns beyond the first | context to track | 0.02 each, up to 0.10 |
//! | tools offered | agentic use | 0.10 |
//! | requested output length (`max_tokens` ≥ 1000 / ≥ 4000) | long generation | 0.05 / 0.10 |
//! | several questions or numbered requirements | multi-part task | 0.08 |
//! | simple cues (`hi`, `thanks`, `translate`, `what is`, `define`) on a short prompt | small talk and lookups | −0.15 |
//!
//! Tiers: `simple` below 0.22, `complex` from 0.45, `moderate` between.
//! Confidence is how far the score sits from the nearest threshold, scaled
//! to `[0.5, 1]`: a prompt right on a threshold is a coin toss between two
//! tiers. The labelled prompts in `tests/fixtures/complexity.jsonl` keep
//! these numbers honest; the benchmark `complexity` keeps them fast.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use sluice_crds::route::Complexity;

use crate::openai::{ChatRequest, Content};

/// The tier of a prompt and how sure the scorer is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub tier: Complexity,
    pub score: f32,
    pub confidence: f32,
}

const SIMPLE_BELOW: f32 = 0.22;
const COMPLEX_FROM: f32 = 0.45;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cue {
    Reasoning,
    Math,
    Code,
    Task,
    Simple,
}

const CUES: &[(&str, Cue)] = &[
    ("prove", Cue::Reasoning),
    ("proof", Cue::Reasoning),
    ("derive", Cue::Reasoning),
    ("step by step", Cue::Reasoning),
    ("step-by-step", Cue::Reasoning),
    ("trade-off", Cue::Reasoning),
    ("tradeoff", Cue::Reasoning),
    ("analyze", Cue::Reasoning),
    ("analyse", Cue::Reasoning),
    ("compare", Cue::Reasoning),
    ("evaluate", Cue::Reasoning),
    ("design a", Cue::Reasoning),
    ("architecture", Cue::Reasoning),
    ("optimi", Cue::Reasoning),
    ("why does", Cue::Reasoning),
    ("explain why", Cue::Reasoning),
    ("implications", Cue::Reasoning),
    ("edge case", Cue::Reasoning),
    ("refactor", Cue::Reasoning),
    ("debug", Cue::Reasoning),
    ("strategy", Cue::Reasoning),
    ("integral", Cue::Math),
    ("derivative", Cue::Math),
    ("equation", Cue::Math),
    ("matrix", Cue::Math),
    ("probability", Cue::Math),
    ("theorem", Cue::Math),
    ("eigen", Cue::Math),
    ("complexity of", Cue::Math),
    ("```", Cue::Code),
    ("fn ", Cue::Code),
    ("def ", Cue::Code),
    ("class ", Cue::Code),
    ("#include", Cue::Code),
    ("select ", Cue::Code),
    ("import ", Cue::Code),
    ("stack trace", Cue::Code),
    ("traceback", Cue::Code),
    ("write", Cue::Task),
    ("explain", Cue::Task),
    ("summarize", Cue::Task),
    ("summarise", Cue::Task),
    ("draft", Cue::Task),
    ("create", Cue::Task),
    ("list", Cue::Task),
    ("rewrite", Cue::Task),
    ("describe", Cue::Task),
    ("how does", Cue::Task),
    ("how do i", Cue::Task),
    ("plan", Cue::Task),
    ("hi", Cue::Simple),
    ("hello", Cue::Simple),
    ("thanks", Cue::Simple),
    ("thank you", Cue::Simple),
    ("translate", Cue::Simple),
    ("what is", Cue::Simple),
    ("what's", Cue::Simple),
    ("define", Cue::Simple),
    ("capital of", Cue::Simple),
    ("spell", Cue::Simple),
    ("synonym", Cue::Simple),
];

fn matcher() -> Option<&'static AhoCorasick> {
    static M: OnceLock<Option<AhoCorasick>> = OnceLock::new();
    M.get_or_init(|| {
        AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(CUES.iter().map(|(p, _)| *p))
            .ok()
    })
    .as_ref()
}

/// Scores a chat request.
pub fn score(req: &ChatRequest) -> Score {
    let mut last_user = "";
    let mut turns = 0u32;
    for m in &req.messages {
        if m.role == "user" {
            turns += 1;
            if let Some(Content::Text(t)) = &m.content {
                last_user = t;
            }
        }
    }
    // Content parts: score their text joined (rare on the hot path).
    let joined;
    if let Some(m) = req.messages.iter().rev().find(|m| m.role == "user")
        && let Some(c @ Content::Parts(_)) = &m.content
    {
        joined = c.text();
        last_user = &joined;
    }
    score_text(last_user, turns, req.has_tools(), req.max_output_tokens())
}

/// Scores the last user turn with the conversation's shape.
pub fn score_text(text: &str, user_turns: u32, tools: bool, max_tokens: Option<u32>) -> Score {
    let len = text.chars().count() as f32;
    let mut s = 0.35 * ((1.0 + len).ln() / (1.0 + 1500f32).ln()).min(1.0);

    let mut reasoning = 0u32;
    let mut math = false;
    let mut code = false;
    let mut simple = false;
    let mut task = false;
    for m in matcher().into_iter().flat_map(|m| m.find_iter(text)) {
        let (pattern, cue) = CUES[m.pattern().as_usize()];
        // Short cues must be whole words ("hi" is not in "this").
        if pattern.len() <= 3 && !whole_word(text, m.start(), m.end()) {
            continue;
        }
        match cue {
            Cue::Reasoning => reasoning += 1,
            Cue::Math => math = true,
            Cue::Code => code = true,
            Cue::Task => task = true,
            Cue::Simple => simple = true,
        }
    }
    let bytes = text.as_bytes();
    let structural = bytes.iter().filter(|b| matches!(b, b'{' | b'}' | b';')).count();
    if structural >= 6 {
        code = true;
    }
    let operators = bytes
        .windows(3)
        .filter(|w| w[0].is_ascii_digit() && matches!(w[1], b'+' | b'*' | b'/' | b'^' | b'=') && (w[2].is_ascii_digit() || w[2] == b'x'))
        .count();
    if operators >= 2 {
        math = true;
    }
    let questions = bytes.iter().filter(|b| **b == b'?').count();
    let numbered = text.lines().filter(|l| {
        let l = l.trim_start();
        l.len() > 2 && l.as_bytes()[0].is_ascii_digit() && matches!(l.as_bytes()[1], b'.' | b')')
    });
    let multi_part = questions >= 2 || numbered.count() >= 3;

    s += (0.12 * reasoning as f32).min(0.30);
    if code {
        s += 0.18;
    }
    if math {
        s += 0.12;
    }
    s += (0.02 * user_turns.saturating_sub(1) as f32).min(0.10);
    if tools {
        s += 0.10;
    }
    match max_tokens {
        Some(t) if t >= 4000 => s += 0.10,
        Some(t) if t >= 1000 => s += 0.05,
        _ => {}
    }
    if multi_part {
        s += 0.08;
    }
    if task {
        s += 0.10;
    }
    if simple && len < 200.0 && reasoning == 0 && !code {
        s -= 0.15;
    }
    let s = s.clamp(0.0, 1.0);
    let tier = if s < SIMPLE_BELOW {
        Complexity::Simple
    } else if s < COMPLEX_FROM {
        Complexity::Moderate
    } else {
        Complexity::Complex
    };
    let distance = (s - SIMPLE_BELOW).abs().min((s - COMPLEX_FROM).abs());
    let confidence = (0.5 + distance / 0.3 * 0.5).min(1.0);
    Score { tier, score: s, confidence }
}

fn whole_word(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let before = start == 0 || !b[start - 1].is_ascii_alphanumeric();
    let after = end >= b.len() || !b[end].is_ascii_alphanumeric();
    before && after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_are_simple_and_proofs_are_complex() {
        assert_eq!(score_text("hi there!", 1, false, None).tier, Complexity::Simple);
        let proof = "Prove that the sum of the first n odd numbers is n^2, then derive a closed form for the sum of squares and explain why induction works here.";
        assert_eq!(score_text(proof, 1, false, None).tier, Complexity::Complex);
    }

    #[test]
    fn short_cues_match_whole_words_only() {
        let a = score_text("this thing", 1, false, None);
        let b = score_text("hi thing", 1, false, None);
        assert!(b.score < a.score, "'hi' inside 'this' is not a greeting");
    }

    #[test]
    fn confidence_is_lowest_at_a_threshold() {
        let at = score_text("x", 1, false, None);
        assert!((0.5..=1.0).contains(&at.confidence));
    }
}
