//! Framing: how stream events and whole answers become bytes for the
//! client, in the API it called: OpenAI `chat.completion.chunk` frames (the
//! upstream's own bytes on pass-through) or Anthropic's Messages events.

use bytes::Bytes;
use sluice_crds::FailureClass;

use crate::error::ApiError;
use crate::messages;
use crate::openai::Usage;
use crate::provider::{Failure, StreamEvent};

/// A rough prompt size for Anthropic's `message_start` (the real count
/// comes in `message_delta`): a token per four characters.
pub fn estimate_input_tokens(req: &crate::openai::ChatRequest) -> u64 {
    let chars: usize = req
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(|c| c.text().len())
        .sum();
    (chars as u64).div_ceil(4)
}

/// How events become bytes for the client.
pub enum Framing {
    /// OpenAI `chat.completion.chunk` frames; the usage chunk only when the
    /// client asked for it.
    OpenAi { wants_usage: bool },
    /// Anthropic's SSE event sequence and message object.
    Anthropic(Box<messages::MessagesStream>),
}

impl Framing {
    /// The framing of a chat answer: Anthropic's when the request came in
    /// on `/v1/messages`, else OpenAI's.
    pub fn for_chat(anthropic: bool, req: &crate::openai::ChatRequest, model: &str) -> Self {
        if anthropic {
            Framing::Anthropic(Box::new(messages::MessagesStream::new(
                format!("msg_{}", crate::request_id::generate()),
                model,
                estimate_input_tokens(req),
            )))
        } else {
            Framing::OpenAi {
                wants_usage: req.stream_options.as_ref().and_then(|o| o.include_usage)
                    == Some(true),
            }
        }
    }

    /// The bytes for a chunk, if any.
    pub fn chunk(&mut self, chunk: &crate::openai::ChatChunk, raw: Option<Bytes>) -> Option<Bytes> {
        match self {
            Framing::OpenAi { wants_usage } => {
                if chunk.choices.is_empty() && chunk.usage.is_some() && !*wants_usage {
                    return None;
                }
                let data = match raw {
                    Some(raw) => raw,
                    None => serde_json::to_vec(chunk)
                        .map(Bytes::from)
                        .unwrap_or_default(),
                };
                Some(sse_frame(&data))
            }
            Framing::Anthropic(s) => non_empty(s.on_chunk(chunk)),
        }
    }

    /// The bytes for a chunk event (`Chunk` or `Pass`), if any. A
    /// pass-through chunk goes out as the upstream framed it; only a
    /// translating framing parses it.
    pub fn event(&mut self, ev: StreamEvent) -> Option<Bytes> {
        match ev {
            StreamEvent::Chunk { chunk, raw } => self.chunk(&chunk, raw),
            StreamEvent::Pass(p) => match self {
                Framing::OpenAi { wants_usage } => {
                    (!p.usage_only || *wants_usage).then_some(p.frame)
                }
                Framing::Anthropic(s) => non_empty(s.on_chunk(&p.parse()?)),
            },
            StreamEvent::Usage(_) | StreamEvent::Done => None,
        }
    }

    /// Usage reported by the upstream (Anthropic puts it in `message_delta`).
    pub fn usage(&mut self, usage: Usage) {
        match self {
            Framing::OpenAi { .. } => {}
            Framing::Anthropic(s) => s.on_usage(usage),
        }
    }

    /// The end of a successful stream.
    pub fn done(&mut self) -> Bytes {
        match self {
            Framing::OpenAi { .. } => Bytes::from_static(b"data: [DONE]\n\n"),
            Framing::Anthropic(s) => Bytes::from(s.finish()),
        }
    }

    /// The end of a failed stream: an error frame, and nothing after it.
    pub fn error(&mut self, failure: &Failure) -> Bytes {
        let e = ApiError::from_failure(failure);
        match self {
            Framing::OpenAi { .. } => sse_frame(&e.json()),
            Framing::Anthropic(s) => Bytes::from(s.error(e.status.as_u16(), &e.message)),
        }
    }

    /// A whole response body for the client.
    pub fn whole(&self, body: Bytes) -> Result<Bytes, ApiError> {
        match self {
            Framing::OpenAi { .. } => Ok(body),
            Framing::Anthropic(_) => {
                let resp: crate::openai::ChatResponse =
                    serde_json::from_slice(&body).map_err(|_| {
                        ApiError::from_failure(&Failure::new(
                            FailureClass::Malformed,
                            "the upstream answer is not a chat completion",
                        ))
                    })?;
                serde_json::to_vec(&messages::from_chat_response(&resp))
                    .map(Bytes::from)
                    .map_err(|e| ApiError::invalid_json(format!("cannot encode the answer: {e}")))
            }
        }
    }
}

/// `None` for an empty translation (nothing to send yet).
fn non_empty(s: String) -> Option<Bytes> {
    (!s.is_empty()).then(|| Bytes::from(s))
}

/// One SSE `data:` frame.
pub fn sse_frame(data: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 8);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}
