//! What the gateway needs from OpenAI responses and stream chunks, read
//! without building them: typed borrowed parses that check the same shape
//! as [`ChatChunk`](crate::openai::ChatChunk) and
//! [`ChatResponse`](crate::openai::ChatResponse) (required fields, their
//! JSON types) but keep only the usage, whether a chunk carries a token,
//! whether a choice was filtered, and whether an `error` object is there.
//! No string is copied and nothing is allocated.
//!
//! The contract with the full parse they replace: when a scan succeeds and
//! finds no error object, the full parse would have succeeded and agreed
//! on those facts (a property test checks it). When a scan fails, or finds
//! an error, the caller runs the full parse, so every refusal keeps its
//! exact class and message. Why: the full parse of every chunk into a
//! `serde_json::Value` was ≈15 k instructions per chunk and ≈20
//! allocations; this is a small fraction of that.

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::openai::Usage;

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
    let c: TopScan<ChunkChoiceScan> = serde_json::from_str(utf8(json)?).ok()?;
    Some(ChunkFacts {
        token: c.choices.any,
        usage_only: c.choices.len == 0 && c.usage.is_some(),
        usage: c.usage,
        error: c.error.is_some(),
    })
}

/// Scans a whole `chat.completion`; `None` when it is not a well-formed one.
pub fn response(json: &[u8]) -> Option<ResponseFacts> {
    let r: TopScan<ChoiceScan> = serde_json::from_str(utf8(json)?).ok()?;
    Some(ResponseFacts {
        usage: r.usage,
        filtered: r.choices.any,
        error: r.error.is_some(),
    })
}

/// The whole document checked as UTF-8 at once, so that the parse reads
/// it as `&str`: `from_slice` checks every string on its own, which cost
/// more than the rest of the scan (≈1.2 k instructions a chunk of the
/// ≈5 k; callgrind, `scripts/profile-sidecar.sh`). Invalid UTF-8 is
/// refused either way.
fn utf8(json: &[u8]) -> Option<&str> {
    std::str::from_utf8(json).ok()
}

/// Reads a JSON string and keeps one fact about it. Escapes are decoded
/// into serde_json's scratch buffer, never into a new `String`.
fn string_fact<'de, D: Deserializer<'de>>(d: D, fact: fn(&str) -> bool) -> Result<bool, D::Error> {
    struct V(fn(&str) -> bool);
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok((self.0)(v))
        }
    }
    d.deserialize_str(V(fact))
}

/// Any JSON string, checked and dropped.
#[derive(Default)]
struct AnyStr;

impl<'de> Deserialize<'de> for AnyStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_fact(d, |_| true).map(|_| AnyStr)
    }
}

/// A string, and whether it is non-empty.
struct Text(bool);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_fact(d, |s| !s.is_empty()).map(Text)
    }
}

/// A string, and whether it is `content_filter`.
struct Finish(bool);

impl<'de> Deserialize<'de> for Finish {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_fact(d, |s| s == "content_filter").map(Finish)
    }
}

/// An element that says one yes/no fact about itself.
trait Flag {
    fn flag(&self) -> bool;
}

/// A JSON array whose elements are each checked as `T` and folded into a
/// count and "any element flagged", never stored.
struct Seq<T> {
    len: usize,
    any: bool,
    of: PhantomData<T>,
}

impl<'de, T: Deserialize<'de> + Flag> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Flag> Visitor<'de> for V<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
                let (mut len, mut any) = (0, false);
                while let Some(item) = seq.next_element::<T>()? {
                    len += 1;
                    any |= item.flag();
                }
                Ok(Seq {
                    len,
                    any,
                    of: PhantomData,
                })
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

// ---- the top level, shared by both shapes ----

/// The top level of a `chat.completion.chunk` (choices `C` =
/// [`ChunkChoiceScan`]) or of a `chat.completion` ([`ChoiceScan`]): the
/// two types share it.
#[derive(Deserialize)]
#[serde(bound(deserialize = "C: Deserialize<'de> + Flag"))]
struct TopScan<C> {
    #[serde(rename = "id")]
    _id: AnyStr,
    #[serde(rename = "object", default)]
    _object: AnyStr,
    #[serde(rename = "created")]
    _created: u64,
    #[serde(rename = "model")]
    _model: AnyStr,
    choices: Seq<C>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(rename = "system_fingerprint", default)]
    _system_fingerprint: Option<AnyStr>,
    /// Not a field of either: an error object, which the full parse reads.
    #[serde(default)]
    error: Option<IgnoredAny>,
}

// ---- chat.completion.chunk (mirrors crate::openai::ChatChunk) ----

#[derive(Deserialize)]
struct ChunkChoiceScan {
    #[serde(rename = "index")]
    _index: u32,
    delta: DeltaScan,
    #[serde(default)]
    finish_reason: Option<AnyStr>,
    #[serde(rename = "logprobs", default)]
    _logprobs: Option<IgnoredAny>,
}

impl Flag for ChunkChoiceScan {
    /// `StreamEvent::is_token` of the full parse.
    fn flag(&self) -> bool {
        let d = &self.delta;
        d.content.as_ref().is_some_and(|t| t.0)
            || d.tool_calls.as_ref().is_some_and(|t| t.len > 0)
            || d.refusal.is_some()
            || self.finish_reason.is_some()
    }
}

#[derive(Deserialize)]
struct DeltaScan {
    #[serde(rename = "role", default)]
    _role: Option<AnyStr>,
    #[serde(default)]
    content: Option<Text>,
    #[serde(default)]
    tool_calls: Option<Seq<ToolCallDeltaScan>>,
    #[serde(default)]
    refusal: Option<AnyStr>,
}

#[derive(Deserialize)]
struct ToolCallDeltaScan {
    #[serde(rename = "index")]
    _index: u32,
    #[serde(rename = "id", default)]
    _id: Option<AnyStr>,
    #[serde(rename = "type", default)]
    _kind: Option<AnyStr>,
    #[serde(rename = "function", default)]
    _function: Option<FunctionDeltaScan>,
}

impl Flag for ToolCallDeltaScan {
    fn flag(&self) -> bool {
        false
    }
}

#[derive(Deserialize)]
struct FunctionDeltaScan {
    #[serde(rename = "name", default)]
    _name: Option<AnyStr>,
    #[serde(rename = "arguments", default)]
    _arguments: Option<AnyStr>,
}

// ---- chat.completion (mirrors crate::openai::ChatResponse) ----

#[derive(Deserialize)]
struct ChoiceScan {
    #[serde(rename = "index")]
    _index: u32,
    #[serde(rename = "message")]
    _message: MessageScan,
    #[serde(default)]
    finish_reason: Option<Finish>,
    #[serde(rename = "logprobs", default)]
    _logprobs: Option<IgnoredAny>,
}

impl Flag for ChoiceScan {
    /// `content_filter`: the provider cut the output.
    fn flag(&self) -> bool {
        self.finish_reason.as_ref().is_some_and(|f| f.0)
    }
}

#[derive(Deserialize)]
struct MessageScan {
    #[serde(rename = "role")]
    _role: AnyStr,
    #[serde(rename = "content", default)]
    _content: Option<ContentScan>,
    #[serde(rename = "name", default)]
    _name: Option<AnyStr>,
    #[serde(rename = "tool_calls", default)]
    _tool_calls: Option<Seq<ToolCallScan>>,
    #[serde(rename = "tool_call_id", default)]
    _tool_call_id: Option<AnyStr>,
    #[serde(rename = "refusal", default)]
    _refusal: Option<AnyStr>,
}

/// `Content`: a string or an array of content parts.
struct ContentScan;

impl<'de> Deserialize<'de> for ContentScan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentScan;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E>(self, _: &str) -> Result<ContentScan, E> {
                Ok(ContentScan)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentScan, A::Error> {
                while seq.next_element::<ContentPartScan>()?.is_some() {}
                Ok(ContentScan)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct ContentPartScan {
    #[serde(rename = "type")]
    _kind: AnyStr,
    #[serde(rename = "text", default)]
    _text: Option<AnyStr>,
    #[serde(rename = "image_url", default)]
    _image_url: Option<ImageUrlScan>,
}

#[derive(Deserialize)]
struct ImageUrlScan {
    #[serde(rename = "url")]
    _url: AnyStr,
    #[serde(rename = "detail", default)]
    _detail: Option<AnyStr>,
}

#[derive(Deserialize)]
struct ToolCallScan {
    #[serde(rename = "id")]
    _id: AnyStr,
    #[serde(rename = "type")]
    _kind: AnyStr,
    #[serde(rename = "function")]
    _function: FunctionCallScan,
}

impl Flag for ToolCallScan {
    fn flag(&self) -> bool {
        false
    }
}

#[derive(Deserialize)]
struct FunctionCallScan {
    #[serde(rename = "name")]
    _name: AnyStr,
    #[serde(rename = "arguments")]
    _arguments: AnyStr,
}
