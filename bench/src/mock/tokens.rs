//! Token counting and the mock's deterministic completion text.
//!
//! Sits under every reply the mock renders: the completion text is built from
//! `WORDS` (each one token in both o200k_base and cl100k_base, so N content
//! chunks are exactly N completion tokens), and prompt sizes are counted with
//! tiktoken the way OpenAI's cookbook counts them. Tests in sluice compare its
//! accounting against these numbers, so they are public.
//!
//! The BPE tables are built once per process (tiktoken-rs keeps each in a
//! `LazyLock`; o200k takes ~130 ms, so [`warm`] builds both up front). Each
//! core keeps a small exact cache from text to count, because benchmarks send
//! the same prompt over and over and BPE is the costliest step per request.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// The content pieces of every completion, in order; piece `i` is
/// `WORDS[i % WORDS.len()]`. Each is a single token in o200k_base and
/// cl100k_base (checked by a test), and starts with a space so the
/// concatenation tokenizes to exactly one token per piece.
pub const WORDS: [&str; 16] = [
    " alpha",
    " delta",
    " echo",
    " golf",
    " hotel",
    " india",
    " mike",
    " november",
    " uniform",
    " whiskey",
    " zero",
    " red",
    " blue",
    " green",
    " river",
    " stone",
];

/// The exact completion text for `chunks` content chunks.
pub fn chat_content(chunks: usize) -> String {
    let mut text = String::with_capacity(chunks * 8);
    for i in 0..chunks {
        text.push_str(WORDS[i % WORDS.len()]);
    }
    text
}

/// A tokenizer the mock counts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5 and the o-series.
    O200kBase,
    /// GPT-4, GPT-3.5 and the text-embedding models.
    Cl100kBase,
}

impl Encoding {
    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

/// The encoding for a model name; unknown models count as o200k_base.
/// The o200k prefixes are tested first because "gpt-4o" starts with "gpt-4".
pub fn encoding_for(model: &str) -> Encoding {
    const O200K: [&str; 6] = ["gpt-4o", "gpt-4.1", "o1", "o3", "o4", "gpt-5"];
    const CL100K: [&str; 3] = ["gpt-4", "gpt-3.5", "text-embedding"];
    if O200K.iter().any(|p| model.starts_with(p)) {
        Encoding::O200kBase
    } else if CL100K.iter().any(|p| model.starts_with(p)) {
        Encoding::Cl100kBase
    } else {
        Encoding::O200kBase
    }
}

/// Builds both BPE tables now, in parallel, so the first request does not
/// pay for them.
pub fn warm() {
    std::thread::scope(|s| {
        s.spawn(|| Encoding::Cl100kBase.bpe());
        Encoding::O200kBase.bpe();
    });
}

/// Entries per encoding before the per-core cache starts over.
const CACHE_ENTRIES: usize = 4096;
/// Longer texts are counted every time rather than kept.
const CACHE_MAX_TEXT: usize = 64 * 1024;

thread_local! {
    static CACHE: RefCell<[HashMap<String, usize>; 2]> = RefCell::new([HashMap::new(), HashMap::new()]);
}

/// Tokens in `text` with `encoding` (special-token text counts as ordinary
/// text, as when counting an untrusted prompt).
pub fn count_with(encoding: Encoding, text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    if text.len() > CACHE_MAX_TEXT {
        return encoding.bpe().encode_ordinary(text).len();
    }
    let slot = encoding as usize;
    if let Some(n) = CACHE.with(|c| c.borrow()[slot].get(text).copied()) {
        return n;
    }
    let n = encoding.bpe().encode_ordinary(text).len();
    CACHE.with(|c| {
        let map = &mut c.borrow_mut()[slot];
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        map.insert(text.to_owned(), n);
    });
    n
}

/// Tokens in `text` with `model`'s encoding.
pub fn count_tokens(model: &str, text: &str) -> usize {
    count_with(encoding_for(model), text)
}

/// Prompt tokens of a chat request, by OpenAI's cookbook recipe: for each
/// message 3 + tokens(role) + tokens(content) (+ 1 + tokens(name) when a name
/// is given), plus 3 to prime the reply. Array content counts each `text`
/// part separately; other parts (images, audio) count nothing.
///
/// `request` is either the whole request body (its `messages` are used) or
/// the messages array itself.
pub fn prompt_tokens_chat(model: &str, request: &Value) -> usize {
    let enc = encoding_for(model);
    let messages = match request {
        Value::Array(m) => m.as_slice(),
        other => other
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice),
    };
    let mut total = 3;
    for message in messages {
        total += 3;
        if let Some(role) = message.get("role").and_then(Value::as_str) {
            total += count_with(enc, role);
        }
        match message.get("content") {
            Some(Value::String(text)) => total += count_with(enc, text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        total += count_with(enc, text);
                    }
                }
            }
            _ => {}
        }
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            total += 1 + count_with(enc, name);
        }
    }
    total
}

/// Tokens of a completions `prompt` or embeddings `input`: a string, an array
/// of strings (summed), an array of token ids (its length) or an array of
/// token-id arrays (summed lengths).
pub fn input_tokens(model: &str, input: &Value) -> usize {
    let enc = encoding_for(model);
    match input {
        Value::String(text) => count_with(enc, text),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => count_with(enc, text),
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_word_is_one_token_in_both_encodings() {
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            for word in WORDS {
                assert_eq!(
                    enc.bpe().encode_ordinary(word).len(),
                    1,
                    "{word:?} in {enc:?}"
                );
            }
        }
    }

    #[test]
    fn completion_text_is_one_token_per_chunk() {
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            for n in [0, 1, 2, 15, 16, 17, 40, 100] {
                assert_eq!(
                    count_with(enc, &chat_content(n)),
                    n,
                    "{n} chunks in {enc:?}"
                );
            }
        }
    }

    #[test]
    fn words_are_distinct_and_start_with_a_space() {
        for (i, w) in WORDS.iter().enumerate() {
            assert!(w.starts_with(' ') && w.len() > 1);
            assert!(!WORDS[..i].contains(w));
        }
        assert_eq!(chat_content(2), " alpha delta");
    }

    #[test]
    fn encoding_by_model_name() {
        let table = [
            ("gpt-4o-mini", Encoding::O200kBase),
            ("gpt-4.1-nano", Encoding::O200kBase),
            ("o3-mini", Encoding::O200kBase),
            ("gpt-5", Encoding::O200kBase),
            ("gpt-4-turbo", Encoding::Cl100kBase),
            ("gpt-3.5-turbo", Encoding::Cl100kBase),
            ("text-embedding-3-small", Encoding::Cl100kBase),
            ("llama-3", Encoding::O200kBase),
        ];
        for (model, enc) in table {
            assert_eq!(encoding_for(model), enc, "{model}");
        }
    }

    #[test]
    fn chat_prompt_recipe() {
        let model = "gpt-4o-mini";
        let c = |t: &str| count_tokens(model, t);
        let body = json!({"model": model, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "name": "bob", "content": [
                {"type": "text", "text": "Hello there"},
                {"type": "image_url", "image_url": {"url": "data:"}},
                {"type": "text", "text": "and again"}
            ]}
        ]});
        let want = 3
            + (3 + c("system") + c("You are terse."))
            + (3 + c("user") + c("Hello there") + c("and again") + 1 + c("bob"));
        assert_eq!(prompt_tokens_chat(model, &body), want);
        assert_eq!(prompt_tokens_chat(model, &body["messages"]), want);
        assert_eq!(prompt_tokens_chat(model, &json!({})), 3);
    }

    #[test]
    fn input_shapes() {
        let m = "text-embedding-3-small";
        let one = count_tokens(m, "hello world");
        assert_eq!(input_tokens(m, &json!("hello world")), one);
        assert_eq!(
            input_tokens(m, &json!(["hello world", "hello world"])),
            2 * one
        );
        assert_eq!(input_tokens(m, &json!([1, 2, 3])), 3);
        assert_eq!(input_tokens(m, &json!([[1, 2], [3]])), 3);
    }
}
