//! `openai` and `openai-compatible` (vLLM, Ollama, Groq, Mistral,
//! DeepSeek…): the pass-through fast path.
//!
//! The client already speaks this wire format, so the body is forwarded as
//! the client wrote it with only the `model` value spliced in (and, on
//! streams, `stream_options.include_usage` asked for so usage is metered).
//! Responses and chunks go back byte for byte; they are only scanned
//! ([`scan`]: a typed borrowed parse, no tree, no copies) to find usage,
//! errors hidden in a 200, filtered output and the commit point. The full
//! parse runs only where a scan fails or finds an error object, so every
//! refusal keeps its exact class and message.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use sluice_crds::FailureClass;

use super::sse::{RawEvent, SseSlicer};
use super::{
    Adapter, ChatAnswer, Endpoint, Failure, PassChunk, StreamContext, StreamDecoder, StreamEvent,
    UpstreamRequest, classify_status,
};
use crate::openai::{ChatChunk, ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};

/// The OpenAI adapter, also used for `openai-compatible`.
#[derive(Debug, Clone, Copy)]
pub struct OpenAi;

impl Adapter for OpenAi {
    fn build_chat(
        &self,
        endpoint: &Endpoint,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        let body = reserialize(req, upstream_model, stream)?;
        Ok(with_bearer(
            endpoint,
            [&endpoint.base_url, "/chat/completions"].concat(),
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
        let body = passthrough_body(raw, req, upstream_model, stream)?;
        Ok(with_bearer(
            endpoint,
            [&endpoint.base_url, "/chat/completions"].concat(),
            body,
        ))
    }

    fn parse_chat(
        &self,
        _status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ChatResponse, Failure> {
        parse_chat_body(body)
    }

    fn read_chat(
        &self,
        _status: StatusCode,
        _headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ChatAnswer, Failure> {
        read_chat_body(body)
    }

    fn stream_decoder(&self, ctx: &StreamContext) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStream::new(ctx.max_line))
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        classify_error(status, headers, body)
    }

    fn build_embeddings(
        &self,
        endpoint: &Endpoint,
        req: &EmbeddingsRequest,
        upstream_model: &str,
    ) -> Result<UpstreamRequest, Failure> {
        Ok(with_bearer(
            endpoint,
            format!("{}/embeddings", endpoint.base_url),
            embeddings_body(req, upstream_model)?,
        ))
    }

    fn parse_embeddings(
        &self,
        _status: StatusCode,
        _headers: &HeaderMap,
        body: &[u8],
    ) -> Result<EmbeddingsResponse, Failure> {
        parse_embeddings_body(body)
    }
}

fn with_bearer(endpoint: &Endpoint, url: String, body: Bytes) -> UpstreamRequest {
    let mut req = UpstreamRequest::json_post(endpoint, url, body);
    if let Some(key) = &endpoint.credential
        && let Ok(mut v) = bearer(key.expose())
    {
        v.set_sensitive(true);
        req.headers.insert(http::header::AUTHORIZATION, v);
    }
    req
}

/// `Bearer <key>` as a header value, without the formatting machinery
/// (this runs for every request).
pub fn bearer(key: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut v = Vec::with_capacity(7 + key.len());
    v.extend_from_slice(b"Bearer ");
    v.extend_from_slice(key.as_bytes());
    HeaderValue::from_maybe_shared(Bytes::from(v))
}

/// The embeddings body with the upstream model.
pub fn embeddings_body(req: &EmbeddingsRequest, upstream_model: &str) -> Result<Bytes, Failure> {
    let mut req = req.clone();
    req.model = upstream_model.to_owned();
    serde_json::to_vec(&req).map(Bytes::from).map_err(|e| {
        Failure::new(
            FailureClass::BadRequest,
            format!("cannot encode request: {e}"),
        )
    })
}

/// Re-encodes the request with the upstream model (and usage asked for on
/// streams). The slow path, for when the raw body cannot be spliced.
pub fn reserialize(
    req: &ChatRequest,
    upstream_model: &str,
    stream: bool,
) -> Result<Bytes, Failure> {
    let mut req = req.clone();
    req.model = upstream_model.to_owned();
    if stream {
        req.stream = Some(true);
        let opts = req
            .stream_options
            .get_or_insert_with(|| crate::openai::StreamOptions {
                include_usage: None,
                extra: Default::default(),
            });
        opts.include_usage = Some(true);
    } else if req.stream == Some(true) {
        req.stream = Some(false);
    }
    serde_json::to_vec(&req).map(Bytes::from).map_err(|e| {
        Failure::new(
            FailureClass::BadRequest,
            format!("cannot encode request: {e}"),
        )
    })
}

/// The client's body with only the `model` value replaced (and
/// `stream_options` added on streams when absent). Falls back to
/// [`reserialize`] when the body cannot be spliced safely.
pub fn passthrough_body(
    raw: &[u8],
    req: &ChatRequest,
    upstream_model: &str,
    stream: bool,
) -> Result<Bytes, Failure> {
    if req.is_stream() != stream {
        return reserialize(req, upstream_model, stream);
    }
    let needs_usage =
        stream && req.stream_options.as_ref().and_then(|o| o.include_usage) != Some(true);
    if needs_usage && req.stream_options.is_some() {
        return reserialize(req, upstream_model, stream);
    }
    let (Some(span), Some(open)) = (find_top_level_string(raw, b"model"), first_brace(raw)) else {
        return reserialize(req, upstream_model, stream);
    };
    let model_json = json_string(upstream_model)?;
    const USAGE: &[u8] = b"\"stream_options\":{\"include_usage\":true},";
    let mut out = Vec::with_capacity(raw.len() + model_json.len() + USAGE.len());
    out.extend_from_slice(&raw[..=open]);
    if needs_usage {
        out.extend_from_slice(USAGE);
    }
    out.extend_from_slice(&raw[open + 1..span.0]);
    out.extend_from_slice(&model_json);
    out.extend_from_slice(&raw[span.1..]);
    Ok(Bytes::from(out))
}

/// `s` as a JSON string.
fn json_string(s: &str) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    crate::json::push_string(&mut out, s).map_err(|e| {
        Failure::new(
            FailureClass::BadRequest,
            format!("cannot encode model: {e}"),
        )
    })?;
    Ok(out)
}

fn first_brace(raw: &[u8]) -> Option<usize> {
    let i = raw.iter().position(|b| !b.is_ascii_whitespace())?;
    (raw[i] == b'{').then_some(i)
}

/// The byte span (quotes included) of the string value of a top-level key,
/// in a body already known to be valid JSON. `None` when the key is absent,
/// escaped, or its value is not a string.
fn find_top_level_string(raw: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut expect_key = false;
    while i < raw.len() {
        match raw[i] {
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
                i += 1;
            }
            b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let end = string_end(raw, i)?;
                if depth == 1 && expect_key {
                    expect_key = false;
                    if &raw[i + 1..end - 1] == key {
                        let mut j = end;
                        while j < raw.len() && (raw[j].is_ascii_whitespace() || raw[j] == b':') {
                            j += 1;
                        }
                        if raw.get(j) != Some(&b'"') {
                            return None;
                        }
                        let vend = string_end(raw, j)?;
                        return Some((j, vend));
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    None
}

/// Index just past the closing quote of the string starting at `start`.
fn string_end(raw: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < raw.len() {
        match raw[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Reads a `chat.completion`, refusing errors hidden in a 200.
pub fn parse_chat_body(body: &[u8]) -> Result<ChatResponse, Failure> {
    let value = json_object(body)?;
    let resp: ChatResponse = serde_json::from_value(value).map_err(|e| {
        Failure::new(
            FailureClass::Malformed,
            format!("upstream 200 is not a chat completion: {e}"),
        )
    })?;
    // Output cut by the provider's filter. A structured-output `refusal`
    // message is the model's own answer and goes to the client as is.
    if resp
        .choices
        .iter()
        .any(|c| c.finish_reason.as_deref() == Some("content_filter"))
    {
        return Err(Failure::new(
            FailureClass::Refusal,
            "the provider filtered or refused the output",
        )
        .with_status(200));
    }
    Ok(resp)
}

/// A `chat.completion` for the client, untouched, and its usage: the scan
/// when it suffices, else (errors hidden in a 200, anything the scan
/// refuses) [`parse_chat_body`] for the exact failure.
pub fn read_chat_body(body: Bytes) -> Result<ChatAnswer, Failure> {
    let facts = match body.trim_ascii_start().first() {
        Some(b'<') => None,
        _ => scan::response(&body),
    };
    let usage = match facts {
        Some(f) if !f.error => {
            if f.filtered {
                return Err(Failure::new(
                    FailureClass::Refusal,
                    "the provider filtered or refused the output",
                )
                .with_status(200));
            }
            f.usage
        }
        _ => parse_chat_body(&body)?.usage,
    };
    Ok(ChatAnswer { body, usage })
}

/// Reads an embeddings response, refusing errors hidden in a 200.
pub fn parse_embeddings_body(body: &[u8]) -> Result<EmbeddingsResponse, Failure> {
    let value = json_object(body)?;
    serde_json::from_value(value).map_err(|e| {
        Failure::new(
            FailureClass::Malformed,
            format!("upstream 200 is not an embeddings response: {e}"),
        )
    })
}

/// A 200 body as a JSON object that is not an error object.
fn json_object(body: &[u8]) -> Result<Value, Failure> {
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&b'<') {
        return Err(
            Failure::new(FailureClass::Malformed, "upstream 200 carried HTML").with_status(200),
        );
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        Failure::new(FailureClass::Malformed, "upstream 200 carried invalid JSON").with_status(200)
    })?;
    if !value.is_object() {
        return Err(
            Failure::new(FailureClass::Malformed, "upstream 200 is not a JSON object")
                .with_status(200),
        );
    }
    if value.get("error").is_some_and(|e| !e.is_null()) {
        return Err(Failure::new(
            FailureClass::Malformed,
            format!(
                "upstream 200 carried an error object{}",
                error_label(&value)
            ),
        )
        .with_status(200));
    }
    Ok(value)
}

/// ` (code)` of an OpenAI error object, for messages; never its free text.
fn error_label(value: &Value) -> String {
    let e = value.get("error");
    let code = e
        .and_then(|e| e.get("code").or_else(|| e.get("type")))
        .and_then(Value::as_str);
    match code {
        Some(c) if c.len() <= 64 => format!(" ({c})"),
        _ => String::new(),
    }
}

/// Classifies an OpenAI-shaped error response.
pub fn classify_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let hint = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .map(|e| {
            let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
            format!("{} {} {}", field("code"), field("type"), field("message")).to_lowercase()
        })
        .unwrap_or_default();
    let mut failure = classify_status(status, headers, &hint);
    if let Some(v) = &value {
        failure.message.push_str(&error_label(v));
    }
    failure
}

/// Decoder for OpenAI `chat.completion.chunk` streams: events sliced from
/// the upstream's bytes, chunks scanned and passed through as
/// [`StreamEvent::Pass`], the full parse ([`decode_data`]) only for what
/// the scan refuses or for error frames.
struct OpenAiStream {
    sse: SseSlicer,
}

impl OpenAiStream {
    fn new(max_line: usize) -> Self {
        Self {
            sse: SseSlicer::new(max_line),
        }
    }

    fn events(&mut self, raw: Vec<Result<RawEvent, Failure>>) -> Vec<Result<StreamEvent, Failure>> {
        let mut out = Vec::with_capacity(raw.len() + 1);
        for ev in raw {
            match ev {
                Err(f) => out.push(Err(f)),
                Ok(ev) => decode_event(ev, &mut out),
            }
        }
        out
    }
}

/// One SSE event of an OpenAI stream into events: scanned and passed
/// through when it is a well-formed chunk, else the full parse.
pub fn decode_event(ev: RawEvent, out: &mut Vec<Result<StreamEvent, Failure>>) {
    let trimmed = ev.data.trim_ascii();
    if trimmed == b"[DONE]" {
        out.push(Ok(StreamEvent::Done));
        return;
    }
    match scan::chunk(trimmed) {
        Some(facts) if !facts.error => {
            let frame = match ev.frame {
                Some(frame) if trimmed.len() == ev.data.len() => frame,
                _ => crate::framing::sse_frame(trimmed),
            };
            out.push(Ok(StreamEvent::Pass(PassChunk {
                frame,
                token: facts.token,
                usage_only: facts.usage_only,
            })));
            if let Some(u) = facts.usage {
                out.push(Ok(StreamEvent::Usage(u)));
            }
        }
        _ => decode_data(&String::from_utf8_lossy(&ev.data), out),
    }
}

/// One `data:` payload of an OpenAI stream into events.
pub fn decode_data(data: &str, out: &mut Vec<Result<StreamEvent, Failure>>) {
    let data = data.trim();
    if data == "[DONE]" {
        out.push(Ok(StreamEvent::Done));
        return;
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(_) => {
            out.push(Err(Failure::new(
                FailureClass::Malformed,
                "upstream stream carried invalid JSON",
            )));
            return;
        }
    };
    if let Some(e) = value.get("error").filter(|e| !e.is_null()) {
        let hint = format!(
            "{} {}",
            e.get("code").and_then(Value::as_str).unwrap_or(""),
            e.get("type").and_then(Value::as_str).unwrap_or("")
        )
        .to_lowercase();
        let class = if hint.contains("rate_limit") {
            FailureClass::RateLimited
        } else if hint.contains("overloaded") {
            FailureClass::Overloaded
        } else {
            FailureClass::ServerError
        };
        out.push(Err(Failure::new(
            class,
            format!("upstream stream carried an error{}", error_label(&value)),
        )));
        return;
    }
    match serde_json::from_value::<ChatChunk>(value) {
        Ok(chunk) => {
            let usage = chunk.usage;
            out.push(Ok(StreamEvent::Chunk {
                chunk,
                raw: Some(Bytes::copy_from_slice(data.as_bytes())),
            }));
            if let Some(u) = usage {
                out.push(Ok(StreamEvent::Usage(u)));
            }
        }
        Err(e) => out.push(Err(Failure::new(
            FailureClass::Malformed,
            format!("upstream stream chunk is not a chat.completion.chunk: {e}"),
        ))),
    }
}

impl StreamDecoder for OpenAiStream {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, Failure>> {
        self.feed_shared(Bytes::copy_from_slice(bytes))
    }

    fn feed_shared(&mut self, bytes: Bytes) -> Vec<Result<StreamEvent, Failure>> {
        let raw = self.sse.feed(&bytes);
        self.events(raw)
    }

    fn finish(&mut self) -> Vec<Result<StreamEvent, Failure>> {
        let parsed = self.sse.finish();
        self.events(parsed)
    }
}

pub mod scan;

#[cfg(test)]
mod tests;
