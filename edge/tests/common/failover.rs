//! Helpers for the fallback-chain and key-pool tests (`tests/failover.rs`):
//! mocks that fail every request by default (so only the target they stand
//! behind fails, whatever the client scripts), an address nobody listens
//! on, and a gateway whose provider has a key pool instead of the single
//! `api_key` that `Setup` writes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_bench::mock::{self, Behaviour, MockConfig, MockHandle, Script};

use super::{parse_url_addr, Gateway, Setup, TempDir, MOCK_KEY};

/// A mock whose every answer follows `script` unless the request's
/// `x-mock-*` headers say otherwise; requires `Bearer <api_key>` when set.
pub fn mock_scripted(api_key: Option<&str>, script: Script) -> MockHandle {
    mock::spawn_with(
        MockConfig {
            api_key: api_key.map(str::to_string),
            ..MockConfig::default()
        },
        Behaviour {
            script,
            ..Behaviour::default()
        },
    )
    .expect("start a scripted mock upstream")
}

/// A mock that answers every request with `status` (an OpenAI error body).
pub fn mock_failing(status: u16) -> MockHandle {
    mock_scripted(
        Some(MOCK_KEY),
        Script {
            status: Some(status),
            ..Script::default()
        },
    )
}

/// A mock that waits `ms` before every response head.
pub fn mock_slow(ms: u64) -> MockHandle {
    mock_scripted(
        Some(MOCK_KEY),
        Script {
            ttfb_ms: ms,
            ..Script::default()
        },
    )
}

/// A `base_url` on a loopback port that was just free: connecting to it is
/// refused.
pub fn closed_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("its address");
    drop(listener);
    format!("http://{addr}/v1")
}

/// `setup`'s config with provider `provider`'s single `api_key` replaced
/// by the pool `keys` (`(id, key)` pairs).
pub fn with_key_pool(toml: &str, provider: &str, keys: &[(&str, &str)]) -> String {
    let table = format!("name = \"{provider}\"\n");
    let at = toml
        .find(&table)
        .unwrap_or_else(|| panic!("no provider {provider} in\n{toml}"));
    let single = format!("api_key = \"{MOCK_KEY}\"\n");
    let key_at = at
        + toml[at..]
            .find(&single)
            .expect("the provider's api_key line");
    let pool: Vec<String> = keys
        .iter()
        .map(|(id, key)| format!("{{ id = \"{id}\", key = \"{key}\" }}"))
        .collect();
    format!(
        "{}api_keys = [{}]\n{}",
        &toml[..key_at],
        pool.join(", "),
        &toml[key_at + single.len()..]
    )
}

impl Gateway {
    /// Like `Gateway::start`, with provider `provider` given the key pool
    /// `keys` (ids and values) in place of `MOCK_KEY`.
    pub fn start_with_key_pool(setup: &Setup, provider: &str, keys: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("gw-pool");
        let audit_path = dir.path().join("audit.jsonl");
        let toml = with_key_pool(&setup.toml(&audit_path), provider, keys);
        let config = dir.write("sluice.toml", &toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&config)
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
        let (mut listener, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(15);
        while admin.is_none() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
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
                    panic!("sluice did not start within 15 s; config:\n{toml}\nstderr:\n{err}");
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
}
