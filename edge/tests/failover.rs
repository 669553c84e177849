//! End-to-end tests of fallback chains, API-key pools and the retry budget
//! (DESIGN.md capabilities 10 and 13).
//!
//! Each test runs the real `sluice` binary against in-process mocks on
//! ephemeral ports (harness in `common`, helpers in `common::failover`).
//! A client's `x-mock-*` headers reach every target, so a target that must
//! fail on its own is a mock started with failing defaults (every answer
//! 500, or a head only after 2 s), or a port nobody listens on. What
//! sluice did is read from three places: the client's response, the mocks'
//! request counters and last request (which key was sent), and the audit
//! record, whose `attempts` array lists every upstream try when there was
//! more than one. Retries wait 1–10 ms of backoff so the tests stay fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // helpers other test files use
mod common;

use std::time::{Duration, Instant};

use common::failover::*;
use common::*;
use serde_json::Value;
use sluice_bench::mock::{self, MockHandle, Script};

// ------------------------------------------------------------------ helpers

const FIRST: &str = "first";
const BACKUP: &str = "backup";
const MODELS_MINI: &str = "models.gpt-4o-mini";

/// Fast retries, with `max_attempts` and `budget_ratio`.
fn retry_table(max_attempts: u32, budget_ratio: f64) -> String {
    format!(
        "[retry]\nmax_attempts = {max_attempts}\nbudget_ratio = {budget_ratio}\n\
         backoff_base_ms = 1\nbackoff_max_ms = 10"
    )
}

/// `MINI` served by provider `first` (at `first`), falling back to
/// provider `backup` (at the mock `backup`) under the default `fallback_on`.
fn chain(first: ProviderSpec, backup: &MockHandle) -> Setup {
    let mut setup = Setup::with_provider(first);
    setup.providers.push(ProviderSpec::new(
        BACKUP,
        format!("http://{}/v1", backup.addr),
    ));
    setup
        .extra(
            MODELS_MINI,
            &format!("fallbacks = [{{ provider = \"{BACKUP}\" }}]"),
        )
        .extra("", &retry_table(3, 0.2));
    setup
}

fn requests(m: &MockHandle) -> u64 {
    counter(&m.stats.requests)
}

fn attempts(rec: &Value) -> Vec<Value> {
    rec["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts array in {rec}"))
        .clone()
}

/// One attempt of the audit record: provider, key id, upstream status and
/// error kind.
fn assert_attempt(
    a: &Value,
    provider: &str,
    key: Option<&str>,
    status: Option<u16>,
    error: Option<&str>,
) {
    assert_eq!(a["provider"], provider, "{a}");
    assert_eq!(a["key"].as_str(), key, "{a}");
    assert_eq!(a["status"].as_u64(), status.map(u64::from), "{a}");
    assert_eq!(a["error"].as_str(), error, "{a}");
    assert!(a["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{a}");
}

fn assert_error_body(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert_eq!(v["error"]["code"], code, "{v}");
}

/// Which key (the `Bearer` value) the mock saw last.
fn last_key(m: &MockHandle) -> String {
    let seen = m.stats.last_request().expect("the mock saw a request");
    seen.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

/// The first target of `gw` fails as `first_fails` says (its attempt's
/// status and error kind): a plain and a streamed chat for `MINI` must each
/// get the backup's complete answer, accounted, with both attempts audited.
fn assert_falls_back(
    gw: &Gateway,
    first: Option<&MockHandle>,
    backup: &MockHandle,
    tag: &str,
    first_fails: (Option<u16>, Option<&str>),
) {
    let (first_status, first_error) = first_fails;
    for stream in [false, true] {
        let id = format!("fo-{tag}-{}", if stream { "stream" } else { "plain" });
        let first_before = first.map(requests);
        let backup_before = requests(backup);
        let started = Instant::now();
        let body = chat_body(MINI, stream);
        let (content, usage) = if stream {
            let mut events = open_stream(gw, &[("x-request-id", &id)], &body);
            let all = events.rest();
            assert!(
                all.last().is_some_and(Event::is_done),
                "{id}: stream did not end with [DONE]: {all:#?}"
            );
            for e in all.iter().filter(|e| !e.is_done()) {
                assert!(e.json().get("error").is_none(), "{id}: error event {e:?}");
            }
            (contents(&all), None)
        } else {
            let r = gw.chat(ALICE, &[("x-request-id", &id)], &body);
            assert_eq!(r.status, 200, "{id}: {}", r.text());
            assert_eq!(r.header("x-request-id"), Some(id.as_str()));
            let v = r.json();
            let content = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (content, Some(v["usage"].clone()))
        };
        let took = started.elapsed();
        assert_eq!(content, mock::chat_content(16), "{id}");

        // One try each: the first target once, the backup once.
        if let (Some(m), Some(before)) = (first, first_before) {
            assert_eq!(
                requests(m) - before,
                1,
                "{id}: requests at the first target"
            );
        }
        assert_eq!(
            requests(backup) - backup_before,
            1,
            "{id}: requests at the backup"
        );
        let sent = backup.stats.last_request().unwrap();
        assert_eq!(sent.header("x-request-id"), Some(id.as_str()));
        assert_eq!(sent.header("authorization"), Some("Bearer mock-key"));
        assert_eq!(sent.json()["model"], MINI_UPSTREAM, "{id}");
        let prompt = mock::prompt_tokens_chat(MINI_UPSTREAM, &sent.json()) as u64;
        if let Some(usage) = usage {
            assert_eq!(usage["prompt_tokens"], prompt, "{id}");
            assert_eq!(usage["completion_tokens"], 16, "{id}");
        }

        let rec = gw.audit_record(&id);
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["stream"], stream, "{rec}");
        assert_eq!(rec["provider"], BACKUP, "{rec}");
        assert_eq!(rec["upstream_model"], MINI_UPSTREAM, "{rec}");
        assert_eq!(rec["upstream_status"], 200, "{rec}");
        assert_eq!(rec["error"], Value::Null, "{rec}");
        assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
        assert_eq!(rec["completion_tokens"], 16, "{rec}");
        assert_eq!(rec["total_tokens"], prompt + 16, "{rec}");
        assert_eq!(rec["usage_source"], "provider", "{rec}");
        let tries = attempts(&rec);
        assert_eq!(tries.len(), 2, "{rec}");
        assert_attempt(&tries[0], FIRST, Some("primary"), first_status, first_error);
        assert_attempt(&tries[1], BACKUP, Some("primary"), Some(200), None);
        assert!(took < Duration::from_secs(5), "{id} took {took:?}");
    }
}

// 1 ---------------------------------------------------------------------------

#[test]
fn a_500_from_the_first_target_falls_back_to_the_second() {
    let failing = mock_failing(500);
    let backup = mock();
    let first = ProviderSpec::new(FIRST, format!("http://{}/v1", failing.addr));
    let gw = Gateway::start(&chain(first, &backup));
    assert_falls_back(&gw, Some(&failing), &backup, "500", (Some(500), None));
}

// 2 ---------------------------------------------------------------------------

#[test]
fn a_refused_connection_falls_back_to_the_second_target() {
    let backup = mock();
    let first = ProviderSpec::new(FIRST, closed_base_url());
    let gw = Gateway::start(&chain(first, &backup));
    assert_falls_back(
        &gw,
        None,
        &backup,
        "refused",
        (None, Some("upstream_connect")),
    );
}

#[test]
fn a_first_byte_timeout_falls_back_to_the_second_target() {
    let slow = mock_slow(2000);
    let backup = mock();
    let mut first = ProviderSpec::new(FIRST, format!("http://{}/v1", slow.addr));
    first.first_byte_timeout_ms = 300;
    let gw = Gateway::start(&chain(first, &backup));
    let started = Instant::now();
    assert_falls_back(
        &gw,
        Some(&slow),
        &backup,
        "timeout",
        (None, Some("upstream_timeout")),
    );
    // Two requests, each waiting 300 ms for the first target, not 2 s.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3000), "took {took:?}");
    let rec = gw.audit_record("fo-timeout-plain");
    let first_ms = attempts(&rec)[0]["ms"].as_f64().unwrap();
    assert!(
        (250.0..1500.0).contains(&first_ms),
        "first attempt took {first_ms} ms: {rec}"
    );
}

#[test]
fn a_500_whose_body_never_comes_does_not_hold_up_the_fallback() {
    // Head and Content-Length, then nothing: draining it would wait for the
    // provider's 10 s idle timeout.
    let stalling = mock_scripted(
        Some(MOCK_KEY),
        Script {
            status: Some(500),
            stall_after: Some(1),
            ..Script::default()
        },
    );
    let backup = mock();
    let first = ProviderSpec::new(FIRST, format!("http://{}/v1", stalling.addr));
    let gw = Gateway::start(&chain(first, &backup));
    let started = Instant::now();
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "fo-stalled-500")],
        &chat_body(MINI, false),
    );
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(requests(&backup), 1);
    // The drain gives up after 1 s; the rest is the backup's answer.
    assert!(took < Duration::from_millis(3000), "took {took:?}");
    let rec = gw.audit_record("fo-stalled-500");
    let tried = attempts(&rec);
    assert_eq!(tried.len(), 2, "{rec}");
    assert_eq!(tried[0]["status"], 500, "{rec}");
}

// 3 ---------------------------------------------------------------------------

/// Provider `mock` at `m` with the pool k1 = "key-one", k2 = "key-two",
/// resting a key 60 s unless the provider says otherwise, and `MINI`
/// falling back on `fallback_on` (no other target).
fn pool_setup(m: &MockHandle, fallback_on: &str) -> Setup {
    let mut setup = Setup::new(m);
    setup
        .extra("providers.mock", "key_cooldown_ms = 60000")
        .extra(MODELS_MINI, &format!("fallback_on = {fallback_on}"))
        .extra("", &retry_table(3, 0.2));
    setup
}

const POOL: &[(&str, &str)] = &[("k1", "key-one"), ("k2", "key-two")];

#[test]
fn a_401_cools_the_key_and_the_retry_takes_the_next_one() {
    // Only k2's value opens this mock.
    let m = mock_scripted(Some("key-two"), Script::default());
    let setup = pool_setup(&m, r#"["401", "429", "5xx", "connect", "timeout"]"#);
    let gw = Gateway::start_with_key_pool(&setup, "mock", POOL);

    // Round robin starts at k1: 401, then the retry on k2 succeeds.
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "fo-401")],
        &chat_body(MINI, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        mock::chat_content(16)
    );
    assert_eq!(requests(&m), 2);
    assert_eq!(last_key(&m), "key-two");
    let rec = gw.audit_record("fo-401");
    assert_eq!(rec["status"], 200, "{rec}");
    assert_eq!(rec["provider"], "mock", "{rec}");
    let tries = attempts(&rec);
    assert_eq!(tries.len(), 2, "{rec}");
    assert_attempt(&tries[0], "mock", Some("k1"), Some(401), None);
    assert_attempt(&tries[1], "mock", Some("k2"), Some(200), None);

    // k1 rests for key_cooldown_ms: every request now goes straight to k2,
    // one upstream request each (a k1 try would cost a 401 first).
    for i in 0..6 {
        let id = format!("fo-401-after-{i}");
        let before = requests(&m);
        let r = gw.chat(
            ALICE,
            &[("x-request-id", &id)],
            &chat_body(MINI, i % 2 == 1),
        );
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(requests(&m) - before, 1, "{id}: k1 was tried again");
        assert_eq!(last_key(&m), "key-two", "{id}");
        let rec = gw.audit_record(&id);
        assert!(rec.get("attempts").is_none(), "{id}: {rec}");
        assert_eq!(rec["upstream_status"], 200, "{rec}");
    }
}

#[test]
fn retry_after_on_a_429_rests_that_key_for_as_long() {
    // Both keys open this mock; 429 is not a trigger here, so the 429
    // reaches the client and only the key that got it rests.
    let m = mock_scripted(None, Script::default());
    let setup = pool_setup(&m, r#"["5xx", "connect", "timeout"]"#);
    let gw = Gateway::start_with_key_pool(&setup, "mock", POOL);

    let sent_429 = Instant::now();
    let r = gw.chat(
        ALICE,
        &[("x-mock-status", "429"), ("x-mock-retry-after", "2")],
        &chat_body(MINI, false),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(last_key(&m), "key-one", "round robin starts at k1");

    // Every 100 ms a request; note when it went and which key it used.
    let mut seen: Vec<(Duration, Duration, String)> = Vec::new();
    let deadline = sent_429 + Duration::from_secs(4);
    while Instant::now() < deadline {
        let went = sent_429.elapsed();
        let r = gw.chat(ALICE, &[], &chat_body(MINI, false));
        assert_eq!(r.status, 200, "{}", r.text());
        let key = last_key(&m);
        let back = sent_429.elapsed();
        let done = key == "key-one";
        seen.push((went, back, key));
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rested: Vec<_> = seen
        .iter()
        .filter(|(_, back, _)| *back < Duration::from_secs(2))
        .collect();
    assert!(
        rested.len() >= 8,
        "too few requests inside the rest: {seen:?}"
    );
    for (went, back, key) in &seen {
        if key == "key-one" {
            // The rest began after the 429 was sent and lasts 2 s.
            assert!(
                *back >= Duration::from_secs(2),
                "k1 used {went:?}..{back:?} after its 429 with Retry-After: 2: {seen:?}"
            );
        }
    }
    // And then k1 is back (not resting key_cooldown_ms = 60 s).
    let (went, _, key) = seen.last().unwrap();
    assert_eq!(key, "key-one", "k1 never came back: {seen:?}");
    assert!(
        *went < Duration::from_millis(3000),
        "k1 back only at {went:?}"
    );
}

// 4 ---------------------------------------------------------------------------

#[test]
fn every_key_cooling_and_no_fallback_answers_429_with_retry_after() {
    let m = mock_scripted(None, Script::default());
    let setup = pool_setup(&m, r#"["429", "5xx", "connect", "timeout"]"#);
    let gw = Gateway::start_with_key_pool(&setup, "mock", POOL);

    // k1: 429, rest 2 s; the retry on k2: 429, rest 2 s. Whether the
    // client then gets k2's 429 or sluice's own, it is a 429 saying so.
    let r = gw.chat(
        ALICE,
        &[
            ("x-request-id", "fo-cool-1"),
            ("x-mock-status", "429"),
            ("x-mock-retry-after", "2"),
        ],
        &chat_body(MINI, false),
    );
    assert_error_body(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(requests(&m), 2);
    let rec = gw.audit_record("fo-cool-1");
    let tries = attempts(&rec);
    assert!((2..=3).contains(&tries.len()), "{rec}");
    assert_attempt(&tries[0], "mock", Some("k1"), Some(429), None);
    assert_attempt(&tries[1], "mock", Some("k2"), Some(429), None);
    if let Some(third) = tries.get(2) {
        assert_attempt(third, "mock", None, None, Some("rate_limited"));
    }

    // Now a plain request: no key to send it with, so sluice answers itself.
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "fo-cool-2")],
        &chat_body(MINI, false),
    );
    assert_error_body(&r, 429, "rate_limit_exceeded");
    let wait: u64 = r
        .header("retry-after")
        .expect("a retry-after header")
        .parse()
        .expect("retry-after in seconds");
    assert!((1..=2).contains(&wait), "retry-after: {wait}");
    assert_eq!(requests(&m), 2, "no request may reach the provider");
    let rec = gw.audit_record("fo-cool-2");
    assert_eq!(rec["status"], 429, "{rec}");
    assert_eq!(rec["error"], "rate_limited", "{rec}");

    // After Retry-After the keys work again.
    std::thread::sleep(Duration::from_millis(wait * 1000 + 200));
    let r = gw.chat(ALICE, &[], &chat_body(MINI, false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(requests(&m), 3);
}

/// A provider answering every request 429 with `Retry-After: 30`.
fn mock_rate_limited() -> MockHandle {
    mock_scripted(
        Some(MOCK_KEY),
        Script {
            status: Some(429),
            retry_after: Some("30".into()),
            ..Script::default()
        },
    )
}

#[test]
fn a_provider_whose_keys_all_rest_is_skipped_for_the_next_target() {
    let limited = mock_rate_limited();
    let backup = mock();
    let first = ProviderSpec::new(FIRST, format!("http://{}/v1", limited.addr));
    let gw = Gateway::start(&chain(first, &backup));

    // Its 429 rests the first provider's only key for 30 s ...
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "fo-skip-1")],
        &chat_body(MINI, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let tries = attempts(&gw.audit_record("fo-skip-1"));
    assert_attempt(&tries[0], FIRST, Some("primary"), Some(429), None);
    assert_attempt(&tries[1], BACKUP, Some("primary"), Some(200), None);

    // ... so the next requests skip it without asking it.
    for i in 0..3 {
        let id = format!("fo-skip-next-{i}");
        let r = gw.chat(ALICE, &[("x-request-id", &id)], &chat_body(MINI, i == 1));
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        let rec = gw.audit_record(&id);
        assert_eq!(rec["provider"], BACKUP, "{rec}");
        let tries = attempts(&rec);
        assert_eq!(tries.len(), 2, "{rec}");
        assert_attempt(&tries[0], FIRST, None, None, Some("rate_limited"));
        assert_attempt(&tries[1], BACKUP, Some("primary"), Some(200), None);
    }
    assert_eq!(requests(&limited), 1);
    assert_eq!(requests(&backup), 4);
}

/// Bug: with `max_attempts = 1` ("retries and fallbacks off"), a request
/// whose provider has every key resting moves on to the next target in
/// `proxy::handle`'s key-pick branch (`next += 1; continue`) although no
/// attempt is left; the loop ends and the client gets 502 "every attempt
/// failed" instead of the 429 + `retry-after` of a resting pool.
#[test]
fn with_retries_off_a_resting_pool_answers_429_not_502() {
    let limited = mock_rate_limited();
    let backup = mock();
    let first = ProviderSpec::new(FIRST, format!("http://{}/v1", limited.addr));
    let mut setup = chain(first, &backup);
    setup.extra.retain(|(table, _)| !table.is_empty());
    setup.extra("", &retry_table(1, 0.2));
    let gw = Gateway::start(&setup);

    let r = gw.chat(ALICE, &[], &chat_body(MINI, false));
    assert_eq!(r.status, 429, "the provider's own 429: {}", r.text());
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "fo-off-2")],
        &chat_body(MINI, false),
    );
    let rec = gw.audit_record("fo-off-2");
    assert_eq!(requests(&backup), 0, "a fallback with retries off: {rec}");
    assert_error_body(&r, 429, "rate_limit_exceeded");
    let wait: u64 = r.header("retry-after").unwrap_or("0").parse().unwrap_or(0);
    assert!((1..=30).contains(&wait), "retry-after {wait}: {rec}");
}

// 5 ---------------------------------------------------------------------------

#[test]
fn the_retry_budget_caps_a_retry_storm() {
    // Three keys, so each of the three attempts has a fresh one.
    let m = mock_scripted(
        None,
        Script {
            status: Some(500),
            ..Script::default()
        },
    );
    let mut setup = Setup::new(&m);
    setup
        .extra(MODELS_MINI, r#"fallback_on = ["5xx"]"#)
        // Keep the circuit breaker out of it: this test is about the budget.
        .extra("providers.mock", "health = { failures_to_eject = 1000 }")
        .extra("", &retry_table(3, 0.1));
    let keys = [("k1", "key-one"), ("k2", "key-two"), ("k3", "key-three")];
    let gw = Gateway::start_with_key_pool(&setup, "mock", &keys);

    const N: u64 = 100;
    let mut c = gw.connect();
    for i in 0..N {
        c.send(&chat_request(Some(ALICE), &[], &chat_body(MINI, false)));
        let r = c.read_response();
        assert_eq!(r.status, 500, "request {i}: {}", r.text());
    }
    // Without a budget: 3 × 100. With it: 100 first attempts, the 10
    // retries banked at start and 0.1 per request.
    let upstream = requests(&m);
    assert!(
        (N + 10..=N + 10 + N / 10 + 3).contains(&upstream),
        "{upstream} upstream requests for {N} client requests"
    );
    // The audit agrees: one attempt, or the listed ones, per request.
    let recs = gw.audit_settled(N as usize);
    assert_eq!(recs.len() as u64, N);
    let audited: u64 = recs
        .iter()
        .map(|r| r["attempts"].as_array().map_or(1, |a| a.len() as u64))
        .sum();
    assert_eq!(audited, upstream);
}

// 6 ---------------------------------------------------------------------------

#[test]
fn a_non_trigger_4xx_is_passed_through_after_one_attempt() {
    let first = mock();
    let backup = mock();
    let spec = ProviderSpec::new(FIRST, format!("http://{}/v1", first.addr));
    let gw = Gateway::start(&chain(spec, &backup));
    for stream in [false, true] {
        let id = format!("fo-400-{stream}");
        let (first_before, backup_before) = (requests(&first), requests(&backup));
        let r = gw.chat(
            ALICE,
            &[("x-request-id", &id), ("x-mock-status", "400")],
            &chat_body(MINI, stream),
        );
        assert_eq!(r.status, 400, "{id}: {}", r.text());
        assert_eq!(
            r.json()["error"]["message"],
            "mock: scripted status 400",
            "{id}: the provider's own error body"
        );
        assert_eq!(requests(&first) - first_before, 1, "{id}");
        assert_eq!(
            requests(&backup) - backup_before,
            0,
            "{id}: fell back on a 400"
        );
        let rec = gw.audit_record(&id);
        assert!(rec.get("attempts").is_none(), "{rec}");
        assert_eq!(rec["provider"], FIRST, "{rec}");
        assert_eq!(rec["status"], 400, "{rec}");
        assert_eq!(rec["upstream_status"], 400, "{rec}");
    }
}

// Regressions -------------------------------------------------------------------

/// Bug (fixed by `proxy::elsewhere`): a retry on the same provider when
/// each of its keys was already tried in this request (a single-key
/// provider's second attempt, a two-key provider's third) got `Err(0)` from
/// `KeyPool::pick`, which `proxy::handle` reported as "every API key ... is
/// cooling down": the provider's 5xx reached the client as a 429
/// rate_limit_exceeded with `retry-after: 1`, although no key was resting.
#[test]
fn a_5xx_is_not_turned_into_a_key_cooldown_429_once_every_key_was_tried() {
    let pools: [&[(&str, &str)]; 2] = [&[("k1", "key-one")], POOL];
    for keys in pools {
        let m = mock_scripted(None, Script::default());
        let mut setup = Setup::new(&m);
        setup.extra("", &retry_table(3, 0.2));
        let gw = Gateway::start_with_key_pool(&setup, "mock", keys);
        let r = gw.chat(
            ALICE,
            &[("x-request-id", "fo-tried"), ("x-mock-status", "503")],
            &chat_body(MINI, false),
        );
        let rec = gw.audit_record("fo-tried");
        assert_eq!(
            r.status,
            503,
            "{} key(s): the provider's 503 became {}: {}\n{rec}",
            keys.len(),
            r.status,
            r.text()
        );
        assert!(requests(&m) >= keys.len() as u64, "{rec}");
    }
}

/// Bug: a chain that falls back to another model of the same provider
/// (`fallbacks = [{ provider = "first", model = "gpt-3.5-turbo" }]`) carries
/// the keys tried for the first model over to the second: `proxy::elsewhere`
/// moves on to the next target without looking at keys, then
/// `KeyPool::pick` skips the provider's only key as already tried, returns
/// `Err(0)`, and the client gets 429 "every API key ... is cooling down"
/// with `retry-after: 1` although no key rests and the fallback model was
/// never asked.
#[test]
fn a_fallback_to_another_model_of_the_same_provider_is_tried() {
    let failing = mock_failing(500);
    let mut setup = Setup::with_provider(ProviderSpec::new(
        FIRST,
        format!("http://{}/v1", failing.addr),
    ));
    setup
        .extra(
            MODELS_MINI,
            &format!("fallbacks = [{{ provider = \"{FIRST}\", model = \"{TURBO}\" }}]"),
        )
        .extra("", &retry_table(3, 0.2));
    let gw = Gateway::start(&setup);
    let r = gw.chat(
        ALICE,
        &[("x-request-id", "fo-same")],
        &chat_body(MINI, false),
    );
    let rec = gw.audit_record("fo-same");
    assert_eq!(r.status, 500, "{}\n{rec}", r.text());
    assert_eq!(
        requests(&failing),
        2,
        "the fallback model was not asked: {rec}"
    );
    let sent = failing.stats.last_request().unwrap();
    assert_eq!(sent.json()["model"], TURBO, "{rec}");
}
