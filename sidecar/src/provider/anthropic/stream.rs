//! Anthropic's SSE stream (`message_start`, `content_block_*`, `ping`,
//! `message_delta`, `message_stop`, `error`) → OpenAI chunks.

use serde_json::Value;
use sluice_crds::common::FailureClass;

use super::super::sse::{SseEvent, SseParser};
use super::super::wire::{ChunkBuilder, failure, safe_message};
use super::super::{Failure, StreamContext, StreamDecoder, StreamEvent};
use super::{AnthropicUsage, error_class, finish_reason};
use crate::openai::{Delta, FunctionCallDelta, ToolCallDelta};

/// Anthropic SSE (`message_start`, `content_block_*`, `ping`,
/// `message_delta`, `message_stop`, `error`) → OpenAI chunks, one event at
/// a time. The role is sent with the first token, never alone, so the
/// first chunk out is a real token (the commit point).
#[derive(Debug)]
pub struct AnthropicStream {
    sse: SseParser,
    out: ChunkBuilder,
    /// Anthropic block index → OpenAI tool call index.
    tool_index: Vec<(u64, u32)>,
    usage: AnthropicUsage,
    stopped: bool,
    done: bool,
    /// Bytes arrived but never one SSE event: not a stream at all.
    bytes_seen: bool,
    events_seen: bool,
}

impl AnthropicStream {
    /// The context's `id` and `model` are used until `message_start`
    /// names its own.
    pub fn new(ctx: &StreamContext) -> Self {
        Self {
            sse: SseParser::new(ctx.max_line),
            out: ChunkBuilder::new(ctx),
            tool_index: Vec::new(),
            usage: AnthropicUsage::default(),
            stopped: false,
            done: false,
            bytes_seen: false,
            events_seen: false,
        }
    }

    fn chunk(&mut self, delta: Delta, finish_reason: Option<String>) -> StreamEvent {
        self.out.event(delta, finish_reason)
    }

    fn on_event(&mut self, event: &str, data: &str, out: &mut Vec<Result<StreamEvent, Failure>>) {
        let value: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => {
                out.push(Err(malformed("an anthropic stream event is not JSON")));
                self.done = true;
                return;
            }
        };
        // The `type` in the data is authoritative; `event:` is a hint.
        let kind = value.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => {
                if let Some(m) = value.get("message") {
                    if let Some(id) = m.get("id").and_then(Value::as_str) {
                        self.out.id = id.to_owned();
                    }
                    if let Some(model) = m.get("model").and_then(Value::as_str) {
                        self.out.model = model.to_owned();
                    }
                    if let Some(u) = m.get("usage") {
                        self.merge_usage(u);
                    }
                }
            }
            "content_block_start" => {
                let block = value.get("content_block");
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("tool_use") => {
                        let n = self.tool_index.len() as u32;
                        self.tool_index.push((index, n));
                        let field = |k| block.and_then(|b| b.get(k)).and_then(Value::as_str);
                        let delta = Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: n,
                                id: field("id").map(str::to_owned),
                                kind: Some("function".into()),
                                function: Some(FunctionCallDelta {
                                    name: field("name").map(str::to_owned),
                                    arguments: Some(String::new()),
                                }),
                            }]),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                    Some("text") => {
                        let text = block
                            .and_then(|b| b.get("text"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if !text.is_empty() {
                            let delta = Delta {
                                content: Some(text.to_owned()),
                                ..Delta::default()
                            };
                            out.push(Ok(self.chunk(delta, None)));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = value.get("delta");
                let field = |k| delta.and_then(|d| d.get(k)).and_then(Value::as_str);
                match field("type") {
                    Some("text_delta") => {
                        let delta = Delta {
                            content: Some(field("text").unwrap_or("").to_owned()),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                    Some("input_json_delta") => {
                        let Some(&(_, n)) = self.tool_index.iter().find(|(i, _)| *i == index)
                        else {
                            return;
                        };
                        let partial = field("partial_json").unwrap_or("");
                        if partial.is_empty() {
                            return;
                        }
                        let delta = Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: n,
                                function: Some(FunctionCallDelta {
                                    name: None,
                                    arguments: Some(partial.to_owned()),
                                }),
                                ..ToolCallDelta::default()
                            }]),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                    // thinking_delta, signature_delta, citations_delta.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = value.get("usage") {
                    self.merge_usage(u);
                }
                let reason = value.pointer("/delta/stop_reason").and_then(Value::as_str);
                match finish_reason(reason) {
                    Ok(Some(r)) => {
                        self.stopped = true;
                        out.push(Ok(self.chunk(Delta::default(), Some(r))));
                    }
                    Ok(None) => {}
                    Err(f) => {
                        out.push(Err(f));
                        self.done = true;
                    }
                }
            }
            "message_stop" => {
                out.extend(self.out.usage(self.usage.to_openai()).map(Ok));
                out.push(Ok(StreamEvent::Done));
                self.done = true;
            }
            "error" => {
                let kind = value
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // Mid-stream errors carry no HTTP status of their own.
                let class = error_class(0, kind, message);
                let class = if class == FailureClass::BadRequest && kind.is_empty() {
                    FailureClass::StreamInterrupted
                } else {
                    class
                };
                out.push(Err(failure(
                    class,
                    None,
                    format!("anthropic stream error {kind}: {}", safe_message(message)),
                )));
                self.done = true;
            }
            // ping, and event types newer than this code.
            _ => {}
        }
    }

    fn merge_usage(&mut self, u: &Value) {
        if let Ok(u) = serde_json::from_value::<AnthropicUsage>(u.clone()) {
            self.usage.merge(&u);
        }
    }
}

fn malformed(message: &str) -> Failure {
    failure(FailureClass::Malformed, Some(200), message)
}

impl StreamDecoder for AnthropicStream {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>> {
        self.bytes_seen |= !bytes.is_empty();
        let events = self.sse.feed(bytes);
        self.take(events)
    }

    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>> {
        let events = self.sse.finish();
        let mut out = self.take(events);
        if !self.done {
            self.done = true;
            let what = if self.stopped {
                "anthropic stream ended before message_stop"
            } else {
                "anthropic stream ended before its stop reason"
            };
            out.push(Err(if self.bytes_seen && !self.events_seen {
                malformed("anthropic answered 200 with a body that is not an SSE stream")
            } else {
                failure(FailureClass::StreamInterrupted, None, what)
            }));
        }
        out
    }
}

impl AnthropicStream {
    fn take(
        &mut self,
        events: Vec<Result<SseEvent, Failure>>,
    ) -> Vec<Result<StreamEvent, Failure>> {
        let mut out = Vec::new();
        for e in events {
            if self.done {
                break;
            }
            match e {
                Ok(e) => {
                    self.events_seen = true;
                    self.on_event(e.event.as_deref().unwrap_or(""), &e.data, &mut out);
                }
                Err(f) => {
                    out.push(Err(f));
                    self.done = true;
                }
            }
        }
        out
    }
}
