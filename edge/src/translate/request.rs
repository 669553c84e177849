//! Request bodies: Anthropic Messages ⇄ OpenAI Chat Completions.
//!
//! In: the client's JSON body. Out: the body for the provider. The body is
//! parsed once into a `serde_json::Value` and taken apart by value, so large
//! strings (base64 images) move instead of being copied, except where a
//! data URL has to be built or split. Fields the target protocol has no
//! place for and that do not change the answer's meaning (`top_k`,
//! `cache_control`, `seed`, penalties…) are dropped; ones that would change
//! it in a way the client must know about are refused with a
//! [`TranslateError`] that names the field.

use serde_json::{json, Map, Value};

use super::TranslateError;

type Object = Map<String, Value>;
type Result<T> = std::result::Result<T, TranslateError>;

/// Which OpenAI field carries Anthropic's `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxTokensField {
    /// `max_completion_tokens`: OpenAI's current field, the only one its
    /// reasoning models accept.
    #[default]
    MaxCompletionTokens,
    /// `max_tokens`: for OpenAI-compatible servers that predate the above.
    MaxTokens,
}

/// How to write an OpenAI request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenAiOptions {
    pub max_tokens_field: MaxTokensField,
}

fn parse_object(body: &[u8]) -> Result<Object> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(TranslateError::invalid("body", "must be a JSON object")),
        Err(e) => Err(TranslateError::json("request body", &e)),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn take_string(o: &mut Object, key: &str, path: &str) -> Result<String> {
    match o.remove(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(TranslateError::invalid(
            format!("{path}.{key}"),
            "required string is missing",
        )),
        Some(v) => Err(TranslateError::invalid(
            format!("{path}.{key}"),
            format!("must be a string, not {}", type_name(&v)),
        )),
    }
}

fn take_opt_string(o: &mut Object, key: &str, path: &str) -> Result<Option<String>> {
    match o.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(TranslateError::invalid(
            format!("{path}.{key}"),
            format!("must be a string, not {}", type_name(&v)),
        )),
    }
}

fn into_object(v: Value, path: &str) -> Result<Object> {
    match v {
        Value::Object(o) => Ok(o),
        v => Err(TranslateError::invalid(
            path,
            format!("must be an object, not {}", type_name(&v)),
        )),
    }
}

fn take_array(o: &mut Object, key: &str, path: &str) -> Result<Option<Vec<Value>>> {
    match o.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(TranslateError::invalid(
            join(path, key),
            format!("must be an array, not {}", type_name(&v)),
        )),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn block_type(o: &Object, path: &str) -> Result<String> {
    match o.get("type") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(TranslateError::invalid(
            format!("{path}.type"),
            "required string is missing",
        )),
    }
}

/// OpenAI content from text pieces: one piece as a plain string, several
/// as text parts (valid in every role), none as `None`.
fn openai_text_content(mut texts: Vec<String>) -> Option<Value> {
    match texts.len() {
        0 => None,
        1 => texts.pop().map(Value::String),
        _ => Some(Value::Array(
            texts
                .into_iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect(),
        )),
    }
}

fn copy_number(from: &mut Object, key: &str, to: &mut Object, to_key: &str) -> Result<()> {
    match from.remove(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v @ Value::Number(_)) => {
            to.insert(to_key.to_owned(), v);
            Ok(())
        }
        Some(v) => Err(TranslateError::invalid(
            key,
            format!("must be a number, not {}", type_name(&v)),
        )),
    }
}

// ---------------------------------------------------------------------------
// Anthropic → OpenAI

/// An Anthropic Messages request → an OpenAI Chat Completions request, with
/// `max_tokens` sent as `max_completion_tokens`.
pub fn anthropic_to_openai(body: &[u8]) -> Result<Vec<u8>> {
    anthropic_to_openai_with(body, &OpenAiOptions::default())
}

/// [`anthropic_to_openai`] with a choice of how the OpenAI request is written.
///
/// A streamed request asks for `stream_options.include_usage`: Anthropic's
/// `message_delta` carries the usage, and only the usage chunk supplies it.
pub fn anthropic_to_openai_with(body: &[u8], options: &OpenAiOptions) -> Result<Vec<u8>> {
    let mut req = parse_object(body)?;
    let mut out = Object::new();
    let model = take_string(&mut req, "model", "body")
        .map_err(|_| TranslateError::invalid("model", "required string is missing"))?;
    out.insert("model".into(), Value::String(model));

    let mut messages = Vec::new();
    match req.remove("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.into_iter().enumerate() {
                let path = format!("system[{k}]");
                let mut b = into_object(block, &path)?;
                let ty = block_type(&b, &path)?;
                if ty != "text" {
                    return Err(TranslateError::unsupported(
                        path,
                        format!("system block type '{ty}' has no OpenAI equivalent"),
                    ));
                }
                texts.push(take_string(&mut b, "text", &path)?);
            }
            if let Some(content) = openai_text_content(texts) {
                messages.push(json!({"role": "system", "content": content}));
            }
        }
        Some(v) => {
            return Err(TranslateError::invalid(
                "system",
                format!(
                    "must be a string or an array of text blocks, not {}",
                    type_name(&v)
                ),
            ))
        }
    }
    let turns = take_array(&mut req, "messages", "")?
        .ok_or_else(|| TranslateError::invalid("messages", "required array is missing"))?;
    for (i, turn) in turns.into_iter().enumerate() {
        anthropic_turn(turn, i, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    let max_key = match options.max_tokens_field {
        MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        MaxTokensField::MaxTokens => "max_tokens",
    };
    copy_number(&mut req, "max_tokens", &mut out, max_key)?;
    copy_number(&mut req, "temperature", &mut out, "temperature")?;
    copy_number(&mut req, "top_p", &mut out, "top_p")?;
    if let Some(stops) = take_array(&mut req, "stop_sequences", "")? {
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops));
        }
    }
    match req.remove("stream") {
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(v) => {
            return Err(TranslateError::invalid(
                "stream",
                format!("must be a boolean, not {}", type_name(&v)),
            ))
        }
    }
    if let Some(Value::Object(mut m)) = req.remove("metadata") {
        if let Some(user) = take_opt_string(&mut m, "user_id", "metadata")? {
            out.insert("user".into(), Value::String(user));
        }
    }

    let mut has_tools = false;
    if let Some(tools) = take_array(&mut req, "tools", "")? {
        let mut list = Vec::with_capacity(tools.len());
        for (k, tool) in tools.into_iter().enumerate() {
            list.push(anthropic_tool(tool, k)?);
        }
        has_tools = !list.is_empty();
        if has_tools {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    match req.remove("tool_choice") {
        None | Some(Value::Null) => {}
        Some(choice) => {
            let mut c = into_object(choice, "tool_choice")?;
            let ty = block_type(&c, "tool_choice")?;
            let mapped = match ty.as_str() {
                "auto" => json!("auto"),
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => {
                    let name = take_string(&mut c, "name", "tool_choice")?;
                    json!({"type": "function", "function": {"name": name}})
                }
                other => {
                    return Err(TranslateError::invalid(
                        "tool_choice.type",
                        format!("unknown tool choice '{other}' (auto, any, tool or none)"),
                    ))
                }
            };
            // OpenAI refuses tool_choice and parallel_tool_calls without tools.
            if has_tools {
                out.insert("tool_choice".into(), mapped);
                if c.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                    out.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
            }
        }
    }
    serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::json("translated request", &e))
}

fn anthropic_tool(tool: Value, k: usize) -> Result<Value> {
    let path = format!("tools[{k}]");
    let mut t = into_object(tool, &path)?;
    if let Some(ty) = t.get("type").and_then(Value::as_str) {
        if ty != "custom" {
            return Err(TranslateError::unsupported(
                format!("{path}.type"),
                format!("server tool '{ty}' has no OpenAI equivalent"),
            ));
        }
    }
    let name = take_string(&mut t, "name", &path)?;
    let mut function = Object::new();
    function.insert("name".into(), Value::String(name));
    if let Some(d) = take_opt_string(&mut t, "description", &path)? {
        function.insert("description".into(), Value::String(d));
    }
    let schema = match t.remove("input_schema") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(s @ Value::Object(_)) => s,
        Some(v) => {
            return Err(TranslateError::invalid(
                format!("{path}.input_schema"),
                format!("must be an object, not {}", type_name(&v)),
            ))
        }
    };
    function.insert("parameters".into(), schema);
    Ok(json!({"type": "function", "function": function}))
}

/// `data:<media type>;base64,<data>`.
fn data_url(media_type: &str, data: &str) -> String {
    let mut url = String::with_capacity(13 + media_type.len() + data.len());
    url.push_str("data:");
    url.push_str(media_type);
    url.push_str(";base64,");
    url.push_str(data);
    url
}

/// An Anthropic `image` block → an OpenAI `image_url` part.
fn anthropic_image(mut b: Object, path: &str) -> Result<Value> {
    let spath = format!("{path}.source");
    let mut source = into_object(b.remove("source").unwrap_or(Value::Null), &spath)?;
    let url = match block_type(&source, &spath)?.as_str() {
        "base64" => {
            let media = take_string(&mut source, "media_type", &spath)?;
            let data = take_string(&mut source, "data", &spath)?;
            data_url(&media, &data)
        }
        "url" => take_string(&mut source, "url", &spath)?,
        other => {
            return Err(TranslateError::unsupported(
                format!("{spath}.type"),
                format!("image source '{other}' has no OpenAI equivalent"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// An Anthropic `document` block → an OpenAI `file` part (base64 PDF) or a
/// text part (plain-text source).
fn anthropic_document(mut b: Object, path: &str) -> Result<Value> {
    let spath = format!("{path}.source");
    let mut source = into_object(b.remove("source").unwrap_or(Value::Null), &spath)?;
    match block_type(&source, &spath)?.as_str() {
        "base64" => {
            let media = take_string(&mut source, "media_type", &spath)?;
            let data = take_string(&mut source, "data", &spath)?;
            let mut file = Object::new();
            if let Some(title) = take_opt_string(&mut b, "title", path)? {
                file.insert("filename".into(), Value::String(title));
            }
            file.insert("file_data".into(), Value::String(data_url(&media, &data)));
            Ok(json!({"type": "file", "file": file}))
        }
        "text" => {
            let text = take_string(&mut source, "data", &spath)?;
            Ok(json!({"type": "text", "text": text}))
        }
        other => Err(TranslateError::unsupported(
            format!("{spath}.type"),
            format!("document source '{other}' has no OpenAI equivalent"),
        )),
    }
}

/// One Anthropic turn → one or more OpenAI messages. A user turn's
/// `tool_result` blocks become `role: tool` messages placed first (OpenAI
/// wants them right after the assistant's `tool_calls`), and the rest of
/// the turn a user message after them; images inside tool results move to
/// that user message, since tool messages carry only text.
fn anthropic_turn(turn: Value, i: usize, messages: &mut Vec<Value>) -> Result<()> {
    let path = format!("messages[{i}]");
    let mut m = into_object(turn, &path)?;
    let role = take_string(&mut m, "role", &path)?;
    if role != "user" && role != "assistant" {
        return Err(TranslateError::invalid(
            format!("{path}.role"),
            format!("must be 'user' or 'assistant', not '{role}'"),
        ));
    }
    let blocks = match m.remove("content") {
        Some(Value::String(s)) => {
            messages.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        Some(v) => {
            return Err(TranslateError::invalid(
                format!("{path}.content"),
                format!(
                    "must be a string or an array of blocks, not {}",
                    type_name(&v)
                ),
            ))
        }
        None => {
            return Err(TranslateError::invalid(
                format!("{path}.content"),
                "required field is missing",
            ))
        }
    };
    if role == "assistant" {
        return anthropic_assistant(blocks, &path, messages);
    }
    let mut parts: Vec<Value> = Vec::new();
    let mut moved_images: Vec<Value> = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let mut b = into_object(block, &bpath)?;
        match block_type(&b, &bpath)?.as_str() {
            "text" => {
                let text = take_string(&mut b, "text", &bpath)?;
                parts.push(json!({"type": "text", "text": text}));
            }
            "image" => parts.push(anthropic_image(b, &bpath)?),
            "document" => parts.push(anthropic_document(b, &bpath)?),
            "tool_result" => {
                let id = take_string(&mut b, "tool_use_id", &bpath)?;
                let content = tool_result_content(&mut b, &bpath, &mut moved_images)?;
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            // Reasoning belongs to the assistant; nothing to carry over.
            "thinking" | "redacted_thinking" => {}
            "tool_use" => {
                return Err(TranslateError::invalid(
                    bpath,
                    "tool_use blocks belong in assistant turns",
                ))
            }
            other => {
                return Err(TranslateError::invalid(
                    bpath,
                    format!("unknown block type '{other}'"),
                ))
            }
        }
    }
    parts.append(&mut moved_images);
    if parts.is_empty() {
        return Ok(());
    }
    let content = if parts.len() == 1 && parts[0]["type"] == "text" {
        parts
            .pop()
            .and_then(|mut p| p.get_mut("text").map(Value::take))
    } else {
        None
    };
    let content = content.unwrap_or(Value::Array(parts));
    messages.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn tool_result_content(b: &mut Object, path: &str, images: &mut Vec<Value>) -> Result<Value> {
    match b.remove("content") {
        None | Some(Value::Null) => Ok(Value::String(String::new())),
        Some(s @ Value::String(_)) => Ok(s),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.into_iter().enumerate() {
                let cpath = format!("{path}.content[{k}]");
                let mut c = into_object(block, &cpath)?;
                match block_type(&c, &cpath)?.as_str() {
                    "text" => texts.push(take_string(&mut c, "text", &cpath)?),
                    "image" => images.push(anthropic_image(c, &cpath)?),
                    "document" => images.push(anthropic_document(c, &cpath)?),
                    other => {
                        return Err(TranslateError::invalid(
                            cpath,
                            format!("unknown block type '{other}'"),
                        ))
                    }
                }
            }
            Ok(openai_text_content(texts).unwrap_or_else(|| Value::String(String::new())))
        }
        Some(v) => Err(TranslateError::invalid(
            format!("{path}.content"),
            format!(
                "must be a string or an array of blocks, not {}",
                type_name(&v)
            ),
        )),
    }
}

fn anthropic_assistant(blocks: Vec<Value>, path: &str, messages: &mut Vec<Value>) -> Result<()> {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let mut b = into_object(block, &bpath)?;
        match block_type(&b, &bpath)?.as_str() {
            "text" => texts.push(take_string(&mut b, "text", &bpath)?),
            "tool_use" => {
                let id = take_string(&mut b, "id", &bpath)?;
                let name = take_string(&mut b, "name", &bpath)?;
                let input = b.remove("input").unwrap_or_else(|| json!({}));
                let arguments = serde_json::to_string(&input)
                    .map_err(|e| TranslateError::json("tool input", &e))?;
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }));
            }
            // OpenAI has no field for earlier reasoning; it is not needed
            // to continue the conversation there.
            "thinking" | "redacted_thinking" => {}
            "tool_result" => {
                return Err(TranslateError::invalid(
                    bpath,
                    "tool_result blocks belong in user turns",
                ))
            }
            other => {
                return Err(TranslateError::invalid(
                    bpath,
                    format!("unknown block type '{other}'"),
                ))
            }
        }
    }
    let mut m = Object::new();
    m.insert("role".into(), json!("assistant"));
    let content = openai_text_content(texts);
    if calls.is_empty() {
        m.insert(
            "content".into(),
            content.unwrap_or_else(|| Value::String(String::new())),
        );
    } else {
        m.insert("content".into(), content.unwrap_or(Value::Null));
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    messages.push(Value::Object(m));
    Ok(())
}

// ---------------------------------------------------------------------------
// OpenAI → Anthropic

/// One Anthropic turn being built; consecutive OpenAI messages that map to
/// the same role (tool results, a user message after them) merge into it.
struct Turn {
    role: &'static str,
    /// A lone string content, kept as a string while nothing joins it.
    text: Option<String>,
    blocks: Vec<Value>,
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, text: Option<String>, blocks: Vec<Value>) {
    if text.is_none() && blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last.role == role {
            if let Some(t) = last.text.take() {
                last.blocks.push(json!({"type": "text", "text": t}));
            }
            if let Some(t) = text {
                last.blocks.push(json!({"type": "text", "text": t}));
            }
            last.blocks.extend(blocks);
            return;
        }
    }
    turns.push(Turn { role, text, blocks });
}

/// Anthropic tool ids must match `^[a-zA-Z0-9_-]+$`; other characters
/// become `_`, the same way for a call and its result so they still pair.
fn anthropic_tool_id(id: String) -> String {
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return id;
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An OpenAI Chat Completions request → an Anthropic Messages request.
/// `max_tokens` is required there: `max_completion_tokens`, else
/// `max_tokens`, else `default_max_tokens`. System and developer messages
/// are lifted into `system`, in order, wherever they stood. `temperature`
/// is clamped to Anthropic's 0..=1.
pub fn openai_to_anthropic(body: &[u8], default_max_tokens: u32) -> Result<Vec<u8>> {
    let mut req = parse_object(body)?;
    let mut out = Object::new();
    let model = take_string(&mut req, "model", "body")
        .map_err(|_| TranslateError::invalid("model", "required string is missing"))?;
    out.insert("model".into(), Value::String(model));

    let max_tokens = match (
        req.remove("max_completion_tokens"),
        req.remove("max_tokens"),
    ) {
        (Some(v), _) if !v.is_null() => positive(&v, "max_completion_tokens")?,
        (_, Some(v)) if !v.is_null() => positive(&v, "max_tokens")?,
        _ => u64::from(default_max_tokens),
    };
    out.insert("max_tokens".into(), json!(max_tokens));

    let messages = take_array(&mut req, "messages", "")?
        .ok_or_else(|| TranslateError::invalid("messages", "required array is missing"))?;
    let mut system: Vec<String> = Vec::new();
    // `system` stays a plain string only for exactly one string message.
    let mut system_blocks = false;
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    for (i, message) in messages.into_iter().enumerate() {
        let path = format!("messages[{i}]");
        let mut m = into_object(message, &path)?;
        let role = take_string(&mut m, "role", &path)?;
        match role.as_str() {
            "system" | "developer" => match m.remove("content") {
                Some(Value::String(s)) => system.push(s),
                Some(Value::Array(parts)) => {
                    system_blocks = true;
                    for (j, part) in parts.into_iter().enumerate() {
                        let ppath = format!("{path}.content[{j}]");
                        let mut p = into_object(part, &ppath)?;
                        match block_type(&p, &ppath)?.as_str() {
                            "text" => system.push(take_string(&mut p, "text", &ppath)?),
                            other => {
                                return Err(TranslateError::unsupported(
                                    ppath,
                                    format!(
                                        "part type '{other}' is not allowed in a system prompt"
                                    ),
                                ))
                            }
                        }
                    }
                }
                v => return Err(content_error(&path, v.as_ref())),
            },
            "user" => {
                let (text, blocks) = match m.remove("content") {
                    Some(Value::String(s)) => (Some(s), Vec::new()),
                    Some(Value::Array(parts)) => (None, openai_user_parts(parts, &path)?),
                    v => return Err(content_error(&path, v.as_ref())),
                };
                push_turn(&mut turns, "user", text, blocks);
            }
            "assistant" => {
                let (text, blocks) = openai_assistant(&mut m, &path)?;
                push_turn(&mut turns, "assistant", text, blocks);
            }
            "tool" => {
                let id = anthropic_tool_id(take_string(&mut m, "tool_call_id", &path)?);
                let content = openai_tool_content(&mut m, &path)?;
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": content});
                push_turn(&mut turns, "user", None, vec![block]);
            }
            "function" => {
                return Err(TranslateError::unsupported(
                    format!("{path}.role"),
                    "the deprecated 'function' role is not supported; use tools",
                ))
            }
            other => {
                return Err(TranslateError::invalid(
                    format!("{path}.role"),
                    format!("unknown role '{other}'"),
                ))
            }
        }
    }
    match (system.len(), system_blocks) {
        (0, _) => {}
        (1, false) => {
            out.insert("system".into(), Value::String(system.remove(0)));
        }
        _ => {
            let blocks = system
                .into_iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            out.insert("system".into(), Value::Array(blocks));
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|t| {
            let content = match t.text {
                Some(text) => Value::String(text),
                None => Value::Array(t.blocks),
            };
            json!({"role": t.role, "content": content})
        })
        .collect();
    out.insert("messages".into(), Value::Array(messages));

    match req.remove("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => {
            return Err(TranslateError::unsupported(
                "n",
                "Anthropic answers with one choice; only n = 1 is supported",
            ))
        }
    }
    match req.remove("temperature") {
        None | Some(Value::Null) => {}
        Some(Value::Number(t)) => {
            let t = t.as_f64().unwrap_or(1.0).clamp(0.0, 1.0);
            out.insert("temperature".into(), json!(t));
        }
        Some(v) => {
            return Err(TranslateError::invalid(
                "temperature",
                format!("must be a number, not {}", type_name(&v)),
            ))
        }
    }
    copy_number(&mut req, "top_p", &mut out, "top_p")?;
    match req.remove("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            if let Some(k) = a.iter().position(|s| !s.is_string()) {
                return Err(TranslateError::invalid(
                    format!("stop[{k}]"),
                    "must be a string",
                ));
            }
            if !a.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(a));
            }
        }
        Some(v) => {
            return Err(TranslateError::invalid(
                "stop",
                format!(
                    "must be a string or an array of strings, not {}",
                    type_name(&v)
                ),
            ))
        }
    }
    match req.remove("stream") {
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), Value::Bool(true));
        }
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(v) => {
            return Err(TranslateError::invalid(
                "stream",
                format!("must be a boolean, not {}", type_name(&v)),
            ))
        }
    }
    if let Some(user) = take_opt_string(&mut req, "user", "body")
        .map_err(|_| TranslateError::invalid("user", "must be a string"))?
    {
        out.insert("metadata".into(), json!({"user_id": user}));
    }

    let mut has_tools = false;
    if let Some(tools) = take_array(&mut req, "tools", "")? {
        let mut list = Vec::with_capacity(tools.len());
        for (k, tool) in tools.into_iter().enumerate() {
            list.push(openai_tool(tool, k)?);
        }
        has_tools = !list.is_empty();
        if has_tools {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    let parallel = req.remove("parallel_tool_calls");
    let mut choice = match req.remove("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => {
                return Err(TranslateError::invalid(
                    "tool_choice",
                    format!("unknown tool choice '{other}' (auto, required or none)"),
                ))
            }
        }),
        Some(v) => {
            let mut c = into_object(v, "tool_choice")?;
            let ty = block_type(&c, "tool_choice")?;
            if ty != "function" {
                return Err(TranslateError::unsupported(
                    "tool_choice.type",
                    format!("tool choice '{ty}' has no Anthropic equivalent"),
                ));
            }
            let mut f = into_object(
                c.remove("function").unwrap_or(Value::Null),
                "tool_choice.function",
            )?;
            let name = take_string(&mut f, "name", "tool_choice.function")?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if parallel == Some(Value::Bool(false)) && has_tools {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    // Anthropic refuses a tool_choice without tools.
    if let (Some(c), true) = (choice, has_tools) {
        out.insert("tool_choice".into(), c);
    }
    serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TranslateError::json("translated request", &e))
}

/// A tool message's content → a `tool_result` content (a string or text
/// blocks).
fn openai_tool_content(m: &mut Object, path: &str) -> Result<Value> {
    let parts = match m.remove("content") {
        None | Some(Value::Null) => return Ok(Value::String(String::new())),
        Some(s @ Value::String(_)) => return Ok(s),
        Some(Value::Array(parts)) => parts,
        Some(v) => return Err(content_error(path, Some(&v))),
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let ppath = format!("{path}.content[{j}]");
        let mut p = into_object(part, &ppath)?;
        match block_type(&p, &ppath)?.as_str() {
            "text" => {
                let text = take_string(&mut p, "text", &ppath)?;
                blocks.push(json!({"type": "text", "text": text}));
            }
            other => {
                return Err(TranslateError::unsupported(
                    ppath,
                    format!("part type '{other}' is not allowed in a tool message"),
                ))
            }
        }
    }
    Ok(Value::Array(blocks))
}

fn positive(v: &Value, path: &str) -> Result<u64> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(TranslateError::invalid(path, "must be a positive integer")),
    }
}

fn content_error(path: &str, v: Option<&Value>) -> TranslateError {
    TranslateError::invalid(
        format!("{path}.content"),
        match v {
            None => "required field is missing".to_owned(),
            Some(v) => format!(
                "must be a string or an array of parts, not {}",
                type_name(v)
            ),
        },
    )
}

/// A `data:` URL → (media type, base64 data).
fn split_data_url<'a>(url: &'a str, path: &str) -> Result<(&'a str, &'a str)> {
    url.strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .ok_or_else(|| {
            TranslateError::unsupported(
                path,
                "only base64 data: URLs and http(s) URLs are supported",
            )
        })
}

fn openai_image(mut p: Object, path: &str) -> Result<Value> {
    let ipath = format!("{path}.image_url");
    let url = match p.remove("image_url") {
        // Some clients send the URL as a bare string.
        Some(Value::String(u)) => u,
        Some(v) => take_string(&mut into_object(v, &ipath)?, "url", &ipath)?,
        None => return Err(TranslateError::invalid(ipath, "required object is missing")),
    };
    if url.starts_with("data:") {
        let (media, data) = split_data_url(&url, &format!("{ipath}.url"))?;
        Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        )
    } else {
        Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
    }
}

fn openai_file(mut p: Object, path: &str) -> Result<Value> {
    let fpath = format!("{path}.file");
    let mut f = into_object(p.remove("file").unwrap_or(Value::Null), &fpath)?;
    let Some(data_url) = take_opt_string(&mut f, "file_data", &fpath)? else {
        return Err(TranslateError::unsupported(
            fpath,
            "only inline file_data is supported (Anthropic cannot see OpenAI file ids)",
        ));
    };
    let (media, data) = split_data_url(&data_url, &format!("{fpath}.file_data"))?;
    let mut doc = json!({"type": "document", "source": {"type": "base64", "media_type": media, "data": data}});
    if let Some(name) = take_opt_string(&mut f, "filename", &fpath)? {
        doc["title"] = Value::String(name);
    }
    Ok(doc)
}

fn openai_user_parts(parts: Vec<Value>, path: &str) -> Result<Vec<Value>> {
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let ppath = format!("{path}.content[{j}]");
        let mut p = into_object(part, &ppath)?;
        match block_type(&p, &ppath)?.as_str() {
            "text" => {
                let text = take_string(&mut p, "text", &ppath)?;
                blocks.push(json!({"type": "text", "text": text}));
            }
            "image_url" => blocks.push(openai_image(p, &ppath)?),
            "file" => blocks.push(openai_file(p, &ppath)?),
            "input_audio" => {
                return Err(TranslateError::unsupported(
                    ppath,
                    "audio input has no Anthropic equivalent",
                ))
            }
            other => {
                return Err(TranslateError::invalid(
                    ppath,
                    format!("unknown part type '{other}'"),
                ))
            }
        }
    }
    Ok(blocks)
}

/// An assistant message → a plain text (string content, no tool calls) or
/// content blocks.
fn openai_assistant(m: &mut Object, path: &str) -> Result<(Option<String>, Vec<Value>)> {
    if m.get("function_call").is_some_and(|f| !f.is_null()) {
        return Err(TranslateError::unsupported(
            format!("{path}.function_call"),
            "the deprecated function_call is not supported; use tool_calls",
        ));
    }
    let mut blocks = Vec::new();
    let no_calls = m
        .get("tool_calls")
        .is_none_or(|c| c.as_array().is_none_or(Vec::is_empty));
    if no_calls {
        if let Some(Value::String(s)) = m.get_mut("content") {
            // Anthropic refuses empty content: an empty turn is left out.
            let text = std::mem::take(s);
            return Ok(((!text.is_empty()).then_some(text), blocks));
        }
    }
    let push_text = |blocks: &mut Vec<Value>, text: String| {
        // Anthropic refuses empty text blocks.
        if !text.is_empty() {
            blocks.push(json!({"type": "text", "text": text}));
        }
    };
    match m.remove("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => push_text(&mut blocks, s),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.into_iter().enumerate() {
                let ppath = format!("{path}.content[{j}]");
                let mut p = into_object(part, &ppath)?;
                match block_type(&p, &ppath)?.as_str() {
                    "text" => push_text(&mut blocks, take_string(&mut p, "text", &ppath)?),
                    "refusal" => push_text(&mut blocks, take_string(&mut p, "refusal", &ppath)?),
                    other => {
                        return Err(TranslateError::invalid(
                            ppath,
                            format!("unknown part type '{other}'"),
                        ))
                    }
                }
            }
        }
        Some(v) => return Err(content_error(path, Some(&v))),
    }
    if let Some(calls) = take_array(m, "tool_calls", path)? {
        for (k, call) in calls.into_iter().enumerate() {
            let cpath = format!("{path}.tool_calls[{k}]");
            let mut c = into_object(call, &cpath)?;
            let id = anthropic_tool_id(take_string(&mut c, "id", &cpath)?);
            let fpath = format!("{cpath}.function");
            let mut f = into_object(c.remove("function").unwrap_or(Value::Null), &fpath)?;
            let name = take_string(&mut f, "name", &fpath)?;
            let arguments = take_opt_string(&mut f, "arguments", &fpath)?.unwrap_or_default();
            let input = if arguments.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str::<Value>(&arguments) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return Err(TranslateError::invalid(
                            format!("{fpath}.arguments"),
                            "must be a JSON object encoded as a string",
                        ))
                    }
                }
            };
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok((None, blocks))
}

fn openai_tool(tool: Value, k: usize) -> Result<Value> {
    let path = format!("tools[{k}]");
    let mut t = into_object(tool, &path)?;
    let ty = block_type(&t, &path)?;
    if ty != "function" {
        return Err(TranslateError::unsupported(
            format!("{path}.type"),
            format!("tool type '{ty}' has no Anthropic equivalent"),
        ));
    }
    let fpath = format!("{path}.function");
    let mut f = into_object(t.remove("function").unwrap_or(Value::Null), &fpath)?;
    let mut out = Object::new();
    out.insert(
        "name".into(),
        Value::String(take_string(&mut f, "name", &fpath)?),
    );
    if let Some(d) = take_opt_string(&mut f, "description", &fpath)? {
        out.insert("description".into(), Value::String(d));
    }
    let schema = match f.remove("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(s @ Value::Object(_)) => s,
        Some(v) => {
            return Err(TranslateError::invalid(
                format!("{fpath}.parameters"),
                format!("must be an object, not {}", type_name(&v)),
            ))
        }
    };
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}
