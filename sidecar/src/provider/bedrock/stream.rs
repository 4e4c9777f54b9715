//! ConverseStream's event-stream frames → OpenAI chunks.

use serde_json::Value;
use sluice_crds::common::FailureClass;

use super::super::wire::{ChunkBuilder, failure, safe_message};
use super::super::{Failure, StreamContext, StreamDecoder, StreamEvent};
use super::eventstream::{EventStreamFramer, Frame};
use super::{BedrockUsage, error_class, finish_reason};
use crate::openai::{Delta, FunctionCallDelta, ToolCallDelta};

/// ConverseStream (binary event stream) → OpenAI chunks.
#[derive(Debug)]
pub struct BedrockStream {
    framer: EventStreamFramer,
    out: ChunkBuilder,
    /// `contentBlockIndex` → OpenAI tool call index.
    tool_index: Vec<(u64, u32)>,
    usage: Option<BedrockUsage>,
    stopped: bool,
    done: bool,
    frames_seen: bool,
}

impl BedrockStream {
    pub fn new(ctx: &StreamContext) -> Self {
        Self {
            framer: EventStreamFramer::new(),
            out: ChunkBuilder::new(ctx),
            tool_index: Vec::new(),
            usage: None,
            stopped: false,
            done: false,
            frames_seen: false,
        }
    }

    fn chunk(&mut self, delta: Delta, finish_reason: Option<String>) -> StreamEvent {
        self.out.event(delta, finish_reason)
    }

    fn fail(&mut self, out: &mut Vec<Result<StreamEvent, Failure>>, f: Failure) {
        out.push(Err(f));
        self.done = true;
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Vec<Result<StreamEvent, Failure>>) {
        let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
        match frame.header(":message-type").unwrap_or("event") {
            "event" => {}
            "exception" => {
                let kind = frame.header(":exception-type").unwrap_or("");
                let message = payload.get("message").and_then(Value::as_str).unwrap_or("");
                let class = match error_class(0, kind, message) {
                    // A model stream error mid-stream is an interruption.
                    FailureClass::ServerError if kind == "modelStreamErrorException" => {
                        FailureClass::StreamInterrupted
                    }
                    c => c,
                };
                let f = failure(
                    class,
                    None,
                    format!("bedrock stream {kind}: {}", safe_message(message)),
                );
                return self.fail(out, f);
            }
            _ => {
                let code = frame.header(":error-code").unwrap_or("");
                let message = frame.header(":error-message").unwrap_or("");
                let f = failure(
                    FailureClass::StreamInterrupted,
                    None,
                    format!("bedrock stream error {code}: {}", safe_message(message)),
                );
                return self.fail(out, f);
            }
        }
        if payload.is_null() {
            return self.fail(out, malformed("a bedrock stream event is not JSON"));
        }
        match frame.header(":event-type").unwrap_or("") {
            "contentBlockStart" => {
                let index = payload
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if let Some(tu) = payload.pointer("/start/toolUse") {
                    let n = self.tool_index.len() as u32;
                    self.tool_index.push((index, n));
                    let field = |k| tu.get(k).and_then(Value::as_str).map(str::to_owned);
                    let delta = Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: n,
                            id: field("toolUseId"),
                            kind: Some("function".into()),
                            function: Some(FunctionCallDelta {
                                name: field("name"),
                                arguments: Some(String::new()),
                            }),
                        }]),
                        ..Delta::default()
                    };
                    out.push(Ok(self.chunk(delta, None)));
                }
            }
            "contentBlockDelta" => {
                let index = payload
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if let Some(t) = payload.pointer("/delta/text").and_then(Value::as_str) {
                    if !t.is_empty() {
                        let delta = Delta {
                            content: Some(t.to_owned()),
                            ..Delta::default()
                        };
                        out.push(Ok(self.chunk(delta, None)));
                    }
                } else if let Some(input) = payload
                    .pointer("/delta/toolUse/input")
                    .and_then(Value::as_str)
                {
                    let Some(&(_, n)) = self.tool_index.iter().find(|(i, _)| *i == index) else {
                        return;
                    };
                    if input.is_empty() {
                        return;
                    }
                    let delta = Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: n,
                            function: Some(FunctionCallDelta {
                                name: None,
                                arguments: Some(input.to_owned()),
                            }),
                            ..ToolCallDelta::default()
                        }]),
                        ..Delta::default()
                    };
                    out.push(Ok(self.chunk(delta, None)));
                }
            }
            "messageStop" => {
                let reason = payload.get("stopReason").and_then(Value::as_str);
                match finish_reason(reason) {
                    Ok(r) => {
                        self.stopped = true;
                        let r = r.unwrap_or_else(|| "stop".into());
                        out.push(Ok(self.chunk(Delta::default(), Some(r))));
                    }
                    Err(f) => self.fail(out, f),
                }
            }
            "metadata" => {
                if let Some(u) = payload.get("usage") {
                    self.usage = serde_json::from_value(u.clone()).ok();
                }
                if self.stopped {
                    self.complete(out);
                }
            }
            // messageStart, contentBlockStop, newer events.
            _ => {}
        }
    }

    fn complete(&mut self, out: &mut Vec<Result<StreamEvent, Failure>>) {
        if let Some(u) = self.usage {
            out.extend(self.out.usage(u.to_openai()).map(Ok));
        }
        out.push(Ok(StreamEvent::Done));
        self.done = true;
    }
}

fn malformed(message: &str) -> Failure {
    failure(FailureClass::Malformed, Some(200), message)
}

impl StreamDecoder for BedrockStream {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        match self.framer.push(bytes) {
            Ok(frames) => {
                self.frames_seen |= !frames.is_empty();
                for f in &frames {
                    if self.done {
                        break;
                    }
                    self.on_frame(f, &mut out);
                }
            }
            Err(e) => self.fail(&mut out, malformed(&e)),
        }
        out
    }

    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        if self.stopped && !self.framer.has_partial() {
            // messageStop arrived; metadata (usage) is optional.
            self.complete(&mut out);
        } else if !self.frames_seen && self.framer.has_partial() {
            let f = malformed("bedrock answered 200 with a body that is not an event stream");
            self.fail(&mut out, f);
        } else {
            self.fail(
                &mut out,
                failure(
                    FailureClass::StreamInterrupted,
                    None,
                    "bedrock stream ended before messageStop",
                ),
            );
        }
        out
    }
}
