//! Server-Sent Events framing, sans-IO (WHATWG HTML, "event stream" format).
//!
//! Sits in the relay between the upstream body decoder and downstream: the
//! de-chunked bytes of a `text/event-stream` response are [`SseSplitter::push`]ed
//! as they arrive, and [`SseSplitter::next_event`] hands back each complete
//! event as the raw bytes received, blank line included, so the relay can
//! forward them untouched the moment they are complete (no holding back).
//! [`parse_event`] gives the accounting / guard stages a view of one event
//! (`event:` name and joined `data:`), borrowed wherever possible; the JSON in
//! `data` is parsed elsewhere (simd-json). [`is_done`] spots OpenAI's
//! `[DONE]` marker.
//!
//! Line ends may be LF, CRLF or a lone CR, so a CR at the end of what has
//! arrived is left undecided until the next byte (or [`SseSplitter::finish`]).

use std::borrow::Cow;

/// After a buffer that held one event larger than this drains empty, its
/// memory is given back: thousands of idle streams per core must stay small.
const SHRINK_ABOVE: usize = 64 * 1024;
const SHRINK_TO: usize = 4 * 1024;

/// Splits a byte stream into raw events; an event ends at a blank line.
///
/// Bytes are copied once into an internal buffer; a read offset marks the
/// first unreturned byte, and the consumed prefix is dropped lazily in
/// [`push`](Self::push) once it is at least half the buffer, so feeding many
/// small pieces stays O(n). Scanning resumes where it stopped, never from the
/// start of the event.
///
/// Nothing bounds the size of one event: the caller checks
/// `pending().len()` against its own limit.
#[derive(Debug, Clone)]
pub struct SseSplitter {
    buf: Vec<u8>,
    /// Start of the first event not yet returned.
    start: usize,
    /// First byte not yet classified by the scanner.
    scan: usize,
    /// `scan` is at the start of a line.
    line_start: bool,
    /// The byte before `scan` is a CR whose LF may still come.
    cr_pending: bool,
    /// ...and that CR ended a blank line, so an event ends after it.
    cr_blank: bool,
    /// No more bytes will come: a pending CR stands alone.
    finished: bool,
}

impl Default for SseSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl SseSplitter {
    pub fn new() -> Self {
        SseSplitter {
            buf: Vec::new(),
            start: 0,
            scan: 0,
            line_start: true,
            cr_pending: false,
            cr_blank: false,
            finished: false,
        }
    }

    /// Append bytes that arrived (already de-chunked).
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            // Moves at most as many bytes as were consumed since the last
            // compaction, so the total copying stays linear.
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
            if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
                self.buf.shrink_to(SHRINK_TO);
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// The stream ended: a CR at the very end is a whole line end, so the
    /// event it completes (if any) becomes available. What remains in
    /// [`pending`](Self::pending) afterwards is an unterminated event, which
    /// the WHATWG rules discard.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Next complete event: its raw bytes including the terminating blank
    /// line, exactly as received. `None`: need more data.
    ///
    /// Every blank line ends an event, so a stray blank line yields an event
    /// with no fields (its [`parse_event`] data is empty; skip it).
    pub fn next_event(&mut self) -> Option<&[u8]> {
        let end = self.scan_event()?;
        let start = self.start;
        self.start = end;
        Some(&self.buf[start..end])
    }

    /// Bytes buffered that do not (yet) form a complete event.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Find the end of the event that starts at `self.start`, resuming the
    /// scan at `self.scan`.
    fn scan_event(&mut self) -> Option<usize> {
        let len = self.buf.len();
        let mut i = self.scan;
        loop {
            if self.cr_pending {
                if i == len && !self.finished {
                    self.scan = i;
                    return None;
                }
                self.cr_pending = false;
                // CRLF is one line end: its LF belongs to the CR's line.
                if i < len && self.buf[i] == b'\n' {
                    i += 1;
                }
                if self.cr_blank {
                    self.cr_blank = false;
                    self.scan = i;
                    return Some(i);
                }
                continue;
            }
            if i == len {
                self.scan = i;
                return None;
            }
            if self.line_start {
                match self.buf[i] {
                    b'\n' => {
                        // Blank line: the event ends here. The next one
                        // starts at a line start too.
                        self.scan = i + 1;
                        return Some(i + 1);
                    }
                    b'\r' => {
                        i += 1;
                        self.cr_pending = true;
                        self.cr_blank = true;
                        continue;
                    }
                    _ => self.line_start = false,
                }
            }
            match find_eol(&self.buf[i..]) {
                None => {
                    self.scan = len;
                    return None;
                }
                Some(off) => {
                    i += off;
                    self.cr_pending = self.buf[i] == b'\r';
                    self.line_start = true;
                    i += 1;
                }
            }
        }
    }
}

/// Parsed view of one raw event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// Value of the last non-empty `event:` field; None means the default
    /// type "message" (an empty `event:` also resets to it).
    pub event: Option<&'a [u8]>,
    /// The `data:` values joined by '\n'; borrowed from the raw event when
    /// there is at most one data line. Empty when there is nothing to
    /// dispatch (comment-only or blank events).
    pub data: Cow<'a, [u8]>,
}

/// Parse one raw event as returned by [`SseSplitter::next_event`]: one
/// optional space after a field's colon is dropped, comment lines (leading
/// ':') are ignored, and so are `id`, `retry` and unknown fields. Parsing
/// stops at the first blank line.
pub fn parse_event(raw: &[u8]) -> Event<'_> {
    let mut event = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    let mut rest = raw;
    while !rest.is_empty() {
        let line = match find_eol(rest) {
            Some(i) => {
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                let line = &rest[..i];
                rest = &rest[i + 1 + usize::from(crlf)..];
                line
            }
            None => std::mem::take(&mut rest),
        };
        if line.is_empty() {
            break;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            // A line without a colon is a field name with an empty value.
            None => (line, &line[line.len()..]),
        };
        match name {
            b"data" => match &mut data {
                None => data = Some(Cow::Borrowed(value)),
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.reserve(value.len() + 1);
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
            },
            b"event" => event = if value.is_empty() { None } else { Some(value) },
            _ => {}
        }
    }
    Event {
        event,
        data: data.unwrap_or(Cow::Borrowed(&[])),
    }
}

/// True for event data that is exactly `[DONE]` (OpenAI's end-of-stream marker).
pub fn is_done(data: &[u8]) -> bool {
    data == b"[DONE]"
}

/// Index of the first LF or CR in `hay`.
///
/// Eight bytes at a time: SSE lines are mostly long JSON, and this runs over
/// every byte relayed. For each word, a byte equal to the target becomes
/// zero after XOR, and `(x - 0x01..) & !x & 0x80..` sets the high bit of the
/// first zero byte (bits above it may be spurious, never below), so the
/// lowest set bit of the two masks marks the first CR or LF.
fn find_eol(hay: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = ONES * b'\n' as u64;
    const CR: u64 = ONES * b'\r' as u64;
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;

    let mut words = hay.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let hits = zero_bytes(w ^ LF) | zero_bytes(w ^ CR);
        if hits != 0 {
            return Some(base + (hits.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|p| base + p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feed `stream` in the pieces between `cuts`, draining events after
    /// every push like the relay does; `finish` ends the stream.
    fn split(stream: &[u8], cuts: &[usize], finish: bool) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut s = SseSplitter::new();
        let mut events = Vec::new();
        let mut at = 0;
        for end in cuts.iter().copied().chain([stream.len()]) {
            s.push(&stream[at..end]);
            while let Some(ev) = s.next_event() {
                events.push(ev.to_vec());
            }
            at = end;
        }
        if finish {
            s.finish();
            while let Some(ev) = s.next_event() {
                events.push(ev.to_vec());
            }
        }
        (events, s.pending().to_vec())
    }

    const OPENAI_STREAM: &[u8] = b"data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\\n\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    /// The events of OPENAI_STREAM, cut where each "\n\n" ends.
    fn openai_events() -> Vec<&'static [u8]> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..OPENAI_STREAM.len() {
            if &OPENAI_STREAM[i - 1..=i] == b"\n\n" {
                out.push(&OPENAI_STREAM[start..=i]);
                start = i + 1;
            }
        }
        out
    }

    /// (name, stream, finish, raw events, pending afterwards)
    type SplitCase<'a> = (&'a str, &'a [u8], bool, Vec<&'a [u8]>, &'a [u8]);

    #[test]
    fn splits_events_at_every_byte_boundary() {
        let openai = openai_events();
        assert_eq!(openai.len(), 6);
        #[rustfmt::skip]
        let table: Vec<SplitCase> = vec![
            ("LF", b"data: a\n\ndata: b\n\n", false,
             vec![b"data: a\n\n", b"data: b\n\n"], b""),
            ("CRLF", b"data: a\r\n\r\ndata: b\r\n\r\n", false,
             vec![b"data: a\r\n\r\n", b"data: b\r\n\r\n"], b""),
            ("CR, finished", b"data: a\r\rdata: b\r\r", true,
             vec![b"data: a\r\r", b"data: b\r\r"], b""),
            ("CR: the last CR may still be half of a CRLF", b"data: a\r\rdata: b\r\r", false,
             vec![b"data: a\r\r"], b"data: b\r\r"),
            ("CRLF after CR-ended line", b"data: a\r\r\ndata: b\n\r", true,
             vec![b"data: a\r\r\n", b"data: b\n\r"], b""),
            ("mixed line ends", b"data: a\r\n\ndata: b\n\r\nevent: x\rdata: c\r\n\r", true,
             vec![b"data: a\r\n\n", b"data: b\n\r\n", b"event: x\rdata: c\r\n\r"], b""),
            ("multi-line data", b"data: line one\ndata: line two\n\n", false,
             vec![b"data: line one\ndata: line two\n\n"], b""),
            ("comments are events' bytes too", b": keep-alive\n\n:ping\ndata: x\n\n", false,
             vec![b": keep-alive\n\n", b":ping\ndata: x\n\n"], b""),
            ("event field", b"event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: ping\ndata: {}\n\n", false,
             vec![b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n", b"event: ping\ndata: {}\n\n"], b""),
            ("[DONE]", b"data: [DONE]\n\n", false, vec![b"data: [DONE]\n\n"], b""),
            ("stray blank line is an empty event", b"\ndata: a\n\n", false,
             vec![b"\n", b"data: a\n\n"], b""),
            ("incomplete tail stays pending", b"data: a\n\ndata: b\n", false,
             vec![b"data: a\n\n"], b"data: b\n"),
            ("unterminated event at finish stays pending", b"data: a\n\ndata: b\r", true,
             vec![b"data: a\n\n"], b"data: b\r"),
            ("LF inside a line is a line end, not data", b"data: {\"a\":\"x\"}\ndata:\n\n", false,
             vec![b"data: {\"a\":\"x\"}\ndata:\n\n"], b""),
            ("OpenAI chat chunks", OPENAI_STREAM, false, openai.clone(), b""),
        ];
        for (name, stream, finish, events, pending) in table {
            let want: (Vec<Vec<u8>>, Vec<u8>) = (
                events.iter().map(|e| e.to_vec()).collect(),
                pending.to_vec(),
            );
            assert_eq!(split(stream, &[], finish), want, "{name}: whole");
            for k in 0..=stream.len() {
                assert_eq!(split(stream, &[k], finish), want, "{name}: split at {k}");
                if stream.len() <= 64 {
                    for k2 in k..=stream.len() {
                        assert_eq!(
                            split(stream, &[k, k2], finish),
                            want,
                            "{name}: split at {k}, {k2}"
                        );
                    }
                }
            }
            let bytes: Vec<usize> = (1..stream.len()).collect();
            assert_eq!(
                split(stream, &bytes, finish),
                want,
                "{name}: byte at a time"
            );
        }
    }

    /// (name, raw, event, data, data borrowed)
    type ParseCase<'a> = (&'a str, &'a [u8], Option<&'a [u8]>, &'a [u8], bool);

    #[test]
    fn parses_events() {
        #[rustfmt::skip]
        let table: Vec<ParseCase> = vec![
            ("one data line", b"data: hello\n\n", None, b"hello", true),
            ("no space after colon", b"data:hello\n\n", None, b"hello", true),
            ("only one space removed", b"data:  two\n\n", None, b" two", true),
            ("multi-line joined by LF", b"data: a\ndata: b\r\ndata: c\r\r", None, b"a\nb\nc", false),
            ("empty data line kept in the join", b"data: a\ndata\ndata: b\n\n", None, b"a\n\nb", false),
            ("event field", b"event: ping\ndata: x\n\n", Some(b"ping"), b"x", true),
            ("last event field wins", b"event: a\nevent: b\ndata: x\n\n", Some(b"b"), b"x", true),
            ("empty event field means message", b"event: a\nevent:\ndata: x\n\n", None, b"x", true),
            ("comments ignored", b": comment\ndata: x\n: another\n\n", None, b"x", true),
            ("id, retry and unknown fields ignored", b"id: 5\nretry: 100\nfoo: bar\ndata: x\n\n", None, b"x", true),
            ("field names are case-sensitive", b"Data: x\nEVENT: y\n\n", None, b"", true),
            ("comment-only event has no data", b": keep-alive\n\n", None, b"", true),
            ("blank event has no data", b"\n", None, b"", true),
            ("stops at the blank line", b"data: x\n\ndata: y\n\n", None, b"x", true),
            ("unterminated last line", b"data: {\"a\":1}", None, b"{\"a\":1}", true),
            ("colon in value kept", b"data: {\"a\":\"b:c\"}\n\n", None, b"{\"a\":\"b:c\"}", true),
            ("CR line ends", b"event: e\rdata: x\r\r", Some(b"e"), b"x", true),
            ("[DONE]", b"data: [DONE]\n\n", None, b"[DONE]", true),
        ];
        for (name, raw, event, data, borrowed) in table {
            let ev = parse_event(raw);
            assert_eq!(ev.event, event, "{name}: event");
            assert_eq!(&*ev.data, data, "{name}: data");
            assert_eq!(
                matches!(ev.data, Cow::Borrowed(_)),
                borrowed,
                "{name}: borrowed"
            );
        }
    }

    #[test]
    fn openai_stream_events_parse_and_end_with_done() {
        let (events, pending) = split(OPENAI_STREAM, &[], false);
        assert!(pending.is_empty());
        let datas: Vec<Vec<u8>> = events
            .iter()
            .map(|e| parse_event(e).data.into_owned())
            .collect();
        assert!(datas[..5]
            .iter()
            .all(|d| d.starts_with(b"{\"id\":\"chatcmpl-9\"") && !is_done(d)));
        assert!(datas[4].windows(5).any(|w| w == b"usage"));
        assert!(is_done(&datas[5]));
        // Forwarding the raw events reproduces the stream byte for byte.
        assert_eq!(events.concat(), OPENAI_STREAM);
    }

    #[test]
    fn done_marker_is_exact() {
        assert!(is_done(b"[DONE]"));
        for not in [
            &b"[DONE] "[..],
            b" [DONE]",
            b"[done]",
            b"DONE",
            b"",
            b"[DONE]\n",
        ] {
            assert!(!is_done(not), "{not:?}");
        }
    }

    /// Regression guard for the O(n) promise: a long stream pushed in small
    /// pieces never lets the buffer grow past a few events.
    #[test]
    fn buffer_stays_small_over_a_long_stream() {
        let mut s = SseSplitter::new();
        let event = openai_events()[1];
        let mut seen = 0;
        for _ in 0..5_000 {
            for piece in event.chunks(7) {
                s.push(piece);
                while let Some(ev) = s.next_event() {
                    assert_eq!(ev, event);
                    seen += 1;
                }
                assert!(
                    s.buf.len() <= 2 * event.len() + 7,
                    "buffer grew to {}",
                    s.buf.len()
                );
            }
        }
        assert_eq!(seen, 5_000);
        assert!(s.pending().is_empty());
    }

    #[test]
    fn big_event_memory_is_given_back() {
        let mut s = SseSplitter::new();
        let mut big = b"data: ".to_vec();
        big.resize(SHRINK_ABOVE * 2, b'x');
        big.extend_from_slice(b"\n\n");
        s.push(&big);
        assert_eq!(s.next_event().map(<[u8]>::len), Some(big.len()));
        s.push(b"data: small\n\n");
        assert!(s.buf.capacity() <= SHRINK_ABOVE);
        assert_eq!(s.next_event(), Some(&b"data: small\n\n"[..]));
    }

    #[test]
    fn find_eol_matches_a_plain_scan() {
        let naive = |h: &[u8]| h.iter().position(|&b| b == b'\n' || b == b'\r');
        // Bytes near CR/LF and with the high bit set stress the word trick.
        let alphabet = [
            b'\n', b'\r', b'a', 0x0b, 0x0c, 0x0e, 0x8a, 0x8d, 0x00, 0xff, b'\t', b'9',
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..80 {
            for _ in 0..200 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Mostly non-matching bytes so matches land anywhere.
                        let r = (x % 64) as usize;
                        if r < 2 {
                            alphabet[r]
                        } else {
                            alphabet[2 + r % (alphabet.len() - 2)]
                        }
                    })
                    .collect();
                assert_eq!(find_eol(&hay), naive(&hay), "{hay:?}");
            }
        }
    }

    /// The relay's whole upstream path: a chunked SSE body (chunk borders
    /// nowhere near event borders) de-chunked and split, fed at every split
    /// point, gives back the original events.
    #[test]
    fn dechunked_stream_splits_into_the_same_events() {
        use crate::http::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
        let mut wire = Vec::new();
        for piece in OPENAI_STREAM.chunks(97) {
            encode_chunk(piece, &mut wire);
        }
        wire.extend_from_slice(LAST_CHUNK);
        let want = openai_events();
        for k in 0..=wire.len() {
            let mut dec = ChunkedDecoder::new();
            let mut sse = SseSplitter::new();
            let mut body = Vec::new();
            let mut got = Vec::new();
            for piece in [&wire[..k], &wire[k..]] {
                body.clear();
                dec.decode(piece, &mut body).unwrap();
                sse.push(&body);
                while let Some(ev) = sse.next_event() {
                    got.push(ev.to_vec());
                }
            }
            assert!(dec.is_done());
            assert_eq!(got, want, "split at {k}");
        }
    }
}
