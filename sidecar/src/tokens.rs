//! Token estimation before the call: how many prompt tokens a request
//! carries, for the rules' input-token ranges, the capability filter
//! (context windows), `least-busy`, the `cost` strategy, budgets and rate
//! limits, and the usage of a call whose provider reported none.
//!
//! What is exact and what is not:
//!
//! - **OpenAI models** are counted with their own BPE encoding from
//!   `tiktoken-rs` (bundled in the crate; nothing is downloaded):
//!   `o200k_base` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5, the o-series and
//!   gpt-oss, `cl100k_base` for gpt-4, gpt-3.5 and `text-embedding-*`. The
//!   chat framing follows OpenAI's cookbook (3 tokens per message, 1 per
//!   `name`, 3 priming the reply), so a plain chat prompt is counted
//!   exactly as the API bills it.
//! - **Other providers' models** (Claude, Gemini, Llama, Mistral, …) have
//!   tokenizers that are unpublished or not bundled here. Their prompt is
//!   counted with `o200k_base` and scaled by a per-family factor that leans
//!   high ([`family_percent`]): an estimate that errs high reserves a
//!   little too much budget and skips a target a little early, one that
//!   errs low collects `context_length_exceeded` and 429s.
//! - **A name we cannot place** (a route's virtual model, an Azure
//!   deployment name, a mock) is counted with `o200k_base`, unscaled.
//! - **Images** follow OpenAI's tile rule when the size can be read
//!   cheaply (a PNG data URL's header); `detail: low` is 85 tokens; any
//!   other image counts as a 1024×1024 one at high detail (765 tokens).
//! - **Tool definitions** are counted as their JSON text. OpenAI renders
//!   them more tersely into the prompt, so this leans high.
//!
//! Cost is bounded: per request at most [`EXACT_BYTES`] of text are
//! tokenised and the rest is extrapolated at the tokens-per-byte ratio of
//! what was counted. Figures are in `benches/hot_path.rs` and the README.
//!
//! Memory: tiktoken-rs's encoder holds each vocabulary three times over,
//! a heap allocation per token (≈46 MiB resident for `o200k_base`), so
//! the build script writes the vocabularies out of it and [`bpe::Counter`]
//! loads them into one byte buffer and a `u32` index each (≈5 MiB); the
//! counts are the same (a test compares them). The tokenizer still
//! runs only where a decision depends on the count
//! ([`crate::config::Route::counts_tokens`]: token-range rules, `cost` /
//! `least-busy`, `tokensPerMinute`, budgets), or when a prompt's
//! [`upper_bound`] could reach a target's context window; `o200k_base` is
//! loaded by [`warm_up`] when a configuration with a counting
//! route is loaded (else on first need), `cl100k_base` only when a cl100k
//! model is first estimated (routing never needs it). Other requests use
//! [`rough`].

use std::sync::OnceLock;

pub mod bpe;

use crate::openai::{ChatRequest, Content, ImageUrl};

/// Text per request tokenised exactly; the rest is extrapolated. At
/// 20–50 MB/s (code–prose, one core) this bounds a request's count to
/// roughly 0.2–0.4 ms however long its prompt.
pub const EXACT_BYTES: usize = 8 * 1024;

/// Tokens added to every message for its framing (OpenAI cookbook).
const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens added when a message carries a `name` (OpenAI cookbook).
const TOKENS_PER_NAME: u64 = 1;
/// Tokens priming the reply, `<|start|>assistant<|message|>` (OpenAI cookbook).
const REPLY_PRIMING: u64 = 3;
/// Tokens added per tool call in a message, beyond its name and
/// arguments (tiktoken-rs's heuristic; OpenAI does not document it).
const TOKENS_PER_TOOL_CALL: u64 = 1;
/// An image at `detail: low`, and the base cost of every image.
const IMAGE_BASE_TOKENS: u64 = 85;
/// Each 512-pixel tile of an image at high detail.
const IMAGE_TILE_TOKENS: u64 = 170;
/// An image whose size is not known: 1024×1024 at high detail.
const IMAGE_DEFAULT_TOKENS: u64 = IMAGE_BASE_TOKENS + 4 * IMAGE_TILE_TOKENS;

/// One of OpenAI's BPE encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

/// `cl100k_base`'s split pattern (tiktoken-rs builds it inline and does
/// not export it).
const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

impl Encoding {
    /// The counter, built on first use and kept for the process. `None`
    /// only if the bundled data failed to load, which a test rules out;
    /// counting then falls back to four bytes a token.
    fn counter(self) -> Option<&'static bpe::Counter> {
        static O200K: OnceLock<Option<bpe::Counter>> = OnceLock::new();
        static CL100K: OnceLock<Option<bpe::Counter>> = OnceLock::new();
        match self {
            Encoding::O200kBase => O200K.get_or_init(|| {
                bpe::Counter::load(bpe::O200K_BASE, tiktoken_rs::O200K_BASE_PAT_STR)
            }),
            Encoding::Cl100kBase => {
                CL100K.get_or_init(|| bpe::Counter::load(bpe::CL100K_BASE, CL100K_PATTERN))
            }
        }
        .as_ref()
    }
}

/// tiktoken-rs's own encoder: the reference the counter must agree with
/// (tests only; the sidecar never builds it).
#[cfg(test)]
fn reference(encoding: Encoding) -> &'static tiktoken_rs::CoreBPE {
    static O200K: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    static CL100K: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    match encoding {
        Encoding::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k")),
        Encoding::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().expect("cl100k")),
    }
}

/// A rough prompt count without the tokenizer — four bytes of text a
/// token, OpenAI's framing per message, 765 per image — for routes where
/// no decision depends on the count (only metrics and the access log see
/// it). It keeps such routes from paying the tokenizer's time and memory.
pub fn rough(req: &ChatRequest) -> u64 {
    let mut n = REPLY_PRIMING;
    for m in &req.messages {
        n += TOKENS_PER_MESSAGE;
        match &m.content {
            Some(Content::Text(t)) => n += (t.len() as u64).div_ceil(4),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    n += p
                        .text
                        .as_deref()
                        .map_or(0, |t| (t.len() as u64).div_ceil(4));
                    if p.image_url.is_some() {
                        n += 765;
                    }
                }
            }
            None => {}
        }
    }
    n
}

/// An upper bound of a prompt's tokens in any encoding and family factor
/// this module uses, without the tokenizer: every token is at least one
/// byte, so text bytes (× the largest family factor, 125 %) plus the chat
/// framing and the tool definitions' JSON. `None` when the request has
/// images (their count depends on their size).
pub fn upper_bound(req: &ChatRequest) -> Option<u64> {
    if req.has_images() {
        return None;
    }
    let mut bytes = 0u64;
    let mut n = REPLY_PRIMING;
    for m in &req.messages {
        n += TOKENS_PER_MESSAGE + TOKENS_PER_NAME;
        match &m.content {
            Some(Content::Text(t)) => bytes += t.len() as u64,
            Some(Content::Parts(parts)) => {
                bytes += parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .map(|t| t.len() as u64)
                    .sum::<u64>();
            }
            None => {}
        }
        for c in m.tool_calls.iter().flatten() {
            n += TOKENS_PER_TOOL_CALL;
            bytes += (c.function.name.len() + c.function.arguments.len()) as u64;
        }
        bytes += m.name.as_deref().map_or(0, |s| s.len() as u64);
    }
    if let Some(tools) = &req.tools {
        bytes += serde_json::to_vec(tools).map_or(0, |v| v.len() as u64);
    }
    Some(scale(n + bytes, 125))
}

/// Loads the `o200k_base` vocabulary now (≈9 ms in a release build),
/// so the first request does not wait for it. Safe to call more than once.
pub fn warm_up() {
    let _ = Encoding::O200kBase.counter();
}

/// How a model's tokens are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counting {
    pub encoding: Encoding,
    /// The count is scaled by this many percent (100: as counted).
    pub percent: u32,
    /// Whether the encoding is the model's own.
    pub exact: bool,
}

impl Counting {
    const fn exact(encoding: Encoding) -> Self {
        Self {
            encoding,
            percent: 100,
            exact: true,
        }
    }

    /// The baseline every route-level estimate uses: `o200k_base`, unscaled.
    pub const BASELINE: Counting = Counting {
        encoding: Encoding::O200kBase,
        percent: 100,
        exact: false,
    };

    fn scale(self, tokens: u64) -> u64 {
        scale(tokens, self.percent)
    }
}

/// `tokens` × `percent` / 100, rounded up.
pub fn scale(tokens: u64, percent: u32) -> u64 {
    if percent == 100 {
        tokens
    } else {
        (tokens.saturating_mul(u64::from(percent))).div_ceil(100)
    }
}

/// How `model` is counted: its own encoding for OpenAI models (also behind
/// a prefix such as `openai/gpt-4o`), else `o200k_base` scaled by its
/// family's factor.
pub fn for_model(model: &str) -> Counting {
    use tiktoken_rs::tokenizer::{Tokenizer as T, get_tokenizer};
    let name = model.rsplit('/').next().unwrap_or(model);
    // Model names are lower case but for the odd deployment name.
    let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    };
    match get_tokenizer(&name) {
        Some(T::O200kBase | T::O200kHarmony) => Counting::exact(Encoding::O200kBase),
        Some(T::Cl100kBase) => Counting::exact(Encoding::Cl100kBase),
        // Retired completion models: cl100k_base is close enough.
        Some(T::P50kBase | T::P50kEdit | T::R50kBase | T::Gpt2) => Counting {
            encoding: Encoding::Cl100kBase,
            percent: 100,
            exact: false,
        },
        None => Counting {
            encoding: Encoding::O200kBase,
            percent: family_percent(&name),
            exact: false,
        },
    }
}

/// The factor (percent of the `o200k_base` count) for models whose
/// tokenizer is not bundled. Rough, and deliberately on the high side:
///
/// - Claude (Anthropic, also on Bedrock): Anthropic publishes no tokenizer
///   for Claude 3 and later; its counts run above OpenAI's on English text
///   and code, by a quarter in public comparisons — 125.
/// - Gemini and Gemma: a SentencePiece vocabulary of 256k entries, close
///   to o200k's on English, less efficient on code — 110.
/// - Llama, Mistral/Mixtral, Cohere Command, DeepSeek, Qwen, Amazon
///   Titan/Nova and the rest of the named open families: smaller
///   vocabularies (32k–150k) than o200k's 200k — 115.
/// - Anything else (virtual names, deployment names, mocks) — 100.
pub fn family_percent(lower_name: &str) -> u32 {
    const FAMILIES: &[(&str, u32)] = &[
        ("claude", 125),
        ("gemini", 110),
        ("gemma", 110),
        ("llama", 115),
        ("mistral", 115),
        ("mixtral", 115),
        ("codestral", 115),
        ("command", 115),
        ("deepseek", 115),
        ("qwen", 115),
        ("titan", 115),
        ("nova", 115),
    ];
    FAMILIES
        .iter()
        .find(|(f, _)| lower_name.contains(f))
        .map_or(100, |(_, p)| *p)
}

/// The prompt tokens of `req` on `model`: exact for OpenAI models' plain
/// prompts, approximate otherwise (see the module docs).
pub fn chat_tokens(req: &ChatRequest, model: &str) -> u64 {
    let counting = for_model(model);
    counting.scale(count_chat(req, counting.encoding))
}

/// The prompt tokens of `req` as routing sees them before a target is
/// chosen: `o200k_base`, unscaled. [`for_target`] turns it into a
/// target's estimate.
pub fn chat_baseline(req: &ChatRequest) -> u64 {
    count_chat(req, Encoding::O200kBase)
}

/// A [`chat_baseline`] (or [`text_baseline`]) count as `model` would
/// count it: scaled by its family's factor. OpenAI models take the
/// baseline as is (cl100k_base and o200k_base counts of English prose
/// differ by a few percent; exact cl100k counting is [`chat_tokens`]'s).
pub fn for_target(baseline: u64, model: &str) -> u64 {
    for_model(model).scale(baseline)
}

/// Tokens of a text (no chat framing), `o200k_base`, unscaled.
pub fn text_baseline(text: &str) -> u64 {
    let mut m = Meter::new(Encoding::O200kBase);
    m.text(text);
    m.finish()
}

/// Tokens of a text (no chat framing) on `model`.
pub fn text_tokens(text: &str, model: &str) -> u64 {
    let counting = for_model(model);
    let mut m = Meter::new(counting.encoding);
    m.text(text);
    counting.scale(m.finish())
}

/// Counts texts exactly up to [`EXACT_BYTES`], then extrapolates.
struct Meter {
    counter: Option<&'static bpe::Counter>,
    budget: usize,
    sampled_bytes: u64,
    sampled_tokens: u64,
    rest_bytes: u64,
}

impl Meter {
    fn new(encoding: Encoding) -> Self {
        Self {
            counter: encoding.counter(),
            budget: EXACT_BYTES,
            sampled_bytes: 0,
            sampled_tokens: 0,
            rest_bytes: 0,
        }
    }

    fn text(&mut self, text: &str) {
        let Some(counter) = self.counter else {
            self.rest_bytes += text.len() as u64;
            return;
        };
        let mut cut = text.len().min(self.budget);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let (exact, rest) = text.split_at(cut);
        if !exact.is_empty() {
            self.sampled_tokens += counter.count(exact) as u64;
            self.sampled_bytes += exact.len() as u64;
            self.budget -= exact.len();
        }
        self.rest_bytes += rest.len() as u64;
    }

    /// The count: exact tokens plus the rest at the sampled ratio (four
    /// bytes a token when nothing was sampled).
    fn finish(self) -> u64 {
        let rest = if self.rest_bytes == 0 {
            0
        } else if self.sampled_bytes == 0 {
            self.rest_bytes.div_ceil(4)
        } else {
            (u128::from(self.rest_bytes) * u128::from(self.sampled_tokens))
                .div_ceil(u128::from(self.sampled_bytes)) as u64
        };
        self.sampled_tokens + rest
    }
}

fn count_chat(req: &ChatRequest, encoding: Encoding) -> u64 {
    let mut m = Meter::new(encoding);
    let mut fixed = REPLY_PRIMING;
    for msg in &req.messages {
        fixed += TOKENS_PER_MESSAGE;
        match msg.role.as_str() {
            // One token each in both encodings (a test checks).
            "system" | "user" | "assistant" | "tool" | "developer" => fixed += 1,
            other => m.text(other),
        }
        match &msg.content {
            Some(Content::Text(t)) => m.text(t),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    if let Some(t) = &p.text {
                        m.text(t);
                    }
                    if let Some(image) = &p.image_url {
                        fixed += image_tokens(image);
                    }
                }
            }
            None => {}
        }
        if let Some(name) = &msg.name {
            m.text(name);
            fixed += TOKENS_PER_NAME;
        }
        for call in msg.tool_calls.iter().flatten() {
            m.text(&call.function.name);
            m.text(&call.function.arguments);
            fixed += TOKENS_PER_TOOL_CALL;
        }
        if let Some(id) = &msg.tool_call_id {
            m.text(id);
        }
        if let Some(refusal) = &msg.refusal {
            m.text(refusal);
        }
    }
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty())
        && let Ok(json) = serde_json::to_string(tools)
    {
        m.text(&json);
    }
    fixed + m.finish()
}

/// An image's tokens: OpenAI's rule for gpt-4o-class models.
fn image_tokens(image: &ImageUrl) -> u64 {
    if image.detail.as_deref() == Some("low") {
        return IMAGE_BASE_TOKENS;
    }
    png_size(&image.url).map_or(IMAGE_DEFAULT_TOKENS, |(w, h)| tile_tokens(w, h))
}

/// High detail: fit in 2048×2048, scale the shortest side down to 768,
/// then 170 tokens per 512-pixel tile plus 85.
pub fn tile_tokens(width: u32, height: u32) -> u64 {
    if width == 0 || height == 0 {
        return IMAGE_BASE_TOKENS;
    }
    let (mut w, mut h) = (f64::from(width), f64::from(height));
    let longest = w.max(h);
    if longest > 2048.0 {
        w *= 2048.0 / longest;
        h *= 2048.0 / longest;
    }
    let shortest = w.min(h);
    if shortest > 768.0 {
        w *= 768.0 / shortest;
        h *= 768.0 / shortest;
    }
    let tiles = (w / 512.0).ceil() as u64 * (h / 512.0).ceil() as u64;
    IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * tiles
}

/// Width and height from a `data:image/png;base64,` URL's IHDR chunk: the
/// first 24 bytes, 32 base64 characters, whatever the image's size.
fn png_size(url: &str) -> Option<(u32, u32)> {
    use base64::Engine as _;
    let b64 = url.strip_prefix("data:image/png;base64,")?;
    let head = base64::engine::general_purpose::STANDARD
        .decode(b64.get(..32)?)
        .ok()?;
    if head.get(..8)? != b"\x89PNG\r\n\x1a\n" || head.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |r: std::ops::Range<usize>| -> Option<u32> {
        Some(u32::from_be_bytes(head.get(r)?.try_into().ok()?))
    };
    Some((be(16..20)?, be(20..24)?))
}

#[cfg(test)]
mod tests;
