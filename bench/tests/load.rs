//! The load generator against real servers: the mock upstream in-process
//! (`sluice_bench::mock::spawn`) and, for answers the mock cannot give, a
//! tiny scripted HTTP server on a thread. Each test checks what the
//! generator counted against what the server saw, or against a schedule
//! whose expected numbers follow from the plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_bench::load::{self, Load, Outcome, Plan, Progress, RequestSpec, Target, Verify};
use sluice_bench::mock::{self, header, MockConfig, MockHandle};

const KEY: &str = "test-key";

fn mock() -> MockHandle {
    mock::spawn(MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::default()
    })
    .unwrap()
}

fn target(addr: std::net::SocketAddr) -> Target {
    Target::parse(
        &format!("http://{addr}/v1/chat/completions"),
        &Verify::System,
    )
    .unwrap()
}

fn run(target: &Target, spec: &RequestSpec, plan: &Plan) -> Outcome {
    load::run(target, spec, plan, &Progress::default()).unwrap()
}

fn closed(concurrency: usize, requests: u64) -> Plan {
    Plan {
        load: Load::Closed { concurrency },
        requests: Some(requests),
        duration: Duration::from_secs(60),
        ..Plan::default()
    }
}

/// Polls `f` until it holds or 5 s pass (the mock updates its counters
/// after its last write).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn closed_loop_sends_exactly_the_requests_asked_for() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None).with_key(KEY);
    let out = run(&target(m.addr), &spec, &closed(4, 200));
    let s = &out.summary;
    assert_eq!(
        (s.counts.sent, s.counts.completed, s.counts.ok),
        (200, 200, 200),
        "{s:#?}"
    );
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.latency.count, 200);
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 200);
    // Four keep-alive connections carried everything.
    assert_eq!(s.counts.connections, 4);
    assert_eq!(m.stats.connections.load(Ordering::Relaxed), 4);
    assert!(s.counts.body_bytes > 200 * 100, "{}", s.counts.body_bytes);
}

#[test]
fn error_statuses_are_counted_by_status() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None).with_key("wrong");
    let out = run(&target(m.addr), &spec, &closed(2, 10));
    assert_eq!(out.summary.counts.ok, 0);
    assert_eq!(out.summary.errors.get("status_401"), Some(&10));
}

#[test]
fn warmup_requests_are_sent_but_not_measured() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None).with_key(KEY);
    let plan = Plan {
        load: Load::Closed { concurrency: 1 },
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(300),
        ..Plan::default()
    };
    let out = run(&target(m.addr), &spec, &plan);
    let served = m.stats.requests.load(Ordering::Relaxed);
    let c = &out.summary.counts;
    assert!(
        c.completed > 0 && c.completed < served,
        "{c:?} served {served}"
    );
    assert_eq!(c.all_completed, served);
}

#[test]
fn open_loop_keeps_the_schedule() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None).with_key(KEY);
    let plan = Plan {
        load: Load::Open {
            rate: 400.0,
            max_connections: 8,
        },
        duration: Duration::from_millis(500),
        ..Plan::default()
    };
    let out = run(&target(m.addr), &spec, &plan);
    let s = &out.summary;
    // 400/s for 0.5 s is 200 requests, all on time.
    assert_eq!((s.counts.sent, s.counts.ok), (200, 200), "{s:#?}");
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 200);
    assert!(s.latency.p50 < 5_000.0, "a fast server: {:?}", s.latency);
    // Keep-alive connections are reused (never more than the limit).
    assert!(s.counts.connections <= 8, "{}", s.counts.connections);
}

#[test]
fn open_loop_counts_queueing_delay_of_a_slow_server() {
    // One connection and 20 ms per response: capacity 50/s, offered 100/s.
    // Request k is due at k·10 ms but can only start at k·20 ms, so its
    // latency grows by ~10 ms per request; a closed-loop view (the service
    // time) would show a flat 20 ms and hide the queue.
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None)
        .with_key(KEY)
        .with_header(header::TTFB_MS, "20");
    let plan = Plan {
        load: Load::Open {
            rate: 100.0,
            max_connections: 1,
        },
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(10),
        ..Plan::default()
    };
    let out = run(&target(m.addr), &spec, &plan);
    let s = &out.summary;
    assert_eq!((s.counts.sent, s.counts.ok), (100, 100), "{s:#?}");
    assert!(
        s.service.p90 < 60_000.0,
        "service time stays ~20 ms: {:?}",
        s.service
    );
    // The last request waits ~1 s behind the others: 100 × 20 ms − 99 × 10 ms.
    assert!(
        s.latency.max > 800_000.0,
        "latency shows the queue: {:?}",
        s.latency
    );
    assert!(s.latency.p50 > 300_000.0, "{:?}", s.latency);
    assert!(
        s.latency.p50 > 10.0 * s.service.p50,
        "{:?} vs {:?}",
        s.latency,
        s.service
    );
    // Half the offered rate got through inside the window.
    assert!(s.throughput_rps < 60.0, "{}", s.throughput_rps);
}

#[test]
fn open_loop_fails_what_cannot_finish_before_the_drain_deadline() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None)
        .with_key(KEY)
        .with_header(header::TTFB_MS, "100");
    let plan = Plan {
        load: Load::Open {
            rate: 50.0,
            max_connections: 1,
        },
        duration: Duration::from_millis(400),
        drain_timeout: Duration::from_millis(200),
        ..Plan::default()
    };
    let out = run(&target(m.addr), &spec, &plan);
    let s = &out.summary;
    // 20 due; ~6 answered in 0.6 s; the rest are failed, not forgotten, and
    // their waiting time so far still counts in the latency histogram.
    assert_eq!(s.latency.count, 20, "{s:#?}");
    let failed: u64 = s.errors.values().sum();
    assert!(s.counts.ok + failed == 20 && failed >= 10, "{s:#?}");
    assert!(s.errors.contains_key("unsent"), "{:?}", s.errors);
}

fn stream_spec() -> RequestSpec {
    RequestSpec::chat("gpt-4o-mini", true, None)
        .with_key(KEY)
        .with_header(header::CHUNKS, "8")
}

#[test]
fn streams_are_timed_and_checked() {
    let m = mock();
    let spec = stream_spec().with_header(header::GAP_MS, "2");
    let out = run(&target(m.addr), &spec, &closed(2, 10));
    let s = &out.summary;
    let checks = s.checks.as_ref().unwrap();
    assert_eq!((checks.streams, checks.ok), (10, 10), "{s:#?}");
    assert_eq!(s.counts.ok, 10);
    // role + 8 content + finish + usage + [DONE]
    assert_eq!(s.counts.events, 10 * 12);
    let (ttfb, ttft) = (s.ttfb.as_ref().unwrap(), s.ttft.as_ref().unwrap());
    assert_eq!((ttfb.count, ttft.count), (10, 10));
    // The first token comes one gap after the head.
    assert!(
        ttft.p50 >= 1_500.0 && ttft.p50 > ttfb.p50,
        "{ttfb:?} {ttft:?}"
    );
    assert!(s.latency.p50 >= 15_000.0, "8 gaps of 2 ms: {:?}", s.latency);
    let gap = s.gap.as_ref().unwrap();
    assert_eq!(gap.count, 10 * 11);
    assert!(gap.max >= 1_500.0, "{gap:?}");
    assert!(s.stream_rate.as_ref().unwrap().count == 10);
}

/// Regression: when the last bytes and the peer's FIN arrived together, a
/// short read was taken to mean "drained" and the end of stream was never
/// read, so a cut stream waited for the request timeout instead of failing
/// at once.
#[test]
fn a_body_that_runs_to_the_close_ends_at_the_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}");
            let _ = conn.shutdown(std::net::Shutdown::Write);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let spec = RequestSpec::chat("gpt-4o-mini", false, None);
    let mut plan = closed(1, 3);
    plan.timeout = Duration::from_secs(20);
    let started = Instant::now();
    let out = run(&target(addr), &spec, &plan);
    assert_eq!(out.summary.counts.ok, 3, "{:#?}", out.summary);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stream_cut_short_is_flagged_missing_done() {
    let m = mock();
    let spec = stream_spec().with_header(header::DISCONNECT_AFTER, "3");
    let out = run(&target(m.addr), &spec, &closed(1, 5));
    let s = &out.summary;
    let checks = s.checks.as_ref().unwrap();
    assert_eq!(
        (checks.streams, checks.ok, checks.missing_done),
        (5, 0, 5),
        "{s:#?}"
    );
    assert_eq!(checks.missing_usage, 5);
    assert_eq!(s.counts.ok, 0);
    assert_eq!(s.errors.get("truncated"), Some(&5), "{:?}", s.errors);
    // Each cut connection was replaced.
    assert_eq!(s.counts.connections, 5);
}

#[test]
fn a_stream_without_usage_is_flagged() {
    let m = mock();
    let spec = stream_spec().with_header(header::OMIT_USAGE, "1");
    let out = run(&target(m.addr), &spec, &closed(1, 5));
    let s = &out.summary;
    let checks = s.checks.as_ref().unwrap();
    assert_eq!(
        (checks.ok, checks.missing_usage, checks.missing_done),
        (0, 5, 0),
        "{s:#?}"
    );
    assert_eq!(s.errors.get("missing_usage"), Some(&5));
}

#[test]
fn a_stream_that_did_not_ask_for_usage_is_not_flagged() {
    let m = mock();
    let mut spec = stream_spec().with_header(header::OMIT_USAGE, "1");
    spec.require_usage = false;
    let out = run(&target(m.addr), &spec, &closed(1, 3));
    assert_eq!(out.summary.counts.ok, 3, "{:#?}", out.summary);
}

/// A server that answers every request on a keep-alive connection with
/// `events` as one chunked event stream.
fn scripted_sse_server(events: &'static [&'static str]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    // Read one request: head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match conn.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        match conn.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                    transfer-encoding: chunked\r\n\r\n"
                        .to_vec();
                    for e in events {
                        let event = format!("{e}\n\n");
                        out.extend_from_slice(
                            format!("{:x}\r\n{event}\r\n", event.len()).as_bytes(),
                        );
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    if conn.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_error_event_is_flagged() {
    let addr = scripted_sse_server(&[
        r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#,
        r#"data: {"error":{"message":"upstream overloaded","type":"server_error"}}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        "data: [DONE]",
    ]);
    let out = run(&target(addr), &stream_spec(), &closed(1, 4));
    let s = &out.summary;
    let checks = s.checks.as_ref().unwrap();
    assert_eq!(
        (checks.streams, checks.error_event, checks.ok),
        (4, 4, 0),
        "{s:#?}"
    );
    assert_eq!((checks.missing_done, checks.missing_usage), (0, 0));
    assert_eq!(s.errors.get("error_event"), Some(&4));
}

#[test]
fn a_named_error_event_is_flagged_too() {
    let addr = scripted_sse_server(&[
        r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#,
        "event: error\ndata: {\"message\":\"boom\"}",
        "data: [DONE]",
    ]);
    let out = run(&target(addr), &stream_spec(), &closed(1, 2));
    let checks = out.summary.checks.clone().unwrap();
    assert_eq!(
        (checks.error_event, checks.missing_usage),
        (2, 2),
        "{checks:?}"
    );
}

#[test]
fn idle_streams_are_opened_held_and_closed() {
    let m = mock();
    let spec = stream_spec().with_header(header::STALL_AFTER, "0");
    let plan = Plan {
        load: Load::Idle {
            streams: 300,
            hold: Duration::from_millis(300),
            parallel: 64,
        },
        ..Plan::default()
    };
    let progress = Progress::default();
    let t = target(m.addr);
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| load::run(&t, &spec, &plan, &progress).unwrap());
        // While held, the mock has every stream open at once.
        eventually("all streams open", || {
            progress.holding.load(Ordering::Relaxed) == 1
        });
        assert_eq!(m.stats.streams_started.load(Ordering::Relaxed), 300);
        assert_eq!(m.stats.streams_aborted.load(Ordering::Relaxed), 0);
        h.join().unwrap()
    });
    let idle = out.summary.idle.clone().unwrap();
    assert_eq!(
        (idle.requested, idle.opened, idle.failed, idle.dropped),
        (300, 300, 0, 0)
    );
    assert_eq!(out.summary.ttfb.as_ref().unwrap().count, 300);
    eventually("the mock saw every stream closed", || {
        m.stats.streams_aborted.load(Ordering::Relaxed) == 300
    });
}

#[test]
fn idle_streams_that_fail_to_open_are_counted() {
    let m = mock();
    let spec = stream_spec().with_header(header::STATUS, "503");
    let plan = Plan {
        load: Load::Idle {
            streams: 20,
            hold: Duration::from_millis(50),
            parallel: 8,
        },
        ..Plan::default()
    };
    let out = run(&target(m.addr), &spec, &plan);
    let idle = out.summary.idle.clone().unwrap();
    assert_eq!((idle.opened, idle.failed), (0, 20), "{:#?}", out.summary);
    assert_eq!(out.summary.errors.get("status_503"), Some(&20));
}

#[test]
fn idle_streams_give_up_on_a_server_that_never_answers() {
    // The mock waits 10 s before each head; streams time out one by one,
    // and after two timeouts the phase stops waiting for the rest.
    let m = mock();
    let spec = stream_spec()
        .with_header(header::STALL_AFTER, "0")
        .with_header(header::TTFB_MS, "10000");
    let plan = Plan {
        load: Load::Idle {
            streams: 12,
            hold: Duration::from_millis(50),
            parallel: 4,
        },
        timeout: Duration::from_millis(200),
        ..Plan::default()
    };
    let started = Instant::now();
    let out = run(&target(m.addr), &spec, &plan);
    let idle = out.summary.idle.clone().unwrap();
    assert_eq!((idle.opened, idle.failed), (0, 12), "{:#?}", out.summary);
    let reasons: u64 = out.summary.errors.values().sum();
    assert_eq!(reasons, 12, "{:?}", out.summary.errors);
    assert!(
        out.summary.errors.contains_key("not_open_in_time"),
        "{:?}",
        out.summary.errors
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn large_bodies_arrive_whole() {
    let m = mock::spawn(MockConfig::default()).unwrap();
    let spec = RequestSpec::chat("gpt-4o-mini", false, Some(64 * 1024));
    let out = run(&target(m.addr), &spec, &closed(2, 6));
    assert_eq!(out.summary.counts.ok, 6, "{:#?}", out.summary);
    let last = m.stats.last_request().unwrap();
    assert_eq!(last.body.len(), 64 * 1024);
    assert_eq!(last.json()["model"], "gpt-4o-mini");
}

#[test]
fn several_threads_share_the_load() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None).with_key(KEY);
    let mut plan = closed(5, 101);
    plan.threads = 2;
    let out = run(&target(m.addr), &spec, &plan);
    assert_eq!(out.summary.counts.ok, 101);
    assert_eq!(out.summary.counts.connections, 5);
    assert_eq!(m.stats.requests.load(Ordering::Relaxed), 101);
}

#[test]
fn a_refused_connection_is_an_error_not_a_hang() {
    // Bind and drop: nothing listens on this port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None);
    let out = run(&target(addr), &spec, &closed(2, 6));
    assert_eq!(out.summary.counts.ok, 0);
    assert_eq!(
        out.summary.errors.get("connect"),
        Some(&6),
        "{:?}",
        out.summary.errors
    );
}

#[test]
fn tls_keep_alive_works() {
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca)
        .unwrap();
    let tls = mock::server_tls_config(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes())
        .unwrap();
    let m = mock::spawn(MockConfig {
        tls: Some(tls),
        ..MockConfig::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", m.addr.port());
    let t = Target::parse(&url, &Verify::CaFile(ca_file)).unwrap();
    for stream in [false, true] {
        let spec = RequestSpec::chat("gpt-4o-mini", stream, None).with_header(header::CHUNKS, "4");
        let out = run(&t, &spec, &closed(2, 20));
        assert_eq!(
            out.summary.counts.ok, 20,
            "stream={stream}: {:#?}",
            out.summary
        );
        assert_eq!(out.summary.counts.connections, 2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn insecure_tls_skips_verification() {
    let key = rcgen::KeyPair::generate().unwrap();
    let ca_params = {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p
    };
    let ca = ca_params.self_signed(&key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["bench.invalid".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &key)
        .unwrap();
    let tls = mock::server_tls_config(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes())
        .unwrap();
    let m = mock::spawn(MockConfig {
        tls: Some(tls),
        ..MockConfig::default()
    })
    .unwrap();
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", m.addr.port());
    let spec = RequestSpec::chat("gpt-4o-mini", false, None);
    // Trusting only the system roots, the handshake fails...
    let strict = Target::parse(&url, &Verify::System).unwrap();
    let out = run(&strict, &spec, &closed(1, 2));
    assert_eq!(out.summary.counts.ok, 0, "{:#?}", out.summary);
    // ...and with verification off it goes through.
    let t = Target::parse(&url, &Verify::Insecure).unwrap();
    let out = run(&t, &spec, &closed(1, 5));
    assert_eq!(out.summary.counts.ok, 5, "{:#?}", out.summary);
}

#[test]
fn a_silent_server_times_out() {
    let m = mock();
    let spec = RequestSpec::chat("gpt-4o-mini", false, None)
        .with_key(KEY)
        .with_header(header::STALL_AFTER, "0");
    let mut plan = closed(1, 2);
    plan.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let out = run(&target(m.addr), &spec, &plan);
    assert_eq!(
        out.summary.errors.get("timeout"),
        Some(&2),
        "{:?}",
        out.summary.errors
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_server_that_closes_between_requests_is_reconnected() {
    // A server that answers one request per connection and closes it
    // without saying so: the client finds out on the next request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
            std::thread::sleep(Duration::from_millis(5));
            drop(conn);
        }
    });
    let spec = RequestSpec::chat("gpt-4o-mini", false, None);
    let out = run(&target(addr), &spec, &closed(1, 5));
    let s = &out.summary;
    // Some requests may land on a connection the server just closed; every
    // one is accounted for either way.
    assert_eq!(s.counts.ok + s.counts.failed, 5, "{s:#?}");
    assert!(s.counts.ok >= 1, "{s:#?}");
}
