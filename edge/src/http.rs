//! HTTP/1.1 framing, sans-IO: no sockets, no timers, only bytes in and out.
//!
//! Downstream side: the connection loop feeds the bytes read so far to
//! [`parse_request_head`] until it returns a [`RequestHead`], then reads the
//! body as its [`BodyKind`] says (a [`ChunkedDecoder`] for chunked bodies).
//! Upstream side: the relay feeds the provider's bytes to
//! [`parse_response_head`] and de-chunks the body with [`ChunkedDecoder`]
//! before handing it to the SSE splitter (`sse.rs`).
//! Going out: [`write_response_head`], [`encode_chunk`] and [`LAST_CHUNK`]
//! frame what sluice sends downstream; [`is_hop_by_hop`] says which received
//! fields must not be forwarded.
//!
//! Head parsing is httparse's; message length (RFC 9112 §6) is decided here,
//! strictly: an ambiguous length is an error, never a guess, because a proxy
//! that reads a length differently from its peer can be smuggled through.

/// Most header fields accepted in one head; one more is `HeadError::TooLarge`.
pub const MAX_HEADERS: usize = 100;

/// Longest chunk-ext run or trailer section the decoder skips before giving up.
/// Neither is ever used by sluice, and without a cap a peer could keep the
/// decoder busy forever without sending a body byte.
const MAX_CHUNK_LINE_EXTRA: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How a message body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding: decode with [`ChunkedDecoder`].
    Chunked,
    /// The body ends when the peer closes the connection (responses only).
    UntilClose,
}

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Head exceeds the limit before it completed, or has more than
    /// [`MAX_HEADERS`] fields: 431 (request) / upstream protocol error (response).
    TooLarge,
    /// Malformed; the message is for a 400 body or a log line.
    Invalid(&'static str),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("HTTP head too large"),
            HeadError::Invalid(why) => write!(f, "malformed HTTP head: {why}"),
        }
    }
}

impl std::error::Error for HeadError {}

/// One header field as received: name as sent (case kept), value with
/// surrounding whitespace trimmed (RFC 9112 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// Request-target as sent (origin-form for everything sluice serves).
    pub path: String,
    /// 0 or 1.
    pub minor_version: u8,
    /// In order, names as sent.
    pub headers: Vec<Header>,
    /// Bytes of the head including the final empty line; the body (or the
    /// next pipelined request) starts here.
    pub head_len: usize,
    /// None, Length or Chunked; never UntilClose for a request.
    pub body: BodyKind,
    /// HTTP/1.1: true unless `Connection: close`; HTTP/1.0: only with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
}

impl RequestHead {
    /// First value of the field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    /// Reason phrase as sent; empty if absent or not valid text.
    pub reason: String,
    pub minor_version: u8,
    pub headers: Vec<Header>,
    /// Bytes of the head including the final empty line.
    pub head_len: usize,
    pub body: BodyKind,
    /// Whether the connection may carry another request after this response
    /// (always false for `UntilClose`).
    pub keep_alive: bool,
}

impl ResponseHead {
    /// First value of the field `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

/// Parse a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Err(TooLarge)`: `buf` holds `max_head`
/// bytes or more without a complete head, or more than [`MAX_HEADERS`] fields.
/// Bytes after `head_len` (body, pipelined requests) are not looked at.
pub fn parse_request_head(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    // Parse at most `max_head` bytes so an over-long head costs no more
    // than the limit, whatever the caller has buffered.
    let view = &buf[..buf.len().min(max_head)];
    let head_len = match req.parse(view) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(from_httparse(e)),
    };
    let (Some(method), Some(path), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::Invalid("incomplete request line"));
    };

    let fields = Fields::scan(req.headers)?;
    if minor_version == 1 {
        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
        // without Host, or with more than one Host field.
        match fields.host_count {
            0 => return Err(HeadError::Invalid("missing Host header")),
            1 => {}
            _ => return Err(HeadError::Invalid("more than one Host header")),
        }
    } else if fields.host_count > 1 {
        return Err(HeadError::Invalid("more than one Host header"));
    }

    // RFC 9112 §6.3 for requests, in order.
    let body = if fields.te_present {
        // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        if minor_version == 0 {
            return Err(HeadError::Invalid(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        // §6.3 item 3: TE and CL together may be a smuggling attempt; reject.
        if fields.content_length.is_some() {
            return Err(HeadError::Invalid(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        // §6.3 item 4: the final coding must be chunked, else the length is
        // unknowable. §6.1: an unknown coding is refused; sluice decodes only
        // chunked, and TE is hop-by-hop, so any other coding would reach the
        // provider undecoded and unmarked.
        if !fields.te_last_chunked {
            return Err(HeadError::Invalid(
                "Transfer-Encoding must end with chunked",
            ));
        }
        if fields.te_other {
            return Err(HeadError::Invalid(
                "unsupported transfer coding (only chunked)",
            ));
        }
        BodyKind::Chunked
    } else {
        match fields.content_length {
            Some(n) => BodyKind::Length(n),
            // §6.3 item 7: no TE and no CL means no body.
            None => BodyKind::None,
        }
    };

    let keep_alive = fields.keep_alive(minor_version);
    // RFC 9110 §10.1.1: a server MUST ignore 100-continue in HTTP/1.0.
    let expect_continue = minor_version == 1 && fields.expect_continue;

    Ok(Some(RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        minor_version,
        headers: owned_headers(req.headers),
        head_len,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// Parse a response head from the start of `buf`.
///
/// `head_request`: the request was HEAD, so the response has no body whatever
/// its fields say. Interim 1xx responses (100 Continue, 103 Early Hints) come
/// back as heads with `BodyKind::None`; the caller skips them and parses
/// again at `head_len`. Same `Ok(None)` / `TooLarge` rules as
/// [`parse_request_head`].
pub fn parse_response_head(
    buf: &[u8],
    max_head: usize,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let view = &buf[..buf.len().min(max_head)];
    let head_len = match res.parse(view) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(from_httparse(e)),
    };
    let (Some(status), Some(minor_version)) = (res.code, res.version) else {
        return Err(HeadError::Invalid("incomplete status line"));
    };
    if status < 100 {
        return Err(HeadError::Invalid("status code below 100"));
    }

    let fields = Fields::scan(res.headers)?;
    let mut keep_alive = fields.keep_alive(minor_version);

    // RFC 9112 §6.3 for responses, in order.
    let body = if status == 101 {
        // The connection stops being HTTP after a 101: whatever follows
        // belongs to the new protocol until close.
        BodyKind::UntilClose
    } else if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        // §6.3 item 1: never a body, whatever a (well-formed) Content-Length
        // or Transfer-Encoding says (304/HEAD carry the GET's length).
        BodyKind::None
    } else if fields.te_present {
        // §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
        if minor_version == 0 {
            return Err(HeadError::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        // §6.3 item 3: TE with CL "ought to be handled as an error"; a proxy
        // must not pass on a message whose length two peers may read apart.
        if fields.content_length.is_some() {
            return Err(HeadError::Invalid(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if fields.te_last_chunked {
            BodyKind::Chunked
        } else {
            // §6.3 item 4: final coding not chunked: read until close.
            BodyKind::UntilClose
        }
    } else {
        match fields.content_length {
            Some(n) => BodyKind::Length(n),
            // §6.3 item 8: no length given, the body runs until close.
            None => BodyKind::UntilClose,
        }
    };
    if body == BodyKind::UntilClose {
        keep_alive = false;
    }

    Ok(Some(ResponseHead {
        status,
        reason: res.reason.unwrap_or("").to_owned(),
        minor_version,
        headers: owned_headers(res.headers),
        head_len,
        body,
        keep_alive,
    }))
}

fn from_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::HeaderName => HeadError::Invalid("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Invalid("invalid header value"),
        httparse::Error::NewLine => HeadError::Invalid("invalid line ending"),
        httparse::Error::Status => HeadError::Invalid("invalid status line"),
        httparse::Error::Token => HeadError::Invalid("invalid token in request line"),
        httparse::Error::Version => HeadError::Invalid("invalid HTTP version"),
    }
}

fn owned_headers(raw: &[httparse::Header<'_>]) -> Vec<Header> {
    raw.iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// What the framing- and connection-related fields of one head say.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    te_present: bool,
    te_last_chunked: bool,
    te_chunked_seen: bool,
    /// A coding other than chunked was listed.
    te_other: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
    host_count: usize,
}

impl Fields {
    fn scan(headers: &[httparse::Header<'_>]) -> Result<Fields, HeadError> {
        let mut f = Fields::default();
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                // RFC 9110 §8.6: repeated or listed identical values may be
                // taken as one; differing values are unrecoverable.
                for item in h.value.split(|&b| b == b',') {
                    let n = parse_decimal(trim_ows(item))
                        .ok_or(HeadError::Invalid("invalid Content-Length"))?;
                    match f.content_length {
                        Some(prev) if prev != n => {
                            return Err(HeadError::Invalid("conflicting Content-Length values"))
                        }
                        _ => f.content_length = Some(n),
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.te_present = true;
                // The list may span several fields (RFC 9110 §5.3); only the
                // coding listed last across all of them is the final one.
                for coding in list_items(h.value) {
                    // RFC 9112 §7: parameters after ';' do not change the coding.
                    let name = trim_ows(coding.split(|&b| b == b';').next().unwrap_or(coding));
                    let chunked = name.eq_ignore_ascii_case(b"chunked");
                    if chunked {
                        // §7.1: a sender MUST NOT apply chunked more than once.
                        if f.te_chunked_seen {
                            return Err(HeadError::Invalid("chunked applied more than once"));
                        }
                        f.te_chunked_seen = true;
                    } else {
                        f.te_other = true;
                    }
                    f.te_last_chunked = chunked;
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for opt in list_items(h.value) {
                    if opt.eq_ignore_ascii_case(b"close") {
                        f.conn_close = true;
                    } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                        f.conn_keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                f.expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case("host") {
                f.host_count += 1;
            }
        }
        Ok(f)
    }

    /// RFC 9112 §9.3: `close` always wins; HTTP/1.1 persists by default,
    /// HTTP/1.0 only with `keep-alive`.
    fn keep_alive(&self, minor_version: u8) -> bool {
        if self.conn_close {
            false
        } else if minor_version >= 1 {
            true
        } else {
            self.conn_keep_alive
        }
    }
}

/// 1*DIGIT as u64, None on anything else or overflow.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Strip optional whitespace (SP / HTAB, RFC 9110 §5.6.3) at both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Non-empty elements of a comma-separated field value (RFC 9110 §5.6.1
/// lets recipients skip empty elements).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// True if a `Connection` field among `headers` lists `name`. Such fields are
/// hop-by-hop too (RFC 9110 §7.6.1) and must be dropped with those of
/// [`is_hop_by_hop`].
pub fn connection_lists(headers: &[Header], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| list_items(&h.value).any(|opt| opt.eq_ignore_ascii_case(name.as_bytes())))
}

/// Hop-by-hop header names (RFC 9110 §7.6.1) a proxy must not forward.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    // eq_ignore_ascii_case compares lengths first, so misses are cheap.
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Append `HTTP/1.1 {status} {reason}\r\n`, each `name: value\r\n`, then the
/// empty line. Values must not contain CR or LF (field values received by
/// httparse never do); that is checked in debug builds only.
pub fn write_response_head(out: &mut Vec<u8>, status: u16, headers: &[(&str, &[u8])]) {
    let why = reason(status);
    let fields: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.reserve(9 + 5 + 1 + why.len() + 2 + fields + 2);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status);
    out.push(b' ');
    out.extend_from_slice(why.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        debug_assert!(
            !value.iter().any(|&b| b == b'\r' || b == b'\n'),
            "CR/LF in header {name}"
        );
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Canonical reason phrase for a status (RFC 9110 §15 names; 499 is nginx's).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// The last-chunk with no trailers (RFC 9112 §7.1).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Append one chunk `{len:x}\r\n{data}\r\n` to `out`. Empty `data` writes
/// nothing: a zero-size chunk would end the body.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut i = digits.len();
    let mut n = data.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.reserve(digits.len() - i + data.len() + 4);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A chunked body could not be decoded; the message says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad chunked body: {}", self.0)
    }
}

impl std::error::Error for ChunkError {}

/// Where the decoder is in the grammar of RFC 9112 §7.1:
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*("0") [ chunk-ext ] CRLF
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Start of a chunk-size line: at least one hex digit must come.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// After the digits: BWS before `;` or the line end (§7.1.1).
    SizeWs,
    /// Inside chunk-ext, which is skipped (§7.1.1: unknown extensions are ignored).
    Ext,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// Chunk-data; `remaining` bytes to go.
    Data,
    /// Chunk-data done; its CRLF (or a bare LF) must follow.
    DataEnd,
    /// CR after chunk-data seen; LF must follow.
    DataLf,
    /// Start of a trailer field line or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line, skipped (§7.1.2: a recipient may discard them).
    Trailer,
    /// CR inside the trailer section seen; LF must follow.
    TrailerLf,
    /// CR of the final empty line seen; LF must follow.
    EndLf,
    Done,
    /// An error was returned; it is returned again on every call.
    Failed(&'static str),
}

/// Incremental chunked-body decoder (RFC 9112 §7.1).
///
/// Extensions are ignored and trailers dropped (both within size caps), sizes
/// are overflow-checked. Line ends may be CRLF or a bare LF (RFC 9112 §2.2
/// lets a recipient accept LF alone); a bare CR is always an error, and so is
/// anything but CRLF / LF right after chunk-data. Input may be split anywhere.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Size being read (SizeStart..SizeLf) or data bytes left (Data).
    remaining: u64,
    /// Bytes of chunk-ext on the current line, or of the trailer section.
    skipped: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::SizeStart,
            remaining: 0,
            skipped: 0,
        }
    }

    /// True once the whole chunked body, trailers included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume bytes from `input`, appending decoded body bytes to `out`.
    ///
    /// Returns (bytes consumed, finished). Until finished, all of `input` is
    /// consumed. Once finished, consumed stops right after the final line
    /// of the body, so pipelined bytes stay with the caller; later calls
    /// return `(0, true)`. After an error the decoder stays failed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Data => {
                    // Bulk copy: the only per-byte work on the data path is
                    // this bounds arithmetic, once per read.
                    let avail = (input.len() - i) as u64;
                    let take = self.remaining.min(avail) as usize;
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::Done => return Ok((i, true)),
                ChunkState::Failed(why) => return Err(ChunkError(why)),
                _ => {
                    let b = input[i];
                    i += 1;
                    if let Err(why) = self.step(b) {
                        self.state = ChunkState::Failed(why);
                        return Err(ChunkError(why));
                    }
                }
            }
        }
        match self.state {
            ChunkState::Failed(why) => Err(ChunkError(why)),
            s => Ok((i, s == ChunkState::Done)),
        }
    }

    /// Advance over one framing byte (everything but chunk-data).
    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        use ChunkState as S;
        self.state = match self.state {
            S::SizeStart | S::Size => match hex_value(b) {
                Some(d) => {
                    self.remaining = self
                        .remaining
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(u64::from(d)))
                        .ok_or("chunk size overflows")?;
                    S::Size
                }
                None if self.state == S::SizeStart => return Err("invalid chunk size"),
                None => self.after_size(b)?,
            },
            S::SizeWs => self.after_size(b)?,
            S::Ext => match b {
                b'\r' => S::SizeLf,
                b'\n' => self.end_size_line(),
                // chunk-ext is tokens, quoted strings and BWS: no controls but HTAB.
                b'\t' | b' '..=b'~' | 0x80..=0xff => {
                    self.skipped += 1;
                    if self.skipped > MAX_CHUNK_LINE_EXTRA {
                        return Err("chunk extension too long");
                    }
                    S::Ext
                }
                _ => return Err("invalid byte in chunk extension"),
            },
            S::SizeLf => match b {
                b'\n' => self.end_size_line(),
                _ => return Err("CR without LF in chunk size line"),
            },
            S::DataEnd => match b {
                b'\r' => S::DataLf,
                b'\n' => S::SizeStart,
                _ => return Err("missing CRLF after chunk data"),
            },
            S::DataLf => match b {
                b'\n' => S::SizeStart,
                _ => return Err("missing CRLF after chunk data"),
            },
            S::TrailerStart => match b {
                b'\r' => S::EndLf,
                b'\n' => S::Done,
                _ => self.trailer_byte(b)?,
            },
            S::Trailer => match b {
                b'\r' => S::TrailerLf,
                b'\n' => S::TrailerStart,
                _ => self.trailer_byte(b)?,
            },
            S::TrailerLf => match b {
                b'\n' => S::TrailerStart,
                _ => return Err("CR without LF in trailer section"),
            },
            S::EndLf => match b {
                b'\n' => S::Done,
                _ => return Err("CR without LF after last chunk"),
            },
            // `decode` never steps in these states.
            S::Data | S::Done | S::Failed(_) => self.state,
        };
        Ok(())
    }

    /// The byte after the hex digits (RFC 9112 §7.1.1: BWS before `;`).
    /// Anything else is refused: reading "5 6" as 5 would let two parsers
    /// disagree on the length.
    fn after_size(&mut self, b: u8) -> Result<ChunkState, &'static str> {
        Ok(match b {
            b' ' | b'\t' => ChunkState::SizeWs,
            b';' => {
                self.skipped = 0;
                ChunkState::Ext
            }
            b'\r' => ChunkState::SizeLf,
            b'\n' => self.end_size_line(),
            _ => return Err("invalid chunk size"),
        })
    }

    fn end_size_line(&mut self) -> ChunkState {
        self.skipped = 0;
        if self.remaining == 0 {
            // last-chunk: the trailer section follows.
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        }
    }

    fn trailer_byte(&mut self, b: u8) -> Result<ChunkState, &'static str> {
        if (b < b' ' && b != b'\t') || b == 0x7f {
            return Err("invalid byte in trailer section");
        }
        self.skipped += 1;
        if self.skipped > MAX_TRAILER_BYTES {
            return Err("trailer section too large");
        }
        Ok(ChunkState::Trailer)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // ---- request heads -------------------------------------------------

    /// What a fixture expects of a parsed request head.
    #[derive(Debug, PartialEq)]
    struct Req {
        method: &'static str,
        path: &'static str,
        minor: u8,
        body: BodyKind,
        keep_alive: bool,
        expect_continue: bool,
    }

    const GET11: Req = Req {
        method: "GET",
        path: "/v1/models",
        minor: 1,
        body: BodyKind::None,
        keep_alive: true,
        expect_continue: false,
    };
    const POST11: Req = Req {
        method: "POST",
        path: "/v1/chat/completions",
        minor: 1,
        body: BodyKind::None,
        keep_alive: true,
        expect_continue: false,
    };

    fn project_req(h: &RequestHead) -> (Req, usize) {
        // Leak is fine in tests: the fixture table holds &'static str.
        let req = Req {
            method: Box::leak(h.method.clone().into_boxed_str()),
            path: Box::leak(h.path.clone().into_boxed_str()),
            minor: h.minor_version,
            body: h.body,
            keep_alive: h.keep_alive,
            expect_continue: h.expect_continue,
        };
        (req, h.head_len)
    }

    /// `head` is the bytes the head must span (so head_len = head.len()),
    /// `tail` whatever follows it (body, next request). Every prefix of the
    /// whole must be incomplete until the head is, then give the same answer.
    fn check_request(
        name: &str,
        head: &[u8],
        tail: &[u8],
        max: usize,
        want: Result<Req, HeadError>,
    ) {
        let raw = [head, tail].concat();
        let check_full = |got: Result<Option<RequestHead>, HeadError>, k: usize| match (&want, got)
        {
            (Ok(w), Ok(Some(h))) => {
                let (req, head_len) = project_req(&h);
                assert_eq!(&req, w, "{name} (prefix {k})");
                assert_eq!(head_len, head.len(), "{name}: head_len (prefix {k})");
            }
            (Err(e), Err(g)) => assert_eq!(&g, e, "{name} (prefix {k})"),
            (w, g) => panic!("{name} (prefix {k}): want {w:?}, got {g:?}"),
        };
        check_full(parse_request_head(&raw, max), raw.len());
        for k in 0..raw.len() {
            let got = parse_request_head(&raw[..k], max);
            match &want {
                Ok(_) if k < head.len() => {
                    assert!(matches!(got, Ok(None)), "{name}: prefix {k} gave {got:?}")
                }
                Ok(_) => check_full(got, k),
                Err(e) => assert!(
                    matches!(&got, Ok(None)) || got.as_ref().err() == Some(e),
                    "{name}: prefix {k} gave {got:?}"
                ),
            }
        }
    }

    /// (name, head, tail, max_head, expected)
    type ReqCase<'a> = (&'a str, &'a [u8], &'a [u8], usize, Result<Req, HeadError>);

    #[test]
    fn request_heads() {
        use BodyKind::*;
        let invalid = |m| Err(HeadError::Invalid(m));
        #[rustfmt::skip]
        let table: Vec<ReqCase> = vec![
            ("GET keep-alive",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n", b"",
             8192, Ok(GET11)),
            ("GET close",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n", b"",
             8192, Ok(Req { keep_alive: false, ..GET11 })),
            ("close wins over keep-alive in one list",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nConnection: keep-alive, Close\r\n\r\n", b"",
             8192, Ok(Req { keep_alive: false, ..GET11 })),
            ("POST with Content-Length",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n",
             b"{\"model\":\"gpt-4\"}",
             8192, Ok(Req { body: Length(17), ..POST11 })),
            ("Content-Length: 0",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n", b"",
             8192, Ok(Req { body: Length(0), ..POST11 })),
            ("identical Content-Length repeated and listed",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n", b"hello",
             8192, Ok(Req { body: Length(5), ..POST11 })),
            ("chunked POST",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n",
             b"5\r\nhello\r\n0\r\n\r\n",
             8192, Ok(Req { body: Chunked, ..POST11 })),
            ("chunked, case-insensitive, in a second TE field",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding:\r\nTransfer-Encoding: CHUNKED\r\n\r\n", b"",
             8192, Ok(Req { body: Chunked, ..POST11 })),
            ("HTTP/1.0 without keep-alive, no Host needed",
             b"GET /v1/models HTTP/1.0\r\nAccept: */*\r\n\r\n", b"",
             8192, Ok(Req { minor: 0, keep_alive: false, ..GET11 })),
            ("HTTP/1.0 with keep-alive",
             b"GET /v1/models HTTP/1.0\r\nHost: edge\r\nConnection: Keep-Alive\r\n\r\n", b"",
             8192, Ok(Req { minor: 0, ..GET11 })),
            ("Expect: 100-continue",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n", b"{}",
             8192, Ok(Req { body: Length(2), expect_continue: true, ..POST11 })),
            ("Expect ignored on HTTP/1.0 (RFC 9110 §10.1.1)",
             b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", b"{}",
             8192, Ok(Req { minor: 0, keep_alive: false, body: Length(2), ..POST11 })),
            ("bare LF line ends (RFC 9112 §2.2)",
             b"GET /v1/models HTTP/1.1\nHost: edge\n\n", b"",
             8192, Ok(GET11)),
            ("empty line before request line is skipped (RFC 9112 §2.2)",
             b"\r\nGET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n", b"",
             8192, Ok(GET11)),
            ("pipelined: head_len stops at the first request",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n\r\n{}",
             8192, Ok(GET11)),
            ("head exactly max_head long",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n", b"",
             39, Ok(GET11)),
            // errors
            ("TE + CL (smuggling)",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
             8192, invalid("both Transfer-Encoding and Content-Length")),
            ("differing Content-Length fields",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", b"",
             8192, invalid("conflicting Content-Length values")),
            ("differing Content-Length list",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 5, 6\r\n\r\n", b"",
             8192, invalid("conflicting Content-Length values")),
            ("non-numeric Content-Length",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 12a\r\n\r\n", b"",
             8192, invalid("invalid Content-Length")),
            ("signed Content-Length",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: +12\r\n\r\n", b"",
             8192, invalid("invalid Content-Length")),
            ("empty Content-Length",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length:\r\n\r\n", b"",
             8192, invalid("invalid Content-Length")),
            ("Content-Length overflows u64",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 18446744073709551616\r\n\r\n", b"",
             8192, invalid("invalid Content-Length")),
            ("TE not ending in chunked",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", b"",
             8192, invalid("Transfer-Encoding must end with chunked")),
            ("TE other coding before chunked",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"",
             8192, invalid("unsupported transfer coding (only chunked)")),
            ("chunked twice across fields",
             b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
             8192, invalid("chunked applied more than once")),
            ("TE on HTTP/1.0",
             b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
             8192, invalid("Transfer-Encoding in an HTTP/1.0 request")),
            ("HTTP/1.1 without Host",
             b"GET /v1/models HTTP/1.1\r\nAccept: */*\r\n\r\n", b"",
             8192, invalid("missing Host header")),
            ("two Host fields",
             b"GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"",
             8192, invalid("more than one Host header")),
            ("space before colon (RFC 9112 §5.1)",
             b"GET /v1/models HTTP/1.1\r\nHost : edge\r\n\r\n", b"",
             8192, invalid("invalid header name")),
            ("obs-fold in a request (RFC 9112 §5.2)",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nX-A: a\r\n  b\r\n\r\n", b"",
             8192, invalid("invalid header name")),
            ("HTTP/2 preface is not HTTP/1",
             b"PRI * HTTP/2.0\r\n\r\n", b"",
             8192, invalid("invalid HTTP version")),
            ("head one byte over max_head",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n", b"",
             38, Err(HeadError::TooLarge)),
            ("max_head reached before the head ends",
             b"GET /v1/models HTTP/1.1\r\nHost: edge\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", b"",
             64, Err(HeadError::TooLarge)),
        ];
        for (name, head, tail, max, want) in table {
            check_request(name, head, tail, max, want);
        }
    }

    fn head_with_fields(n: usize) -> Vec<u8> {
        let mut raw = b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n".to_vec();
        for i in 1..n {
            raw.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    #[test]
    fn header_count_limit() {
        let ok = head_with_fields(MAX_HEADERS);
        check_request("100 fields", &ok, b"", 1 << 16, Ok(GET11));
        let over = head_with_fields(MAX_HEADERS + 1);
        check_request("101 fields", &over, b"", 1 << 16, Err(HeadError::TooLarge));
    }

    #[test]
    fn header_lookup_is_case_insensitive_first_match() {
        let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer sk-1\r\nX-Tag: one\r\nx-tag: two\r\nContent-Length: 0\r\n\r\n";
        let head = parse_request_head(raw, 8192).unwrap().unwrap();
        assert_eq!(head.header("authorization"), Some(&b"Bearer sk-1"[..]));
        assert_eq!(head.header("AUTHORIZATION"), Some(&b"Bearer sk-1"[..]));
        assert_eq!(head.header("X-TAG"), Some(&b"one"[..]));
        assert_eq!(head.header("x-missing"), None);
        // Names are kept as sent, in order.
        let names: Vec<&str> = head.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            ["Host", "Authorization", "X-Tag", "x-tag", "Content-Length"]
        );
    }

    #[test]
    fn header_values_are_trimmed() {
        let raw = b"GET / HTTP/1.1\r\nHost:   edge \t\r\nX-Empty:\r\n\r\n";
        let head = parse_request_head(raw, 8192).unwrap().unwrap();
        assert_eq!(head.header("host"), Some(&b"edge"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
    }

    #[test]
    fn pipelined_requests_parse_back_to_back() {
        let raw = b"GET /v1/models HTTP/1.1\r\nHost: edge\r\n\r\nPOST /v1/embeddings HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n\r\n{}GET";
        let first = parse_request_head(raw, 8192).unwrap().unwrap();
        assert_eq!(first.path, "/v1/models");
        let rest = &raw[first.head_len..];
        let second = parse_request_head(rest, 8192).unwrap().unwrap();
        assert_eq!(second.method, "POST");
        assert_eq!(second.body, BodyKind::Length(2));
        let after = &rest[second.head_len + 2..];
        assert!(matches!(parse_request_head(after, 8192), Ok(None)));
    }

    // ---- response heads ------------------------------------------------

    #[derive(Debug, PartialEq)]
    struct Res {
        status: u16,
        reason: &'static str,
        minor: u8,
        body: BodyKind,
        keep_alive: bool,
    }

    const OK11: Res = Res {
        status: 200,
        reason: "OK",
        minor: 1,
        body: BodyKind::None,
        keep_alive: true,
    };

    fn check_response(
        name: &str,
        head: &[u8],
        tail: &[u8],
        head_request: bool,
        want: Result<Res, HeadError>,
    ) {
        let raw = [head, tail].concat();
        let max = 8192;
        let check_full = |got: Result<Option<ResponseHead>, HeadError>, k: usize| match (&want, got)
        {
            (Ok(w), Ok(Some(h))) => {
                let res = Res {
                    status: h.status,
                    reason: Box::leak(h.reason.clone().into_boxed_str()),
                    minor: h.minor_version,
                    body: h.body,
                    keep_alive: h.keep_alive,
                };
                assert_eq!(&res, w, "{name} (prefix {k})");
                assert_eq!(h.head_len, head.len(), "{name}: head_len (prefix {k})");
            }
            (Err(e), Err(g)) => assert_eq!(&g, e, "{name} (prefix {k})"),
            (w, g) => panic!("{name} (prefix {k}): want {w:?}, got {g:?}"),
        };
        check_full(parse_response_head(&raw, max, head_request), raw.len());
        for k in 0..raw.len() {
            let got = parse_response_head(&raw[..k], max, head_request);
            match &want {
                Ok(_) if k < head.len() => {
                    assert!(matches!(got, Ok(None)), "{name}: prefix {k} gave {got:?}")
                }
                Ok(_) => check_full(got, k),
                Err(e) => assert!(
                    matches!(&got, Ok(None)) || got.as_ref().err() == Some(e),
                    "{name}: prefix {k} gave {got:?}"
                ),
            }
        }
    }

    /// (name, head, tail, head_request, expected)
    type ResCase<'a> = (&'a str, &'a [u8], &'a [u8], bool, Result<Res, HeadError>);

    #[test]
    fn response_heads() {
        use BodyKind::*;
        let invalid = |m| Err(HeadError::Invalid(m));
        #[rustfmt::skip]
        let table: Vec<ResCase> = vec![
            ("200 with Content-Length",
             b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n", b"{}",
             false, Ok(Res { body: Length(2), ..OK11 })),
            ("chunked SSE response",
             b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
             b"e\r\ndata: hello\n\n\r\n",
             false, Ok(Res { body: Chunked, ..OK11 })),
            ("204 No Content",
             b"HTTP/1.1 204 No Content\r\n\r\n", b"",
             false, Ok(Res { status: 204, reason: "No Content", ..OK11 })),
            ("304 ignores Content-Length",
             b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n", b"",
             false, Ok(Res { status: 304, reason: "Not Modified", ..OK11 })),
            ("HEAD response ignores Content-Length",
             b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", b"",
             true, Ok(OK11)),
            ("HEAD response ignores chunked",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
             true, Ok(OK11)),
            ("until close",
             b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"all of this until EOF",
             false, Ok(Res { body: UntilClose, keep_alive: false, ..OK11 })),
            ("final coding not chunked: until close",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"\x1f\x8b",
             false, Ok(Res { body: UntilClose, keep_alive: false, ..OK11 })),
            ("100 Continue interim",
             b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
             false, Ok(Res { status: 100, reason: "Continue", ..OK11 })),
            ("103 Early Hints interim",
             b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n", b"",
             false, Ok(Res { status: 103, reason: "Early Hints", ..OK11 })),
            ("101 Switching Protocols",
             b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"",
             false, Ok(Res { status: 101, reason: "Switching Protocols", body: UntilClose, keep_alive: false, ..OK11 })),
            ("429 with Connection: close",
             b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", b"",
             false, Ok(Res { status: 429, reason: "Too Many Requests", body: Length(0), keep_alive: false, ..OK11 })),
            ("HTTP/1.0 with keep-alive",
             b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", b"{}",
             false, Ok(Res { minor: 0, body: Length(2), ..OK11 })),
            ("HTTP/1.0 default close",
             b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", b"{}",
             false, Ok(Res { minor: 0, body: Length(2), keep_alive: false, ..OK11 })),
            ("no reason phrase",
             b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", b"",
             false, Ok(Res { reason: "", body: Length(0), ..OK11 })),
            ("TE + CL",
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
             false, invalid("both Transfer-Encoding and Content-Length")),
            ("differing Content-Length",
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", b"",
             false, invalid("conflicting Content-Length values")),
            ("bad Content-Length",
             b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n", b"",
             false, invalid("invalid Content-Length")),
            ("TE on HTTP/1.0",
             b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"",
             false, invalid("Transfer-Encoding in an HTTP/1.0 response")),
            ("status below 100",
             b"HTTP/1.1 099 Odd\r\n\r\n", b"",
             false, invalid("status code below 100")),
            ("garbage status line",
             b"HTTP/1.1 2x0 OK\r\n\r\n", b"",
             false, invalid("invalid status line")),
        ];
        for (name, head, tail, head_request, want) in table {
            check_response(name, head, tail, head_request, want);
        }
    }

    #[test]
    fn interim_100_then_final_response() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let interim = parse_response_head(raw, 8192, false).unwrap().unwrap();
        assert_eq!((interim.status, interim.body), (100, BodyKind::None));
        let fin = parse_response_head(&raw[interim.head_len..], 8192, false)
            .unwrap()
            .unwrap();
        assert_eq!((fin.status, fin.body), (200, BodyKind::Length(2)));
        assert_eq!(fin.header("content-length"), Some(&b"2"[..]));
    }

    #[test]
    fn response_too_large() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert!(matches!(
            parse_response_head(&raw[..20], 32, false),
            Ok(None)
        ));
        assert_eq!(
            parse_response_head(&raw[..32], 32, false).err(),
            Some(HeadError::TooLarge)
        );
        assert_eq!(
            parse_response_head(raw, 32, false).err(),
            Some(HeadError::TooLarge)
        );
        assert!(parse_response_head(raw, raw.len(), false)
            .unwrap()
            .is_some());
    }

    // ---- chunked bodies ------------------------------------------------

    /// Feed `raw` to a fresh decoder in the pieces between `cuts`, stopping
    /// at the end of the body like a caller would.
    fn feed(raw: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        for end in cuts.iter().copied().chain([raw.len()]) {
            let (n, done) = dec.decode(&raw[at..end], &mut out)?;
            if done {
                assert!(dec.is_done());
                return Ok((out, at + n, true));
            }
            assert_eq!(n, end - at, "an unfinished decode consumes everything");
            at = end;
        }
        Ok((out, at, false))
    }

    type ChunkWant = Result<(&'static [u8], usize, bool), ChunkError>;

    /// "Consumed all of the fixture", so fixtures need not count bytes.
    const ALL: usize = usize::MAX;

    fn check_chunked(name: &str, raw: &[u8], want: ChunkWant) {
        let want =
            want.map(|(body, n, done)| (body.to_vec(), if n == ALL { raw.len() } else { n }, done));
        assert_eq!(feed(raw, &[]), want, "{name}: whole");
        for k in 0..=raw.len() {
            assert_eq!(feed(raw, &[k]), want, "{name}: split at {k}");
            for k2 in k..=raw.len() {
                assert_eq!(feed(raw, &[k, k2]), want, "{name}: split at {k}, {k2}");
            }
        }
        let bytes: Vec<usize> = (1..raw.len()).collect();
        assert_eq!(feed(raw, &bytes), want, "{name}: byte at a time");
    }

    #[test]
    fn chunked_bodies() {
        let err = |m| Err(ChunkError(m));
        let pipelined: &[u8] = b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        #[rustfmt::skip]
        let table: Vec<(&str, &[u8], ChunkWant)> = vec![
            ("one chunk", b"5\r\nhello\r\n0\r\n\r\n", Ok((b"hello", ALL, true))),
            ("empty body", b"0\r\n\r\n", Ok((b"", ALL, true))),
            ("uppercase and mixed hex",
             b"A\r\n0123456789\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n1A\r\nABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n0\r\n\r\n",
             Ok((b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", ALL, true))),
            ("leading zeros", b"0005\r\nhello\r\n000\r\n\r\n", Ok((b"hello", ALL, true))),
            ("extensions ignored",
             b"5;name=value\r\nhello\r\n6 ; q=\"a;b\\\"c\"\r\n world\r\n0;last\r\n\r\n",
             Ok((b"hello world", ALL, true))),
            ("trailers skipped",
             b"5\r\nhello\r\n0\r\nX-Usage: 5\r\nX-Other:\ty\r\n\r\n",
             Ok((b"hello", ALL, true))),
            ("bare LF line ends", b"5\nhello\n0\nX-T: 1\n\n", Ok((b"hello", ALL, true))),
            ("pipelined bytes after the body are left", pipelined, Ok((b"hello", 15, true))),
            ("incomplete data", b"5\r\nhel", Ok((b"hel", ALL, false))),
            ("incomplete trailer", b"5\r\nhello\r\n0\r\nX-A: 1\r\n", Ok((b"hello", ALL, false))),
            ("largest size", b"ffffffffffffffff\r\nab", Ok((b"ab", ALL, false))),
            ("CRLF inside data is data", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", Ok((b"\r\n\r\n", ALL, true))),
            // errors
            ("size overflow", b"10000000000000000\r\n", err("chunk size overflows")),
            ("invalid hex", b"5g\r\nhello\r\n", err("invalid chunk size")),
            ("no size digits", b"\r\nhello\r\n", err("invalid chunk size")),
            ("ext without size", b";a\r\n", err("invalid chunk size")),
            ("whitespace before size", b" 5\r\nhello\r\n", err("invalid chunk size")),
            ("two numbers", b"5 6\r\nhello\r\n", err("invalid chunk size")),
            ("negative size", b"-5\r\n", err("invalid chunk size")),
            ("CR without LF in size line", b"5\rhello", err("CR without LF in chunk size line")),
            ("control byte in extension", b"5;a\x00b\r\nhello\r\n", err("invalid byte in chunk extension")),
            ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n", err("missing CRLF after chunk data")),
            ("CR without LF after data", b"5\r\nhello\rX", err("missing CRLF after chunk data")),
            ("CR without LF in trailer", b"0\r\nX-A: 1\rX", err("CR without LF in trailer section")),
            ("control byte in trailer", b"0\r\nX-A: \x01\r\n\r\n", err("invalid byte in trailer section")),
            ("CR without LF at the end", b"0\r\n\rX", err("CR without LF after last chunk")),
        ];
        for (name, raw, want) in table {
            check_chunked(name, raw, want);
        }
    }

    #[test]
    fn chunked_caps_extension_and_trailer_size() {
        let mut raw = b"5;".to_vec();
        raw.resize(2 + MAX_CHUNK_LINE_EXTRA + 1, b'x');
        assert_eq!(feed(&raw, &[]), Err(ChunkError("chunk extension too long")));
        let mut raw = b"0\r\n".to_vec();
        while raw.len() <= 2 * MAX_TRAILER_BYTES {
            raw.extend_from_slice(b"X-Trailer: abc\r\n");
        }
        assert_eq!(
            feed(&raw, &[]),
            Err(ChunkError("trailer section too large"))
        );
    }

    #[test]
    fn chunked_decoder_stays_failed_and_stays_done() {
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert!(dec.decode(b"zz", &mut out).is_err());
        assert_eq!(
            dec.decode(b"5\r\nhello\r\n", &mut out),
            Err(ChunkError("invalid chunk size"))
        );
        let mut dec = ChunkedDecoder::default();
        assert_eq!(dec.decode(b"0\r\n\r\nrest", &mut out), Ok((5, true)));
        assert_eq!(dec.decode(b"rest", &mut out), Ok((0, true)));
        assert!(out.is_empty());
    }

    /// Tiny deterministic generator so the round trip covers many shapes
    /// without a dependency.
    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn encode_then_decode_round_trips_at_random_splits() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let len = rng.below(3000);
            let body: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let mut wire = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let n = 1 + rng.below(700).min(body.len() - at - 1);
                encode_chunk(&body[at..at + n], &mut wire);
                at += n;
            }
            wire.extend_from_slice(LAST_CHUNK);
            let wire_len = wire.len();
            wire.extend_from_slice(b"NEXT");
            let mut cuts: Vec<usize> = (0..rng.below(8))
                .map(|_| rng.below(wire.len() + 1))
                .collect();
            cuts.sort_unstable();
            assert_eq!(feed(&wire, &cuts), Ok((body, wire_len, true)));
        }
    }

    #[test]
    fn encode_chunk_frames() {
        let mut out = Vec::new();
        encode_chunk(b"", &mut out);
        assert!(out.is_empty(), "an empty chunk would end the body");
        encode_chunk(b"x", &mut out);
        assert_eq!(out, b"1\r\nx\r\n");
        out.clear();
        encode_chunk(&[b'a'; 255], &mut out);
        assert!(out.starts_with(b"ff\r\naaa") && out.ends_with(b"a\r\n"));
        assert_eq!(out.len(), 2 + 2 + 255 + 2);
        out.clear();
        encode_chunk(&[0; 4096], &mut out);
        assert!(out.starts_with(b"1000\r\n\0"));
    }

    // ---- writing and names ---------------------------------------------

    #[test]
    fn writes_response_head() {
        let mut out = b"prefix:".to_vec();
        write_response_head(
            &mut out,
            429,
            &[("Content-Type", b"application/json"), ("Retry-After", b"2")],
        );
        assert_eq!(
            out,
            &b"prefix:HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 2\r\n\r\n"[..]
        );
        out.clear();
        write_response_head(&mut out, 200, &[]);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\n\r\n");
        out.clear();
        write_response_head(&mut out, 7, &[]);
        assert_eq!(out, b"HTTP/1.1 7 Unknown\r\n\r\n");
        // What we write, we parse back.
        out.clear();
        write_response_head(&mut out, 503, &[("Content-Length", b"0")]);
        let head = parse_response_head(&out, 8192, false).unwrap().unwrap();
        assert_eq!(
            (head.status, head.reason.as_str(), head.body),
            (503, "Service Unavailable", BodyKind::Length(0))
        );
    }

    #[test]
    fn reason_phrases() {
        for (status, want) in [
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (413, "Content Too Large"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (499, "Client Closed Request"),
            (500, "Internal Server Error"),
            (502, "Bad Gateway"),
            (503, "Service Unavailable"),
            (504, "Gateway Timeout"),
            (299, "Unknown"),
        ] {
            assert_eq!(reason(status), want, "{status}");
        }
    }

    #[test]
    fn hop_by_hop_names() {
        for name in [
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "transfer-encoding",
            "Upgrade",
            "proxy-authenticate",
            "Proxy-Authorization",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "content-length",
            "authorization",
            "trailers-x",
            "tes",
            "host",
            "",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
        let raw = b"GET / HTTP/1.1\r\nHost: e\r\nConnection: keep-alive, X-Secret\r\nConnection: close\r\n\r\n";
        let head = parse_request_head(raw, 8192).unwrap().unwrap();
        assert!(connection_lists(&head.headers, "x-secret"));
        assert!(connection_lists(&head.headers, "Close"));
        assert!(!connection_lists(&head.headers, "host"));
    }
}
