//! One downstream connection: HTTP/1.1 server loop.
//!
//! Reads request heads (keep-alive, pipelining: bytes after one request stay
//! buffered for the next), enforces the configured limits — head size (431),
//! body size (413), time to send the head (408) and the body, idle time
//! between requests — answers `Expect: 100-continue`, reads Content-Length
//! and chunked bodies, and hands each complete request to
//! `proxy::handle`. Every request that got as far as a complete head, or
//! was refused for its head, leaves exactly one audit record, written by
//! the [`Pending`] guard even if this future is dropped mid-way.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::error::{Error, ErrorKind};
use crate::filter::{Endpoint, Request, RequestCtx};
use crate::http::{self, BodyKind, HeadError, RequestHead};
use crate::io::{BufConn, PeerWatch};
use crate::proxy;
use crate::upstream::BodyReader;
use crate::worker::Core;

/// A request in flight: settles and writes its audit record exactly once,
/// on drop, however the request ended.
pub struct Pending<'a> {
    core: &'a Core,
    pub ctx: RequestCtx,
}

impl<'a> Pending<'a> {
    pub fn new(core: &'a Core, ctx: RequestCtx) -> Self {
        core.in_flight.set(core.in_flight.get() + 1);
        Pending { core, ctx }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.ctx.status == 0 {
            // Dropped before answering: the node shut down under it.
            self.ctx.status = 499;
            self.ctx.fail(&Error::new(
                ErrorKind::ShuttingDown,
                "request cancelled by shutdown",
            ));
        }
        self.core.finish(&mut self.ctx);
        self.core
            .in_flight
            .set(self.core.in_flight.get().saturating_sub(1));
    }
}

/// A client connection with its peer watch. Fields drop in declaration
/// order: the watch takes the socket out of the core's epoll set before
/// the connection closes it, however `serve` ends (even dropped mid-way).
struct Downstream<S> {
    watch: PeerWatch,
    conn: BufConn<S>,
}

/// Serve requests on one connection until it closes or must close.
pub async fn serve<S>(core: Rc<Core>, io: S, peer: SocketAddr, watch: PeerWatch)
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let mut downstream = Downstream {
        watch,
        conn: BufConn::new(io),
    };
    let Downstream { watch, conn: down } = &mut downstream;
    let limits = &core.config.limits;
    let mut first = true;
    loop {
        // Idle wait for the next request (or the connection's first bytes
        // for the header timeout), then the header timeout once it started.
        let head = match read_head(
            down,
            limits.max_header_bytes,
            if first {
                limits.header_timeout
            } else {
                limits.idle_timeout
            },
            limits.header_timeout,
            first,
        )
        .await
        {
            HeadRead::Head(h) => h,
            HeadRead::Closed => return,
            HeadRead::Refused(kind, message) => {
                let mut pending = Pending::new(&core, core.new_ctx(None, peer));
                let e = Error::new(kind, message);
                proxy::respond_error(&core, down, &mut pending.ctx, &e, false).await;
                drop(pending);
                linger(down).await;
                return;
            }
        };
        first = false;
        down.consume(head.head_len);
        let mut pending = Pending::new(&core, core.new_ctx(Some(&head), peer));
        let ctx = &mut pending.ctx;
        ctx.bytes_in = head.head_len as u64;
        let keep_alive = head.keep_alive && !core.draining();

        let body = match read_body(down, &head, limits.max_body_bytes, limits.body_timeout).await {
            Ok(body) => body,
            Err(e) => {
                proxy::respond_error(&core, down, ctx, &e, false).await;
                drop(pending);
                linger(down).await;
                return;
            }
        };
        ctx.bytes_in += body.len() as u64;
        match Endpoint::resolve(&head.method, &head.path) {
            Ok(endpoint) => {
                ctx.endpoint = Some(endpoint);
                // Early refusals (401, 400, 404) answer in the client's wire format.
                ctx.client_wire = endpoint.wire();
            }
            Err(kind) => {
                let message = match kind {
                    ErrorKind::MethodNotAllowed => {
                        format!("method {} is not allowed on {}", head.method, head.path)
                    }
                    _ => format!("unknown path {}", head.path),
                };
                if !proxy::respond_error(&core, down, ctx, &Error::new(kind, message), keep_alive)
                    .await
                {
                    return;
                }
                continue;
            }
        }
        let again =
            proxy::handle(&core, down, Request { head, body }, ctx, keep_alive, watch).await;
        drop(pending);
        if !again {
            return;
        }
    }
}

/// Close after an error answer without losing it: stop sending, then
/// read and discard what the client is still sending for a moment, so the
/// kernel does not answer unread bytes with a RST that could destroy the
/// response before the client reads it (RFC 9112 §9.6).
async fn linger<S>(down: &mut BufConn<S>)
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let _ = down.io.shutdown().await;
    let deadline = Instant::now() + LINGER;
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES {
        down.consume(down.buffered().len());
        match monoio::time::timeout_at(deadline.into(), down.fill()).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

/// How long and how much `linger` reads after an error answer.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

enum HeadRead {
    Head(RequestHead),
    /// Closed, or idle past the timeout with nothing started: no record.
    Closed,
    /// Refused for its head: answer with this and close.
    Refused(ErrorKind, String),
}

async fn read_head<S>(
    down: &mut BufConn<S>,
    max: usize,
    wait: Duration,
    header_timeout: Duration,
    first: bool,
) -> HeadRead
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let mut deadline = Instant::now() + wait;
    let mut started = first || !down.buffered().is_empty();
    if started && !first {
        deadline = Instant::now() + header_timeout;
    }
    loop {
        match http::parse_request_head(down.buffered(), max) {
            Ok(Some(head)) => return HeadRead::Head(head),
            Ok(None) => {}
            Err(HeadError::TooLarge) => {
                return HeadRead::Refused(
                    ErrorKind::HeaderTooLarge,
                    format!("request head is larger than {max} bytes"),
                )
            }
            Err(HeadError::Invalid(what)) => {
                return HeadRead::Refused(
                    ErrorKind::BadFraming,
                    format!("malformed request: {what}"),
                )
            }
        }
        // A timed-out read takes its buffer with it (monoio lends buffers
        // to the kernel), so note before waiting whether a request began.
        let partial = !down.buffered().is_empty();
        match monoio::time::timeout_at(deadline.into(), down.fill()).await {
            Err(_) if started && partial => {
                return HeadRead::Refused(
                    ErrorKind::RequestTimeout,
                    format!(
                        "request head not received within {} ms",
                        header_timeout.as_millis()
                    ),
                )
            }
            Err(_) => return HeadRead::Closed,
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Closed,
            Ok(Ok(_)) => {
                if !started {
                    started = true;
                    deadline = Instant::now() + header_timeout;
                }
            }
        }
    }
}

pub async fn read_body<S>(
    down: &mut BufConn<S>,
    head: &RequestHead,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Error>
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let too_large = || {
        Error::new(
            ErrorKind::BodyTooLarge,
            format!("request body is larger than {max} bytes"),
        )
    };
    match head.body {
        BodyKind::None | BodyKind::Length(0) => return Ok(Vec::new()),
        BodyKind::Length(n) if n > max as u64 => return Err(too_large()),
        _ => {}
    }
    if head.expect_continue {
        let (res, _) = down.send(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()).await;
        res.map_err(|e| Error::new(ErrorKind::ClientAbort, format!("client went away: {e}")))?;
    }
    let mut reader = BodyReader::new(head.body);
    let mut body = Vec::with_capacity(match head.body {
        BodyKind::Length(n) => n as usize,
        _ => 4096,
    });
    let deadline = Instant::now() + timeout;
    loop {
        let done = reader
            .drain(down, &mut body)
            .map_err(|e| Error::new(ErrorKind::BadFraming, format!("bad chunked body: {e}")))?;
        if body.len() > max {
            return Err(too_large());
        }
        if done {
            return Ok(body);
        }
        match monoio::time::timeout_at(deadline.into(), down.fill()).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::RequestTimeout,
                    format!(
                        "request body not received within {} ms",
                        timeout.as_millis()
                    ),
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(Error::new(
                    ErrorKind::ClientAbort,
                    "client went away while sending the body",
                ))
            }
            Ok(Ok(_)) => {}
        }
    }
}
