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

/// A JSON string as written: its bytes between the quotes, and whether
/// they hold escapes (then they differ from the decoded text).
#[derive(Clone, Copy)]
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

/// A cursor over one JSON document. Every method returns `None` on
/// anything JSON's grammar or the expected shape does not allow.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    /// The document is checked as UTF-8 once, as serde_json's `from_str`
    /// requires; strings are then only checked for escapes and control
    /// characters.
    fn new(json: &'a [u8]) -> Option<Self> {
        std::str::from_utf8(json).ok()?;
        Some(Self { b: json, i: 0 })
    }

    fn byte(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        match self.byte()? {
            b' ' | b'\n' | b'\t' | b'\r' => {}
            b => return Some(b),
        }
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.byte() {
            self.i += 1;
        }
        self.byte()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    fn string(&mut self) -> Option<Str<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += special(self.b.get(self.i..)?)?;
            match self.byte()? {
                b'"' => {
                    let raw = self.b.get(start..self.i)?;
                    self.i += 1;
                    return Some(Str { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.byte()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            let unit = u16::from_str_radix(hex, 16).ok()?;
                            // Surrogate pairs are left to the full parse.
                            if (0xD800..=0xDFFF).contains(&unit) || hex.starts_with('+') {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                // A control character: JSON wants it escaped.
                _ => return None,
            }
        }
    }

    /// `null` (consumed: `true`) or something else (left: `false`).
    fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.peek()?;
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.byte() {
            self.i += 1;
        }
        self.i - start
    }

    /// A number, checked against JSON's grammar; its text.
    fn number(&mut self) -> Option<&'a [u8]> {
        self.peek()?;
        let start = self.i;
        if self.byte() == Some(b'-') {
            self.i += 1;
        }
        match self.byte()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.byte() == Some(b'.') {
            self.i += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.byte() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.byte() {
                self.i += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        self.b.get(start..self.i)
    }

    /// A non-negative integer, written without fraction or exponent, that
    /// fits `u64` (what serde_json gives a `u64` field).
    fn uint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for &d in self.number()? {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        Some(v)
    }

    fn u32(&mut self) -> Option<()> {
        u32::try_from(self.uint()?).ok().map(drop)
    }

    /// `null` or a string: `None` for null.
    fn opt_string(&mut self) -> Option<Option<Str<'a>>> {
        if self.null()? {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Any value, at most `depth` containers deep.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|c, _| c.skip(depth.checked_sub(1)?)),
            b'[' => self.array(|c| c.skip(depth.checked_sub(1)?)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// An object: `field` reads each value, given its key. Keys written
    /// with escapes are refused (the full parse would decode them).
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            if key.escaped {
                return None;
            }
            self.eat(b':')?;
            field(self, key.raw)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `item` reads each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Where the first byte a string scan must stop at is in `s` — a quote, a
/// backslash or a control character — `None` when there is none. Eight
/// bytes at a time (SWAR): each lane is flagged when it equals `"` or
/// `\\`, or is below 0x20; a borrow may flag lanes above a flagged one,
/// never below, so the lowest flag is exact.
fn special(s: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_le_bytes([1; 8]);
    const HI: u64 = LO << 7;
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        let v = u64::from_le_bytes(bytes);
        let found = zero(v ^ (LO * u64::from(b'"')))
            | zero(v ^ (LO * u64::from(b'\\')))
            | (v.wrapping_sub(LO * 0x20) & !v & HI);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}

/// The fields of one object seen so far, one bit each: serde refuses a
/// struct field given twice, so the scan does too.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn first(&mut self, bit: u32) -> Option<()> {
        (self.0 & bit == 0).then(|| self.0 |= bit)
    }

    fn all(&self, bits: u32) -> Option<()> {
        (self.0 & bits == bits).then_some(())
    }
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
        b"index" => {
            seen.first(INDEX)?;
            c.u32()
        }
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
        b"logprobs" => {
            seen.first(LOGPROBS)?;
            c.skip(SKIP_DEPTH)
        }
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
        b"index" => {
            seen.first(INDEX)?;
            c.u32()
        }
        b"id" => {
            seen.first(ID)?;
            c.opt_string().map(drop)
        }
        b"type" => {
            seen.first(TYPE)?;
            c.opt_string().map(drop)
        }
        b"function" => {
            seen.first(FUNCTION)?;
            if c.null()? {
                return Some(());
            }
            let mut inner = Seen::default();
            c.object(|c, key| match key {
                b"name" => {
                    inner.first(1)?;
                    c.opt_string().map(drop)
                }
                b"arguments" => {
                    inner.first(2)?;
                    c.opt_string().map(drop)
                }
                _ => c.skip(SKIP_DEPTH),
            })
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
        b"index" => {
            seen.first(INDEX)?;
            c.u32()
        }
        b"message" => {
            seen.first(MESSAGE)?;
            message(c)
        }
        b"finish_reason" => {
            seen.first(FINISH)?;
            if let Some(s) = c.opt_string()? {
                // An escaped spelling is left to the full parse.
                (!s.escaped).then_some(())?;
                filtered = s.raw == b"content_filter";
            }
            Some(())
        }
        b"logprobs" => {
            seen.first(LOGPROBS)?;
            c.skip(SKIP_DEPTH)
        }
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
        b"role" => {
            seen.first(ROLE)?;
            c.string().map(drop)
        }
        b"content" => {
            seen.first(CONTENT)?;
            match c.peek()? {
                b'n' => c.literal(b"null"),
                b'[' => c.array(content_part),
                _ => c.string().map(drop),
            }
        }
        b"name" => {
            seen.first(NAME)?;
            c.opt_string().map(drop)
        }
        b"tool_calls" => {
            seen.first(TOOL_CALLS)?;
            if c.null()? {
                return Some(());
            }
            c.array(tool_call)
        }
        b"tool_call_id" => {
            seen.first(TOOL_CALL_ID)?;
            c.opt_string().map(drop)
        }
        b"refusal" => {
            seen.first(REFUSAL)?;
            c.opt_string().map(drop)
        }
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
        b"type" => {
            seen.first(TYPE)?;
            c.string().map(drop)
        }
        b"text" => {
            seen.first(TEXT)?;
            c.opt_string().map(drop)
        }
        b"image_url" => {
            seen.first(IMAGE_URL)?;
            if c.null()? {
                return Some(());
            }
            let mut inner = Seen::default();
            c.object(|c, key| match key {
                b"url" => {
                    inner.first(1)?;
                    c.string().map(drop)
                }
                b"detail" => {
                    inner.first(2)?;
                    c.opt_string().map(drop)
                }
                _ => c.skip(SKIP_DEPTH),
            })?;
            inner.all(1)
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
        b"id" => {
            seen.first(ID)?;
            c.string().map(drop)
        }
        b"type" => {
            seen.first(TYPE)?;
            c.string().map(drop)
        }
        b"function" => {
            seen.first(FUNCTION)?;
            let mut inner = Seen::default();
            c.object(|c, key| match key {
                b"name" => {
                    inner.first(1)?;
                    c.string().map(drop)
                }
                b"arguments" => {
                    inner.first(2)?;
                    c.string().map(drop)
                }
                _ => c.skip(SKIP_DEPTH),
            })?;
            inner.all(1 | 2)
        }
        _ => c.skip(SKIP_DEPTH),
    })?;
    seen.all(ID | TYPE | FUNCTION)
}

#[cfg(test)]
mod tests;
