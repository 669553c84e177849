//! The mock LLM upstream: an OpenAI- and Anthropic-compatible server with
//! scripted faults.
//!
//! sluice's end-to-end tests and benchmarks put this where a provider would
//! be. [`spawn`] starts N thread-per-core monoio workers sharing one port
//! (SO_REUSEPORT) and returns once they listen; the threads live until the
//! process exits. Requests come in as HTTP/1.1 (optionally TLS), answers go
//! out in the real OpenAI wire format (or Anthropic's, at `POST
//! /v1/messages`), SSE included, with deterministic content and token usage
//! (see [`chat_content`], [`prompt_tokens_chat`], [`prompt_tokens_messages`]).
//! Each request may script delays, error statuses, stalls and disconnects
//! with `x-mock-*` headers ([`Script`], plus [`TOOL_CALL_HEADER`] for a tool
//! call answer); [`MockStats`] records what happened,
//! readable from the test thread or over HTTP at `GET /mock/stats`.
//!
//! Layout: `http` (framing, sans-IO) → `script` (per-request behaviour) →
//! `reply` (what to answer, rendered) → `server` (sockets, timing, faults).

mod anthropic;
mod http;
mod plan;
mod reply;
mod script;
mod server;
mod tokens;
mod tools;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub use anthropic::prompt_tokens_messages;
pub use reply::MODELS;
pub use script::{header, Script};
pub use tokens::{
    chat_content, count_tokens, count_with, encoding_for, input_tokens, prompt_tokens_chat,
    Encoding, WORDS,
};
pub use tools::{TOOL_ARGUMENTS, TOOL_CALL_HEADER};

/// Where and how the mock listens.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Listen address; port 0 picks a free port (all workers share it).
    pub addr: SocketAddr,
    /// Worker threads, one monoio runtime and listener each (0 counts as 1).
    pub workers: usize,
    /// Serve TLS with this config instead of plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// When set, every request except `/mock/stats` must carry
    /// `Authorization: Bearer <key>` (at `/v1/messages`, `x-api-key: <key>`
    /// also does), else 401.
    pub api_key: Option<String>,
    /// Reserved; ignored (`POST /v1/messages` always speaks Anthropic's
    /// wire format).
    pub anthropic: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            tls: None,
            api_key: None,
            anthropic: false,
        }
    }
}

/// Process-wide behaviour beyond [`MockConfig`], mostly for benchmarks.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Defaults for every request; `x-mock-*` headers override them.
    pub script: Script,
    /// Keep a copy of the last request in [`MockStats::last_request`]
    /// (costs a few allocations and a lock per request).
    pub record_requests: bool,
    /// Run the workers on the epoll driver even where io_uring works, to
    /// exercise the fallback that hosts without io_uring get.
    pub force_epoll: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            script: Script::default(),
            record_requests: true,
            force_epoll: false,
        }
    }
}

/// A running mock.
#[derive(Clone, Debug)]
pub struct MockHandle {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Live counters.
    pub stats: Arc<MockStats>,
}

/// Counters shared by every worker. `/mock/stats` requests are not counted
/// and not recorded. Every started stream ends in exactly one of completed,
/// aborted or disconnected (or is still running).
#[derive(Debug, Default)]
pub struct MockStats {
    /// Requests received (any endpoint except `/mock/stats`, errors included).
    pub requests: AtomicU64,
    /// Streaming responses begun (counted before the time-to-first-byte wait).
    pub streams_started: AtomicU64,
    /// Streams that wrote `[DONE]` and the last-chunk successfully.
    pub streams_completed: AtomicU64,
    /// Streams whose peer went away first: a write failed, or the peer closed
    /// (or half-closed) its side while the mock waited, stalled or slept.
    pub streams_aborted: AtomicU64,
    /// Streams the mock cut itself (`x-mock-disconnect-after`).
    pub streams_disconnected: AtomicU64,
    /// Accepted TCP connections.
    pub connections: AtomicU64,
    /// The last request received, if recording is on.
    pub last_request: Mutex<Option<RecordedRequest>>,
}

/// A copy of one request as received (body after chunked decoding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent, query included.
    pub path: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl MockStats {
    /// All counters and the last request (headers as `[name, value]` pairs,
    /// body as a lossy UTF-8 string) as served by `GET /mock/stats`.
    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let last = match self.last_request.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let last = last.map_or(Value::Null, |r| {
            json!({
                "method": r.method,
                "path": r.path,
                "headers": r.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
                "body": String::from_utf8_lossy(&r.body),
            })
        });
        json!({
            "requests": get(&self.requests),
            "streams_started": get(&self.streams_started),
            "streams_completed": get(&self.streams_completed),
            "streams_aborted": get(&self.streams_aborted),
            "streams_disconnected": get(&self.streams_disconnected),
            "connections": get(&self.connections),
            "last_request": last,
        })
    }

    /// The last recorded request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        match self.last_request.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Starts the mock with default [`Behaviour`]; returns once every worker
/// listens.
pub fn spawn(cfg: MockConfig) -> std::io::Result<MockHandle> {
    spawn_with(cfg, Behaviour::default())
}

/// Starts the mock with process-wide defaults; returns once every worker
/// listens. The tokenizers are built here, before the first request.
pub fn spawn_with(cfg: MockConfig, behaviour: Behaviour) -> std::io::Result<MockHandle> {
    server::spawn(cfg, behaviour)
}

/// A rustls server config for the mock from PEM text: the certificate chain
/// (leaf first; it must be signed by a CA, not be the CA) and its private
/// key. ALPN offers `http/1.1`.
pub fn server_tls_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> std::io::Result<Arc<rustls::ServerConfig>> {
    use std::io::{Error, ErrorKind};
    let certs = rustls_pemfile::certs(&mut &cert_chain_pem[..]).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "certificate PEM holds no CERTIFICATE block",
        ));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])?.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            "key PEM holds no private key block",
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("TLS config: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
