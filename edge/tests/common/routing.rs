//! Helpers for the routing, split, endpoint-health and degradation tests
//! (`tests/routing.rs`): TOML for the tables `Setup` does not write
//! (providers with `base_urls`, `health` and key pools, split models,
//! many consumers), mocks that take any key or listen on a chosen port,
//! keep-alive request batches, and readers of the per-endpoint circuit
//! metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_bench::mock::{self, Behaviour, MockConfig, MockHandle, Script};

use super::{chat_request, metric_value, wait_for, Conn, Gateway, Response};

/// `http://<addr>/v1`, as a provider's base URL and the endpoint label of
/// the circuit metrics.
pub fn base_url(m: &MockHandle) -> String {
    format!("http://{}/v1", m.addr)
}

/// The address of a `http://host:port/v1` base URL.
pub fn url_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches("/v1")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: not http://ip:port/v1 ({e})"))
}

/// A mock that accepts any API key (or none) and follows `script`.
pub fn mock_any_key(script: Script) -> MockHandle {
    mock_any_key_at(SocketAddr::from(([127, 0, 0, 1], 0)), script)
}

/// Like [`mock_any_key`], listening on `addr` (e.g. a port that refused
/// connections so far, to bring a dead endpoint back).
pub fn mock_any_key_at(addr: SocketAddr, script: Script) -> MockHandle {
    mock::spawn_with(
        MockConfig {
            addr,
            ..MockConfig::default()
        },
        Behaviour {
            script,
            ..Behaviour::default()
        },
    )
    .unwrap_or_else(|e| panic!("start a mock on {addr}: {e}"))
}

/// One `[[providers]]` table with several endpoints, plus `more` lines
/// (`health = {...}`, `api_keys = [...]`, `max_concurrency = 1`).
pub fn provider_toml(name: &str, base_urls: &[&str], more: &str) -> String {
    let urls: Vec<String> = base_urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_urls = [{}]\n\
         connect_timeout_ms = 1000\nfirst_byte_timeout_ms = 10000\n{more}\n",
        urls.join(", ")
    )
}

/// `api_keys = [...]` with `n` keys `k1`..`kn` (the mocks of
/// [`mock_any_key`] take any of them).
pub fn key_pool(n: usize) -> String {
    let keys: Vec<String> = (1..=n)
        .map(|i| format!("{{ id = \"k{i}\", key = \"sk-upstream-{i}\" }}"))
        .collect();
    format!("api_keys = [{}]", keys.join(", "))
}

/// `n` `[[consumers]]` named `c00`.. with the plain keys `sk-c00`...
pub fn consumers_toml(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("[[consumers]]\nname = \"c{i:02}\"\nkeys = [{{ id = \"c{i:02}-1\", plain = \"sk-c{i:02}\" }}]\n")
        })
        .collect()
}

/// `n` chat requests, one after the other on one keep-alive connection.
pub fn chats(
    gw: &Gateway,
    key: &str,
    headers: &[(&str, &str)],
    body: &str,
    n: usize,
) -> Vec<Response> {
    let mut conn = gw.connect();
    let request = chat_request(Some(key), headers, body);
    (0..n)
        .map(|_| {
            conn.send(&request);
            conn.read_response()
        })
        .collect()
}

/// A connection with one chat request sent and its response not read.
pub fn chat_pending(
    gw: &Gateway,
    key: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Conn<std::net::TcpStream> {
    let mut conn = gw.connect();
    conn.send(&chat_request(Some(key), headers, body));
    conn
}

/// The `x-request-id` sluice answered with.
pub fn request_id(r: &Response) -> String {
    r.header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {r:?}"))
        .to_string()
}

impl Gateway {
    /// `sluice_upstream_endpoint_circuit` of one endpoint: 0 closed, 1
    /// open, 2 half-open.
    pub fn circuit(&self, provider: &str, endpoint: &str) -> f64 {
        self.endpoint_metric("sluice_upstream_endpoint_circuit", provider, endpoint)
    }

    /// `sluice_upstream_endpoint_ejections_total` of one endpoint.
    pub fn ejections(&self, provider: &str, endpoint: &str) -> f64 {
        self.endpoint_metric(
            "sluice_upstream_endpoint_ejections_total",
            provider,
            endpoint,
        )
    }

    fn endpoint_metric(&self, name: &str, provider: &str, endpoint: &str) -> f64 {
        let text = self.metrics();
        metric_value(
            &text,
            name,
            &[("provider", provider), ("endpoint", endpoint)],
        )
        .unwrap_or_else(|| panic!("no {name} for {provider} {endpoint} in\n{text}"))
    }

    /// Poll until the endpoint's circuit reads `want`, at most `timeout`;
    /// returns when it was seen.
    pub fn wait_circuit(
        &self,
        provider: &str,
        endpoint: &str,
        want: f64,
        timeout: Duration,
    ) -> Instant {
        wait_for(
            &format!("circuit of {provider} {endpoint} to read {want}"),
            timeout,
            || (self.circuit(provider, endpoint) == want).then(Instant::now),
        )
    }
}
