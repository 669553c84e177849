//! The request path, in one place.
//!
//! [`handle`] reads top to bottom like the pipeline in DESIGN.md:
//! policy chain (auth → route/rewrite → accounting setup) → upstream send →
//! relay the response (SSE event by event, or whole) → back to the
//! connection loop, which settles and writes the audit record through
//! `Core::finish` exactly once whatever happened here. Every early exit
//! writes an OpenAI-shaped error to the client and records why in the
//! request context; nothing returns without the client having been answered
//! or found gone.

use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::error::{error_body, Error, ErrorKind};
use crate::filter::{Endpoint, Request, RequestCtx, Verdict};
use crate::http::{self, BodyKind, ResponseHead};
use crate::io::{BufConn, PeerWatch};
use crate::sse::{self, SseSplitter};
use crate::upstream::{BodyReader, Response, Upstream};
use crate::worker::Core;

/// Largest non-streamed upstream body sluice holds to account it.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// Serve one request. Returns whether the downstream connection can carry
/// another request.
pub async fn handle<S>(
    core: &Core,
    down: &mut BufConn<S>,
    mut req: Request,
    ctx: &mut RequestCtx,
    keep_alive: bool,
    watch: &PeerWatch,
) -> bool
where
    S: AsyncReadRent + AsyncWriteRent,
{
    // 1. Policy chain: may answer early (401, 403, 404, 400).
    if let Err(e) = core.chain.on_request(ctx, &mut req).await {
        return respond_error(down, ctx, &e, keep_alive).await;
    }
    if ctx.endpoint == Some(Endpoint::Models) {
        let body = core.models_list(ctx.consumer);
        return respond(
            down,
            ctx,
            200,
            &[("content-type", b"application/json")],
            body,
            keep_alive,
        )
        .await;
    }
    let Some(upstream) = ctx.provider.and_then(|p| core.upstreams.get(p)) else {
        let e = Error::new(ErrorKind::Internal, "request was not routed to a provider");
        return respond_error(down, ctx, &e, keep_alive).await;
    };
    let endpoint = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions);

    // 2. Upstream: send and wait for the response head.
    let upstream_model = core.upstream_model(ctx);
    let head = upstream.request_head(
        endpoint,
        upstream_model,
        &req.head,
        &ctx.id,
        ctx.upstream_body.len(),
    );
    // The client may leave while the provider thinks: stop waiting then.
    let sent = monoio::select! {
        r = upstream.send(head, &ctx.upstream_body) => Some(r),
        _ = watch.closed() => None,
    };
    let response = match sent {
        None => return client_gone(ctx, "client went away while waiting for the provider"),
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            core.metrics.upstream_error(upstream_index(ctx), e.kind);
            return respond_error(down, ctx, &e, keep_alive).await;
        }
    };
    ctx.upstream_status = Some(response.head.status);

    // 3. Relay: event by event for a 2xx event stream, whole otherwise.
    let success = (200..300).contains(&response.head.status);
    if success && ctx.stream && is_event_stream(&response.head) {
        relay_stream(core, upstream, down, response, ctx, keep_alive, watch).await
    } else {
        relay_whole(core, upstream, down, response, ctx, keep_alive).await
    }
}

fn upstream_index(ctx: &RequestCtx) -> usize {
    ctx.provider.unwrap_or(0)
}

fn is_event_stream(head: &ResponseHead) -> bool {
    head.header("content-type")
        .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"))
}

/// Upstream response headers that are not passed on: framing and
/// connection management are per hop, and the request id is sluice's.
fn passes_on(name: &str) -> bool {
    !(http::is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("x-request-id")
        || name.eq_ignore_ascii_case("date")
        || name.eq_ignore_ascii_case("server"))
}

/// Response head to the client: status, the upstream's end-to-end headers
/// (where no stage set its own of the same name), the stages' headers, the
/// request id and sluice's own framing.
fn client_head(
    out: &mut Vec<u8>,
    ctx: &RequestCtx,
    upstream: Option<&ResponseHead>,
    extra: &[(&str, &[u8])],
    status: u16,
    framing: Framing,
    keep_alive: bool,
) {
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(16);
    if let Some(up) = upstream {
        for h in &up.headers {
            let ours = ctx
                .response_headers
                .iter()
                .any(|(n, _)| h.name.eq_ignore_ascii_case(n));
            if passes_on(&h.name) && !ours {
                headers.push((&h.name, &h.value));
            }
        }
    }
    headers.extend_from_slice(extra);
    for (name, value) in &ctx.response_headers {
        headers.push((name, value.as_bytes()));
    }
    headers.push(("x-request-id", ctx.id.as_bytes()));
    let len;
    match framing {
        Framing::Length(n) => {
            len = n.to_string();
            headers.push(("content-length", len.as_bytes()));
        }
        Framing::Chunked => headers.push(("transfer-encoding", b"chunked")),
    }
    if !keep_alive {
        headers.push(("connection", b"close"));
    }
    http::write_response_head(out, status, &headers);
}

#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
}

/// Answer with a complete small response.
pub async fn respond<S>(
    down: &mut BufConn<S>,
    ctx: &mut RequestCtx,
    status: u16,
    headers: &[(&str, &[u8])],
    body: Vec<u8>,
    keep_alive: bool,
) -> bool
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let mut out = Vec::with_capacity(256 + body.len());
    client_head(
        &mut out,
        ctx,
        None,
        headers,
        status,
        Framing::Length(body.len()),
        keep_alive,
    );
    out.extend_from_slice(&body);
    ctx.status = status;
    write_client(down, ctx, out).await.is_ok() && keep_alive
}

/// Answer with an error from the one table in `error`.
pub async fn respond_error<S>(
    down: &mut BufConn<S>,
    ctx: &mut RequestCtx,
    e: &Error,
    keep_alive: bool,
) -> bool
where
    S: AsyncReadRent + AsyncWriteRent,
{
    ctx.fail(e);
    let status = e.kind.reply().status;
    respond(
        down,
        ctx,
        status,
        &[("content-type", b"application/json")],
        e.body(),
        keep_alive,
    )
    .await
}

/// Write to the client, counting bytes and the first byte's time; a
/// failure means the client went away.
async fn write_client<S>(
    down: &mut BufConn<S>,
    ctx: &mut RequestCtx,
    out: Vec<u8>,
) -> Result<(), ()>
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let n = out.len() as u64;
    let (res, _) = down.send(out).await;
    if ctx.ttft.is_none() {
        ctx.ttft = Some(ctx.received.elapsed());
    }
    match res {
        Ok(()) => {
            ctx.bytes_out += n;
            Ok(())
        }
        Err(e) => {
            client_gone(ctx, &format!("client went away: {e}"));
            Err(())
        }
    }
}

/// Read an upstream body to its end, de-framed, under the idle timeout.
async fn read_body(
    upstream: &Upstream,
    conn: &mut BufConn<crate::io::UpStream>,
    reader: &mut BodyReader,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let idle = upstream.provider().idle_timeout;
    let name = &upstream.provider().name;
    loop {
        if reader.drain(conn, out).map_err(|e| {
            Error::new(
                ErrorKind::UpstreamProtocol,
                format!("provider '{name}' sent a bad body: {e}"),
            )
        })? {
            return Ok(());
        }
        if out.len() > MAX_UPSTREAM_BODY {
            return Err(Error::new(
                ErrorKind::UpstreamProtocol,
                format!("provider '{name}' sent a body over {MAX_UPSTREAM_BODY} bytes"),
            ));
        }
        match monoio::time::timeout(idle, conn.fill()).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::UpstreamTimeout,
                    format!("provider '{name}' sent nothing for {} ms", idle.as_millis()),
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                if reader.on_eof() {
                    return Ok(());
                }
                return Err(Error::new(
                    ErrorKind::UpstreamProtocol,
                    format!("provider '{name}' closed the connection mid-body"),
                ));
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Non-streamed answers and every upstream error status: read the whole
/// body, account a 2xx, pass it on with its status.
async fn relay_whole<S>(
    core: &Core,
    upstream: &Upstream,
    down: &mut BufConn<S>,
    mut response: Response,
    ctx: &mut RequestCtx,
    keep_alive: bool,
) -> bool
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let mut reader = BodyReader::new(response.head.body);
    let mut body = Vec::new();
    if let Err(e) = read_body(upstream, &mut response.conn, &mut reader, &mut body).await {
        core.metrics.upstream_error(upstream_index(ctx), e.kind);
        return respond_error(down, ctx, &e, keep_alive).await;
    }
    let status = response.head.status;
    if (200..300).contains(&status) {
        let _ = core.chain.on_event(ctx, &body);
    } else {
        ctx.fail(&Error::new(
            ErrorKind::UpstreamStatus,
            format!("provider answered {status}"),
        ));
        core.metrics
            .upstream_error(upstream_index(ctx), ErrorKind::UpstreamStatus);
    }
    let mut out = Vec::with_capacity(512 + body.len());
    client_head(
        &mut out,
        ctx,
        Some(&response.head),
        &[],
        status,
        Framing::Length(body.len()),
        keep_alive,
    );
    out.extend_from_slice(&body);
    ctx.status = status;
    if response.head.keep_alive {
        upstream.release(response.conn);
    }
    write_client(down, ctx, out).await.is_ok() && keep_alive
}

/// A 2xx event stream: forward each event as it completes, one chunk per
/// event, flushed at once; account every event; hold back what the chain
/// drops. The client's response head goes out with the first events.
async fn relay_stream<S>(
    core: &Core,
    upstream: &Upstream,
    down: &mut BufConn<S>,
    mut response: Response,
    ctx: &mut RequestCtx,
    keep_alive: bool,
    watch: &PeerWatch,
) -> bool
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let idle = upstream.provider().idle_timeout;
    // Armed once for the whole stream: one poll, not one per event.
    let mut client_closed = std::pin::pin!(watch.closed());
    let mut reader = BodyReader::new(response.head.body);
    let mut splitter = SseSplitter::new();
    let mut plain = Vec::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(8 * 1024);
    client_head(
        &mut out,
        ctx,
        Some(&response.head),
        &[],
        response.head.status,
        Framing::Chunked,
        keep_alive,
    );
    ctx.status = response.head.status;
    let _stream = core.metrics.stream_guard();
    let mut failure: Option<Error> = None;
    loop {
        let done = match reader.drain(&mut response.conn, &mut plain) {
            Ok(done) => done,
            Err(e) => {
                failure = Some(Error::new(
                    ErrorKind::UpstreamProtocol,
                    format!("bad chunked framing from provider: {e}"),
                ));
                true
            }
        };
        splitter.push(&plain);
        plain.clear();
        if done {
            // A last event ending in a lone CR completes only at the end.
            splitter.finish();
        }
        while let Some(event) = splitter.next_event() {
            let parsed = sse::parse_event(event);
            if core.chain.on_event(ctx, &parsed.data) == Verdict::Forward {
                http::encode_chunk(event, &mut out);
            }
        }
        if done {
            if let Some(e) = &failure {
                stream_error_event(e, &mut out);
            }
            out.extend_from_slice(http::LAST_CHUNK);
        }
        if !out.is_empty() {
            let batch = std::mem::take(&mut out);
            let n = batch.len() as u64;
            let (res, back) = down.send(batch).await;
            out = back;
            out.clear();
            if ctx.ttft.is_none() {
                ctx.ttft = Some(ctx.received.elapsed());
            }
            if let Err(e) = res {
                // The client is gone: drop the upstream connection now so
                // the provider stops generating; charge what was generated.
                return client_gone(ctx, &format!("client went away mid-stream: {e}"));
            }
            ctx.bytes_out += n;
        }
        if done {
            break;
        }
        let started = Instant::now();
        let read = monoio::select! {
            r = monoio::time::timeout(idle, response.conn.fill()) => r,
            _ = &mut client_closed => {
                // Dropping the upstream connection tells the provider to stop.
                return client_gone(ctx, "client went away mid-stream");
            }
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) | Ok(Err(_)) => {
                if !reader.on_eof() {
                    failure = Some(Error::new(
                        ErrorKind::UpstreamProtocol,
                        "provider closed the stream before its end",
                    ));
                }
                reader_force_done(&mut reader);
            }
            Err(_) => {
                failure = Some(Error::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "provider sent nothing for {} ms mid-stream",
                        started.elapsed().as_millis()
                    ),
                ));
                reader_force_done(&mut reader);
            }
        }
    }
    if let Some(e) = &failure {
        ctx.fail(e);
        core.metrics.upstream_error(upstream_index(ctx), e.kind);
    }
    if failure.is_none() && response.head.keep_alive && reader.is_done() {
        upstream.release(response.conn);
    }
    keep_alive
}

/// The client left before the response was complete: record it (status
/// 499, nginx's convention). The caller drops the upstream connection,
/// which makes the provider stop; tokens so far are still charged.
fn client_gone(ctx: &mut RequestCtx, why: &str) -> bool {
    ctx.status = 499;
    ctx.fail(&Error::new(ErrorKind::ClientAbort, why.to_string()));
    false
}

/// Ends a body whose connection failed: the relay loop finishes the
/// client's stream with an error event.
fn reader_force_done(reader: &mut BodyReader) {
    *reader = BodyReader::new(BodyKind::None);
}

/// An SSE error event in OpenAI's shape, so SDKs raise it as an APIError.
fn stream_error_event(e: &Error, out: &mut Vec<u8>) {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(&error_body(e.kind, &e.message));
    event.extend_from_slice(b"\n\n");
    http::encode_chunk(&event, out);
}
