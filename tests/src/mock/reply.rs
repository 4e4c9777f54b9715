//! The deterministic model behind every mock: what a call asked for (parsed
//! by each provider module into a [`Call`]) and what the "model" answers
//! ([`Reply`]), with token usage computed by one documented rule so metering
//! tests can assert exact numbers.
//!
//! Token rule: `tokens(text) = ceil(chars / 4)` over Unicode scalar values
//! (the usual "a token is about four characters"), 0 for empty text.
//! - input tokens = `tokens` of all request text (system prompt and every
//!   message's text parts, tool results included) joined with `"\n"`;
//! - output tokens = `tokens` of the reply text, or of the tool call's
//!   arguments JSON when the reply is a tool call.
//!
//! Reply rule: the reply never repeats the prompt (a habit we keep even in
//! mocks). It is `"Mock reply from {model}: the last user message had {n}
//! characters."`, or the configured fixed text. When the request offers tools
//! (and does not forbid them) and its last message is not a tool result, the
//! reply is a call to the first tool with arguments
//! `{"last_user_chars": n}`. When `max_tokens` is below the reply's tokens,
//! the text is cut to `4 * max_tokens` characters and the finish reason is
//! "length".

/// What a model call asked for, as each provider module parsed it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Call {
    /// Chat-style generation or embeddings.
    pub op: Op,
    /// The model (or deployment / model id) the call names.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// OpenAI `stream_options.include_obfuscation` (on unless turned off).
    pub obfuscation: bool,
    /// Gemini `:streamGenerateContent` without `alt=sse`: a streamed JSON array.
    pub json_array_stream: bool,
    /// All request text joined with "\n" (never echoed, only measured).
    pub input_chars: usize,
    /// Characters in the last user message's text.
    pub last_user_chars: usize,
    /// Names of the tools offered, in order (empty when tools are forbidden).
    pub tools: Vec<String>,
    /// Whether the last message carries a tool result.
    pub tool_result_last: bool,
    /// The output limit the call set, if any.
    pub max_tokens: Option<u32>,
    /// Whether any block asked for prompt caching (Anthropic `cache_control`).
    pub cache_control: bool,
    /// Embeddings: character count of each input.
    pub embedding_inputs: Vec<usize>,
    /// Embeddings: requested dimensions.
    pub dimensions: Option<usize>,
    /// Embeddings: a batch call (Gemini `batchEmbedContents`), answered as a
    /// list.
    pub batch: bool,
}

/// The two operations mocks serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Op {
    #[default]
    Chat,
    Embeddings,
}

impl Call {
    pub(crate) fn input_tokens(&self) -> u32 {
        tokens_for_chars(self.input_chars)
    }
}

/// Tokens for a text under the mock's rule: `ceil(chars / 4)`.
pub fn token_count(text: &str) -> u32 {
    tokens_for_chars(text.chars().count())
}

pub(crate) fn tokens_for_chars(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Why the reply ended, in neutral terms each provider renders its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    ToolUse,
    Refusal,
}

/// What the model answers.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    Text(String),
    ToolCall {
        id_suffix: String,
        name: String,
        /// The arguments as a JSON text.
        arguments: String,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub content: Content,
    pub finish: Finish,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// The refusal every provider's "refused output" fault carries.
pub(crate) const REFUSAL_TEXT: &str = "I'm sorry, but I can't help with that.";

impl Reply {
    /// The deterministic answer to `call`; `refusal` forces a refused answer.
    pub(crate) fn build(call: &Call, fixed: Option<&str>, refusal: bool, seq: u64) -> Self {
        let input_tokens = call.input_tokens();
        if refusal {
            return Self {
                content: Content::Text(REFUSAL_TEXT.to_owned()),
                finish: Finish::Refusal,
                input_tokens,
                output_tokens: token_count(REFUSAL_TEXT),
            };
        }
        if let Some(name) = call.tools.first().filter(|_| !call.tool_result_last) {
            let arguments = format!("{{\"last_user_chars\": {}}}", call.last_user_chars);
            return Self {
                output_tokens: token_count(&arguments),
                content: Content::ToolCall {
                    id_suffix: format!("mock{seq:06}"),
                    name: name.clone(),
                    arguments,
                },
                finish: Finish::ToolUse,
                input_tokens,
            };
        }
        let mut text = match fixed {
            Some(t) => t.to_owned(),
            None => format!(
                "Mock reply from {}: the last user message had {} characters.",
                call.model, call.last_user_chars
            ),
        };
        let mut finish = Finish::Stop;
        if let Some(max) = call.max_tokens
            && token_count(&text) > max
        {
            let keep = usize::try_from(max).unwrap_or(usize::MAX).saturating_mul(4);
            text = text.chars().take(keep).collect();
            finish = Finish::Length;
        }
        Self {
            output_tokens: token_count(&text),
            content: Content::Text(text),
            finish,
            input_tokens,
        }
    }

    /// The reply's text, empty for a tool call.
    pub(crate) fn text(&self) -> &str {
        match &self.content {
            Content::Text(t) => t,
            Content::ToolCall { .. } => "",
        }
    }
}

/// Split `text` into stream pieces: one word each, keeping the space that
/// follows it, so concatenating the pieces gives back `text` exactly.
pub(crate) fn text_pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Split a tool call's arguments JSON into three fragments (as providers
/// stream them: partial JSON that only parses once concatenated).
pub(crate) fn argument_fragments(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    chars
        .chunks(third)
        .map(|c| c.iter().collect::<String>())
        .collect()
}

/// A deterministic unit-length embedding of `dims` floats for an input of
/// `chars` characters at position `index`.
pub(crate) fn embedding(index: usize, chars: usize, dims: usize) -> Vec<f64> {
    // A small LCG seeded by the input's position and length: deterministic,
    // distinct per input, no dependency.
    let mut state = (index as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(chars as u64)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut v: Vec<f64> = (0..dims)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as f64 / f64::from(u32::MAX)) - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rule_is_ceil_chars_over_four() {
        assert_eq!(token_count(""), 0);
        assert_eq!(token_count("abc"), 1);
        assert_eq!(token_count("abcd"), 1);
        assert_eq!(token_count("abcde"), 2);
        assert_eq!(token_count("éééé"), 1);
    }

    #[test]
    fn pieces_concatenate_back() {
        let t = "Mock reply from m: the last user message had 5 characters.";
        let p = text_pieces(t);
        assert_eq!(p.concat(), t);
        assert_eq!(p.len(), 11);
        let a = "{\"last_user_chars\": 12}";
        assert_eq!(argument_fragments(a).concat(), a);
        assert_eq!(argument_fragments(a).len(), 3);
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let call = Call {
            model: "m".into(),
            last_user_chars: 3,
            max_tokens: Some(2),
            ..Call::default()
        };
        let r = Reply::build(&call, None, false, 0);
        assert_eq!(r.finish, Finish::Length);
        assert_eq!(r.text().chars().count(), 8);
        assert_eq!(r.output_tokens, 2);
    }

    #[test]
    fn tools_produce_a_call_unless_a_result_came_back() {
        let mut call = Call {
            model: "m".into(),
            last_user_chars: 7,
            tools: vec!["get_weather".into()],
            ..Call::default()
        };
        let r = Reply::build(&call, None, false, 1);
        assert_eq!(r.finish, Finish::ToolUse);
        call.tool_result_last = true;
        assert_eq!(Reply::build(&call, None, false, 2).finish, Finish::Stop);
    }
}
