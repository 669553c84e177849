//! End-to-end test of kernel early rejection through the real gateway
//! (DESIGN.md §2 items 19–20, §3, §6 "Kernel").
//!
//! The real `sluice` binary attaches its XDP program (`[ebpf] attach =
//! true`, skb mode) to the host end of a veth pair and listens on that
//! end's address; the client lives in a network namespace behind the other
//! end (`common::netns`), so its connections pass the program. Alice's
//! small token balance runs out through ordinary requests; the 429 makes
//! sluice write a verdict for her tenant, whose address it learned at
//! auth. The test then checks what a client sees: new connections refused
//! at once (action "rst") or timing out (action "drop") without sluice
//! accepting them, an open keep-alive connection still served, the verdict
//! gone by itself after `quota_verdict_ms`, a top-up through the admin API
//! letting requests through, and an address shared by two consumers never
//! rejected. Shutdown leaves the pins (and the program attached) for the
//! next start; the test removes them with the loader library and checks
//! nothing is left on the interface. A second test does the refusal in
//! native mode; a third pins a bug: IPv4 clients of a dual-stack listener
//! are learned as IPv4-mapped IPv6 addresses the program never looks up.
//!
//! Needs root and iproute2: skipped with a SKIPPED line elsewhere, a
//! failure under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // helpers other test files use
mod common;

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::netns::{self, Netns};
use common::*;
use serde_json::Value;

/// Length of a verdict for a spent balance: short, so expiry is seen.
const VERDICT_MS: u64 = 1500;
const VERDICT: Duration = Duration::from_millis(VERDICT_MS);
/// A couple of requests' worth of tokens (prompt ≈ 30 + 16 completion).
const BALANCE: u64 = 60;

/// Alice with a small balance, bob unlimited, one worker, the admin API on,
/// a second listener on the veth's host address, and `[ebpf]` attaching to
/// the veth in `mode` with `action`.
fn setup(
    mock: &sluice_bench::mock::MockHandle,
    net: &Netns,
    port: u16,
    mode: &str,
    action: &str,
) -> Setup {
    let listen = SocketAddr::new(IpAddr::V4(net.host_ip), port);
    setup_on(mock, net, listen, mode, action)
}

/// As [`setup`], the second listener on `listen`.
fn setup_on(
    mock: &sluice_bench::mock::MockHandle,
    net: &Netns,
    listen: SocketAddr,
    mode: &str,
    action: &str,
) -> Setup {
    let mut setup = Setup::new(mock);
    setup.workers = 1;
    setup.drain_timeout_ms = 2000;
    setup
        .with_admin_token()
        .extra("consumers.alice", &format!("balance = {BALANCE}"))
        // Appended after every other table: `[[listeners]]` adds a second
        // listener to the array the harness started with 127.0.0.1:0 (a
        // port-0 listener cannot be protected: its port is unknown).
        .extra(
            "",
            &format!(
                "\n[ebpf]\nenabled = true\nattach = true\ninterfaces = [\"{}\"]\n\
                 mode = \"{mode}\"\npin_dir = \"{}\"\naction = \"{action}\"\n\
                 quota_verdict_ms = {VERDICT_MS}\n\n[[listeners]]\naddress = \"{listen}\"\n",
                net.host_if,
                net.pin_dir.display(),
            ),
        );
    setup
}

/// `sluice_connections_accepted_total`, summed over workers.
fn accepted(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("sluice_connections_accepted_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

fn wait_accepted(gw: &Gateway, want: u64) {
    wait_for(
        &format!("{want} accepted connections"),
        Duration::from_secs(5),
        || (accepted(gw) == want).then_some(()),
    );
}

/// The XDP counters sluice exports: (tenant_rejected in total, alice's).
fn xdp_rejected(gw: &Gateway) -> (f64, f64) {
    let text = gw.metrics();
    (
        metric_value(
            &text,
            "sluice_xdp_syn_total",
            &[("verdict", "tenant_rejected")],
        )
        .unwrap_or_else(|| {
            panic!("no sluice_xdp_syn_total{{verdict=\"tenant_rejected\"}}:\n{text}")
        }),
        metric_value(
            &text,
            "sluice_xdp_tenant_rejected_total",
            &[("consumer", "alice")],
        )
        .unwrap_or(0.0),
    )
}

/// `/readyz` once it says ready. Polled: a worker counts itself ready
/// only after reporting its bound addresses, so the first answers after
/// the `admin on` line may still say "starting".
fn readyz(gw: &Gateway) -> Value {
    wait_for("/readyz to answer 200", Duration::from_secs(5), || {
        let r = gw.admin_request("GET", "/readyz", None, None);
        (r.status == 200).then(|| r.json())
    })
}

/// A keep-alive connection from the namespace that must be let through.
fn client(net: &Netns, port: u16) -> Conn<TcpStream> {
    let (result, _) = net.connect(port, Duration::from_secs(2));
    let s = result.unwrap_or_else(|e| panic!("connect from {} to :{port}: {e}", net.client_ip));
    s.set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    s.set_nodelay(true).expect("nodelay");
    Conn::new(s)
}

fn ask(c: &mut Conn<TcpStream>, key: &str, model: &str) -> Response {
    c.send(&chat_request(Some(key), &[], &chat_body(model, false)));
    c.read_response()
}

fn assert_insufficient_quota(r: &Response) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "insufficient_quota",
        "{}",
        r.text()
    );
}

/// Spends alice's balance with requests on one keep-alive connection from
/// the namespace; returns the connection and when the refused request was
/// sent (sluice wrote the verdict after that instant).
fn spend_alice(net: &Netns, port: u16) -> (Conn<TcpStream>, Instant) {
    let mut c = client(net, port);
    for i in 0..20 {
        let sent = Instant::now();
        let r = ask(&mut c, ALICE, MINI);
        if r.status == 200 {
            continue;
        }
        assert!(i > 0, "the first request was refused: {}", r.text());
        assert_insufficient_quota(&r);
        return (c, sent);
    }
    panic!("a balance of {BALANCE} tokens did not run out in 20 requests");
}

fn alice() -> u32 {
    edge::kernel::tenant_id("alice")
}

/// Alice's verdict as the kernel sees it: (action, expiry on the
/// CLOCK_MONOTONIC clock).
fn verdict(net: &Netns) -> (u32, Duration) {
    let maps = loader::Maps::open(&net.pin_dir).expect("open the pinned maps");
    let v = maps
        .verdict(alice())
        .expect("read the verdict map")
        .expect("sluice wrote no verdict for alice");
    (v.action, Duration::from_nanos(v.expires_at_ns))
}

fn learned(net: &Netns) -> loader::layout::Learned {
    let maps = loader::Maps::open(&net.pin_dir).expect("open the pinned maps");
    maps.learned(IpAddr::V4(net.client_ip))
        .expect("read the learned map")
        .unwrap_or_else(|| panic!("sluice did not learn {}", net.client_ip))
}

fn stop(mut gw: Gateway) {
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "sluice exited with {status}");
}

/// A new connection from the over-quota tenant is refused by the kernel
/// within 100 ms, counted for alice, and never reaches sluice's accept.
/// Returns sluice's accept count, unchanged by the attempt.
fn assert_refused_in_kernel(gw: &Gateway, net: &Netns, port: u16) -> u64 {
    let before = accepted(gw);
    let (result, took) = net.connect(port, Duration::from_secs(2));
    let err = result.expect_err("a new connection from an over-quota tenant");
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "{err} after {took:?}"
    );
    assert!(took < Duration::from_millis(100), "refused after {took:?}");
    let (total, of_alice) = xdp_rejected(gw);
    assert!(total >= 1.0 && of_alice >= 1.0, "{total} {of_alice}");
    assert_eq!(accepted(gw), before, "sluice accepted a refused connection");
    before
}

#[test]
fn over_quota_tenant_is_turned_away_in_the_kernel() {
    if !netns::privileged("over_quota_tenant_is_turned_away_in_the_kernel") {
        return;
    }
    let mock = mock();
    let net = Netns::create("kern");

    // ---- run 1: action "rst"
    let port = net.free_port();
    let gw = Gateway::start(&setup(&mock, &net, port, "skb", "rst"));
    let ready = readyz(&gw);
    let want = format!("XDP attached to {} (skb)", net.host_if);
    assert_eq!(ready["kernel"], want.as_str(), "{ready}\n{}", gw.stderr());
    assert!(
        net.xdp_on_host_if(),
        "ip link show: no xdp on {}",
        net.host_if
    );

    // 1. The balance runs out through the veth; the address was learned.
    let (mut keep_alive, refused_sent) = spend_alice(&net, port);
    let l = learned(&net);
    assert_eq!(l.tenant_id, alice(), "{l:?}");
    assert!(!l.is_shared(), "{l:?}");
    let (action, expires) = verdict(&net);
    assert_eq!(action, loader::layout::ACTION_RST);
    let left = expires.saturating_sub(loader::monotonic_now());
    assert!(
        left <= VERDICT && left > Duration::ZERO,
        "verdict expires in {left:?}, want within {VERDICT:?}"
    );

    // 2. The next new connection is refused at once; sluice never sees it.
    let before = assert_refused_in_kernel(&gw, &net, port);

    // 3. The open keep-alive connection still reaches sluice: the kernel
    // judges SYNs only, and sluice answers with its own 429.
    assert_insufficient_quota(&ask(&mut keep_alive, ALICE, MINI));

    // 4. The verdict expires by itself: keep trying until a connection is
    // let through; every refusal before that is counted for alice.
    let deadline = refused_sent + VERDICT + Duration::from_secs(3);
    let mut refusals = 1.0;
    let through = loop {
        let (result, _) = net.connect(port, Duration::from_secs(1));
        match result {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refusals += 1.0,
            Err(e) => panic!("connect while waiting for the verdict to expire: {e}"),
        }
        assert!(Instant::now() < deadline, "the verdict never expired");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        refused_sent.elapsed() >= VERDICT,
        "let through {:?} after the refusal, before the verdict ({VERDICT:?}) could expire",
        refused_sent.elapsed()
    );
    wait_accepted(&gw, before + 1);
    let (_, of_alice) = xdp_rejected(&gw);
    assert_eq!(
        of_alice, refusals,
        "one count per refused connection attempt"
    );
    // A top-up lets alice's requests through on that connection.
    let r = gw.admin_post("alice", "balance", r#"{"add": 100000}"#);
    assert_eq!(r.status, 200, "top-up: {}", r.text());
    through
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    let mut through = Conn::new(through);
    let r = ask(&mut through, ALICE, MINI);
    assert_eq!(r.status, 200, "after the top-up: {}", r.text());

    // 7. Shutdown does not detach: the program stays on the interface and
    // the pins (maps with learned addresses and verdicts) stay for the
    // next start.
    drop((keep_alive, through));
    stop(gw);
    assert!(net.pin_dir.is_dir(), "pins removed at shutdown");
    assert!(net.xdp_on_host_if(), "XDP detached at shutdown");
    assert_eq!(learned(&net).tenant_id, alice(), "learned address lost");

    // ---- run 2: action "drop", on the pins run 1 left
    let port = net.free_port();
    let gw = Gateway::start(&setup(&mock, &net, port, "skb", "drop"));
    let ready = readyz(&gw);
    assert_eq!(ready["kernel"], want.as_str(), "{ready}\n{}", gw.stderr());

    // 5. A dropped SYN: the connect times out, sluice never sees it.
    let (mut keep_alive, _) = spend_alice(&net, port);
    let (action, expires) = verdict(&net);
    assert_eq!(action, loader::layout::ACTION_DROP);
    let before = accepted(&gw);
    let (_, alice_before) = xdp_rejected(&gw);
    let (result, took) = net.connect(port, Duration::from_millis(500));
    let err = result.expect_err("a new connection from an over-quota tenant");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err} after {took:?}");
    let (_, of_alice) = xdp_rejected(&gw);
    assert!(of_alice > alice_before, "{of_alice} <= {alice_before}");
    assert_eq!(
        accepted(&gw),
        before,
        "sluice accepted a dropped connection"
    );
    assert_insufficient_quota(&ask(&mut keep_alive, ALICE, MINI));

    // 6. A shared address is never rejected. Once alice's verdict is gone,
    // bob authenticates from the same address and it becomes shared.
    let now = loader::monotonic_now();
    if expires > now {
        std::thread::sleep(expires - now + Duration::from_millis(20));
    }
    let mut bob = client(&net, port);
    let r = ask(&mut bob, BOB, TURBO);
    assert_eq!(r.status, 200, "bob: {}", r.text());
    assert!(learned(&net).is_shared(), "{:?}", learned(&net));
    // Alice is refused in userspace, which writes a fresh verdict…
    let mut a = client(&net, port);
    let refused_at = loader::monotonic_now();
    assert_insufficient_quota(&ask(&mut a, ALICE, MINI));
    let (_, expires) = verdict(&net);
    assert!(expires > refused_at, "no fresh verdict for alice");
    // …yet new connections from the shared address, hers and bob's, are
    // let through while it holds.
    let (total_before, _) = xdp_rejected(&gw);
    let mut a2 = client(&net, port);
    assert_insufficient_quota(&ask(&mut a2, ALICE, MINI));
    let mut b2 = client(&net, port);
    let r = ask(&mut b2, BOB, TURBO);
    assert_eq!(r.status, 200, "bob: {}", r.text());
    assert!(
        loader::monotonic_now() < expires,
        "the verdict expired before the shared address was tried"
    );
    assert_eq!(
        xdp_rejected(&gw).0,
        total_before,
        "a shared address was rejected"
    );
    wait_accepted(&gw, before + 4);

    drop((keep_alive, bob, a, a2, b2));
    stop(gw);

    // 7. Still attached after the second shutdown; detaching (what
    // `sluice-loader detach` does) leaves nothing behind.
    assert!(net.xdp_on_host_if() && net.pin_dir.is_dir());
    let detached = loader::detach(&net.pin_dir, None).expect("detach");
    assert!(detached.cleaned_up, "{detached:?}");
    assert!(!net.pin_dir.exists(), "pin dir left behind");
    assert!(
        !net.xdp_on_host_if(),
        "XDP still attached to {}",
        net.host_if
    );
    drop(net);
}

/// Native mode (the driver's XDP hook, what production NICs use) refuses
/// the same way, provided the namespace end runs an XDP program too: on a
/// veth, XDP_TX frames reach the peer only then (see
/// `Netns::pass_on_peer`).
#[test]
fn native_mode_refuses_with_rst() {
    if !netns::privileged("native_mode_refuses_with_rst") {
        return;
    }
    let mock = mock();
    let mut net = Netns::create("natv");
    net.pass_on_peer();
    let port = net.free_port();
    let gw = Gateway::start(&setup(&mock, &net, port, "native", "rst"));
    let ready = readyz(&gw);
    let want = format!("XDP attached to {} (native)", net.host_if);
    assert_eq!(ready["kernel"], want.as_str(), "{ready}\n{}", gw.stderr());

    let (mut keep_alive, _) = spend_alice(&net, port);
    assert_refused_in_kernel(&gw, &net, port);
    assert_insufficient_quota(&ask(&mut keep_alive, ALICE, MINI));

    drop(keep_alive);
    stop(gw);
    assert!(net.xdp_on_host_if(), "XDP detached at shutdown");
    let detached = loader::detach(&net.pin_dir, None).expect("detach");
    assert!(detached.cleaned_up, "{detached:?}");
    assert!(!net.pin_dir.exists(), "pin dir left behind");
    assert!(
        !net.xdp_on_host_if(),
        "XDP still attached to {}",
        net.host_if
    );
}

/// Regression test for a bug: on a dual-stack listener (`[::]:port`, the
/// usual way to listen on every address) the kernel hands sluice IPv4
/// clients as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), and sluice
/// learns them in that form, while the XDP program looks IPv4 SYNs up by
/// their IPv4 source: the tenant's address is never found and its new
/// connections are never rejected in the kernel.
#[test]
fn a_dual_stack_listener_learns_ipv4_clients_as_ipv4() {
    if !netns::privileged("a_dual_stack_listener_learns_ipv4_clients_as_ipv4") {
        return;
    }
    let mock = mock();
    let net = Netns::create("dual");
    let port = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on [::]")
        .port();
    let listen = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let gw = Gateway::start(&setup_on(&mock, &net, listen, "skb", "rst"));
    readyz(&gw);

    let (keep_alive, _) = spend_alice(&net, port);
    verdict(&net);
    let maps = loader::Maps::open(&net.pin_dir).expect("open the pinned maps");
    let mapped = IpAddr::V6(net.client_ip.to_ipv6_mapped());
    let as_v4 = maps.learned(IpAddr::V4(net.client_ip)).expect("read");
    let as_mapped = maps.learned(mapped).expect("read");
    assert!(
        as_v4.is_some_and(|l| l.tenant_id == alice()),
        "{} not learned as IPv4 (learned as {mapped}: {as_mapped:?})",
        net.client_ip
    );
    let (result, took) = net.connect(port, Duration::from_secs(2));
    let err = result.expect_err("a new connection from an over-quota tenant");
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "{err} after {took:?}"
    );

    drop(keep_alive);
    stop(gw);
}
