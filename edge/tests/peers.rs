//! End-to-end tests of what a connection costs and of clients that leave:
//! the per-core peer watch (one epoll set per core holding each client's
//! own socket, no duplicate descriptor), a client that leaves while a
//! non-streamed answer is still coming, and a gateway out of descriptors
//! for upstream connections.
//!
//! What sluice holds is read from the kernel: `/proc/<pid>/fd` for its
//! descriptors, `/proc/<pid>/limits` for its open-file limit and
//! `/proc/net/tcp` for the mock's side of upstream connections. The
//! descriptor shortage is made with prlimit(2) on the running gateway,
//! which lowers its soft limit to leave exactly one free descriptor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // helpers other test files use
mod common;

use std::time::Duration;

use common::*;

/// The descriptor numbers `pid` has open.
fn open_fds(pid: i32) -> Vec<u64> {
    let mut fds: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the gateway's descriptors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

fn fd_count(pid: i32) -> usize {
    open_fds(pid).len()
}

/// `pid`'s descriptors once start-up is over (the last ones, such as the
/// signal thread's pipe, are opened after the addresses are announced):
/// the same set for 100 ms (six reads, 20 ms apart).
fn settled_fds(pid: i32) -> Vec<u64> {
    let mut last = open_fds(pid);
    let mut same = 0;
    wait_for(
        "the gateway's descriptors to settle",
        Duration::from_secs(5),
        || {
            let now = open_fds(pid);
            same = if now == last { same + 1 } else { 0 };
            last = now;
            (same >= 5).then_some(())
        },
    );
    last
}

/// The lowest descriptor number `pid` has free: the next one it gets.
fn lowest_free_fd(pid: i32) -> u64 {
    let used = settled_fds(pid);
    (0..).find(|n| !used.contains(n)).unwrap_or(0)
}

/// `pid`'s open-file limit (soft, hard), as prlimit(2) reports it.
fn open_file_limit(pid: i32) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new limit only writes `old`, which lives
    // across the call; `pid` is a child this test spawned.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit(get): {}", std::io::Error::last_os_error());
    old
}

fn set_open_file_limit(pid: i32, limit: libc::rlimit) {
    // SAFETY: prlimit reads one valid rlimit; `pid` is our child.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit(set): {}", std::io::Error::last_os_error());
}

/// The mock's side of the upstream connections on `port` that it has not
/// closed yet (ESTABLISHED or CLOSE_WAIT), from `/proc/net/tcp`.
fn mock_side_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && matches!(f[3], "01" | "08")
        })
        .count()
}

/// Every value of `name` whose labels include `provider="<provider>"`.
fn series(text: &str, name: &str, provider: &str) -> Vec<f64> {
    let label = format!("provider=\"{provider}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

/// The test process holds a few hundred sockets (clients and the mock).
fn raise_own_open_file_limit() {
    let mut limit = open_file_limit(std::process::id() as i32);
    limit.rlim_cur = limit.rlim_max;
    set_open_file_limit(std::process::id() as i32, limit);
}

/// Bug: every client connection cost two descriptors (the socket and a
/// dup() the peer watch polled), so a proxied stream cost three and the
/// fd limit capped sluice at two thirds of the streams it could hold.
#[test]
fn a_connection_costs_one_descriptor_and_a_stream_two() {
    const N: usize = 200;
    raise_own_open_file_limit();
    let mock = mock();
    let gw = Gateway::start(&Setup::new(&mock));
    let pid = gw.pid();

    // sluice raised its own soft limit to the hard one, and said so.
    let limit = open_file_limit(pid);
    assert_eq!(limit.rlim_cur, limit.rlim_max, "soft limit raised");
    assert!(gw.stderr().contains("open-file limit"), "{}", gw.stderr());

    let start = settled_fds(pid).len();
    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = gw.connect();
        c.send(&chat_request(Some(ALICE), &[], &chat_body(MINI, false)));
        assert_eq!(c.read_response().status, 200);
        idle.push(c);
    }
    let after_idle = fd_count(pid);
    let per_idle = (after_idle - start) as f64 / N as f64;
    assert!(
        per_idle < 1.5,
        "{per_idle:.2} descriptors per idle keep-alive connection ({start} → {after_idle})"
    );

    let streams: Vec<_> = (0..N)
        .map(|_| open_stream(&gw, &[("x-mock-stall-after", "1")], &chat_body(MINI, true)))
        .collect();
    gw.wait_metric("sluice_open_streams", &[], N as f64);
    let after_streams = fd_count(pid);
    let per_stream = (after_streams - after_idle) as f64 / N as f64;
    assert!(
        (1.5..2.5).contains(&per_stream),
        "{per_stream:.2} descriptors per open stream, want about 2 (client + upstream) \
         ({after_idle} → {after_streams})"
    );
    drop(streams);
    drop(idle);
}

/// Bug: a client that left while a non-streamed answer was on its way
/// (head in, body still coming) went unnoticed until the provider finished
/// or its idle timeout fired: the provider kept generating.
#[test]
fn client_leaving_during_a_whole_body_drops_the_upstream_at_once() {
    let mock = mock();
    let mut setup = Setup::new(&mock);
    // Without the watch, only this would end the wait for the body.
    setup.providers[0].idle_timeout_ms = 60_000;
    let gw = Gateway::start(&setup);
    let mut c = gw.connect();
    // The mock sends the head at once, then withholds the body until its
    // peer closes.
    c.send(&chat_request(
        Some(ALICE),
        &[("x-mock-stall-after", "1"), ("x-request-id", "peers-whole")],
        &chat_body(MINI, false),
    ));
    wait_for(
        "the mock to get the request",
        Duration::from_secs(5),
        || (counter(&mock.stats.requests) == 1).then_some(()),
    );
    assert_eq!(mock_side_connections(mock.addr.port()), 1);
    // Let the head reach sluice: from here it is reading the body.
    std::thread::sleep(Duration::from_millis(200));

    drop(c);
    // Normally a few milliseconds; the bound leaves room for a loaded
    // machine and is still far below the provider's idle timeout.
    wait_for(
        "the mock to see its connection closed",
        Duration::from_secs(8),
        || (mock_side_connections(mock.addr.port()) == 0).then_some(()),
    );
    let rec = gw.audit_record("peers-whole");
    assert_eq!(rec["status"], 499, "{rec}");
    assert_eq!(rec["error"], "client_abort", "{rec}");
    assert_eq!(rec["upstream_status"], 200, "{rec}");
    assert_eq!(rec["stream"], false, "{rec}");
    assert_eq!(gw.audit_settled(1).len(), 1, "one record for the request");
    gw.wait_metric(
        "sluice_requests_total",
        &[("model", MINI), ("consumer", "alice"), ("status", "499")],
        1.0,
    );
}

/// Bug: with its descriptors used up, sluice could not open upstream
/// connections and blamed the provider: connect failures ejected healthy
/// endpoints, cooled keys and sent the request to the fallback provider
/// (which failed the same way), and the client got 502 upstream_error.
#[test]
fn out_of_descriptors_is_a_local_503_not_a_provider_failure() {
    const REQUESTS: usize = 6; // more than `failures_to_eject` (5)
    let first = mock();
    let backup = mock();
    let mut setup = Setup::new(&first);
    setup.workers = 1;
    setup.providers.push(ProviderSpec::new(
        "backup",
        format!("http://{}/v1", backup.addr),
    ));
    setup.extra(
        &format!("models.{MINI}"),
        "fallbacks = [{ provider = \"backup\" }]",
    );
    let gw = Gateway::start(&setup);
    let pid = gw.pid();

    // One descriptor left (the next free number) and none above it: the
    // client's connection takes it.
    let normal = open_file_limit(pid);
    let free = lowest_free_fd(pid);
    set_open_file_limit(
        pid,
        libc::rlimit {
            rlim_cur: free + 1,
            rlim_max: normal.rlim_max,
        },
    );
    let mut c = gw.connect();
    let mut answers = Vec::new();
    for i in 0..REQUESTS {
        let id = format!("peers-emfile-{i}");
        c.send(&chat_request(
            Some(ALICE),
            &[("x-request-id", &id)],
            &chat_body(MINI, false),
        ));
        answers.push(c.read_response());
    }
    set_open_file_limit(pid, normal);

    for r in &answers {
        assert_eq!(r.status, 503, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["type"], "server_error", "{v}");
        assert_eq!(v["error"]["code"], "local_resources_exhausted", "{v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("ran out of local resources") && message.contains("open-file limit"),
            "{v}"
        );
    }
    assert_eq!(counter(&first.stats.requests), 0);
    assert_eq!(counter(&backup.stats.requests), 0);
    let rec = gw.audit_record("peers-emfile-0");
    assert_eq!(rec["status"], 503, "{rec}");
    assert_eq!(rec["error"], "local_resources", "{rec}");
    assert_eq!(rec["provider"], "mock", "{rec}");
    assert!(rec.get("attempts").is_none(), "no fallback attempt: {rec}");

    let text = gw.metrics();
    for provider in ["mock", "backup"] {
        assert_eq!(
            series(&text, "sluice_upstream_endpoint_circuit", provider),
            [0.0],
            "{provider}: circuit closed\n{text}"
        );
        assert_eq!(
            series(&text, "sluice_upstream_endpoint_ejections_total", provider),
            [0.0],
            "{provider}: never ejected\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            "sluice_local_resource_errors_total",
            &[("provider", "mock")]
        ),
        Some(REQUESTS as f64),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "sluice_upstream_errors_total",
            &[("provider", "mock"), ("kind", "local_resources")]
        ),
        None,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "sluice_upstream_errors_total",
            &[("provider", "mock"), ("kind", "upstream_connect")]
        ),
        None,
        "{text}"
    );

    // Descriptors back: the same provider serves at once.
    c.send(&chat_request(Some(ALICE), &[], &chat_body(MINI, false)));
    assert_eq!(c.read_response().status, 200);
    assert_eq!(counter(&first.stats.requests), 1);
}
