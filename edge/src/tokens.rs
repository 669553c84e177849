//! Token counting for when the provider reports no usage.
//!
//! Providers' own `usage` is always preferred; this module is the fallback
//! that marks a record `usage_source = "estimated"`. Each encoding's BPE
//! tables are built once per process (o200k takes ~200 ms) and shared by
//! every core read-only; o200k's are kept compact ([`Compact`]). Prompt tokens of a chat request follow OpenAI's
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

type Slot = OnceLock<Option<Counter>>;

/// The counter for an encoding, built on first use.
pub fn bpe(encoding: Encoding) -> Option<&'static Counter> {
    let (cell, build): (&Slot, fn() -> anyhow::Result<Counter>) = match encoding {
        Encoding::O200kBase => (&O200K, || {
            let bpe = tiktoken_rs::o200k_base()?;
            Ok(Counter::Compact(Compact::from_tiktoken(
                &bpe,
                tiktoken_rs::O200K_BASE_PAT_STR,
            )?))
        }),
        Encoding::Cl100kBase => (&CL100K, || {
            Ok(Counter::Tiktoken(tiktoken_rs::cl100k_base()?))
        }),
        Encoding::P50kBase => (&P50K, || Ok(Counter::Tiktoken(tiktoken_rs::p50k_base()?))),
        Encoding::R50kBase => (&R50K, || Ok(Counter::Tiktoken(tiktoken_rs::r50k_base()?))),
    };
    cell.get_or_init(|| build().ok()).as_ref()
}

/// Number of tokens in `text`.
pub fn count(encoding: Encoding, text: &str) -> u64 {
    match bpe(encoding) {
        Some(counter) => counter.count(text),
        // Tables failed to build (cannot happen with compiled-in tables):
        // the usual ~4 bytes per token.
        None => text.len().div_ceil(4) as u64,
    }
}

/// How one encoding's tokens are counted.
pub enum Counter {
    /// o200k (every current OpenAI model): [`Compact`] tables.
    Compact(Compact),
    /// The older encodings: tiktoken-rs's own tables.
    Tiktoken(CoreBPE),
}

impl Counter {
    fn count(&self, text: &str) -> u64 {
        match self {
            Counter::Compact(c) => c.count(text),
            Counter::Tiktoken(bpe) => bpe.encode_ordinary(text).len() as u64,
        }
    }
}

/// A byte-pair token counter that holds only what counting needs: every
/// token's bytes once, in one arena, and a map from those bytes to the
/// token's rank — about 8 MB for o200k, where tiktoken-rs keeps an encoder,
/// a decoder and a sorted copy of every token as separate allocations
/// (~45 MB). Built from tiktoken-rs's tables at start, which are then
/// dropped. Counts are tiktoken's: the same pre-tokenizing pattern, then
/// within each piece the adjacent pair of parts whose joined bytes have the
/// lowest rank is merged (the leftmost on a tie) until no joined pair is a
/// token; the piece is as many tokens as parts are left.
pub struct Compact {
    ranks: rustc_hash::FxHashMap<&'static [u8], u32>,
    /// Clones of the pattern without its one look-ahead (see
    /// [`LOOKAHEAD`]), one per thread slot: a regex shared by many
    /// threads hands its scratch space out from a locked pool to every
    /// thread but the first.
    pieces: Box<[regex::Regex]>,
}

/// The one alternative of o200k's pattern that needs a look-ahead, which
/// the DFA engine has not: a whitespace run not followed by a non-space.
/// Without it the `\s+` after it takes the whole run, and
/// [`piece_end`] gives the run's last character back to the next piece,
/// as the look-ahead would have.
const LOOKAHEAD: &str = r"|\s+(?!\S)";

/// Pattern clones per encoding; threads beyond this share them.
const PATTERN_CLONES: usize = 16;

/// This thread's pattern clone.
fn pattern_slot() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % PATTERN_CLONES;
    }
    SLOT.with(|s| *s)
}

/// Where a piece the pattern matched at `start..end` really ends: a run of
/// two or more whitespace characters without a line break at its end,
/// followed by more text, leaves its last character to the next piece
/// (what `\s+(?!\S)` does). Every other match stands: only the `\s+`
/// alternative matches whitespace alone without ending in a line break.
fn piece_end(text: &str, start: usize, end: usize) -> usize {
    let piece = &text[start..end];
    if end == text.len() || !piece.chars().all(char::is_whitespace) {
        return end;
    }
    let mut back = piece.chars().rev();
    match (back.next(), back.next()) {
        (Some(last), Some(_)) if last != '\r' && last != '\n' => end - last.len_utf8(),
        _ => end,
    }
}

/// No pair of parts joins into a token.
const NO_RANK: u32 = u32::MAX;

impl Compact {
    /// From a tiktoken-rs encoder whose ordinary tokens are ranks
    /// `0..n` (decoding stops at the first rank that is not one) and the
    /// encoding's pre-tokenizing pattern.
    fn from_tiktoken(bpe: &CoreBPE, pattern: &str) -> anyhow::Result<Compact> {
        let mut tokens: Vec<Vec<u8>> = Vec::new();
        while let Ok(bytes) = bpe.decode_bytes(&[tokens.len() as u32]) {
            tokens.push(bytes);
        }
        let arena: &'static [u8] = Box::leak(tokens.concat().into_boxed_slice());
        let mut ranks = rustc_hash::FxHashMap::default();
        ranks.reserve(tokens.len());
        let mut at = 0;
        for (rank, t) in tokens.iter().enumerate() {
            ranks.insert(&arena[at..at + t.len()], rank as u32);
            at += t.len();
        }
        let Some(at) = pattern.find(LOOKAHEAD) else {
            anyhow::bail!("the pattern has no {LOOKAHEAD:?} to replace");
        };
        let without = format!("{}{}", &pattern[..at], &pattern[at + LOOKAHEAD.len()..]);
        let pattern = regex::Regex::new(&without)?;
        Ok(Compact {
            ranks,
            pieces: (0..PATTERN_CLONES).map(|_| pattern.clone()).collect(),
        })
    }

    fn count(&self, text: &str) -> u64 {
        let pieces = &self.pieces[pattern_slot()];
        let mut total = 0;
        let mut parts = Vec::new();
        let mut at = 0;
        while let Some(m) = pieces.find_at(text, at) {
            let end = piece_end(text, m.start(), m.end());
            total += self.piece_tokens(&text.as_bytes()[m.start()..end], &mut parts);
            at = end;
        }
        total
    }

    fn rank(&self, bytes: &[u8]) -> u32 {
        self.ranks.get(bytes).copied().unwrap_or(NO_RANK)
    }

    /// Tokens in one pre-tokenized piece. `parts` holds each part's start
    /// and the rank of that part joined with the next (scratch, reused).
    fn piece_tokens(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) -> u64 {
        if piece.len() <= 1 || self.ranks.contains_key(piece) {
            return piece.len().min(1) as u64;
        }
        // One part per byte, then an end marker.
        parts.clear();
        parts.extend((0..=piece.len()).map(|i| (i, NO_RANK)));
        let joined = |parts: &[(usize, u32)], i: usize| -> u32 {
            match parts.get(i + 2) {
                Some(&(end, _)) => self.rank(&piece[parts[i].0..end]),
                None => NO_RANK,
            }
        };
        for i in 0..parts.len() - 2 {
            parts[i].1 = joined(parts, i);
        }
        loop {
            let (i, best) = parts[..parts.len() - 1].iter().enumerate().fold(
                (0, NO_RANK),
                |(bi, br), (i, &(_, r))| {
                    if r < br {
                        (i, r)
                    } else {
                        (bi, br)
                    }
                },
            );
            if best == NO_RANK {
                break;
            }
            parts.remove(i + 1);
            if i > 0 {
                parts[i - 1].1 = joined(parts, i - 1);
            }
            parts[i].1 = joined(parts, i);
        }
        (parts.len() - 1) as u64
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
    fn the_compact_counter_counts_what_tiktoken_counts() {
        let reference = tiktoken_rs::o200k_base().unwrap();
        let Some(Counter::Compact(compact)) = bpe(Encoding::O200kBase) else {
            panic!("o200k is counted by the compact tables");
        };
        let mut corpus: Vec<String> = [
            "",
            " ",
            "hello world",
            "Hello, World! It's 2026; we're here, they'll go, I'd say, you've won.",
            "   leading and trailing   \n\n\t mixed\r\nwhitespace    ",
            "fn main() { let x: Vec<u8> = vec![1, 2, 3]; println!(\"{x:?}\"); }",
            "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
            "1234567890 3.14159 -42 1e10 0x1F 2026-11-26T20:30:00Z",
            "日本語のテキストと中文文本，还有한국어 텍스트.",
            "emoji 😀🎉👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
            "Ünïcödé àçcents, Ελληνικά, русский текст, עברית, العربية",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "SGVsbG8gd29ybGQsIHRoaXMgaXMgYSBiYXNlNjQgc3RyaW5nIHdpdGhvdXQgc3BhY2Vz",
            "CamelCaseIdentifiersAndSHOUTINGWords mixedCASEwords",
            "<|endoftext|> looks special but is ordinary text here",
            "a  b   c    d\t\te \t f\u{a0}\u{a0}g\u{3000}\u{3000}h  ",
            "  \n  x\r\n\r\n  y \n\n z\t\n\t w   \r  v",
            "trailing spaces   ",
            "\u{2028}\u{2029} line seps \u{85}next\u{b}\u{c}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Pseudo-random strings over a mixed alphabet (fixed seed).
        let alphabet: Vec<char> = "ab cdE\n\t1.,'’é日😀-_/\\\"{}".chars().collect();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in [5usize, 50, 500, 5000] {
            for _ in 0..20 {
                let s: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                corpus.push(s);
            }
        }
        for text in &corpus {
            assert_eq!(
                compact.count(text),
                reference.encode_ordinary(text).len() as u64,
                "{text:?}"
            );
        }
    }

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
