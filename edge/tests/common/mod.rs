//! Harness for sluice's end-to-end tests.
//!
//! Starts the real `sluice` binary on ephemeral ports in front of the
//! in-process mock upstream (`sluice_bench::mock`), and talks to it with a
//! small blocking HTTP/1.1 client written here over `std::net::TcpStream`
//! (or rustls on top of it), so tests can also send malformed, slow or
//! oversized requests. Every wait is bounded; every child process is killed
//! by a drop guard; every temp dir is removed.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_bench::mock::{self, MockConfig, MockHandle};

/// How long any single network read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll `f` every 20 ms until it returns `Some`, or panic after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- temp dirs

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "sluice-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// --------------------------------------------------------------------- mock

/// The upstream key sluice must send; consumers' keys must never reach it.
pub const MOCK_KEY: &str = "mock-key";

/// Start a plain-HTTP mock upstream on a free port.
pub fn mock() -> MockHandle {
    mock_with_tls(None)
}

/// Start a mock upstream, serving TLS when `tls` is given.
pub fn mock_with_tls(tls: Option<Arc<rustls::ServerConfig>>) -> MockHandle {
    mock::spawn(MockConfig {
        addr: "127.0.0.1:0".parse().expect("literal address"),
        workers: 1,
        tls,
        api_key: Some(MOCK_KEY.into()),
        ..MockConfig::default()
    })
    .expect("start the mock upstream")
}

pub fn counter(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

// ------------------------------------------------------------------- config

/// One `[[providers]]` entry.
pub struct ProviderSpec {
    pub name: String,
    pub base_url: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub idle_timeout_ms: u64,
}

impl ProviderSpec {
    pub fn new(name: &str, base_url: String) -> Self {
        ProviderSpec {
            name: name.into(),
            base_url,
            ca_file: None,
            connect_timeout_ms: 2000,
            first_byte_timeout_ms: 10_000,
            idle_timeout_ms: 10_000,
        }
    }
}

/// One `[[models]]` entry.
pub struct ModelSpec {
    pub name: &'static str,
    pub provider: String,
    pub upstream_model: &'static str,
    pub encoding: &'static str,
}

/// What a test's sluice looks like; `toml` renders it.
pub struct Setup {
    pub workers: usize,
    pub providers: Vec<ProviderSpec>,
    pub models: Vec<ModelSpec>,
    /// `max_header_bytes`, `max_body_bytes`, `header_timeout_ms`,
    /// `body_timeout_ms`, `idle_timeout_ms`.
    pub limits: [u64; 5],
    pub listener_tls: Option<(PathBuf, PathBuf)>,
    pub drain_timeout_ms: u64,
    /// Extra TOML lines, each for one table: `"admin"`, `"quota"`,
    /// `"providers.<name>"`, `"models.<name>"`, `"consumers.<name>"`, or
    /// `""` for lines appended after everything (new tables such as
    /// `[quota.defaults]`). Empty by default; see `Setup::extra`.
    pub extra: Vec<(String, String)>,
    /// `[features]` all off: no consumers, no audit, no quota store.
    pub passthrough: bool,
}

/// The public name whose upstream name differs, to see the rewrite.
pub const MINI: &str = "gpt-4o-mini";
pub const MINI_UPSTREAM: &str = "gpt-4o-mini-2024-07-18";
/// Served under its own name.
pub const TURBO: &str = "gpt-3.5-turbo";
pub const ALICE: &str = "sk-alice";
pub const BOB: &str = "sk-bob";

impl Setup {
    /// Two workers, one plain provider at `mock`, both models, generous limits.
    pub fn new(mock: &MockHandle) -> Self {
        Setup::with_provider(ProviderSpec::new(
            "mock",
            format!("http://{}/v1", mock.addr),
        ))
    }

    pub fn with_provider(provider: ProviderSpec) -> Self {
        let name = provider.name.clone();
        Setup {
            workers: 2,
            providers: vec![provider],
            models: vec![
                ModelSpec {
                    name: MINI,
                    provider: name.clone(),
                    upstream_model: MINI_UPSTREAM,
                    encoding: "o200k_base",
                },
                ModelSpec {
                    name: TURBO,
                    provider: name,
                    upstream_model: TURBO,
                    encoding: "cl100k_base",
                },
            ],
            limits: [16_384, 1_048_576, 5000, 5000, 10_000],
            listener_tls: None,
            drain_timeout_ms: 10_000,
            extra: Vec::new(),
            passthrough: false,
        }
    }

    pub fn toml(&self, audit: &Path) -> String {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let mut s = String::new();
        let _ = writeln!(s, "[[listeners]]\naddress = \"127.0.0.1:0\"");
        if let Some((cert, key)) = &self.listener_tls {
            let _ = writeln!(
                s,
                "tls = {{ cert_file = {}, key_file = {} }}",
                q(cert),
                q(key)
            );
        }
        let _ = writeln!(s, "\n[admin]\naddress = \"127.0.0.1:0\"");
        s.push_str(&self.extra_for("admin"));
        let _ = writeln!(
            s,
            "\n[workers]\ncount = {}\ndrain_timeout_ms = {}",
            self.workers, self.drain_timeout_ms
        );
        let [header, body, header_t, body_t, idle_t] = self.limits;
        let _ = writeln!(
            s,
            "\n[limits]\nmax_header_bytes = {header}\nmax_body_bytes = {body}\n\
             header_timeout_ms = {header_t}\nbody_timeout_ms = {body_t}\nidle_timeout_ms = {idle_t}"
        );
        for p in &self.providers {
            let _ = writeln!(
                s,
                "\n[[providers]]\nname = \"{}\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
                 api_key = \"{MOCK_KEY}\"\nconnect_timeout_ms = {}\nfirst_byte_timeout_ms = {}\n\
                 idle_timeout_ms = {}",
                p.name,
                p.base_url,
                p.connect_timeout_ms,
                p.first_byte_timeout_ms,
                p.idle_timeout_ms
            );
            if let Some(ca) = &p.ca_file {
                let _ = writeln!(s, "ca_file = {}", q(ca));
            }
            s.push_str(&self.extra_for(&format!("providers.{}", p.name)));
        }
        for m in &self.models {
            let _ = writeln!(
                s,
                "\n[[models]]\nname = \"{}\"\nprovider = \"{}\"\nupstream_model = \"{}\"\nencoding = \"{}\"",
                m.name, m.provider, m.upstream_model, m.encoding
            );
            s.push_str(&self.extra_for(&format!("models.{}", m.name)));
        }
        if self.passthrough {
            let _ = writeln!(
                s,
                "\n[features]\nauth = false\naccounting = false\naudit = false"
            );
            s.push_str(&self.extra_for(""));
            return s;
        }
        let _ = writeln!(
            s,
            "\n[[consumers]]\nname = \"alice\"\nkeys = [{{ id = \"alice-1\", plain = \"{ALICE}\" }}]"
        );
        s.push_str(&self.extra_for("consumers.alice"));
        let _ = writeln!(
            s,
            "\n[[consumers]]\nname = \"bob\"\nkeys = [{{ id = \"bob-1\", plain = \"{BOB}\" }}]\n\
             allowed_models = [\"{TURBO}\"]"
        );
        s.push_str(&self.extra_for("consumers.bob"));
        let _ = writeln!(s, "\n[audit]\npath = {}\nflush_interval_ms = 50", q(audit));
        let quota_state = audit.with_file_name("quota.redb");
        let _ = writeln!(s, "\n[quota]\nstate_path = {}", q(&quota_state));
        s.push_str(&self.extra_for("quota"));
        s.push_str(&self.extra_for(""));
        s
    }
}

// ------------------------------------------------------------------ gateway

/// A running `sluice` process; killed (SIGKILL) on drop unless it exited.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The scheme of the `listening on` line.
    pub scheme: String,
    pub audit_path: PathBuf,
    stderr: Arc<Mutex<String>>,
    // Last: removed after the process is gone.
    _dir: TempDir,
}

fn parse_url_addr(line: &str, prefix: &str) -> Option<(String, SocketAddr)> {
    let rest = line.strip_prefix(prefix)?;
    let (scheme, addr) = rest.split_once("://")?;
    Some((scheme.to_string(), addr.trim().parse().ok()?))
}

impl Gateway {
    pub fn start(setup: &Setup) -> Self {
        Gateway::start_in(setup, TempDir::new("gw"))
    }

    /// Start with the config written into `dir` (which may already hold
    /// certificates the setup refers to).
    pub fn start_in(setup: &Setup, dir: TempDir) -> Self {
        let audit_path = dir.path().join("audit.jsonl");
        let config = dir.write("sluice.toml", &setup.toml(&audit_path));
        // Run in the test's directory: whatever sluice writes lands there.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut listener = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(15);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = parse_url_addr(&line, "listening on ") {
                        listener.get_or_insert(found);
                    } else if let Some((_, a)) = parse_url_addr(&line, "admin on ") {
                        admin = Some(a);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                    panic!("sluice did not report its addresses within 15 s; stderr:\n{err}");
                }
            }
        }
        let (scheme, addr) = listener.expect("a `listening on` line before `admin on`");
        Gateway {
            child,
            addr,
            admin: admin.expect("admin address"),
            scheme,
            audit_path,
            stderr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Send SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet
        // reaped, so it cannot have been reused) and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for("sluice to exit", timeout, || {
            child.try_wait().ok().flatten()
        })
    }

    // ---- client side

    pub fn connect(&self) -> Conn<TcpStream> {
        Conn::tcp(self.addr)
    }

    /// One request on a fresh connection; the whole response.
    pub fn call(&self, req: &[u8]) -> Response {
        let mut c = self.connect();
        c.send(req);
        c.read_response()
    }

    pub fn chat(&self, key: &str, headers: &[(&str, &str)], body: &str) -> Response {
        self.call(&chat_request(Some(key), headers, body))
    }

    // ---- admin side

    pub fn metrics(&self) -> String {
        let mut c = Conn::tcp(self.admin);
        c.send(&request("GET", "/metrics", &[("connection", "close")], b""));
        let r = c.read_response();
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }

    /// Poll `/metrics` until `name{labels}` equals `want`.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics();
            let have = metric_value(&text, name, labels).unwrap_or(0.0);
            if have == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?}: want {want}, have {have}\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ---- audit log

    /// Every complete audit line written so far.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// The audit record of `request_id`, waiting for its flush.
    pub fn audit_record(&self, request_id: &str) -> Value {
        wait_for(
            &format!("the audit record of {request_id}"),
            Duration::from_secs(5),
            || {
                self.audit()
                    .into_iter()
                    .find(|r| r["request_id"] == request_id)
            },
        )
    }

    /// Wait until at least `n` records are in, then a few more flush
    /// intervals, and return them all.
    pub fn audit_settled(&self, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} audit records"),
            Duration::from_secs(5),
            || (self.audit().len() >= n).then_some(()),
        );
        std::thread::sleep(Duration::from_millis(300));
        self.audit()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- sluice stderr ----\n{}", self.stderr());
        }
    }
}

/// `name{labels}` in Prometheus text; labels must match exactly (all of them).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: Vec<(&str, &str)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let same = have.len() == labels.len() && labels.iter().all(|l| have.contains(l));
        if same {
            return value.parse().ok();
        }
    }
    None
}

// ------------------------------------------------------------------ requests

/// Raw request bytes with `host` and (for a body) `content-length`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: sluice.test\r\n");
    for (n, v) in headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    if !body.is_empty() || method == "POST" {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `POST /v1/chat/completions` with a JSON body and an optional Bearer key.
pub fn chat_request(key: Option<&str>, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        all.push(("authorization", a));
    }
    all.extend_from_slice(headers);
    request("POST", "/v1/chat/completions", &all, body.as_bytes())
}

/// A chat body for `model` with a two-message prompt.
pub fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name a few words from the NATO alphabet."}
        ],
        "stream": stream,
    })
    .to_string()
}

// -------------------------------------------------------------------- client

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

/// A blocking HTTP/1.1 client connection that keeps unread bytes buffered,
/// so pipelined responses and streamed chunks are read one at a time.
pub struct Conn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Conn<TcpStream> {
    pub fn tcp(addr: SocketAddr) -> Self {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        s.set_nodelay(true).expect("nodelay");
        Conn::new(s)
    }
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to sluice");
        self.stream.flush().expect("flush");
    }

    /// Read more bytes into the buffer; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn fill_or_panic(&mut self, what: &str) {
        match self.fill() {
            Ok(0) => panic!("connection closed while reading {what}"),
            Ok(_) => {}
            Err(e) => panic!("reading {what}: {e}"),
        }
    }

    /// Whether the peer closed the connection (EOF, or reset) with nothing
    /// more to read, within the read timeout.
    pub fn closed_by_peer(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }

    /// Read one response head (1xx included).
    pub fn read_head(&mut self) -> Head {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Head {
                        status: res.code.unwrap_or(0),
                        headers: res
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                    };
                    self.buf.drain(..len);
                    return head;
                }
                Ok(httparse::Status::Partial) => self.fill_or_panic("a response head"),
                Err(e) => panic!(
                    "bad response head ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The next chunk of a chunked body; `None` after the last chunk.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size_text = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    // Last chunk: no trailers expected, just the final CRLF.
                    while self.buf.len() < line_end + 4 {
                        self.fill_or_panic("the end of a chunked body");
                    }
                    assert_eq!(&self.buf[line_end..line_end + 4], b"\r\n\r\n");
                    self.buf.drain(..line_end + 4);
                    return None;
                }
                let total = line_end + 2 + size + 2;
                while self.buf.len() < total {
                    self.fill_or_panic("a chunk");
                }
                assert_eq!(
                    &self.buf[total - 2..total],
                    b"\r\n",
                    "chunk not CRLF-terminated"
                );
                let data = self.buf[line_end + 2..total - 2].to_vec();
                self.buf.drain(..total);
                return Some(data);
            }
            self.fill_or_panic("a chunk size line");
        }
    }

    /// The body that follows `head`.
    pub fn read_body(&mut self, head: &Head) -> Vec<u8> {
        if head.chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.next_chunk() {
                body.extend_from_slice(&chunk);
            }
            return body;
        }
        if let Some(len) = head.header("content-length") {
            let len: usize = len.trim().parse().expect("numeric content-length");
            while self.buf.len() < len {
                self.fill_or_panic("a response body");
            }
            return self.buf.drain(..len).collect();
        }
        // Until close.
        loop {
            match self.fill() {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(_) => {}
                Err(e) => panic!("reading a body until close: {e}"),
            }
        }
    }

    /// One final response, or `None` when the peer closed the connection
    /// before sending a byte of it.
    pub fn read_response_or_close(&mut self) -> Option<Response> {
        if self.buf.is_empty() {
            match self.fill() {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a response: {e}"),
            }
        }
        Some(self.read_response())
    }

    /// One final response (interim 1xx heads are an error here).
    pub fn read_response(&mut self) -> Response {
        let head = self.read_head();
        assert!(
            head.status >= 200,
            "unexpected interim response {}",
            head.status
        );
        let body = self.read_body(&head);
        Response {
            status: head.status,
            head,
            body,
        }
    }

    /// Read a streamed (SSE) response head; events come from `next_event`.
    pub fn read_stream_head(&mut self) -> Head {
        let head = self.read_head();
        assert_eq!(head.status, 200, "stream head: {head:?}");
        assert!(
            head.header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream")),
            "not an event stream: {head:?}"
        );
        assert!(head.chunked(), "stream is not chunked: {head:?}");
        head
    }
}

/// Splits a streamed body into SSE events as they arrive.
pub struct Events<S> {
    pub conn: Conn<S>,
    pending: Vec<u8>,
    ended: bool,
}

/// One SSE event: its `data` lines joined.
#[derive(Debug, Clone)]
pub struct Event {
    pub data: String,
    pub at: Instant,
}

impl Event {
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event is not JSON ({e}): {}", self.data))
    }

    /// The delta content of a chat chunk, if any.
    pub fn content(&self) -> Option<String> {
        if self.is_done() {
            return None;
        }
        self.json()["choices"][0]["delta"]["content"]
            .as_str()
            .map(str::to_string)
    }

    /// A usage-only chunk (`choices: []` with a `usage` object).
    pub fn is_usage_chunk(&self) -> bool {
        if self.is_done() {
            return false;
        }
        let v = self.json();
        v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object()
    }
}

impl<S: Read + Write> Events<S> {
    pub fn new(conn: Conn<S>) -> Self {
        Events {
            conn,
            pending: Vec::new(),
            ended: false,
        }
    }

    /// The next event; `None` once the body ended.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(Event {
                    data: data.join("\n"),
                    at: Instant::now(),
                });
            }
            if self.ended {
                assert!(
                    self.pending.iter().all(u8::is_ascii_whitespace),
                    "stream ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return None;
            }
            match self.conn.next_chunk() {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => self.ended = true,
            }
        }
    }

    /// Every remaining event.
    pub fn rest(&mut self) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(e) = self.next_event() {
            all.push(e);
        }
        all
    }
}

/// Open a streamed chat on a fresh connection and read its head.
pub fn open_stream(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Events<TcpStream> {
    let mut c = gw.connect();
    c.send(&chat_request(Some(ALICE), headers, body));
    c.read_stream_head();
    Events::new(c)
}

/// The concatenated delta contents of `events`.
pub fn contents(events: &[Event]) -> String {
    events.iter().filter_map(Event::content).collect()
}

// ---------------------------------------------------------------------- TLS

pub fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate signed by a [`TestCa`].
pub struct Leaf {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { cert, key }
    }

    /// A server leaf for `localhost` and 127.0.0.1 (not a CA).
    pub fn leaf(&self) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        Leaf { cert, key }
    }

    /// A client config that trusts only this CA, offering ALPN http/1.1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("add CA root");
        let mut config = rustls::ClientConfig::builder_with_provider(crypto())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Leaf {
    /// Write `leaf.pem` and `leaf.key` into `dir`.
    pub fn write(&self, dir: &TempDir) -> (PathBuf, PathBuf) {
        (
            dir.write("leaf.pem", &self.cert.pem()),
            dir.write("leaf.key", &self.key.serialize_pem()),
        )
    }

    /// A rustls server config presenting this leaf.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(crypto())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.der().clone()], key)
            .expect("server cert");
        Arc::new(config)
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect with TLS to `addr` as `localhost` and complete the handshake.
pub fn tls_handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Conn<TlsStream>> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(READ_TIMEOUT))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Conn::new(stream))
}

// ------------------------------------------------------- quota and admin API

/// The admin token `Setup::with_admin_token` configures.
pub const ADMIN_TOKEN: &str = "admin-e2e-token";

impl Setup {
    /// Add `lines` to the table `table` (see [`Setup::extra`]).
    pub fn extra(&mut self, table: &str, lines: &str) -> &mut Self {
        self.extra.push((table.to_string(), lines.to_string()));
        self
    }

    /// Turn the admin API on with [`ADMIN_TOKEN`].
    pub fn with_admin_token(&mut self) -> &mut Self {
        self.extra("admin", &format!("token = \"{ADMIN_TOKEN}\""))
    }

    /// The extra lines of `table`, each ending in a newline.
    fn extra_for(&self, table: &str) -> String {
        let mut out = String::new();
        for (t, lines) in &self.extra {
            if t == table {
                out.push_str(lines.trim_end_matches('\n'));
                out.push('\n');
            }
        }
        out
    }
}

impl Gateway {
    /// Send SIGKILL and reap the process.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The directory holding the config, audit log and quota store, to
    /// start the next process in (`Gateway::start_in`) once this one has
    /// exited. This gateway keeps a fresh empty directory in its place.
    pub fn take_dir(&mut self) -> TempDir {
        assert!(
            self.child.try_wait().ok().flatten().is_some(),
            "take_dir while sluice still runs"
        );
        std::mem::replace(&mut self._dir, TempDir::new("gw-taken"))
    }

    /// One admin API request on a fresh connection, with `token` (if any)
    /// as the bearer token and `body` (if any) as JSON.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("connection", "close")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let mut c = Conn::tcp(self.admin);
        c.send(&request(
            method,
            path,
            &headers,
            body.unwrap_or("").as_bytes(),
        ));
        c.read_response()
    }

    /// `GET /admin/consumers/{name}` with the right token; must be 200.
    pub fn admin_consumer(&self, name: &str) -> Value {
        let r = self.admin_request(
            "GET",
            &format!("/admin/consumers/{name}"),
            Some(ADMIN_TOKEN),
            None,
        );
        assert_eq!(r.status, 200, "GET /admin/consumers/{name}: {}", r.text());
        r.json()
    }

    /// `POST /admin/consumers/{name}/{action}` with the right token.
    pub fn admin_post(&self, name: &str, action: &str, body: &str) -> Response {
        self.admin_request(
            "POST",
            &format!("/admin/consumers/{name}/{action}"),
            Some(ADMIN_TOKEN),
            Some(body),
        )
    }
}
pub mod failover;
pub mod netns;
pub mod redis;
pub mod routing;
