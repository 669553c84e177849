//! The upstream client: one per provider per core.
//!
//! Sends the rewritten request to the provider over HTTP/1.1 on plain TCP
//! or TLS (rustls: system roots plus the provider's `ca_file`), keeps
//! finished connections in a per-core keep-alive pool, and returns once the
//! response head is in — the body is the relay's to read. Connect and
//! first-byte timeouts come from the provider's config. A pooled connection
//! the provider closed while idle is detected on reuse (write error or EOF
//! before any response byte) and the request goes once more over a fresh
//! connection, which is safe: the provider saw nothing. A connect that
//! fails for want of sluice's own resources (descriptors, local ports,
//! memory) is a `LocalResources` error: the provider is not to blame.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use sluice_config::{BaseUrl, Config, Provider, ProviderKind};

use crate::error::{Error, ErrorKind};
use crate::filter::Endpoint as ApiEndpoint;
use crate::http::{self, BodyKind, ChunkedDecoder, HeadError, RequestHead, ResponseHead};
use crate::io::{BufConn, Stream, UpStream};

/// Longest response head accepted from a provider.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Request headers of the client that never go upstream: hop-by-hop ones,
/// the ones sluice sets itself, and the consumer's own credentials.
fn forwardable(name: &str) -> bool {
    !(http::is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("content-type")
        || name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("x-api-key")
        || name.eq_ignore_ascii_case("api-key")
        || name.eq_ignore_ascii_case("expect")
        || name.eq_ignore_ascii_case("x-request-id")
        || name.eq_ignore_ascii_case("anthropic-version")
        // sluice reads the body to account tokens: no compression.
        || name.eq_ignore_ascii_case("accept-encoding"))
}

/// A response whose head is in; the body is still on `conn`.
pub struct Response {
    pub head: ResponseHead,
    pub conn: BufConn<UpStream>,
    /// Which of the provider's endpoints answered.
    pub endpoint: usize,
}

/// What one upstream attempt asks for.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Which of the provider's endpoints.
    pub at: usize,
    /// The API endpoint the client called.
    pub endpoint: ApiEndpoint,
    /// The provider's name for the model.
    pub upstream_model: &'a str,
    /// The pool key for this attempt, if the provider has keys.
    pub key: Option<&'a str>,
}

/// One base URL of a provider, with this core's connections to it.
struct Endpoint {
    base: BaseUrl,
    tls_name: Option<ServerName<'static>>,
    addrs: RefCell<Vec<SocketAddr>>,
    idle: RefCell<Vec<BufConn<UpStream>>>,
}

pub struct Upstream {
    config: Arc<Config>,
    index: usize,
    tls: Option<TlsConnector>,
    endpoints: Vec<Endpoint>,
}

impl Upstream {
    /// `tls` is the provider's client config when its base URL is https.
    pub fn new(
        config: Arc<Config>,
        index: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, Error> {
        let provider = &config.providers[index];
        let mut endpoints = Vec::with_capacity(provider.endpoints.len());
        for (e, base) in provider.endpoints.iter().enumerate() {
            let tls_name = match (&tls, base.tls) {
                (Some(_), true) => {
                    Some(ServerName::try_from(base.host.clone()).map_err(|err| {
                        Error::new(
                            ErrorKind::Internal,
                            format!(
                                "providers[{index}].base_urls[{e}]: bad TLS server name: {err}"
                            ),
                        )
                    })?)
                }
                _ => None,
            };
            endpoints.push(Endpoint {
                base: base.clone(),
                tls_name,
                addrs: RefCell::new(Vec::new()),
                idle: RefCell::new(Vec::new()),
            });
        }
        Ok(Upstream {
            config,
            index,
            tls: tls.map(TlsConnector::from),
            endpoints,
        })
    }

    pub fn provider(&self) -> &Provider {
        &self.config.providers[self.index]
    }

    /// The request head sent upstream for a client's request.
    pub fn request_head(
        &self,
        call: &Call<'_>,
        client: &RequestHead,
        id: &str,
        body_len: usize,
    ) -> Vec<u8> {
        let Call {
            at,
            endpoint,
            upstream_model,
            key,
        } = *call;
        let p = self.provider();
        let mut out = Vec::with_capacity(512);
        let method = if endpoint == ApiEndpoint::Models {
            "GET"
        } else {
            "POST"
        };
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        let url = &self.endpoints[at.min(self.endpoints.len() - 1)].base;
        let base = url.path.as_str();
        match p.kind {
            // The Messages API lives at /v1/messages whether or not the
            // base URL names /v1.
            ProviderKind::Anthropic => {
                out.extend_from_slice(base.as_bytes());
                if !base.ends_with("/v1") {
                    out.extend_from_slice(b"/v1");
                }
                out.extend_from_slice(b"/messages");
            }
            ProviderKind::AzureOpenAi => {
                out.extend_from_slice(base.as_bytes());
                out.extend_from_slice(b"/openai/deployments/");
                out.extend_from_slice(upstream_model.as_bytes());
                out.extend_from_slice(endpoint.upstream_suffix().as_bytes());
                out.extend_from_slice(b"?api-version=");
                out.extend_from_slice(p.api_version.as_bytes());
            }
            _ => {
                out.extend_from_slice(base.as_bytes());
                out.extend_from_slice(endpoint.upstream_suffix().as_bytes());
            }
        }
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(url.authority().as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(key) = key {
            let header: &[u8] = match p.kind {
                ProviderKind::Anthropic => b"x-api-key: ",
                ProviderKind::AzureOpenAi => b"api-key: ",
                _ => b"authorization: Bearer ",
            };
            out.extend_from_slice(header);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if p.kind == ProviderKind::Anthropic {
            out.extend_from_slice(b"anthropic-version: ");
            out.extend_from_slice(p.api_version.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for h in &client.headers {
            if forwardable(&h.name) {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(&h.value);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id.as_bytes());
        if endpoint != ApiEndpoint::Models {
            out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
            out.extend_from_slice(body_len.to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    /// Send `head` + `body` and wait for the response head.
    pub async fn send(&self, at: usize, head: Vec<u8>, body: &[u8]) -> Result<Response, Error> {
        let at = at.min(self.endpoints.len() - 1);
        let mut message = head;
        message.extend_from_slice(body);
        let first_byte = self.provider().first_byte_timeout;
        loop {
            let pooled = self.endpoints[at].idle.borrow_mut().pop();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => self.connect(at).await?,
            };
            let (res, back) = conn.send(message).await;
            message = back;
            if let Err(e) = res {
                if reused {
                    continue;
                }
                return Err(Error::new(
                    ErrorKind::UpstreamConnect,
                    format!("sending to provider '{}' failed: {e}", self.provider().name),
                )
                .retry_safe());
            }
            match monoio::time::timeout(first_byte, read_head(&mut conn)).await {
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::UpstreamTimeout,
                        format!(
                            "provider '{}' sent no response within {} ms",
                            self.provider().name,
                            first_byte.as_millis()
                        ),
                    ))
                }
                Ok(Ok(Some(head))) => {
                    return Ok(Response {
                        head,
                        conn,
                        endpoint: at,
                    })
                }
                // Closed before answering: a stale pooled connection.
                Ok(Ok(None)) if reused => continue,
                Ok(Ok(None)) => {
                    return Err(Error::new(
                        ErrorKind::UpstreamProtocol,
                        format!(
                            "provider '{}' closed the connection without a response",
                            self.provider().name
                        ),
                    ))
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Active health check of endpoint `at`: `GET {base path}{path}` with
    /// the provider's first key; any 2xx answer within the first-byte
    /// timeout is healthy. `None`: sluice could not check for want of its
    /// own resources (descriptors, memory, ports), which says nothing about
    /// the endpoint.
    pub async fn check(&self, at: usize, path: &str) -> Option<bool> {
        let Some(endpoint) = self.endpoints.get(at) else {
            return Some(false);
        };
        let p = self.provider();
        let mut head = format!(
            "GET {}{} HTTP/1.1\r\nhost: {}\r\n",
            endpoint.base.path,
            path,
            endpoint.base.authority()
        );
        if let Some(key) = p.keys.first() {
            match p.kind {
                ProviderKind::Anthropic => head.push_str(&format!(
                    "x-api-key: {}\r\nanthropic-version: {}\r\n",
                    key.key, p.api_version
                )),
                ProviderKind::AzureOpenAi => head.push_str(&format!("api-key: {}\r\n", key.key)),
                _ => head.push_str(&format!("authorization: Bearer {}\r\n", key.key)),
            }
        }
        head.push_str("connection: close\r\n\r\n");
        match self.send(at, head.into_bytes(), &[]).await {
            Ok(response) => Some((200..300).contains(&response.head.status)),
            Err(e) if e.kind == ErrorKind::LocalResources => None,
            Err(_) => Some(false),
        }
    }

    /// Give a connection whose response was read to the end back to the pool.
    pub fn release(&self, at: usize, conn: BufConn<UpStream>) {
        let Some(endpoint) = self.endpoints.get(at) else {
            return;
        };
        let mut idle = endpoint.idle.borrow_mut();
        if idle.len() < self.provider().max_idle_connections && conn.buffered().is_empty() {
            idle.push(conn);
        }
    }

    async fn connect(&self, at: usize) -> Result<BufConn<UpStream>, Error> {
        let endpoint = &self.endpoints[at];
        let url = &endpoint.base;
        let p = self.provider();
        let timeout = p.connect_timeout;
        let fail = |what: String| {
            Error::new(
                ErrorKind::UpstreamConnect,
                format!(
                    "connecting to provider '{}' ({}): {what}",
                    p.name,
                    url.authority()
                ),
            )
            .retry_safe()
        };
        let short = |e: &io::Error, hint: &str| {
            Error::new(
                ErrorKind::LocalResources,
                format!(
                    "sluice ran out of local resources connecting to provider '{}' ({}): {e}; {hint}",
                    p.name,
                    url.authority()
                ),
            )
        };
        if endpoint.addrs.borrow().is_empty() {
            // Resolved once per core and again after a failure; the std
            // resolver blocks, which only matters for names, not literals.
            let found: Vec<SocketAddr> = (url.host.as_str(), url.port)
                .to_socket_addrs()
                .map_err(|e| match local_shortage(&e) {
                    Some(hint) => short(&e, hint),
                    None => fail(format!("resolving failed: {e}")),
                })?
                .collect();
            *endpoint.addrs.borrow_mut() = found;
        }
        let addrs = endpoint.addrs.borrow().clone();
        let mut last = String::from("no address");
        for addr in addrs {
            match connect_one(addr, timeout).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let stream = match (&self.tls, &endpoint.tls_name) {
                        (Some(connector), Some(name)) => {
                            match monoio::time::timeout(
                                timeout,
                                connector.connect(name.clone(), tcp),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                                Ok(Err(e)) => {
                                    return Err(fail(format!("TLS handshake failed: {e}")))
                                }
                                Err(_) => {
                                    return Err(fail(format!(
                                        "TLS handshake took over {} ms",
                                        timeout.as_millis()
                                    )))
                                }
                            }
                        }
                        _ => Stream::Plain(tcp),
                    };
                    return Ok(BufConn::new(stream));
                }
                Err(ConnectError::Local(e, hint)) => return Err(short(&e, hint)),
                Err(ConnectError::Remote(e)) => last = e,
            }
        }
        endpoint.addrs.borrow_mut().clear();
        Err(fail(last))
    }
}

/// Why one connection attempt failed.
enum ConnectError {
    /// This host is short of something (see [`local_shortage`]), with the
    /// hint for the operator: the provider is not to blame.
    Local(io::Error, &'static str),
    /// The provider's address refused, reset or did not answer.
    Remote(String),
}

/// Whether a failed socket()/connect() (or a resolver's system call) means
/// this host ran out of something, and what the operator can do about it.
fn local_shortage(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::EMFILE => Some("raise sluice's open-file limit (LimitNOFILE)"),
        libc::ENFILE => Some("raise the host's open-file limit (fs.file-max)"),
        libc::ENOBUFS | libc::ENOMEM => Some("the host is short of memory for sockets"),
        libc::EADDRNOTAVAIL => {
            Some("no local port is free for a new connection; widen net.ipv4.ip_local_port_range")
        }
        _ => None,
    }
}

async fn connect_one(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(match local_shortage(&e) {
            Some(hint) => ConnectError::Local(e, hint),
            None => ConnectError::Remote(format!("{addr}: {e}")),
        }),
        Err(_) => Err(ConnectError::Remote(format!(
            "{addr}: no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Read until a final (non-1xx) response head is in. `Ok(None)`: the
/// connection closed before any byte of a response.
async fn read_head(conn: &mut BufConn<UpStream>) -> Result<Option<ResponseHead>, Error> {
    let protocol = |what: &str| {
        Error::new(
            ErrorKind::UpstreamProtocol,
            format!("bad response from provider: {what}"),
        )
    };
    loop {
        match http::parse_response_head(conn.buffered(), MAX_RESPONSE_HEAD, false) {
            Ok(Some(head)) => {
                conn.consume(head.head_len);
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(Some(head));
            }
            Ok(None) => {}
            Err(HeadError::TooLarge) => return Err(protocol("response head too large")),
            Err(HeadError::Invalid(what)) => return Err(protocol(what)),
        }
        let had_bytes = !conn.buffered().is_empty();
        match conn.fill().await {
            Ok(0) if had_bytes => {
                return Err(protocol("connection closed inside the response head"))
            }
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(_) if !had_bytes => return Ok(None),
            Err(e) => return Err(protocol(&e.to_string())),
        }
    }
}

/// De-frames a message body (Content-Length, chunked or until close) as it
/// arrives on a connection.
pub struct BodyReader {
    kind: BodyKind,
    remaining: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyReader {
    pub fn new(kind: BodyKind) -> Self {
        let remaining = match kind {
            BodyKind::Length(n) => n,
            _ => 0,
        };
        BodyReader {
            kind,
            remaining,
            chunked: ChunkedDecoder::new(),
            done: matches!(kind, BodyKind::None | BodyKind::Length(0)),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Move the body bytes buffered on `conn` into `out`, de-framed.
    /// Returns whether the body is complete.
    pub fn drain<S>(
        &mut self,
        conn: &mut BufConn<S>,
        out: &mut Vec<u8>,
    ) -> Result<bool, &'static str>
    where
        S: monoio::io::AsyncReadRent + monoio::io::AsyncWriteRent,
    {
        if self.done {
            return Ok(true);
        }
        let input = conn.buffered();
        let used = match self.kind {
            BodyKind::None => 0,
            BodyKind::Length(_) => {
                let n = (self.remaining as usize).min(input.len());
                out.extend_from_slice(&input[..n]);
                self.remaining -= n as u64;
                self.done = self.remaining == 0;
                n
            }
            BodyKind::Chunked => {
                let (n, done) = self.chunked.decode(input, out).map_err(|e| e.0)?;
                self.done = done;
                n
            }
            BodyKind::UntilClose => {
                out.extend_from_slice(input);
                input.len()
            }
        };
        conn.consume(used);
        Ok(self.done)
    }

    /// The connection reached EOF: fine only for an until-close body.
    pub fn on_eof(&mut self) -> bool {
        if self.kind == BodyKind::UntilClose {
            self.done = true;
        }
        self.done
    }
}
