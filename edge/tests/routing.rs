//! End-to-end tests of model routing, canary / A-B splits, endpoint health
//! (circuit breakers, active checks) and degradation (issue 6).
//!
//! Each test runs the real `sluice` binary against in-process mocks on
//! ephemeral ports (harness in `common`, helpers in `common::routing` and
//! `common::failover`). `Setup` writes the provider `mock` with the models
//! `gpt-4o-mini` and `gpt-3.5-turbo` (consumer `bob` may only use the
//! latter, so it stays); every other provider, model and consumer is
//! appended as raw TOML. What sluice did is read from the client's
//! response, the mocks' counters and last request, the audit record
//! (`upstream_model`, `variant`, and `attempts` when there was more than
//! one try) and `/metrics` (`sluice_variant_*`,
//! `sluice_upstream_endpoint_*`). Every wait is bounded.
//!
//! A provider with several endpoints and one key cannot retry a failed
//! attempt on its other endpoint: `proxy::elsewhere` only moves to the
//! next target or to an untried key of the same one. The health tests that
//! need the client to see 200 therefore give the provider three keys;
//! `a_failed_attempt_is_retried_on_another_endpoint_of_a_keyless_provider`
//! shows what a keyless provider does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // helpers other test files use
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::failover::{closed_base_url, mock_slow};
use common::routing::*;
use common::*;
use serde_json::Value;
use sluice_bench::mock::{MockHandle, Script};

// ------------------------------------------------------------------ helpers

/// Fast retries: three attempts, 1–10 ms of backoff.
const RETRY: &str = "[retry]\nmax_attempts = 3\nbackoff_base_ms = 1\nbackoff_max_ms = 10";

/// A gateway whose model "m" is served by provider `name` at `endpoints`,
/// with the provider's extra `settings` (keys, health) and, when `retry`,
/// [`RETRY`]; its other providers point at `mock`.
fn model_m_on(
    mock: &MockHandle,
    name: &str,
    endpoints: &[&str],
    settings: &str,
    retry: bool,
) -> Gateway {
    let mut setup = Setup::new(mock);
    setup.extra(
        "",
        &format!(
            "{}\n[[models]]\nname = \"m\"\nprovider = \"{name}\"\n\n{}",
            provider_toml(name, endpoints, settings),
            if retry { RETRY } else { "" }
        ),
    );
    Gateway::start(&setup)
}

fn requests(m: &MockHandle) -> u64 {
    counter(&m.stats.requests)
}

/// The model the mock last received.
fn last_model(m: &MockHandle) -> String {
    let last = m.stats.last_request().expect("the mock saw a request");
    last.json()["model"]
        .as_str()
        .unwrap_or_else(|| panic!("no model in {:?}", last.json()))
        .to_string()
}

/// One chat on a fresh connection as alice.
fn ask(gw: &Gateway, model: &str) -> Response {
    gw.chat(ALICE, &[], &chat_body(model, false))
}

/// The audit records of `model` among `records`.
fn of_model<'a>(records: &'a [Value], model: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["model"] == model).collect()
}

/// `sluice_variant_requests_total{model, variant, outcome}`.
fn variant_requests(text: &str, model: &str, variant: &str, outcome: &str) -> f64 {
    metric_value(
        text,
        "sluice_variant_requests_total",
        &[("model", model), ("variant", variant), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// The number of entries in a record's `attempts` (1 when it has none:
/// the field is only written for more than one).
fn attempts(record: &Value) -> usize {
    record["attempts"].as_array().map_or(1, Vec::len)
}

/// Send single requests until `endpoint`'s circuit opens (at most
/// `max` requests, each of which must get 200); returns when the
/// request that opened it was sent.
fn eject(gw: &Gateway, model: &str, provider: &str, endpoint: &str, max: usize) -> Instant {
    for i in 0..max {
        let sent = Instant::now();
        let r = ask(gw, model);
        assert_eq!(r.status, 200, "request {i} while ejecting: {}", r.text());
        if gw.circuit(provider, endpoint) == 1.0 {
            return sent;
        }
    }
    panic!(
        "{endpoint} not ejected after {max} requests\n{}",
        gw.metrics()
    );
}

// ------------------------------------------------------------ model mapping

/// Exact names first (even one written after a pattern that matches it),
/// then patterns in file order; `$1` and `*` in `upstream_model` are
/// filled from the requested name; no match is a 404 `model_not_found`
/// that never reaches the provider.
#[test]
fn model_names_route_by_exact_name_then_pattern_with_captures() {
    let upstream = mock();
    let mut setup = Setup::new(&upstream);
    setup.extra(
        "",
        "[[models]]\nname = \"gpt-4o-family\"\nmatch = \"gpt-4o-*\"\nprovider = \"mock\"\n\n\
         [[models]]\nname = \"gpt-4o-audio\"\nprovider = \"mock\"\nupstream_model = \"audio-exact\"\n\n\
         [[models]]\nname = \"llama\"\nmatch = 're:^llama-(.*)$'\nprovider = \"mock\"\n\
         upstream_model = \"meta/llama-$1\"\n\n\
         [[models]]\nname = \"llama-late\"\nmatch = \"llama-*\"\nprovider = \"mock\"\n\
         upstream_model = \"never\"\n\n\
         [[models]]\nname = \"vendor\"\nmatch = \"vendor-*\"\nprovider = \"mock\"\n\
         upstream_model = \"acme/*\"",
    );
    let gw = Gateway::start(&setup);

    // (requested, upstream model sent, why)
    let table = [
        (
            MINI,
            MINI_UPSTREAM,
            "exact entry, although gpt-4o-* matches too",
        ),
        (
            "gpt-4o-audio",
            "audio-exact",
            "exact entry written after the wildcard",
        ),
        (
            "gpt-4o-2024-08-06",
            "gpt-4o-2024-08-06",
            "wildcard; upstream_model defaults to $0",
        ),
        (
            "llama-3.1-70b",
            "meta/llama-3.1-70b",
            "regex capture $1; the earlier pattern wins",
        ),
        ("llama-", "meta/llama-", "the group may match nothing"),
        (
            "vendor-x1",
            "acme/vendor-x1",
            "* in upstream_model is the requested name",
        ),
    ];
    for (requested, sent, why) in table {
        let r = ask(&gw, requested);
        assert_eq!(r.status, 200, "{requested} ({why}): {}", r.text());
        assert_eq!(last_model(&upstream), sent, "{requested}: {why}");
        let record = gw.audit_record(&request_id(&r));
        assert_eq!(record["model"], requested, "{why}");
        assert_eq!(record["upstream_model"], sent, "{why}");
        assert_eq!(record["provider"], "mock");
        assert_eq!(record["variant"], Value::Null, "no split here");
    }

    let before = requests(&upstream);
    for requested in ["claude-3-opus", "gpt-4o", "xllama-3", "GPT-4O-MINI"] {
        let r = ask(&gw, requested);
        assert_eq!(r.status, 404, "{requested}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "model_not_found", "{requested}");
        let record = gw.audit_record(&request_id(&r));
        assert_eq!(record["upstream_model"], Value::Null, "{requested}");
    }
    assert_eq!(
        requests(&upstream),
        before,
        "a 404 never reaches the provider"
    );

    // allowed_models names the entry (its label), not the requested name.
    let r = gw.chat(BOB, &[], &chat_body("llama-3", false));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");
}

// ------------------------------------------------------------ canary splits

/// `sticky = "none"`: each request picks by weight. Over 2,000 requests a
/// 10 % canary gets 200 ± 4σ (σ = √(2000·0.1·0.9) ≈ 13.4): 146..=254.
/// The audit log, the variant metrics and the two providers' request
/// counts all tell the same split.
#[test]
fn a_90_10_split_without_stickiness_lands_within_binomial_bounds() {
    const TOTAL: usize = 2000;
    const THREADS: usize = 4;
    let stable = mock();
    let canary = mock();
    let mut setup = Setup::new(&stable);
    setup.extra(
        "",
        &format!(
            "[[providers]]\nname = \"canary\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             api_key = \"{MOCK_KEY}\"\n\n\
             [[models]]\nname = \"gpt-4o\"\nvariants = [\n\
             {{ name = \"stable\", weight = 90, provider = \"mock\", model = \"gpt-4o-2024-08-06\" }},\n\
             {{ name = \"canary\", weight = 10, provider = \"canary\", model = \"gpt-4.1\" }},\n]\n\
             sticky = \"none\"",
            base_url(&canary)
        ),
    );
    let gw = Gateway::start(&setup);

    std::thread::scope(|s| {
        let gw = &gw;
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(move || chats(gw, ALICE, &[], &chat_body("gpt-4o", false), TOTAL / THREADS))
            })
            .collect();
        for h in handles {
            for r in h.join().expect("client thread") {
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
    });

    let records = gw.audit_settled(TOTAL);
    let records = of_model(&records, "gpt-4o");
    assert_eq!(records.len(), TOTAL);
    let mut by_variant: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        let variant = r["variant"]
            .as_str()
            .expect("every record names its variant");
        let (provider, upstream_model) = match variant {
            "stable" => ("mock", "gpt-4o-2024-08-06"),
            "canary" => ("canary", "gpt-4.1"),
            other => panic!("unknown variant {other}"),
        };
        assert_eq!(r["provider"], provider, "{r}");
        assert_eq!(r["upstream_model"], upstream_model, "{r}");
        *by_variant.entry(variant.to_string()).or_default() += 1;
    }
    let canaries = by_variant.get("canary").copied().unwrap_or(0);
    let stables = by_variant.get("stable").copied().unwrap_or(0);
    assert!(
        (146..=254).contains(&canaries),
        "canary got {canaries} of {TOTAL}; 10 % ± 4σ is 146..=254"
    );
    assert_eq!(stables + canaries, TOTAL);

    let text = gw.metrics();
    assert_eq!(
        variant_requests(&text, "gpt-4o", "canary", "success"),
        canaries as f64
    );
    assert_eq!(
        variant_requests(&text, "gpt-4o", "stable", "success"),
        stables as f64
    );
    assert_eq!(variant_requests(&text, "gpt-4o", "canary", "error"), 0.0);
    assert_eq!(variant_requests(&text, "gpt-4o", "stable", "error"), 0.0);

    assert_eq!(requests(&canary), canaries as u64);
    assert_eq!(requests(&stable), stables as u64);
    assert_eq!(last_model(&canary), "gpt-4.1");
    assert_eq!(last_model(&stable), "gpt-4o-2024-08-06");
}

/// `sticky = "consumer"`: a consumer keeps its variant, and consumers
/// spread by weight; the `variant_header` forces a variant (one of weight
/// 0 included), and a name that is no variant is ignored. With
/// `sticky = "header:x-session"` one session keeps one variant whoever
/// sends it.
#[test]
fn sticky_consumers_keep_their_variant_and_the_header_forces_one() {
    const CONSUMERS: usize = 20;
    const EACH: usize = 10;
    let upstream = mock();
    let mut setup = Setup::new(&upstream);
    setup.extra(
        "",
        &format!(
            "[[models]]\nname = \"gpt-4o\"\nvariants = [\n\
             {{ name = \"stable\", weight = 50, provider = \"mock\", model = \"gpt-4o\" }},\n\
             {{ name = \"canary\", weight = 50, provider = \"mock\", model = \"gpt-4.1\" }},\n\
             {{ name = \"shadow\", weight = 0, provider = \"mock\", model = \"gpt-4o-shadow\" }},\n]\n\
             sticky = \"consumer\"\nvariant_header = \"x-sluice-variant\"\n\n\
             [[models]]\nname = \"sess\"\nvariants = [\n\
             {{ name = \"a\", weight = 1, provider = \"mock\", model = \"sess-a\" }},\n\
             {{ name = \"b\", weight = 1, provider = \"mock\", model = \"sess-b\" }},\n]\n\
             sticky = \"header:x-session\"\n\n{}",
            consumers_toml(CONSUMERS)
        ),
    );
    let gw = Gateway::start(&setup);
    let upstream_of = |variant: &str| match variant {
        "stable" => "gpt-4o",
        "canary" => "gpt-4.1",
        "shadow" => "gpt-4o-shadow",
        "a" => "sess-a",
        "b" => "sess-b",
        other => panic!("unknown variant {other}"),
    };

    std::thread::scope(|s| {
        let gw = &gw;
        let handles: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    for c in (t..CONSUMERS).step_by(4) {
                        let key = format!("sk-c{c:02}");
                        for r in chats(gw, &key, &[], &chat_body("gpt-4o", false), EACH) {
                            assert_eq!(r.status, 200, "{}", r.text());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("client thread");
        }
    });
    let records = gw.audit_settled(CONSUMERS * EACH);
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in of_model(&records, "gpt-4o") {
        let variant = r["variant"].as_str().expect("variant").to_string();
        assert_eq!(r["upstream_model"], upstream_of(&variant), "{r}");
        seen.entry(r["consumer"].as_str().expect("consumer").to_string())
            .or_default()
            .insert(variant);
    }
    assert_eq!(seen.len(), CONSUMERS, "{seen:?}");
    for (consumer, variants) in &seen {
        assert_eq!(
            variants.len(),
            1,
            "{consumer} moved between variants: {variants:?}"
        );
    }
    let on = |v: &str| seen.values().filter(|s| s.contains(v)).count();
    assert!(
        (5..=15).contains(&on("canary")),
        "a 50/50 split put {} of {CONSUMERS} consumers on the canary",
        on("canary")
    );
    assert_eq!(on("shadow"), 0, "weight 0 takes no traffic unless named");
    let text = gw.metrics();
    assert_eq!(
        variant_requests(&text, "gpt-4o", "canary", "success"),
        (on("canary") * EACH) as f64
    );
    assert_eq!(
        variant_requests(&text, "gpt-4o", "stable", "success"),
        (on("stable") * EACH) as f64
    );

    // The header overrides a stable consumer's stickiness.
    let (stable_consumer, _) = seen
        .iter()
        .find(|(_, v)| v.contains("stable"))
        .expect("some consumer on stable");
    let key = format!("sk-{stable_consumer}");
    for (header, want) in [
        ("canary", "canary"),
        ("shadow", "shadow"),
        ("no-such-variant", "stable"),
    ] {
        let r = gw.chat(
            &key,
            &[("x-sluice-variant", header)],
            &chat_body("gpt-4o", false),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let record = gw.audit_record(&request_id(&r));
        assert_eq!(record["variant"], want, "x-sluice-variant: {header}");
        assert_eq!(record["upstream_model"], upstream_of(want));
        assert_eq!(last_model(&upstream), upstream_of(want));
    }

    // Sticky by header: 8 sessions × 4 requests, from changing consumers.
    let mut ids: Vec<(String, String)> = Vec::new();
    for session in 0..8 {
        let value = format!("session-{session}");
        for i in 0..4 {
            let key = format!("sk-c{:02}", (session * 4 + i) % CONSUMERS);
            let r = gw.chat(&key, &[("x-session", &value)], &chat_body("sess", false));
            assert_eq!(r.status, 200, "{}", r.text());
            ids.push((value.clone(), request_id(&r)));
        }
    }
    let mut by_session: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (session, id) in &ids {
        let record = gw.audit_record(id);
        let variant = record["variant"].as_str().expect("variant").to_string();
        assert_eq!(record["upstream_model"], upstream_of(&variant));
        by_session
            .entry(session.clone())
            .or_default()
            .insert(variant);
    }
    for (session, variants) in &by_session {
        assert_eq!(
            variants.len(),
            1,
            "{session} moved between variants: {variants:?}"
        );
    }
    let used: BTreeSet<&String> = by_session.values().flatten().collect();
    assert_eq!(
        used.len(),
        2,
        "8 sessions all on one variant: {by_session:?}"
    );
}

// ---------------------------------------------------------- endpoint health

/// An endpoint answering 500 is ejected after `failures_to_eject`
/// consecutive failures: its circuit opens (metric 1), requests stop
/// reaching it, after `base_ejection_ms` it is half-open (2) and takes
/// exactly one probe; a failed probe re-opens it for twice as long.
/// Clients see 200 throughout: a failed attempt is retried with another
/// key of the provider and lands on the healthy endpoint.
#[test]
fn a_failing_endpoint_is_ejected_probed_and_ejected_again_for_twice_as_long() {
    let failing = mock_any_key(Script {
        status: Some(500),
        ..Script::default()
    });
    let healthy = mock_any_key(Script::default());
    let (bad, good) = (base_url(&failing), base_url(&healthy));
    let gw = model_m_on(
        &healthy,
        "pool",
        &[&bad, &good],
        &format!(
            "{}\nhealth = {{ failures_to_eject = 2, base_ejection_ms = 1000, \
                     max_ejection_ms = 8000 }}",
            key_pool(3)
        ),
        true,
    );
    assert_eq!(gw.circuit("pool", &bad), 0.0);

    let opened = eject(&gw, "m", "pool", &bad, 8);
    assert_eq!(
        requests(&failing),
        2,
        "the circuit opens at the second consecutive failure"
    );
    assert_eq!(gw.ejections("pool", &bad), 1.0);
    assert_eq!(gw.circuit("pool", &good), 0.0);

    // Open: every request goes to the healthy endpoint, in one attempt.
    let before = requests(&healthy);
    for r in chats(&gw, ALICE, &[], &chat_body("m", false), 5) {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(attempts(&gw.audit_record(&request_id(&r))), 1);
    }
    assert_eq!(requests(&failing), 2, "no request reaches an open endpoint");
    assert_eq!(requests(&healthy), before + 5);

    // Half-open after base_ejection_ms.
    let half_open = gw.wait_circuit("pool", &bad, 2.0, Duration::from_secs(5));
    assert!(
        half_open - opened >= Duration::from_millis(1000),
        "half-open after {:?}, before base_ejection_ms",
        half_open - opened
    );

    // One probe goes to it, fails, and re-opens the circuit; the client
    // still gets the healthy endpoint's answer.
    let probed = Instant::now();
    let r = ask(&gw, "m");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(requests(&failing), 3, "exactly one probe");
    let record = gw.audit_record(&request_id(&r));
    let tries = record["attempts"].as_array().expect("two attempts");
    assert_eq!(tries.len(), 2, "{record}");
    assert_eq!(tries[0]["status"], 500);
    assert_eq!(tries[1]["status"], 200);
    assert_ne!(
        tries[0]["key"], tries[1]["key"],
        "the retry takes another key"
    );
    assert_eq!(gw.circuit("pool", &bad), 1.0);
    assert_eq!(gw.ejections("pool", &bad), 2.0);
    for r in chats(&gw, ALICE, &[], &chat_body("m", false), 5) {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(requests(&failing), 3);

    // The second ejection lasts 2 × base_ejection_ms.
    let half_open = gw.wait_circuit("pool", &bad, 2.0, Duration::from_secs(6));
    assert!(
        half_open - probed >= Duration::from_millis(2000),
        "re-opened for only {:?}; the second ejection should last 2000 ms",
        half_open - probed
    );
}

/// An endpoint refusing connections is ejected; once something listens
/// on its port again, the half-open probe succeeds and closes the circuit
/// (metric 0) without a new ejection.
#[test]
fn an_ejected_endpoint_that_recovers_is_closed_by_one_successful_probe() {
    let healthy = mock_any_key(Script::default());
    let (bad, good) = (closed_base_url(), base_url(&healthy));
    let gw = model_m_on(
        &healthy,
        "pool",
        &[&bad, &good],
        &format!(
            "{}\nhealth = {{ failures_to_eject = 2, base_ejection_ms = 500, \
                     max_ejection_ms = 4000 }}",
            key_pool(3)
        ),
        true,
    );
    let opened = eject(&gw, "m", "pool", &bad, 8);
    assert_eq!(gw.ejections("pool", &bad), 1.0);
    for r in chats(&gw, ALICE, &[], &chat_body("m", false), 5) {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            attempts(&gw.audit_record(&request_id(&r))),
            1,
            "open: not tried"
        );
    }

    // The endpoint comes back.
    let revived = mock_any_key_at(url_addr(&bad), Script::default());
    let half_open = gw.wait_circuit("pool", &bad, 2.0, Duration::from_secs(3));
    assert!(half_open - opened >= Duration::from_millis(500));
    assert_eq!(requests(&revived), 0, "nothing before the probe");

    let r = ask(&gw, "m");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        requests(&revived),
        1,
        "the probe went to the half-open endpoint"
    );
    assert_eq!(attempts(&gw.audit_record(&request_id(&r))), 1);
    assert_eq!(
        gw.circuit("pool", &bad),
        0.0,
        "a good probe closes the circuit"
    );
    assert_eq!(gw.ejections("pool", &bad), 1.0);
    for r in chats(&gw, ALICE, &[], &chat_body("m", false), 10) {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(gw.circuit("pool", &bad), 0.0);
    assert_eq!(gw.circuit("pool", &good), 0.0);
}

/// A provider without keys (the self-hosted case of
/// `config/examples/routing.toml`) with one endpoint answering 500 and one
/// healthy: a request whose attempt fails on the bad endpoint should be
/// retried on the healthy one (fallback_on includes 5xx).
///
/// (Once failed: retries went only to untried keys, and a failure added
/// no latency sample, so the failing endpoint kept the best score.)
#[test]
fn a_failed_attempt_is_retried_on_another_endpoint_of_a_keyless_provider() {
    let failing = mock_any_key(Script {
        status: Some(500),
        ..Script::default()
    });
    let healthy = mock_any_key(Script::default());
    let (bad, good) = (base_url(&failing), base_url(&healthy));
    let gw = model_m_on(
        &healthy,
        "selfhosted",
        &[&bad, &good],
        "health = { failures_to_eject = 2, base_ejection_ms = 5000 }",
        true,
    );
    let statuses: Vec<u16> = (0..6).map(|_| ask(&gw, "m").status).collect();
    assert_eq!(
        statuses,
        [200; 6],
        "the bad endpoint took {} attempt(s); its 500s went to the client instead of \
         being retried on {good}",
        requests(&failing)
    );
}

/// A half-open endpoint lets one probe through. If the probe's client
/// goes away before the endpoint answers, the probe has no outcome; the
/// endpoint must not stay half-open with its single probe slot taken
/// forever.
///
/// (Once failed: the probe slot was only freed by a success or a failure,
/// and a client leaving is neither.)
#[test]
fn an_abandoned_probe_does_not_leave_the_endpoint_half_open_forever() {
    let healthy = mock_any_key(Script::default());
    let (bad, good) = (closed_base_url(), base_url(&healthy));
    let gw = model_m_on(
        &healthy,
        "pool",
        &[&bad, &good],
        &format!(
            "{}\nhealth = {{ failures_to_eject = 2, base_ejection_ms = 300, \
                     max_ejection_ms = 600 }}",
            key_pool(3)
        ),
        true,
    );
    eject(&gw, "m", "pool", &bad, 8);
    // Back, but slow: the probe will still be waiting when its client leaves.
    let revived = mock_any_key_at(
        url_addr(&bad),
        Script {
            ttfb_ms: 2000,
            ..Script::default()
        },
    );
    gw.wait_circuit("pool", &bad, 2.0, Duration::from_secs(3));
    let probe = chat_pending(&gw, ALICE, &[], &chat_body("m", false));
    wait_for(
        "the probe to reach the endpoint",
        Duration::from_secs(3),
        || (requests(&revived) == 1).then_some(()),
    );
    drop(probe);
    wait_for("the probe's 499", Duration::from_secs(3), || {
        gw.audit().into_iter().find(|r| r["status"] == 499)
    });

    // Later requests (answered at once by either endpoint) should probe it
    // again once the abandoned probe is over.
    let fast = [("x-mock-ttfb-ms", "0")];
    let deadline = Instant::now() + Duration::from_secs(4);
    while requests(&revived) < 2 && Instant::now() < deadline {
        let r = gw.chat(ALICE, &fast, &chat_body("m", false));
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        requests(&revived) >= 2,
        "4 s after its probe's client left (and 2 s after the endpoint would have \
         answered it), {bad} was never tried again; circuit = {}",
        gw.circuit("pool", &bad)
    );
}

// ----------------------------------------------------------- active checks

/// `check_path` + `check_interval_ms`: `GET <base path>/models` on every
/// endpoint, without any client traffic. A healthy endpoint stays closed;
/// one refusing connections is ejected.
#[test]
fn active_checks_keep_a_healthy_endpoint_closed_and_eject_a_dead_one() {
    let healthy = mock_any_key(Script::default());
    let unused = mock();
    let (bad, good) = (closed_base_url(), base_url(&healthy));
    let gw = model_m_on(
        &unused,
        "checked",
        &[&good, &bad],
        "health = { failures_to_eject = 2, base_ejection_ms = 10000, \
                 max_ejection_ms = 20000, check_path = \"/models\", check_interval_ms = 200 }",
        false,
    );
    let opened_at = gw.wait_circuit("checked", &bad, 1.0, Duration::from_secs(3));
    assert_eq!(gw.ejections("checked", &bad), 1.0);
    assert_eq!(gw.circuit("checked", &good), 0.0);
    let checks = requests(&healthy);
    assert!(checks >= 2, "{checks} checks of the healthy endpoint");
    let last = healthy.stats.last_request().expect("a check");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("GET", "/v1/models")
    );

    // More checks pass; the healthy endpoint stays closed.
    wait_for("two more checks", Duration::from_secs(3), || {
        (requests(&healthy) >= checks + 2).then_some(())
    });
    assert_eq!(gw.circuit("checked", &good), 0.0);
    assert_eq!(gw.ejections("checked", &good), 0.0);
    assert_eq!(gw.circuit("checked", &bad), 1.0);
    assert!(opened_at.elapsed() < Duration::from_secs(10));
    assert_eq!(requests(&unused), 0, "no check for a provider without one");
    assert!(gw.audit().is_empty(), "no client traffic");
}

/// While active checks keep failing, an ejected endpoint should not be
/// handed a client's request as a probe when its ejection time is up.
///
/// Once failed (fixed, kept as the reason for this test): a failed check only counts toward opening a closed
/// circuit (`EndpointHealth::failure` re-opens only after a failed probe),
/// so the circuit goes half-open on schedule however many checks failed,
/// and the next client request is sent there first: here it costs a
/// failed attempt and a retry; for a provider without spare keys, the
/// client gets the 502.
#[test]
fn failing_active_checks_keep_an_ejected_endpoint_from_client_traffic() {
    let healthy = mock_any_key(Script::default());
    let (bad, good) = (closed_base_url(), base_url(&healthy));
    let gw = model_m_on(
        &healthy,
        "pool",
        &[&bad, &good],
        &format!(
            "{}\nhealth = {{ failures_to_eject = 2, base_ejection_ms = 300, \
                     max_ejection_ms = 5000, check_path = \"/models\", check_interval_ms = 100 }}",
            key_pool(3)
        ),
        true,
    );
    gw.wait_circuit("pool", &bad, 1.0, Duration::from_secs(3));
    // Past the ejection, with a failed check every 100 ms meanwhile.
    std::thread::sleep(Duration::from_millis(800));
    let circuit = gw.circuit("pool", &bad);
    for r in chats(&gw, ALICE, &[], &chat_body("m", false), 3) {
        assert_eq!(r.status, 200, "{}", r.text());
        let record = gw.audit_record(&request_id(&r));
        assert_eq!(
            attempts(&record),
            1,
            "a request was tried on {bad} (circuit read {circuit} before it), whose \
             checks have failed all along: {record}"
        );
    }
}

// -------------------------------------------------------------- degradation

/// A provider at `max_concurrency` is skipped; with no other target the
/// model's `degrade_to` serves, and the audit shows the skipped attempt
/// and the degraded one. A model without `degrade_to` gets 503. The slot
/// is freed when the request in flight ends.
#[test]
fn a_full_provider_degrades_to_the_cheaper_target_or_answers_503() {
    let slow = mock_slow(1000);
    let cheap = mock();
    let mut setup = Setup::new(&cheap);
    setup.extra(
        "",
        &format!(
            "[[providers]]\nname = \"slow\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             api_key = \"{MOCK_KEY}\"\nmax_concurrency = 1\n\n\
             [[models]]\nname = \"big\"\nprovider = \"slow\"\nupstream_model = \"big-upstream\"\n\
             degrade_to = {{ provider = \"mock\", model = \"small-upstream\" }}\n\n\
             [[models]]\nname = \"big-strict\"\nprovider = \"slow\"\nupstream_model = \"big-upstream\"\n\n\
             {RETRY}",
            base_url(&slow)
        ),
    );
    let gw = Gateway::start(&setup);

    std::thread::scope(|s| {
        let held = s.spawn(|| ask(&gw, "big"));
        wait_for(
            "the first request at the slow provider",
            Duration::from_secs(5),
            || (requests(&slow) == 1).then_some(()),
        );

        let r = ask(&gw, "big");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(last_model(&cheap), "small-upstream");
        let record = gw.audit_record(&request_id(&r));
        assert_eq!(record["provider"], "mock");
        assert_eq!(record["upstream_model"], "small-upstream");
        let tries = record["attempts"].as_array().expect("two attempts");
        assert_eq!(tries.len(), 2, "{record}");
        assert_eq!(tries[0]["provider"], "slow");
        assert_eq!(tries[0]["model"], "big-upstream");
        assert_eq!(tries[0]["status"], Value::Null);
        assert_eq!(tries[0]["error"], "upstream_unavailable");
        assert_eq!(tries[1]["provider"], "mock");
        assert_eq!(tries[1]["model"], "small-upstream");
        assert_eq!(tries[1]["status"], 200);

        let r = ask(&gw, "big-strict");
        assert_eq!(r.status, 503, "{}", r.text());
        let message = r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(message.contains("concurrency limit"), "{message}");
        let record = gw.audit_record(&request_id(&r));
        assert_eq!(record["error"], "upstream_unavailable");
        assert_eq!(requests(&slow), 1, "neither reached the full provider");

        let first = held.join().expect("client thread");
        assert_eq!(first.status, 200, "{}", first.text());
        let record = gw.audit_record(&request_id(&first));
        assert_eq!(record["provider"], "slow");
        assert_eq!(record["upstream_model"], "big-upstream");
        assert_eq!(attempts(&record), 1);
    });

    // The slot is free again: the provider serves.
    let r = ask(&gw, "big-strict");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(requests(&slow), 2);
}

/// `degrade_to.model` is a template like `upstream_model` (validation
/// checks its `$N` against the `match`): a regex route's captures must
/// fill it.
///
/// Once failed (fixed, kept as the reason for this test): `proxy::handle` pushes `Core::degrade_target` as
/// configured, without the `expand` that `Route` applies to the primary
/// and fallback targets, so the provider receives the literal `$1`.
#[test]
fn degrade_to_fills_the_captures_of_a_pattern_route() {
    let slow = mock_slow(1000);
    let cheap = mock();
    let mut setup = Setup::new(&cheap);
    setup.extra(
        "",
        &format!(
            "[[providers]]\nname = \"slow\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             api_key = \"{MOCK_KEY}\"\nmax_concurrency = 1\n\n\
             [[models]]\nname = \"llama\"\nmatch = 're:^llama-(.*)$'\nprovider = \"slow\"\n\
             upstream_model = \"meta/llama-$1\"\n\
             degrade_to = {{ provider = \"mock\", model = \"tiny/llama-$1\" }}\n\n{RETRY}",
            base_url(&slow)
        ),
    );
    let gw = Gateway::start(&setup);
    std::thread::scope(|s| {
        let held = s.spawn(|| ask(&gw, "llama-3-70b"));
        wait_for(
            "the first request at the slow provider",
            Duration::from_secs(5),
            || (requests(&slow) == 1).then_some(()),
        );
        let r = ask(&gw, "llama-3-8b");
        assert_eq!(r.status, 200, "{}", r.text());
        let record = gw.audit_record(&request_id(&r));
        let sent = last_model(&cheap);
        let first = held.join().expect("client thread");
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(last_model(&slow), "meta/llama-3-70b");
        assert_eq!(sent, "tiny/llama-3-8b", "the degraded target's model");
        assert_eq!(record["upstream_model"], "tiny/llama-3-8b");
    });
}

/// When every endpoint's circuit is open the request is refused with 503
/// before any attempt; the error should say the provider is unavailable.
///
/// Once failed (fixed, kept as the reason for this test): `ErrorKind::Unavailable` ("shared state this request needs
/// is unreachable") is reused for a full provider and for open circuits,
/// and its one row in the error table has the code
/// `quota_state_unavailable`, which tells the client and its dashboards
/// that sluice's quota store is down.
#[test]
fn a_provider_with_every_circuit_open_is_not_reported_as_a_quota_outage() {
    let unused = mock();
    let dead = closed_base_url();
    let gw = model_m_on(&unused, "dead", &[&dead], "max_concurrency = 1\n\
                 health = { failures_to_eject = 1, base_ejection_ms = 10000, max_ejection_ms = 10000 }", false);
    let r = ask(&gw, "m");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_connect_failed");
    assert_eq!(gw.circuit("dead", &dead), 1.0);

    let r = ask(&gw, "m");
    assert_eq!(r.status, 503, "{}", r.text());
    let error = &r.json()["error"];
    let message = error["message"].as_str().unwrap_or("");
    assert!(
        message.contains("every endpoint's circuit open"),
        "the reason, even with max_concurrency = 1: {message}"
    );
    assert_ne!(
        error["code"], "quota_state_unavailable",
        "open circuits reported as a quota-store outage: {error}"
    );
}
