//! HTTP/1.1 framing for the mock, sans-IO.
//!
//! Bytes in, requests out: [`parse_head`] turns the start of a read buffer
//! into a [`Head`] (parsed by httparse, kept as one owned copy of the head
//! bytes plus offsets, so a request costs two allocations), [`Head::framing`]
//! decides how the body is delimited (RFC 9112 §6.3), and [`ChunkedDecoder`]
//! removes chunked transfer coding from a body fed in arbitrary pieces.
//! On the way out, [`push_head`] writes a response status line and headers.
//! The connection loop in `server` does the reading and writing around these.

use std::ops::Range;

/// Largest request head accepted; larger gets 431.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted; more gets 431.
const MAX_HEADERS: usize = 128;
/// Largest request body accepted; larger gets 413.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// Why a request could not be framed; each maps to a status and the
/// connection is closed after answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// 400: the head or the chunked coding is malformed.
    Malformed(&'static str),
    /// 431: the head is too large or has too many fields.
    HeadTooLarge,
    /// 413: the body is larger than [`MAX_BODY`].
    BodyTooLarge,
}

impl FrameError {
    pub(crate) fn status(self) -> u16 {
        match self {
            FrameError::Malformed(_) => 400,
            FrameError::HeadTooLarge => 431,
            FrameError::BodyTooLarge => 413,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            FrameError::Malformed(what) => what,
            FrameError::HeadTooLarge => "request head too large",
            FrameError::BodyTooLarge => "request body too large",
        }
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Exactly this many bytes follow the head (0 when neither header is sent).
    Length(usize),
    /// Chunked transfer coding, ended by the last-chunk.
    Chunked,
}

/// A parsed request head: one copy of the head bytes and offsets into it.
#[derive(Debug)]
pub(crate) struct Head {
    bytes: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor_version: u8,
}

/// Offset of `part` inside `whole`; `part` must be a sub-slice of `whole`.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// Parses a request head at the start of `buf`. `Ok(None)` means more bytes
/// are needed; `Ok(Some((head, n)))` means the head took `n` bytes.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, FrameError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(FrameError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(FrameError::HeadTooLarge),
        Err(_) => return Err(FrameError::Malformed("malformed request head")),
    };
    if n > MAX_HEAD {
        return Err(FrameError::HeadTooLarge);
    }
    let head_bytes = &buf[..n];
    // httparse only returns Complete once method, path and version are set.
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(FrameError::Malformed("malformed request line"));
    };
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                range_in(head_bytes, h.name.as_bytes()),
                range_in(head_bytes, h.value),
            )
        })
        .collect();
    let head = Head {
        method: range_in(head_bytes, method.as_bytes()),
        target: range_in(head_bytes, target.as_bytes()),
        headers,
        minor_version,
        bytes: head_bytes.to_vec(),
    };
    Ok(Some((head, n)))
}

/// The bytes of `range` as text; httparse has already checked the request
/// line and header names are tokens, and values that are not UTF-8 read as "".
fn text<'a>(bytes: &'a [u8], range: &Range<usize>) -> &'a str {
    bytes
        .get(range.clone())
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("")
}

impl Head {
    pub(crate) fn method(&self) -> &str {
        text(&self.bytes, &self.method)
    }

    /// The request target as sent, query included.
    pub(crate) fn target(&self) -> &str {
        text(&self.bytes, &self.target)
    }

    /// The request target without its query string.
    pub(crate) fn path(&self) -> &str {
        let target = self.target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// Every header field in order, as sent.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (text(&self.bytes, n), text(&self.bytes, v)))
    }

    /// The first value of header `name` (case-insensitive), trimmed.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection stays open after the response: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`
    /// (RFC 9112 §9.3).
    pub(crate) fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }

    /// Whether the client waits for `100 Continue` before sending the body.
    pub(crate) fn expects_continue(&self) -> bool {
        self.minor_version == 1 && self.has_token("expect", "100-continue")
    }

    /// How the body is delimited (RFC 9112 §6.3): Transfer-Encoding wins over
    /// Content-Length and must end in chunked for a request; differing
    /// Content-Length values are an error.
    pub(crate) fn framing(&self) -> Result<Framing, FrameError> {
        let mut te = self
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .peekable();
        if te.peek().is_some() {
            return match te.last() {
                Some(last) if last.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
                _ => Err(FrameError::Malformed(
                    "transfer-encoding must end with chunked",
                )),
            };
        }
        let mut length = None;
        for (_, value) in self
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            for part in value.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FrameError::Malformed("content-length is not a number"));
                }
                let n: usize = part
                    .parse()
                    .map_err(|_| FrameError::Malformed("content-length is not a number"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(FrameError::Malformed("conflicting content-length values"));
                }
                length = Some(n);
            }
        }
        match length {
            Some(n) if n > MAX_BODY => Err(FrameError::BodyTooLarge),
            Some(n) => Ok(Framing::Length(n)),
            None => Ok(Framing::Length(0)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// In the chunk-size hex digits.
    Size {
        value: usize,
        digits: u8,
    },
    /// In chunk extensions, skipped up to the line end.
    Extension {
        value: usize,
    },
    /// Saw CR after the size line; LF must follow.
    SizeLf {
        value: usize,
    },
    /// In chunk data, this many bytes to go.
    Data(usize),
    /// After chunk data; CRLF must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field, skipped.
    TrailerLine,
    /// Saw CR of the final empty line; LF must follow.
    LastLf,
    Done,
}

/// Removes chunked transfer coding (RFC 9112 §7.1) from a body fed in pieces
/// of any size. Trailer fields are read and dropped. A bare LF is accepted
/// where CRLF belongs, as most servers do.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: Chunk,
    total: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: Chunk::Size {
                value: 0,
                digits: 0,
            },
            total: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Decodes from `input`, appending body bytes to `out`. Returns how many
    /// bytes of `input` were used and whether the body is complete; when it
    /// is not, all of `input` was used.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), FrameError> {
        const BAD: FrameError = FrameError::Malformed("malformed chunked body");
        let mut i = 0;
        while i < input.len() {
            if let Chunk::Done = self.state {
                break;
            }
            if let Chunk::Data(left) = self.state {
                let take = left.min(input.len() - i);
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                self.state = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as usize;
                    if digits >= 15 {
                        return Err(FrameError::BodyTooLarge);
                    }
                    Chunk::Size {
                        value: value * 16 + digit,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { value, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunk::Extension { value }
                }
                (Chunk::Size { value, digits }, b'\r') if digits > 0 => Chunk::SizeLf { value },
                (Chunk::Size { value, digits }, b'\n') if digits > 0 => self.size_line(value)?,
                (Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value },
                (Chunk::Extension { value }, b'\n') => self.size_line(value)?,
                (Chunk::Extension { value }, _) => Chunk::Extension { value },
                (Chunk::SizeLf { value }, b'\n') => self.size_line(value)?,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                (Chunk::TrailerStart, b'\r') => Chunk::LastLf,
                (Chunk::TrailerStart | Chunk::LastLf, b'\n') => Chunk::Done,
                (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                _ => return Err(BAD),
            };
        }
        Ok((i, matches!(self.state, Chunk::Done)))
    }

    /// A size line ended: a zero size starts the trailer section.
    fn size_line(&mut self, value: usize) -> Result<Chunk, FrameError> {
        if value == 0 {
            return Ok(Chunk::TrailerStart);
        }
        self.total = self.total.saturating_add(value);
        if self.total > MAX_BODY {
            return Err(FrameError::BodyTooLarge);
        }
        Ok(Chunk::Data(value))
    }
}

/// The reason phrase for the statuses the mock sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The body a response head announces.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BodyKind {
    /// `Content-Length` framed.
    Length(usize),
    /// `Transfer-Encoding: chunked`, an SSE stream.
    EventStream,
}

/// Appends a response status line and headers, ending with the empty line.
pub(crate) fn push_head(
    out: &mut Vec<u8>,
    status: u16,
    body: BodyKind,
    retry_after: Option<&str>,
    close: bool,
) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    match body {
        BodyKind::Length(n) => {
            let _ = write!(out, "content-type: application/json\r\ncontent-length: {n}\r\n");
        }
        BodyKind::EventStream => out.extend_from_slice(
            b"content-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n",
        ),
    }
    if let Some(secs) = retry_after {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            Ok(Some((h, n))) => {
                assert_eq!(n, raw.len());
                h
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn head_parses_at_every_split() {
        let raw = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nX-Mock-Chunks:  3 \r\nContent-Length: 2\r\n\r\n{}";
        let end = raw.len() - 2;
        for cut in 0..end {
            assert!(matches!(parse_head(&raw[..cut]), Ok(None)), "cut {cut}");
        }
        let Ok(Some((h, n))) = parse_head(raw) else {
            panic!("complete head")
        };
        assert_eq!(n, end);
        assert_eq!(h.method(), "POST");
        assert_eq!(h.path(), "/v1/chat/completions");
        assert_eq!(h.target(), "/v1/chat/completions?x=1");
        assert_eq!(h.header("x-mock-chunks"), Some("3"));
        assert_eq!(h.framing(), Ok(Framing::Length(2)));
        assert!(h.keep_alive());
        assert_eq!(h.headers().count(), 3);
    }

    #[test]
    fn framing_table() {
        let table: [(&str, Result<Framing, FrameError>); 7] = [
            ("", Ok(Framing::Length(0))),
            ("Content-Length: 10\r\n", Ok(Framing::Length(10))),
            (
                "Content-Length: 10\r\nContent-Length: 10\r\n",
                Ok(Framing::Length(10)),
            ),
            (
                "Content-Length: 10\r\nContent-Length: 11\r\n",
                Err(FrameError::Malformed("conflicting content-length values")),
            ),
            (
                "Content-Length: -1\r\n",
                Err(FrameError::Malformed("content-length is not a number")),
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n",
                Ok(Framing::Chunked),
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                Err(FrameError::Malformed(
                    "transfer-encoding must end with chunked",
                )),
            ),
        ];
        for (fields, want) in table {
            let h = head(&format!("POST / HTTP/1.1\r\n{fields}\r\n"));
            assert_eq!(h.framing(), want, "{fields:?}");
        }
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(head(&big).framing(), Err(FrameError::BodyTooLarge));
    }

    #[test]
    fn keep_alive_table() {
        let table = [
            ("GET / HTTP/1.1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ];
        for (raw, want) in table {
            assert_eq!(head(raw).keep_alive(), want, "{raw:?}");
        }
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expects_continue());
    }

    #[test]
    fn head_errors() {
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").err(),
            Some(FrameError::Malformed("malformed request head"))
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(raw.as_bytes()).err(),
            Some(FrameError::HeadTooLarge)
        );
        let long = vec![b'a'; MAX_HEAD + 1];
        let mut raw = b"GET / HTTP/1.1\r\nx: ".to_vec();
        raw.extend_from_slice(&long);
        assert_eq!(parse_head(&raw).err(), Some(FrameError::HeadTooLarge));
    }

    /// Feeds `input` split at `cut`, then returns the body and bytes used.
    fn decode_split(input: &[u8], cut: usize) -> Result<(Vec<u8>, usize, bool), FrameError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let (a, done) = d.decode(&input[..cut], &mut out)?;
        if done {
            return Ok((out, a, true));
        }
        assert_eq!(a, cut);
        let (b, done) = d.decode(&input[cut..], &mut out)?;
        Ok((out, a + b, done))
    }

    #[test]
    fn chunked_table_at_every_split() {
        let table: [(&[u8], &[u8]); 6] = [
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (
                b"A;ext=1\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n",
                b"0123456789",
            ),
            (b"3\nabc\n0\n\n", b"abc"),
            (
                b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
                b"abcdefghijklmnopqrstuvwxyz",
            ),
        ];
        for (wire, body) in table {
            let mut input = wire.to_vec();
            input.extend_from_slice(b"GET /next");
            for cut in 0..=input.len() {
                let got = decode_split(&input, cut);
                assert_eq!(
                    got,
                    Ok((body.to_vec(), wire.len(), true)),
                    "{wire:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn chunked_incomplete_and_errors() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"5\r\nhel", &mut out), Ok((6, false)));
        assert_eq!(out, b"hel");
        let bad: [&[u8]; 4] = [b"x\r\n", b"\r\n", b"3\r\nabcX", b"0\r\n\rX"];
        for wire in bad {
            let mut d = ChunkedDecoder::default();
            assert!(d.decode(wire, &mut Vec::new()).is_err(), "{wire:?}");
        }
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b"fffffffffffffff0\r\n", &mut Vec::new()),
            Err(FrameError::BodyTooLarge)
        );
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        push_head(&mut out, 429, BodyKind::Length(2), Some("7"), true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 2\r\nretry-after: 7\r\nconnection: close\r\n\r\n"
        );
        out.clear();
        push_head(&mut out, 200, BodyKind::EventStream, None, false);
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }
}
