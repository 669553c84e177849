//! Streamed answers: OpenAI chunks ⇄ Anthropic events, one event at a time.
//!
//! The relay splits the provider's body into SSE events (`sse`) and feeds
//! each one's event name and data to a state machine here, which appends
//! the client's events — complete, `\n\n`-terminated — to an output buffer
//! as soon as they can be known, so nothing is held back except where the
//! target protocol needs something that comes later (Anthropic's
//! `message_delta` carries the usage that OpenAI sends after its
//! `finish_reason`). Input data is parsed into borrowed views (no copy of
//! the text unless it has escapes); output JSON is written directly.
//!
//! Each machine keeps the [`Usage`] it saw (OpenAI terms) for accounting.
//! When the provider's body ends, [`OpenAiToAnthropicStream::finish`] /
//! [`AnthropicToOpenAiStream::finish`] say whether the answer was complete;
//! if not, the caller ends the client's stream with an error event
//! (`push_anthropic_error_event` / `push_openai_error_event`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::response::{push_anthropic_error_json, push_openai_error_event_from_anthropic};
use super::{
    anthropic_message_id, fallback_id, finish_reason_for, openai_completion_id, push_json_str,
    push_u64, stop_reason_for, unix_now, TranslateError, Usage,
};

fn trim(data: &[u8]) -> &[u8] {
    data.trim_ascii()
}

// ---------------------------------------------------------------------------
// OpenAI chunk, as much of it as is read.

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    /// Rare, and in several shapes: kept as a value.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl ChunkUsage {
    fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt_tokens.unwrap_or(0),
            completion: self.completion_tokens.unwrap_or(0),
            cached: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

/// The message of an error in an OpenAI stream, whatever its shape.
fn error_text(e: &Value) -> String {
    e.get("message")
        .and_then(Value::as_str)
        .or_else(|| e.as_str())
        .map_or_else(|| e.to_string(), str::to_owned)
}

// ---------------------------------------------------------------------------
// OpenAI → Anthropic

/// Turns an OpenAI chat completion stream into an Anthropic Messages stream.
///
/// `message_start` goes out with the first chunk; text deltas open a text
/// block, each tool call (by its OpenAI `index`) opens a `tool_use` block
/// whose argument fragments follow as `input_json_delta`s; a block closes
/// when another kind of content starts or the choice finishes. The
/// `message_delta` (stop reason and usage) and `message_stop` follow once
/// both the `finish_reason` and the usage chunk are in, or at `[DONE]`.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    model: String,
    id: String,
    started: bool,
    /// Index of the open content block, and whether it is text.
    open: Option<(u32, bool)>,
    next_block: u32,
    /// OpenAI tool call index → Anthropic block index.
    tools: Vec<(u32, u32)>,
    refused: bool,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    done: bool,
}

impl OpenAiToAnthropicStream {
    /// `model`: the name the client asked for, shown in `message_start`.
    pub fn new(model: &str) -> Self {
        OpenAiToAnthropicStream {
            model: model.to_owned(),
            id: String::new(),
            started: false,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            refused: false,
            stop_reason: None,
            usage: None,
            done: false,
        }
    }

    /// The provider's usage, once its usage chunk came.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// `message_stop` (or an error event) has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed one upstream event (`event` name if any, joined `data`). Empty
    /// data (comments, keep-alives) is skipped; `[DONE]` ends the message.
    /// `Err` only for data that is not JSON; the stream can go on.
    pub fn on_event(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        let data = trim(data);
        if self.done || data.is_empty() {
            return Ok(());
        }
        if data == b"[DONE]" {
            self.end(out);
            return Ok(());
        }
        if event == Some(b"error") {
            let message = match serde_json::from_slice::<Value>(data) {
                Ok(v) => error_text(v.get("error").unwrap_or(&v)),
                Err(_) => String::from_utf8_lossy(data).into_owned(),
            };
            self.error(&message, out);
            return Ok(());
        }
        let chunk: Chunk<'_> =
            serde_json::from_slice(data).map_err(|e| TranslateError::json("stream event", &e))?;
        if let Some(e) = &chunk.error {
            self.error(&error_text(e), out);
            return Ok(());
        }
        if !self.started {
            self.start(
                chunk.id.as_deref(),
                chunk.usage.as_ref().map(ChunkUsage::usage),
                out,
            );
        }
        for choice in chunk.choices.iter().flatten() {
            // One choice is asked for; a provider numbering from 0 agrees.
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = &choice.delta {
                if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                    self.text(text, out);
                }
                if let Some(text) = delta.refusal.as_deref().filter(|t| !t.is_empty()) {
                    self.refused = true;
                    self.text(text, out);
                }
                for call in delta.tool_calls.iter().flatten() {
                    self.tool_call(call, out);
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.close_block(out);
                self.stop_reason = Some(if self.refused {
                    "refusal"
                } else {
                    stop_reason_for(reason)
                });
            }
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some(u.usage());
        }
        if self.stop_reason.is_some() && self.usage.is_some() {
            self.end(out);
        }
        Ok(())
    }

    /// The provider's body ended. Writes what was held for the usage if the
    /// answer had finished; false when it had not (the caller then appends
    /// an error event: the client must not take a cut answer as whole).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        if !self.done && self.stop_reason.is_some() {
            self.end(out);
        }
        self.done
    }

    fn start(&mut self, upstream_id: Option<&str>, usage: Option<Usage>, out: &mut Vec<u8>) {
        self.started = true;
        self.id = match upstream_id {
            Some(id) if !id.is_empty() => anthropic_message_id(id),
            _ => anthropic_message_id(&fallback_id()),
        };
        let u = usage.unwrap_or_default();
        event(out, b"message_start", |out| {
            out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
            push_json_str(out, &self.id);
            out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
            push_json_str(out, &self.model);
            out.extend_from_slice(
                b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":",
            );
            push_anthropic_usage(out, &u);
            out.extend_from_slice(b"}}");
        });
    }

    /// Opens a block (the caller has closed the previous one).
    fn new_block(&mut self, text: bool) -> u32 {
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, text));
        index
    }

    /// Forget the open block without writing (the caller writes its stop).
    fn close_block_index(&mut self) -> Option<u32> {
        self.open.take().map(|(i, _)| i)
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(index) = self.close_block_index() {
            event(out, b"content_block_stop", |out| {
                out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
                push_u64(out, u64::from(index));
                out.push(b'}');
            });
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some((i, true)) => i,
            _ => {
                self.close_block(out);
                let i = self.new_block(true);
                event(out, b"content_block_start", |out| {
                    out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
                    push_u64(out, u64::from(i));
                    out.extend_from_slice(b",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}");
                });
                i
            }
        };
        event(out, b"content_block_delta", |out| {
            out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
            push_u64(out, u64::from(index));
            out.extend_from_slice(b",\"delta\":{\"type\":\"text_delta\",\"text\":");
            push_json_str(out, text);
            out.extend_from_slice(b"}}");
        });
    }

    fn tool_call(&mut self, call: &ToolCallDelta<'_>, out: &mut Vec<u8>) {
        // Without an index, a fragment with an id starts a new call and one
        // without continues the last.
        let openai_index = match call.index {
            Some(i) => i,
            None if call.id.as_deref().is_some_and(|id| !id.is_empty()) => {
                self.tools.iter().map(|t| t.0 + 1).max().unwrap_or(0)
            }
            None => self.tools.last().map_or(0, |t| t.0),
        };
        let function = call.function.as_ref();
        let index = match self.tools.iter().find(|t| t.0 == openai_index) {
            Some(&(_, block)) => block,
            None => {
                self.close_block(out);
                let block = self.new_block(false);
                self.tools.push((openai_index, block));
                let fallback;
                let id = match call.id.as_deref() {
                    Some(id) if !id.is_empty() => id,
                    _ => {
                        fallback = format!(
                            "toolu_{}_{openai_index}",
                            self.id.trim_start_matches("msg_")
                        );
                        &fallback
                    }
                };
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or("");
                event(out, b"content_block_start", |out| {
                    out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
                    push_u64(out, u64::from(block));
                    out.extend_from_slice(b",\"content_block\":{\"type\":\"tool_use\",\"id\":");
                    push_json_str(out, id);
                    out.extend_from_slice(b",\"name\":");
                    push_json_str(out, name);
                    out.extend_from_slice(b",\"input\":{}}}");
                });
                block
            }
        };
        // A fragment for a call whose block already closed (providers that
        // interleave calls) still goes to that block's index, which is what
        // SDKs accumulate by.
        if let Some(args) = function
            .and_then(|f| f.arguments.as_deref())
            .filter(|a| !a.is_empty())
        {
            event(out, b"content_block_delta", |out| {
                out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
                push_u64(out, u64::from(index));
                out.extend_from_slice(
                    b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":",
                );
                push_json_str(out, args);
                out.extend_from_slice(b"}}");
            });
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.started {
            self.start(None, None, out);
        }
        self.close_block(out);
        let stop_reason = self.stop_reason.unwrap_or("end_turn");
        let usage = self.usage;
        event(out, b"message_delta", |out| {
            out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
            push_json_str(out, stop_reason);
            out.extend_from_slice(b",\"stop_sequence\":null},\"usage\":");
            match &usage {
                Some(u) => push_anthropic_usage(out, u),
                None => out.extend_from_slice(b"{\"output_tokens\":0}"),
            }
            out.push(b'}');
        });
        event(out, b"message_stop", |out| {
            out.extend_from_slice(b"{\"type\":\"message_stop\"}");
        });
        self.done = true;
    }

    fn error(&mut self, message: &str, out: &mut Vec<u8>) {
        event(out, b"error", |out| {
            push_anthropic_error_json(out, "api_error", message);
        });
        self.done = true;
    }
}

/// `{"input_tokens":…,"cache_creation_input_tokens":0,"cache_read_input_tokens":…,"output_tokens":…}`
fn push_anthropic_usage(out: &mut Vec<u8>, u: &Usage) {
    out.extend_from_slice(b"{\"input_tokens\":");
    push_u64(out, u.anthropic_input());
    out.extend_from_slice(b",\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":");
    push_u64(out, u.cached);
    out.extend_from_slice(b",\"output_tokens\":");
    push_u64(out, u.completion);
    out.push(b'}');
}

/// Appends `event: <name>\ndata: <json>\n\n`.
fn event(out: &mut Vec<u8>, name: &[u8], data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\ndata: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

// ---------------------------------------------------------------------------
// Anthropic event, as much of it as is read (one flat view for every type).

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<EventUsage>,
    #[serde(borrow, default)]
    error: Option<EventError<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<EventUsage>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug, Default, Clone, Copy)]
struct EventUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl EventUsage {
    /// Fields present in `newer` replace ours (Anthropic's counts are
    /// cumulative; `message_delta` may repeat the input counts).
    fn merge(&mut self, newer: &EventUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
    }

    fn usage(&self) -> Usage {
        Usage::from_anthropic(
            self.input_tokens.unwrap_or(0),
            self.output_tokens.unwrap_or(0),
            self.cache_read_input_tokens.unwrap_or(0),
            self.cache_creation_input_tokens.unwrap_or(0),
        )
    }
}

#[derive(Deserialize)]
struct EventError<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

// ---------------------------------------------------------------------------
// Anthropic → OpenAI

/// Turns an Anthropic Messages stream into an OpenAI chat completion stream.
///
/// `message_start` gives the role chunk; text deltas become `content`
/// chunks; each `tool_use` block becomes one tool call (numbered from 0 in
/// block order) whose first chunk carries its id and name and whose
/// `input_json_delta`s become `arguments` fragments; `message_delta` gives
/// the `finish_reason` chunk; `message_stop` the usage chunk (`choices: []`,
/// when the client asked for it) and `data: [DONE]`. An `error` event
/// becomes an OpenAI error event and ends the stream.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    model: String,
    include_usage: bool,
    created: u64,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`
    prefix: Vec<u8>,
    started: bool,
    /// Anthropic block index → OpenAI tool call index.
    tools: Vec<(u32, u32)>,
    usage: EventUsage,
    usage_seen: bool,
    finished: bool,
    done: bool,
}

impl AnthropicToOpenAiStream {
    /// `model`: the name the client asked for; `include_usage`: the client
    /// asked for `stream_options.include_usage`.
    pub fn new(model: &str, include_usage: bool) -> Self {
        AnthropicToOpenAiStream {
            model: model.to_owned(),
            include_usage,
            created: unix_now(),
            prefix: Vec::new(),
            started: false,
            tools: Vec::new(),
            usage: EventUsage::default(),
            usage_seen: false,
            finished: false,
            done: false,
        }
    }

    /// Sets the `created` timestamp (Unix seconds) of every chunk; the
    /// default is when the machine was made.
    pub fn created(mut self, unix_secs: u64) -> Self {
        self.created = unix_secs;
        self
    }

    /// The provider's usage, once any was reported (`message_start` has
    /// the input side, `message_delta` the output side).
    pub fn usage(&self) -> Option<Usage> {
        self.usage_seen.then(|| self.usage.usage())
    }

    /// `[DONE]` (or an error event) has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed one upstream event (`event` name if any, joined `data`). The
    /// data's `type` decides; the event name stands in when it has none.
    /// Empty data is skipped. `Err` only for data that is not JSON.
    pub fn on_event(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        let data = trim(data);
        if self.done || data.is_empty() {
            return Ok(());
        }
        let ev: Event<'_> =
            serde_json::from_slice(data).map_err(|e| TranslateError::json("stream event", &e))?;
        let name = event.and_then(|e| std::str::from_utf8(e).ok());
        let kind = ev.kind.as_deref().or(name).unwrap_or("");
        match kind {
            "message_start" => {
                let message = ev.message.as_ref();
                if let Some(u) = message.and_then(|m| m.usage.as_ref()) {
                    self.usage.merge(u);
                    self.usage_seen = true;
                }
                self.start(message.and_then(|m| m.id.as_deref()), out);
            }
            "content_block_start" => {
                self.ensure_started(out);
                let Some(block) = &ev.content_block else {
                    return Ok(());
                };
                match block.kind.as_deref() {
                    Some("text") => {
                        if let Some(t) = block.text.as_deref().filter(|t| !t.is_empty()) {
                            self.content(t, out);
                        }
                    }
                    Some("tool_use") => self.tool_start(ev.index.unwrap_or(0), block, out)?,
                    // thinking, server tools, their results: no OpenAI field.
                    _ => {}
                }
            }
            "content_block_delta" => {
                self.ensure_started(out);
                let Some(delta) = &ev.delta else {
                    return Ok(());
                };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(t) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                            self.content(t, out);
                        }
                    }
                    Some("input_json_delta") => {
                        let block = ev.index.unwrap_or(0);
                        let tool = self.tools.iter().find(|t| t.0 == block).map(|t| t.1);
                        let fragment = delta.partial_json.as_deref().filter(|p| !p.is_empty());
                        if let (Some(tool), Some(fragment)) = (tool, fragment) {
                            self.arguments(tool, fragment, out);
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta.
                    _ => {}
                }
            }
            "message_delta" => {
                self.ensure_started(out);
                if let Some(u) = &ev.usage {
                    self.usage.merge(u);
                    self.usage_seen = true;
                }
                if let Some(reason) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.finish_chunk(finish_reason_for(reason), out);
                }
            }
            "message_stop" => {
                self.ensure_started(out);
                self.end(out);
            }
            "error" => {
                let e = ev.error.as_ref();
                let kind = e.and_then(|e| e.kind.as_deref()).unwrap_or("api_error");
                let message = e
                    .and_then(|e| e.message.as_deref())
                    .unwrap_or("the provider reported an error mid-stream");
                push_openai_error_event_from_anthropic(out, kind, message);
                self.done = true;
            }
            // ping, content_block_stop, and types added later.
            _ => {}
        }
        Ok(())
    }

    /// The provider's body ended. If the finish reason had come, writes
    /// the usage chunk and `[DONE]` that `message_stop` would have; false
    /// when the answer was cut (the caller appends an error event).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        if !self.done && self.finished {
            self.end(out);
        }
        self.done
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.start(None, out);
        }
    }

    fn start(&mut self, upstream_id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = match upstream_id {
            Some(id) if !id.is_empty() => openai_completion_id(id),
            _ => openai_completion_id(&fallback_id()),
        };
        let p = &mut self.prefix;
        p.extend_from_slice(b"{\"id\":");
        push_json_str(p, &id);
        p.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        push_u64(p, self.created);
        p.extend_from_slice(b",\"model\":");
        push_json_str(p, &self.model);
        p.extend_from_slice(b",\"choices\":[");
        self.choice(out, |out| {
            out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
        });
    }

    /// `data: {prefix}{"index":0,"delta":<delta>,"logprobs":null,"finish_reason":null}]…}`
    fn choice(&self, out: &mut Vec<u8>, delta: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"index\":0,\"delta\":");
        delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":null}");
        self.close_chunk(out);
    }

    fn close_chunk(&self, out: &mut Vec<u8>) {
        // With include_usage every chunk carries `"usage":null` but the last.
        if self.include_usage {
            out.extend_from_slice(b"],\"usage\":null}\n\n");
        } else {
            out.extend_from_slice(b"]}\n\n");
        }
    }

    fn content(&self, text: &str, out: &mut Vec<u8>) {
        self.choice(out, |out| {
            out.extend_from_slice(b"{\"content\":");
            push_json_str(out, text);
            out.push(b'}');
        });
    }

    fn tool_start(
        &mut self,
        block: u32,
        b: &Block<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        let tool = self.tools.len() as u32;
        self.tools.push((block, tool));
        let id = b.id.as_deref().unwrap_or("");
        let name = b.name.as_deref().unwrap_or("");
        self.choice(out, |out| {
            out.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            push_u64(out, u64::from(tool));
            out.extend_from_slice(b",\"id\":");
            push_json_str(out, id);
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            push_json_str(out, name);
            out.extend_from_slice(b",\"arguments\":\"\"}}]}");
        });
        // Anthropic streams the input as deltas after an empty `{}`; a
        // provider that puts it here whole still gets it across.
        if let Some(input) = b
            .input
            .as_ref()
            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
        {
            let args =
                serde_json::to_string(input).map_err(|e| TranslateError::json("tool input", &e))?;
            self.arguments(tool, &args, out);
        }
        Ok(())
    }

    fn arguments(&self, tool: u32, fragment: &str, out: &mut Vec<u8>) {
        self.choice(out, |out| {
            out.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
            push_u64(out, u64::from(tool));
            out.extend_from_slice(b",\"function\":{\"arguments\":");
            push_json_str(out, fragment);
            out.extend_from_slice(b"}}]}");
        });
    }

    fn finish_chunk(&mut self, reason: &str, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":");
        push_json_str(out, reason);
        out.push(b'}');
        self.close_chunk(out);
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.finish_chunk("stop", out);
        if self.include_usage {
            let u = self.usage.usage();
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(b"],\"usage\":{\"prompt_tokens\":");
            push_u64(out, u.prompt);
            out.extend_from_slice(b",\"completion_tokens\":");
            push_u64(out, u.completion);
            out.extend_from_slice(b",\"total_tokens\":");
            push_u64(out, u.prompt + u.completion);
            out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
            push_u64(out, u.cached);
            out.extend_from_slice(b"}}}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }
}
