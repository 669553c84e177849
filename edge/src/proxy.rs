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
use crate::filter::{Endpoint, Request, RequestCtx, Verdict, Wire};
use crate::health::Pick;
use crate::http::{self, BodyKind, ResponseHead};
use crate::io::{BufConn, PeerWatch};
use crate::pool;
use crate::sse::{self, SseSplitter};
use crate::translate;
use crate::upstream::{BodyReader, Call, Response, Upstream};
use crate::worker::Core;

/// Largest non-streamed upstream body sluice holds to account it.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
/// How long an error answer that triggers a fallback may take to drain
/// before its connection is dropped instead.
const DISCARD_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

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
        return respond_error(core, down, ctx, &e, keep_alive).await;
    }
    if ctx.endpoint == Some(Endpoint::Models) {
        let body = core.models_list(ctx.consumer);
        return respond(
            core,
            down,
            ctx,
            200,
            &[("content-type", b"application/json")],
            body,
            keep_alive,
        )
        .await;
    }
    let endpoint = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions);

    // 2. Upstream: the model's targets in order — primary, then fallbacks —
    //    until one gives an answer worth relaying. Each attempt picks a key
    //    from the provider's pool (never one this request already tried);
    //    retries are capped by `retry.max_attempts` and the retry budget.
    let mut targets = ctx.targets.clone();
    let fallback_on = core.fallback_on(ctx);
    let max_attempts = core.config.retry.max_attempts.max(1) as usize;
    // What this request tried: (target, key) and (target, endpoint).
    let mut tried: Vec<(usize, usize)> = Vec::new();
    let mut tried_endpoints: Vec<(usize, usize)> = Vec::new();
    let mut next = 0usize;
    let mut aimed = 0usize;
    let mut sent = 0usize;
    core.shared.retry_budget.on_request();
    // One pass per attempt, or per target skipped as unavailable (that
    // sends nothing and costs no attempt).
    for _ in 0..max_attempts + targets.len() + 1 {
        let target = targets[next.min(targets.len() - 1)].clone();
        if next != aimed {
            if let Err(e) = core.chain.route.prepare(ctx, &target) {
                return respond_error(core, down, ctx, &e, keep_alive).await;
            }
            aimed = next;
        }
        if sent > 0
            && ctx
                .attempts
                .last()
                .is_some_and(|a| core.provider_name(target.provider) == a.provider)
        {
            monoio::time::sleep(core.backoff(sent + 1)).await;
        }
        let more = sent + 1 < max_attempts;
        let provider = target.provider;
        let Some(upstream) = core.upstreams.get(provider) else {
            let e = Error::new(ErrorKind::Internal, "request was not routed to a provider");
            return respond_error(core, down, ctx, &e, keep_alive).await;
        };
        // A provider at its concurrency limit, or with every endpoint's
        // circuit open, is skipped; when every target is, the model's
        // cheaper `degrade_to` target serves instead.
        let endpoints_tried: Vec<usize> = tried_endpoints
            .iter()
            .filter(|(t, _)| *t == next)
            .map(|(_, e)| *e)
            .collect();
        let slot = core.shared.capacity[provider].enter();
        let full = slot.is_none();
        let pick = slot
            .as_ref()
            .and_then(|_| core.shared.endpoints[provider].choose(&endpoints_tried));
        let (Some(slot), Some(pick)) = (slot, pick) else {
            let why = if full {
                "is at its concurrency limit"
            } else {
                "has every endpoint's circuit open"
            };
            let e = Error::new(
                ErrorKind::UpstreamUnavailable,
                format!("provider '{}' {why}", upstream.provider().name),
            );
            core.record_attempt(ctx, provider, None, None, Some(&e), Instant::now());
            if next + 1 < targets.len() {
                next += 1;
                continue;
            }
            if let Some(degraded) = ctx.degrade.clone().filter(|d| !targets.contains(d)) {
                targets.push(degraded);
                next += 1;
                continue;
            }
            return respond_error(core, down, ctx, &e, keep_alive).await;
        };
        tried_endpoints.push((next, pick.index));
        let pool = &core.shared.pools[provider];
        let keys_tried: Vec<usize> = tried
            .iter()
            .filter(|(t, _)| *t == next)
            .map(|(_, k)| *k)
            .collect();
        let key = match pool.pick(pool::now_ns(), &keys_tried) {
            Ok(key) => key,
            Err(wait_ns) => {
                // Every key of this provider is resting.
                let e = Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "every API key of provider '{}' is cooling down",
                        upstream.provider().name
                    ),
                );
                core.record_attempt(ctx, provider, None, None, Some(&e), Instant::now());
                if more && next + 1 < targets.len() {
                    next += 1;
                    continue;
                }
                ctx.response_headers.push((
                    "retry-after",
                    wait_ns.div_ceil(1_000_000_000).max(1).to_string(),
                ));
                // Free the provider's place before answering: the client may ask again at once.
                drop((slot, pick));
                return respond_error(core, down, ctx, &e, keep_alive).await;
            }
        };
        let key_index = key.as_ref().map(|k| k.index);
        if let Some(k) = key_index {
            tried.push((next, k));
        }
        let key_value = key_index
            .and_then(|k| upstream.provider().keys.get(k))
            .map(|k| k.key.as_str());
        let started = Instant::now();
        let call = Call {
            at: pick.index,
            endpoint,
            upstream_model: &ctx.upstream_model,
            key: key_value,
        };
        let head = upstream.request_head(&call, &req.head, &ctx.id, ctx.upstream_body.len());
        sent += 1;
        // The client may leave while the provider thinks: stop waiting then.
        let answer = monoio::select! {
            r = upstream.send(pick.index, head, &ctx.upstream_body) => Some(r),
            _ = watch.closed() => None,
        };
        let response = match answer {
            None => return client_gone(ctx, "client went away while waiting for the provider"),
            Some(Ok(r)) => r,
            Some(Err(e)) if e.kind == ErrorKind::LocalResources => {
                // This host ran out of descriptors, memory or ports: not the
                // provider's fault, so its endpoint and key keep their
                // health, and no fallback — any other provider would fail
                // the same way here.
                core.metrics.upstream_error(provider, e.kind);
                core.record_attempt(ctx, provider, key_index, None, Some(&e), started);
                drop((slot, pick));
                return respond_error(core, down, ctx, &e, keep_alive).await;
            }
            Some(Err(e)) => {
                pick.endpoint
                    .failure(&core.shared.endpoints[provider].health);
                core.metrics.upstream_error(provider, e.kind);
                if let Some(k) = key_index {
                    pool.failed(k);
                }
                core.record_attempt(ctx, provider, key_index, None, Some(&e), started);
                let triggers = match e.kind {
                    ErrorKind::UpstreamConnect => fallback_on.connect,
                    ErrorKind::UpstreamTimeout => fallback_on.timeout,
                    _ => false,
                };
                let tries = Tries {
                    targets: &targets,
                    tried: &tried,
                    tried_endpoints: &tried_endpoints,
                };
                if let Some(to) = tries.retry(core, triggers && more, next, provider) {
                    next = to;
                    continue;
                }
                // Free the provider's place before answering: the client may ask again at once.
                drop((slot, pick));
                return respond_error(core, down, ctx, &e, keep_alive).await;
            }
        };
        let status = response.head.status;
        ctx.upstream_status = Some(status);
        if status >= 500 {
            pick.endpoint
                .failure(&core.shared.endpoints[provider].health);
        } else {
            pick.endpoint.success(started.elapsed().as_micros() as u64);
        }
        if let Some(k) = key_index {
            if matches!(status, 401 | 403 | 429) {
                let rest = retry_after(&response.head).unwrap_or(upstream.provider().key_cooldown);
                pool.cool(k, pool::now_ns(), rest.as_nanos() as u64);
            } else if status >= 500 {
                pool.failed(k);
            }
        }
        let tries = Tries {
            targets: &targets,
            tried: &tried,
            tried_endpoints: &tried_endpoints,
        };
        if let Some(to) = tries.retry(core, fallback_on.status(status) && more, next, provider) {
            // Not this one: drain its answer (keeping the connection) and move on.
            core.record_attempt(ctx, provider, key_index, Some(status), None, started);
            core.metrics
                .upstream_error(provider, ErrorKind::UpstreamStatus);
            if !discard(upstream, response, watch).await {
                return client_gone(ctx, "client went away while sluice moved to another target");
            }
            next = to;
            continue;
        }
        core.record_attempt(ctx, provider, key_index, Some(status), None, started);

        // 3. Relay: event by event for a 2xx event stream, whole otherwise.
        let success = (200..300).contains(&status);
        if success && ctx.stream && is_event_stream(&response.head) {
            match relay_stream(core, upstream, down, response, ctx, keep_alive, watch).await {
                Relayed::Done(again) => return again,
                // Nothing reached the client yet: another target may answer.
                Relayed::NotStarted(e) => {
                    if let Some(a) = ctx.attempts.last_mut() {
                        a.error = Some(e.kind.as_str());
                    }
                    if let Some(to) = tries.retry(core, more, next, provider) {
                        ctx.usage = Default::default();
                        ctx.completion_text.clear();
                        next = to;
                        continue;
                    }
                    return respond_error(core, down, ctx, &e, keep_alive).await;
                }
            }
        }
        return relay_whole(
            core,
            upstream,
            down,
            response,
            ctx,
            keep_alive,
            (slot, pick),
            watch,
        )
        .await;
    }
    let e = Error::new(ErrorKind::UpstreamStatus, "every attempt failed");
    respond_error(core, down, ctx, &e, keep_alive).await
}

/// What a request has tried so far, to decide where a failed attempt goes.
struct Tries<'a> {
    targets: &'a [sluice_config::Target],
    /// (target, key) pairs tried.
    tried: &'a [(usize, usize)],
    /// (target, endpoint) pairs tried.
    tried_endpoints: &'a [(usize, usize)],
}

impl Tries<'_> {
    /// Where attempt `current` (on `provider`), which failed in a way that
    /// `may` fall back, goes next: the next target, or the same one with a
    /// key or endpoint this request has not tried — if the retry budget
    /// allows one more. `None`: the failure goes to the client as it is.
    fn retry(&self, core: &Core, may: bool, current: usize, provider: usize) -> Option<usize> {
        if !may {
            return None;
        }
        let to = if current + 1 < self.targets.len() {
            current + 1
        } else {
            let of_current = |list: &[(usize, usize)]| -> Vec<usize> {
                list.iter()
                    .filter(|(t, _)| *t == current)
                    .map(|(_, x)| *x)
                    .collect()
            };
            // The same target again: with a key it has not tried, or
            // (providers without keys, or with one) on an endpoint it has
            // not tried.
            let pool = &core.shared.pools[provider];
            let key_left = pool.has_untried(pool::now_ns(), &of_current(self.tried));
            let endpoint_left =
                core.shared.endpoints[provider].has_untried(&of_current(self.tried_endpoints));
            if !(key_left || endpoint_left) {
                return None;
            }
            current
        };
        core.shared.retry_budget.try_retry().then_some(to)
    }
}

/// A `Retry-After` header in seconds (RFC 9110 §10.2.3; the date form is
/// not used by LLM providers and is ignored).
fn retry_after(head: &ResponseHead) -> Option<std::time::Duration> {
    let v = head.header("retry-after")?;
    let secs: f64 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs.min(3600.0)))
}

/// Read and drop an answer that will not be relayed, keeping the
/// connection for reuse when it ends cleanly within [`DISCARD_WITHIN`]
/// (else it is closed: the next target should not wait on it). `false`:
/// the client left meanwhile.
async fn discard(upstream: &Upstream, mut response: Response, watch: &PeerWatch) -> bool {
    let mut reader = BodyReader::new(response.head.body);
    let mut sink = Vec::new();
    let drained = monoio::select! {
        r = monoio::time::timeout(
            DISCARD_WITHIN,
            read_body(upstream, &mut response.conn, &mut reader, &mut sink),
        ) => matches!(r, Ok(Ok(()))),
        _ = watch.closed() => return false,
    };
    if drained && response.head.keep_alive {
        upstream.release(response.endpoint, response.conn);
    }
    true
}

/// How a stream relay ended.
enum Relayed {
    /// The response went to the client (or the client left); whether the
    /// connection can carry another request.
    Done(bool),
    /// The provider failed before anything reached the client.
    NotStarted(Error),
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
    if ctx.client_wire == Wire::Anthropic {
        // Anthropic's SDKs read the request id from `request-id`.
        headers.push(("request-id", ctx.id.as_bytes()));
    }
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
    core: &Core,
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
    core.settle(ctx);
    write_client(down, ctx, out).await.is_ok() && keep_alive
}

/// Answer with an error from the one table in `error`.
pub async fn respond_error<S>(
    core: &Core,
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
    let body = match ctx.client_wire {
        Wire::OpenAi => e.body(),
        Wire::Anthropic => translate::openai_error_to_anthropic(status, &e.body()),
    };
    respond(
        core,
        down,
        ctx,
        status,
        &[("content-type", b"application/json")],
        body,
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
/// body, account a 2xx, pass it on with its status. A client that leaves
/// meanwhile ends it at once (499): dropping the upstream connection tells
/// the provider to stop generating.
#[allow(clippy::too_many_arguments)]
async fn relay_whole<S>(
    core: &Core,
    upstream: &Upstream,
    down: &mut BufConn<S>,
    mut response: Response,
    ctx: &mut RequestCtx,
    keep_alive: bool,
    hold: (pool::Slot<'_>, Pick<'_>),
    watch: &PeerWatch,
) -> bool
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let mut reader = BodyReader::new(response.head.body);
    let mut body = Vec::new();
    let read = monoio::select! {
        r = read_body(upstream, &mut response.conn, &mut reader, &mut body) => Some(r),
        _ = watch.closed() => None,
    };
    // The provider is done with this request once its body is in: free its
    // place before answering, so the client's next request finds it free.
    drop(hold);
    let Some(read) = read else {
        // `response` (the upstream connection) drops on return.
        return client_gone(ctx, "client went away while the provider was answering");
    };
    if let Err(e) = read {
        core.metrics.upstream_error(upstream_index(ctx), e.kind);
        return respond_error(core, down, ctx, &e, keep_alive).await;
    }
    let mut status = response.head.status;
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
    // The answer in the client's wire format.
    let requested = ctx.model_requested.clone().unwrap_or_default();
    let success = (200..300).contains(&status);
    let translated = match (ctx.client_wire, ctx.upstream_wire, success) {
        (Wire::OpenAi, Wire::Anthropic, true) => {
            Some(translate::anthropic_response_to_openai(&body, &requested))
        }
        (Wire::Anthropic, Wire::OpenAi, true) => {
            Some(translate::openai_response_to_anthropic(&body, &requested))
        }
        (Wire::OpenAi, Wire::Anthropic, false) => {
            let converted = translate::anthropic_error_to_openai(status, &body);
            status = translate::openai_status_for_anthropic(status);
            Some(Ok(converted))
        }
        (Wire::Anthropic, Wire::OpenAi, false) => {
            Some(Ok(translate::openai_error_to_anthropic(status, &body)))
        }
        _ => None,
    };
    match translated {
        Some(Ok(converted)) => body = converted,
        Some(Err(e)) => {
            let e = Error::new(
                ErrorKind::UpstreamProtocol,
                format!("cannot translate the provider's answer: {e}"),
            );
            return respond_error(core, down, ctx, &e, keep_alive).await;
        }
        None => {}
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
        upstream.release(response.endpoint, response.conn);
    }
    core.settle(ctx);
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
) -> Relayed
where
    S: AsyncReadRent + AsyncWriteRent,
{
    let idle = upstream.provider().idle_timeout;
    // Armed once for the whole stream: one poll, not one per event.
    let mut client_closed = std::pin::pin!(watch.closed());
    let mut reader = BodyReader::new(response.head.body);
    let mut splitter = SseSplitter::new();
    let mut translator = StreamTranslator::for_request(ctx);
    let raw = translator.is_none() && !core.chain.sees_events();
    let mut translated = Vec::new();
    // Sized by what comes: an idle stream's buffers stay small.
    let mut plain = Vec::new();
    let mut out = Vec::with_capacity(1024);
    // The client is not read while its response streams.
    down.release_idle_buffer();
    client_head(
        &mut out,
        ctx,
        Some(&response.head),
        &[],
        response.head.status,
        Framing::Chunked,
        keep_alive,
    );
    let head_len = out.len();
    let mut sent_any = false;
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
        if raw {
            // Nothing looks at events: pass the bytes on as they came.
            http::encode_chunk(&plain, &mut out);
            plain.clear();
        }
        splitter.push(&plain);
        plain.clear();
        if plain.capacity() > 64 * 1024 {
            plain = Vec::new();
        }
        if done {
            // A last event ending in a lone CR completes only at the end.
            splitter.finish();
        }
        while let Some(event) = splitter.next_event() {
            let parsed = sse::parse_event(event);
            let verdict = core.chain.on_event(ctx, &parsed.data);
            match &mut translator {
                None if verdict == Verdict::Forward => http::encode_chunk(event, &mut out),
                None => {}
                Some(t) => {
                    translated.clear();
                    if let Err(e) = t.on_event(parsed.event, &parsed.data, &mut translated) {
                        failure.get_or_insert(Error::new(
                            ErrorKind::UpstreamProtocol,
                            format!("cannot translate the provider's stream: {e}"),
                        ));
                    }
                    http::encode_chunk(&translated, &mut out);
                }
            }
        }
        if done {
            if let (Some(e), false, true) = (&failure, sent_any, out.len() == head_len) {
                // Nothing reached the client: the caller may try elsewhere.
                return Relayed::NotStarted(e.clone());
            }
            match (&failure, &mut translator) {
                (Some(e), _) => stream_error_event(e, ctx.client_wire, &mut out),
                (None, Some(t)) => {
                    translated.clear();
                    let complete = t.finish(&mut translated);
                    http::encode_chunk(&translated, &mut out);
                    if !complete {
                        let e = Error::new(
                            ErrorKind::UpstreamProtocol,
                            "provider stream ended before it finished",
                        );
                        stream_error_event(&e, ctx.client_wire, &mut out);
                        failure = Some(e);
                    }
                }
                (None, None) => {}
            }
            out.extend_from_slice(http::LAST_CHUNK);
            if failure.is_none() {
                core.settle(ctx);
            }
        }
        if !out.is_empty() {
            ctx.status = response.head.status;
            sent_any = true;
            let batch = std::mem::take(&mut out);
            let n = batch.len() as u64;
            let (res, back) = down.send(batch).await;
            out = back;
            out.clear();
            if out.capacity() > 64 * 1024 {
                out = Vec::with_capacity(1024);
            }
            if ctx.ttft.is_none() {
                ctx.ttft = Some(ctx.received.elapsed());
            }
            if let Err(e) = res {
                // The client is gone: drop the upstream connection now so
                // the provider stops generating; charge what was generated.
                return Relayed::Done(client_gone(
                    ctx,
                    &format!("client went away mid-stream: {e}"),
                ));
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
                return Relayed::Done(client_gone(ctx, "client went away mid-stream"));
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
        upstream.release(response.endpoint, response.conn);
    }
    Relayed::Done(keep_alive)
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
/// An SSE error event in the client's wire format, so SDKs raise it.
fn stream_error_event(e: &Error, wire: Wire, out: &mut Vec<u8>) {
    let mut event = Vec::new();
    match wire {
        Wire::OpenAi => {
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(&error_body(e.kind, &e.message));
            event.extend_from_slice(b"\n\n");
        }
        Wire::Anthropic => {
            let kind = translate::anthropic_error_type(e.kind.reply().status);
            translate::push_anthropic_error_event(&mut event, kind, &e.message);
        }
    }
    http::encode_chunk(&event, out);
}

/// Rewrites a stream event by event when client and provider speak
/// different wire formats.
enum StreamTranslator {
    ToOpenAi(translate::AnthropicToOpenAiStream),
    ToAnthropic(translate::OpenAiToAnthropicStream),
}

impl StreamTranslator {
    fn for_request(ctx: &RequestCtx) -> Option<Self> {
        let model = ctx.model_requested.as_deref().unwrap_or("");
        match (ctx.client_wire, ctx.upstream_wire) {
            (Wire::OpenAi, Wire::Anthropic) => Some(StreamTranslator::ToOpenAi(
                translate::AnthropicToOpenAiStream::new(model, ctx.client_wants_usage),
            )),
            (Wire::Anthropic, Wire::OpenAi) => Some(StreamTranslator::ToAnthropic(
                translate::OpenAiToAnthropicStream::new(model),
            )),
            _ => None,
        }
    }

    fn on_event(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), translate::TranslateError> {
        match self {
            StreamTranslator::ToOpenAi(t) => t.on_event(event, data, out),
            StreamTranslator::ToAnthropic(t) => t.on_event(event, data, out),
        }
    }

    /// Close the translated stream (its last events) at the upstream's end;
    /// false when the upstream stream was cut before it said it was done.
    fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        match self {
            StreamTranslator::ToOpenAi(t) => t.finish(out),
            StreamTranslator::ToAnthropic(t) => t.finish(out),
        }
    }
}
