//! The complexity scorer against a labelled set of prompts kept in the repo
//! (`tests/fixtures/complexity.jsonl`). It is a heuristic: the bar is high
//! agreement and never mistaking a simple prompt for a complex one or the
//! reverse.

use sluice_crds::route::Complexity;
use sluice_sidecar::complexity::score_text;

#[test]
fn the_scorer_agrees_with_the_labels() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/complexity.jsonl"))
        .expect("fixture");
    let mut total = 0;
    let mut right = 0;
    let mut report = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let want = match v["label"].as_str() {
            Some("simple") => Complexity::Simple,
            Some("moderate") => Complexity::Moderate,
            _ => Complexity::Complex,
        };
        let prompt = v["prompt"].as_str().expect("prompt");
        let got = score_text(prompt, 1, false, None);
        total += 1;
        if got.tier == want {
            right += 1;
        } else {
            report.push(format!("{want:?} scored {:?} ({:.2}): {}", got.tier, got.score, &prompt[..prompt.len().min(60)]));
        }
        let opposite = matches!((want, got.tier), (Complexity::Simple, Complexity::Complex) | (Complexity::Complex, Complexity::Simple));
        assert!(!opposite, "{want:?} prompt scored {:?}: {prompt}", got.tier);
    }
    let accuracy = right as f64 / total as f64;
    println!("complexity scorer: {right}/{total} = {:.0}%", accuracy * 100.0);
    assert!(accuracy >= 0.85, "agreement {:.0}% below 85%:\n{}", accuracy * 100.0, report.join("\n"));
}
