//! The mock upstream over real sockets, driven by a plain blocking client.
//!
//! Each test spawns its own mock on an ephemeral port and talks HTTP/1.1 to
//! it with `std::net::TcpStream` (or rustls over it), reading responses
//! chunk by chunk so the SSE framing, the event sequence, the usage numbers
//! and the scripted faults are checked on the wire exactly as sluice will
//! see them. Counters are polled with a deadline because the mock updates
//! them after its last write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sluice_bench::mock::{
    self, chat_content, count_tokens, prompt_tokens_chat, spawn, MockConfig, MockHandle, WORDS,
};

fn start() -> MockHandle {
    spawn(MockConfig::default()).unwrap()
}

/// A response as read off the wire.
#[derive(Debug, Default)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body (Content-Length) or the concatenated chunk data.
    body: Vec<u8>,
    /// Each HTTP chunk's data, in order (chunked responses only).
    chunks: Vec<Vec<u8>>,
    /// Whether the body ended properly (length reached / last-chunk seen).
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The SSE events: each chunk must be exactly one `data: …\n\n` event.
    fn events(&self) -> Vec<String> {
        self.chunks
            .iter()
            .map(|c| {
                let text = std::str::from_utf8(c).unwrap();
                let data = text
                    .strip_prefix("data: ")
                    .expect("event starts with data: ");
                let data = data
                    .strip_suffix("\n\n")
                    .expect("event ends with a blank line");
                assert!(!data.contains('\n'), "one event per chunk: {text:?}");
                data.to_owned()
            })
            .collect()
    }

    /// The JSON events before `[DONE]`, checking `[DONE]` is last.
    fn json_events(&self) -> Vec<Value> {
        let mut events = self.events();
        assert_eq!(events.pop().as_deref(), Some("[DONE]"));
        events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

struct Client<S> {
    io: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    fn connect(addr: SocketAddr) -> Self {
        let io = TcpStream::connect(addr).unwrap();
        io.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            io,
            buf: Vec::new(),
        }
    }
}

impl<S: Read + Write> Client<S> {
    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: mock\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.io.write_all(req.as_bytes()).unwrap();
    }

    fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
        self.request("POST", path, headers, &body.to_string());
        self.response()
    }

    /// Reads more bytes; false at end of stream or on a read error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.io.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Takes a CRLF-terminated line, or None at end of stream.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn head(&mut self) -> Response {
        let status_line = self.line().expect("a status line");
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"));
        let status = parts.next().unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.line().expect("a header line");
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_owned(), v.trim().to_owned()));
        }
        Response {
            status,
            headers,
            ..Response::default()
        }
    }

    /// Reads up to `max_chunks` chunks of a chunked body.
    fn chunks(&mut self, resp: &mut Response, max_chunks: usize) {
        for _ in 0..max_chunks {
            let Some(line) = self.line() else { return };
            let size = usize::from_str_radix(&line, 16).unwrap();
            if size == 0 {
                assert_eq!(self.line().as_deref(), Some(""));
                resp.complete = true;
                return;
            }
            let Some(data) = self.take(size + 2) else {
                return;
            };
            assert_eq!(&data[size..], b"\r\n");
            resp.body.extend_from_slice(&data[..size]);
            resp.chunks.push(data[..size].to_vec());
        }
    }

    fn response(&mut self) -> Response {
        let mut resp = self.head();
        if resp.header("transfer-encoding") == Some("chunked") {
            self.chunks(&mut resp, usize::MAX);
        } else {
            let n = resp
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap());
            if let Some(body) = self.take(n) {
                resp.body = body;
                resp.complete = true;
            }
        }
        resp
    }

    /// Whether the peer closed the connection (reads until EOF or timeout).
    fn at_eof(&mut self) -> bool {
        !self.fill() && self.buf.is_empty()
    }
}

/// Waits up to 2 s for a counter to reach `want`.
fn wait_for(counter: &AtomicU64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while counter.load(Ordering::SeqCst) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(counter.load(Ordering::SeqCst), want);
}

fn chat_request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "name": "ann", "content": "How many tokens is this?"}
        ]
    })
}

#[test]
fn chat_non_streaming_usage() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let req = chat_request(false);
    let resp = c.post(
        "/v1/chat/completions",
        &[("x-mock-cached-tokens", "5")],
        &req,
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    let prompt = prompt_tokens_chat("gpt-4o-mini", &req);
    // 3 per message + role + content (+1 + name) + 3 for the reply.
    let by_hand = (3
        + count_tokens("gpt-4o-mini", "system")
        + count_tokens("gpt-4o-mini", "You are a helpful assistant."))
        + (3 + count_tokens("gpt-4o-mini", "user")
            + count_tokens("gpt-4o-mini", "How many tokens is this?")
            + 1
            + count_tokens("gpt-4o-mini", "ann"))
        + 3;
    assert_eq!(prompt, by_hand);
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": prompt, "completion_tokens": 16, "total_tokens": prompt + 16,
            "prompt_tokens_details": {"cached_tokens": 5, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        })
    );
    assert_eq!(count_tokens("gpt-4o-mini", &chat_content(16)), 16);
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": chat_content(16),
            "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["service_tier"], "default");
    assert_eq!(v["system_fingerprint"], "fp_mock");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);

    // x-mock-chunks sets the length, max_completion_tokens caps it.
    let mut capped = req.clone();
    capped["max_completion_tokens"] = json!(3);
    let v = c
        .post("/v1/chat/completions", &[("x-mock-chunks", "40")], &capped)
        .json();
    assert_eq!(v["choices"][0]["message"]["content"], chat_content(3));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let v = c
        .post("/v1/chat/completions", &[("x-mock-chunks", "40")], &req)
        .json();
    assert_eq!(v["usage"]["completion_tokens"], 40);

    let s = &mock.stats;
    assert_eq!(s.requests.load(Ordering::SeqCst), 3);
    let last = s.last_request().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(last.header("x-mock-chunks"), Some("40"));
    assert_eq!(last.json(), req);
}

#[test]
fn chat_stream_event_sequence() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let resp = c.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "3")],
        &chat_request(true),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert!(resp.complete);
    let ev = resp.json_events();
    assert_eq!(ev.len(), 1 + 3 + 1);
    let id = ev[0]["id"].clone();
    assert!(id.as_str().unwrap().starts_with("chatcmpl-mock"));
    for e in &ev {
        assert_eq!(e["id"], id);
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["model"], "gpt-4o-mini");
        assert_eq!(e["service_tier"], "default");
        assert_eq!(e["system_fingerprint"], "fp_mock");
        assert_eq!(e["choices"][0]["index"], 0);
        assert_eq!(e["choices"][0]["logprobs"], Value::Null);
        assert!(
            e.get("usage").is_none(),
            "no usage without include_usage: {e}"
        );
    }
    assert_eq!(
        ev[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    let text: String = ev[1..4]
        .iter()
        .map(|e| {
            assert_eq!(e["choices"][0]["finish_reason"], Value::Null);
            e["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, chat_content(3));
    assert_eq!(ev[4]["choices"][0]["delta"], json!({}));
    assert_eq!(ev[4]["choices"][0]["finish_reason"], "stop");
    wait_for(&mock.stats.streams_completed, 1);
    assert_eq!(mock.stats.streams_started.load(Ordering::SeqCst), 1);
    assert_eq!(mock.stats.streams_aborted.load(Ordering::SeqCst), 0);
}

#[test]
fn chat_stream_with_include_usage() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let mut req = chat_request(true);
    req["stream_options"] = json!({"include_usage": true});
    req["max_tokens"] = json!(2);
    let resp = c.post(
        "/v1/chat/completions",
        &[("x-mock-cached-tokens", "1")],
        &req,
    );
    let ev = resp.json_events();
    assert_eq!(ev.len(), 1 + 2 + 1 + 1);
    for e in &ev[..4] {
        assert!(
            e.get("usage").is_some_and(Value::is_null),
            "usage: null on {e}"
        );
    }
    assert_eq!(ev[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(ev[4]["choices"], json!([]));
    let prompt = prompt_tokens_chat("gpt-4o-mini", &req);
    assert_eq!(ev[4]["usage"]["prompt_tokens"], prompt);
    assert_eq!(ev[4]["usage"]["completion_tokens"], 2);
    assert_eq!(ev[4]["usage"]["total_tokens"], prompt + 2);
    assert_eq!(ev[4]["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    assert_eq!(ev[4]["id"], ev[0]["id"]);
}

#[test]
fn omit_usage_streaming_and_not() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let omit = [("x-mock-omit-usage", "1")];
    let v = c
        .post("/v1/chat/completions", &omit, &chat_request(false))
        .json();
    assert!(v.get("usage").is_none(), "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], chat_content(16));
    let mut req = chat_request(true);
    req["stream_options"] = json!({"include_usage": true});
    let ev = c.post("/v1/chat/completions", &omit, &req).json_events();
    assert_eq!(ev.len(), 1 + 16 + 1);
    assert!(ev.iter().all(|e| !e["usage"].is_object()));
}

#[test]
fn scripted_status_with_retry_after() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let headers = [("x-mock-status", "429"), ("x-mock-retry-after", "7")];
    let resp = c.post("/v1/chat/completions", &headers, &chat_request(true));
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("7"));
    let v = resp.json();
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["param"], Value::Null);
    assert!(v["error"]["message"].is_string());

    // Same connection: errors keep it alive.
    let resp = c.post(
        "/v1/chat/completions",
        &[("x-mock-status", "503")],
        &chat_request(false),
    );
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), None);
    assert_eq!(resp.json()["error"]["type"], "server_error");
    assert_eq!(mock.stats.streams_started.load(Ordering::SeqCst), 0);
    assert_eq!(mock.stats.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn disconnect_after_cuts_the_stream() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-disconnect-after", "2")],
        &chat_request(true).to_string(),
    );
    let resp = c.response();
    assert_eq!(resp.status, 200);
    assert!(!resp.complete, "no last-chunk after a disconnect");
    let ev = resp.events();
    assert_eq!(ev.len(), 1 + 2);
    assert!(c.at_eof());
    wait_for(&mock.stats.streams_disconnected, 1);
    assert_eq!(mock.stats.streams_aborted.load(Ordering::SeqCst), 0);
    assert_eq!(mock.stats.streams_completed.load(Ordering::SeqCst), 0);

    // Non-streaming with 0: the connection closes without a response.
    let mut c = Client::connect(mock.addr);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-disconnect-after", "0")],
        &chat_request(false).to_string(),
    );
    assert!(c.at_eof());
}

#[test]
fn stall_after_keeps_the_connection_silent() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-stall-after", "1")],
        &chat_request(true).to_string(),
    );
    let mut resp = c.head();
    c.chunks(&mut resp, 2);
    assert_eq!(resp.events().len(), 2);
    c.io.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = c.io.read(&mut byte).expect_err("nothing after the stall");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    assert_eq!(mock.stats.streams_aborted.load(Ordering::SeqCst), 0);
    drop(c);
    wait_for(&mock.stats.streams_aborted, 1);
    assert_eq!(mock.stats.streams_completed.load(Ordering::SeqCst), 0);

    // Non-streaming with 0: no head at all.
    let mut c = Client::connect(mock.addr);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-stall-after", "0")],
        &chat_request(false).to_string(),
    );
    c.io.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(c.io.read(&mut byte).is_err());
}

#[test]
fn client_close_mid_stream_counts_as_aborted() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let headers = [("x-mock-chunks", "1000"), ("x-mock-gap-ms", "50")];
    c.request(
        "POST",
        "/v1/chat/completions",
        &headers,
        &chat_request(true).to_string(),
    );
    let mut resp = c.head();
    c.chunks(&mut resp, 3);
    assert_eq!(resp.events().len(), 3);
    let closed = Instant::now();
    drop(c);
    wait_for(&mock.stats.streams_aborted, 1);
    // Noticed while sleeping in a gap, not at the next write.
    assert!(closed.elapsed() < Duration::from_secs(1));
    assert_eq!(mock.stats.streams_started.load(Ordering::SeqCst), 1);
    assert_eq!(mock.stats.streams_completed.load(Ordering::SeqCst), 0);

    // Also while waiting for the first byte.
    let mut c = Client::connect(mock.addr);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-ttfb-ms", "10000")],
        &chat_request(true).to_string(),
    );
    wait_for(&mock.stats.streams_started, 2);
    drop(c);
    wait_for(&mock.stats.streams_aborted, 2);
}

#[test]
fn ttfb_and_gap_delay_the_stream() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let started = Instant::now();
    let headers = [
        ("x-mock-ttfb-ms", "100"),
        ("x-mock-gap-ms", "30"),
        ("x-mock-chunks", "3"),
    ];
    c.request(
        "POST",
        "/v1/chat/completions",
        &headers,
        &chat_request(true).to_string(),
    );
    let mut resp = c.head();
    assert!(started.elapsed() >= Duration::from_millis(100));
    c.chunks(&mut resp, usize::MAX);
    assert!(resp.complete);
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert_eq!(resp.json_events().len(), 5);
}

#[test]
fn chunked_request_body() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let body = chat_request(false).to_string();
    let (a, b) = body.split_at(10);
    let wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\nx-trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    // Sent in small pieces to exercise the decoder across reads.
    for piece in wire.as_bytes().chunks(7) {
        c.io.write_all(piece).unwrap();
        c.io.flush().unwrap();
    }
    let resp = c.response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["usage"]["completion_tokens"], 16);
    assert_eq!(mock.stats.last_request().unwrap().body, body.as_bytes());
    // The connection is still usable.
    let resp = c.post("/v1/chat/completions", &[], &chat_request(false));
    assert_eq!(resp.status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let r1 = c.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "1")],
        &chat_request(true),
    );
    let r2 = c.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "2")],
        &chat_request(false),
    );
    assert!(r1.complete && r2.complete);
    assert_eq!(r2.json()["usage"]["completion_tokens"], 2);
    // Two requests in one write, answered in order.
    let one = format!(
        "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
        json!({"model": "gpt-4o", "prompt": "hi"}).to_string().len(),
        json!({"model": "gpt-4o", "prompt": "hi"})
    );
    c.io.write_all(format!("{one}{one}").as_bytes()).unwrap();
    let (a, b) = (c.response(), c.response());
    assert_eq!((a.status, b.status), (200, 200));
    assert_ne!(a.json()["id"], b.json()["id"]);
    assert_eq!(mock.stats.connections.load(Ordering::SeqCst), 1);
    assert_eq!(mock.stats.requests.load(Ordering::SeqCst), 4);

    // Connection: close is honoured.
    c.request("GET", "/v1/models", &[("Connection", "close")], "");
    let resp = c.response();
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.at_eof());
}

#[test]
fn completions_streaming_and_not() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let req =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["one two", "three"], "max_tokens": 4});
    let v = c.post("/v1/completions", &[], &req).json();
    let prompt = count_tokens("gpt-3.5-turbo", "one two") + count_tokens("gpt-3.5-turbo", "three");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], chat_content(4));
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let mut req = req;
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let ev = c.post("/v1/completions", &[], &req).json_events();
    assert_eq!(ev.len(), 4 + 1 + 1);
    let text: String = ev[..4]
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, chat_content(4));
    assert_eq!(ev[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(ev[5]["usage"]["total_tokens"], prompt + 4);
}

#[test]
fn embeddings_float_and_base64() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let model = "text-embedding-3-small";
    let req = json!({"model": model, "input": ["the quick fox", "a lazy dog"]});
    let v = c.post("/v1/embeddings", &[], &req).json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], model);
    let p = count_tokens(model, "the quick fox") + count_tokens(model, "a lazy dog");
    assert_eq!(v["usage"], json!({"prompt_tokens": p, "total_tokens": p}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let floats: Vec<f32> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), 8);
    assert_eq!(
        (data[1]["index"].clone(), data[1]["object"].clone()),
        (json!(1), json!("embedding"))
    );

    // The same input again, as base64 little-endian f32.
    let req = json!({"model": model, "input": "the quick fox", "encoding_format": "base64"});
    let v = c.post("/v1/embeddings", &[], &req).json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, floats);

    let req = json!({"model": model, "input": "x", "dimensions": 32});
    let v = c.post("/v1/embeddings", &[], &req).json();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 32);
    let req = json!({"model": model, "input": "x", "encoding_format": "hex"});
    assert_eq!(c.post("/v1/embeddings", &[], &req).status, 400);
}

#[test]
fn models_stats_and_errors() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    c.request("GET", "/v1/models", &[], "");
    let v = c.response().json();
    assert_eq!(v["object"], "list");
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m
            == &json!({"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "mock"})));

    c.request("POST", "/v1/chat/completions", &[], "{not json");
    let resp = c.response();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
    assert_eq!(resp.json()["error"]["code"], Value::Null);
    c.request("POST", "/v2/chat/completions", &[], "{}");
    assert_eq!(c.response().status, 404);

    c.request("GET", "/mock/stats", &[], "");
    let stats = c.response().json();
    assert_eq!(stats["requests"], 3);
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["last_request"]["path"], "/v2/chat/completions");
    assert_eq!(stats["last_request"]["body"], "{}");
    assert_eq!(stats, mock.stats.to_json());
}

#[test]
fn api_key_is_required_when_set() {
    let mock = spawn(MockConfig {
        api_key: Some("sk-mock".into()),
        ..MockConfig::default()
    })
    .unwrap();
    let mut c = Client::connect(mock.addr);
    let resp = c.post("/v1/chat/completions", &[], &chat_request(false));
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["error"]["code"], "invalid_api_key");
    let resp = c.post(
        "/v1/chat/completions",
        &[("Authorization", "Bearer nope")],
        &chat_request(false),
    );
    assert_eq!(resp.status, 401);
    let resp = c.post(
        "/v1/chat/completions",
        &[("Authorization", "Bearer sk-mock")],
        &chat_request(false),
    );
    assert_eq!(resp.status, 200);
}

#[test]
fn workers_share_one_port() {
    let mock = spawn(MockConfig {
        workers: 2,
        ..MockConfig::default()
    })
    .unwrap();
    assert_ne!(mock.addr.port(), 0);
    let clients: Vec<_> = (0..8).map(|_| Client::connect(mock.addr)).collect();
    for mut c in clients {
        assert_eq!(
            c.post("/v1/chat/completions", &[], &chat_request(false))
                .status,
            200
        );
    }
    assert_eq!(mock.stats.connections.load(Ordering::SeqCst), 8);
}

#[test]
fn every_word_is_one_token_in_both_encodings() {
    for model in ["gpt-4o", "gpt-4"] {
        for w in WORDS {
            assert_eq!(count_tokens(model, w), 1, "{w:?} with {model}");
        }
    }
}

/// A CA and a leaf for localhost signed by it; returns (chain PEM, key PEM,
/// CA DER).
fn test_pki() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    (leaf.pem(), leaf_key.serialize_pem(), ca.der().clone())
}

#[test]
fn tls_stream_and_abort() {
    let (chain, key, ca) = test_pki();
    let tls = mock::server_tls_config(chain.as_bytes(), key.as_bytes()).unwrap();
    let mock = spawn(MockConfig {
        tls: Some(tls),
        ..MockConfig::default()
    })
    .unwrap();

    let connect = || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(mock.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            io: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        }
    };

    let mut c = connect();
    let mut req = chat_request(true);
    req["stream_options"] = json!({"include_usage": true});
    let ev = c
        .post("/v1/chat/completions", &[("x-mock-chunks", "4")], &req)
        .json_events();
    assert_eq!(ev.len(), 1 + 4 + 1 + 1);
    assert_eq!(ev[6]["usage"]["completion_tokens"], 4);
    wait_for(&mock.stats.streams_completed, 1);

    let mut c = connect();
    let headers = [("x-mock-chunks", "1000"), ("x-mock-gap-ms", "50")];
    c.request("POST", "/v1/chat/completions", &headers, &req.to_string());
    let mut resp = c.head();
    c.chunks(&mut resp, 2);
    assert_eq!(resp.events().len(), 2);
    drop(c);
    wait_for(&mock.stats.streams_aborted, 1);
}

#[test]
fn epoll_fallback_streams_and_notices_aborts() {
    let behaviour = mock::Behaviour {
        force_epoll: true,
        ..mock::Behaviour::default()
    };
    let mock = mock::spawn_with(MockConfig::default(), behaviour).unwrap();
    let mut c = Client::connect(mock.addr);
    let resp = c.post(
        "/v1/chat/completions",
        &[("x-mock-chunks", "3"), ("x-mock-gap-ms", "5")],
        &chat_request(true),
    );
    assert_eq!(resp.json_events().len(), 5);
    wait_for(&mock.stats.streams_completed, 1);

    // Closed during a gap.
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-gap-ms", "50"), ("x-mock-chunks", "1000")],
        &chat_request(true).to_string(),
    );
    let mut resp = c.head();
    c.chunks(&mut resp, 2);
    drop(c);
    wait_for(&mock.stats.streams_aborted, 1);

    // Closed during a stall.
    let mut c = Client::connect(mock.addr);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-stall-after", "0")],
        &chat_request(true).to_string(),
    );
    let mut resp = c.head();
    c.chunks(&mut resp, 1);
    drop(c);
    wait_for(&mock.stats.streams_aborted, 2);
    assert_eq!(mock.stats.streams_started.load(Ordering::SeqCst), 3);
}

#[test]
fn binary_announces_its_port_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-mock"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--chunks",
            "2",
            "--api-key",
            "k",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    let mut c = Client::connect(addr);
    let v = c
        .post(
            "/v1/chat/completions",
            &[("Authorization", "Bearer k")],
            &chat_request(false),
        )
        .json();
    assert_eq!(v["usage"]["completion_tokens"], 2);
    // SAFETY: plain kill(2) on the child we started and still own.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    line.clear();
    assert_eq!(
        stdout.read_line(&mut line).unwrap(),
        0,
        "one line only: {line:?}"
    );
}
