//! The load generator: drives an OpenAI-compatible endpoint and measures it.
//!
//! In: a [`Target`] (URL, optional TLS), a [`RequestSpec`] (the one request
//! every exchange sends: method, headers, key, body, streamed or not) and a
//! [`Plan`] (closed loop at a concurrency, open loop at a constant rate, or
//! many idle streams; warm-up, duration, limits). Out: an [`Outcome`] —
//! hdrhistograms and counters ([`Recorder`]) and their [`Summary`].
//!
//! Each generator thread runs its own event loop (`engine`) over
//! non-blocking sockets with a small HTTP/1.1 client (`wire` for framing
//! and SSE, `conn` for TCP/TLS), so one thread sustains far more load than
//! the mock upstream it shares a core with. Requests are rendered to bytes
//! once per run; each exchange only writes them and parses the answer.

mod conn;
mod engine;
pub mod stats;
mod timer;
pub mod wire;

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

pub use conn::TlsTarget;
pub use stats::{Counts, Dist, Hist, IdleCounts, Recorder, StreamChecks, Summary};

/// The path used when a URL gives none.
pub const DEFAULT_PATH: &str = "/v1/chat/completions";

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The resolved address connections go to.
    pub addr: SocketAddr,
    /// `host[:port]` for the `Host` header.
    pub authority: String,
    /// Request target, e.g. `/v1/chat/completions`.
    pub path: String,
    pub tls: Option<TlsTarget>,
}

/// How an `https` target's certificate is checked.
#[derive(Clone, Debug, Default)]
pub enum Verify {
    /// The system's trusted roots.
    #[default]
    System,
    /// Only the CAs in this PEM file.
    CaFile(std::path::PathBuf),
    /// Nothing is checked (a benchmark against a self-signed test server).
    Insecure,
}

impl Target {
    /// Parses `http[s]://host[:port][/path]`; an empty path means
    /// [`DEFAULT_PATH`]. The host is resolved once, here.
    pub fn parse(url: &str, verify: &Verify) -> Result<Target, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("{url}: expected an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let default_port = if tls { 443 } else { 80 };
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return Err(format!("{url}: unclosed [ in the host"));
            };
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
                None => default_port,
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?),
                None => (authority, default_port),
            }
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} has no address"))?;
        let tls = if tls {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{url}: {host} is not a valid TLS server name: {e}"))?;
            Some(TlsTarget {
                config: client_tls_config(verify)?,
                name,
            })
        } else {
            None
        };
        Ok(Target {
            url: url.to_owned(),
            addr,
            authority: authority.to_owned(),
            path: if path.is_empty() { DEFAULT_PATH } else { path }.to_owned(),
            tls,
        })
    }
}

/// A rustls client config (ring, HTTP/1.1 ALPN) verifying as asked.
pub fn client_tls_config(verify: &Verify) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let mut config = match verify {
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        Verify::System | Verify::CaFile(_) => {
            let mut roots = rustls::RootCertStore::empty();
            match verify {
                Verify::CaFile(path) => {
                    let pem =
                        std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
                    for cert in rustls_pemfile::certs(&mut &pem[..]) {
                        let cert = cert.map_err(|e| format!("--ca {}: {e}", path.display()))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                    }
                    if roots.is_empty() {
                        return Err(format!("--ca {}: no CERTIFICATE block", path.display()));
                    }
                }
                _ => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (signatures are still checked, so the
/// handshake is a real one).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The request every exchange of a run sends.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: String,
    /// Extra header fields, in order (`Authorization` included when a key
    /// is set). `Host`, `Content-Length` and `Content-Type` are added.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Expect an event stream and check it.
    pub stream: bool,
    /// A stream must carry a usage chunk (the body asks for one).
    pub require_usage: bool,
}

/// Filler words for padded prompts (ASCII, no JSON escaping needed).
const FILLER: &str = "the quick edge proxy relays every token without delay ";

impl RequestSpec {
    /// A chat completion for `model` with one short user message, padded so
    /// the whole body is exactly `body_bytes` long when given (and at least
    /// the unpadded length). Streams ask for usage
    /// (`stream_options.include_usage`).
    pub fn chat(model: &str, stream: bool, body_bytes: Option<usize>) -> RequestSpec {
        let model_json = serde_json::Value::from(model).to_string();
        let render = |content: &str| {
            let mut b = format!(
                "{{\"model\":{model_json},\"messages\":[{{\"role\":\"user\",\"content\":\"{content}\"}}]"
            );
            if stream {
                b.push_str(",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
            }
            b.push('}');
            b
        };
        let base = "Say hello to the edge.";
        let mut body = render(base);
        if let Some(want) = body_bytes {
            if want > body.len() {
                let mut content = String::from(base);
                content.push(' ');
                let missing = want - body.len() - 1;
                while content.len() < base.len() + 1 + missing {
                    content.push_str(FILLER);
                }
                content.truncate(base.len() + 1 + missing);
                body = render(&content);
            }
        }
        RequestSpec {
            method: "POST".to_owned(),
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: body.into_bytes(),
            stream,
            require_usage: stream,
        }
    }

    /// Adds `Authorization: Bearer <key>`.
    pub fn with_key(mut self, key: &str) -> Self {
        self.headers
            .push(("Authorization".to_owned(), format!("Bearer {key}")));
        self
    }

    /// Adds one header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The request as bytes on the wire for `target`.
    pub fn render(&self, target: &Target) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, target.path, target.authority
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !self.body.is_empty() || self.method == "POST" {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// How requests are offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Keep `concurrency` requests in flight, one per connection.
    Closed { concurrency: usize },
    /// Start `rate` requests per second on schedule, on up to
    /// `max_connections` keep-alive connections.
    Open { rate: f64, max_connections: usize },
    /// Open `streams` streams (`parallel` connects at a time), hold them
    /// all for `hold`, close them.
    Idle {
        streams: usize,
        hold: Duration,
        parallel: usize,
    },
}

impl Load {
    pub fn name(&self) -> &'static str {
        match self {
            Load::Closed { .. } => "closed",
            Load::Open { .. } => "open",
            Load::Idle { .. } => "idle",
        }
    }
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub load: Load,
    /// Load runs this long before measuring starts.
    pub warmup: Duration,
    /// The measured window (ignored by the idle load).
    pub duration: Duration,
    /// Stop after starting this many requests (closed and open loop).
    pub requests: Option<u64>,
    /// A request still unanswered after this long fails.
    pub timeout: Duration,
    /// After the window, how long queued and in-flight requests may take
    /// to finish before they are failed.
    pub drain_timeout: Duration,
    /// Generator threads; the load is split evenly between them.
    pub threads: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            load: Load::Closed { concurrency: 1 },
            warmup: Duration::ZERO,
            duration: Duration::from_secs(10),
            requests: None,
            timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            threads: 1,
        }
    }
}

/// Live counters another thread may read while a run goes on (progress
/// bar, the comparison waiting for idle streams to be open).
#[derive(Debug, Default)]
pub struct Progress {
    /// Responses finished (warm-up included).
    pub completed: AtomicU64,
    /// Measured requests that failed.
    pub failed: AtomicU64,
    /// SSE events received.
    pub events: AtomicU64,
    /// Idle load: streams open.
    pub opened: AtomicU64,
    /// Idle load: threads that have opened everything and now hold.
    pub holding: AtomicU64,
}

impl Progress {
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub recorder: Recorder,
    pub summary: Summary,
}

/// Splits `n` over `parts`: part `k` gets its share of the remainder first.
fn split(n: u64, parts: usize, k: usize) -> u64 {
    let parts = parts as u64;
    n / parts + u64::from((k as u64) < n % parts)
}

/// Runs `plan` against `target`. With one thread the calling thread does
/// the work (so its CPU affinity applies); more threads are spawned and
/// their recordings merged.
pub fn run(
    target: &Target,
    spec: &RequestSpec,
    plan: &Plan,
    progress: &Progress,
) -> std::io::Result<Outcome> {
    let threads = plan.threads.max(1);
    let request = spec.render(target);
    let start = Instant::now();
    let share = |k: usize| engine::Share {
        load: match plan.load {
            Load::Closed { concurrency } => Load::Closed {
                concurrency: split(concurrency as u64, threads, k) as usize,
            },
            Load::Open {
                rate,
                max_connections,
            } => Load::Open {
                rate: rate / threads as f64,
                max_connections: split(max_connections as u64, threads, k).max(1) as usize,
            },
            Load::Idle {
                streams,
                hold,
                parallel,
            } => Load::Idle {
                streams: split(streams as u64, threads, k) as usize,
                hold,
                parallel: split(parallel as u64, threads, k).max(1) as usize,
            },
        },
        budget: plan.requests.map(|n| split(n, threads, k)),
        // Thread k's schedule is shifted by k requests of the whole rate,
        // so the threads' schedules interleave evenly.
        offset: match plan.load {
            Load::Open { rate, .. } => Duration::from_secs_f64(k as f64 / rate),
            _ => Duration::ZERO,
        },
    };
    let recorder = if threads == 1 {
        engine::Engine::new(target, spec, &request, plan, share(0), start, progress)?.run()?
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let (request, share) = (&request, share(k));
                    scope.spawn(move || {
                        engine::Engine::new(target, spec, request, plan, share, start, progress)?
                            .run()
                    })
                })
                .collect();
            let mut merged = Recorder::default();
            for h in handles {
                let rec = h
                    .join()
                    .map_err(|_| std::io::Error::other("generator thread panicked"))??;
                merged.merge(&rec);
            }
            Ok::<_, std::io::Error>(merged)
        })?
    };
    let (offered, concurrency) = match plan.load {
        Load::Open { rate, .. } => (Some(rate), None),
        Load::Closed { concurrency } => (None, Some(concurrency)),
        Load::Idle { streams, .. } => (None, Some(streams)),
    };
    let window = match plan.load {
        Load::Idle { hold, .. } => hold,
        _ => plan.duration,
    };
    let summary = recorder.summary(plan.load.name(), spec.stream, window, offered, concurrency);
    Ok(Outcome { recorder, summary })
}

/// Reads a PEM CA file into a verify mode (helper for the CLI).
pub fn verify_from(ca: Option<&Path>, insecure: bool) -> Verify {
    match (ca, insecure) {
        (_, true) => Verify::Insecure,
        (Some(p), false) => Verify::CaFile(p.to_path_buf()),
        (None, false) => Verify::System,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("http://127.0.0.1:8080", &Verify::System)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", DEFAULT_PATH)
        );
        assert!(t.tls.is_none());
        let t = Target::parse("https://[::1]:9443/v1/completions", &Verify::Insecure)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.addr.port(), 9443);
        assert_eq!(t.path, "/v1/completions");
        assert!(t.tls.is_some());
        for bad in ["ftp://x", "http://", "http://h:port", "https://[::1"] {
            assert!(Target::parse(bad, &Verify::Insecure).is_err(), "{bad}");
        }
    }

    #[test]
    fn chat_bodies_have_the_asked_size_and_render() {
        for n in [0, 10, 200, 4096, 65536] {
            let spec = RequestSpec::chat("gpt-4o-mini", n % 2 == 0, Some(n));
            let v: serde_json::Value =
                serde_json::from_slice(&spec.body).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(v["model"], "gpt-4o-mini");
            if n >= 200 {
                assert_eq!(spec.body.len(), n);
            }
        }
        let t = Target::parse("http://127.0.0.1:1/x", &Verify::System)
            .unwrap_or_else(|e| panic!("{e}"));
        let spec = RequestSpec::chat("m", false, None)
            .with_key("k")
            .with_header("x-a", "1");
        let raw = String::from_utf8(spec.render(&t)).unwrap_or_default();
        assert!(
            raw.starts_with("POST /x HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("\r\nAuthorization: Bearer k\r\nx-a: 1\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains(&format!("Content-Length: {}\r\n\r\n{{", spec.body.len())),
            "{raw}"
        );
    }

    #[test]
    fn shares_add_up() {
        for (n, parts) in [(10, 3), (1, 4), (1024, 2), (0, 1)] {
            let total: u64 = (0..parts).map(|k| split(n, parts, k)).sum();
            assert_eq!(total, n);
        }
    }
}
