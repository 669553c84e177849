//! `POST /v1/messages`: the mock in Anthropic's Messages wire format.
//!
//! Same content, token counts and `x-mock-*` scripting as the OpenAI
//! endpoints, so a test can send one conversation both ways (or through
//! sluice's protocol translation) and expect the same numbers: the answer
//! is [`chat_content`](super::chat_content) of the script's chunk count
//! (capped by `max_tokens`, then `stop_reason: max_tokens`), one
//! `text_delta` per chunk when streamed; prompt tokens are counted by the
//! OpenAI recipe with the system prompt as a system message
//! ([`prompt_tokens_messages`]). Cached tokens are reported as
//! `cache_read_input_tokens` and left out of `input_tokens`, as Anthropic
//! does. Errors have Anthropic's shape and types; the key comes in
//! `x-api-key` or, as recent Anthropic SDKs send it, as a bearer token.
//! With `tools` and `x-mock-tool-call: NAME` the answer is a `tool_use`
//! block instead (see `tools`).

use std::fmt::Write as _;

use serde_json::Value;

use super::http::Head;
use super::plan::{json_str, sse, EventPlan, Items};
use super::reply::{Ctx, Reply, StreamPlan};
use super::script::Script;
use super::tokens;

/// The path this module answers.
pub(crate) const PATH: &str = "/v1/messages";

/// Prompt tokens of a Messages request: OpenAI's chat recipe
/// ([`prompt_tokens_chat`](super::prompt_tokens_chat)) over `messages`,
/// plus the `system` prompt (a string or text blocks) counted as one
/// leading system message — so a request translated from OpenAI's shape
/// counts the same as the original.
pub fn prompt_tokens_messages(model: &str, request: &Value) -> usize {
    let empty = Value::Array(Vec::new());
    let messages = request.get("messages").unwrap_or(&empty);
    let mut total = tokens::prompt_tokens_chat(model, messages);
    let system_text = |text: &str| tokens::count_tokens(model, text);
    match request.get("system") {
        Some(Value::String(s)) => total += 3 + system_text("system") + system_text(s),
        Some(Value::Array(blocks)) => {
            total += 3 + system_text("system");
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    total += system_text(t);
                }
            }
        }
        _ => {}
    }
    total
}

/// Anthropic's error `type` for a status.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type":"error","error":{"type":…,"message":…}}`
pub(crate) fn error_json(kind: &str, message: &str) -> String {
    format!(
        "{{\"type\":\"error\",\"error\":{{\"type\":{},\"message\":{}}}}}",
        json_str(kind),
        json_str(message)
    )
}

fn error(status: u16, message: &str) -> Reply {
    Reply::Full {
        status,
        retry_after: None,
        body: error_json(error_type(status), message).into_bytes(),
    }
}

/// Decides the script and reply for a request to [`PATH`].
pub(crate) fn respond(head: &Head, body: &[u8], defaults: &Script, ctx: &Ctx) -> (Script, Reply) {
    let script = match defaults.for_request(head) {
        Ok(s) => s,
        Err(msg) => return (defaults.clone(), error(400, &msg)),
    };
    let reply = route(head, body, &script, ctx);
    (script, reply)
}

fn route(head: &Head, body: &[u8], script: &Script, ctx: &Ctx) -> Reply {
    if head.method() != "POST" {
        let msg = format!("{} {PATH} is not supported; use POST.", head.method());
        return error(405, &msg);
    }
    if let Some(key) = ctx.api_key {
        // Anthropic's own header, or a bearer token: recent SDKs send the
        // API key that way.
        let given = head.header("x-api-key").or_else(|| {
            head.header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
        });
        if given.map(str::trim) != Some(key) {
            return error(401, "invalid x-api-key");
        }
    }
    if let Some(status) = script.status {
        return Reply::Full {
            status,
            retry_after: script.retry_after.clone(),
            body: error_json(
                error_type(status),
                &format!("mock: scripted status {status}"),
            )
            .into_bytes(),
        };
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(400, "The request body must be a JSON object."),
        Err(e) => return error(400, &format!("The request body is not valid JSON: {e}")),
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return error(400, "model: Field required");
    };
    let max_tokens = match request.get("max_tokens").map(Value::as_u64) {
        None => return error(400, "max_tokens: Field required"),
        Some(Some(n)) if n > 0 => n,
        Some(_) => return error(400, "max_tokens: must be a positive integer"),
    };
    if !request.get("messages").is_some_and(Value::is_array) {
        return error(400, "messages: Field required");
    }
    let prompt = prompt_tokens_messages(model, &request);
    let usage = Usage {
        prompt,
        cached: script.cached_tokens,
        omit: script.omit_usage,
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = format!("msg_mock{}", ctx.id);
    if let Some(name) = super::tools::requested(head, &request) {
        return super::tools::anthropic(&id, model, name, &usage, stream);
    }
    let (chunks, stop_reason) = if max_tokens < script.chunks as u64 {
        (max_tokens as usize, "max_tokens")
    } else {
        (script.chunks, "end_turn")
    };
    if stream {
        let end = end_events(stop_reason, chunks, &usage);
        let start = [
            message_start(&id, model, &usage),
            sse(
                Some("content_block_start"),
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
        ];
        let items = Items::Words {
            open: b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"".to_vec(),
            close: b"\"}}\n\n".to_vec(),
            count: chunks,
        };
        let mut all_end = vec![sse(
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":0}"#,
        )];
        all_end.extend(end);
        return Reply::Stream(StreamPlan::Events(EventPlan::new(&start, items, &all_end)));
    }
    let text = tokens::chat_content(chunks);
    let content = format!("[{{\"type\":\"text\",\"text\":{}}}]", json_str(&text));
    Reply::Full {
        status: 200,
        retry_after: None,
        body: message_body(&id, model, &content, stop_reason, chunks, &usage).into_bytes(),
    }
}

/// What the usage objects report.
pub(crate) struct Usage {
    /// Every prompt token (cached ones included), as OpenAI counts them.
    pub(crate) prompt: usize,
    /// Of which read from the cache.
    pub(crate) cached: u64,
    /// Leave usage out everywhere.
    pub(crate) omit: bool,
}

impl Usage {
    /// `{"input_tokens":…,"cache_creation_input_tokens":0,"cache_read_input_tokens":…,"output_tokens":…,"service_tier":"standard"}`
    fn json(&self, output: usize) -> String {
        let cached = self.cached.min(self.prompt as u64);
        format!(
            "{{\"input_tokens\":{},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":{cached},\
             \"output_tokens\":{output},\"service_tier\":\"standard\"}}",
            self.prompt as u64 - cached
        )
    }
}

/// A whole non-streamed `message` with `content` (a JSON array).
pub(crate) fn message_body(
    id: &str,
    model: &str,
    content: &str,
    stop_reason: &str,
    output: usize,
    usage: &Usage,
) -> String {
    let mut body = String::with_capacity(256 + content.len());
    let _ = write!(
        body,
        "{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":{content},\
         \"stop_reason\":{},\"stop_sequence\":null",
        json_str(id),
        json_str(model),
        json_str(stop_reason)
    );
    if !usage.omit {
        body.push_str(",\"usage\":");
        body.push_str(&usage.json(output));
    }
    body.push('}');
    body
}

/// `message_start`: the message with empty content and the input usage
/// (Anthropic reports one output token already).
pub(crate) fn message_start(id: &str, model: &str, usage: &Usage) -> Vec<u8> {
    let mut data = format!(
        "{{\"type\":\"message_start\",\"message\":{{\"id\":{},\"type\":\"message\",\"role\":\"assistant\",\
         \"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null",
        json_str(id),
        json_str(model)
    );
    if !usage.omit {
        data.push_str(",\"usage\":");
        data.push_str(&usage.json(1));
    }
    data.push_str("}}");
    sse(Some("message_start"), &data)
}

/// `message_delta` (stop reason, output tokens) and `message_stop`.
pub(crate) fn end_events(stop_reason: &str, output: usize, usage: &Usage) -> [Vec<u8>; 2] {
    let mut delta = format!(
        "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":{},\"stop_sequence\":null}}",
        json_str(stop_reason)
    );
    if !usage.omit {
        let _ = write!(delta, ",\"usage\":{{\"output_tokens\":{output}}}");
    }
    delta.push('}');
    [
        sse(Some("message_delta"), &delta),
        sse(Some("message_stop"), r#"{"type":"message_stop"}"#),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::http::parse_head;
    use serde_json::json;

    fn run(headers: &str, body: &str) -> Reply {
        let raw = format!("POST {PATH} HTTP/1.1\r\n{headers}\r\n");
        let Ok(Some((head, _))) = parse_head(raw.as_bytes()) else {
            panic!("head")
        };
        let ctx = Ctx {
            api_key: Some("sk-ant"),
            id: 7,
            created: 1_700_000_000,
        };
        respond(&head, body.as_bytes(), &Script::default(), &ctx).1
    }

    fn full(reply: Reply) -> (u16, Value) {
        match reply {
            Reply::Full { status, body, .. } => {
                (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
            }
            Reply::Stream(_) => panic!("expected a full reply"),
        }
    }

    const KEY: &str = "x-api-key: sk-ant\r\nanthropic-version: 2023-06-01\r\n";

    #[test]
    fn decision_order_and_error_shapes() {
        let ok = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}"#;
        let table = [
            ("", ok, 401, "authentication_error"),
            (
                "Authorization: Bearer sk-x\r\n",
                ok,
                401,
                "authentication_error",
            ),
            (
                "x-api-key: sk-x\r\nAuthorization: Bearer sk-ant\r\n",
                ok,
                401,
                "authentication_error",
            ),
            (
                "x-api-key: sk-ant\r\nx-mock-chunks: x\r\n",
                ok,
                400,
                "invalid_request_error",
            ),
            (
                "x-api-key: sk-ant\r\nx-mock-status: 529\r\n",
                "nope",
                529,
                "overloaded_error",
            ),
            (
                "x-api-key: sk-ant\r\nx-mock-status: 429\r\n",
                ok,
                429,
                "rate_limit_error",
            ),
            (
                "x-api-key: sk-ant\r\nx-mock-status: 500\r\n",
                ok,
                500,
                "api_error",
            ),
            (KEY, "nope", 400, "invalid_request_error"),
            (
                KEY,
                r#"{"max_tokens":5,"messages":[]}"#,
                400,
                "invalid_request_error",
            ),
            (
                KEY,
                r#"{"model":"m","messages":[]}"#,
                400,
                "invalid_request_error",
            ),
            (
                KEY,
                r#"{"model":"m","max_tokens":5}"#,
                400,
                "invalid_request_error",
            ),
        ];
        for (headers, body, status, kind) in table {
            let (got, v) = full(run(headers, body));
            assert_eq!(got, status, "{headers:?} {body}");
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], kind, "{v}");
            assert!(v["error"]["message"].is_string());
        }
        let (_, v) = full(run(KEY, r#"{"model":"m","messages":[]}"#));
        assert_eq!(v["error"]["message"], "max_tokens: Field required");
        let (status, _) = full(run(KEY, ok));
        assert_eq!(status, 200);
        let (status, _) = full(run("Authorization: Bearer sk-ant\r\n", ok));
        assert_eq!(status, 200);
    }

    #[test]
    fn message_body_shape() {
        let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 3, "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}]});
        let (status, v) = full(run(
            &format!("{KEY}x-mock-cached-tokens: 2\r\n"),
            &req.to_string(),
        ));
        assert_eq!(status, 200);
        let p = prompt_tokens_messages("claude-sonnet-4-5", &req);
        assert_eq!(
            v,
            json!({"id": "msg_mock7", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": tokens::chat_content(3)}],
                "stop_reason": "max_tokens", "stop_sequence": null,
                "usage": {"input_tokens": p - 2, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 2, "output_tokens": 3,
                    "service_tier": "standard"}})
        );
        let (_, v) = full(run(
            &format!("{KEY}x-mock-omit-usage: 1\r\n"),
            &req.to_string(),
        ));
        assert!(v.get("usage").is_none());
    }

    #[test]
    fn system_counts_as_a_system_message() {
        let m = "claude-x";
        let openai = json!({"messages": [
            {"role": "system", "content": "Rules."},
            {"role": "user", "content": "Hello there"}]});
        let anthropic = json!({"system": "Rules.", "messages": [
            {"role": "user", "content": "Hello there"}]});
        let blocks = json!({"system": [{"type": "text", "text": "Rules."}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]});
        let want = tokens::prompt_tokens_chat(m, &openai);
        assert_eq!(prompt_tokens_messages(m, &anthropic), want);
        assert_eq!(prompt_tokens_messages(m, &blocks), want);
    }
}
