//! Chain stage 3: token accounting on every response, streamed or not.
//!
//! Each upstream SSE `data:` event (or the whole body of a non-streamed
//! answer) is parsed with simd-json into buffers this core keeps and reuses:
//! simd-json parses in place, so it works on a copy while the original bytes
//! go to the client untouched. From each event it takes the provider's
//! `usage` (prompt, completion and cached prompt tokens) and the generated
//! text. The usage-only chunk that sluice asked for on the client's behalf
//! is held back unless the client asked for it too. When the response is
//! over and the provider reported nothing (it omits usage, or the client
//! went away first), `on_done` counts prompt and generated text with the
//! model's tokenizer and marks the usage estimated.

use std::cell::RefCell;
use std::sync::Arc;

use simd_json::prelude::*;
use simd_json::tape::{Tape, Value};
use sluice_config::Config;

use crate::filter::{Filter, RequestCtx, UsageSource, Verdict};
use crate::{sse, tokens};

/// Per-core parse buffers, reused for every event.
struct Scratch {
    copy: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<Tape<'static>>,
}

pub struct Accounting {
    config: Arc<Config>,
    scratch: RefCell<Scratch>,
}

impl Accounting {
    pub fn new(config: Arc<Config>) -> Self {
        Accounting {
            config,
            scratch: RefCell::new(Scratch {
                copy: Vec::with_capacity(4096),
                buffers: simd_json::Buffers::new(4096),
                tape: Some(Tape::null().reset()),
            }),
        }
    }
}

/// Token counts an event reported; fields it did not mention stay `None`
/// (Anthropic streams report input tokens in `message_start` and output
/// tokens in `message_delta`).
#[derive(Default)]
struct Reported {
    prompt: Option<u64>,
    completion: Option<u64>,
    cached: Option<u64>,
}

/// What one event told us.
#[derive(Default)]
struct Seen {
    usage: Option<Reported>,
    usage_only: bool,
}

/// A usage object in either wire format: OpenAI's `prompt_tokens`,
/// `completion_tokens`, `prompt_tokens_details.cached_tokens`, or
/// Anthropic's `input_tokens` (uncached), `cache_read_input_tokens`,
/// `cache_creation_input_tokens`, `output_tokens`.
fn read_usage(u: Value<'_, '_>) -> Reported {
    let n = |v: Option<Value<'_, '_>>| v.and_then(|x| x.as_u64());
    if let Some(prompt) = n(u.get("prompt_tokens")) {
        return Reported {
            prompt: Some(prompt),
            completion: n(u.get("completion_tokens")),
            cached: Some(
                n(u.get("prompt_tokens_details")
                    .and_then(|d| d.get("cached_tokens")))
                .unwrap_or(0),
            ),
        };
    }
    let input = n(u.get("input_tokens"));
    let read = n(u.get("cache_read_input_tokens"));
    let written = n(u.get("cache_creation_input_tokens"));
    Reported {
        prompt: input.map(|i| i + read.unwrap_or(0) + written.unwrap_or(0)),
        completion: n(u.get("output_tokens")),
        cached: read.or(input.map(|_| 0)),
    }
}

fn read_event(v: Value<'_, '_>, text: &mut String) -> Seen {
    let mut seen = Seen::default();
    // Anthropic's message_start carries the usage inside `message`.
    let usage = v
        .get("usage")
        .or_else(|| v.get("message").and_then(|m| m.get("usage")));
    if let Some(u) = usage.filter(|u| u.is_object()) {
        seen.usage = Some(read_usage(u));
    }
    if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
        if choices.is_empty() {
            seen.usage_only = seen.usage.is_some();
        }
        for choice in choices.iter() {
            let piece = choice
                .get("delta")
                .and_then(|d| d.get("content"))
                .or_else(|| choice.get("message").and_then(|m| m.get("content")))
                .or_else(|| choice.get("text"))
                .and_then(|t| t.into_string());
            if let Some(piece) = piece {
                text.push_str(piece);
            }
        }
    } else if let Some(delta) = v.get("delta") {
        // Anthropic content_block_delta: text, or a tool call's JSON.
        if let Some(piece) = delta
            .get("text")
            .or_else(|| delta.get("partial_json"))
            .and_then(|t| t.into_string())
        {
            text.push_str(piece);
        }
    } else if let Some(blocks) = v.get("content").and_then(|c| c.as_array()) {
        // A whole Anthropic message.
        for block in blocks.iter() {
            if let Some(piece) = block.get("text").and_then(|t| t.into_string()) {
                text.push_str(piece);
            }
        }
    }
    seen
}

impl Filter for Accounting {
    fn on_event(&self, ctx: &mut RequestCtx, data: &[u8]) -> Verdict {
        if sse::is_done(data) {
            return Verdict::Forward;
        }
        let mut scratch = self.scratch.borrow_mut();
        let Scratch {
            copy,
            buffers,
            tape: slot,
        } = &mut *scratch;
        copy.clear();
        copy.extend_from_slice(data);
        let mut tape: Tape<'_> = slot.take().unwrap_or_else(Tape::null).reset();
        let seen = match simd_json::fill_tape(copy, buffers, &mut tape) {
            Ok(()) => read_event(tape.as_value(), &mut ctx.completion_text),
            Err(_) => Seen::default(),
        };
        *slot = Some(tape.reset());
        if let Some(reported) = seen.usage {
            if let Some(p) = reported.prompt {
                ctx.usage.prompt = p;
            }
            if let Some(c) = reported.completion {
                ctx.usage.completion = c;
            }
            if let Some(c) = reported.cached {
                ctx.usage.cached = c;
            }
            ctx.usage.source = UsageSource::Provider;
        }
        if seen.usage_only && ctx.stream && !ctx.client_wants_usage {
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    }

    fn on_done(&self, ctx: &mut RequestCtx) {
        let Some(model) = ctx.model.and_then(|m| self.config.models.get(m)) else {
            return;
        };
        // Only an answer the provider produced (2xx) costs tokens; with no
        // usage from the provider, count what was sent and generated.
        let produced = matches!(ctx.upstream_status, Some(s) if (200..300).contains(&s));
        if ctx.usage.source == UsageSource::None && produced {
            let endpoint = ctx.endpoint.map_or("", |e| e.as_str());
            ctx.usage.prompt = tokens::prompt_tokens(model.encoding, endpoint, &ctx.upstream_body);
            ctx.usage.completion = tokens::count(model.encoding, &ctx.completion_text);
            ctx.usage.source = UsageSource::Estimated;
        }
        if let Some(price) = &model.price {
            let u = ctx.usage;
            ctx.cost_micros = price.cost_micros(u.prompt, u.cached, u.completion);
        }
    }
}
