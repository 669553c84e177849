//! Token counting for when the provider reports no usage.
//!
//! Providers' own `usage` is always preferred; this module is the fallback
//! that marks a record `usage_source = "estimated"`. Each encoding's BPE
//! tables are built once per process (o200k takes ~130 ms) and shared by
//! every core read-only. Prompt tokens of a chat request follow OpenAI's
//! published counting recipe: 3 tokens of framing per message, the role,
//! the content (text parts of multi-part content), 1 more plus the name when
//! a message has one, and 3 tokens priming the reply.

use std::borrow::Cow;
use std::sync::OnceLock;

use sluice_config::Encoding;
use tiktoken_rs::CoreBPE;

static O200K: Slot = OnceLock::new();
static CL100K: Slot = OnceLock::new();
static P50K: Slot = OnceLock::new();
static R50K: Slot = OnceLock::new();

type Slot = OnceLock<Option<CoreBPE>>;
type Build = fn() -> anyhow::Result<CoreBPE>;

/// The tokenizer for an encoding, built on first use.
pub fn bpe(encoding: Encoding) -> Option<&'static CoreBPE> {
    let (cell, build): (&Slot, Build) = match encoding {
        Encoding::O200kBase => (&O200K, tiktoken_rs::o200k_base),
        Encoding::Cl100kBase => (&CL100K, tiktoken_rs::cl100k_base),
        Encoding::P50kBase => (&P50K, tiktoken_rs::p50k_base),
        Encoding::R50kBase => (&R50K, tiktoken_rs::r50k_base),
    };
    cell.get_or_init(|| build().ok()).as_ref()
}

/// Number of tokens in `text`.
pub fn count(encoding: Encoding, text: &str) -> u64 {
    match bpe(encoding) {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        // Tables failed to build (cannot happen with compiled-in tables):
        // the usual ~4 bytes per token.
        None => text.len().div_ceil(4) as u64,
    }
}

/// What the chat recipe reads of a request body, borrowed from it where
/// no JSON escape forces a copy; every other field is skipped unparsed.
#[derive(serde::Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
}

#[derive(serde::Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

/// A message's `content`: a string, or an array of parts whose `text`
/// counts; anything else counts nothing.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
    Other(serde::de::IgnoredAny),
}

#[derive(serde::Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Estimated prompt tokens of a request body for the given endpoint path.
pub fn prompt_tokens(encoding: Encoding, path: &str, body: &[u8]) -> u64 {
    if path.ends_with("/chat/completions") {
        let Ok(chat) = serde_json::from_slice::<ChatBody<'_>>(body) else {
            return 0;
        };
        let mut total = 3;
        for message in &chat.messages {
            total += 3;
            total += count(encoding, message.role.as_deref().unwrap_or(""));
            total += match &message.content {
                Some(Content::Text(s)) => count(encoding, s),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .map(|t| count(encoding, t))
                    .sum(),
                Some(Content::Other(_)) | None => 0,
            };
            if let Some(name) = &message.name {
                total += 1 + count(encoding, name);
            }
        }
        return total;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    if path.ends_with("/completions") {
        text_tokens(encoding, &value["prompt"])
    } else {
        text_tokens(encoding, &value["input"])
    }
}

/// A string or an array of strings.
fn text_tokens(encoding: Encoding, v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => count(encoding, s),
        serde_json::Value::Array(items) => items.iter().map(|i| text_tokens(encoding, i)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_strings() {
        assert_eq!(count(Encoding::O200kBase, "hello world"), 2);
        assert_eq!(count(Encoding::Cl100kBase, "hello world"), 2);
        assert_eq!(count(Encoding::O200kBase, ""), 0);
    }

    #[test]
    fn chat_recipe() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello world"}]}"#;
        // 3 (reply priming) + 3 (message) + 1 ("user") + 2 ("hello world")
        assert_eq!(
            prompt_tokens(Encoding::O200kBase, "/v1/chat/completions", body),
            9
        );
        let parts = br#"{"model":"m","messages":[{"role":"user","name":"bob","content":[{"type":"text","text":"hello world"}]}]}"#;
        assert_eq!(
            prompt_tokens(Encoding::O200kBase, "/v1/chat/completions", parts),
            11
        );
        // Escapes, null and odd content, images, tool calls: counted like
        // the plain recipe, the odd parts as nothing.
        let mixed = br#"{"model":"m","messages":[
            {"role":"system","content":"say \"hello world\""},
            {"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"hello world"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","content":{"odd":true}}
        ]}"#;
        let want = 3
            + (3 + count(Encoding::O200kBase, "system")
                + count(Encoding::O200kBase, "say \"hello world\""))
            + (3 + count(Encoding::O200kBase, "user") + 2)
            + (3 + count(Encoding::O200kBase, "assistant"))
            + (3 + count(Encoding::O200kBase, "tool"));
        assert_eq!(
            prompt_tokens(Encoding::O200kBase, "/v1/chat/completions", mixed),
            want
        );
        assert_eq!(
            prompt_tokens(Encoding::O200kBase, "/v1/chat/completions", b"{"),
            0
        );
    }

    #[test]
    fn completions_and_embeddings() {
        let c = br#"{"model":"m","prompt":["hello world","hello"]}"#;
        assert_eq!(prompt_tokens(Encoding::Cl100kBase, "/v1/completions", c), 3);
        let e = br#"{"model":"m","input":"hello world"}"#;
        assert_eq!(prompt_tokens(Encoding::Cl100kBase, "/v1/embeddings", e), 2);
    }
}
