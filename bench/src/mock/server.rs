//! Sockets, timing and faults: the part of the mock that does IO.
//!
//! One thread per worker, each a monoio runtime with its own SO_REUSEPORT
//! listener on the shared port. Each accepted connection (TCP_NODELAY, TLS
//! when configured) runs a keep-alive loop: read a request (`http`), decide
//! the reply (`reply`), then write it while applying the script — the
//! time-to-first-byte wait, gaps between events, stalls and disconnects.
//!
//! Streams end in exactly one of completed / aborted / disconnected. A peer
//! going away is noticed on a failed write, and while waiting (TTFB, gaps)
//! by racing socket readiness against the timer and asking the kernel with
//! `poll(POLLRDHUP)` whether the peer closed. The race never reads, so no
//! pipelined bytes are lost; with TLS it watches a dup of the socket because
//! the TLS stream owns the original.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::time::Instant;
use monoio_rustls::{ServerTlsStream, TlsAcceptor};

use super::http::{self, BodyKind, ChunkedDecoder, FrameError, Framing, Head};
use super::reply::{self, path, Ctx, Reply, StreamPlan};
use super::script::Script;
use super::{tokens, Behaviour, MockConfig, MockHandle, MockStats, RecordedRequest};

/// Spare read capacity kept before each read; small because benchmarks
/// hold thousands of idle streaming connections open at once.
const READ_CHUNK: usize = 4 * 1024;
/// Initial write buffer; it grows to fit the largest response it carried.
const WRITE_INITIAL: usize = 4 * 1024;
/// Buffered response bytes that force a write even without a gap.
const WRITE_FLUSH: usize = 32 * 1024;

/// What every worker shares.
struct Shared {
    stats: Arc<MockStats>,
    api_key: Option<String>,
    tls: Option<TlsAcceptor>,
    behaviour: Behaviour,
}

pub(crate) fn spawn(cfg: MockConfig, behaviour: Behaviour) -> io::Result<MockHandle> {
    tokens::warm();
    let stats = Arc::new(MockStats::default());
    let shared = Arc::new(Shared {
        stats: Arc::clone(&stats),
        api_key: cfg.api_key,
        tls: cfg.tls.map(TlsAcceptor::from),
        behaviour,
    });
    // The first worker learns the port when 0 was asked for; the others
    // join it on that port.
    let addr = start_worker(0, cfg.addr, &shared)?;
    for index in 1..cfg.workers.max(1) {
        start_worker(index, addr, &shared)?;
    }
    Ok(MockHandle { addr, stats })
}

/// Starts one worker thread and waits until its listener is bound.
fn start_worker(index: usize, addr: SocketAddr, shared: &Arc<Shared>) -> io::Result<SocketAddr> {
    let (tx, rx) = mpsc::channel::<io::Result<SocketAddr>>();
    let shared = Arc::clone(shared);
    let force_epoll = shared.behaviour.force_epoll;
    std::thread::Builder::new()
        .name(format!("sluice-mock-{index}"))
        .spawn(move || {
            let ran = if force_epoll {
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .map(|mut rt| rt.block_on(worker(addr, shared, tx.clone())))
            } else {
                monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .map(|mut rt| rt.block_on(worker(addr, shared, tx.clone())))
            };
            if let Err(e) = ran {
                let _ = tx.send(Err(e));
            }
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("mock worker exited before listening"))?
}

/// One worker: binds its listener, reports the address, accepts forever.
async fn worker(
    addr: SocketAddr,
    shared: Arc<Shared>,
    ready: mpsc::Sender<io::Result<SocketAddr>>,
) {
    let opts = ListenerOpts::new().reuse_port(true);
    let bound =
        TcpListener::bind_with_config(addr, &opts).and_then(|l| l.local_addr().map(|a| (l, a)));
    let listener = match bound {
        Ok((listener, local)) => {
            let _ = ready.send(Ok(local));
            listener
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                monoio::spawn(connection(tcp, Arc::clone(&shared)));
            }
            // Out of descriptors or a connection reset before accept: back
            // off briefly rather than spin.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>) {
    let io = match &shared.tls {
        None => Io::Plain(tcp),
        Some(acceptor) => {
            let Ok(watch) = dup(&tcp) else { return };
            match acceptor.accept(tcp).await {
                Ok(tls) => Io::Tls {
                    tls: Box::new(tls),
                    watch,
                },
                Err(_) => return,
            }
        }
    };
    let mut conn = Conn {
        io,
        rbuf: Vec::with_capacity(READ_CHUNK),
        wbuf: Vec::with_capacity(WRITE_INITIAL),
    };
    while let Next::KeepAlive = conn.serve_one(&shared).await {}
}

/// A second descriptor for the same socket, registered with the runtime so
/// its readiness can be awaited while the TLS stream owns the first.
fn dup(tcp: &TcpStream) -> io::Result<TcpStream> {
    // SAFETY: the descriptor belongs to `tcp`, which is open and outlives
    // this borrow; it is only used to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
    let owned = borrowed.try_clone_to_owned()?;
    TcpStream::from_std(std::net::TcpStream::from(owned))
}

/// Whether the peer has closed (or half-closed) its side, asked without
/// blocking. Linux reports POLLRDHUP even when unread bytes are queued.
fn peer_closed(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that lives across the call; a zero
    // timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The byte stream of one connection.
enum Io {
    Plain(TcpStream),
    Tls {
        tls: Box<ServerTlsStream<TcpStream>>,
        /// A dup of the socket inside `tls`, only awaited for readiness.
        watch: TcpStream,
    },
}

impl Io {
    /// Reads into the spare capacity of `buf`; `Ok(0)` at end of stream.
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let (len, cap) = (buf.len(), buf.capacity());
        let slice = buf.slice_mut(len..cap);
        let (res, slice) = match self {
            Io::Plain(s) => s.read(slice).await,
            Io::Tls { tls, .. } => tls.read(slice).await,
        };
        (res, slice.into_inner())
    }

    /// Writes all of `buf` and flushes it to the socket.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Io::Plain(s) => {
                let (res, buf) = s.write_all(buf).await;
                (res.map(drop), buf)
            }
            Io::Tls { tls, .. } => {
                let (res, buf) = tls.write_all(buf).await;
                let res = match res {
                    Ok(_) => tls.flush().await,
                    Err(e) => Err(e),
                };
                (res, buf)
            }
        }
    }

    /// Resolves when the socket has bytes or an end of stream to read.
    async fn readable(&self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.readable(false).await,
            Io::Tls { watch, .. } => watch.readable(false).await,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Io::Plain(s) => s.as_raw_fd(),
            Io::Tls { watch, .. } => watch.as_raw_fd(),
        }
    }
}

/// What the connection loop does after a response.
enum Next {
    KeepAlive,
    Close,
}

/// The result of reading one request.
enum Incoming {
    Request(Head, Vec<u8>),
    /// End of stream or a read error: close quietly.
    Closed,
    /// Unframeable: answer the error and close.
    Bad(FrameError),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Elapsed,
    PeerClosed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    Aborted,
    Disconnected,
}

struct Conn {
    io: Io,
    /// Received bytes not yet consumed (may hold a pipelined request).
    rbuf: Vec<u8>,
    /// Response bytes not yet written.
    wbuf: Vec<u8>,
}

impl Conn {
    /// Reads more into `rbuf`; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let (res, buf) = self.io.read(std::mem::take(&mut self.rbuf)).await;
        self.rbuf = buf;
        res
    }

    /// Reads more, mapping end of stream to an error.
    async fn fill_some(&mut self) -> io::Result<()> {
        match self.fill().await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    /// Writes out `wbuf`.
    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let (res, mut buf) = self.io.write_all(std::mem::take(&mut self.wbuf)).await;
        buf.clear();
        self.wbuf = buf;
        res
    }

    async fn read_request(&mut self) -> Incoming {
        let (head, used) = loop {
            match http::parse_head(&self.rbuf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(e) => return Incoming::Bad(e),
            }
            if self.fill_some().await.is_err() {
                return Incoming::Closed;
            }
        };
        self.rbuf.drain(..used);
        let framing = match head.framing() {
            Ok(f) => f,
            Err(e) => return Incoming::Bad(e),
        };
        let waiting = match framing {
            Framing::Length(n) => self.rbuf.len() < n,
            Framing::Chunked => self.rbuf.is_empty(),
        };
        if waiting && head.expects_continue() {
            self.wbuf
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if self.flush().await.is_err() {
                return Incoming::Closed;
            }
        }
        let body = match framing {
            Framing::Length(n) => {
                while self.rbuf.len() < n {
                    if self.fill_some().await.is_err() {
                        return Incoming::Closed;
                    }
                }
                let body = self.rbuf[..n].to_vec();
                self.rbuf.drain(..n);
                body
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                let mut body = Vec::new();
                loop {
                    match decoder.decode(&self.rbuf, &mut body) {
                        Ok((used, done)) => {
                            self.rbuf.drain(..used);
                            if done {
                                break body;
                            }
                        }
                        Err(e) => return Incoming::Bad(e),
                    }
                    if self.fill_some().await.is_err() {
                        return Incoming::Closed;
                    }
                }
            }
        };
        Incoming::Request(head, body)
    }

    /// Serves one request: read, decide, write with the script applied.
    async fn serve_one(&mut self, shared: &Shared) -> Next {
        let (head, body) = match self.read_request().await {
            Incoming::Request(head, body) => (head, body),
            Incoming::Closed => return Next::Close,
            Incoming::Bad(e) => {
                let body = reply::error_body(e.message(), "invalid_request_error", None);
                http::push_head(
                    &mut self.wbuf,
                    e.status(),
                    BodyKind::Length(body.len()),
                    None,
                    true,
                );
                self.wbuf.extend_from_slice(&body);
                let _ = self.flush().await;
                return Next::Close;
            }
        };
        let keep_alive = head.keep_alive();
        let stats = &shared.stats;
        if head.method() == "GET" && head.path() == path::STATS {
            let body = stats.to_json().to_string();
            http::push_head(
                &mut self.wbuf,
                200,
                BodyKind::Length(body.len()),
                None,
                !keep_alive,
            );
            self.wbuf.extend_from_slice(body.as_bytes());
            return match self.flush().await {
                Ok(()) if keep_alive => Next::KeepAlive,
                _ => Next::Close,
            };
        }
        let id = stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let ctx = Ctx {
            api_key: shared.api_key.as_deref(),
            id,
            created: unix_now(),
        };
        let (script, reply) = reply::respond(&head, &body, &shared.behaviour.script, &ctx);
        if shared.behaviour.record_requests {
            record(stats, &head, body);
        }
        match reply {
            Reply::Full {
                status,
                retry_after,
                body,
            } => {
                self.send_full(&script, status, retry_after.as_deref(), &body, keep_alive)
                    .await
            }
            Reply::Stream(plan) => {
                stats.streams_started.fetch_add(1, Ordering::Relaxed);
                let end = self.send_stream(&script, &plan, keep_alive).await;
                let counter: &AtomicU64 = match end {
                    End::Completed => &stats.streams_completed,
                    End::Aborted => &stats.streams_aborted,
                    End::Disconnected => &stats.streams_disconnected,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                match end {
                    End::Completed if keep_alive => Next::KeepAlive,
                    _ => Next::Close,
                }
            }
        }
    }

    /// A complete response. Scripted faults: stall/disconnect after 0 send
    /// nothing; after N > 0 they send the head and withhold the body.
    async fn send_full(
        &mut self,
        script: &Script,
        status: u16,
        retry_after: Option<&str>,
        body: &[u8],
        keep_alive: bool,
    ) -> Next {
        if script.ttfb_ms > 0 && self.wait(script.ttfb_ms).await == Wait::PeerClosed {
            return Next::Close;
        }
        match (script.stall_after, script.disconnect_after) {
            (Some(0), _) => {
                self.until_closed().await;
                return Next::Close;
            }
            (_, Some(0)) => return Next::Close,
            _ => {}
        }
        let truncated = script.stall_after.is_some() || script.disconnect_after.is_some();
        http::push_head(
            &mut self.wbuf,
            status,
            BodyKind::Length(body.len()),
            retry_after,
            !keep_alive,
        );
        if !truncated {
            self.wbuf.extend_from_slice(body);
        }
        if self.flush().await.is_err() {
            return Next::Close;
        }
        if script.stall_after.is_some() {
            self.until_closed().await;
            return Next::Close;
        }
        if truncated || !keep_alive {
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// A streamed completion, written event by event. Without a gap the
    /// events are batched into as few writes as the buffer allows (each
    /// still its own HTTP chunk); with a gap every event is flushed before
    /// the mock sleeps.
    async fn send_stream(&mut self, script: &Script, plan: &StreamPlan, keep_alive: bool) -> End {
        if script.ttfb_ms > 0 && self.wait(script.ttfb_ms).await == Wait::PeerClosed {
            return End::Aborted;
        }
        http::push_head(
            &mut self.wbuf,
            200,
            BodyKind::EventStream,
            None,
            !keep_alive,
        );
        plan.push_role(&mut self.wbuf);
        // Faults apply once `i` content chunks are out, up to and including
        // all of them (then before the finish chunk).
        for i in 0..=plan.chunks() {
            if script.stall_after == Some(i) {
                if self.flush().await.is_ok() {
                    self.until_closed().await;
                }
                return End::Aborted;
            }
            if script.disconnect_after == Some(i) {
                return match self.flush().await {
                    Ok(()) => End::Disconnected,
                    Err(_) => End::Aborted,
                };
            }
            if i == plan.chunks() {
                break;
            }
            if script.gap_ms > 0 {
                if self.flush().await.is_err() {
                    return End::Aborted;
                }
                if self.wait(script.gap_ms).await == Wait::PeerClosed {
                    return End::Aborted;
                }
            }
            plan.push_content(i, &mut self.wbuf);
            if self.wbuf.len() >= WRITE_FLUSH && self.flush().await.is_err() {
                return End::Aborted;
            }
        }
        plan.push_end(&mut self.wbuf);
        match self.flush().await {
            Ok(()) => End::Completed,
            Err(_) => End::Aborted,
        }
    }

    /// Sleeps `ms` milliseconds unless the peer closes first. Readiness is
    /// raced against the timer; readable bytes without a close (a pipelined
    /// request, a TLS record) are left for later and the sleep finishes.
    async fn wait(&self, ms: u64) -> Wait {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let woke = monoio::select! {
            _ = monoio::time::sleep_until(deadline) => false,
            _ = self.io.readable() => true,
        };
        if !woke {
            return Wait::Elapsed;
        }
        if peer_closed(self.io.fd()) {
            return Wait::PeerClosed;
        }
        monoio::time::sleep_until(deadline).await;
        Wait::Elapsed
    }

    /// Sends nothing more and returns once the peer closes, discarding
    /// whatever it sends meanwhile.
    async fn until_closed(&mut self) {
        while let Ok(n) = self.fill().await {
            if n == 0 {
                return;
            }
            self.rbuf.clear();
        }
    }
}

fn record(stats: &MockStats, head: &Head, body: Vec<u8>) {
    let request = RecordedRequest {
        method: head.method().to_owned(),
        path: head.target().to_owned(),
        headers: head
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        body,
    };
    match stats.last_request.lock() {
        Ok(mut last) => *last = Some(request),
        Err(poisoned) => *poisoned.into_inner() = Some(request),
    }
}
