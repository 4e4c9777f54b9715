//! Anthropic Messages API wire types, naming only the fields the gateway
//! touches; everything else rides in `extra`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::openai::Usage;

/// `POST /v1/messages` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<AnthropicMessage>,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<AnthropicContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<AnthropicTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub content: AnthropicContent,
}

/// A string, or content blocks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum AnthropicContent {
    Text(String),
    Blocks(Vec<Block>),
}

impl AnthropicContent {
    /// The content as blocks (a string is one text block).
    pub fn into_blocks(self) -> Vec<Block> {
        match self {
            AnthropicContent::Text(t) => vec![Block::text(t)],
            AnthropicContent::Blocks(b) => b,
        }
    }

    /// All text blocks joined by newlines.
    pub fn text(&self) -> String {
        match self {
            AnthropicContent::Text(t) => t.clone(),
            AnthropicContent::Blocks(b) => b
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One content block: `text`, `image`, `tool_use`, `tool_result`,
/// `thinking`… Fields of other kinds pass through in `extra`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `image`: `{"type":"base64","media_type","data"}` or `{"type":"url","url"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
    /// `tool_use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// `tool_result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<AnthropicContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Block {
    pub fn text(text: impl Into<String>) -> Self {
        Block {
            kind: "text".into(),
            text: Some(text.into()),
            ..Block::default()
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnthropicTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Absent on Anthropic's server tools (which carry a `type` in `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A non-stream `/v1/messages` response (also `message_start.message`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MessagesResponse {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub content: Vec<Block>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: AnthropicUsage,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AnthropicUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AnthropicUsage {
    /// OpenAI counts every prompt token in `prompt_tokens`; Anthropic
    /// splits out cache reads and cache writes. Cache reads are the cached
    /// tokens; cache writes are ordinary (if dearer) prompt tokens.
    pub fn to_openai(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + read + self.cache_creation_input_tokens.unwrap_or(0);
        Usage::new(prompt, self.output_tokens.unwrap_or(0), read)
    }

    /// Later counts (a `message_delta`) override earlier ones.
    pub(super) fn merge(&mut self, later: &AnthropicUsage) {
        let pick = |a: &mut Option<u64>, b: Option<u64>| {
            if b.is_some() {
                *a = b;
            }
        };
        pick(&mut self.input_tokens, later.input_tokens);
        pick(&mut self.output_tokens, later.output_tokens);
        pick(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        pick(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }
}

/// `{"type":"error","error":{"type","message"}}`.
#[derive(Deserialize, Debug, Default)]
pub(super) struct ErrorEnvelope {
    #[serde(default)]
    pub(super) error: ErrorDetail,
}

#[derive(Deserialize, Debug, Default)]
pub(super) struct ErrorDetail {
    #[serde(rename = "type", default)]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) message: String,
}
