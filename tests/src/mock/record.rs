//! What a mock remembers about each request it received, so tests can assert
//! what the gateway sent: the key in the right header, the translated body,
//! how many retries reached the provider.

use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use serde::Serialize;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 1-based position among the requests this mock received.
    pub seq: u64,
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: Bytes,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<serde_json::Value>,
    /// Time since the mock started.
    pub at: std::time::Duration,
    /// The status the mock answered with; `None` while it is being handled
    /// or when it sent none (closed or hung connection).
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// Header `name` as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A JSON summary for the control API (headers included, body as JSON
    /// when it parsed).
    pub(crate) fn summary(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Summary<'a> {
            seq: u64,
            method: &'a str,
            path: &'a str,
            query: Option<&'a str>,
            headers: serde_json::Map<String, serde_json::Value>,
            json: Option<&'a serde_json::Value>,
            at_ms: u128,
            status: Option<u16>,
        }
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        serde_json::to_value(Summary {
            seq: self.seq,
            method: self.method.as_str(),
            path: &self.path,
            query: self.query.as_deref(),
            headers,
            json: self.json.as_ref(),
            at_ms: self.at.as_millis(),
            status: self.status,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}
