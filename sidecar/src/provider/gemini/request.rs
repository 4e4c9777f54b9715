//! OpenAI chat request → Gemini `generateContent` request: system
//! instruction, turns, parts (text, images, function calls and
//! responses), tools and generation config.

use super::*;

/// OpenAI chat request → `GenerateContentRequest`.
pub fn to_generate_request(req: &ChatRequest) -> Result<GenerateContentRequest, Failure> {
    let mut system: Vec<Part> = Vec::new();
    let mut contents: Vec<GeminiContent> = Vec::new();
    for m in &req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                if !text.is_empty() {
                    system.push(text_part(text));
                }
            }
            "user" => push_turn(&mut contents, "user", user_parts(m)?),
            "assistant" => push_turn(&mut contents, "model", model_parts(m)?),
            "tool" | "function" => {
                let part = function_response(m, &req.messages)?;
                push_turn(&mut contents, "user", vec![part]);
            }
            other => return Err(bad_request(format!("unknown message role {other:?}"))),
        }
    }

    let mut config = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens(),
        stop_sequences: req.stop.as_ref().map(|s| s.to_vec()),
        candidate_count: req.n.filter(|&n| n > 1),
        ..GenerationConfig::default()
    };
    if req.wants_json() {
        config.response_mime_type = Some("application/json".into());
        config.response_json_schema = req
            .response_format
            .as_ref()
            .and_then(|f| f.pointer("/json_schema/schema"))
            .cloned();
    }
    for key in ["topK", "seed", "thinkingConfig", "responseModalities"] {
        if let Some(v) = req.extra.get(key) {
            config.extra.insert(key.to_owned(), v.clone());
        }
    }

    let mut out = GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(GeminiContent {
            role: None,
            parts: system,
        }),
        tools: None,
        tool_config: None,
        generation_config: Some(config).filter(|c| *c != GenerationConfig::default()),
        extra: Map::new(),
    };
    if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = &t.function.description {
                    d["description"] = Value::String(desc.clone());
                }
                if let Some(params) = &t.function.parameters {
                    d["parametersJsonSchema"] = params.clone();
                }
                d
            })
            .collect();
        out.tools = Some(vec![json!({ "functionDeclarations": decls })]);
        out.tool_config = tool_config(req.tool_choice.as_ref())?;
    }
    if let Some(v) = req.extra.get("safetySettings") {
        out.extra.insert("safetySettings".into(), v.clone());
    }
    Ok(out)
}

fn text_part(text: String) -> Part {
    Part {
        text: Some(text),
        ..Part::default()
    }
}

/// Gemini wants alternating `user`/`model` turns: same-role neighbours merge.
fn push_turn(contents: &mut Vec<GeminiContent>, role: &str, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
        _ => contents.push(GeminiContent {
            role: Some(role.to_owned()),
            parts,
        }),
    }
}

fn user_parts(m: &Message) -> Result<Vec<Part>, Failure> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![text_part(t.clone())]),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match p.kind.as_str() {
                "text" => Ok(text_part(p.text.clone().unwrap_or_default())),
                "image_url" => {
                    let url = wire::image_url(p)?;
                    Ok(image_part(url))
                }
                other => Err(bad_request(format!(
                    "content part type {other:?} is not supported by gemini"
                ))),
            })
            .collect(),
    }
}

fn image_part(url: &str) -> Part {
    if let Some((mime, data)) = wire::parse_data_url(url) {
        return Part {
            inline_data: Some(json!({"mimeType": mime, "data": data})),
            ..Part::default()
        };
    }
    Part {
        file_data: Some(json!({"mimeType": mime_from_extension(url), "fileUri": url})),
        ..Part::default()
    }
}

fn mime_from_extension(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        Some("pdf") => "application/pdf",
        _ => "image/jpeg",
    }
}

fn model_parts(m: &Message) -> Result<Vec<Part>, Failure> {
    let mut parts = Vec::new();
    if let Some(c) = &m.content {
        let text = c.text();
        if !text.is_empty() {
            parts.push(text_part(text));
        }
    }
    for call in m.tool_calls.iter().flatten() {
        let mut extra = Map::new();
        // Gemini 3 refuses replayed function calls without the thought
        // signature it issued; OpenAI tool calls have nowhere to keep one
        // (and long ids break OpenAI's id limit on fallback), so send the
        // sentinel Google documents for history it did not produce.
        extra.insert(
            "thoughtSignature".into(),
            Value::String(SKIP_THOUGHT_SIGNATURE.into()),
        );
        parts.push(Part {
            function_call: Some(GeminiFunctionCall {
                id: gemini_call_id(&call.id),
                name: call.function.name.clone(),
                args: wire::arguments_object(&call.function.arguments)?,
            }),
            extra,
            ..Part::default()
        });
    }
    Ok(parts)
}

/// Ids we made up for Gemini's id-less calls are not sent back as ids.
fn gemini_call_id(id: &str) -> Option<String> {
    (!id.is_empty() && !id.starts_with(SYNTHETIC_CALL_ID)).then(|| id.to_owned())
}

pub(super) const SYNTHETIC_CALL_ID: &str = "call_gemini_";

/// The `thoughtSignature` Google documents for function calls whose real
/// signature is not available.
pub const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// A `tool` message → `functionResponse`, named after the call it answers.
fn function_response(m: &Message, all: &[Message]) -> Result<Part, Failure> {
    let id = m.tool_call_id.as_deref().unwrap_or("");
    let name = all
        .iter()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .find(|c| c.id == id)
        .map(|c| c.function.name.clone())
        .or_else(|| m.name.clone())
        .ok_or_else(|| bad_request("a tool message answers no known tool call"))?;
    let text = m.content.as_ref().map(Content::text).unwrap_or_default();
    // Gemini wants an object: a JSON object result is sent as is, anything
    // else wrapped.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    let mut fr = json!({"name": name, "response": response});
    if let Some(id) = gemini_call_id(id) {
        fr["id"] = Value::String(id);
    }
    Ok(Part {
        function_response: Some(fr),
        ..Part::default()
    })
}

/// `auto` → AUTO, `required` → ANY, `none` → NONE, a named function → ANY
/// restricted to it.
fn tool_config(choice: Option<&Value>) -> Result<Option<Value>, Failure> {
    let config = match wire::tool_choice(choice)? {
        None => return Ok(None),
        Some(ToolChoice::Auto) => json!({"mode": "AUTO"}),
        Some(ToolChoice::Required) => json!({"mode": "ANY"}),
        Some(ToolChoice::None) => json!({"mode": "NONE"}),
        Some(ToolChoice::Function(name)) => {
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(json!({ "functionCallingConfig": config })))
}
