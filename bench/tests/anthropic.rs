//! The mock's Anthropic Messages endpoint and its tool-call answers (both
//! wire shapes), over real sockets with a plain blocking client.
//!
//! Each test spawns its own mock on an ephemeral port. Streams are read
//! chunk by chunk: every HTTP chunk must be exactly one SSE event, so the
//! event sequence, the usage numbers and the scripted faults are checked
//! as sluice sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_bench::mock::{
    chat_content, count_tokens, prompt_tokens_chat, prompt_tokens_messages, spawn, MockConfig,
    MockHandle, TOOL_ARGUMENTS, TOOL_CALL_HEADER, WORDS,
};

const KEY: &str = "sk-ant-test";
const MODEL: &str = "claude-sonnet-4-5";

fn start() -> MockHandle {
    spawn(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .unwrap()
}

#[derive(Debug, Default)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: Vec<Vec<u8>>,
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

    /// Anthropic events: each chunk exactly `event: <name>\ndata: <json>\n\n`,
    /// the name equal to the data's `type`.
    fn anthropic_events(&self) -> Vec<(String, Value)> {
        self.chunks
            .iter()
            .map(|c| {
                let text = std::str::from_utf8(c).unwrap();
                let rest = text.strip_prefix("event: ").expect("event line");
                let (name, rest) = rest.split_once('\n').unwrap();
                let data = rest.strip_prefix("data: ").expect("data line");
                let data = data.strip_suffix("\n\n").expect("blank line");
                assert!(!data.contains('\n'), "one event per chunk: {text:?}");
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["type"], name, "{text}");
                (name.to_owned(), v)
            })
            .collect()
    }

    /// OpenAI events before `[DONE]` (checked last), one per chunk.
    fn openai_events(&self) -> Vec<Value> {
        let mut events: Vec<&str> = self
            .chunks
            .iter()
            .map(|c| {
                let text = std::str::from_utf8(c).unwrap();
                text.strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .expect("data: …\\n\\n")
            })
            .collect();
        assert_eq!(events.pop(), Some("[DONE]"));
        events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect()
    }
}

struct Client {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let io = TcpStream::connect(addr).unwrap();
        io.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            io,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: mock\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.io.write_all(req.as_bytes()).unwrap();
    }

    /// POST to /v1/messages with the key and version headers plus `extra`.
    fn messages(&mut self, extra: &[(&str, &str)], body: &Value) -> Response {
        let mut headers = vec![("x-api-key", KEY), ("anthropic-version", "2023-06-01")];
        headers.extend_from_slice(extra);
        self.send("POST", "/v1/messages", &headers, &body.to_string());
        self.response()
    }

    fn chat(&mut self, extra: &[(&str, &str)], body: &Value) -> Response {
        let auth = format!("Bearer {KEY}");
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.send("POST", "/v1/chat/completions", &headers, &body.to_string());
        self.response()
    }

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

    fn response(&mut self) -> Response {
        let status_line = self.line().expect("a status line");
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut resp = Response {
            status,
            ..Response::default()
        };
        loop {
            let line = self.line().expect("a header line");
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            resp.headers.push((n.to_owned(), v.trim().to_owned()));
        }
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let Some(line) = self.line() else { return resp };
                let size = usize::from_str_radix(&line, 16).unwrap();
                if size == 0 {
                    assert_eq!(self.line().as_deref(), Some(""));
                    resp.complete = true;
                    return resp;
                }
                let Some(data) = self.take(size + 2) else {
                    return resp;
                };
                assert_eq!(&data[size..], b"\r\n");
                resp.body.extend_from_slice(&data[..size]);
                resp.chunks.push(data[..size].to_vec());
            }
        }
        let n = resp
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        if let Some(body) = self.take(n) {
            resp.body = body;
            resp.complete = true;
        }
        resp
    }
}

fn wait_for(counter: &AtomicU64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while counter.load(Ordering::SeqCst) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(counter.load(Ordering::SeqCst), want);
}

fn request(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 1024,
        "stream": stream,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": "How many tokens is this?"}]
    })
}

fn weather_tools() -> Value {
    json!([{"name": "get_weather", "description": "Weather by city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
}

#[test]
fn messages_non_streaming() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let req = request(false);
    let resp = c.messages(&[("x-mock-chunks", "5")], &req);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let prompt = prompt_tokens_messages(MODEL, &req);
    // Counted as the same conversation in OpenAI's shape.
    let openai = json!({"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How many tokens is this?"}]});
    assert_eq!(prompt, prompt_tokens_chat(MODEL, &openai));
    assert_eq!(
        resp.json(),
        json!({
            "id": "msg_mock1", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": chat_content(5)}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 5,
                      "service_tier": "standard"}
        })
    );

    // max_tokens caps the answer; cached tokens are reported as cache reads.
    let mut capped = req.clone();
    capped["max_tokens"] = json!(3);
    let v = c
        .messages(
            &[("x-mock-chunks", "40"), ("x-mock-cached-tokens", "4")],
            &capped,
        )
        .json();
    assert_eq!(v["content"][0]["text"], chat_content(3));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["usage"]["input_tokens"], prompt - 4);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 4);

    let v = c.messages(&[("x-mock-omit-usage", "1")], &req).json();
    assert!(v.get("usage").is_none(), "{v}");

    let last = mock.stats.last_request().unwrap();
    assert_eq!(last.path, "/v1/messages");
    assert_eq!(last.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(last.json(), req);
}

#[test]
fn messages_auth_and_errors_are_anthropic_shaped() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let body = request(false).to_string();
    // (headers, body, status, error type)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16, &'a str);
    let cases: [Case<'_>; 5] = [
        (&[], &body, 401, "authentication_error"),
        (
            &[("x-api-key", "wrong")],
            &body,
            401,
            "authentication_error",
        ),
        (
            &[("Authorization", "Bearer wrong")],
            &body,
            401,
            "authentication_error",
        ),
        (
            &[("x-api-key", KEY)],
            "{\"model\":\"m\",\"messages\":[]}",
            400,
            "invalid_request_error",
        ),
        (
            &[("x-api-key", KEY)],
            "not json",
            400,
            "invalid_request_error",
        ),
    ];
    for (headers, body, status, kind) in cases {
        c.send("POST", "/v1/messages", headers, body);
        let resp = c.response();
        assert_eq!(resp.status, status, "{headers:?}");
        let v = resp.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let statuses = [
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
        (403, "permission_error"),
    ];
    for (status, kind) in statuses {
        let s = status.to_string();
        let resp = c.messages(
            &[("x-mock-status", s.as_str()), ("x-mock-retry-after", "2")],
            &request(true),
        );
        assert_eq!(resp.status, status);
        assert_eq!(resp.header("retry-after"), Some("2"));
        assert_eq!(
            resp.json(),
            json!({"type": "error", "error": {"type": kind,
                "message": format!("mock: scripted status {status}")}})
        );
    }
    c.send("GET", "/v1/messages", &[("x-api-key", KEY)], "");
    assert_eq!(c.response().status, 405);
}

#[test]
fn messages_stream_event_sequence() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let req = request(true);
    let resp = c.messages(&[("x-mock-chunks", "3")], &req);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert!(resp.complete);
    let events = resp.anthropic_events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let prompt = prompt_tokens_messages(MODEL, &req);
    assert_eq!(
        events[0].1,
        json!({"type": "message_start", "message": {"id": "msg_mock1", "type": "message",
            "role": "assistant", "model": MODEL, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": prompt,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "output_tokens": 1, "service_tier": "standard"}}})
    );
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}})
    );
    for (i, (_, e)) in events[2..5].iter().enumerate() {
        assert_eq!(
            *e,
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": WORDS[i]}})
        );
    }
    assert_eq!(
        events[5].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[6].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 3}})
    );
    assert_eq!(events[7].1, json!({"type": "message_stop"}));
    wait_for(&mock.stats.streams_completed, 1);

    // Capped by max_tokens, and without usage when scripted so.
    let mut capped = req.clone();
    capped["max_tokens"] = json!(2);
    let events = c
        .messages(&[("x-mock-omit-usage", "1")], &capped)
        .anthropic_events();
    assert_eq!(events.len(), 2 + 2 + 3);
    assert!(events[0].1["message"].get("usage").is_none());
    assert_eq!(events[5].1["delta"]["stop_reason"], "max_tokens");
    assert!(events[5].1.get("usage").is_none());
}

#[test]
fn messages_stream_faults() {
    let mock = start();
    // Disconnect after two text deltas: the stream ends without message_stop.
    let mut c = Client::connect(mock.addr);
    let resp = c.messages(
        &[("x-mock-chunks", "5"), ("x-mock-disconnect-after", "2")],
        &request(true),
    );
    assert!(!resp.complete);
    let names: Vec<String> = resp.anthropic_events().into_iter().map(|e| e.0).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta"
        ]
    );
    wait_for(&mock.stats.streams_disconnected, 1);

    // Time to first byte and gaps apply as on the OpenAI side.
    let mut c = Client::connect(mock.addr);
    let t = Instant::now();
    let resp = c.messages(
        &[
            ("x-mock-chunks", "2"),
            ("x-mock-ttfb-ms", "60"),
            ("x-mock-gap-ms", "40"),
        ],
        &request(true),
    );
    assert!(resp.complete);
    assert!(
        t.elapsed() >= Duration::from_millis(140),
        "{:?}",
        t.elapsed()
    );
    wait_for(&mock.stats.streams_completed, 1);

    // A stall keeps the connection open with nothing more sent.
    let mut c = Client::connect(mock.addr);
    c.io.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let resp = c.messages(&[("x-mock-stall-after", "1")], &request(true));
    assert!(!resp.complete);
    assert_eq!(resp.anthropic_events().len(), 3);
    drop(c);
    wait_for(&mock.stats.streams_aborted, 1);
}

#[test]
fn messages_tool_use() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let mut req = request(false);
    req["tools"] = weather_tools();
    let output = count_tokens(MODEL, TOOL_ARGUMENTS) as u64;
    let prompt = prompt_tokens_messages(MODEL, &req);
    let v = c
        .messages(&[(TOOL_CALL_HEADER, "get_weather")], &req)
        .json();
    assert_eq!(
        v,
        json!({"id": "msg_mock1", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "tool_use", "id": "toolu_mock1", "name": "get_weather",
                         "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": output,
                      "service_tier": "standard"}})
    );

    req["stream"] = json!(true);
    let events = c
        .messages(&[(TOOL_CALL_HEADER, "get_weather")], &req)
        .anthropic_events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "tool_use", "id": "toolu_mock2", "name": "get_weather", "input": {}})
    );
    let mut args = String::new();
    for (_, e) in &events[2..5] {
        assert_eq!(e["index"], 0);
        assert_eq!(e["delta"]["type"], "input_json_delta");
        args.push_str(e["delta"]["partial_json"].as_str().unwrap());
    }
    assert_eq!(args, TOOL_ARGUMENTS);
    assert_eq!(events[6].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[6].1["usage"]["output_tokens"], output);

    // The header without tools in the request: a plain text answer.
    let v = c
        .messages(&[(TOOL_CALL_HEADER, "get_weather")], &request(false))
        .json();
    assert_eq!(v["content"][0]["type"], "text");
}

#[test]
fn chat_tool_calls() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let mut req = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    let prompt = prompt_tokens_chat("gpt-4o-mini", &req) as u64;
    let output = count_tokens("gpt-4o-mini", TOOL_ARGUMENTS) as u64;
    let v = c.chat(&[(TOOL_CALL_HEADER, "get_weather")], &req).json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_mock1", "type": "function",
                "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}],
            "refusal": null, "annotations": []},
            "logprobs": null, "finish_reason": "tool_calls"}])
    );
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], output);

    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let resp = c.chat(&[(TOOL_CALL_HEADER, "get_weather")], &req);
    assert!(resp.complete);
    let events = resp.openai_events();
    assert_eq!(events.len(), 1 + 2 + 1 + 1);
    for e in &events {
        assert_eq!(e["id"], "chatcmpl-mock2");
        assert_eq!(e["object"], "chat.completion.chunk");
    }
    assert_eq!(
        events[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
            "id": "call_mock2", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}], "refusal": null})
    );
    let mut args = String::new();
    for e in &events[1..3] {
        let call = &e["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert!(call.get("id").is_none());
        args.push_str(call["function"]["arguments"].as_str().unwrap());
        assert_eq!(e["usage"], Value::Null);
    }
    assert_eq!(args, TOOL_ARGUMENTS);
    assert_eq!(events[3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(events[4]["choices"], json!([]));
    assert_eq!(events[4]["usage"]["completion_tokens"], output);
    assert_eq!(events[4]["usage"]["prompt_tokens"], prompt);

    // Faults count the argument fragments as content chunks.
    let resp = c.chat(
        &[
            (TOOL_CALL_HEADER, "get_weather"),
            ("x-mock-disconnect-after", "1"),
        ],
        &req,
    );
    assert!(!resp.complete);
    assert_eq!(resp.chunks.len(), 2);
    wait_for(&mock.stats.streams_disconnected, 1);

    // Without tools in the request the header changes nothing.
    let mut c = Client::connect(mock.addr);
    let v = c
        .chat(
            &[(TOOL_CALL_HEADER, "get_weather")],
            &json!({"model": "gpt-4o-mini", "messages": []}),
        )
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}

/// The same conversation sent in both shapes gets the same text and the
/// same token counts.
#[test]
fn both_shapes_agree() {
    let mock = start();
    let mut c = Client::connect(mock.addr);
    let chat = c
        .chat(
            &[("x-mock-chunks", "7")],
            &json!({"model": MODEL, "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "How many tokens is this?"}]}),
        )
        .json();
    let messages = c
        .messages(&[("x-mock-chunks", "7")], &request(false))
        .json();
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        messages["content"][0]["text"]
    );
    assert_eq!(
        chat["usage"]["prompt_tokens"],
        messages["usage"]["input_tokens"]
    );
    assert_eq!(
        chat["usage"]["completion_tokens"],
        messages["usage"]["output_tokens"]
    );
}
