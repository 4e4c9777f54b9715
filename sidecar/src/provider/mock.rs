//! `mock`: an offline provider for demos, tests and load tests.
//!
//! It speaks OpenAI's wire format from inside the process: the adapter
//! builds a `mock://<provider>/…` request like any other, and egress hands
//! it to [`respond`], a pure function from the Provider's `spec.mock` and
//! the request to a scripted reply (status, latency, body chunks). Failures
//! are deterministic: with `failureRatePercent: 25` exactly one request in
//! four fails, evenly spread, so tests can count on it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sluice_crds::provider::MockSpec;

use super::openai::{self as oa, OpenAi};
use super::{
    Adapter, ChatAnswer, Endpoint, Failure, StreamContext, StreamDecoder, UpstreamRequest,
};
use crate::openai::{ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};

/// URL scheme egress serves in-process.
pub const SCHEME: &str = "mock://";

/// The mock adapter: OpenAI's translation, aimed at `mock://`.
#[derive(Debug, Clone, Copy)]
pub struct Mock;

impl Adapter for Mock {
    fn build_chat(
        &self,
        endpoint: &Endpoint,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        let body = oa::reserialize(req, upstream_model, stream)?;
        Ok(UpstreamRequest::json_post(
            endpoint,
            format!("{}/chat/completions", endpoint.base_url),
            body,
        ))
    }

    fn build_chat_raw(
        &self,
        endpoint: &Endpoint,
        raw: &[u8],
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        let body = oa::passthrough_body(raw, req, upstream_model, stream)?;
        Ok(UpstreamRequest::json_post(
            endpoint,
            format!("{}/chat/completions", endpoint.base_url),
            body,
        ))
    }

    fn parse_chat(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, Failure> {
        OpenAi.parse_chat(status, headers, body)
    }

    fn read_chat(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ChatAnswer, Failure> {
        OpenAi.read_chat(status, headers, body)
    }

    fn stream_decoder(&self, ctx: &StreamContext) -> Box<dyn StreamDecoder> {
        OpenAi.stream_decoder(ctx)
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        oa::classify_error(status, headers, body)
    }

    fn build_embeddings(
        &self,
        endpoint: &Endpoint,
        req: &EmbeddingsRequest,
        upstream_model: &str,
    ) -> Result<UpstreamRequest, Failure> {
        Ok(UpstreamRequest::json_post(
            endpoint,
            format!("{}/embeddings", endpoint.base_url),
            oa::embeddings_body(req, upstream_model)?,
        ))
    }

    fn parse_embeddings(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<EmbeddingsResponse, Failure> {
        OpenAi.parse_embeddings(status, headers, body)
    }
}

/// What the mock answers: egress waits `latency`, sends the status, then
/// the chunks `gap` apart.
#[derive(Debug, Clone)]
pub struct MockReply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub latency: Duration,
    pub gap: Duration,
    pub chunks: Vec<Bytes>,
}

/// The reply used when `spec.mock.reply` is unset.
pub const DEFAULT_REPLY: &str = "Hello from the Sluice mock provider.";

/// Whether request number `n` (0-based) of a provider fails at `percent`:
/// spreads failures evenly and exactly (Bresenham), with no randomness.
pub fn fails(n: u64, percent: u32) -> bool {
    let p = u64::from(percent.min(100));
    (n + 1) * p / 100 > n * p / 100
}

/// The scripted answer to request number `n` for `path`
/// (`chat/completions` or `embeddings`) with the upstream `body`.
pub fn respond(spec: Option<&MockSpec>, path: &str, body: &[u8], n: u64) -> MockReply {
    let default = MockSpec::default();
    let spec = spec.unwrap_or(&default);
    let latency = spec.latency.map(Duration::from).unwrap_or(Duration::ZERO);
    let failing = match (spec.fail_with, spec.failure_rate_percent) {
        (_, Some(p)) => fails(n, p),
        (Some(_), None) => true,
        (None, None) => false,
    };
    if failing {
        let status = spec
            .fail_with
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json_reply(status, latency, &error_body(status));
    }
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned();
    if path.ends_with("embeddings") {
        return json_reply(StatusCode::OK, latency, &embeddings(&request, &model));
    }
    let reply = spec.reply.as_deref().unwrap_or(DEFAULT_REPLY);
    let prompt_tokens = estimate_tokens(&request);
    let completion_tokens = reply.split_whitespace().count().max(1) as u64;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("chatcmpl-mock-{n}");
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        let body = json!({
            "id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return json_reply(StatusCode::OK, latency, &body);
    }
    let pieces = split(reply, spec.stream_chunks.unwrap_or(8).max(1) as usize);
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut chunks = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    chunks.extend(
        pieces
            .iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    chunks.push(chunk(json!({}), json!("stop")));
    let wants_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if wants_usage {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage});
        chunks.push(Bytes::from(format!("data: {v}\n\n")));
    }
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    MockReply {
        status: StatusCode::OK,
        content_type: "text/event-stream",
        latency,
        gap: Duration::from_millis(1),
        chunks,
    }
}

fn json_reply(status: StatusCode, latency: Duration, body: &Value) -> MockReply {
    MockReply {
        status,
        content_type: "application/json",
        latency,
        gap: Duration::ZERO,
        chunks: vec![Bytes::from(body.to_string())],
    }
}

fn error_body(status: StatusCode) -> Value {
    let (kind, code) = match status.as_u16() {
        429 => ("requests", "rate_limit_exceeded"),
        401 => ("invalid_request_error", "invalid_api_key"),
        400..=499 => ("invalid_request_error", "mock_failure"),
        _ => ("server_error", "mock_failure"),
    };
    json!({"error": {"message": format!("mock provider failure (HTTP {})", status.as_u16()), "type": kind, "param": null, "code": code}})
}

/// A rough prompt size: a token per four characters of message text.
fn estimate_tokens(request: &Value) -> u64 {
    let chars: usize = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|msg| msg.get("content").map_or(0, |c| c.to_string().len()))
                .sum()
        })
        .unwrap_or(0);
    (chars as u64).div_ceil(4).max(1)
}

/// Splits text into about `n` pieces on character boundaries.
fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(n).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A deterministic 8-dimensional vector per input.
fn embeddings(request: &Value, model: &str) -> Value {
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|v| v.to_string()).collect(),
        _ => vec![String::new()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut v = [0f64; 8];
            for (j, b) in text.bytes().enumerate() {
                v[j % 8] += f64::from(b) / 255.0;
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
            let v: Vec<f64> = v.iter().map(|x| x / norm).collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|s| (s.len() as u64).div_ceil(4)).sum();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rate_is_exact_and_spread() {
        let failed = (0..100).filter(|&n| fails(n, 25)).count();
        assert_eq!(failed, 25);
        assert_eq!((0..4).filter(|&n| fails(n, 25)).count(), 1);
        assert!((0..50).all(|n| !fails(n, 0)));
        assert!((0..50).all(|n| fails(n, 100)));
    }

    #[test]
    fn stream_reply_decodes_through_the_openai_decoder() {
        let spec = MockSpec {
            reply: Some("one two three".into()),
            stream_chunks: Some(3),
            ..Default::default()
        };
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let reply = respond(Some(&spec), "chat/completions", body, 0);
        assert_eq!(reply.status, StatusCode::OK);
        let mut d = Mock.stream_decoder(&StreamContext {
            model: "m".into(),
            id: "x".into(),
            created: 0,
            max_line: 1 << 16,
        });
        let mut text = String::new();
        let mut done = false;
        let mut usage = None;
        for c in &reply.chunks {
            for ev in d.feed(c) {
                let ev = match ev.expect("ok") {
                    super::super::StreamEvent::Pass(p) => super::super::StreamEvent::Chunk {
                        chunk: p.parse().expect("a pass-through chunk parses"),
                        raw: None,
                    },
                    ev => ev,
                };
                match ev {
                    super::super::StreamEvent::Pass(_) => unreachable!(),
                    super::super::StreamEvent::Chunk { chunk, .. } => {
                        for ch in chunk.choices {
                            text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                        }
                    }
                    super::super::StreamEvent::Usage(u) => usage = Some(u),
                    super::super::StreamEvent::Done => done = true,
                }
            }
        }
        assert_eq!(text, "one two three");
        assert!(done);
        assert_eq!(usage.map(|u| u.completion_tokens), Some(3));
    }

    #[test]
    fn fail_with_answers_an_openai_error() {
        let spec = MockSpec {
            fail_with: Some(503),
            ..Default::default()
        };
        let reply = respond(Some(&spec), "chat/completions", b"{}", 0);
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let f = Mock.classify(reply.status, &HeaderMap::new(), &reply.chunks[0]);
        assert_eq!(f.class, sluice_crds::FailureClass::Overloaded);
    }
}
