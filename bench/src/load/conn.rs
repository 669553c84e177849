//! One client connection's bytes: a non-blocking TCP socket, optionally
//! wrapped in rustls, driven by the engine's readiness events.
//!
//! In: request bytes to send, readiness events. Out: response bytes handed
//! to a callback as they are read (plaintext, after TLS). No parsing and no
//! timing here — the engine owns both. The socket is registered once for
//! read and write readiness (edge-triggered), so a write that cannot finish
//! resumes on the next writable event without re-registering.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;

/// Where TLS connections go and how they verify the server.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// What a read pass ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Everything available was read; wait for the next event.
    Drained,
    /// The peer ended the stream.
    Eof,
    /// The callback asked to stop.
    Stopped,
}

pub(crate) struct Conn {
    sock: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    connected: bool,
    /// Plain TCP: how much of the current request is written, while a
    /// write is unfinished.
    written: Option<usize>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conn {
    /// Starts a non-blocking connect and registers the socket.
    pub(crate) fn connect(
        addr: SocketAddr,
        tls: Option<&TlsTarget>,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Conn> {
        let mut sock = TcpStream::connect(addr)?;
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let tls = match tls {
            Some(t) => Some(Box::new(
                rustls::ClientConnection::new(Arc::clone(&t.config), t.name.clone())
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
        Ok(Conn {
            sock,
            tls,
            connected: false,
            written: None,
        })
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected
    }

    /// After the first event of a connecting socket: `Ok(true)` once the
    /// connect finished, `Ok(false)` while it is still going, or its error.
    pub(crate) fn finish_connect(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        if let Some(e) = self.sock.take_error()? {
            return Err(e);
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                // Nagle would hold a request whose head and body go out in
                // two segments.
                self.sock.set_nodelay(true)?;
                self.connected = true;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if would_block(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether bytes of the current request still wait for the socket.
    pub(crate) fn write_pending(&self) -> bool {
        match &self.tls {
            None => self.written.is_some(),
            Some(tls) => tls.wants_write(),
        }
    }

    /// Starts sending `request`; `Ok(true)` when all of it is with the
    /// kernel, `Ok(false)` when the rest waits for a writable event
    /// ([`flush`](Self::flush) with the same bytes).
    pub(crate) fn send(&mut self, request: &[u8]) -> io::Result<bool> {
        match &mut self.tls {
            None => {
                self.written = Some(0);
                self.flush(request)
            }
            Some(tls) => {
                // rustls buffers plaintext until the handshake is done.
                tls.writer().write_all(request)?;
                self.flush(request)
            }
        }
    }

    /// Continues an unfinished send.
    pub(crate) fn flush(&mut self, request: &[u8]) -> io::Result<bool> {
        if !self.connected {
            return Ok(false);
        }
        match &mut self.tls {
            None => {
                let Some(mut at) = self.written else {
                    return Ok(true);
                };
                while at < request.len() {
                    match (&self.sock).write(&request[at..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => at += n,
                        Err(e) if would_block(&e) => {
                            self.written = Some(at);
                            return Ok(false);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                self.written = None;
                Ok(true)
            }
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut &self.sock) {
                        Ok(_) => {}
                        Err(e) if would_block(&e) => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
    }

    /// Reads what the socket has, handing each piece to `on_data` until it
    /// breaks, the socket is drained or the peer closed. `closed` says the
    /// event reported the peer's FIN: then the end of stream is already
    /// queued behind the data and no further edge will announce it, so
    /// reading goes on until it is seen.
    pub(crate) fn read(
        &mut self,
        scratch: &mut [u8],
        closed: bool,
        mut on_data: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> io::Result<ReadEnd> {
        let Some(tls) = &mut self.tls else {
            loop {
                match (&self.sock).read(scratch) {
                    Ok(0) => return Ok(ReadEnd::Eof),
                    Ok(n) => {
                        if on_data(&scratch[..n]).is_break() {
                            return Ok(ReadEnd::Stopped);
                        }
                        // A short read drained the socket; epoll reports
                        // the next arrival as a new edge.
                        if n < scratch.len() && !closed {
                            return Ok(ReadEnd::Drained);
                        }
                    }
                    Err(e) if would_block(&e) => return Ok(ReadEnd::Drained),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        };
        let mut end = ReadEnd::Drained;
        loop {
            let tcp_eof = match tls.read_tls(&mut &self.sock) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            tls.process_new_packets().map_err(io::Error::other)?;
            loop {
                match tls.reader().read(scratch) {
                    // A close_notify from the server.
                    Ok(0) => return Ok(ReadEnd::Eof),
                    Ok(n) => {
                        if on_data(&scratch[..n]).is_break() {
                            return Ok(ReadEnd::Stopped);
                        }
                    }
                    Err(e) if would_block(&e) => break,
                    // TCP closed without close_notify.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadEnd::Eof),
                    Err(e) => return Err(e),
                }
            }
            if tcp_eof {
                end = ReadEnd::Eof;
                break;
            }
        }
        // Handshake replies, and a request buffered while the handshake ran.
        if self.connected && tls.wants_write() {
            while tls.wants_write() {
                match tls.write_tls(&mut &self.sock) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(end)
    }
}
