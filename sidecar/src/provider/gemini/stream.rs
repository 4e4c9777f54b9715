//! `streamGenerateContent?alt=sse` → OpenAI chunks.

use serde_json::Value;
use sluice_crds::common::FailureClass;

use super::super::sse::{SseEvent, SseParser};
use super::super::wire::{ChunkBuilder, failure};
use super::super::{Failure, StreamContext, StreamDecoder, StreamEvent};
use super::{
    GenerateContentResponse, UsageMetadata, args_text, call_id, classify_error, finish_reason,
    prompt_blocked,
};
use crate::openai::{Delta, FunctionCallDelta, ToolCallDelta};

/// `streamGenerateContent?alt=sse` → OpenAI chunks. Each SSE event is a
/// whole `GenerateContentResponse`; the stream has no terminating event, so
/// it is complete when it ends after a `finishReason`.
#[derive(Debug)]
pub struct GeminiStream {
    sse: SseParser,
    out: ChunkBuilder,
    calls: usize,
    usage: Option<UsageMetadata>,
    finished: bool,
    done: bool,
    /// Bytes arrived but never one SSE event: not a stream at all.
    bytes_seen: bool,
    events_seen: bool,
}

impl GeminiStream {
    pub fn new(ctx: &StreamContext) -> Self {
        Self {
            sse: SseParser::new(ctx.max_line),
            out: ChunkBuilder::new(ctx),
            calls: 0,
            usage: None,
            finished: false,
            done: false,
            bytes_seen: false,
            events_seen: false,
        }
    }

    fn chunk(&mut self, delta: Delta, finish_reason: Option<String>) -> StreamEvent {
        self.out.event(delta, finish_reason)
    }

    fn on_data(&mut self, data: &str, out: &mut Vec<Result<StreamEvent, Failure>>) {
        let value: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => return self.fail(out, malformed("a gemini stream event is not JSON")),
        };
        let error = match &value {
            Value::Array(items) => items.first().and_then(|v| v.get("error")),
            v => v.get("error"),
        };
        if let Some(e) = error {
            let f = classify_error(0, e);
            return self.fail(out, f);
        }
        let resp: GenerateContentResponse = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(_) => return self.fail(out, malformed("unexpected gemini stream event shape")),
        };
        if let Err(f) = prompt_blocked(&resp) {
            return self.fail(out, f);
        }
        if let Some(u) = resp.usage_metadata {
            self.usage = Some(u);
        }
        if let Some(v) = &resp.model_version {
            self.out.model.clone_from(v);
        }
        if let Some(id) = &resp.response_id {
            self.out.id = format!("chatcmpl-{id}");
        }
        // Only the first candidate streams (n > 1 is not streamed).
        let Some(c) = resp.candidates.iter().find(|c| c.index == 0) else {
            return;
        };
        for p in c.content.iter().flat_map(|c| &c.parts) {
            if p.thought == Some(true) {
                continue;
            }
            if let Some(t) = p.text.as_ref().filter(|t| !t.is_empty()) {
                let delta = Delta {
                    content: Some(t.clone()),
                    ..Delta::default()
                };
                out.push(Ok(self.chunk(delta, None)));
            }
            if let Some(fc) = &p.function_call {
                let rid = resp.response_id.as_deref().unwrap_or("gemini");
                let delta = Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: self.calls as u32,
                        id: Some(call_id(fc, rid, 0, self.calls)),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: Some(fc.name.clone()),
                            arguments: Some(args_text(&fc.args)),
                        }),
                    }]),
                    ..Delta::default()
                };
                self.calls += 1;
                out.push(Ok(self.chunk(delta, None)));
            }
        }
        match finish_reason(c.finish_reason.as_deref(), self.calls > 0) {
            Ok(Some(r)) => {
                self.finished = true;
                out.push(Ok(self.chunk(Delta::default(), Some(r))));
            }
            Ok(None) => {}
            Err(f) => self.fail(out, f),
        }
    }

    fn fail(&mut self, out: &mut Vec<Result<StreamEvent, Failure>>, f: Failure) {
        out.push(Err(f));
        self.done = true;
    }
}

fn malformed(message: &str) -> Failure {
    failure(FailureClass::Malformed, Some(200), message)
}

impl GeminiStream {
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
                    self.on_data(&e.data, &mut out);
                }
                Err(f) => self.fail(&mut out, f),
            }
        }
        out
    }
}

impl StreamDecoder for GeminiStream {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>> {
        self.bytes_seen |= !bytes.is_empty();
        let events = self.sse.feed(bytes);
        self.take(events)
    }

    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>> {
        let events = self.sse.finish();
        let mut out = self.take(events);
        if self.done {
            return out;
        }
        self.done = true;
        if self.finished {
            if let Some(u) = self.usage {
                out.extend(self.out.usage(u.to_openai()).map(Ok));
            }
            out.push(Ok(StreamEvent::Done));
        } else if self.bytes_seen && !self.events_seen {
            out.push(Err(malformed(
                "gemini answered 200 with a body that is not an SSE stream",
            )));
        } else {
            out.push(Err(failure(
                FailureClass::StreamInterrupted,
                None,
                "gemini stream ended before a finishReason",
            )));
        }
        out
    }
}
