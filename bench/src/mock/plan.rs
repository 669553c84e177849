//! A streamed reply assembled from pre-rendered events.
//!
//! Used for the wire shapes beyond OpenAI's text chunks: Anthropic Messages
//! streams (`anthropic`) and tool-call streams in either shape (`tools`).
//! `reply` builds an [`EventPlan`] once per request; `server` writes its
//! opening events, then content item by content item (applying the
//! script's gaps, stalls and disconnects between items, as for any
//! stream), then the closing events. Every SSE event is its own HTTP chunk.

use super::tokens::WORDS;

/// The events of one stream: opening, content items, closing.
#[derive(Debug)]
pub(crate) struct EventPlan {
    /// Framed events before the first item.
    start: Vec<u8>,
    items: Items,
    /// Framed events after the last item, then the last-chunk.
    end: Vec<u8>,
}

/// How content item `i` renders.
#[derive(Debug)]
pub(crate) enum Items {
    /// `open + WORDS[i % 16] + close` as one event (the words need no JSON
    /// escaping); `count` items.
    Words {
        open: Vec<u8>,
        close: Vec<u8>,
        count: usize,
    },
    /// Each a complete SSE event, unframed.
    Fixed(Vec<Vec<u8>>),
}

impl EventPlan {
    /// `start` and `end` are complete SSE events, unframed; the plan frames
    /// each as one HTTP chunk.
    pub(crate) fn new(start: &[Vec<u8>], items: Items, end: &[Vec<u8>]) -> Self {
        let mut framed_start = Vec::new();
        for e in start {
            push_chunk(&mut framed_start, &[e]);
        }
        let mut framed_end = Vec::new();
        for e in end {
            push_chunk(&mut framed_end, &[e]);
        }
        framed_end.extend_from_slice(b"0\r\n\r\n");
        EventPlan {
            start: framed_start,
            items,
            end: framed_end,
        }
    }

    pub(crate) fn chunks(&self) -> usize {
        match &self.items {
            Items::Words { count, .. } => *count,
            Items::Fixed(events) => events.len(),
        }
    }

    pub(crate) fn push_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.start);
    }

    pub(crate) fn push_item(&self, i: usize, out: &mut Vec<u8>) {
        match &self.items {
            Items::Words { open, close, .. } => {
                push_chunk(out, &[open, WORDS[i % WORDS.len()].as_bytes(), close]);
            }
            Items::Fixed(events) => {
                if let Some(e) = events.get(i) {
                    push_chunk(out, &[e]);
                }
            }
        }
    }

    pub(crate) fn push_end(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.end);
    }
}

/// One SSE event: `event: <name>\n` (when named) `data: <data>\n\n`.
pub(crate) fn sse(name: Option<&str>, data: &str) -> Vec<u8> {
    let mut e = Vec::with_capacity(24 + data.len());
    if let Some(name) = name {
        e.extend_from_slice(b"event: ");
        e.extend_from_slice(name.as_bytes());
        e.push(b'\n');
    }
    e.extend_from_slice(b"data: ");
    e.extend_from_slice(data.as_bytes());
    e.extend_from_slice(b"\n\n");
    e
}

/// Appends the concatenated `parts` as one HTTP chunk (RFC 9112 §7.1: hex
/// size, CRLF, data, CRLF).
fn push_chunk(out: &mut Vec<u8>, parts: &[&[u8]]) {
    use std::io::Write as _;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\r\n");
}

/// `s` as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_each_event_as_one_chunk() {
        let plan = EventPlan::new(
            &[sse(Some("a"), "{}")],
            Items::Words {
                open: b"data: \"".to_vec(),
                close: b"\"\n\n".to_vec(),
                count: 2,
            },
            &[sse(None, "[DONE]")],
        );
        let mut out = Vec::new();
        plan.push_start(&mut out);
        for i in 0..plan.chunks() {
            plan.push_item(i, &mut out);
        }
        plan.push_end(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "13\r\nevent: a\ndata: {}\n\n\r\n\
             10\r\ndata: \" alpha\"\n\n\r\n\
             10\r\ndata: \" delta\"\n\n\r\n\
             e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
        );
    }
}
