//! A veth pair into a network namespace, for the kernel tests.
//!
//! The host end carries an address sluice listens on (and the interface it
//! attaches XDP to); the namespace end holds the one client address, so
//! every connection made from inside the namespace arrives through the
//! XDP-attached interface with a known source address. Names and the /29
//! are unique per process and call; `Drop` removes the pair, the namespace
//! and the test's bpffs pin directory (detaching first) even when the test
//! failed, and touches nothing it did not create.
#![allow(dead_code)] // only the kernel tests use this module

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Says why a test is skipped, on the real stderr (libtest captures
/// `eprintln!` of passing tests, and a skip must be seen).
pub fn skip(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(io::stderr(), "SKIPPED {why}");
}

/// Whether `test` may touch the kernel: root (BPF, bpffs, netns, veth) and
/// iproute2. Under `CI=true` (CI runs as root with iproute2) a missing
/// piece is a failure; elsewhere the test is skipped with a message.
pub fn privileged(test: &str) -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let why = format!("{test}: needs root (XDP attach, bpffs, netns, veth)");
        assert!(
            !ci,
            "{why} and CI=true: CI runs as root, so this is a failure"
        );
        skip(&format!("{why}; run the tests as root"));
        return false;
    }
    let have_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_ip {
        let why = format!("{test}: needs iproute2 (`ip`): apt-get install iproute2");
        assert!(!ci, "{why} (CI=true)");
        skip(&why);
        return false;
    }
    true
}

/// Runs `ip args…`; the error names the command and what ip said.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The veth pair, its namespace and a pin directory; removed on drop.
pub struct Netns {
    pub ns: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: Ipv4Addr,
    /// The namespace end's only address: every client connection's source.
    pub client_ip: Ipv4Addr,
    /// A bpffs directory of this test's own (not created here).
    pub pin_dir: PathBuf,
    /// Pins of the namespace end's pass-everything program, if any.
    peer_pin_dir: Option<PathBuf>,
    made_ns: bool,
    made_link: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn create(tag: &str) -> Self {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:05x}{n}", pid & 0xf_ffff);
        let mut net = Netns {
            ns: format!("sluice-edge-{tag}-{id}"),
            // IFNAMSIZ: at most 15 characters.
            host_if: format!("skh{id}"),
            ns_if: format!("skn{id}"),
            host_ip: Ipv4Addr::UNSPECIFIED,
            client_ip: Ipv4Addr::UNSPECIFIED,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-edge-{tag}-{id}")),
            peer_pin_dir: None,
            made_ns: false,
            made_link: false,
        };
        assert!(
            !net.pin_dir.exists(),
            "{} exists already: left by an earlier run with the same pid? remove it with \
             `sluice-loader --pin-dir {} detach`",
            net.pin_dir.display(),
            net.pin_dir.display()
        );
        // A /29 of 198.18.0.0/15 (RFC 2544 benchmarking space) that no
        // host interface uses yet: other kernel tests pick from the same
        // space, and a route clash would send our packets elsewhere.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = pid.wrapping_mul(2_654_435_761) ^ nanos ^ n.wrapping_mul(40_503);
        let base = (0..64)
            .map(|i| u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (seed.wrapping_add(i) % 16384) * 8)
            .find(|base| {
                let net = format!("{}/29", Ipv4Addr::from(*base));
                ip(&["-o", "-4", "addr", "show", "to", &net]).is_ok_and(|out| out.trim().is_empty())
            })
            .expect("a free /29 in 198.18.0.0/15");
        net.host_ip = Ipv4Addr::from(base + 1);
        net.client_ip = Ipv4Addr::from(base + 2);

        // `net` exists before the first command, so a half-built setup is
        // torn down by its Drop.
        ip(&["netns", "add", &net.ns]).unwrap_or_else(|e| panic!("{e}"));
        net.made_ns = true;
        ip(&[
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
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        net.made_link = true;
        let (h, c) = (
            format!("{}/29", net.host_ip),
            format!("{}/29", net.client_ip),
        );
        for step in [
            vec!["addr", "add", &h, "dev", &net.host_if],
            vec!["link", "set", &net.host_if, "up"],
            vec!["-n", &net.ns, "addr", "add", &c, "dev", &net.ns_if],
            vec!["-n", &net.ns, "link", "set", &net.ns_if, "up"],
            vec!["-n", &net.ns, "link", "set", "lo", "up"],
        ] {
            ip(&step).unwrap_or_else(|e| panic!("{e}"));
        }
        // The pair is up once the namespace end can reach the host address
        // (IPv4 needs no duplicate address detection, but the link state
        // takes a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = TcpListener::bind((net.host_ip, 0)).expect("bind a probe listener");
        let probe_port = probe.local_addr().expect("probe address").port();
        while let Err(e) = net.connect(probe_port, Duration::from_millis(500)).0 {
            assert!(
                Instant::now() < deadline,
                "the veth pair does not carry traffic: {e}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        net
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay
    /// there when handed back.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns);
        thread::scope(|s| {
            s.spawn(|| {
                let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns with a valid namespace fd; it changes only
                // this short-lived scoped thread's network namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("the thread inside {path} panicked"))
        })
    }

    /// One connection attempt from the namespace to `host_ip:port`, and
    /// how long the attempt took (the thread and setns excluded).
    pub fn connect(&self, port: u16, timeout: Duration) -> (io::Result<TcpStream>, Duration) {
        let to = SocketAddr::V4(SocketAddrV4::new(self.host_ip, port));
        self.inside(|| {
            let start = Instant::now();
            let result = TcpStream::connect_timeout(&to, timeout);
            (result, start.elapsed())
        })
    }

    /// A port on `host_ip` that was free a moment ago. A listener port must
    /// be known for the XDP program to protect it (port 0 is not).
    pub fn free_port(&self) -> u16 {
        let l = TcpListener::bind((self.host_ip, 0)).expect("bind to find a free port");
        l.local_addr().expect("local address").port()
    }

    /// Attaches sluice's program, with no protected port (so it passes
    /// everything), to the namespace end in native mode. XDP_TX on a veth
    /// hands the frame to the peer, which takes it only when it runs an XDP
    /// program of its own: without this, native-mode RSTs are lost and a
    /// refused client times out instead. (A physical NIC needs nothing of
    /// the kind, nor does skb mode.)
    pub fn pass_on_peer(&mut self) {
        let dir = PathBuf::from(format!("{}-peer", self.pin_dir.display()));
        self.peer_pin_dir = Some(dir.clone());
        let iface = loader::Interface {
            name: self.ns_if.clone(),
            mode: loader::Mode::Native,
        };
        // Inside the namespace: the interface name resolves there.
        let attached = self
            .inside(|| loader::attach(&dir, &[iface]))
            .unwrap_or_else(|e| panic!("attach the pass program to {}: {e}", self.ns_if));
        assert!(
            attached.iter().all(|a| a.mode == loader::Mode::Native),
            "{attached:?}"
        );
    }

    /// Whether `ip link show` lists an XDP program on the host end.
    pub fn xdp_on_host_if(&self) -> bool {
        ip(&["link", "show", "dev", &self.host_if])
            .unwrap_or_else(|e| panic!("{e}"))
            .contains("xdp")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for dir in [Some(&self.pin_dir), self.peer_pin_dir.as_ref()]
            .into_iter()
            .flatten()
        {
            if !dir.exists() {
                continue;
            }
            if let Err(e) = loader::detach(dir, None) {
                eprintln!("cleanup: detach {}: {e}", dir.display());
            }
            let _ = fs::remove_dir_all(dir);
        }
        // Deleting one end of a veth deletes both.
        if self.made_link {
            let _ = ip(&["link", "del", &self.host_if]);
        }
        if self.made_ns {
            let _ = ip(&["netns", "del", &self.ns]);
        }
    }
}
