//! Byte plumbing shared by both sides of the proxy.
//!
//! [`Stream`] is a plain TCP or a TLS connection behind one type, so the
//! downstream server loop and the upstream client are written once.
//! [`BufConn`] owns a connection and its read buffer: bytes read but not yet
//! consumed by a parser stay buffered (pipelined requests, the start of a
//! response body that arrived with its head). monoio's I/O takes buffers by
//! value, so every read lends the buffer to the kernel and gets it back;
//! nothing is copied on the way.

use std::io;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;

/// Smallest free space offered to the kernel on a read.
const MIN_READ: usize = 8 * 1024;

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
}

impl<S: AsyncReadRent + AsyncWriteRent> BufConn<S> {
    pub fn new(io: S) -> Self {
        BufConn {
            io,
            buf: Vec::with_capacity(MIN_READ),
            start: 0,
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
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(MIN_READ.max(self.buf.len()));
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice): (io::Result<usize>, SliceMut<Vec<u8>>) =
            self.io.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
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

/// Watches a downstream socket for the client going away while sluice is
/// busy upstream (waiting for the first byte, or between two events of a
/// slow stream), so the provider can be told to stop at once rather than
/// at the next write. It polls a duplicate of the client's socket: the
/// connection itself (plain or TLS) is never read, and a byte the client
/// pipelines is left where it is.
pub struct PeerWatch {
    dup: Option<TcpStream>,
}

impl PeerWatch {
    /// Watch the socket `fd`; a watch that cannot be set up never fires.
    pub fn new(fd: std::os::fd::RawFd) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: dup() of a live socket fd; the new fd is owned by the
        // std TcpStream built from it and closed when it drops.
        let dup = unsafe { libc::dup(fd) };
        if dup < 0 {
            return PeerWatch { dup: None };
        }
        // SAFETY: `dup` is a fresh fd that nothing else owns.
        let std_stream = unsafe { std::net::TcpStream::from_raw_fd(dup) };
        PeerWatch {
            dup: std_stream
                .set_nonblocking(true)
                .ok()
                .and_then(|_| TcpStream::from_std(std_stream).ok()),
        }
    }

    /// Resolves once the client has closed its side (EOF or error). Stays
    /// pending forever when the client sends more bytes instead (a
    /// pipelined request is not a disconnect) or when there is no watch.
    pub async fn closed(&self) {
        use std::os::fd::AsRawFd;
        let Some(sock) = &self.dup else {
            return std::future::pending().await;
        };
        loop {
            if sock.readable(false).await.is_err() {
                return;
            }
            let mut byte = 0u8;
            // SAFETY: recv into one valid byte on an fd we own; MSG_PEEK
            // leaves the data for the real reader.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return;
            }
            if n > 0 {
                return std::future::pending().await;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock && err.kind() != io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}
