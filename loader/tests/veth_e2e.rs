//! The real path: the `sluice-loader` binary attaches the program to the host
//! side of a veth pair whose other end lives in a network namespace made by
//! the test; a client in the namespace connects to a plain std TcpListener
//! on the host side. Checks that a verdict refuses new connections at once
//! (RST) or lets them time out (drop) while an open connection keeps
//! working, that verdicts expire by themselves, that a loader restart keeps
//! pins and map contents, and that detach leaves nothing behind.
//!
//! Touches only the veth pair and namespace it creates (unique names,
//! removed by a Drop guard even when the test fails) and a pin directory of
//! its own. Needs root and iproute2; see `common::privileged`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use loader::{layout, monotonic_now, Action, Maps};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A veth pair, the namespace holding its client end, and a pin directory;
/// all removed on drop.
struct Net {
    ns: String,
    host_if: String,
    ns_if: String,
    host_ip: Ipv4Addr,
    /// Client addresses inside the namespace: [learned, declared].
    client_ips: [Ipv4Addr; 2],
    pin_dir: PathBuf,
    work_dir: PathBuf,
    /// Keeps the namespace end's XDP program attached (see `create`).
    peer_program: Option<aya::Ebpf>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    fn create() -> Self {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:04x}{n}", pid & 0xffff);
        // A /29 of 198.18.0.0/15 (RFC 2544 benchmarking space), picked by
        // pid and counter so concurrent runs do not collide.
        let index = (pid.wrapping_mul(8).wrapping_add(n)) % 16384;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index * 8;
        let mut net = Net {
            ns: format!("sluice-test-{id}"),
            host_if: format!("slh{id}"),
            ns_if: format!("sln{id}"),
            host_ip: Ipv4Addr::from(base + 1),
            client_ips: [Ipv4Addr::from(base + 2), Ipv4Addr::from(base + 3)],
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{id}")),
            work_dir: std::env::temp_dir().join(format!("sluice-loader-test-{id}")),
            peer_program: None,
        };
        // The guard exists before the first command, so a half-built setup
        // is torn down too.
        let (h, c1, c2) = (
            format!("{}/29", net.host_ip),
            format!("{}/29", net.client_ips[0]),
            format!("{}/29", net.client_ips[1]),
        );
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &net.ns],
            vec![
                "link",
                "add",
                &net.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &net.ns_if,
                "netns",
                &net.ns,
            ],
            vec!["addr", "add", &h, "dev", &net.host_if],
            vec!["link", "set", &net.host_if, "up"],
            vec!["-n", &net.ns, "addr", "add", &c1, "dev", &net.ns_if],
            vec!["-n", &net.ns, "addr", "add", &c2, "dev", &net.ns_if],
            vec!["-n", &net.ns, "link", "set", &net.ns_if, "up"],
            vec!["-n", &net.ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(&step).unwrap();
        }
        // XDP_TX on a veth hands the frame to the peer, which takes it only
        // when it runs an XDP program of its own (a physical NIC needs
        // nothing of the kind). Give the namespace end a program that passes
        // everything: ours with no protected port.
        let ns_if = net.ns_if.clone();
        net.peer_program = Some(net.inside(move || {
            let mut ebpf = loader::attach::load(None).expect("load the peer's pass-all program");
            let program = loader::attach::program_mut(&mut ebpf).unwrap();
            program
                .attach(&ns_if, aya::programs::XdpMode::Driver)
                .expect("attach XDP to the namespace end");
            ebpf
        }));
        fs::create_dir_all(&net.work_dir).unwrap();
        net
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay
    /// there when handed back.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns);
        thread::scope(|s| {
            s.spawn(|| {
                let ns = fs::File::open(&path).unwrap();
                // SAFETY: setns on a valid namespace fd; it only changes this
                // (scoped, short-lived) thread's network namespace.
                let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Connects from `client` (inside the namespace) to the listener.
    fn connect(
        &self,
        client: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> (io::Result<TcpStream>, Duration) {
        let to = SocketAddr::V4(SocketAddrV4::new(self.host_ip, port));
        self.inside(|| {
            let start = Instant::now();
            let result = (|| {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.bind(&SocketAddr::V4(SocketAddrV4::new(client, 0)).into())?;
                socket.connect_timeout(&to.into(), timeout)?;
                Ok(TcpStream::from(socket))
            })();
            (result, start.elapsed())
        })
    }

    fn loader(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-loader"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "sluice-loader {}: {}\n{stdout}{stderr}",
            args.join(" "),
            out.status
        );
        stdout + &stderr
    }

    fn loader_fails(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-loader"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "sluice-loader {} succeeded",
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn xdp_on_host_if(&self) -> bool {
        let out = Command::new("ip")
            .args(["link", "show", "dev", &self.host_if])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let _ = loader::detach(&self.pin_dir, None);
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = fs::remove_dir_all(&self.work_dir);
    }
}

fn have_iproute2() -> bool {
    if Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the veth test needs iproute2 (`ip`): apt-get install iproute2");
    }
    common::skip("veth test: iproute2 (`ip`) is not installed");
    false
}

/// Waits up to `within` for a connection on the (non-blocking) listener.
fn accepted(listener: &TcpListener, within: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn exchange(client: &mut TcpStream, server: &mut TcpStream, what: &str) {
    for s in [&mut *client, &mut *server] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_nonblocking(false).unwrap();
    }
    let mut buf = [0u8; 4];
    client.write_all(b"ping").unwrap();
    server
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: server read: {e}"));
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").unwrap();
    client
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: client read: {e}"));
    assert_eq!(&buf, b"pong");
}

const LEARNED_TENANT: u32 = 1;
const DECLARED_TENANT: u32 = 2;

fn end_to_end(mode: &str) {
    let net = Net::create();
    let listener = TcpListener::bind((net.host_ip, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let [learned_ip, declared_ip] = net.client_ips;

    let config = net.work_dir.join("desired.toml");
    fs::write(
        &config,
        format!(
            "protected_ports = [{port}]\n\
             [[interfaces]]\nname = \"{}\"\nmode = \"{mode}\"\n\
             [[tenant_networks]]\nnetwork = \"{declared_ip}/32\"\ntenant = {DECLARED_TENANT}\n",
            net.host_if
        ),
    )
    .unwrap();
    let out = net.loader(&["attach", "--config", config.to_str().unwrap()]);
    assert!(
        out.contains(&format!("{}: attached ({mode} mode)", net.host_if)),
        "{out}"
    );
    assert!(net.xdp_on_host_if());

    // Before any verdict: connections work. Keep one open.
    let (client, _) = net.connect(learned_ip, port, Duration::from_secs(2));
    let mut open_client = client.expect("connect before any verdict");
    let mut open_server =
        accepted(&listener, Duration::from_secs(2)).expect("accept before any verdict");
    exchange(&mut open_client, &mut open_server, "fresh connection");

    // edge's side: an authenticated request tied learned_ip to tenant 1;
    // both tenants go over quota.
    let mut maps = Maps::open(&net.pin_dir).unwrap();
    maps.record_learned(learned_ip.into(), LEARNED_TENANT)
        .unwrap();
    let expires_at = monotonic_now() + Duration::from_secs(6);
    maps.write_verdict(LEARNED_TENANT, Action::Drop, expires_at)
        .unwrap();
    maps.write_verdict(DECLARED_TENANT, Action::Rst, expires_at)
        .unwrap();

    // Drop: the connect times out and the listener never sees it.
    let (result, _) = net.connect(learned_ip, port, Duration::from_millis(1500));
    let err = result.expect_err("connect from a tenant with a drop verdict");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(
        accepted(&listener, Duration::ZERO).is_none(),
        "listener saw a dropped connection"
    );

    // The connection opened before the verdict keeps working.
    exchange(
        &mut open_client,
        &mut open_server,
        "connection opened before the verdict",
    );

    // RST: refused at once.
    let (result, took) = net.connect(declared_ip, port, Duration::from_secs(5));
    let err = result.expect_err("connect from a tenant with an RST verdict");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    assert!(
        accepted(&listener, Duration::ZERO).is_none(),
        "listener saw a refused connection"
    );

    let counters = maps.counters().unwrap();
    assert!(counters.tenant_rejected >= 2, "{counters:?}");
    assert!(
        counters.per_tenant[&LEARNED_TENANT] >= 1 && counters.per_tenant[&DECLARED_TENANT] >= 1,
        "{counters:?}"
    );

    // Restart the loader: the program is swapped into the pinned link, the
    // pinned maps keep learned addresses, verdicts and config.
    let out = net.loader(&["attach", "--config", config.to_str().unwrap()]);
    assert!(out.contains("program replaced in place"), "{out}");
    assert!(
        out.contains("maps already match the desired state"),
        "{out}"
    );
    let maps = Maps::open(&net.pin_dir).unwrap();
    assert_eq!(
        maps.learned(learned_ip.into())
            .unwrap()
            .map(|l| l.tenant_id),
        Some(LEARNED_TENANT)
    );
    assert_eq!(
        maps.verdict(DECLARED_TENANT).unwrap().map(|v| v.action),
        Some(layout::ACTION_RST)
    );
    assert!(
        maps.counters().unwrap().tenant_rejected >= counters.tenant_rejected,
        "counters survive"
    );
    let (result, took) = net.connect(declared_ip, port, Duration::from_secs(5));
    assert_eq!(
        result.expect_err("still refused after restart").kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert!(took < Duration::from_millis(500), "refused after {took:?}");

    let status = net.loader(&["status"]);
    for needle in [
        net.host_if.as_str(),
        mode,
        layout::MAP_VERDICTS,
        "tenant_rejected",
        layout::PROG_XDP,
    ] {
        assert!(status.contains(needle), "status lacks {needle}:\n{status}");
    }

    // The verdicts expire by themselves.
    let now = monotonic_now();
    if expires_at > now {
        thread::sleep(expires_at - now + Duration::from_millis(100));
    }
    for client_ip in [learned_ip, declared_ip] {
        let (result, _) = net.connect(client_ip, port, Duration::from_secs(2));
        let mut client =
            result.unwrap_or_else(|e| panic!("connect from {client_ip} after expiry: {e}"));
        let mut server = accepted(&listener, Duration::from_secs(2)).expect("accept after expiry");
        exchange(&mut client, &mut server, "connection after expiry");
    }

    // Detach: no program on the interface, no pin left.
    let out = net.loader(&["detach"]);
    assert!(out.contains("removed every pin"), "{out}");
    assert!(!net.pin_dir.exists(), "pin dir left behind");
    assert!(!net.xdp_on_host_if(), "program still attached after detach");
    assert!(matches!(
        Maps::open(&net.pin_dir),
        Err(loader::Error::NotPinned { .. })
    ));
    drop(net);
}

#[test]
fn veth_end_to_end_native() {
    if !common::privileged("veth_end_to_end_native") || !have_iproute2() {
        return;
    }
    end_to_end("native");
}

#[test]
fn veth_end_to_end_skb() {
    if !common::privileged("veth_end_to_end_skb") || !have_iproute2() {
        return;
    }
    end_to_end("skb");
}

#[test]
fn reattach_detach_and_a_vanished_interface() {
    if !common::privileged("reattach_detach_and_a_vanished_interface") || !have_iproute2() {
        return;
    }
    let net = Net::create();
    let pin_dir: &Path = &net.pin_dir;
    // A first attach that fails leaves nothing behind.
    let out = net.loader_fails(&["attach", "--iface", "no-such-if"]);
    assert!(
        out.contains("attach xdp to no-such-if in native mode failed: unknown network interface"),
        "{out}"
    );
    assert!(!pin_dir.exists(), "failed first attach left pins");

    let out = net.loader(&["attach", "--iface", &net.host_if, "--mode", "skb"]);
    assert!(out.contains("attached (skb mode)"), "{out}");
    // Asking again for native keeps the skb link (an earlier fallback) and
    // swaps the program in place instead of flapping.
    let out = net.loader(&["attach", "--iface", &net.host_if]);
    assert!(
        out.contains("program replaced in place (skb mode)"),
        "{out}"
    );
    let out = net.loader(&["detach", "--iface", "no-such-if"]);
    assert!(
        out.contains("no sluice program is attached to no-such-if"),
        "{out}"
    );
    assert!(
        pin_dir.join(layout::MAP_STATS).exists(),
        "other interfaces keep their pins"
    );

    // The interface disappears under the program: status says so, and
    // detach still cleans up.
    ip(&["link", "del", &net.host_if]).unwrap();
    let status = net.loader(&["status"]);
    assert!(status.contains("interface gone"), "{status}");
    let out = net.loader(&["detach"]);
    assert!(out.contains("removed every pin"), "{out}");
    assert!(!pin_dir.exists());
    let status = net.loader(&["status"]);
    assert!(
        status.contains("not loaded") && status.contains("(none attached)"),
        "{status}"
    );
}

#[test]
fn attach_mounts_bpffs_when_missing() {
    if !common::privileged("attach_mounts_bpffs_when_missing") || !have_iproute2() {
        return;
    }
    // In a private mount namespace without /sys/fs/bpf mounted (the host's
    // mounts are untouched), attach must mount bpffs itself.
    let net = Net::create();
    let bin = env!("CARGO_BIN_EXE_sluice-loader");
    let pins = net.pin_dir.display().to_string();
    let script = format!(
        "umount -l /sys/fs/bpf 2>/dev/null; \
         if [ \"$(stat -f -c %T /sys/fs/bpf)\" = bpf_fs ]; then echo still mounted; exit 1; fi; \
         {bin} --pin-dir {pins} attach --iface {iface} --mode skb && \
         stat -f -c %T {pins} && \
         {bin} --pin-dir {pins} status && \
         {bin} --pin-dir {pins} detach",
        iface = net.host_if
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("attached (skb mode)")
            && text.contains("bpf_fs")
            && text.contains("removed every pin"),
        "{text}"
    );
    assert!(!net.xdp_on_host_if());
}
