//! A real `redis-server` for cluster-mode tests, and a raw RESP2 client.
//!
//! [`RedisServer::start`] runs Debian's `redis-server` on a free loopback
//! port with no persistence (`--save '' --appendonly no`) in a temp dir,
//! waits until it answers `PING`, and stops it on drop (`SHUTDOWN NOSAVE`,
//! else SIGKILL). `stop` and `restart` take it down and bring it back on
//! the same port, empty, for outage tests.
//!
//! When `redis-server` is not installed, `start` returns `None` after a
//! skip message — unless `CI=true`, where it panics: CI installs Redis
//! (`.ci/run`), so a missing binary there is a broken setup, not a skip.
//!
//! [`RespClient`] writes commands as RESP arrays of bulk strings and parses
//! the replies itself, so what the tests read from Redis does not depend on
//! the redis crate sluice uses.

#![allow(dead_code)] // each test file uses a different part

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// The binary, found on `PATH`.
const BINARY: &str = "redis-server";

/// A `redis-server` child process on `127.0.0.1:port`.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    // Last: removed after the process is gone.
    dir: TempDir,
}

/// Whether the tests run in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A port that was free a moment ago (the OS picks it; the listener is
/// closed again so redis-server can bind it).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Start a fresh server; `None` (after a skip message naming `test`)
    /// when redis-server is not installed outside CI.
    pub fn start(test: &str) -> Option<RedisServer> {
        let mut dir = TempDir::new("redis");
        // A port picked by binding :0 can be taken by someone else before
        // redis-server binds it; try a few.
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = free_port();
            match spawn(port, &dir) {
                Ok(child) => {
                    let mut server = RedisServer {
                        child: Some(child),
                        port,
                        dir,
                    };
                    match server.wait_ready(Duration::from_secs(10)) {
                        Ok(()) => return Some(server),
                        Err(e) => {
                            last_err = e;
                            server.kill();
                            dir = std::mem::replace(&mut server.dir, TempDir::new("redis-x"));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let msg = format!(
                        "{test}: `{BINARY}` is not installed (Debian package redis-server); \
                         cluster-mode tests need a real Redis"
                    );
                    assert!(
                        !in_ci(),
                        "{msg} — CI=true, so this is a failure, not a skip"
                    );
                    eprintln!("SKIPPED {msg}");
                    return None;
                }
                Err(e) => panic!("spawn {BINARY}: {e}"),
            }
        }
        panic!("redis-server did not come up on a free port after 3 tries: {last_err}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A new client connection.
    pub fn client(&self) -> RespClient {
        RespClient::connect(self.addr()).expect("connect to redis-server")
    }

    /// Run one command on a fresh connection.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        self.client().cmd(args).expect("redis command")
    }

    /// `GET key` as an integer; `None` when the key does not exist.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        match self.cmd(&["GET", key]) {
            Reply::Bulk(None) => None,
            Reply::Bulk(Some(b)) => Some(
                String::from_utf8_lossy(&b)
                    .parse()
                    .unwrap_or_else(|e| panic!("GET {key}: not an integer ({e}): {b:?}")),
            ),
            other => panic!("GET {key}: unexpected reply {other:?}"),
        }
    }

    /// Redis's clock (`TIME`) in microseconds.
    pub fn time_us(&self) -> i64 {
        match self.cmd(&["TIME"]) {
            Reply::Array(Some(parts)) if parts.len() == 2 => {
                let n = |r: &Reply| -> i64 {
                    match r {
                        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).parse().unwrap(),
                        other => panic!("TIME: {other:?}"),
                    }
                };
                n(&parts[0]) * 1_000_000 + n(&parts[1])
            }
            other => panic!("TIME: unexpected reply {other:?}"),
        }
    }

    /// Every key matching `pattern` (`KEYS`; test data is tiny).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.cmd(&["KEYS", pattern]) {
            Reply::Array(Some(items)) => {
                let mut keys: Vec<String> = items
                    .iter()
                    .map(|r| match r {
                        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                        other => panic!("KEYS: {other:?}"),
                    })
                    .collect();
                keys.sort();
                keys
            }
            other => panic!("KEYS: unexpected reply {other:?}"),
        }
    }

    /// Client connections open now, other than the one asking.
    pub fn clients(&self) -> usize {
        match self.cmd(&["CLIENT", "LIST"]) {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
                .saturating_sub(1),
            other => panic!("CLIENT LIST: unexpected reply {other:?}"),
        }
    }

    /// Stop the server (SHUTDOWN NOSAVE; SIGKILL if it lingers); the port
    /// then refuses connections.
    pub fn stop(&mut self) {
        self.shutdown();
        assert!(
            TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err(),
            "port {} still accepts connections after redis-server stopped",
            self.port
        );
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut c) = RespClient::connect(self.addr()) {
            // The server closes the connection instead of answering.
            let _ = c.cmd(&["SHUTDOWN", "NOSAVE"]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }

    /// Start a new, empty server on the same port (after `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart while redis-server runs");
        // The port was just released; retry briefly if it is not yet free.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let child = spawn(self.port, &self.dir).expect("respawn redis-server");
            self.child = Some(child);
            match self.wait_ready(Duration::from_secs(5)) {
                Ok(()) => return,
                Err(e) => {
                    self.kill();
                    assert!(
                        Instant::now() < deadline,
                        "redis-server did not come back on port {}: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Poll PING until PONG, or fail with the server's log.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("redis-server exited ({status}): {}", self.log()));
                }
            }
            if let Ok(mut c) = RespClient::connect(self.addr()) {
                if let Ok(Reply::Simple(s)) = c.cmd(&["PING"]) {
                    if s == "PONG" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {timeout:?}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(port: u16, dir: &TempDir) -> io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("redis.log"))?;
    Command::new(BINARY)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- redis-server log ----\n{}", self.log());
        }
        self.shutdown();
    }
}

// ------------------------------------------------------------- RESP client

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A blocking RESP2 client over one TCP connection.
pub struct RespClient {
    reader: BufReader<TcpStream>,
}

impl RespClient {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok(RespClient {
            reader: BufReader::new(s),
        })
    }

    /// Send one command (an array of bulk strings) and read its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read_reply()
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        line.strip_suffix("\r\n")
            .map(str::to_string)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad line {line:?}")))
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let num = |s: &str| {
            s.parse::<i64>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad number {s:?}: {e}"))
            })
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(num(rest)?),
            "$" => {
                let len = num(rest)?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(len as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n = num(rest)?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read_reply()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a RESP2 reply: {line:?}"),
                ))
            }
        })
    }
}
