//! Whole responses and error bodies: OpenAI ⇄ Anthropic.
//!
//! In: the provider's body of a non-streamed answer (or of an error status).
//! Out: the body the client expects. The `model` shown is the one the client
//! asked for, not the provider's name for it. Error bodies never fail to
//! translate: a body that is not the expected JSON becomes the message.

use serde_json::{json, Map, Value};

use super::{
    anthropic_message_id, finish_reason_for, openai_completion_id, push_json_str, stop_reason_for,
    unix_now, TranslateError, Usage,
};

type Result<T> = std::result::Result<T, TranslateError>;

fn parse(body: &[u8], what: &'static str) -> Result<Value> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(TranslateError::invalid(what, "must be a JSON object")),
        Err(e) => Err(TranslateError::json(what, &e)),
    }
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

pub(crate) fn openai_usage(u: &Value) -> Usage {
    Usage {
        prompt: u64_at(u, "prompt_tokens"),
        completion: u64_at(u, "completion_tokens"),
        cached: u
            .get("prompt_tokens_details")
            .map_or(0, |d| u64_at(d, "cached_tokens")),
    }
}

/// A tool call's `arguments` string as an Anthropic `input`. Models can
/// emit arguments that are not JSON (cut off by the length limit); those
/// travel as the raw string rather than being lost.
fn tool_input(arguments: Option<&str>) -> Value {
    match arguments.map(str::trim) {
        None | Some("") => json!({}),
        Some(a) => serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.to_owned())),
    }
}

/// An OpenAI `chat.completion` → an Anthropic `message`. Only the first
/// choice is used (Anthropic has one).
pub fn openai_response_to_anthropic(body: &[u8], requested_model: &str) -> Result<Vec<u8>> {
    let v = parse(body, "response body")?;
    let id = anthropic_message_id(v.get("id").and_then(Value::as_str).unwrap_or(""));
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| TranslateError::invalid("choices", "the response has no choice"))?;
    let message = choice.get("message").ok_or_else(|| {
        TranslateError::invalid("choices[0].message", "required object is missing")
    })?;
    let mut content = Vec::new();
    match message.get("content") {
        Some(Value::String(s)) if !s.is_empty() => content.push(json!({"type": "text", "text": s})),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    content.push(json!({"type": "text", "text": t}));
                }
            }
        }
        _ => {}
    }
    let refusal = message.get("refusal").and_then(Value::as_str);
    if let Some(r) = refusal {
        content.push(json!({"type": "text", "text": r}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (k, call) in calls.iter().enumerate() {
            let f = call.get("function");
            let name = f
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let arguments = f.and_then(|f| f.get("arguments")).and_then(Value::as_str);
            let call_id = match call.get("id").and_then(Value::as_str) {
                Some(i) if !i.is_empty() => i.to_owned(),
                _ => format!("toolu_{}_{k}", id.trim_start_matches("msg_")),
            };
            content.push(json!({
                "type": "tool_use",
                "id": call_id,
                "name": name,
                "input": tool_input(arguments),
            }));
        }
    }
    let stop_reason = if refusal.is_some() {
        "refusal"
    } else {
        choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map_or("end_turn", stop_reason_for)
    };
    let usage = v.get("usage").map(openai_usage).unwrap_or_default();
    let out = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": usage.anthropic_input(),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached,
            "output_tokens": usage.completion,
        },
    });
    serde_json::to_vec(&out).map_err(|e| TranslateError::json("translated response", &e))
}

pub(crate) fn anthropic_usage(u: &Value) -> Usage {
    Usage::from_anthropic(
        u64_at(u, "input_tokens"),
        u64_at(u, "output_tokens"),
        u64_at(u, "cache_read_input_tokens"),
        u64_at(u, "cache_creation_input_tokens"),
    )
}

/// An Anthropic `message` → an OpenAI `chat.completion`. Text blocks are
/// concatenated (as their stream deltas would be), `tool_use` blocks become
/// `tool_calls` with their ids, thinking blocks are left out.
pub fn anthropic_response_to_openai(body: &[u8], requested_model: &str) -> Result<Vec<u8>> {
    let v = parse(body, "response body")?;
    let id = openai_completion_id(v.get("id").and_then(Value::as_str).unwrap_or(""));
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::invalid("content", "required array is missing"))?;
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for (k, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = block.get("text").and_then(Value::as_str).unwrap_or("");
                text.get_or_insert_with(String::new).push_str(t);
            }
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::invalid(
                        format!("content[{k}].name"),
                        "required string is missing",
                    )
                })?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                let arguments = serde_json::to_string(&input)
                    .map_err(|e| TranslateError::json("tool input", &e))?;
                calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }));
            }
            // thinking, redacted_thinking, server tool blocks: no OpenAI field.
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = match text {
        Some(t) => Value::String(t),
        None if calls.is_empty() => Value::String(String::new()),
        None => Value::Null,
    };
    message.insert("content".into(), content);
    message.insert("refusal".into(), Value::Null);
    message.insert("annotations".into(), json!([]));
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let finish_reason = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason_for);
    let usage = v.get("usage").map(anthropic_usage).unwrap_or_default();
    let out = json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": requested_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": usage.prompt,
            "completion_tokens": usage.completion,
            "total_tokens": usage.prompt + usage.completion,
            "prompt_tokens_details": {"cached_tokens": usage.cached},
        },
    });
    serde_json::to_vec(&out).map_err(|e| TranslateError::json("translated response", &e))
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// OpenAI's error `type` for an Anthropic error type.
fn openai_error_type(anthropic_type: &str) -> &'static str {
    match anthropic_type {
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_exceeded",
        "billing_error" => "insufficient_quota",
        "api_error" | "overloaded_error" | "timeout_error" => "server_error",
        _ => "invalid_request_error",
    }
}

/// The status to give an OpenAI client for an Anthropic status: 529
/// (overloaded) is not a registered HTTP status, 503 says the same.
pub fn openai_status_for_anthropic(status: u16) -> u16 {
    if status == 529 {
        503
    } else {
        status
    }
}

/// Longest non-JSON error body quoted in a translated message.
const MAX_QUOTED: usize = 512;

/// The message of an error body in either shape (or a few other common
/// ones), else the body itself, shortened, else a generic one.
fn error_message(v: Option<&Value>, body: &[u8], status: u16) -> String {
    let found = v.and_then(|v| {
        let e = v.get("error").unwrap_or(v);
        e.get("message")
            .and_then(Value::as_str)
            .or_else(|| e.as_str())
            .or_else(|| v.get("message").and_then(Value::as_str))
            .or_else(|| v.get("detail").and_then(Value::as_str))
            .map(str::to_owned)
    });
    if let Some(m) = found {
        return m;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || v.is_some() {
        return format!("provider answered {status}");
    }
    let mut end = text.len().min(MAX_QUOTED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// An OpenAI error body (any error status) → an Anthropic error body
/// `{"type":"error","error":{"type","message"}}`, typed by status.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let message = error_message(v.as_ref(), body, status);
    let mut out = Vec::with_capacity(64 + message.len());
    push_anthropic_error_json(&mut out, anthropic_error_type(status), &message);
    out
}

/// An Anthropic error body → an OpenAI error body
/// `{"error":{"message","type","param","code"}}`; `code` keeps Anthropic's
/// error type so nothing is lost.
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let message = error_message(v.as_ref(), body, status);
    let kind = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| anthropic_error_type(status));
    let mut out = Vec::with_capacity(96 + message.len());
    push_openai_error_json(&mut out, openai_error_type(kind), kind, &message);
    out
}

pub(crate) fn push_anthropic_error_json(out: &mut Vec<u8>, error_type: &str, message: &str) {
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    push_json_str(out, error_type);
    out.extend_from_slice(b",\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b"}}");
}

pub(crate) fn push_openai_error_json(
    out: &mut Vec<u8>,
    error_type: &str,
    code: &str,
    message: &str,
) {
    out.extend_from_slice(b"{\"error\":{\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b",\"type\":");
    push_json_str(out, error_type);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    push_json_str(out, code);
    out.extend_from_slice(b"}}");
}

/// Appends an Anthropic stream error event (`event: error`), for a stream
/// that fails after its head went out; `error_type` as from
/// [`anthropic_error_type`].
pub fn push_anthropic_error_event(out: &mut Vec<u8>, error_type: &str, message: &str) {
    out.extend_from_slice(b"event: error\ndata: ");
    push_anthropic_error_json(out, error_type, message);
    out.extend_from_slice(b"\n\n");
}

/// Appends an OpenAI stream error event (`data: {"error":…}`), which the
/// SDKs raise as an API error.
pub fn push_openai_error_event(out: &mut Vec<u8>, error_type: &str, code: &str, message: &str) {
    out.extend_from_slice(b"data: ");
    push_openai_error_json(out, error_type, code, message);
    out.extend_from_slice(b"\n\n");
}

/// The OpenAI error event for an Anthropic stream `error` event's fields.
pub(crate) fn push_openai_error_event_from_anthropic(out: &mut Vec<u8>, kind: &str, message: &str) {
    push_openai_error_event(out, openai_error_type(kind), kind, message);
}
