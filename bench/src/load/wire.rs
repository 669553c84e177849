//! What the load generator reads off the wire, without touching a socket.
//!
//! In: response bytes exactly as they arrive, split anywhere. Out: calls on
//! a [`Sink`] — the response head once, then the body bytes with the
//! transfer coding removed — and, for event streams, one call per SSE event
//! from [`SseSplitter`]. [`Classifier`] says what an event means to the
//! stream checks (a content token, the usage chunk, an error, `[DONE]`).
//!
//! Both parsers are streaming state machines: a connection keeps one of
//! each and feeds it whatever each read returned, so nothing but a partial
//! head or a partial SSE line is ever copied. The generator only needs
//! enough HTTP/1.1 to measure a server honestly: status, framing
//! (RFC 9112 §6.3), keep-alive and the content type.

use memchr::memmem;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Header fields parsed per response head.
const MAX_HEADERS: usize = 64;

/// The parts of a response head the generator acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
}

/// Why a response could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The head is not HTTP/1.x or a header is malformed.
    BadHead(String),
    /// The head grew past [`MAX_HEAD`] bytes.
    HeadTooLarge,
    /// A chunk-size line or the CRLF after chunk data is malformed.
    BadChunk,
    /// The connection ended before the response did.
    Truncated,
    /// Bytes arrived after the response ended (the generator never
    /// pipelines, so the server sent more than one response).
    Trailing,
}

impl WireError {
    /// A short name for error tallies.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::BadHead(_) | WireError::HeadTooLarge => "bad_head",
            WireError::BadChunk => "bad_chunk",
            WireError::Truncated => "truncated",
            WireError::Trailing => "trailing_bytes",
        }
    }
}

/// Receives the parts of one response as they are parsed.
pub trait Sink {
    fn on_head(&mut self, head: &Head);
    /// Body bytes, transfer coding removed; called zero or more times.
    fn on_body(&mut self, data: &[u8]);
}

/// What [`ResponseParser::feed`] reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The response is not complete yet; all input was consumed.
    NeedMore,
    /// The response ended; the input had nothing after it.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the chunk-size line: hex digits, then an extension, then CRLF.
    Size { size: u64, digits: u8, ext: bool },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after chunk data: `seen_cr` once the CR is in.
    DataEnd { seen_cr: bool },
    /// Trailer section after the last chunk; `line` counts the bytes of the
    /// current line (an empty line ends the message).
    Trailer { line: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    /// No length and not chunked: the body runs to the end of the connection.
    UntilClose,
    Done,
}

/// Parses one HTTP/1.1 response at a time; [`reset`](Self::reset) before
/// the next one on the same connection.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// A head that spans reads, kept until it is complete.
    partial: Vec<u8>,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self {
            state: State::Head,
            partial: Vec::new(),
        }
    }
}

impl ResponseParser {
    /// Ready for the next response.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.partial.clear();
    }

    /// Whether no byte of a response has arrived yet.
    pub fn at_start(&self) -> bool {
        self.state == State::Head && self.partial.is_empty()
    }

    /// Feeds the next bytes read from the connection.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl Sink) -> Result<Progress, WireError> {
        loop {
            match self.state {
                State::Head => {
                    let used = self.head(input, sink)?;
                    input = &input[used..];
                    // Still in the head: it is partial (all input used), or
                    // an interim response was skipped and more may follow.
                    if self.state == State::Head && input.is_empty() {
                        return Ok(Progress::NeedMore);
                    }
                }
                State::Length(left) => {
                    let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    if take > 0 {
                        sink.on_body(&input[..take]);
                    }
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    if left > 0 {
                        return Ok(Progress::NeedMore);
                    }
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunked(chunk, input, sink)?;
                    input = &input[used..];
                    self.state = next;
                    if input.is_empty() && next != State::Done {
                        return Ok(Progress::NeedMore);
                    }
                }
                State::UntilClose => {
                    if !input.is_empty() {
                        sink.on_body(input);
                    }
                    return Ok(Progress::NeedMore);
                }
                State::Done => {
                    return if input.is_empty() {
                        Ok(Progress::Done)
                    } else {
                        Err(WireError::Trailing)
                    };
                }
            }
        }
    }

    /// The connection reached end of stream: only a body that runs to the
    /// close ends well here.
    pub fn finish(&mut self) -> Result<Progress, WireError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(Progress::Done)
            }
            _ => Err(WireError::Truncated),
        }
    }

    /// Parses the head from `partial` + `input`; returns how much of
    /// `input` it used (all of it while the head is incomplete).
    fn head(&mut self, input: &[u8], sink: &mut impl Sink) -> Result<usize, WireError> {
        let before = self.partial.len();
        let buf: &[u8] = if before == 0 {
            input
        } else {
            self.partial.extend_from_slice(input);
            &self.partial
        };
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let end = match response.parse(buf) {
            Ok(httparse::Status::Complete(end)) => end,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(WireError::HeadTooLarge);
                }
                if before == 0 {
                    self.partial.extend_from_slice(input);
                }
                return Ok(input.len());
            }
            Err(e) => return Err(WireError::BadHead(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        let http10 = response.version == Some(0);
        let mut keep_alive = !http10;
        let mut event_stream = false;
        let mut length = None;
        let mut chunked = false;
        for h in response.headers.iter() {
            let value = h.value;
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| WireError::BadHead("bad content-length".into()))?;
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked must be the last coding (RFC 9112 §6.1).
                chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("content-type") {
                event_stream = value
                    .split(|b| *b == b';')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"text/event-stream"));
            }
        }
        let used = end - before;
        self.partial.clear();
        // Interim responses (100 Continue, 103 Early Hints) precede the
        // real one; 101 would switch protocols, which a load test never asks.
        if (100..200).contains(&status) && status != 101 {
            return Ok(used);
        }
        // RFC 9112 §6.3: no body for 1xx/204/304; chunked wins over a
        // length; neither means the body runs until the close.
        self.state = if matches!(status, 101..=199 | 204 | 304) {
            State::Done
        } else if chunked {
            State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            })
        } else if let Some(n) = length {
            if n == 0 {
                State::Done
            } else {
                State::Length(n)
            }
        } else {
            keep_alive = false;
            State::UntilClose
        };
        sink.on_head(&Head {
            status,
            keep_alive,
            event_stream,
        });
        Ok(used)
    }
}

/// Advances the chunked decoder over `input`; returns the bytes used and
/// the next state (RFC 9112 §7.1: `size [; ext] CRLF data CRLF`, a zero
/// size ends the data, then trailer lines and an empty line).
fn chunked(
    mut chunk: Chunk,
    input: &[u8],
    sink: &mut impl Sink,
) -> Result<(usize, State), WireError> {
    let mut i = 0;
    while i < input.len() {
        match chunk {
            Chunk::Size { size, digits, ext } => {
                let b = input[i];
                i += 1;
                match b {
                    b'\n' => {
                        if digits == 0 {
                            return Err(WireError::BadChunk);
                        }
                        chunk = if size == 0 {
                            Chunk::Trailer { line: 0 }
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    b'\r' => {}
                    _ if ext => {}
                    b';' | b' ' | b'\t' => {
                        chunk = Chunk::Size {
                            size,
                            digits,
                            ext: true,
                        }
                    }
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(WireError::BadChunk)?;
                        if digits >= 15 {
                            return Err(WireError::BadChunk);
                        }
                        chunk = Chunk::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                            ext,
                        };
                    }
                }
            }
            Chunk::Data(left) => {
                let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                sink.on_body(&input[i..i + take]);
                i += take;
                let left = left - take as u64;
                chunk = if left == 0 {
                    Chunk::DataEnd { seen_cr: false }
                } else {
                    Chunk::Data(left)
                };
            }
            Chunk::DataEnd { seen_cr } => {
                let b = input[i];
                i += 1;
                chunk = match (b, seen_cr) {
                    (b'\r', false) => Chunk::DataEnd { seen_cr: true },
                    (b'\n', _) => Chunk::Size {
                        size: 0,
                        digits: 0,
                        ext: false,
                    },
                    _ => return Err(WireError::BadChunk),
                };
            }
            Chunk::Trailer { line } => {
                let b = input[i];
                i += 1;
                match b {
                    b'\n' if line == 0 => return Ok((i, State::Done)),
                    b'\n' => chunk = Chunk::Trailer { line: 0 },
                    b'\r' => {}
                    _ => chunk = Chunk::Trailer { line: line + 1 },
                }
            }
        }
    }
    Ok((i, State::Chunked(chunk)))
}

/// Splits an event-stream body into events (the WHATWG "server-sent
/// events" parsing rules, for LF and CRLF line ends): `data:` lines joined
/// with `\n`, `event:` names, comments dropped, dispatched on a blank line.
#[derive(Debug, Default)]
pub struct SseSplitter {
    /// A line that spans reads.
    line: Vec<u8>,
    data: Vec<u8>,
    event: Vec<u8>,
    has_data: bool,
}

impl SseSplitter {
    pub fn reset(&mut self) {
        self.line.clear();
        self.data.clear();
        self.event.clear();
        self.has_data = false;
    }

    /// Feeds body bytes; calls `on_event(name, data)` per complete event
    /// (`name` is empty when the event had no `event:` field).
    pub fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
        while let Some(nl) = memchr::memchr(b'\n', input) {
            if self.line.is_empty() {
                self.line_done(&input[..nl], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..nl]);
                self.line_done(&line, on_event);
                line.clear();
                self.line = line;
            }
            input = &input[nl + 1..];
        }
        self.line.extend_from_slice(input);
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                on_event(&self.event, &self.data);
            }
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            _ => {}
        }
    }
}

/// What one SSE event carries, as far as the stream checks care.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// `data: [DONE]`.
    pub done: bool,
    /// A `usage` object (not `"usage":null`).
    pub usage: bool,
    /// An `event: error` or an `"error":{…}` object.
    pub error: bool,
    /// Non-empty generated text (`"content":"x…"` or `"text":"x…"`).
    pub token: bool,
}

/// Classifies events by looking for a few byte patterns instead of parsing
/// JSON, so the generator stays cheap at hundreds of thousands of events a
/// second. The patterns are JSON keys followed by what a value must start
/// with; inside a JSON string the quotes would be escaped, so generated text
/// cannot fake them.
pub struct Classifier {
    usage: memmem::Finder<'static>,
    error: memmem::Finder<'static>,
    content: memmem::Finder<'static>,
    text: memmem::Finder<'static>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self {
            usage: memmem::Finder::new(b"\"usage\":"),
            error: memmem::Finder::new(b"\"error\":"),
            content: memmem::Finder::new(b"\"content\":"),
            text: memmem::Finder::new(b"\"text\":"),
        }
    }
}

/// The first byte after `at` that is not JSON whitespace.
fn value_start(data: &[u8], at: usize) -> Option<u8> {
    data.get(at..)?
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Whether the key found by `finder` has a value whose first byte is
/// `open` and, for strings, is not empty.
fn has_value(finder: &memmem::Finder<'_>, data: &[u8], open: u8, nonempty_string: bool) -> bool {
    let mut from = 0;
    while let Some(pos) = finder.find(&data[from..]) {
        let after = from + pos + finder.needle().len();
        if value_start(data, after) == Some(open) {
            if !nonempty_string {
                return true;
            }
            let quote = data[after..]
                .iter()
                .position(|b| *b == b'"')
                .map(|q| after + q);
            if quote
                .and_then(|q| data.get(q + 1))
                .is_some_and(|b| *b != b'"')
            {
                return true;
            }
        }
        from = after;
    }
    false
}

impl Classifier {
    /// What event `name`/`data` carries; `want_token` false skips the
    /// search for generated text (once a stream has its first token).
    pub fn classify(&self, name: &[u8], data: &[u8], want_token: bool) -> Seen {
        if data == b"[DONE]" {
            return Seen {
                done: true,
                ..Seen::default()
            };
        }
        Seen {
            done: false,
            usage: has_value(&self.usage, data, b'{', false),
            error: name == b"error" || has_value(&self.error, data, b'{', false),
            token: want_token
                && (has_value(&self.content, data, b'"', true)
                    || has_value(&self.text, data, b'"', true)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Got {
        heads: Vec<Head>,
        body: Vec<u8>,
    }

    impl Sink for Got {
        fn on_head(&mut self, head: &Head) {
            self.heads.push(head.clone());
        }
        fn on_body(&mut self, data: &[u8]) {
            self.body.extend_from_slice(data);
        }
    }

    /// Feeds `raw` split at `at` (two reads) and then ends the connection
    /// when `eof` is set.
    fn parse_split(raw: &[u8], at: usize, eof: bool) -> (Got, Result<Progress, WireError>) {
        let mut p = ResponseParser::default();
        let mut got = Got::default();
        let mut res = p.feed(&raw[..at], &mut got);
        // After Done, more bytes are fed too: they must be refused.
        if res == Ok(Progress::NeedMore) || (res == Ok(Progress::Done) && at < raw.len()) {
            res = p.feed(&raw[at..], &mut got);
        }
        if eof && res == Ok(Progress::NeedMore) {
            res = p.finish();
        }
        (got, res)
    }

    fn head(status: u16, keep_alive: bool, event_stream: bool) -> Head {
        Head {
            status,
            keep_alive,
            event_stream,
        }
    }

    #[test]
    fn responses_split_at_every_byte() {
        let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
                   transfer-encoding: chunked\r\n\r\n\
                   f\r\ndata: {\"a\":1}\n\n\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        // (what, raw response, end of stream after it, result, heads, body)
        type Case<'a> = (
            &'a str,
            &'a str,
            bool,
            Result<Progress, WireError>,
            Vec<Head>,
            &'a str,
        );
        let table: [Case; 9] = [
            (
                "length",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                false,
                Ok(Progress::Done),
                vec![head(200, true, false)],
                "hello",
            ),
            (
                "chunked event stream with extension and trailer",
                sse,
                false,
                Ok(Progress::Done),
                vec![head(200, true, true)],
                "data: {\"a\":1}\n\nabc",
            ),
            (
                "connection close",
                "HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
                false,
                Ok(Progress::Done),
                vec![head(401, false, false)],
                "{}",
            ),
            (
                "http/1.0 without keep-alive",
                "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                Ok(Progress::Done),
                vec![head(200, false, false)],
                "",
            ),
            (
                "body until close",
                "HTTP/1.1 200 OK\r\n\r\nall of it",
                true,
                Ok(Progress::Done),
                vec![head(200, false, false)],
                "all of it",
            ),
            (
                "100 continue is skipped",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                false,
                Ok(Progress::Done),
                vec![head(204, true, false)],
                "",
            ),
            (
                "truncated chunked body",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                true,
                Err(WireError::Truncated),
                vec![head(200, true, false)],
                "ab",
            ),
            (
                "bad chunk size",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false,
                Err(WireError::BadChunk),
                vec![head(200, true, false)],
                "",
            ),
            (
                "a second response is trailing bytes",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n",
                false,
                Err(WireError::Trailing),
                vec![head(200, true, false)],
                "a",
            ),
        ];
        for (what, raw, eof, want, heads, body) in table {
            for at in 0..=raw.len() {
                let (got, res) = parse_split(raw.as_bytes(), at, eof);
                assert_eq!(res, want, "{what}, split at {at}");
                assert_eq!(got.heads, heads, "{what}, split at {at}");
                assert_eq!(
                    String::from_utf8_lossy(&got.body),
                    body,
                    "{what}, split at {at}"
                );
            }
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        let mut p = ResponseParser::default();
        let res = p.feed(b"NOT HTTP\r\n\r\n", &mut Got::default());
        assert!(matches!(res, Err(WireError::BadHead(_))), "{res:?}");
        let mut p = ResponseParser::default();
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(
            p.feed(huge.as_bytes(), &mut Got::default()),
            Err(WireError::HeadTooLarge)
        );
    }

    #[test]
    fn parser_resets_between_responses() {
        let mut p = ResponseParser::default();
        let mut got = Got::default();
        for _ in 0..3 {
            assert!(p.at_start());
            let r = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", &mut got);
            assert_eq!(r, Ok(Progress::Done));
            p.reset();
        }
        assert_eq!(got.body, b"okokok");
    }

    fn events(parts: &[&[u8]]) -> Vec<(String, String)> {
        let mut s = SseSplitter::default();
        let mut out = Vec::new();
        for p in parts {
            s.feed(p, &mut |name: &[u8], data: &[u8]| {
                out.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(data).into_owned(),
                ));
            });
        }
        out
    }

    #[test]
    fn sse_events_split_at_every_byte() {
        let raw: &[u8] =
            b": comment\n\ndata: one\n\nevent: error\r\ndata: {\"x\":1}\r\ndata:two\r\n\r\n\
                           id: 3\nretry: 5\n\ndata\n\ndata: [DONE]\n\n";
        let want = vec![
            (String::new(), "one".to_owned()),
            ("error".to_owned(), "{\"x\":1}\ntwo".to_owned()),
            (String::new(), String::new()),
            (String::new(), "[DONE]".to_owned()),
        ];
        assert_eq!(events(&[raw]), want);
        for at in 0..=raw.len() {
            assert_eq!(events(&[&raw[..at], &raw[at..]]), want, "split at {at}");
        }
        let bytewise: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(events(&bytewise), want);
    }

    #[test]
    fn classifier_table() {
        let c = Classifier::default();
        let seen = |done, usage, error, token| Seen {
            done,
            usage,
            error,
            token,
        };
        let table: [(&str, &str, Seen); 10] = [
            ("", "[DONE]", seen(true, false, false, false)),
            (
                "",
                r#"{"choices":[{"delta":{"role":"assistant","content":""}}],"usage":null}"#,
                seen(false, false, false, false),
            ),
            (
                "",
                r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
                seen(false, false, false, true),
            ),
            (
                "",
                r#"{"choices":[{"delta":{"content": "Hi"}}]}"#,
                seen(false, false, false, true),
            ),
            (
                "",
                r#"{"choices":[{"text":"x","finish_reason":null}]}"#,
                seen(false, false, false, true),
            ),
            (
                "",
                r#"{"choices":[],"usage":{"prompt_tokens":3}}"#,
                seen(false, true, false, false),
            ),
            (
                "",
                r#"{"error":{"message":"boom"}}"#,
                seen(false, false, true, false),
            ),
            (
                "error",
                r#"{"message":"boom"}"#,
                seen(false, false, true, false),
            ),
            (
                "",
                r#"{"choices":[{"delta":{"content":"say \"error\":{ and \"usage\":{"}}]}"#,
                seen(false, false, false, true),
            ),
            (
                "",
                r#"{"choices":[{"delta":{"content":null}}],"error":null}"#,
                seen(false, false, false, false),
            ),
        ];
        for (name, data, want) in table {
            assert_eq!(
                c.classify(name.as_bytes(), data.as_bytes(), true),
                want,
                "{name} {data}"
            );
        }
    }
}
