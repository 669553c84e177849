//! End-to-end tests of the token economy (DESIGN.md §2, capabilities 5, 14
//! and 16): admission reserves before forwarding, settlement charges the
//! real usage on every path, balances and budgets refuse with
//! `insufficient_quota`, rate limits with `rate_limit_exceeded`, the admin
//! API reads and changes the state, and the redb store keeps it across
//! restarts.
//!
//! Each test runs the real `sluice` binary against the in-process mock on
//! ephemeral ports (harness in `common`). Expected token counts come from
//! the mock's own tokenizer (`mock::prompt_tokens_chat`, the OpenAI chat
//! recipe) and its deterministic completions (N chunks = N tokens); costs
//! are recomputed here from the configured prices. Where a rate window
//! refills while a test runs, the bound says so explicitly: `refill()`
//! of the time measured around the requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // helpers other test files use
mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sluice_bench::mock;

// ------------------------------------------------------------------ helpers

/// A chat body for `model` with the fixed two-message prompt of
/// `chat_body`, and `max_tokens` when given.
fn chat(model: &str, max_tokens: Option<u64>, stream: bool) -> String {
    let mut v: Value = serde_json::from_str(&chat_body(model, stream)).unwrap();
    if let Some(n) = max_tokens {
        v["max_tokens"] = json!(n);
    }
    v.to_string()
}

/// Prompt tokens of `body` by the chat recipe, counted with the encoding
/// of `upstream_model`, exactly as the mock reports them.
fn prompt_tokens(upstream_model: &str, body: &str) -> u64 {
    mock::prompt_tokens_chat(upstream_model, &serde_json::from_str(body).unwrap()) as u64
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// A money amount as written (currency units, f64) in micro-units.
fn micros(v: &Value) -> u64 {
    let f = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    (f * 1e6).round() as u64
}

fn header_num(r: &Response, name: &str) -> u64 {
    let v = r
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.head));
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
}

/// An OpenAI-shaped 429 with `code`; returns the error object.
fn assert_refused(r: &Response, code: &str) -> Value {
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    let e = v["error"].clone();
    assert_eq!(e["code"], code, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    e
}

/// Units a rate of `limit` per `period` gives back in `elapsed`, rounded up.
fn refill(limit: u64, period: Duration, elapsed: Duration) -> u64 {
    (limit as f64 * elapsed.as_secs_f64() / period.as_secs_f64()).ceil() as u64
}

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The audit records of `ids`, in that order, waiting for their flush;
/// each id must have exactly one.
fn records_of(gw: &Gateway, ids: &[String]) -> Vec<Value> {
    let all = wait_for(
        &format!("the audit records of {ids:?}"),
        Duration::from_secs(5),
        || {
            let all = gw.audit();
            ids.iter()
                .all(|id| all.iter().any(|r| r["request_id"] == id.as_str()))
                .then_some(all)
        },
    );
    ids.iter()
        .map(|id| {
            let found: Vec<&Value> = all
                .iter()
                .filter(|r| r["request_id"] == id.as_str())
                .collect();
            assert_eq!(found.len(), 1, "records of {id}: {found:?}");
            found[0].clone()
        })
        .collect()
}

fn admin_records(gw: &Gateway) -> Vec<Value> {
    gw.audit()
        .into_iter()
        .filter(|r| r["kind"] == "admin")
        .collect()
}

fn tokens_of(rec: &Value) -> u64 {
    num(&rec["prompt_tokens"]) + num(&rec["completion_tokens"])
}

/// A price per million tokens. The values the tests use are binary
/// fractions, so the f64 arithmetic below is exact and `ceil` is the one
/// rounding the price rules allow (up, once per request).
#[derive(Clone, Copy)]
struct Price {
    input: f64,
    output: f64,
    cached_input: f64,
}

impl Price {
    fn toml(&self) -> String {
        format!(
            "price = {{ input_per_million = {}, output_per_million = {}, cached_input_per_million = {} }}",
            self.input, self.output, self.cached_input
        )
    }

    /// Cost in micro-units: per-million prices are micro-units per token.
    fn cost_micros(&self, prompt: u64, cached: u64, completion: u64) -> u64 {
        let cached = cached.min(prompt);
        let exact = (prompt - cached) as f64 * self.input
            + cached as f64 * self.cached_input
            + completion as f64 * self.output;
        exact.ceil() as u64
    }
}

const PRICE: Price = Price {
    input: 150.5,
    output: 600.25,
    cached_input: 20.125,
};

// 1 ---------------------------------------------------------------------------

/// 200 requests released at once must not reserve more than the window
/// holds: admission reserves prompt + max_tokens before forwarding, so
/// the sum of what was admitted stays within the limit plus what the
/// window refilled while the burst ran.
#[test]
fn a_burst_of_200_never_overshoots_tokens_per_minute() {
    const LIMIT: u64 = 10_000;
    const N: usize = 200;
    const MAX_TOKENS: u64 = 40;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.extra(
        "consumers.alice",
        &format!("limits = {{ tokens_per_minute = {LIMIT} }}"),
    );
    let gw = Gateway::start(&setup);

    let body = chat(MINI, Some(MAX_TOKENS), false);
    let prompt = prompt_tokens(MINI_UPSTREAM, &body);
    // The mock answers exactly max_tokens tokens, so settlement neither
    // refunds nor charges extra: a finished request frees nothing that a
    // later one could use, and the reservations are the real usage.
    let reservation = prompt + MAX_TOKENS;
    let chunks = MAX_TOKENS.to_string();

    let barrier = Arc::new(Barrier::new(N + 1));
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let mut conn = gw.connect();
            let req = chat_request(
                Some(ALICE),
                &[
                    ("x-mock-chunks", &chunks),
                    ("x-request-id", &format!("burst-{i}")),
                ],
                &body,
            );
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    conn.send(&req);
                    conn.read_response()
                })
                .expect("spawn a client thread")
        })
        .collect();
    let released = Instant::now();
    barrier.wait();
    let responses: Vec<Response> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    // Every admission happened inside this interval.
    let elapsed = released.elapsed();
    let refilled = refill(LIMIT, MINUTE, elapsed);

    let admitted: Vec<&Response> = responses.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    let others: Vec<String> = responses
        .iter()
        .filter(|r| r.status != 200 && r.status != 429)
        .map(|r| format!("{} {}", r.status, r.text()))
        .collect();
    assert!(others.is_empty(), "neither 200 nor 429: {others:?}");
    assert_eq!(admitted.len() + refused.len(), N);

    let reserved = admitted.len() as u64 * reservation;
    assert!(
        reserved <= LIMIT + refilled + reservation,
        "{} admitted x {reservation} reserved tokens = {reserved} > limit {LIMIT} + \
         refill {refilled} (burst took {elapsed:?}) + one request {reservation}",
        admitted.len()
    );
    let fits = LIMIT / reservation;
    assert!(
        admitted.len() as u64 * 10 >= fits * 9,
        "only {} admitted where {fits} fit (reservation {reservation})",
        admitted.len()
    );
    assert!(
        !refused.is_empty(),
        "200 x {reservation} tokens all fit in {LIMIT}?"
    );

    for r in &admitted {
        let v = r.json();
        assert_eq!(v["usage"]["prompt_tokens"], prompt, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], MAX_TOKENS, "{v}");
        assert_eq!(header_num(r, "x-ratelimit-limit-tokens"), LIMIT);
        assert!(header_num(r, "x-ratelimit-remaining-tokens") <= LIMIT);
        assert!(
            r.header("x-ratelimit-reset-tokens").is_some(),
            "{:?}",
            r.head
        );
    }
    for r in &refused {
        let e = assert_refused(r, "rate_limit_exceeded");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("tokens_per_minute")),
            "{e}"
        );
        let secs = header_num(r, "retry-after");
        assert!((1..=60).contains(&secs), "retry-after {secs}");
        let ms = header_num(r, "retry-after-ms");
        assert!(
            ms <= secs * 1000 && ms > (secs - 1) * 1000,
            "retry-after-ms {ms} vs retry-after {secs}"
        );
        assert_eq!(header_num(r, "x-ratelimit-limit-tokens"), LIMIT);
        let remaining = header_num(r, "x-ratelimit-remaining-tokens");
        assert!(
            remaining < reservation,
            "refused with {remaining} tokens remaining, {reservation} asked"
        );
        assert!(
            r.header("x-ratelimit-reset-tokens").is_some(),
            "{:?}",
            r.head
        );
    }

    // One audit record per request, refusals included, nothing more.
    let records = gw.audit_settled(N);
    assert_eq!(records.len(), N, "audit records for {N} requests");
    let ok: Vec<&Value> = records.iter().filter(|r| r["status"] == 200).collect();
    let no: Vec<&Value> = records.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(ok.len(), admitted.len());
    assert_eq!(no.len(), refused.len());
    for rec in &no {
        assert_eq!(rec["limit"], "tokens_per_minute", "{rec}");
        assert_eq!(rec["error"], "rate_limited", "{rec}");
        assert_eq!(tokens_of(rec), 0, "{rec}");
        assert_eq!(rec["usage_source"], "none", "{rec}");
    }
    let used: u64 = ok.iter().copied().map(tokens_of).sum();
    for rec in &ok {
        assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
        assert_eq!(rec["completion_tokens"], MAX_TOKENS, "{rec}");
        assert_eq!(rec["limit"], Value::Null, "{rec}");
    }
    assert!(
        used <= LIMIT + refilled + reservation,
        "audited usage {used} > {LIMIT} + {refilled} + {reservation}"
    );
}

// 2 ---------------------------------------------------------------------------

/// A token balance admits while it is positive, ends at most one request
/// below zero, equals the start minus the audited usage, and the admin API
/// reads and tops it up; every malformed admin call gets its own status.
#[test]
fn balance_runs_out_and_the_admin_api_reads_and_tops_it_up() {
    const START: i64 = 300;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra("consumers.alice", &format!("balance = {START}"));
    let gw = Gateway::start(&setup);

    let body = chat_body(MINI, false);
    let per_request = prompt_tokens(MINI_UPSTREAM, &body) + 16;
    let mut ids = Vec::new();
    let mut refusal = None;
    // One keep-alive connection: sluice settles a request before it reads
    // the next one from the same connection (see
    // `a_delivered_response_no_longer_holds_its_reservation` for fresh
    // connections).
    let mut c = gw.connect();
    for i in 0..50 {
        let id = format!("bal-{i}");
        c.send(&chat_request(Some(ALICE), &[("x-request-id", &id)], &body));
        let r = c.read_response();
        ids.push(id);
        if r.status != 200 {
            refusal = Some(r);
            break;
        }
    }
    drop(c);
    let refusal = refusal.expect("a balance of 300 tokens never ran out");
    let e = assert_refused(&refusal, "insufficient_quota");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("balance")),
        "{e}"
    );
    assert!(
        refusal.header("retry-after").is_none(),
        "waiting does not refill a balance, yet retry-after is {:?}",
        refusal.header("retry-after")
    );
    // Admitted while positive: ceil(300 / usage) requests.
    let admitted = ids.len() - 1;
    assert_eq!(admitted as u64, (START as u64).div_ceil(per_request));

    let records = records_of(&gw, &ids);
    let (ok, last) = records.split_at(admitted);
    for rec in ok {
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(tokens_of(rec), per_request, "{rec}");
        assert_eq!(rec["usage_source"], "provider", "{rec}");
    }
    assert_eq!(last[0]["status"], 429, "{}", last[0]);
    assert_eq!(last[0]["limit"], "balance", "{}", last[0]);
    assert_eq!(last[0]["error"], "insufficient_quota", "{}", last[0]);
    assert_eq!(tokens_of(&last[0]), 0, "{}", last[0]);
    let spent: u64 = ok.iter().map(tokens_of).sum();

    let d = gw.admin_consumer("alice");
    let balance = int(&d["balance"]);
    assert_eq!(balance, START - spent as i64, "{d}");
    assert!(
        balance <= 0 && balance > -(per_request as i64),
        "balance {balance}: overdraft must be under one request ({per_request})"
    );
    assert_eq!(d["usage"][MINI]["requests"], admitted as u64, "{d}");
    assert_eq!(
        num(&d["usage"][MINI]["prompt_tokens"]) + num(&d["usage"][MINI]["completion_tokens"]),
        spent,
        "{d}"
    );

    // ---- the admin API's refusals, none of which changes anything
    let get = |token: Option<&str>| gw.admin_request("GET", "/admin/consumers", token, None);
    assert_eq!(get(None).status, 401, "no token");
    assert_eq!(get(Some("not-the-token")).status, 401, "wrong token");
    let r = gw.admin_request(
        "POST",
        "/admin/consumers/alice/balance",
        Some("not-the-token"),
        Some(r#"{"add": 1000000}"#),
    );
    assert_eq!(r.status, 401, "wrong token on a change: {}", r.text());
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text());

    let bad: [(&str, &str, &str, u16); 9] = [
        ("alice", "balance", "{nope", 400),
        ("alice", "balance", "", 400),
        ("alice", "balance", r#"{"set": 1, "add": 2}"#, 400),
        ("alice", "balance", r#"{}"#, 400),
        ("alice", "balance", r#"{"add": "ten"}"#, 400),
        ("alice", "balance", r#"{"add": 1, "extra": true}"#, 400),
        ("bob", "balance", r#"{"add": 1}"#, 400),
        ("mallory", "balance", r#"{"add": 1}"#, 404),
        (
            "alice",
            "reset",
            r#"{"limit": "tokens_per_fortnight"}"#,
            400,
        ),
    ];
    for (who, action, body, status) in bad {
        let r = gw.admin_post(who, action, body);
        assert_eq!(r.status, status, "{who}/{action} {body}: {}", r.text());
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let r = gw.admin_request("GET", "/admin/consumers/mallory", Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(int(&gw.admin_consumer("alice")["balance"]), balance);
    assert!(
        admin_records(&gw).is_empty(),
        "a refused admin call left an audit record"
    );

    // ---- a top-up lets the next request through
    let r = gw.admin_post("alice", "balance", r#"{"add": 1000}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["previous"], balance, "{v}");
    assert_eq!(v["balance"], balance + 1000, "{v}");
    let r = gw.chat(ALICE, &[("x-request-id", "bal-topped-up")], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = gw.audit_record("bal-topped-up");
    let after_topup = balance + 1000 - tokens_of(&rec) as i64;
    assert_eq!(int(&gw.admin_consumer("alice")["balance"]), after_topup);

    // ---- set to zero refuses again
    let r = gw.admin_post("alice", "balance", r#"{"set": 0}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["previous"], after_topup);
    let r = gw.chat(ALICE, &[("x-request-id", "bal-zero")], &body);
    assert_refused(&r, "insufficient_quota");

    let list = gw.admin_request("GET", "/admin/consumers", Some(ADMIN_TOKEN), None);
    assert_eq!(list.status, 200, "{}", list.text());
    let list = list.json();
    assert_eq!(list["currency"], "USD", "{list}");
    let entry = |name: &str| {
        list["consumers"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {list}"))
    };
    assert_eq!(entry("alice")["balance"], 0, "{list}");
    assert_eq!(entry("alice")["requests"], admitted as u64 + 1, "{list}");
    assert_eq!(entry("bob")["balance"], Value::Null, "{list}");

    // Each change is one audit line of its own.
    let changes = admin_records(&gw);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    for (rec, (before, after)) in changes
        .iter()
        .zip([(balance, balance + 1000), (after_topup, 0)])
    {
        assert_eq!(rec["kind"], "admin", "{rec}");
        assert_eq!(rec["action"], "balance", "{rec}");
        assert_eq!(rec["consumer"], "alice", "{rec}");
        assert_eq!(rec["before"], before, "{rec}");
        assert_eq!(rec["after"], after, "{rec}");
        assert_eq!(rec["client"], "127.0.0.1", "{rec}");
        assert!(rec["ts"].is_string(), "{rec}");
    }
}

// 3 ---------------------------------------------------------------------------

/// Success (plain and streamed), upstream 500, upstream timeout, a client
/// that leaves while the upstream thinks and a client abort mid-stream each
/// settle exactly once to what their audit record says: the admin API's
/// usage totals, the balance and the token window all agree with the sum
/// over the records, and no request is left holding a concurrency slot.
#[test]
fn every_path_settles_to_its_audited_usage() {
    const START: i64 = 100_000;
    const TPM: u64 = 600;
    const WEIGHT: u64 = 2;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.providers[0].first_byte_timeout_ms = 300;
    setup
        .with_admin_token()
        // One upstream attempt per request: each path below is exactly
        // the failure it names, not a retry of it.
        .extra("", "[retry]\nmax_attempts = 1")
        .extra("quota", &format!("completion_weight = {WEIGHT}.0"))
        .extra(
            "consumers.alice",
            &format!(
                "balance = {START}\n\
                 limits = {{ tokens_per_minute = {TPM}, concurrent_requests = 10 }}"
            ),
        );
    let gw = Gateway::start(&setup);
    let plain = chat(MINI, Some(100), false);
    let streamed = chat(MINI, Some(100), true);
    let prompt = prompt_tokens(MINI_UPSTREAM, &plain);
    let started = Instant::now();

    let r = gw.chat(ALICE, &[("x-request-id", "path-ok")], &plain);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header_num(&r, "x-ratelimit-limit-tokens"), TPM);
    // Reserved: prompt + weight x max_tokens, read before settlement.
    assert_eq!(
        header_num(&r, "x-ratelimit-remaining-tokens"),
        TPM - prompt - WEIGHT * 100
    );

    let mut events = open_stream(&gw, &[("x-request-id", "path-stream")], &streamed);
    let rest = events.rest();
    assert!(rest.last().is_some_and(Event::is_done), "no [DONE]");
    assert_eq!(contents(&rest), mock::chat_content(16));

    let r = gw.chat(
        ALICE,
        &[("x-request-id", "path-500"), ("x-mock-status", "500")],
        &plain,
    );
    assert_eq!(r.status, 500, "{}", r.text());

    let r = gw.chat(
        ALICE,
        &[("x-request-id", "path-timeout"), ("x-mock-ttfb-ms", "3000")],
        &plain,
    );
    assert_eq!(r.status, 504, "{}", r.text());

    // The client hangs up while the provider has not answered yet.
    let mut c = gw.connect();
    c.send(&chat_request(
        Some(ALICE),
        &[("x-request-id", "path-left"), ("x-mock-ttfb-ms", "3000")],
        &plain,
    ));
    std::thread::sleep(Duration::from_millis(20));
    drop(c);

    let mut events = open_stream(
        &gw,
        &[
            ("x-request-id", "path-abort"),
            ("x-mock-chunks", "50"),
            ("x-mock-gap-ms", "50"),
        ],
        &streamed,
    );
    for _ in 0..3 {
        events.next_event().expect("an event before hanging up");
    }
    drop(events);
    wait_for(
        "the mock to see the stream aborted",
        Duration::from_secs(3),
        || (counter(&mock.stats.streams_aborted) >= 1).then_some(()),
    );

    let ids: Vec<String> = [
        "path-ok",
        "path-stream",
        "path-500",
        "path-timeout",
        "path-left",
        "path-abort",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let recs = records_of(&gw, &ids);
    let [ok, stream, e500, timeout, left, abort] = [0, 1, 2, 3, 4, 5].map(|i| &recs[i]);
    for rec in [ok, stream] {
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["usage_source"], "provider", "{rec}");
        assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
        assert_eq!(rec["completion_tokens"], 16, "{rec}");
    }
    assert_eq!(e500["status"], 500, "{e500}");
    assert_eq!(timeout["status"], 504, "{timeout}");
    assert_eq!(timeout["error"], "upstream_timeout", "{timeout}");
    assert_eq!(left["status"], 499, "{left}");
    for rec in [e500, timeout, left] {
        assert_eq!(tokens_of(rec), 0, "no answer, no tokens: {rec}");
        assert_eq!(rec["usage_source"], "none", "{rec}");
    }
    assert_eq!(abort["status"], 499, "{abort}");
    assert_eq!(abort["usage_source"], "estimated", "{abort}");
    let generated = num(&abort["completion_tokens"]);
    assert!((1..50).contains(&generated), "{abort}");
    assert_eq!(abort["prompt_tokens"], prompt, "{abort}");

    let sum = |f: &dyn Fn(&Value) -> u64| recs.iter().map(f).sum::<u64>();
    let prompt_sum = sum(&|r| num(&r["prompt_tokens"]));
    let completion_sum = sum(&|r| num(&r["completion_tokens"]));
    let weighted = prompt_sum + WEIGHT * completion_sum;

    let d = gw.admin_consumer("alice");
    let elapsed = started.elapsed();
    let usage = &d["usage"][MINI];
    assert_eq!(usage["requests"], 6, "one settlement per request: {d}");
    assert_eq!(
        d["limits"]["concurrent_requests"]["in_flight"], 0,
        "a request still holds its concurrency slot: {d}"
    );
    assert_eq!(usage["prompt_tokens"], prompt_sum, "{d}");
    assert_eq!(usage["completion_tokens"], completion_sum, "{d}");
    assert_eq!(usage["cached_tokens"], 0, "{d}");
    assert_eq!(
        int(&d["balance"]),
        START - (prompt_sum + completion_sum) as i64,
        "balance drop must equal the audited usage: {d}"
    );
    let window = &d["limits"]["tokens_per_minute"];
    assert_eq!(window["limit"], TPM, "{d}");
    let remaining = num(&window["remaining"]);
    let floor = TPM - weighted;
    let refilled = refill(TPM, MINUTE, elapsed);
    assert!(
        weighted > refilled,
        "test too slow to tell usage ({weighted}) from refill ({refilled})"
    );
    assert!(
        remaining + 1 >= floor && remaining <= floor + refilled + 1,
        "tokens_per_minute remaining {remaining}, want {TPM} - {weighted} weighted used \
         (+ up to {refilled} refilled in {elapsed:?}): {d}"
    );
    assert!(num(&window["reset_ms"]) > 0, "{d}");
}

// 4 ---------------------------------------------------------------------------

/// A priced model spends a daily budget by the price table (cached prompt
/// tokens at their own price); the budget refuses with
/// `insufficient_quota` and a Retry-After no later than the next UTC day;
/// audit, metrics and the admin API agree on the cost.
#[test]
fn budget_per_day_is_spent_by_the_price_table_then_refuses() {
    const BUDGET_MICROS: u64 = 100_000; // 0.1 USD
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra(&format!("models.{MINI}"), &PRICE.toml())
        .extra("consumers.alice", "limits = { budget_per_day = 0.1 }");
    let gw = Gateway::start(&setup);
    // max_tokens = what the mock answers, so the reserved cost is the cost.
    let body = chat(MINI, Some(16), false);
    let prompt = prompt_tokens(MINI_UPSTREAM, &body);
    let full_cost = PRICE.cost_micros(prompt, 0, 16);

    let mut ids = Vec::new();
    let mut refusal = None;
    for i in 0..50 {
        let id = format!("budget-{i}");
        // The first answer reports 10 cached prompt tokens.
        let cached = if i == 0 { "10" } else { "0" };
        let r = gw.chat(
            ALICE,
            &[("x-request-id", &id), ("x-mock-cached-tokens", cached)],
            &body,
        );
        ids.push(id);
        if r.status != 200 {
            refusal = Some(r);
            break;
        }
    }
    let refusal = refusal.expect("a budget of 0.1 never ran out");
    let e = assert_refused(&refusal, "insufficient_quota");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("budget_per_day")),
        "{e}"
    );
    let retry = header_num(&refusal, "retry-after");
    assert!(
        (1..=86_400).contains(&retry),
        "retry-after {retry}: the budget comes back at the next UTC day"
    );

    let recs = records_of(&gw, &ids);
    let (ok, last) = recs.split_at(recs.len() - 1);
    assert!(ok.len() >= 2, "{recs:#?}");
    let mut spent = 0;
    for (i, rec) in ok.iter().enumerate() {
        let cached = if i == 0 { 10 } else { 0 };
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["prompt_tokens"], prompt, "{rec}");
        assert_eq!(rec["cached_tokens"], cached, "{rec}");
        assert_eq!(rec["completion_tokens"], 16, "{rec}");
        assert_eq!(rec["currency"], "USD", "{rec}");
        let want = PRICE.cost_micros(prompt, cached, 16);
        assert_eq!(micros(&rec["cost"]), want, "cost by the price table: {rec}");
        spent += want;
    }
    assert_eq!(last[0]["limit"], "budget_per_day", "{}", last[0]);
    assert_eq!(last[0]["status"], 429, "{}", last[0]);
    assert_eq!(micros(&last[0]["cost"]), 0, "{}", last[0]);
    assert!(spent <= BUDGET_MICROS, "spent {spent} of {BUDGET_MICROS}");
    assert!(
        spent + full_cost > BUDGET_MICROS,
        "refused with {spent} spent although {full_cost} more fit in {BUDGET_MICROS}"
    );

    let metrics = gw.metrics();
    let metric = metric_value(
        &metrics,
        "sluice_cost_total",
        &[("consumer", "alice"), ("model", MINI)],
    )
    .unwrap_or_else(|| panic!("no sluice_cost_total for alice/{MINI}:\n{metrics}"));
    assert_eq!(
        (metric * 1e6).round() as u64,
        spent,
        "sluice_cost_total {metric}"
    );

    let d = gw.admin_consumer("alice");
    let budget = &d["limits"]["budget_per_day"];
    assert_eq!(micros(&budget["limit"]), BUDGET_MICROS, "{d}");
    assert_eq!(micros(&budget["spent"]), spent, "{d}");
    assert_eq!(micros(&d["usage"][MINI]["cost"]), spent, "{d}");
    assert_eq!(d["usage"][MINI]["cached_tokens"], 10, "{d}");
    assert_eq!(d["usage"][MINI]["requests"], ok.len() as u64, "{d}");
    assert_eq!(d["currency"], "USD", "{d}");
}

// 5 ---------------------------------------------------------------------------

/// What the admin API says survives a restart: balance, budget spend and
/// usage totals exactly; the consumer's token window and the consumer x
/// model request window within what they refill in `gap`, the time from
/// reading `before` to reading `after`.
fn assert_same_state(before: &Value, after: &Value, gap: Duration, what: &str) {
    assert_eq!(after["balance"], before["balance"], "{what}: balance");
    assert_eq!(
        after["limits"]["budget_per_day"], before["limits"]["budget_per_day"],
        "{what}: budget spend"
    );
    assert_eq!(after["usage"], before["usage"], "{what}: usage totals");
    let was = num(&before["limits"]["tokens_per_day"]["remaining"]);
    let is = num(&after["limits"]["tokens_per_day"]["remaining"]);
    let refilled = refill(100_000, DAY, gap);
    assert!(
        is + 1 >= was && is <= was + refilled + 1,
        "{what}: tokens_per_day remaining {is}, was {was} (+ up to {refilled} in {gap:?})"
    );
    let window = |d: &Value| num(&d["model_limits"][MINI]["requests_per_minute"]["remaining"]);
    let (was, is) = (window(before), window(after));
    let refilled = refill(RESTART_RPM, MINUTE, gap);
    assert!(
        is + 1 >= was && is <= was + refilled + 1,
        "{what}: {MINI} requests_per_minute remaining {is}, was {was} (+ up to {refilled})"
    );
}

/// The consumer x model request window of the restart test.
const RESTART_RPM: u64 = 20;

/// Quota state lives in `[quota] state_path` (redb). A SIGTERM saves it on
/// the way out; a `kill -9` loses at most the last `flush_interval_ms` of
/// changes. The test kills only after a quiet stretch of three flush
/// intervals with every request settled, so the bound it asserts is
/// equality: nothing may be lost, nothing counted twice. (A kill with
/// requests in flight is `kill_9_with_a_request_in_flight_...` below.)
#[test]
fn quota_state_survives_sigterm_and_kill_9() {
    const FLUSH_MS: u64 = 200;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra("quota", &format!("flush_interval_ms = {FLUSH_MS}"))
        .extra(&format!("models.{MINI}"), &PRICE.toml())
        .extra(
            "consumers.alice",
            &format!(
                "balance = 5000\n\
                 limits = {{ budget_per_day = 10.0, tokens_per_day = 100000 }}\n\
                 model_limits = {{ \"{MINI}\" = {{ requests_per_minute = {RESTART_RPM} }} }}"
            ),
        );
    let body = chat_body(MINI, false);
    let run = |gw: &Gateway, tag: &str| {
        let ids: Vec<String> = (0..3).map(|i| format!("{tag}-{i}")).collect();
        let mut c = gw.connect();
        for id in &ids {
            c.send(&chat_request(Some(ALICE), &[("x-request-id", id)], &body));
            let r = c.read_response();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        records_of(gw, &ids)
    };

    let mut gw = Gateway::start(&setup);
    let recs = run(&gw, "first");
    let used: u64 = recs.iter().map(tokens_of).sum();
    let before = gw.admin_consumer("alice");
    assert_eq!(int(&before["balance"]), 5000 - used as i64, "{before}");
    assert!(
        micros(&before["limits"]["budget_per_day"]["spent"]) > 0,
        "{before}"
    );
    let read_at = Instant::now();

    // ---- graceful: SIGTERM saves on the way out
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "sluice exited with {status}");
    let dir = gw.take_dir();
    drop(gw);
    let mut gw = Gateway::start_in(&setup, dir);
    let after = gw.admin_consumer("alice");
    assert_same_state(&before, &after, read_at.elapsed(), "after SIGTERM");
    assert!(
        num(&after["limits"]["tokens_per_day"]["remaining"]) < 100_000 - used / 2,
        "the token window came back full: {after}"
    );

    // ---- kill -9 after every change was settled and one flush went by
    let recs = run(&gw, "second");
    let used2: u64 = recs.iter().map(tokens_of).sum();
    let before = gw.admin_consumer("alice");
    assert_eq!(
        int(&before["balance"]),
        5000 - (used + used2) as i64,
        "{before}"
    );
    let read_at = Instant::now();
    assert_eq!(before["usage"][MINI]["requests"], 6, "{before}");
    std::thread::sleep(Duration::from_millis(3 * FLUSH_MS));
    gw.sigkill();
    let dir = gw.take_dir();
    drop(gw);
    let gw = Gateway::start_in(&setup, dir);
    let after = gw.admin_consumer("alice");
    assert_same_state(&before, &after, read_at.elapsed(), "after kill -9");

    // The restarted node keeps counting from there.
    let r = gw.chat(ALICE, &[("x-request-id", "third-0")], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = gw.audit_record("third-0");
    let d = gw.admin_consumer("alice");
    assert_eq!(
        int(&d["balance"]),
        int(&after["balance"]) - tokens_of(&rec) as i64
    );
    assert_eq!(d["usage"][MINI]["requests"], 7, "{d}");
}

// 6 ---------------------------------------------------------------------------

/// `model_limits` add a consumer x model window on top of the consumer's
/// own; a refusal there takes nothing from the consumer's windows; other
/// models are unaffected; `unlimited` exempts a consumer from a default;
/// the admin API resets a per-model window.
#[test]
fn consumer_model_limits_and_unlimited_defaults() {
    const TPD: u64 = 100_000;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra("", "[quota.defaults]\nrequests_per_second = 1")
        .extra(
            "consumers.alice",
            &format!(
                "unlimited = [\"requests_per_second\"]\nlimits = {{ tokens_per_day = {TPD} }}\n\
                 model_limits = {{ \"{MINI}\" = {{ requests_per_minute = 2 }} }}"
            ),
        );
    let gw = Gateway::start(&setup);
    let started = Instant::now();
    let mini = chat_body(MINI, false);
    let turbo = chat_body(TURBO, false);
    let mut alice_ids = Vec::new();
    let mut send = |key: &str, id: &str, body: &str| {
        if key == ALICE {
            alice_ids.push(id.to_string());
        }
        gw.chat(key, &[("x-request-id", id)], body)
    };

    // Two per minute on MINI; the third is refused by that window.
    for (i, left) in [(0, 1), (1, 0)] {
        let r = send(ALICE, &format!("mini-{i}"), &mini);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(header_num(&r, "x-ratelimit-limit-requests"), 2);
        assert_eq!(header_num(&r, "x-ratelimit-remaining-requests"), left);
        assert_eq!(header_num(&r, "x-ratelimit-limit-tokens"), TPD);
    }
    let r = send(ALICE, "mini-2", &mini);
    let e = assert_refused(&r, "rate_limit_exceeded");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("requests_per_minute")),
        "{e}"
    );
    let retry = header_num(&r, "retry-after");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(header_num(&r, "x-ratelimit-remaining-requests"), 0);

    // Another model still works, and requests_per_second = 1 from the
    // defaults does not apply to alice.
    for i in 0..5 {
        let r = send(ALICE, &format!("turbo-{i}"), &turbo);
        assert_eq!(
            r.status,
            200,
            "alice is exempt from requests_per_second: {}",
            r.text()
        );
        assert!(
            r.header("x-ratelimit-limit-requests").is_none(),
            "{:?}",
            r.head
        );
    }
    // bob has the default: at most one request per second.
    let mut bob = Vec::new();
    for i in 0..5 {
        bob.push(send(BOB, &format!("bob-{i}"), &turbo));
    }
    assert_eq!(bob[0].status, 200, "{}", bob[0].text());
    let bob_refused: Vec<usize> = (0..5).filter(|&i| bob[i].status == 429).collect();
    assert!(
        !bob_refused.is_empty(),
        "bob sent 5 at once with requests_per_second = 1"
    );
    for &i in &bob_refused {
        assert_refused(&bob[i], "rate_limit_exceeded");
        assert_eq!(header_num(&bob[i], "retry-after"), 1);
        assert_eq!(header_num(&bob[i], "x-ratelimit-limit-requests"), 1);
    }

    let recs = records_of(&gw, &alice_ids);
    let refused = &recs[2];
    assert_eq!(refused["status"], 429, "{refused}");
    assert_eq!(refused["limit"], "requests_per_minute", "{refused}");
    assert_eq!(refused["error"], "rate_limited", "{refused}");
    let bob_ids: Vec<String> = bob_refused.iter().map(|i| format!("bob-{i}")).collect();
    for rec in records_of(&gw, &bob_ids) {
        assert_eq!(rec["limit"], "requests_per_second", "{rec}");
        assert_eq!(rec["consumer"], "bob", "{rec}");
    }

    // The refusal by the MINI window gave back what it had taken from
    // alice's own tokens_per_day: only the admitted requests count.
    let used: u64 = recs.iter().map(tokens_of).sum();
    let d = gw.admin_consumer("alice");
    let refilled = refill(TPD, DAY, started.elapsed());
    let remaining = num(&d["limits"]["tokens_per_day"]["remaining"]);
    assert!(
        remaining + 1 >= TPD - used && remaining <= TPD - used + refilled + 1,
        "tokens_per_day remaining {remaining}, want {TPD} - {used} (+ up to {refilled}): {d}"
    );
    assert!(d["limits"].get("requests_per_second").is_none(), "{d}");
    let mini_window = &d["model_limits"][MINI]["requests_per_minute"];
    assert_eq!(mini_window["limit"], 2, "{d}");
    assert_eq!(mini_window["remaining"], 0, "{d}");
    let bob_d = gw.admin_consumer("bob");
    assert_eq!(
        bob_d["limits"]["requests_per_second"]["limit"], 1,
        "{bob_d}"
    );

    // ---- admin reset of the per-model window
    let bad = [
        // alice has no requests_per_minute of her own, only on MINI.
        r#"{"limit": "requests_per_minute"}"#.to_string(),
        r#"{"limit": "balance"}"#.to_string(),
        r#"{"limit": "concurrent_requests"}"#.to_string(),
        r#"{"limit": "requests_per_minute", "model": "gpt-9-ultra"}"#.to_string(),
        // TURBO has no limits of alice's own.
        format!(r#"{{"limit": "all", "model": "{TURBO}"}}"#),
    ];
    for body in &bad {
        let r = gw.admin_post("alice", "reset", body);
        assert_eq!(r.status, 400, "reset {body}: {}", r.text());
    }
    assert!(admin_records(&gw).is_empty());
    let r = gw.admin_post(
        "alice",
        "reset",
        &format!(r#"{{"limit": "requests_per_minute", "model": "{MINI}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reset"], json!(["requests_per_minute"]));
    let r = gw.chat(ALICE, &[("x-request-id", "mini-after-reset")], &mini);
    assert_eq!(r.status, 200, "the reset window admits again: {}", r.text());
    let r = gw.admin_post("alice", "reset", r#"{"limit": "all"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let d = gw.admin_consumer("alice");
    assert_eq!(d["limits"]["tokens_per_day"]["remaining"], TPD, "{d}");

    let changes = admin_records(&gw);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(changes[0]["action"], "reset", "{}", changes[0]);
    assert_eq!(changes[0]["model"], MINI, "{}", changes[0]);
    assert_eq!(changes[0]["limits"], json!(["requests_per_minute"]));
    assert_eq!(changes[1]["model"], Value::Null, "{}", changes[1]);
    assert_eq!(changes[1]["limits"], json!(["tokens_per_day"]));
}

// Regressions ----------------------------------------------------------------

/// Bug: usage totals are kept only for requests that hold a reservation,
/// and `Admission::on_request` reserves only when the consumer (or
/// consumer x model) has some limit or balance (`Engine::is_limited`). A
/// consumer without limits never shows up in the admin API's usage, cost
/// or request totals (DESIGN.md §2.16: totals per consumer/model in
/// metrics *and* the admin API), though metrics and audit count it.
#[test]
fn usage_totals_cover_consumers_without_limits() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.with_admin_token();
    let gw = Gateway::start(&setup);
    let r = gw.chat(
        BOB,
        &[("x-request-id", "bob-free")],
        &chat_body(TURBO, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = gw.audit_record("bob-free");
    let d = gw.admin_consumer("bob");
    let usage = &d["usage"][TURBO];
    assert_eq!(
        usage["requests"], 1,
        "bob's request is not in his totals: {d}"
    );
    assert_eq!(usage["prompt_tokens"], rec["prompt_tokens"], "{d}");
    assert_eq!(usage["completion_tokens"], rec["completion_tokens"], "{d}");
}

/// Bug: `Balance::add` (`edge/src/quota/cell.rs`) adds with a wrapping
/// `fetch_add` and saturates only the value it returns, so a large
/// `{"add": N}` stores a wrapped, hugely negative balance while the admin
/// API answers with the saturated positive one; the consumer is then
/// refused with `insufficient_quota` right after being topped up.
#[test]
fn a_huge_balance_top_up_does_not_wrap_around() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra("consumers.alice", "balance = 1000");
    let gw = Gateway::start(&setup);
    let r = gw.admin_post("alice", "balance", &format!(r#"{{"add": {}}}"#, i64::MAX));
    let answered = if r.status == 200 {
        Some(int(&r.json()["balance"]))
    } else {
        // Refusing the overflow with a 400 would be fine too.
        assert_eq!(r.status, 400, "{}", r.text());
        None
    };
    let stored = int(&gw.admin_consumer("alice")["balance"]);
    if let Some(answered) = answered {
        assert_eq!(
            stored, answered,
            "the admin API answered one balance and kept another"
        );
    }
    assert!(stored >= 1000, "a top-up took the balance down to {stored}");
    let r = gw.chat(ALICE, &[], &chat_body(MINI, false));
    assert_eq!(r.status, 200, "refused right after a top-up: {}", r.text());
}

/// Bug: the quota store snapshots the engine's live counters, which hold
/// the reservations of requests still in flight (prompt + max_tokens, here
/// the 4096 default). After a `kill -9` those holds come back as spent:
/// the restored balance is short by a request that was never settled and
/// has no audit record, so balance != start - sum(audit) forever (DESIGN.md
/// §2: one settlement per request, nothing counted twice). The store's own
/// promise is "a kill -9 loses at most one flush interval of usage".
#[test]
fn kill_9_with_a_request_in_flight_does_not_persist_its_reservation() {
    const START: i64 = 100_000;
    const FLUSH_MS: u64 = 100;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra("quota", &format!("flush_interval_ms = {FLUSH_MS}"))
        .extra("consumers.alice", &format!("balance = {START}"));
    let mut gw = Gateway::start(&setup);
    let mut c = gw.connect();
    c.send(&chat_request(
        Some(ALICE),
        &[("x-request-id", "in-flight"), ("x-mock-ttfb-ms", "8000")],
        &chat_body(MINI, false),
    ));
    wait_for(
        "the request to reach the mock",
        Duration::from_secs(5),
        || (counter(&mock.stats.requests) == 1).then_some(()),
    );
    // Several flushes while the request is held upstream.
    std::thread::sleep(Duration::from_millis(5 * FLUSH_MS));
    gw.sigkill();
    drop(c);
    let dir = gw.take_dir();
    drop(gw);
    let gw = Gateway::start_in(&setup, dir);
    let settled: u64 = gw
        .audit()
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(tokens_of)
        .sum();
    assert_eq!(settled, 0, "no request finished before the kill");
    let d = gw.admin_consumer("alice");
    assert_eq!(
        int(&d["balance"]),
        START,
        "the in-flight request's reservation was persisted as spent: {d}"
    );
}

/// Bug: a response reaches the client before its reservation is settled.
/// `proxy::relay_whole` (and `relay_stream`) write the whole answer, and
/// only afterwards does `conn::serve` drop its `Pending`, whose `Drop`
/// calls `Core::finish` -> `Accounting::on_done` (which, when the provider
/// reported no usage, first runs the tokenizer over prompt and answer) ->
/// `Admission::on_done` -> `Engine::settle`. Until then the request still
/// holds prompt + max_tokens (4096 by default). A client that waits for
/// each answer before sending the next request, on a new connection that
/// the kernel hands to the other core, is refused with
/// `insufficient_quota` (or `rate_limit_exceeded` by a token window) for
/// tokens it no longer uses.
///
/// Here the answers carry no usage and are 2000 tokens long, so the
/// tokenizer keeps the window open for a while; the balance (100 000)
/// covers all 40 strictly sequential requests (40 x ~2026) but not one
/// unsettled reservation (prompt + max_tokens 200 000), so every refusal is
/// this race. The same race shows without estimation, only less often.
#[test]
fn a_delivered_response_no_longer_holds_its_reservation() {
    const START: i64 = 100_000;
    const N: usize = 40;
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup
        .with_admin_token()
        .extra("consumers.alice", &format!("balance = {START}"));
    let gw = Gateway::start(&setup);
    let body = chat(MINI, Some(200_000), false);
    let headers = [("x-mock-omit-usage", "1"), ("x-mock-chunks", "2000")];
    let mut refused = Vec::new();
    for i in 0..N {
        let r = gw.chat(ALICE, &headers, &body);
        match r.status {
            200 => {}
            429 => refused.push(i),
            other => panic!("request {i}: {other} {}", r.text()),
        }
    }
    let records = gw.audit_settled(N);
    let used: u64 = records.iter().map(tokens_of).sum();
    assert!(
        used < START as u64,
        "the test's balance is too small: {used} used"
    );
    assert!(
        refused.is_empty(),
        "requests {refused:?} of {N} were refused although each came only after the one \
         before had been answered, and the balance ({START}) covers all of them ({used})"
    );
}

/// Regression (fixed in b8ac603): with the default `fallback_on` (429,
/// 5xx, timeout) a model whose only target is a provider with one key
/// answered an upstream 500 (or a first-byte timeout) by retrying the same
/// target; `pool.pick` excluded the one key as already tried and the
/// client got `429 rate_limit_exceeded` "every API key of provider 'mock'
/// is cooling down" with a Retry-After, though no key was cooling and no
/// limit of the client's was hit: a client reads that as its own rate
/// limit. With nothing left to try, the provider's answer must go back.
#[test]
fn an_upstream_500_with_nothing_left_to_try_is_not_reported_as_a_rate_limit() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    setup.providers[0].first_byte_timeout_ms = 300;
    // Retries always within budget, so the outcome does not depend on
    // how many requests came before.
    setup.extra("", "[retry]\nbudget_ratio = 1.0");
    let gw = Gateway::start(&setup);
    let body = chat_body(MINI, false);
    let r = gw.chat(ALICE, &[("x-mock-status", "500")], &body);
    assert_eq!(r.status, 500, "{}", r.text());
    let r = gw.chat(ALICE, &[("x-mock-ttfb-ms", "2000")], &body);
    assert_eq!(r.status, 504, "{}", r.text());
}
