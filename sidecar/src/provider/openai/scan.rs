//! What the gateway needs from OpenAI responses and stream chunks, read
//! without building them: one pass over the bytes that checks JSON's
//! grammar and the same shape as [`ChatChunk`](crate::openai::ChatChunk)
//! and [`ChatResponse`](crate::openai::ChatResponse) (required fields,
//! their JSON types), and keeps only the usage, whether a chunk carries a
//! token, whether a choice was filtered, and whether an `error` object is
//! there. Nothing is copied or allocated.
//!
//! The contract with the full parse it stands in for: when a scan succeeds
//! and finds no error object, the full parse would have succeeded and
//! agreed on those facts (property tests check it). The scan may refuse
//! more than the full parse would — a key written with escapes, a
//! duplicate key, a struct written as an array, a lone surrogate — and
//! then the caller runs the full parse, so every refusal keeps its exact
//! class and message.
//!
//! Why by hand: serde_json with borrowed typed structs, the scan before
//! this one, cost ≈4 k instructions for a 170-byte chunk (≈23 per byte:
//! field-name matching through the derive, a visitor per value) and was a
//! fifth of a streamed request's cost in the sidecar; this walks each byte
//! once (callgrind, `scripts/profile-sidecar.sh`).

use crate::openai::{PromptTokensDetails, Usage};

mod cursor;

use cursor::Cur;

/// What a stream chunk says, as far as the gateway cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkFacts {
    /// Output for the client: the commit point.
    pub token: bool,
    /// No choices and a usage: the usage chunk a client may not want.
    pub usage_only: bool,
    pub usage: Option<Usage>,
    /// A non-null top-level `error`.
    pub error: bool,
}

/// What a non-stream `chat.completion` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseFacts {
    pub usage: Option<Usage>,
    /// Some choice ended with `finish_reason: "content_filter"`.
    pub filtered: bool,
    /// A non-null top-level `error`.
    pub error: bool,
}

/// Scans one chunk's JSON; `None` when it is not a well-formed chunk.
pub fn chunk(json: &[u8]) -> Option<ChunkFacts> {
    let mut c = Cur::new(json)?;
    let top = top(&mut c, chunk_choice)?;
    c.end()?;
    Some(ChunkFacts {
        token: top.any,
        usage_only: top.choices == 0 && top.usage.is_some(),
        usage: top.usage,
        error: top.error,
    })
}

/// Scans a whole `chat.completion`; `None` when it is not a well-formed one.
pub fn response(json: &[u8]) -> Option<ResponseFacts> {
    let mut c = Cur::new(json)?;
    let top = top(&mut c, choice)?;
    c.end()?;
    Some(ResponseFacts {
        usage: top.usage,
        filtered: top.any,
        error: top.error,
    })
}

/// How deep a value the scan skips may nest (serde_json refuses past 128
/// levels in all; the shapes above add fewer than ten).
const SKIP_DEPTH: u32 = 100;

/// The fields of one object seen so far, one bit each: serde refuses a
/// struct field given twice, so the scan does too.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn first(&mut self, bit: u32) -> Option<()> {
        (self.0 & bit == 0).then(|| self.0 |= bit)
    }

    /// `read`s the field `bit` names, refusing it the second time.
    fn once<T>(&mut self, bit: u32, read: impl FnOnce() -> Option<T>) -> Option<T> {
        self.first(bit)?;
        read()
    }

    fn all(&self, bits: u32) -> Option<()> {
        (self.0 & bits == bits).then_some(())
    }
}

/// How a field of a [`strings`] object may be written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    /// Present, and a string.
    Required,
    /// Absent, `null` or a string.
    Nullable,
}

/// An object whose named fields are strings (other keys skipped): each at
/// most once, the required ones present. Function calls and image URLs.
fn strings(c: &mut Cur<'_>, fields: &[(&[u8], Text)]) -> Option<()> {
    let mut seen = Seen::default();
    c.object(
        |c, key| match fields.iter().zip(0..).find(|((name, _), _)| *name == key) {
            Some(((_, Text::Required), i)) => seen.once(1 << i, || c.string().map(drop)),
            Some(((_, Text::Nullable), i)) => seen.once(1 << i, || c.opt_string().map(drop)),
            None => c.skip(SKIP_DEPTH),
        },
    )?;
    let required = fields
        .iter()
        .zip(0..)
        .filter(|((_, text), _)| *text == Text::Required)
        .fold(0, |bits, (_, i)| bits | 1 << i);
    seen.all(required)
}

// ---- the top level, shared by both shapes ----

#[derive(Default)]
struct Top {
    choices: usize,
    /// Some choice was flagged (a token, or a filtered finish).
    any: bool,
    usage: Option<Usage>,
    error: bool,
}

/// The top level of a `chat.completion.chunk` or a `chat.completion`;
/// `choice` reads one element of `choices` and says whether it is flagged.
fn top(c: &mut Cur<'_>, choice: fn(&mut Cur<'_>) -> Option<bool>) -> Option<Top> {
    const ID: u32 = 1;
    const OBJECT: u32 = 2;
    const CREATED: u32 = 4;
    const MODEL: u32 = 8;
    const CHOICES: u32 = 16;
    const USAGE: u32 = 32;
    const FINGERPRINT: u32 = 64;
    const ERROR: u32 = 128;
    let mut seen = Seen::default();
    let mut t = Top::default();
    c.object(|c, key| {
        let bit = match key {
            b"id" => ID,
            b"object" => OBJECT,
            b"created" => CREATED,
            b"model" => MODEL,
            b"choices" => CHOICES,
            b"usage" => USAGE,
            b"system_fingerprint" => FINGERPRINT,
            b"error" => ERROR,
            _ => return c.skip(SKIP_DEPTH),
        };
        seen.first(bit)?;
        match bit {
            ID | OBJECT | MODEL => c.string().map(drop),
            CREATED => c.uint().map(drop),
            CHOICES => c.array(|c| {
                t.choices += 1;
                t.any |= choice(c)?;
                Some(())
            }),
            USAGE => {
                if !c.null()? {
                    t.usage = Some(usage(c)?);
                }
                Some(())
            }
            FINGERPRINT => c.opt_string().map(drop),
            _ => {
                // Not a field of either shape: an error object, which the
                // full parse reads.
                if !c.null()? {
                    t.error = true;
                    c.skip(SKIP_DEPTH)?;
                }
                Some(())
            }
        }
    })?;
    seen.all(ID | CREATED | MODEL | CHOICES)?;
    Some(t)
}

fn usage(c: &mut Cur<'_>) -> Option<Usage> {
    const PROMPT: u32 = 1;
    const COMPLETION: u32 = 2;
    const TOTAL: u32 = 4;
    const DETAILS: u32 = 8;
    let mut seen = Seen::default();
    let mut u = Usage::default();
    c.object(|c, key| {
        match key {
            b"prompt_tokens" => {
                seen.first(PROMPT)?;
                u.prompt_tokens = c.uint()?;
            }
            b"completion_tokens" => {
                seen.first(COMPLETION)?;
                u.completion_tokens = c.uint()?;
            }
            b"total_tokens" => {
                seen.first(TOTAL)?;
                u.total_tokens = c.uint()?;
            }
            b"prompt_tokens_details" => {
                seen.first(DETAILS)?;
                if !c.null()? {
                    u.prompt_tokens_details = Some(details(c)?);
                }
            }
            _ => c.skip(SKIP_DEPTH)?,
        }
        Some(())
    })?;
    seen.all(PROMPT | COMPLETION | TOTAL)?;
    Some(u)
}

fn details(c: &mut Cur<'_>) -> Option<PromptTokensDetails> {
    let mut seen = Seen::default();
    let mut d = PromptTokensDetails::default();
    c.object(|c, key| match key {
        b"cached_tokens" => {
            seen.first(1)?;
            d.cached_tokens = c.uint()?;
            Some(())
        }
        _ => c.skip(SKIP_DEPTH),
    })?;
    Some(d)
}

// ---- chat.completion.chunk (mirrors crate::openai::ChatChunk) ----

/// One streamed choice; flagged when it carries output for the client
/// (`StreamEvent::is_token` of the full parse): text, a tool call, a
/// refusal, or a finish reason.
fn chunk_choice(c: &mut Cur<'_>) -> Option<bool> {
    const INDEX: u32 = 1;
    const DELTA: u32 = 2;
    const FINISH: u32 = 4;
    const LOGPROBS: u32 = 8;
    let mut seen = Seen::default();
    let mut token = false;
    c.object(|c, key| match key {
        b"index" => seen.once(INDEX, || c.u32()),
        b"delta" => {
            seen.first(DELTA)?;
            token |= delta(c)?;
            Some(())
        }
        b"finish_reason" => {
            seen.first(FINISH)?;
            token |= c.opt_string()?.is_some();
            Some(())
        }
        b"logprobs" => seen.once(LOGPROBS, || c.skip(SKIP_DEPTH)),
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(INDEX | DELTA)?;
    Some(token)
}

fn delta(c: &mut Cur<'_>) -> Option<bool> {
    const ROLE: u32 = 1;
    const CONTENT: u32 = 2;
    const TOOL_CALLS: u32 = 4;
    const REFUSAL: u32 = 8;
    let mut seen = Seen::default();
    let mut token = false;
    c.object(|c, key| {
        match key {
            b"role" => {
                seen.first(ROLE)?;
                c.opt_string()?;
            }
            b"content" => {
                seen.first(CONTENT)?;
                token |= c.opt_string()?.is_some_and(|s| !s.raw.is_empty());
            }
            b"tool_calls" => {
                seen.first(TOOL_CALLS)?;
                if !c.null()? {
                    c.array(|c| {
                        token = true;
                        tool_call_delta(c)
                    })?;
                }
            }
            b"refusal" => {
                seen.first(REFUSAL)?;
                token |= c.opt_string()?.is_some();
            }
            _ => c.skip(SKIP_DEPTH)?,
        }
        Some(())
    })?;
    Some(token)
}

fn tool_call_delta(c: &mut Cur<'_>) -> Option<()> {
    const INDEX: u32 = 1;
    const ID: u32 = 2;
    const TYPE: u32 = 4;
    const FUNCTION: u32 = 8;
    let mut seen = Seen::default();
    c.object(|c, key| match key {
        b"index" => seen.once(INDEX, || c.u32()),
        b"id" => seen.once(ID, || c.opt_string().map(drop)),
        b"type" => seen.once(TYPE, || c.opt_string().map(drop)),
        b"function" => {
            seen.first(FUNCTION)?;
            if c.null()? {
                return Some(());
            }
            strings(
                c,
                &[(b"name", Text::Nullable), (b"arguments", Text::Nullable)],
            )
        }
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(INDEX)
}

// ---- chat.completion (mirrors crate::openai::ChatResponse) ----

/// One choice of a whole answer; flagged when the provider's filter cut
/// it (`finish_reason: "content_filter"`).
fn choice(c: &mut Cur<'_>) -> Option<bool> {
    const INDEX: u32 = 1;
    const MESSAGE: u32 = 2;
    const FINISH: u32 = 4;
    const LOGPROBS: u32 = 8;
    let mut seen = Seen::default();
    let mut filtered = false;
    c.object(|c, key| match key {
        b"index" => seen.once(INDEX, || c.u32()),
        b"message" => seen.once(MESSAGE, || message(c)),
        b"finish_reason" => {
            seen.first(FINISH)?;
            if let Some(s) = c.opt_string()? {
                // An escaped spelling is left to the full parse.
                (!s.escaped).then_some(())?;
                filtered = s.raw == b"content_filter";
            }
            Some(())
        }
        b"logprobs" => seen.once(LOGPROBS, || c.skip(SKIP_DEPTH)),
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(INDEX | MESSAGE)?;
    Some(filtered)
}

fn message(c: &mut Cur<'_>) -> Option<()> {
    const ROLE: u32 = 1;
    const CONTENT: u32 = 2;
    const NAME: u32 = 4;
    const TOOL_CALLS: u32 = 8;
    const TOOL_CALL_ID: u32 = 16;
    const REFUSAL: u32 = 32;
    let mut seen = Seen::default();
    c.object(|c, key| match key {
        b"role" => seen.once(ROLE, || c.string().map(drop)),
        b"content" => {
            seen.first(CONTENT)?;
            match c.peek()? {
                b'n' => c.literal(b"null"),
                b'[' => c.array(content_part),
                _ => c.string().map(drop),
            }
        }
        b"name" => seen.once(NAME, || c.opt_string().map(drop)),
        b"tool_calls" => {
            seen.first(TOOL_CALLS)?;
            if c.null()? {
                return Some(());
            }
            c.array(tool_call)
        }
        b"tool_call_id" => seen.once(TOOL_CALL_ID, || c.opt_string().map(drop)),
        b"refusal" => seen.once(REFUSAL, || c.opt_string().map(drop)),
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(ROLE)
}

fn content_part(c: &mut Cur<'_>) -> Option<()> {
    const TYPE: u32 = 1;
    const TEXT: u32 = 2;
    const IMAGE_URL: u32 = 4;
    let mut seen = Seen::default();
    c.object(|c, key| match key {
        b"type" => seen.once(TYPE, || c.string().map(drop)),
        b"text" => seen.once(TEXT, || c.opt_string().map(drop)),
        b"image_url" => {
            seen.first(IMAGE_URL)?;
            if c.null()? {
                return Some(());
            }
            strings(c, &[(b"url", Text::Required), (b"detail", Text::Nullable)])
        }
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(TYPE)
}

fn tool_call(c: &mut Cur<'_>) -> Option<()> {
    const ID: u32 = 1;
    const TYPE: u32 = 2;
    const FUNCTION: u32 = 4;
    let mut seen = Seen::default();
    c.object(|c, key| match key {
        b"id" => seen.once(ID, || c.string().map(drop)),
        b"type" => seen.once(TYPE, || c.string().map(drop)),
        b"function" => {
            seen.first(FUNCTION)?;
            strings(
                c,
                &[(b"name", Text::Required), (b"arguments", Text::Required)],
            )
        }
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(ID | TYPE | FUNCTION)
}

#[cfg(test)]
mod tests;
