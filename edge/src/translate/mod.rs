//! OpenAI Chat Completions ⇄ Anthropic Messages, both ways, streaming included.
//!
//! Sits in the request path when the client's protocol and the provider's
//! differ (DESIGN.md §2, item 10). Everything here is pure and sans-IO: the
//! proxy hands in bytes it already holds and gets bytes back.
//!
//! - [`request`]: a request body in one protocol → the same request in the
//!   other (system prompt, content parts, images, tools, tool calls and
//!   results, sampling and limits, streaming options).
//! - [`response`]: a whole non-streamed answer → the other shape, and error
//!   bodies both ways with the status-appropriate error types.
//! - [`stream`]: one state machine per direction, fed one upstream SSE event
//!   at a time (already split by `sse`) and appending zero or more complete
//!   downstream SSE events to an output buffer; each exposes the [`Usage`]
//!   it saw for accounting.
//!
//! Ids move with a prefix swap (`chatcmpl-X` ⇄ `msg_X`); tool call ids are
//! kept. Every failure is a [`TranslateError`] naming the field that was wrong.

mod request;
mod response;
mod stream;

#[cfg(test)]
mod tests;

pub use request::{
    anthropic_to_openai, anthropic_to_openai_with, openai_to_anthropic, MaxTokensField,
    OpenAiOptions,
};
pub use response::{
    anthropic_error_to_openai, anthropic_error_type, anthropic_response_to_openai,
    openai_error_to_anthropic, openai_response_to_anthropic, openai_status_for_anthropic,
    push_anthropic_error_event, push_openai_error_event,
};
pub use stream::{AnthropicToOpenAiStream, OpenAiToAnthropicStream};

/// A request or response that cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The body (or one event's data) is not JSON of the expected kind.
    #[error("{what} is not valid JSON: {detail}")]
    Json { what: &'static str, detail: String },
    /// A field is missing or has the wrong type or value.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// Valid in its own protocol, but the other one has no equivalent.
    #[error("{path}: {message}")]
    Unsupported { path: String, message: String },
}

impl TranslateError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        TranslateError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<String>, message: impl Into<String>) -> Self {
        TranslateError::Unsupported {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn json(what: &'static str, e: &serde_json::Error) -> Self {
        TranslateError::Json {
            what,
            detail: e.to_string(),
        }
    }
}

/// Token usage in OpenAI's terms, whichever side reported it.
///
/// Anthropic reports uncached input, cache reads and cache writes
/// separately; here `prompt` is their sum (every prompt token, as OpenAI's
/// `prompt_tokens`) and `cached` the cache reads (OpenAI's
/// `prompt_tokens_details.cached_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
}

impl Usage {
    pub(crate) fn from_anthropic(
        input: u64,
        output: u64,
        cache_read: u64,
        cache_write: u64,
    ) -> Self {
        Usage {
            prompt: input + cache_read + cache_write,
            completion: output,
            cached: cache_read,
        }
    }

    /// Anthropic's `input_tokens`: the prompt tokens not read from a cache.
    /// Cache writes cannot be told apart after a trip through OpenAI's
    /// shape, so they count here.
    pub(crate) fn anthropic_input(&self) -> u64 {
        self.prompt.saturating_sub(self.cached)
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub(crate) fn stop_reason_for(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        // "stop": OpenAI does not say whether a stop sequence matched.
        _ => "end_turn",
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub(crate) fn finish_reason_for(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything newer.
        _ => "stop",
    }
}

const OPENAI_ID_PREFIX: &str = "chatcmpl-";
const ANTHROPIC_ID_PREFIX: &str = "msg_";

/// `chatcmpl-X` → `msg_X` (any other id gets the prefix added).
pub(crate) fn anthropic_message_id(openai_id: &str) -> String {
    let rest = openai_id
        .strip_prefix(OPENAI_ID_PREFIX)
        .unwrap_or(openai_id);
    let mut id = String::with_capacity(ANTHROPIC_ID_PREFIX.len() + rest.len());
    id.push_str(ANTHROPIC_ID_PREFIX);
    id.push_str(rest);
    id
}

/// `msg_X` → `chatcmpl-X` (any other id gets the prefix added).
pub(crate) fn openai_completion_id(anthropic_id: &str) -> String {
    let rest = anthropic_id
        .strip_prefix(ANTHROPIC_ID_PREFIX)
        .unwrap_or(anthropic_id);
    let mut id = String::with_capacity(OPENAI_ID_PREFIX.len() + rest.len());
    id.push_str(OPENAI_ID_PREFIX);
    id.push_str(rest);
    id
}

/// An id for an answer whose upstream gave none: unique enough per node
/// (nanoseconds since the epoch), never reused within a process run.
pub(crate) fn fallback_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("sluice{:x}{:x}", nanos, SEQ.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends `s` as a JSON string literal (RFC 8259 §7: `"`, `\` and the
/// control characters U+0000..U+001F must be escaped; everything else,
/// non-ASCII included, may go as is). Copies unescaped runs in one go.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends a decimal number.
pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}
