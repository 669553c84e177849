//! Byte plumbing shared by both sides of the proxy.
//!
//! [`Stream`] is a plain TCP or a TLS connection behind one type, so the
//! downstream server loop and the upstream client are written once.
//! [`BufConn`] owns a connection and its read buffer: bytes read but not yet
//! consumed by a parser stay buffered (pipelined requests, the start of a
//! response body that arrived with its head). monoio's I/O takes buffers by
//! value, so every read lends the buffer to the kernel and gets it back;
//! nothing is copied on the way. [`Peers`] watches downstream sockets for
//! the client leaving while the request is busy upstream.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;

/// Reads offer the kernel this much free space at first and while data
/// comes in small pieces; a read that fills what it was offered doubles the
/// next one, up to [`MAX_READ`]. A connection that waits — an idle
/// keep-alive client, a quiet stream's provider — holds only this much
/// (with io_uring a pending read owns its buffer).
const MIN_READ: usize = 2 * 1024;
const MAX_READ: usize = 64 * 1024;

/// A TCP connection, with or without TLS on top.
pub enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// Downstream (server-side TLS) connection.
pub type DownStream = Stream<monoio_rustls::ServerTlsStream<TcpStream>>;
/// Upstream (client-side TLS) connection.
pub type UpStream = Stream<monoio_rustls::ClientTlsStream<TcpStream>>;

impl<T: AsyncReadRent> AsyncReadRent for Stream<T> {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.readv(buf).await,
            Stream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl<T: AsyncWriteRent> AsyncWriteRent for Stream<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.write(buf).await,
            Stream::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            Stream::Plain(s) => s.writev(buf).await,
            Stream::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }
}

/// A connection plus the bytes read from it that no parser consumed yet.
pub struct BufConn<S> {
    pub io: S,
    buf: Vec<u8>,
    start: usize,
    /// Free space the next read offers (MIN_READ..=MAX_READ).
    read_size: usize,
}

impl<S: AsyncReadRent + AsyncWriteRent> BufConn<S> {
    pub fn new(io: S) -> Self {
        BufConn {
            io,
            buf: Vec::new(),
            start: 0,
            read_size: MIN_READ,
        }
    }

    /// Give the read buffer's memory back when nothing is buffered: for a
    /// connection that will not be read for a while (a client whose
    /// response streams for minutes). The next read allocates afresh.
    pub fn release_idle_buffer(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
            self.read_size = MIN_READ;
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Mark the first `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Take every buffered byte out (used to hand body bytes to a decoder).
    pub fn take_buffered(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf[self.start..]);
        self.buf.clear();
        self.start = 0;
    }

    /// Read more bytes from the connection into the buffer. `Ok(0)` is EOF.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            // Compact so the free space sits after the live bytes.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.read_size {
            // A burst's large buffer, drained: keep only what reads need now.
            self.buf = Vec::new();
        }
        if self.buf.capacity() - self.buf.len() < self.read_size {
            self.buf.reserve(self.read_size.max(self.buf.len()));
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let offered = buf.capacity() - len;
        let (res, slice): (io::Result<usize>, SliceMut<Vec<u8>>) =
            self.io.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        if let Ok(n) = res {
            self.read_size = next_read_size(self.read_size, n, offered);
        }
        res
    }

    /// Write all of `data` and hand the buffer back for reuse.
    pub async fn write_all(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, data) = self.io.write_all(data).await;
        (res.map(|_| ()), data)
    }

    /// Write all of `data`, then flush (TLS records out now, not later).
    pub async fn send(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, data) = self.write_all(data).await;
        if res.is_err() {
            return (res, data);
        }
        (self.io.flush().await, data)
    }
}

/// The free space the read after one that returned `n` of `offered` bytes
/// should offer: double after a full read, half after a read of less than a
/// quarter, within MIN_READ..=MAX_READ.
fn next_read_size(current: usize, n: usize, offered: usize) -> usize {
    if n >= offered {
        (current * 2).min(MAX_READ)
    } else if n < current / 4 {
        (current / 2).max(MIN_READ)
    } else {
        current
    }
}

/// Events a watched client socket reports: the peer closed its side
/// (RDHUP). EPOLLHUP and EPOLLERR are always reported. No EPOLLIN, so a
/// pipelined request does not wake anything; edge-triggered, so each close
/// is reported once.
const WATCH_EVENTS: u32 = (libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// Events taken from the kernel per `epoll_wait` while draining.
const DRAIN_BATCH: usize = 64;

/// This core's watches on downstream sockets, so a client going away is
/// noticed while sluice is busy upstream (waiting for the first byte,
/// reading a whole body, or between two events of a slow stream) and the
/// provider can be told to stop at once rather than at the next write.
///
/// One private epoll instance per core — not the runtime's — holds every
/// open connection's own socket (no duplicate descriptor: a connection
/// costs one fd, two while proxied). One task per core awaits that epoll
/// fd's readiness through the runtime (io_uring: POLL_ADD; epoll driver:
/// nested in the driver's epoll), drains it without blocking and wakes the
/// matching watches. The connection itself (plain or TLS) is never read.
#[derive(Default)]
pub struct Peers {
    /// `None` inside once opening the registry failed: watches never fire.
    registry: OnceCell<Option<Rc<Registry>>>,
}

impl Peers {
    /// Open the registry and start its task, so the core's epoll fd exists
    /// before the first connection; later calls are no-ops. Must run inside
    /// the core's runtime.
    pub fn start(&self) {
        self.registry();
    }

    fn registry(&self) -> Option<&Rc<Registry>> {
        self.registry
            .get_or_init(|| match Registry::open() {
                Ok(registry) => {
                    let registry = Rc::new(registry);
                    monoio::spawn(drive(registry.clone()));
                    Some(registry)
                }
                Err(e) => {
                    unavailable(&format!("cannot create its epoll instance: {e}"));
                    None
                }
            })
            .as_ref()
    }

    /// Watch the client socket `fd` until the returned watch drops, which
    /// must happen before `fd` is closed.
    pub fn watch(&self, fd: RawFd) -> PeerWatch {
        let Some(registry) = self.registry() else {
            return PeerWatch { entry: None };
        };
        let token = registry.next.get();
        registry.next.set(token + 1);
        let mut event = libc::epoll_event {
            events: WATCH_EVENTS,
            u64: token,
        };
        // SAFETY: both fds are open (the caller owns `fd`); `event` is a
        // valid epoll_event the kernel only reads.
        let rc = unsafe {
            libc::epoll_ctl(
                registry.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut event,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            unavailable(&format!("cannot watch a client socket: {e}"));
            return PeerWatch { entry: None };
        }
        let flag = Rc::new(Flag::default());
        registry.watched.borrow_mut().insert(token, flag.clone());
        PeerWatch {
            entry: Some(Entry {
                registry: registry.clone(),
                token,
                fd,
                flag,
            }),
        }
    }
}

/// Say once per process that disconnects are noticed late from now on.
fn unavailable(why: &str) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        crate::log::warn(&format!(
            "peer watch: {why}; a client that leaves is noticed only at the next write to it"
        ));
    }
}

/// One core's epoll instance and what its tokens stand for.
struct Registry {
    /// The epoll fd, held as a monoio stream only so the runtime can await
    /// its readiness; nothing is ever read from or written to it.
    epoll: TcpStream,
    /// token (the epoll event's data) → the watch it wakes.
    watched: RefCell<HashMap<u64, Rc<Flag>>>,
    next: Cell<u64>,
}

impl Registry {
    fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Wrapping it as a TCP stream gives it the runtime's readiness wait;
        // the stream's socket calls are never used on it. The wrapper owns
        // the fd from here and closes it when the registry drops.
        let epoll = TcpStream::from_std(std::net::TcpStream::from(owned))?;
        Ok(Registry {
            epoll,
            watched: RefCell::new(HashMap::new()),
            next: Cell::new(0),
        })
    }

    /// Take every pending event without blocking and wake its watch.
    fn drain(&self, events: &mut [libc::epoll_event]) {
        loop {
            // SAFETY: `events` is valid for `events.len()` entries, which
            // the kernel fills; a zero timeout never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    0,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            let n = n as usize;
            for event in &events[..n] {
                // Any event is a close: RDHUP is all that was asked for.
                let token = event.u64;
                let flag = self.watched.borrow().get(&token).cloned();
                if let Some(flag) = flag {
                    flag.fire();
                }
            }
            if n < events.len() {
                return;
            }
        }
    }
}

/// The core's watch task: wait until the epoll fd is readable, drain it,
/// again. It lives as long as the core's runtime.
async fn drive(registry: Rc<Registry>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; DRAIN_BATCH];
    loop {
        if let Err(e) = registry.epoll.readable(false).await {
            unavailable(&format!("waiting on its epoll instance failed: {e}"));
            monoio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        registry.drain(&mut events);
    }
}

/// One watch's state, shared by the watch and the registry's map.
#[derive(Default)]
struct Flag {
    closed: Cell<bool>,
    /// The task waiting in `closed()`; one waiter at a time.
    waker: Cell<Option<Waker>>,
}

impl Flag {
    fn fire(&self) {
        self.closed.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closed.get() {
            return Poll::Ready(());
        }
        let waker = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }
}

/// Watches one downstream socket for the client going away (see
/// [`Peers`]). Dropping it takes the socket out of the core's epoll set,
/// so it must drop before the socket closes.
pub struct PeerWatch {
    /// `None`: a watch that never fires (no registry on this core).
    entry: Option<Entry>,
}

struct Entry {
    registry: Rc<Registry>,
    token: u64,
    fd: RawFd,
    flag: Rc<Flag>,
}

impl PeerWatch {
    /// Resolves once the client has closed its side (EOF, RDHUP, error),
    /// and at once if it already has. Stays pending forever otherwise —
    /// bytes of a pipelined request are not a disconnect — and when there
    /// is no watch. One waiter at a time.
    pub async fn closed(&self) {
        match &self.entry {
            Some(entry) => std::future::poll_fn(|cx| entry.flag.poll_closed(cx)).await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: the epoll fd is open while `registry` lives, and the
        // owner of `fd` keeps it open until this watch is gone; DEL ignores
        // the event argument.
        unsafe {
            libc::epoll_ctl(
                self.registry.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                self.fd,
                std::ptr::null_mut(),
            );
        }
        self.registry.watched.borrow_mut().remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener};
    use std::time::Duration;

    use super::*;

    /// A connected loopback pair: (client, server side).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn reads_grow_while_full_and_shrink_when_small() {
        assert_eq!(next_read_size(MIN_READ, MIN_READ, MIN_READ), 2 * MIN_READ);
        assert_eq!(next_read_size(MAX_READ, MAX_READ, MAX_READ), MAX_READ);
        assert_eq!(next_read_size(8192, 8192, 9000), 8192, "not full");
        assert_eq!(next_read_size(8192, 100, 8192), 4096);
        assert_eq!(next_read_size(MIN_READ, 10, MIN_READ), MIN_READ);
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let (mut client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut conn = BufConn::new(TcpStream::from_std(server).unwrap());
            assert_eq!(conn.buf.capacity(), 0, "nothing held before the first read");
            // A burst: reads grow while they come back full.
            client.write_all(&vec![b'x'; 256 * 1024]).unwrap();
            let mut got = 0;
            while got < 256 * 1024 {
                got += conn.fill().await.unwrap();
                let n = conn.buffered().len();
                conn.consume(n);
            }
            assert!(conn.read_size > MIN_READ, "{}", conn.read_size);
            // Small pieces after it: the read size comes down and the large
            // buffer goes once it is empty.
            for _ in 0..8 {
                client.write_all(b"hi").unwrap();
                conn.fill().await.unwrap();
                conn.consume(2);
            }
            assert_eq!(conn.read_size, MIN_READ);
            assert!(
                conn.buf.capacity() <= 2 * MIN_READ,
                "{}",
                conn.buf.capacity()
            );
            client.write_all(b"more").unwrap();
            conn.fill().await.unwrap();
            conn.release_idle_buffer();
            assert_eq!(conn.buffered(), b"more", "buffered bytes are kept");
            conn.consume(4);
            conn.release_idle_buffer();
            assert_eq!(conn.buf.capacity(), 0);
        });
    }

    async fn fires_within(watch: &PeerWatch, ms: u64) -> bool {
        monoio::select! {
            _ = watch.closed() => true,
            _ = monoio::time::sleep(Duration::from_millis(ms)) => false,
        }
    }

    /// Descriptors registered in the core's epoll set, as the kernel says.
    fn registered(peers: &Peers) -> usize {
        let epfd = peers.registry().unwrap().epoll.as_raw_fd();
        std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("tfd:"))
            .count()
    }

    async fn scenario() {
        let peers = Peers::default();
        peers.start();

        let (mut client, server) = pair();
        let watch = peers.watch(server.as_raw_fd());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(
            !fires_within(&watch, 100).await,
            "a pipelined request is not a disconnect"
        );
        client.shutdown(Shutdown::Write).unwrap();
        assert!(fires_within(&watch, 2000).await, "a half-close fires");
        assert!(fires_within(&watch, 10).await, "and stays fired");

        let (gone, server_2) = pair();
        drop(gone);
        let already = peers.watch(server_2.as_raw_fd());
        assert!(
            fires_within(&already, 2000).await,
            "a client gone before the watch began"
        );

        let (reset, server_3) = pair();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads one valid linger struct on an open socket.
        let rc = unsafe {
            libc::setsockopt(
                reset.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let rst = peers.watch(server_3.as_raw_fd());
        let (_quiet, server_4) = pair();
        let quiet = peers.watch(server_4.as_raw_fd());
        drop(reset);
        assert!(fires_within(&rst, 2000).await, "a reset fires");
        assert!(
            !fires_within(&quiet, 50).await,
            "only the socket that closed"
        );

        assert_eq!(registered(&peers), 4);
        drop((watch, already, rst, quiet));
        assert_eq!(
            registered(&peers),
            0,
            "a dropped watch leaves the epoll set"
        );
        assert!(peers.registry().unwrap().watched.borrow().is_empty());
        drop((server, server_2, server_3, server_4));
    }

    #[test]
    fn peer_watch_fires_on_close_only_with_io_uring() {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(scenario()),
            Err(e) => eprintln!("skipped: no io_uring runtime here ({e})"),
        }
    }

    #[test]
    fn peer_watch_fires_on_close_only_with_epoll() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(scenario());
    }
}
