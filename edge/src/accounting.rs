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
//!
//! Most events of an OpenAI-shaped stream are content chunks that carry no
//! usage: for those a byte scan (no usage object, so only the `content`
//! strings matter) takes the text without building a tape; an event with a
//! `usage` object, or any other shape, gets the full parse.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;

use simd_json::prelude::*;
use simd_json::tape::{Tape, Value};
use sluice_config::Config;

use crate::filter::{Filter, RequestCtx, UsageSource, Verdict, Wire};
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

/// The keys the scan looks for, with their searchers built once (building
/// one costs more than searching a 200-byte event).
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static DELTA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"delta\""));
static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\""));

/// Whether `data` holds a `"usage"` key whose value is an object (not
/// `null`). A false positive only costs the full parse; there are no false
/// negatives, since a key's quotes cannot occur unescaped inside a string.
fn has_usage_object(data: &[u8]) -> bool {
    USAGE.find_iter(data).any(|at| {
        let rest = skip_ws(&data[at + 7..]);
        rest.first() == Some(&b':') && skip_ws(&rest[1..]).first() == Some(&b'{')
    })
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    &b[n..]
}

/// The JSON string literal at the start of `b` (quotes included): up to
/// the first quote no backslash escapes.
fn string_literal(b: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(&b[..=i]),
            _ => i += 1,
        }
    }
    None
}

/// The fast path for an OpenAI chat chunk without usage: appends every
/// `"content": "<string>"` value to `text`. `None` (and `text` untouched)
/// when the event is not such a chunk (no `"delta"`) or a string does not
/// decode, so the caller falls back to the full parse.
fn scan_chunk_text(data: &[u8], text: &mut String) -> Option<()> {
    DELTA.find(data)?;
    let start = text.len();
    let scanned = (|| {
        for at in CONTENT.find_iter(data) {
            let Some(rest) = skip_ws(&data[at + 9..]).strip_prefix(b":") else {
                continue; // a string value that reads "content"
            };
            let rest = skip_ws(rest);
            if rest.first() != Some(&b'"') {
                continue; // null, or logprobs' array
            }
            let literal = string_literal(rest)?;
            if memchr::memchr(b'\\', literal).is_none() {
                text.push_str(std::str::from_utf8(&literal[1..literal.len() - 1]).ok()?);
            } else {
                text.push_str(&serde_json::from_slice::<String>(literal).ok()?);
            }
        }
        Some(())
    })();
    if scanned.is_none() {
        text.truncate(start);
    }
    scanned
}

impl Filter for Accounting {
    fn on_event(&self, ctx: &mut RequestCtx, data: &[u8]) -> Verdict {
        if sse::is_done(data) {
            return Verdict::Forward;
        }
        if ctx.upstream_wire == Wire::OpenAi
            && !has_usage_object(data)
            && scan_chunk_text(data, &mut ctx.completion_text).is_some()
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The text the full parse takes from an event.
    fn parsed_text(data: &[u8]) -> String {
        let mut copy = data.to_vec();
        let mut text = String::new();
        let mut buffers = simd_json::Buffers::new(256);
        let mut tape = Tape::null().reset();
        if simd_json::fill_tape(&mut copy, &mut buffers, &mut tape).is_ok() {
            read_event(tape.as_value(), &mut text);
        }
        text
    }

    #[test]
    fn the_scan_takes_the_same_text_as_the_parse() {
        let chunks: [&[u8]; 8] = [
            br#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}"#,
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"a \"quoted\" \\ line\nnext \u00e9\ud83d\ude00"}}]}"#,
            br#"{"id": "c", "choices": [{"index": 0, "delta": {"content": "spaced"}}], "usage": null}"#,
            br#"{"choices":[{"delta":{"content":null,"tool_calls":[{"function":{"arguments":"{\"content\":\"x\"}"}}]}}]}"#,
            br#"{"choices":[{"delta":{"content":"content"},"logprobs":{"content":[{"token":"a"}]}}]}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"one"}},{"index":1,"delta":{"content":"two"}}]}"#,
            "{\"choices\":[{\"delta\":{\"reasoning_content\":\"think\",\"content\":\"ünï\"}}]}".as_bytes(),
        ];
        for c in chunks {
            let shown = String::from_utf8_lossy(c);
            assert!(!has_usage_object(c), "{shown}");
            let mut fast = String::new();
            assert!(scan_chunk_text(c, &mut fast).is_some(), "{shown}");
            assert_eq!(fast, parsed_text(c), "{shown}");
        }
    }

    #[test]
    fn usage_objects_and_other_shapes_take_the_full_parse() {
        assert!(has_usage_object(
            br#"{"choices":[],"usage":{"prompt_tokens":3}}"#
        ));
        assert!(has_usage_object(b"{\"usage\" :\n {\"prompt_tokens\":3}}"));
        assert!(!has_usage_object(br#"{"usage":null}"#));
        let mut t = String::from("kept");
        // Not a chat chunk: a whole completion, an Anthropic event.
        assert!(scan_chunk_text(br#"{"choices":[{"message":{"content":"x"}}]}"#, &mut t).is_none());
        assert!(scan_chunk_text(br#"{"type":"content_block_delta","index":0}"#, &mut t).is_none());
        // A string cut short, or a bad escape after a good string: nothing
        // of the event is kept.
        assert!(scan_chunk_text(br#"{"delta":{"content":"ab"#, &mut t).is_none());
        assert!(scan_chunk_text(
            br#"{"choices":[{"delta":{"content":"ok"}},{"delta":{"content":"a\qb"}}]}"#,
            &mut t
        )
        .is_none());
        assert_eq!(t, "kept");
    }
}
