//! End-to-end tests: the real `sluice` binary in front of the in-process
//! mock upstream, on ephemeral ports, driven by a raw HTTP/1.1 client.
//!
//! Each test starts its own mock and gateway (so audit lines and metrics
//! belong to that test alone), asserts what the client sees, what the mock
//! received, the audit record(s) and the metrics. Waits are bounded polls;
//! timing assertions compare instants within one run, never absolute
//! latencies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // helpers other test files use
mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_bench::mock;

/// `have` is within 2 % of `want`.
fn near(have: &Value, want: u64) -> bool {
    let have = have.as_u64().unwrap_or(u64::MAX);
    (have.abs_diff(want) as f64) <= want as f64 * 0.02
}

fn first_content<S: std::io::Read + std::io::Write>(events: &mut Events<S>) -> Event {
    loop {
        let e = events
            .next_event()
            .expect("stream ended before any content event");
        if e.content().is_some_and(|c| !c.is_empty()) {
            return e;
        }
    }
}

/// Three estimated (usage-less) requests on one keep-alive connection: each
/// is read only after the one before it finished `on_done`, so once they are
/// answered both tokenizers have been built.
fn warm_tokenizers(gw: &Gateway) {
    let mut c = gw.connect();
    for model in [MINI, TURBO, MINI] {
        c.send(&chat_request(
            Some(ALICE),
            &[("x-mock-omit-usage", "1"), ("x-mock-chunks", "1")],
            &chat_body(model, false),
        ));
        assert_eq!(c.read_response().status, 200);
    }
}

fn assert_error_body(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["code"], code, "{v}");
}

// 1 ---------------------------------------------------------------------------

#[test]
fn non_streaming_chat_is_rewritten_forwarded_and_accounted() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    // Odd spacing, key order and escapes: all but the model value must
    // reach the provider byte for byte.
    let body = |model: &str| {
        format!(
            r#"{{ "messages" : [{{"role":"system","content":"You are terse."}}, {{"role":"user","content":"Tell me about \"rivers\"  and stones."}}],"model":  "{model}" , "temperature": 0.70, "user": "u-42" }}"#
        )
    };
    let r = gw.chat(ALICE, &[("x-request-id", "e2e-plain-1")], &body(MINI));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("e2e-plain-1"));
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        mock::chat_content(16)
    );

    let seen = mock.stats.last_request().expect("the mock saw the request");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer mock-key"));
    for (name, value) in &seen.headers {
        assert!(
            !value.contains(ALICE),
            "consumer key leaked upstream in {name}"
        );
    }
    assert_eq!(seen.header("x-request-id"), Some("e2e-plain-1"));
    assert_eq!(String::from_utf8_lossy(&seen.body), body(MINI_UPSTREAM));
    let prompt = mock::prompt_tokens_chat(MINI_UPSTREAM, &seen.json()) as u64;
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let rec = gw.audit_record("e2e-plain-1");
    assert_eq!(rec["consumer"], "alice", "{rec}");
    assert_eq!(rec["key_id"], "alice-1", "{rec}");
    assert_eq!(rec["endpoint"], "/v1/chat/completions", "{rec}");
    assert_eq!(rec["model"], MINI, "{rec}");
    assert_eq!(rec["upstream_model"], MINI_UPSTREAM, "{rec}");
    assert_eq!(rec["provider"], "mock", "{rec}");
    assert_eq!(rec["stream"], false, "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["upstream_status"], 200, "{rec}");
    assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
    assert_eq!(rec["completion_tokens"], 16, "{rec}");
    assert_eq!(rec["total_tokens"], prompt + 16, "{rec}");
    assert_eq!(rec["usage_source"], "provider", "{rec}");
    assert_eq!(rec["error"], Value::Null, "{rec}");
    assert_eq!(rec["client"], "127.0.0.1", "{rec}");
    assert!(
        rec["bytes_in"].as_u64().unwrap() > body(MINI).len() as u64,
        "{rec}"
    );
    assert!(rec["bytes_out"].as_u64().unwrap() > 0, "{rec}");

    // Without a client id, sluice makes one up, sends it upstream and
    // echoes it.
    let r = gw.chat(ALICE, &[], &body(MINI));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").expect("generated x-request-id");
    assert!(!id.is_empty() && id != "e2e-plain-1");
    let seen = mock.stats.last_request().unwrap();
    assert_eq!(seen.header("x-request-id"), Some(id));
    assert_eq!(gw.audit_record(id)["status"], 200);

    let labels = |dir| [("consumer", "alice"), ("model", MINI), ("direction", dir)];
    gw.wait_metric("sluice_tokens_total", &labels("input"), (2 * prompt) as f64);
    gw.wait_metric("sluice_tokens_total", &labels("output"), 32.0);
    gw.wait_metric(
        "sluice_requests_total",
        &[("model", MINI), ("consumer", "alice"), ("status", "200")],
        2.0,
    );
    gw.wait_metric("sluice_usage_estimated_total", &[], 0.0);
}

// 2 ---------------------------------------------------------------------------

#[test]
fn streaming_forwards_each_event_as_it_arrives() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    // Content chunk i arrives at about (i + 1) * 400 ms; the stream ends
    // at about 2 s.
    let mut events = open_stream(
        &gw,
        &[
            ("x-mock-chunks", "5"),
            ("x-mock-gap-ms", "400"),
            ("x-request-id", "e2e-live"),
        ],
        &chat_body(MINI, true),
    );
    let first = first_content(&mut events);
    let completed_at_first = counter(&mock.stats.streams_completed);
    let started_at_first = counter(&mock.stats.streams_started);
    let rest = events.rest();
    let end = Instant::now();

    assert_eq!(started_at_first, 1);
    assert_eq!(
        completed_at_first, 0,
        "the first event reached the client only after the upstream stream ended"
    );
    let still_to_go = end - first.at;
    assert!(
        still_to_go >= Duration::from_millis(1000),
        "first content event came only {still_to_go:?} before the end of a ~2 s stream"
    );
    let text = first.content().unwrap() + &contents(&rest);
    assert_eq!(text, mock::chat_content(5));
    assert!(
        rest.last().is_some_and(Event::is_done),
        "no [DONE] at the end"
    );
    // Each content event came on its own, spread over the stream.
    let times: Vec<Instant> = std::iter::once(first.at)
        .chain(
            rest.iter()
                .filter(|e| e.content().is_some_and(|c| !c.is_empty()))
                .map(|e| e.at),
        )
        .collect();
    assert_eq!(times.len(), 5);
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(200),
            "two content events arrived together: {:?} apart",
            pair[1] - pair[0]
        );
    }
    wait_for(
        "the mock to finish the stream",
        Duration::from_secs(2),
        || (counter(&mock.stats.streams_completed) == 1).then_some(()),
    );
    let rec = gw.audit_record("e2e-live");
    assert_eq!(rec["stream"], true, "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    assert!(rec["ttft_ms"].as_f64().is_some(), "{rec}");
}

// 3 ---------------------------------------------------------------------------

#[test]
fn include_usage_is_forced_upstream_and_hidden_unless_asked() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));

    // The client did not ask: no usage chunk reaches it.
    let mut events = open_stream(
        &gw,
        &[("x-mock-chunks", "4"), ("x-request-id", "e2e-usage-hidden")],
        &chat_body(MINI, true),
    );
    let all = events.rest();
    assert!(all.last().is_some_and(Event::is_done));
    for e in all.iter().filter(|e| !e.is_done()) {
        let v = e.json();
        assert!(
            !v["choices"].as_array().is_some_and(Vec::is_empty),
            "usage-only chunk reached a client that did not ask: {}",
            e.data
        );
    }
    assert_eq!(contents(&all), mock::chat_content(4));
    let seen = mock.stats.last_request().unwrap();
    let sent = seen.json();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(sent["model"], MINI_UPSTREAM);
    let prompt = mock::prompt_tokens_chat(MINI_UPSTREAM, &sent) as u64;
    let rec = gw.audit_record("e2e-usage-hidden");
    assert_eq!(rec["usage_source"], "provider", "{rec}");
    assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
    assert_eq!(rec["completion_tokens"], 4, "{rec}");
    assert_eq!(rec["stream"], true, "{rec}");

    // The client asked: it gets the provider's usage chunk, unchanged.
    let mut body: Value = serde_json::from_str(&chat_body(MINI, true)).unwrap();
    body["stream_options"] = json!({"include_usage": true});
    let mut events = open_stream(
        &gw,
        &[
            ("x-mock-chunks", "3"),
            ("x-mock-cached-tokens", "5"),
            ("x-request-id", "e2e-usage-asked"),
        ],
        &body.to_string(),
    );
    let all = events.rest();
    let usage: Vec<&Event> = all.iter().filter(|e| e.is_usage_chunk()).collect();
    assert_eq!(usage.len(), 1, "{all:#?}");
    let u = &usage[0].json()["usage"];
    assert_eq!(u["prompt_tokens"], prompt, "{u}");
    assert_eq!(u["completion_tokens"], 3, "{u}");
    assert_eq!(u["total_tokens"], prompt + 3, "{u}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 5, "{u}");
    assert!(
        all[all.len() - 2].is_usage_chunk(),
        "usage chunk is not just before [DONE]"
    );
    assert!(all.last().is_some_and(Event::is_done));
    let rec = gw.audit_record("e2e-usage-asked");
    assert_eq!(rec["usage_source"], "provider", "{rec}");
    assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
    assert_eq!(rec["completion_tokens"], 3, "{rec}");
    assert_eq!(rec["cached_tokens"], 5, "{rec}");

    let labels = |dir| [("consumer", "alice"), ("model", MINI), ("direction", dir)];
    gw.wait_metric("sluice_tokens_total", &labels("input"), (2 * prompt) as f64);
    gw.wait_metric("sluice_tokens_total", &labels("output"), 7.0);
    gw.wait_metric("sluice_tokens_total", &labels("cached"), 5.0);
}

// 4 ---------------------------------------------------------------------------

#[test]
fn missing_provider_usage_is_estimated_with_the_tokenizer() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    let long = "Rivers carve valleys over thousands of years, carrying sediment \
                downstream and depositing it where the current slows; stones \
                tumble and round, and the delta grows where fresh water meets the sea. "
        .repeat(4);
    let body = |model: &str, stream: bool| {
        json!({
            "model": model,
            "stream": stream,
            "messages": [
                {"role": "system", "content": "You answer in full sentences."},
                {"role": "user", "name": "geo", "content": long},
                {"role": "user", "content": [{"type": "text", "text": "Summarise that."}]}
            ]
        })
        .to_string()
    };

    // Not streamed, o200k_base.
    let r = gw.chat(
        ALICE,
        &[
            ("x-mock-omit-usage", "1"),
            ("x-mock-chunks", "30"),
            ("x-request-id", "e2e-est-plain"),
        ],
        &body(MINI, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json().get("usage").is_none(),
        "the mock was told to omit usage"
    );
    let sent = mock.stats.last_request().unwrap().json();
    let prompt = mock::prompt_tokens_chat(MINI_UPSTREAM, &sent) as u64;
    let completion = mock::count_tokens(MINI_UPSTREAM, &mock::chat_content(30)) as u64;
    let rec = gw.audit_record("e2e-est-plain");
    assert_eq!(rec["usage_source"], "estimated", "{rec}");
    assert!(near(&rec["prompt_tokens"], prompt), "want ~{prompt}: {rec}");
    assert!(
        near(&rec["completion_tokens"], completion),
        "want ~{completion}: {rec}"
    );

    // Streamed, cl100k_base.
    let mut events = open_stream(
        &gw,
        &[
            ("x-mock-omit-usage", "1"),
            ("x-mock-chunks", "30"),
            ("x-request-id", "e2e-est-stream"),
        ],
        &body(TURBO, true),
    );
    let all = events.rest();
    assert_eq!(contents(&all), mock::chat_content(30));
    assert!(!all.iter().any(Event::is_usage_chunk));
    let sent = mock.stats.last_request().unwrap().json();
    let prompt = mock::prompt_tokens_chat(TURBO, &sent) as u64;
    let completion = mock::count_tokens(TURBO, &mock::chat_content(30)) as u64;
    let rec = gw.audit_record("e2e-est-stream");
    assert_eq!(rec["usage_source"], "estimated", "{rec}");
    assert!(near(&rec["prompt_tokens"], prompt), "want ~{prompt}: {rec}");
    assert!(
        near(&rec["completion_tokens"], completion),
        "want ~{completion}: {rec}"
    );

    gw.wait_metric("sluice_usage_estimated_total", &[], 2.0);
}

// 5 ---------------------------------------------------------------------------

#[test]
fn client_disconnect_mid_stream_closes_upstream_and_charges_what_was_generated() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    // The abort is charged by estimate, which needs the tokenizer; make
    // sure it is built so its one-time build (see
    // `first_estimate_after_start_does_not_stall_the_core`) is not timed here.
    warm_tokenizers(&gw);
    let streams_before = counter(&mock.stats.streams_started);
    let mut events = open_stream(
        &gw,
        &[
            ("x-mock-chunks", "50"),
            ("x-mock-gap-ms", "50"),
            ("x-request-id", "e2e-abort"),
        ],
        &chat_body(MINI, true),
    );
    for _ in 0..3 {
        events.next_event().expect("an event before hanging up");
    }
    drop(events);
    let dropped = Instant::now();
    wait_for(
        "the mock to see its stream aborted",
        Duration::from_secs(2),
        || (counter(&mock.stats.streams_aborted) == 1).then_some(()),
    );
    assert_eq!(counter(&mock.stats.streams_completed), 0);
    assert_eq!(counter(&mock.stats.streams_started), streams_before + 1);
    assert!(dropped.elapsed() < Duration::from_secs(2));

    let rec = gw.audit_record("e2e-abort");
    assert_eq!(rec["status"], 499, "{rec}");
    assert_eq!(rec["error"], "client_abort", "{rec}");
    assert_eq!(rec["stream"], true, "{rec}");
    let completion = rec["completion_tokens"].as_u64().unwrap();
    assert!(
        completion > 0 && completion < 50,
        "completion_tokens {completion} should count only what was generated: {rec}"
    );
    assert_ne!(rec["usage_source"], "none", "{rec}");
    gw.wait_metric(
        "sluice_requests_total",
        &[("model", MINI), ("consumer", "alice"), ("status", "499")],
        1.0,
    );
    gw.wait_metric("sluice_open_streams", &[], 0.0);
    assert_eq!(
        gw.audit().len(),
        4,
        "one record per request, warm-up included"
    );
}

/// Regression: the tokenizers are built on a background thread after
/// start-up (`edge/src/server.rs`), and `tokens::bpe` waits on its
/// `OnceLock`; the first request that needs an estimate blocks its worker
/// core in `Accounting::on_done` until the build is done (about 1 s in a
/// debug build), stalling every other connection on that core.
#[test]
fn first_estimate_after_start_does_not_stall_the_core() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.workers = 1;
    let gw = Gateway::start(&setup);
    // Both connections live on the only core.
    let mut a = gw.connect();
    let mut b = gw.connect();
    a.send(&chat_request(
        Some(ALICE),
        &[("x-mock-omit-usage", "1"), ("x-mock-chunks", "2")],
        &chat_body(MINI, false),
    ));
    assert_eq!(a.read_response().status, 200);
    let asked = Instant::now();
    b.send(&request(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-alice")],
        b"",
    ));
    assert_eq!(b.read_response().status, 200);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "GET /v1/models waited {took:?} behind another request's token estimate"
    );
}

#[test]
fn upstream_failure_mid_stream_ends_the_stream_with_an_error_event() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.providers[0].idle_timeout_ms = 300;
    let gw = Gateway::start(&setup);

    let cases = [
        (
            "x-mock-disconnect-after",
            "mid-cut",
            "upstream_protocol_error",
            "upstream_protocol",
        ),
        (
            "x-mock-stall-after",
            "mid-stall",
            "upstream_timeout",
            "upstream_timeout",
        ),
    ];
    for (fault, rid, code, kind) in cases {
        let mut events = open_stream(
            &gw,
            &[(fault, "2"), ("x-mock-chunks", "10"), ("x-request-id", rid)],
            &chat_body(MINI, true),
        );
        let all = events.rest();
        assert_eq!(contents(&all), mock::chat_content(2), "{rid}");
        let last = all.last().expect("events");
        assert!(
            !all.iter().any(Event::is_done),
            "{rid}: [DONE] after a failure"
        );
        assert_eq!(last.json()["error"]["code"], code, "{rid}: {}", last.data);
        let rec = gw.audit_record(rid);
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["error"], kind, "{rec}");
        assert_ne!(rec["usage_source"], "none", "{rec}");
        assert_eq!(rec["completion_tokens"], 2, "{rec}");
    }
    assert_eq!(counter(&mock.stats.streams_disconnected), 1);
    wait_for(
        "the stalled stream to be closed",
        Duration::from_secs(2),
        || (counter(&mock.stats.streams_aborted) == 1).then_some(()),
    );
}

// 6 ---------------------------------------------------------------------------

#[test]
fn bad_requests_and_upstream_failures_each_get_one_answer_and_one_record() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.limits = [2048, 65_536, 300, 300, 5000];
    setup.providers[0].first_byte_timeout_ms = 300;
    let gw = Gateway::start(&setup);
    let id = |v: &'static str| ("x-request-id", v);

    // Invalid JSON.
    let r = gw.chat(
        ALICE,
        &[id("bad-json")],
        r#"{"model": "gpt-4o-mini", "messages": ["#,
    );
    assert_error_body(&r, 400, "invalid_json");

    // Body over max_body_bytes: refused from its Content-Length alone.
    let mut c = gw.connect();
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer sk-alice\r\n\
          x-request-id: big-body\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n",
    );
    assert_error_body(&c.read_response(), 413, "body_too_large");

    // Head over max_header_bytes.
    let pad = "p".repeat(2500);
    let r = gw.call(&chat_request(
        Some(ALICE),
        &[("x-pad", &pad)],
        &chat_body(MINI, false),
    ));
    assert_error_body(&r, 431, "headers_too_large");

    // No key, wrong key.
    let r = gw.call(&chat_request(
        None,
        &[id("no-key")],
        &chat_body(MINI, false),
    ));
    assert_error_body(&r, 401, "invalid_api_key");
    let r = gw.chat("sk-mallory", &[id("wrong-key")], &chat_body(MINI, false));
    assert_error_body(&r, 401, "invalid_api_key");

    // Unknown model; a model the consumer may not use.
    let r = gw.chat(ALICE, &[id("no-model")], &chat_body("gpt-9-ultra", false));
    assert_error_body(&r, 404, "model_not_found");
    let r = gw.chat(BOB, &[id("bob-mini")], &chat_body(MINI, false));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(
        counter(&mock.stats.requests),
        0,
        "a refused request reached the provider"
    );

    // Upstream 429 with Retry-After: passed through as the provider sent it.
    // The provider's Retry-After also rests sluice's only key for that long
    // (key pools honour it), so keep it short and wait it out below.
    let scripted = [("x-mock-status", "429"), ("x-mock-retry-after", "1")];
    let mut direct = Conn::tcp(mock.addr);
    direct.send(&chat_request(
        Some(MOCK_KEY),
        &scripted,
        &chat_body(MINI_UPSTREAM, false),
    ));
    let from_mock = direct.read_response();
    assert_eq!(from_mock.status, 429);
    let r = gw.chat(
        ALICE,
        &[scripted[0], scripted[1], id("up-429")],
        &chat_body(MINI, false),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.body, from_mock.body,
        "the provider's error body was changed"
    );
    std::thread::sleep(Duration::from_millis(1100));

    // Upstream 500.
    let r = gw.chat(
        ALICE,
        &[("x-mock-status", "500"), id("up-500")],
        &chat_body(MINI, false),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "server_error");

    // Upstream slower than first_byte_timeout_ms.
    let asked = Instant::now();
    let r = gw.chat(
        ALICE,
        &[("x-mock-ttfb-ms", "2000"), id("up-slow")],
        &chat_body(MINI, false),
    );
    assert_error_body(&r, 504, "upstream_timeout");
    assert!(
        asked.elapsed() < Duration::from_millis(1900),
        "504 took {:?}",
        asked.elapsed()
    );
    assert_eq!(counter(&mock.stats.requests), 4);

    // A client that sends half its body and stalls past body_timeout_ms.
    let mut c = gw.connect();
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer sk-alice\r\n\
          x-request-id: slow-body\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{\"model\":",
    );
    let r = c.read_response();
    assert_error_body(&r, 408, "request_timeout");
    assert!(c.closed_by_peer(), "connection left open after 408");
    assert_eq!(counter(&mock.stats.requests), 4);

    // Exactly one record per request, each with its status and error kind.
    let records = gw.audit_settled(11);
    let summary: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r["request_id"], r["status"], r["error"]))
        .collect();
    assert_eq!(records.len(), 11, "{summary:#?}");
    let by_id = |want: &str| {
        let found: Vec<&Value> = records.iter().filter(|r| r["request_id"] == want).collect();
        assert_eq!(found.len(), 1, "records of {want}: {summary:#?}");
        found[0]
    };
    let table: [(&str, u64, &str); 10] = [
        ("bad-json", 400, "invalid_json"),
        ("big-body", 413, "body_too_large"),
        ("no-key", 401, "unauthorized"),
        ("wrong-key", 401, "unauthorized"),
        ("no-model", 404, "model_not_found"),
        ("bob-mini", 403, "model_not_allowed"),
        ("up-429", 429, "upstream_status"),
        ("up-500", 500, "upstream_status"),
        ("up-slow", 504, "upstream_timeout"),
        ("slow-body", 408, "request_timeout"),
    ];
    for (rid, status, error) in table {
        let rec = by_id(rid);
        assert_eq!(rec["status"], status, "{rec}");
        assert_eq!(rec["error"], error, "{rec}");
        assert_eq!(rec["usage_source"], "none", "{rec}");
        assert_eq!(rec["total_tokens"], 0, "{rec}");
    }
    assert_eq!(by_id("bob-mini")["consumer"], "bob");
    assert_eq!(by_id("no-key")["consumer"], Value::Null);
    assert_eq!(by_id("up-429")["upstream_status"], 429);
    assert_eq!(by_id("up-500")["upstream_status"], 500);
    let by_status = |status: u64, error: &str| {
        let n = records
            .iter()
            .filter(|r| r["status"] == status && r["error"] == error)
            .count();
        assert_eq!(n, 1, "records with {status} {error}: {summary:#?}");
    };
    by_status(431, "header_too_large");
}

/// Regression: `conn::read_head` cancels `BufConn::fill` with a timeout,
/// and `fill` has moved the connection's buffer into the read operation
/// (`edge/src/io.rs`), so the partial head is gone when the timeout fires;
/// `read_head` then sees an empty buffer and closes as if the client had
/// been idle: no 408, and no audit record.
#[test]
fn slow_client_head_gets_408_and_one_record() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.limits = [2048, 65_536, 300, 300, 5000];
    let gw = Gateway::start(&setup);

    // Connected but silent past the timeout: closed, nothing to record.
    let mut idle = gw.connect();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        idle.closed_by_peer(),
        "an idle connection was kept past header_timeout_ms"
    );

    let mut c = gw.connect();
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthoriz");
    let sent = Instant::now();
    let r = c
        .read_response_or_close()
        .unwrap_or_else(|| panic!("closed after {:?} without a 408", sent.elapsed()));
    assert_error_body(&r, 408, "request_timeout");
    assert!(c.closed_by_peer(), "connection left open after 408");
    let records = gw.audit_settled(1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["status"], 408);
    assert_eq!(records[0]["error"], "request_timeout");
}

// 7 ---------------------------------------------------------------------------

#[test]
fn chunked_bodies_expect_continue_pipelining_and_keep_alive() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    // gpt-3.5-turbo goes upstream under its own name: the body must arrive
    // exactly as the client sent it.
    let body = chat_body(TURBO, false);
    let mut c = gw.connect();

    // A chunked request body, sent in pieces.
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer sk-alice\r\n\
          content-type: application/json\r\ntransfer-encoding: chunked\r\nx-request-id: chunked-1\r\n\r\n",
    );
    let bytes = body.as_bytes();
    for piece in [&bytes[..7], &bytes[7..40], &bytes[40..]] {
        std::thread::sleep(Duration::from_millis(20));
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        c.send(&chunk);
    }
    c.send(b"0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("chunked-1"));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        mock::chat_content(16)
    );
    assert_eq!(mock.stats.last_request().unwrap().body, bytes);

    // Expect: 100-continue on the same connection: the body goes only after
    // the interim answer.
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer sk-alice\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\
             x-request-id: continue-1\r\nx-mock-chunks: 4\r\n\r\n",
            bytes.len()
        )
        .as_bytes(),
    );
    let interim = c.read_head();
    assert_eq!(interim.status, 100);
    c.send(bytes);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("continue-1"));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        mock::chat_content(4)
    );

    // Two pipelined requests in one write: answers in order.
    let mut both = chat_request(
        Some(ALICE),
        &[("x-request-id", "pipe-1"), ("x-mock-chunks", "2")],
        &body,
    );
    both.extend(chat_request(
        Some(ALICE),
        &[("x-request-id", "pipe-2"), ("x-mock-chunks", "3")],
        &body,
    ));
    c.send(&both);
    let first = c.read_response();
    let second = c.read_response();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(first.header("x-request-id"), Some("pipe-1"));
    assert_eq!(second.header("x-request-id"), Some("pipe-2"));
    assert_eq!(
        first.json()["choices"][0]["message"]["content"],
        mock::chat_content(2)
    );
    assert_eq!(
        second.json()["choices"][0]["message"]["content"],
        mock::chat_content(3)
    );

    // A stream, then a plain request, after the pipeline drained: still
    // the same connection.
    c.send(&chat_request(
        Some(ALICE),
        &[("x-request-id", "after-stream-0"), ("x-mock-chunks", "3")],
        &chat_body(TURBO, true),
    ));
    c.read_stream_head();
    let mut events = Events::new(c);
    assert_eq!(contents(&events.rest()), mock::chat_content(3));
    let mut c = events.conn;
    c.send(&chat_request(
        Some(ALICE),
        &[("x-request-id", "after-stream-1")],
        &body,
    ));
    assert_eq!(c.read_response().status, 200);
    c.send(&request(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-alice")],
        b"",
    ));
    assert_eq!(c.read_response().status, 200);
    // One downstream connection on one core: its upstream connection was
    // kept alive and reused for every request, the streamed one included.
    assert_eq!(counter(&mock.stats.requests), 6);
    assert_eq!(
        counter(&mock.stats.connections),
        1,
        "upstream keep-alive not used"
    );
    let metrics = gw.metrics();
    let accepted: f64 = ["0", "1"]
        .iter()
        .map(|w| {
            metric_value(
                &metrics,
                "sluice_connections_accepted_total",
                &[("worker", w)],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(accepted, 1.0, "keep-alive was not used:\n{metrics}");

    for rid in [
        "chunked-1",
        "continue-1",
        "pipe-1",
        "pipe-2",
        "after-stream-0",
        "after-stream-1",
    ] {
        let rec = gw.audit_record(rid);
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["usage_source"], "provider", "{rec}");
    }
}

// 8 ---------------------------------------------------------------------------

#[test]
fn tls_listener_serves_chat_over_http_1_1() {
    let ca = TestCa::new("sluice e2e listener CA");
    let dir = TempDir::new("tls");
    let (cert, key) = ca.leaf().write(&dir);
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.listener_tls = Some((cert, key));
    let gw = Gateway::start_in(&setup, dir);
    assert_eq!(gw.scheme, "https");

    // A client that trusts another CA refuses the certificate.
    let stranger = TestCa::new("some other CA");
    assert!(
        tls_handshake(gw.addr, stranger.client_config()).is_err(),
        "handshake succeeded against an untrusted CA"
    );

    let mut c = tls_handshake(gw.addr, ca.client_config()).expect("TLS handshake");
    assert_eq!(c.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    c.send(&chat_request(
        Some(ALICE),
        &[("x-request-id", "tls-1")],
        &chat_body(MINI, false),
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        mock::chat_content(16)
    );

    // A stream on the same TLS connection.
    c.send(&chat_request(
        Some(ALICE),
        &[("x-request-id", "tls-2"), ("x-mock-chunks", "3")],
        &chat_body(MINI, true),
    ));
    c.read_stream_head();
    let mut events = Events::new(c);
    let all = events.rest();
    assert_eq!(contents(&all), mock::chat_content(3));
    assert!(all.last().is_some_and(Event::is_done));

    assert_eq!(gw.audit_record("tls-1")["status"], 200);
    assert_eq!(gw.audit_record("tls-2")["status"], 200);
}

// 9 ---------------------------------------------------------------------------

#[test]
fn tls_to_the_upstream_trusts_the_configured_ca_only() {
    let upstream_ca = TestCa::new("sluice e2e upstream CA");
    let mock = mock_with_tls(Some(upstream_ca.leaf().server_config()));
    let dir = TempDir::new("uptls");
    let ca_file = dir.write("upstream-ca.pem", &upstream_ca.cert.pem());
    let url = format!("https://localhost:{}/v1", mock.addr.port());
    let mut trusted = ProviderSpec::new("mock-tls", url.clone());
    trusted.ca_file = Some(ca_file);
    let mut setup = Setup::with_provider(trusted);
    setup
        .providers
        .push(ProviderSpec::new("mock-tls-noca", url));
    setup.models[1].provider = "mock-tls-noca".into();
    let gw = Gateway::start_in(&setup, dir);

    // gpt-4o-mini → the provider with ca_file.
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "up-tls-1")],
        &chat_body(MINI, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        mock::chat_content(16)
    );
    let seen = mock.stats.last_request().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer mock-key"));
    let mut events = open_stream(&gw, &[("x-mock-chunks", "4")], &chat_body(MINI, true));
    assert_eq!(contents(&events.rest()), mock::chat_content(4));
    let rec = gw.audit_record("up-tls-1");
    assert_eq!(rec["provider"], "mock-tls", "{rec}");
    assert_eq!(rec["usage_source"], "provider", "{rec}");

    // gpt-3.5-turbo → the same server, but its CA is not trusted.
    let requests_before = counter(&mock.stats.requests);
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "up-tls-2")],
        &chat_body(TURBO, false),
    );
    assert_error_body(&r, 502, "upstream_connect_failed");
    assert_eq!(counter(&mock.stats.requests), requests_before);
    let rec = gw.audit_record("up-tls-2");
    assert_eq!(rec["status"], 502, "{rec}");
    assert_eq!(rec["error"], "upstream_connect", "{rec}");
    assert_eq!(rec["provider"], "mock-tls-noca", "{rec}");
}

// 10 --------------------------------------------------------------------------

#[test]
fn connections_spread_over_both_workers() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    for _ in 0..40 {
        let r = gw.call(&request(
            "GET",
            "/v1/models",
            &[
                ("authorization", "Bearer sk-alice"),
                ("connection", "close"),
            ],
            b"",
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let metrics = gw.metrics();
    let accepted = |w: &str| {
        metric_value(
            &metrics,
            "sluice_connections_accepted_total",
            &[("worker", w)],
        )
        .unwrap_or_else(|| panic!("no counter for worker {w}:\n{metrics}"))
    };
    let (w0, w1) = (accepted("0"), accepted("1"));
    assert_eq!(w0 + w1, 40.0, "{metrics}");
    assert!(
        w0 > 0.0 && w1 > 0.0,
        "one worker took every connection: {w0} / {w1}"
    );
}

// 11 --------------------------------------------------------------------------

#[test]
fn sigterm_drains_a_running_stream_then_exits_cleanly() {
    let mock = mock();
    let mut gw = Gateway::start(&Setup::new(&mock));
    let mut events = open_stream(
        &gw,
        &[
            ("x-mock-chunks", "10"),
            ("x-mock-gap-ms", "100"),
            ("x-request-id", "drain-1"),
        ],
        &chat_body(MINI, true),
    );
    let first = first_content(&mut events);
    gw.sigterm();

    // The listeners close: new connections are refused.
    wait_for(
        "the listener to close after SIGTERM",
        Duration::from_secs(2),
        || {
            TcpStream::connect_timeout(&gw.addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        },
    );

    let rest = events.rest();
    assert_eq!(
        first.content().unwrap() + &contents(&rest),
        mock::chat_content(10)
    );
    assert!(
        rest.last().is_some_and(Event::is_done),
        "stream cut short by the drain"
    );

    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "sluice exited with {status}\n{}",
        gw.stderr()
    );
    assert_eq!(counter(&mock.stats.streams_completed), 1);
    let rec = gw.audit_record("drain-1");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["error"], Value::Null, "{rec}");
    assert_eq!(rec["completion_tokens"], 10, "{rec}");
    assert_eq!(rec["usage_source"], "provider", "{rec}");
}

// 12 --------------------------------------------------------------------------

#[test]
fn check_config_reports_every_bad_field() {
    let dir = TempDir::new("check");
    let bad = dir.write(
        "bad.toml",
        r#"
[[listeners]]
address = "not-an-address"

[workers]
count = 0

[limits]
max_header_bytes = 10

[[providers]]
name = "p"
base_url = "ftp://example.invalid"

[[models]]
name = "m"
provider = "nobody"
encoding = "bogus"

[[consumers]]
name = "c"
keys = [{ sha256 = "abc" }]

[audit]
path = "audit.jsonl"
flush_interval_ms = 0
"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&bad)
        .current_dir(dir.path())
        .output()
        .expect("run sluice check-config");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a bad config passed:\n{printed}");
    for path in [
        "listeners[0].address",
        "workers.count",
        "limits.max_header_bytes",
        "providers[0].base_url",
        "models[0].provider",
        "models[0].encoding",
        "consumers[0].keys[0].sha256",
        "audit.flush_interval_ms",
    ] {
        assert!(
            printed.contains(&format!("{path}:")),
            "{path} not reported:\n{printed}"
        );
    }

    let quickstart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/examples/quickstart.toml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(quickstart)
        .current_dir(dir.path())
        .output()
        .expect("run sluice check-config");
    assert!(
        out.status.success(),
        "quickstart.toml failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn models_endpoint_lists_what_the_consumer_may_use() {
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    let models = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        gw.call(&request("GET", "/v1/models", &headers, b""))
    };
    let ids = |r: &Response| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "list");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&models(Some(ALICE))), [MINI, TURBO]);
    // The other two key headers SDKs use.
    for header in ["x-api-key", "api-key"] {
        let r = gw.call(&request("GET", "/v1/models", &[(header, BOB)], b""));
        assert_eq!(ids(&r), [TURBO], "key in {header}");
    }
    assert_eq!(ids(&models(Some(BOB))), [TURBO]);
    assert_error_body(&models(None), 401, "invalid_api_key");
    assert_eq!(
        counter(&mock.stats.requests),
        0,
        "/v1/models is answered by sluice"
    );
}

// [features] -------------------------------------------------------------------

#[test]
fn passthrough_relays_without_auth_accounting_or_audit() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.passthrough = true;
    let gw = Gateway::start(&setup);

    // No key needed; the provider's answer (and its usage) passes on, with
    // no rate-limit headers since nothing is limited.
    let r = gw.call(&chat_request(None, &[], &chat_body(MINI, false)));
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.stats.last_request().unwrap().json();
    assert_eq!(sent["model"], MINI_UPSTREAM, "the model is still mapped");
    let prompt = mock::prompt_tokens_chat(MINI_UPSTREAM, &sent) as u64;
    assert_eq!(r.json()["usage"]["prompt_tokens"], prompt, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-requests"), None);

    // A stream: usage is not asked for upstream, and the events arrive as
    // the provider sent them.
    let stream = |headers: &[(&str, &str)], body: &str| {
        let mut c = gw.connect();
        c.send(&chat_request(None, headers, body));
        let head = c.read_stream_head();
        assert_eq!(head.status, 200);
        Events::new(c).rest()
    };
    let all = stream(&[("x-mock-chunks", "4")], &chat_body(MINI, true));
    assert!(all.last().is_some_and(Event::is_done), "{all:#?}");
    assert_eq!(contents(&all), mock::chat_content(4));
    assert!(!all.iter().any(Event::is_usage_chunk), "{all:#?}");
    let sent = mock.stats.last_request().unwrap().json();
    assert!(sent.get("stream_options").is_none(), "{sent}");

    // A client that asks for usage itself still gets the provider's chunk.
    let mut body: Value = serde_json::from_str(&chat_body(MINI, true)).unwrap();
    body["stream_options"] = json!({"include_usage": true});
    let all = stream(&[("x-mock-chunks", "3")], &body.to_string());
    let usage: Vec<&Event> = all.iter().filter(|e| e.is_usage_chunk()).collect();
    assert_eq!(usage.len(), 1, "{all:#?}");
    assert_eq!(usage[0].json()["usage"]["completion_tokens"], 3);

    // Counted in metrics as anonymous, with no tokens; nothing written to
    // disk: no audit log, no quota store.
    let labels = [
        ("model", MINI),
        ("consumer", "anonymous"),
        ("status", "200"),
    ];
    gw.wait_metric("sluice_requests_total", &labels, 3.0);
    let text = gw.metrics();
    let counted = text
        .lines()
        .filter(|l| l.starts_with("sluice_tokens_total{") && !l.ends_with(" 0"));
    assert_eq!(counted.count(), 0, "{text}");
    std::thread::sleep(Duration::from_millis(1200));
    let dir = gw.audit_path.parent().unwrap();
    let files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["sluice.toml"], "sluice wrote files it should not");
}
