//! OpenAI chat request → Bedrock `Converse` request: system blocks,
//! turns, content blocks (text, images, tool use and results), tool
//! configuration and inference config.

use super::*;

/// OpenAI chat request → Converse request.
pub fn to_converse_request(req: &ChatRequest) -> Result<ConverseRequest, Failure> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(bad_request("n > 1 is not supported by bedrock"));
    }
    let mut system = Vec::new();
    let mut messages: Vec<BedrockMessage> = Vec::new();
    for m in &req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
            }
            "user" => push_turn(&mut messages, "user", user_blocks(m)?),
            "assistant" => push_turn(&mut messages, "assistant", assistant_blocks(m)?),
            "tool" | "function" => {
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                let block = BedrockBlock {
                    tool_result: Some(json!({
                        "toolUseId": m.tool_call_id.clone().unwrap_or_default(),
                        "content": [{ "text": text }],
                    })),
                    ..BedrockBlock::default()
                };
                push_turn(&mut messages, "user", vec![block]);
            }
            other => return Err(bad_request(format!("unknown message role {other:?}"))),
        }
    }
    if let Some(instruction) = wire::json_instruction(req) {
        system.push(json!({ "text": instruction }));
    }
    let config = InferenceConfig {
        max_tokens: req.max_output_tokens(),
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: req.stop.as_ref().map(|s| s.to_vec()),
    };
    let mut out = ConverseRequest {
        messages,
        system: (!system.is_empty()).then_some(system),
        inference_config: Some(config).filter(|c| *c != InferenceConfig::default()),
        tool_config: None,
        extra: Map::new(),
    };
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        out.tool_config = tool_config(req, tools, &out.messages)?;
    }
    for key in [
        "additionalModelRequestFields",
        "guardrailConfig",
        "performanceConfig",
    ] {
        if let Some(v) = req.extra.get(key) {
            out.extra.insert(key.to_owned(), v.clone());
        }
    }
    Ok(out)
}

fn push_turn(messages: &mut Vec<BedrockMessage>, role: &str, blocks: Vec<BedrockBlock>) {
    if blocks.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => messages.push(BedrockMessage {
            role: role.to_owned(),
            content: blocks,
        }),
    }
}

fn text_block(text: String) -> BedrockBlock {
    BedrockBlock {
        text: Some(text),
        ..BedrockBlock::default()
    }
}

fn user_blocks(m: &Message) -> Result<Vec<BedrockBlock>, Failure> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![text_block(t.clone())]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p.kind.as_str() {
                "text" => Ok(text_block(p.text.clone().unwrap_or_default())),
                "image_url" => {
                    let url = p.image_url.as_ref().map_or("", |i| i.url.as_str());
                    let (mime, data) = wire::parse_data_url(url).ok_or_else(|| {
                        bad_request("bedrock takes images only as base64 data URLs")
                    })?;
                    let format = match mime.as_str() {
                        "image/png" => "png",
                        "image/jpeg" | "image/jpg" => "jpeg",
                        "image/gif" => "gif",
                        "image/webp" => "webp",
                        _ => {
                            return Err(bad_request("bedrock takes png, jpeg, gif or webp images"));
                        }
                    };
                    Ok(BedrockBlock {
                        image: Some(json!({"format": format, "source": {"bytes": data}})),
                        ..BedrockBlock::default()
                    })
                }
                other => Err(bad_request(format!(
                    "content part type {other:?} is not supported by bedrock"
                ))),
            })
            .collect(),
    }
}

fn assistant_blocks(m: &Message) -> Result<Vec<BedrockBlock>, Failure> {
    let mut blocks = Vec::new();
    if let Some(c) = &m.content {
        let text = c.text();
        if !text.is_empty() {
            blocks.push(text_block(text));
        }
    }
    for call in m.tool_calls.iter().flatten() {
        blocks.push(BedrockBlock {
            tool_use: Some(ToolUse {
                tool_use_id: call.id.clone(),
                name: call.function.name.clone(),
                input: wire::arguments_object(&call.function.arguments)?,
            }),
            ..BedrockBlock::default()
        });
    }
    Ok(blocks)
}

fn tool_config(
    req: &ChatRequest,
    tools: &[crate::openai::Tool],
    messages: &[BedrockMessage],
) -> Result<Option<Value>, Failure> {
    let choice = match wire::tool_choice(req.tool_choice.as_ref())? {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"auto": {}})),
        Some(ToolChoice::Required) => Some(json!({"any": {}})),
        Some(ToolChoice::None) => {
            let history = messages
                .iter()
                .flat_map(|m| &m.content)
                .any(|b| b.tool_use.is_some() || b.tool_result.is_some());
            if !history {
                return Ok(None);
            }
            Some(json!({"auto": {}}))
        }
        Some(ToolChoice::Function(name)) => Some(json!({"tool": {"name": name}})),
    };
    let specs: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut spec = json!({
                "name": t.function.name,
                "inputSchema": {"json": t.function.parameters.clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}))},
            });
            if let Some(d) = &t.function.description {
                spec["description"] = Value::String(d.clone());
            }
            json!({ "toolSpec": spec })
        })
        .collect();
    let mut config = json!({ "tools": specs });
    if let Some(c) = choice {
        config["toolChoice"] = c;
    }
    Ok(Some(config))
}
