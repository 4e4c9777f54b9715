//! Golden-file and property tests of the translating adapters (anthropic,
//! gemini, bedrock) and the Anthropic-compatible ingress. Inputs and
//! expected outputs live in `tests/golden/<adapter>/`; run with
//! `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate
//! change, then review the diff.

mod anthropic;
mod bedrock;
mod dispatch;
mod gemini;
mod golden;
mod messages;
