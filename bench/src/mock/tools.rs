//! Tool-call answers, in both wire shapes.
//!
//! A chat request (`/v1/chat/completions` or `/v1/messages`) that declares
//! `tools` and carries `x-mock-tool-call: NAME` is answered with one call
//! of NAME with the arguments [`TOOL_ARGUMENTS`] instead of text: OpenAI
//! `tool_calls` (`finish_reason: tool_calls`) or an Anthropic `tool_use`
//! block (`stop_reason: tool_use`). Streamed, the arguments come as two
//! fragments — the content items the script's gaps, stalls and disconnects
//! count — after an opening event that names the call. Completion tokens
//! are the tokens of the arguments text; the prompt is counted as for text.

use serde_json::Value;

use super::anthropic::{end_events, message_body, message_start, Usage};
use super::http::Head;
use super::plan::{json_str, sse, EventPlan, Items};
use super::reply::{usage_json, Ctx, Reply, StreamPlan};
use super::script::Script;
use super::tokens;

/// The request header that asks for a tool call answer; its value is the
/// name of the tool to call (not checked against the request's `tools`).
pub const TOOL_CALL_HEADER: &str = "x-mock-tool-call";

/// The arguments of every mock tool call, as a JSON text.
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

/// [`TOOL_ARGUMENTS`] as streamed, in order.
const FRAGMENTS: [&str; 2] = [r#"{"city":"#, r#""Paris"}"#];

/// The tool to call, when the header asks for one and the request has tools.
pub(crate) fn requested<'h>(head: &'h Head, request: &Value) -> Option<&'h str> {
    let name = head.header(TOOL_CALL_HEADER)?.trim();
    let has_tools = request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    (has_tools && !name.is_empty()).then_some(name)
}

fn output_tokens(model: &str) -> usize {
    tokens::count_tokens(model, TOOL_ARGUMENTS)
}

/// The Anthropic answer: a `tool_use` block with id `toolu_mock<n>`.
pub(crate) fn anthropic(id: &str, model: &str, name: &str, usage: &Usage, stream: bool) -> Reply {
    let tool_id = format!("toolu_{}", id.trim_start_matches("msg_"));
    let output = output_tokens(model);
    if !stream {
        let content = format!(
            "[{{\"type\":\"tool_use\",\"id\":{},\"name\":{},\"input\":{TOOL_ARGUMENTS}}}]",
            json_str(&tool_id),
            json_str(name)
        );
        return Reply::Full {
            status: 200,
            retry_after: None,
            body: message_body(id, model, &content, "tool_use", output, usage).into_bytes(),
        };
    }
    let delta = |partial: &str| {
        sse(
            Some("content_block_delta"),
            &format!(
                "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\
                 \"partial_json\":{}}}}}",
                json_str(partial)
            ),
        )
    };
    let start = [
        message_start(id, model, usage),
        sse(
            Some("content_block_start"),
            &format!(
                "{{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"tool_use\",\
                 \"id\":{},\"name\":{},\"input\":{{}}}}}}",
                json_str(&tool_id),
                json_str(name)
            ),
        ),
        // Anthropic opens every tool input with an empty fragment.
        delta(""),
    ];
    let items = Items::Fixed(FRAGMENTS.iter().map(|f| delta(f)).collect());
    let [message_delta, message_stop] = end_events("tool_use", output, usage);
    let end = [
        sse(
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        message_delta,
        message_stop,
    ];
    Reply::Stream(StreamPlan::Events(EventPlan::new(&start, items, &end)))
}

/// The OpenAI chat answer, or `None` when the request did not ask for a
/// tool call: `tool_calls` with one call, id `call_mock<n>`.
pub(crate) fn openai_tool_call(
    head: &Head,
    model: &str,
    request: &Value,
    script: &Script,
    ctx: &Ctx,
) -> Option<Reply> {
    let name = requested(head, request)?;
    let prompt = tokens::prompt_tokens_chat(model, request);
    let output = output_tokens(model);
    let usage = (!script.omit_usage).then(|| usage_json(prompt, output, script.cached_tokens));
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let call_id = json_str(&format!("call_mock{}", ctx.id));
    let name = json_str(name);
    let object = if stream {
        "chat.completion.chunk"
    } else {
        "chat.completion"
    };
    let head = format!(
        "{{\"id\":\"chatcmpl-mock{}\",\"object\":\"{object}\",\"created\":{},\"model\":{},\
         \"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[",
        ctx.id,
        ctx.created,
        json_str(model)
    );
    if !stream {
        let mut body = format!(
            "{head}{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[\
             {{\"id\":{call_id},\"type\":\"function\",\"function\":{{\"name\":{name},\"arguments\":{}}}}}],\
             \"refusal\":null,\"annotations\":[]}},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}}]",
            json_str(TOOL_ARGUMENTS)
        );
        if let Some(usage) = usage {
            body.push_str(",\"usage\":");
            body.push_str(&usage);
        }
        body.push('}');
        return Some(Reply::Full {
            status: 200,
            retry_after: None,
            body: body.into_bytes(),
        });
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tail = if include_usage {
        "],\"usage\":null}"
    } else {
        "]}"
    };
    let chunk = |delta: &str, finish: &str| {
        sse(
            None,
            &format!(
                "{head}{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}{tail}"
            ),
        )
    };
    // As OpenAI does: the role chunk already names the call.
    let start = [chunk(
        &format!(
            "{{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{{\"index\":0,\"id\":{call_id},\
             \"type\":\"function\",\"function\":{{\"name\":{name},\"arguments\":\"\"}}}}],\"refusal\":null}}"
        ),
        "null",
    )];
    let items = Items::Fixed(
        FRAGMENTS
            .iter()
            .map(|f| {
                chunk(
                    &format!(
                        "{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{}}}}}]}}",
                        json_str(f)
                    ),
                    "null",
                )
            })
            .collect(),
    );
    let mut end = vec![chunk("{}", "\"tool_calls\"")];
    if let (true, Some(usage)) = (include_usage, usage) {
        end.push(sse(None, &format!("{head}],\"usage\":{usage}}}")));
    }
    end.push(sse(None, "[DONE]"));
    Some(Reply::Stream(StreamPlan::Events(EventPlan::new(
        &start, items, &end,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_make_the_arguments() {
        assert_eq!(FRAGMENTS.concat(), TOOL_ARGUMENTS);
        let v: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap_or(Value::Null);
        assert_eq!(v["city"], "Paris");
    }
}
