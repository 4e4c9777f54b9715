//! `azure-openai`: OpenAI's wire format behind deployment URLs
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`) and
//! the `api-key` header. The target's model names the deployment.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::openai::{self as oa, OpenAi};
use super::{
    Adapter, ChatAnswer, Endpoint, Failure, StreamContext, StreamDecoder, UpstreamRequest,
};
use crate::openai::{ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};

/// The API version used when the Provider names none.
pub const DEFAULT_API_VERSION: &str = sluice_crds::provider::AzureSettings::DEFAULT_API_VERSION;

/// The Azure OpenAI adapter.
#[derive(Debug, Clone, Copy)]
pub struct Azure;

fn url(endpoint: &Endpoint, deployment: &str, operation: &str) -> String {
    let version = endpoint
        .api_version
        .as_deref()
        .unwrap_or(DEFAULT_API_VERSION);
    format!(
        "{}/openai/deployments/{}/{operation}?api-version={}",
        endpoint.base_url,
        percent_encode(deployment),
        percent_encode(version)
    )
}

/// Deployment names are `[A-Za-z0-9._-]`; anything else is escaped so it
/// cannot change the path.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn with_key(endpoint: &Endpoint, url: String, body: Bytes) -> UpstreamRequest {
    let mut req = UpstreamRequest::json_post(endpoint, url, body);
    if let Some(key) = &endpoint.credential
        && let Ok(mut v) = HeaderValue::from_str(key.expose())
    {
        v.set_sensitive(true);
        req.headers.insert("api-key", v);
    }
    req
}

impl Adapter for Azure {
    fn build_chat(
        &self,
        endpoint: &Endpoint,
        req: &ChatRequest,
        upstream_model: &str,
        stream: bool,
    ) -> Result<UpstreamRequest, Failure> {
        let body = oa::reserialize(req, upstream_model, stream)?;
        Ok(with_key(
            endpoint,
            url(endpoint, upstream_model, "chat/completions"),
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
        Ok(with_key(
            endpoint,
            url(endpoint, upstream_model, "chat/completions"),
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
        // Azure's content filter answers 400 with code `content_filter`,
        // which the shared body hints already recognise.
        oa::classify_error(status, headers, body)
    }

    fn build_embeddings(
        &self,
        endpoint: &Endpoint,
        req: &EmbeddingsRequest,
        upstream_model: &str,
    ) -> Result<UpstreamRequest, Failure> {
        Ok(with_key(
            endpoint,
            url(endpoint, upstream_model, "embeddings"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::snapshot::Credential;
    use sluice_crds::{FailureClass, ProviderType};

    fn endpoint() -> Endpoint {
        Endpoint {
            provider: "azure".into(),
            kind: ProviderType::AzureOpenai,
            base_url: "https://res.openai.azure.com".into(),
            credential: Some(Credential::new("azkey")),
            headers: vec![],
            api_version: Some("2024-10-21".into()),
            region: None,
            mock: None,
        }
    }

    #[test]
    fn deployment_url_and_api_key() {
        let raw = br#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
        let req: ChatRequest = serde_json::from_slice(raw).expect("req");
        let up = Azure
            .build_chat_raw(&endpoint(), raw, &req, "gpt4o-prod", false)
            .expect("builds");
        assert_eq!(
            up.url,
            "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(up.headers.get("api-key").expect("key"), "azkey");
        assert!(up.headers.get("authorization").is_none());
        let up = Azure
            .build_chat(&endpoint(), &req, "a/b?c", false)
            .expect("builds");
        assert!(up.url.contains("/deployments/a%2Fb%3Fc/"), "{}", up.url);
    }

    #[test]
    fn content_filter_is_classified() {
        let body = br#"{"error":{"code":"content_filter","message":"The response was filtered","status":400}}"#;
        let f = Azure.classify(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        assert_eq!(f.class, FailureClass::ContentFilter);
    }
}
