//! `sluice-xdp-bench`: what kernel early rejection saves (DESIGN.md §7:
//! "XDP rejection costs ≥ 10× less CPU per refused connection than a
//! userspace 429, and a verdict takes effect ≤ 1 ms after it is written").
//!
//! Driven by `bench/xdp/run.sh`, which builds, makes a veth pair into a
//! network namespace, starts sluice with the right config for each case and
//! runs the subcommands below; every subcommand writes one TOML result that
//! `report` turns into `report.md`.
//!
//! ```text
//! sluice-xdp-bench flood   --case userspace|xdp-drop|xdp-rst  <net> --admin ADDR --sluice-pid PID ...
//! sluice-xdp-bench latency <net> --pin-dir DIR --trials 50 --interval-us 50 ...
//! sluice-xdp-bench report  --dir DIR --out report.md
//! sluice-xdp-bench napi    --iface NAME [--cpu N] [--fifo PRIO]   # a veth end's receive thread
//! ```
//!
//! `flood` offers connection attempts from the namespace at a fixed rate
//! (open loop) for a few seconds and measures the CPU they cost, after an
//! idle baseline of the same kind:
//! - `userspace`: sluice without `[ebpf]`; each attempt is a real TCP
//!   connect, one HTTP request of an over-quota tenant, sluice's
//!   `429 insufficient_quota`, close (nonblocking sockets and epoll);
//! - `xdp-drop` / `xdp-rst`: sluice with `[ebpf]`; one real request first
//!   makes sluice learn the client address and write its verdict, then
//!   raw SYNs (an AF_PACKET socket on the namespace end, so the client side
//!   costs next to nothing) that the program drops or answers with a RST.
//!
//! CPU is measured four ways: per thread with `perf stat -e task-clock`
//! (the host end's NAPI thread, which runs everything the server receives,
//! and sluice's threads: the server side; the namespace end's NAPI thread and
//! the load generator: the client side) — what only the attempts cost,
//! whatever else runs on the machine; a system-wide `perf record`
//! (cpu-clock, call chains) attributed by thread, for where the CPU went;
//! and `/proc/stat` busy time (wall minus idle and iowait) of all CPUs, as
//! DESIGN.md asks, and of the server CPU alone, each minus the baseline's
//! (meaningful only when nothing else runs, which the baseline shows). With
//! the program attached, the kernel's per-program run time
//! (BPF_ENABLE_STATS) gives the program's own cost.
//!
//! `latency` writes a verdict (`Maps::write_verdict`) while SYNs go out
//! every `--interval-us` from the namespace, and times the first RST the
//! client receives (kernel receive timestamp) and the first move of the
//! tenant's counter, against the moment the write returned.

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use loader::{layout, Action, Maps};
use serde::{Deserialize, Serialize};

// ------------------------------------------------------------------- CLI

#[derive(Parser)]
#[command(
    name = "sluice-xdp-bench",
    about = "CPU per refused connection (XDP vs userspace 429) and verdict latency"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Offer connection attempts at a fixed rate and measure their CPU cost.
    Flood(FloodArgs),
    /// Time from a verdict written to the first rejected SYN.
    Latency(LatencyArgs),
    /// Turn the TOML results of a directory into report.md.
    Report(ReportArgs),
    /// GRO on and threaded NAPI for a veth end (in the current namespace).
    Napi(NapiArgs),
}

#[derive(Args)]
struct NapiArgs {
    #[arg(long)]
    iface: String,
    /// Pin the NAPI thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// SCHED_FIFO priority for the NAPI thread (0 = leave it SCHED_OTHER):
    /// on a shared machine other processes would otherwise delay it by
    /// milliseconds, which the latency measurement would count.
    #[arg(long, default_value_t = 50)]
    fifo: i32,
}

#[derive(Args, Clone)]
struct NetArgs {
    /// The client's network namespace (/run/netns/NAME).
    #[arg(long)]
    netns: String,
    /// The veth end inside the namespace.
    #[arg(long)]
    ns_if: String,
    /// The veth end on the host (where sluice listens and XDP runs).
    #[arg(long)]
    host_if: String,
    #[arg(long)]
    host_ip: Ipv4Addr,
    #[arg(long)]
    client_ip: Ipv4Addr,
    /// sluice's listener port on host_ip (protected by the program).
    #[arg(long)]
    port: u16,
    /// bpffs directory of sluice's pins (the XDP cases and latency).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// API key of the over-quota consumer.
    #[arg(long, default_value = "sk-over")]
    key: String,
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// CPU the load generator runs on.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// CPU sluice and the host end's receive work run on.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// SCHED_FIFO priority of the load generator threads (0 = none), so
    /// other processes on the machine do not disturb the pacing.
    #[arg(long, default_value_t = 10)]
    client_fifo: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Case {
    Userspace,
    XdpDrop,
    XdpRst,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Userspace => "userspace 429",
            Case::XdpDrop => "XDP drop",
            Case::XdpRst => "XDP RST",
        }
    }
    fn action(self) -> Option<Action> {
        match self {
            Case::Userspace => None,
            Case::XdpDrop => Some(Action::Drop),
            Case::XdpRst => Some(Action::Rst),
        }
    }
}

#[derive(Args)]
struct FloodArgs {
    #[arg(long, value_enum)]
    case: Case,
    #[command(flatten)]
    net: NetArgs,
    /// sluice's admin address (for /metrics).
    #[arg(long)]
    admin: SocketAddr,
    /// sluice's pid (its threads' CPU time, perf attribution).
    #[arg(long)]
    sluice_pid: i32,
    /// Connection attempts per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Length of the load phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Length of the idle baseline right before it, seconds.
    #[arg(long, default_value_t = 3.0)]
    baseline: f64,
    /// Pacing tick: the attempts due are sent every tick.
    #[arg(long, default_value_t = 250)]
    tick_us: u64,
    /// Most userspace connections in flight at once.
    #[arg(long, default_value_t = 8192)]
    max_inflight: usize,
    /// perf binary for the attribution (none = skip).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// perf cpu-clock sampling period, ns: not a divisor or multiple of
    /// the pacing tick, or the samples would hit the same phase of every
    /// tick.
    #[arg(long, default_value_t = 246_913)]
    perf_period_ns: u64,
    /// Scratch directory (perf data).
    #[arg(long)]
    work: PathBuf,
    /// Round number, for the report.
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// XDP mode as configured (for the report).
    #[arg(long, default_value = "skb")]
    mode: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct LatencyArgs {
    #[command(flatten)]
    net: NetArgs,
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Gap between SYNs, µs.
    #[arg(long, default_value_t = 50)]
    interval_us: u64,
    #[arg(long, default_value = "skb")]
    mode: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ReportArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Flood(a) => flood(&a),
        Cmd::Latency(a) => latency(&a),
        Cmd::Report(a) => report(&a),
        Cmd::Napi(a) => napi_setup(&a),
    };
    if let Err(e) = result {
        eprintln!("sluice-xdp-bench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- results

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct CpuStat {
    cpu: usize,
    /// Busy seconds in the load window (user+nice+system+irq+softirq).
    busy_s: f64,
    /// Busy seconds of the baseline, scaled to the load window's length.
    baseline_busy_s: f64,
    user_s: f64,
    system_s: f64,
    softirq_s: f64,
    /// Time the hypervisor ran something else on this vCPU.
    steal_s: f64,
    /// NET_RX softirqs run on this CPU in the load window (/proc/softirqs).
    net_rx: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct Perf {
    period_ns: u64,
    /// Seconds of samples in the load window, baseline (scaled) removed.
    /// The host end's NAPI thread: the receive path up to the socket (the
    /// XDP program included) and what it transmits in reply.
    server_napi_s: f64,
    sluice_user_s: f64,
    sluice_kernel_s: f64,
    /// The namespace end's NAPI thread.
    client_napi_s: f64,
    client_user_s: f64,
    client_kernel_s: f64,
    /// Every other non-idle sample (other processes on the machine).
    other_s: f64,
    /// The same classes in the baseline, scaled to the load window.
    baseline_server_s: f64,
    baseline_other_s: f64,
    server_per_attempt_us: f64,
    client_per_attempt_us: f64,
    /// Server-side samples whose call chain contains the function, % of
    /// server-side samples.
    inclusive: Vec<Share>,
    /// Server-side samples by the function they were in, %.
    top_leaf: Vec<Share>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct Share {
    name: String,
    pct: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct XdpCheck {
    tenant: u32,
    verdict_action: String,
    attached: String,
    tenant_rejected: u64,
    passed: u64,
    per_tenant: u64,
    malformed: u64,
    syn_limited: u64,
    /// TCP segments the namespace received in the window (the RSTs).
    ns_in_segs: u64,
    ns_in_csum_errors: u64,
    prog_runs: u64,
    prog_ns_per_run: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct HttpOutcome {
    insufficient_quota_429: u64,
    other_status: u64,
    connect_errors: u64,
    resets: u64,
    timeouts: u64,
    max_inflight: u64,
    mean_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct FloodResult {
    case: Option<Case>,
    round: u32,
    mode: String,
    rate: u32,
    /// Attempts offered (SYNs sent, or connects started).
    attempts: u64,
    /// Load phase, s (sending).
    send_s: f64,
    /// Measured window, s (sending + settling / draining).
    window_s: f64,
    baseline_s: f64,
    achieved_rate: f64,
    send_errors: u64,
    /// sluice's accepted-connections counter over the window.
    accepted_delta: u64,
    /// Host busy seconds (all CPUs) in the window minus the baseline's.
    stat_host_s: f64,
    stat_host_per_attempt_us: f64,
    /// The server CPU alone (sluice, the host end's NAPI thread, and the
    /// interrupts and idle exits that no thread is charged for), the same way.
    stat_server_per_attempt_us: f64,
    server_cpu: usize,
    /// Host busy share during the baseline (other work on the machine).
    stat_baseline_busy_pct: f64,
    stat_cpus: Vec<CpuStat>,
    /// Server side, exact (schedstat run time, baseline removed): the host
    /// end's NAPI thread plus sluice's threads.
    server_s: f64,
    server_per_attempt_us: f64,
    server_napi_s: f64,
    /// Times the host end's NAPI thread was woken, per attempt.
    server_napi_wakeups_per_attempt: f64,
    /// Its context switches in the load window (perf), per attempt.
    server_napi_switches_per_attempt: f64,
    /// Where the exact columns come from: "perf task-clock" or "schedstat".
    clock: String,
    /// The server CPU per attempt by schedstat, for comparison.
    schedstat_server_per_attempt_us: f64,
    sluice_s: f64,
    sluice_per_attempt_us: f64,
    /// Client side, exact: the load generator thread plus the namespace
    /// end's NAPI thread.
    client_s: f64,
    client_per_attempt_us: f64,
    client_napi_s: f64,
    /// The load generator thread's own CPU time.
    client_thread_s: f64,
    perf: Option<Perf>,
    xdp: Option<XdpCheck>,
    http: Option<HttpOutcome>,
    /// Failed checks; empty = verified.
    problems: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct Trial {
    write_us: f64,
    /// First RST the client received (kernel rx time) − write returned.
    rst_us: f64,
    /// Send time of the SYN that RST answered − write returned.
    rejected_syn_sent_us: f64,
    /// First poll that saw the tenant's counter move − write returned.
    counter_us: f64,
    /// SYNs sent after the write returned that still got a SYN-ACK.
    passed_after_write: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
struct LatencyResult {
    mode: String,
    interval_us: u64,
    achieved_interval_us: f64,
    trials: Vec<Trial>,
    problems: Vec<String>,
}

fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string(value).context("serialise result")?;
    fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

// ------------------------------------------------------------- utilities

fn mono_ns() -> u64 {
    u64::try_from(loader::monotonic_now().as_nanos()).unwrap_or(u64::MAX)
}

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline_ns` on CLOCK_MONOTONIC.
fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; EINTR just wakes us early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

fn os_err(what: &str) -> anyhow::Error {
    anyhow!("{what}: {}", io::Error::last_os_error())
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(os_err(&format!("pin to CPU {cpu}")));
        }
    }
    Ok(())
}

/// 1 µs timer slack: the pacing sleeps are short.
fn tight_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

/// Moves the calling thread into the network namespace `name`.
fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = fs::File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns with a valid namespace fd changes only this thread's
    // network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os_err(&format!("setns {path}")));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace.
fn inside<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    let netns = netns.to_owned();
    thread::spawn(move || {
        enter_netns(&netns)?;
        f()
    })
}

fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow!("a bench thread panicked"))?
}

fn raise_nofile() {
    let lim = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    // SAFETY: setrlimit reads one valid struct; failure leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

fn ifindex(name: &str) -> Result<i32> {
    let c = CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(os_err(&format!("interface {name}")));
    }
    Ok(idx as i32)
}

/// A datagram socket for interface ioctls and a zeroed `ifreq` naming
/// `name` (NUL-terminated within IFNAMSIZ).
fn ifreq_for(name: &str) -> Result<(OwnedFd, libc::ifreq)> {
    // SAFETY: socket() returns a fresh descriptor that OwnedFd then owns;
    // ifreq is plain old data, valid zeroed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os_err("socket"));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        if name.len() >= req.ifr_name.len() {
            bail!("interface name {name} too long");
        }
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok((fd, req))
    }
}

/// The MAC address of `name` in the calling thread's namespace.
fn mac_of(name: &str) -> Result<[u8; 6]> {
    let (fd, mut req) = ifreq_for(name)?;
    // SAFETY: ioctl on a descriptor we own with a live, named ifreq.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) != 0 {
            return Err(os_err(&format!("SIOCGIFHWADDR {name}")));
        }
        let sa = req.ifr_ifru.ifru_hwaddr;
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *d = *s as u8;
        }
        Ok(mac)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ----------------------------------------------------------- /proc probes

#[derive(Clone, Debug, Default)]
struct StatSnap {
    /// When it was read, CLOCK_MONOTONIC ns.
    t: u64,
    /// Per CPU: user, nice, system, idle, iowait, irq, softirq, steal (ticks).
    cpus: Vec<[u64; 8]>,
    net_rx: Vec<u64>,
}

fn read_stat() -> Result<StatSnap> {
    let text = fs::read_to_string("/proc/stat")?;
    let mut snap = StatSnap {
        t: mono_ns(),
        ..StatSnap::default()
    };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        if name.len() > 3 && name.starts_with("cpu") {
            let mut v = [0u64; 8];
            for (slot, field) in v.iter_mut().zip(it) {
                *slot = field.parse().unwrap_or(0);
            }
            snap.cpus.push(v);
        }
    }
    let softirqs = fs::read_to_string("/proc/softirqs")?;
    for line in softirqs.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some("NET_RX:") {
            snap.net_rx = it.map(|f| f.parse().unwrap_or(0)).collect();
        }
    }
    Ok(snap)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy seconds of one CPU between two snapshots: the wall time minus
/// idle and iowait. On a tickless kernel idle time is measured exactly,
/// while user/system/softirq are sampled at the tick, which misses work
/// done in bursts shorter than a tick (a NAPI poll, a request): their sum
/// undercounts such work badly.
fn busy_s(a: &StatSnap, b: &StatSnap, cpu: usize, hz: f64) -> f64 {
    let (Some(x), Some(y)) = (a.cpus.get(cpu), b.cpus.get(cpu)) else {
        return f64::NAN;
    };
    let idle = (y[3] + y[4]).saturating_sub(x[3] + x[4]) as f64 / hz;
    (b.t.saturating_sub(a.t) as f64 / 1e9 - idle).max(0.0)
}

/// Run time of every thread of `pid`, ns (schedstat: exact, not ticks).
fn process_runtime_ns(pid: i32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Run time of one thread (any process), ns.
fn thread_runtime_ns(tid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How many times a thread was scheduled in (schedstat's third field).
fn thread_runs(tid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(0)
}

/// The threaded-NAPI kernel thread of `ifname` ("napi/<ifname>-<id>",
/// cut to 15 characters).
fn napi_thread(ifname: &str) -> Result<i32> {
    let mut want = format!("napi/{ifname}-");
    want.truncate(15);
    let mut found = Vec::new();
    for e in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(e.path().join("comm")) {
            if comm.trim_end().starts_with(&want) {
                found.push(pid);
            }
        }
    }
    match found.as_slice() {
        [tid] => Ok(*tid),
        [] => bail!(
            "no NAPI thread for {ifname}: run `sluice-xdp-bench napi --iface {ifname}` (GRO on, threaded NAPI) first"
        ),
        _ => bail!("several NAPI threads match {want}: {found:?}"),
    }
}

/// SCHED_FIFO at `prio` for thread `tid` (0 = the calling thread); prio 0
/// leaves it alone.
fn set_fifo(tid: i32, prio: i32) -> Result<()> {
    if prio <= 0 {
        return Ok(());
    }
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: reads one valid sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(os_err(&format!("SCHED_FIFO {prio} for thread {tid}")));
    }
    Ok(())
}

fn pin_tid(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: as in pin_thread, for another thread by id.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(os_err(&format!("pin thread {tid} to CPU {cpu}")));
        }
    }
    Ok(())
}

/// A legacy ethtool "set one feature" ioctl (`struct ethtool_value`).
fn ethtool_set(iface: &str, cmd: u32, data: u32) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue { cmd, data };
    let (fd, mut req) = ifreq_for(iface)?;
    // SAFETY: ioctl on a descriptor we own; ifr_data points at a live
    // ethtool_value for the whole call.
    unsafe {
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        if libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) != 0 {
            return Err(os_err(&format!("ethtool command {cmd:#x} on {iface}")));
        }
    }
    Ok(())
}

/// Gives a veth end its own receive thread: GRO on (a veth then gets a NAPI
/// instance even without XDP), TSO off (a veth hands a peer with NAPI only
/// the skbs GRO could aggregate, which excludes TCP sockets' skbs while the
/// sender has TSO on; everything else is received inline by the sender),
/// and threaded NAPI. For `iface` in the calling process's namespace; /sys
/// must be that namespace's (run.sh uses `ip netns exec` for the far end).
fn napi_setup(a: &NapiArgs) -> Result<()> {
    const ETHTOOL_STSO: u32 = 0x1f;
    const ETHTOOL_SGRO: u32 = 0x2c;
    ethtool_set(&a.iface, ETHTOOL_STSO, 0)?;
    ethtool_set(&a.iface, ETHTOOL_SGRO, 1)?;
    let threaded = format!("/sys/class/net/{}/threaded", a.iface);
    fs::write(&threaded, "1").with_context(|| format!("write 1 to {threaded}"))?;
    let tid = napi_thread(&a.iface)?;
    if let Some(cpu) = a.cpu {
        pin_tid(tid, cpu)?;
    }
    set_fifo(tid, a.fifo)?;
    println!("{tid}");
    Ok(())
}

/// The calling thread's namespace's TCP MIB counters.
fn ns_tcp_mib() -> Result<HashMap<String, u64>> {
    let text = fs::read_to_string("/proc/thread-self/net/snmp")?;
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let mut out = HashMap::new();
    if let [names, values] = tcp.as_slice() {
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            out.insert(n.to_owned(), v.parse().unwrap_or(0));
        }
    }
    Ok(out)
}

/// `sluice_connections_accepted_total`, summed over workers.
fn accepted(admin: SocketAddr) -> Result<u64> {
    let mut last = None;
    for _ in 0..3 {
        match accepted_once(admin) {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(500));
    }
    Err(last.unwrap_or_else(|| anyhow!("no try")))
}

fn accepted_once(admin: SocketAddr) -> Result<u64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .with_context(|| format!("connect to sluice admin {admin}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("read /metrics from {admin}"))?;
    let total = text
        .lines()
        .filter(|l| l.starts_with("sluice_connections_accepted_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum::<f64>();
    Ok(total as u64)
}

// ------------------------------------------------------------------ frames

/// Builds SYNs from the namespace end to sluice's port, as a Linux client
/// would send them (MSS, SACK-permitted, timestamps, window scale).
struct SynBuilder {
    template: [u8; SYN_LEN],
}

const SYN_LEN: usize = 14 + 20 + 40;

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn csum_add(bytes: &[u8], mut sum: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

impl SynBuilder {
    fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Self {
        let mut f = [0u8; SYN_LEN];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&60u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let tcp = &mut f[34..74];
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 10 << 4; // 40-byte header
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
        tcp[20..40].copy_from_slice(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        SynBuilder { template: f }
    }

    /// SYN number `n`: its own source port and `seq = n`.
    fn build(&self, n: u32, out: &mut [u8; SYN_LEN]) {
        *out = self.template;
        let sport = 1024 + (n % 60_000) as u16;
        out[18..20].copy_from_slice(&(n as u16).to_be_bytes()); // IP id
        let ip_sum = csum_fold(csum_add(&out[14..34], 0));
        out[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        out[34..36].copy_from_slice(&sport.to_be_bytes());
        out[38..42].copy_from_slice(&n.to_be_bytes());
        out[58..62].copy_from_slice(&n.wrapping_mul(7).to_be_bytes()); // TSval
                                                                       // Pseudo-header + segment.
        let mut sum = csum_add(&out[26..34], 0);
        sum += 6 + 40;
        sum = csum_add(&out[34..74], sum);
        let tcp_sum = csum_fold(sum);
        out[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
    }
}

/// A send-only AF_PACKET socket on `ifname` (protocol 0: receives nothing).
struct PacketTx {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketTx {
    fn open(ifname: &str, dst_mac: [u8; 6]) -> Result<Self> {
        let ifindex = ifindex(ifname)?;
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_err("socket(AF_PACKET)"));
        }
        // SAFETY: the kernel just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex;
        addr.sll_protocol = 0;
        // SAFETY: bind reads a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(os_err("bind(AF_PACKET)"));
        }
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        Ok(PacketTx { fd, addr })
    }

    /// Sends the frames; returns how many went out.
    fn send_batch(&self, frames: &mut [[u8; SYN_LEN]]) -> usize {
        let mut iovs: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: SYN_LEN,
            })
            .collect();
        let mut addr = self.addr;
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain data; zero is a valid start.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
                hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        let mut done = 0usize;
        let mut tries = 0;
        while done < msgs.len() && tries < 4 {
            tries += 1;
            // SAFETY: every msghdr points at live iovecs, frames and addr.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (msgs.len() - done) as u32,
                    0,
                )
            };
            if n <= 0 {
                continue;
            }
            done += n as usize;
        }
        done
    }
}

// -------------------------------------------------------- per-thread CPU

/// `perf stat -e task-clock --per-thread` on a set of threads: the time
/// each was on a CPU, from perf's own context-switch timestamps.
///
/// Not schedstat: on the VM this was written on, a thread's
/// `sum_exec_runtime` grows by tens of µs per wakeup more than the thread
/// ran when its CPU was idle before the wakeup (perf's task-clock, its
/// samples and the host's idle time agree with each other, not with it),
/// which swamps the cost of one SYN.
struct TaskClock {
    child: Child,
    out: PathBuf,
    spawned: u64,
}

fn task_clock_start(perf: &Path, tids: &[i32], out: &Path) -> Result<TaskClock> {
    let list: Vec<String> = tids.iter().map(|t| t.to_string()).collect();
    let spawned = mono_ns();
    let child = Command::new(perf)
        .args([
            "stat",
            "-e",
            "task-clock,context-switches",
            "--per-thread",
            "-x",
            ",",
            "-t",
        ])
        .arg(list.join(","))
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {} stat", perf.display()))?;
    // Until its counters are attached.
    thread::sleep(Duration::from_millis(300));
    Ok(TaskClock {
        child,
        out: out.to_owned(),
        spawned,
    })
}

/// Per thread: (seconds on CPU, context switches); and the window length.
type ThreadTimes = HashMap<i32, (f64, u64)>;

fn task_clock_stop(mut tc: TaskClock) -> Result<(ThreadTimes, u64)> {
    // SAFETY: kill(2) of the child we spawned and have not reaped.
    unsafe { libc::kill(tc.child.id() as i32, libc::SIGINT) };
    let stopped = mono_ns();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tc.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("perf stat did not stop");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let text = fs::read_to_string(&tc.out).with_context(|| format!("read {}", tc.out.display()))?;
    let _ = fs::remove_file(&tc.out);
    let mut times = ThreadTimes::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // comm-tid,value,unit,event,...
        let fields: Vec<&str> = line.split(',').collect();
        let [who, value, _unit, event, ..] = fields.as_slice() else {
            continue;
        };
        let Some(tid) = who
            .rsplit_once('-')
            .and_then(|(_, t)| t.parse::<i32>().ok())
        else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0); // "<not counted>": did not run
        let slot = times.entry(tid).or_default();
        if event.starts_with("task-clock") {
            slot.0 = v / 1e3;
        } else if event.starts_with("context-switches") {
            slot.1 = v as u64;
        }
    }
    Ok((times, stopped - tc.spawned))
}

impl Drop for TaskClock {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn thread_ids(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------- perf probe

struct PerfRun {
    child: Child,
    data: PathBuf,
}

fn perf_start(perf: &Path, data: &Path, period_ns: u64) -> Result<PerfRun> {
    let child = Command::new(perf)
        .args(["record", "-a", "-g", "-q", "-e", "cpu-clock", "-c"])
        .arg(period_ns.to_string())
        .args(["-k", "CLOCK_MONOTONIC", "-o"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", perf.display()))?;
    // perf needs a moment to open its events on every CPU.
    thread::sleep(Duration::from_millis(800));
    Ok(PerfRun {
        child,
        data: data.to_owned(),
    })
}

fn perf_stop(mut run: PerfRun) -> Result<PathBuf> {
    // SAFETY: kill(2) of the child we spawned and have not reaped.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("perf record did not stop");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(run.data.clone())
}

impl Drop for PerfRun {
    /// An error between start and stop must not leave perf recording.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Functions whose presence in a server-side call chain is reported.
const MARKERS: &[(&str, &str)] = &[
    ("sluice_xdp", "XDP program (bpf_prog_*_sluice_xdp)"),
    ("do_xdp_generic", "generic XDP hook (do_xdp_generic)"),
    ("generic_xdp_tx", "XDP_TX in skb mode (generic_xdp_tx)"),
    ("veth_poll", "veth NAPI (veth_poll)"),
    ("__netif_receive_skb_core", "__netif_receive_skb_core"),
    ("ip_rcv", "IPv4 receive (ip_rcv)"),
    ("tcp_v4_rcv", "TCP receive (tcp_v4_rcv)"),
    (
        "tcp_conn_request",
        "SYN → request sock + SYN-ACK (tcp_conn_request)",
    ),
    ("tcp_check_req", "handshake completion (tcp_check_req)"),
    ("veth_xmit", "veth transmit (veth_xmit)"),
    ("do_accept", "accept (do_accept)"),
    ("tcp_sendmsg", "tcp_sendmsg"),
    ("tcp_recvmsg", "tcp_recvmsg"),
    ("tcp_close", "tcp_close"),
    ("io_uring", "io_uring (any)"),
    ("run_timer_softirq", "timer softirq"),
    ("__schedule", "context switches (__schedule)"),
    (
        "finish_task_switch",
        "switched in (finish_task_switch; sampling skid lands here)",
    ),
];

#[derive(Default)]
struct PerfCounts {
    server_napi: u64,
    sluice_user: u64,
    sluice_kernel: u64,
    client_napi: u64,
    client_user: u64,
    client_kernel: u64,
    other: u64,
    server_total_for_shares: u64,
    inclusive: HashMap<&'static str, u64>,
    leaf: HashMap<String, u64>,
}

struct Windows {
    baseline: (u64, u64),
    load: (u64, u64),
}

/// Reads `perf script` and counts samples per class and window.
fn perf_analyse(
    perf: &Path,
    data: &Path,
    win: &Windows,
    sluice_pid: i32,
    own_pid: i32,
    server_napi: i32,
    client_napi: i32,
) -> Result<(PerfCounts, PerfCounts)> {
    let mut child = Command::new(perf)
        .args(["script", "-F", "pid,tid,cpu,time,ip,sym", "-i"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run perf script")?;
    let stdout = child.stdout.take().context("perf script stdout")?;
    let mut reader = BufReader::with_capacity(1 << 20, stdout);
    let mut base = PerfCounts::default();
    let mut load = PerfCounts::default();

    struct Sample {
        pid: i32,
        tid: i32,
        t: u64,
        frames: Vec<(u64, String)>,
    }
    let mut cur: Option<Sample> = None;
    let mut line = String::new();
    let finish = |s: Sample, base: &mut PerfCounts, load: &mut PerfCounts| {
        let counts = if s.t >= win.load.0 && s.t < win.load.1 {
            load
        } else if s.t >= win.baseline.0 && s.t < win.baseline.1 {
            base
        } else {
            return;
        };
        let kernel_leaf = s
            .frames
            .first()
            .is_some_and(|(a, _)| *a >= 0xffff_8000_0000_0000);
        let server_side;
        if s.tid == server_napi {
            counts.server_napi += 1;
            server_side = true;
        } else if s.tid == client_napi {
            counts.client_napi += 1;
            server_side = false;
        } else if s.pid == sluice_pid {
            if kernel_leaf {
                counts.sluice_kernel += 1;
            } else {
                counts.sluice_user += 1;
            }
            server_side = true;
        } else if s.pid == own_pid {
            if kernel_leaf {
                counts.client_kernel += 1;
            } else {
                counts.client_user += 1;
            }
            server_side = false;
        } else {
            let in_irq = s.frames.iter().any(|(_, f)| {
                f.starts_with("handle_softirqs")
                    || f.starts_with("__do_softirq")
                    || f.starts_with("asm_sysvec_")
                    || f.starts_with("asm_common_interrupt")
            });
            let idle = s.pid == 0 && !in_irq;
            if !idle {
                counts.other += 1;
            }
            server_side = false;
        }
        if server_side {
            counts.server_total_for_shares += 1;
            for (marker, _) in MARKERS {
                if s.frames.iter().any(|(_, f)| f.contains(marker)) {
                    *counts.inclusive.entry(marker).or_default() += 1;
                }
            }
            let leaf = match s.frames.first() {
                Some((_, f)) if kernel_leaf => f.clone(),
                Some(_) if s.pid == sluice_pid => "[sluice userspace]".to_owned(),
                Some((_, f)) => f.clone(),
                None => "[unknown]".to_owned(),
            };
            *counts.leaf.entry(leaf).or_default() += 1;
        }
    };
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            break;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            if let Some(s) = cur.take() {
                finish(s, &mut base, &mut load);
            }
            continue;
        }
        if line.starts_with('\t') {
            // A call-chain line: "\t addr sym (dso)".
            if let Some(s) = cur.as_mut() {
                let mut it = trimmed.split_whitespace();
                let addr = it
                    .next()
                    .and_then(|a| u64::from_str_radix(a, 16).ok())
                    .unwrap_or(0);
                let sym = it.next().unwrap_or("[unknown]").to_owned();
                s.frames.push((addr, sym));
            }
            continue;
        }
        // A header: "pid/tid [cpu] secs.usecs:".
        if let Some(s) = cur.take() {
            finish(s, &mut base, &mut load);
        }
        let mut it = trimmed.split_whitespace();
        let ids = it
            .next()
            .and_then(|p| p.split_once('/'))
            .and_then(|(p, t)| Some((p.parse::<i32>().ok()?, t.parse::<i32>().ok()?)));
        let cpu = it
            .next()
            .map(|c| c.trim_matches(|ch| ch == '[' || ch == ']'))
            .and_then(|c| c.parse::<usize>().ok());
        let t = it.next().map(|t| t.trim_end_matches(':')).and_then(|t| {
            let (s, frac) = t.split_once('.')?;
            let s: u64 = s.parse().ok()?;
            let mut frac = frac.to_owned();
            frac.truncate(9);
            while frac.len() < 9 {
                frac.push('0');
            }
            Some(s * 1_000_000_000 + frac.parse::<u64>().ok()?)
        });
        if let (Some((pid, tid)), Some(_cpu), Some(t)) = (ids, cpu, t) {
            cur = Some(Sample {
                pid,
                tid,
                t,
                frames: Vec::new(),
            });
        }
    }
    if let Some(s) = cur.take() {
        finish(s, &mut base, &mut load);
    }
    let _ = child.wait();
    Ok((base, load))
}

// ----------------------------------------------------------------- priming

/// One real request of the over-quota tenant from the namespace: sluice
/// answers 429 insufficient_quota (and, with `[ebpf]`, learns the address
/// and writes the verdict).
fn prime(net: &NetArgs) -> Result<()> {
    // A few tries: on a busy machine a just-started sluice can be slow.
    let mut last = None;
    for _ in 0..3 {
        match prime_once(net) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow!("no try")))
}

fn prime_once(net: &NetArgs) -> Result<()> {
    let (host_ip, port) = (net.host_ip, net.port);
    let req = http_request(&net.key, &net.model);
    let text = join(inside(&net.netns, move || {
        let to = SocketAddr::V4(SocketAddrV4::new(host_ip, port));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .with_context(|| format!("connect to sluice at {to} from the namespace"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&req)?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .with_context(|| format!("read sluice's answer to the priming request from {to}"))?;
        Ok(text)
    }))?;
    if !is_quota_429(text.as_bytes()) {
        bail!("sluice did not refuse the over-quota tenant with 429 insufficient_quota:\n{text}");
    }
    Ok(())
}

fn http_request(key: &str, model: &str) -> Vec<u8> {
    let body = format!(
        "{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello.\"}}],\"max_tokens\":16}}"
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn is_quota_429(resp: &[u8]) -> bool {
    resp.starts_with(b"HTTP/1.1 429")
        && resp
            .windows(b"insufficient_quota".len())
            .any(|w| w == b"insufficient_quota")
}

/// The tenant sluice tied the client address to, and its verdict.
fn tenant_of(maps: &Maps, client: Ipv4Addr) -> Result<u32> {
    let learned = maps
        .learned(IpAddr::V4(client))?
        .ok_or_else(|| anyhow!("sluice did not learn {client} (no entry in sluice_learned)"))?;
    if learned.is_shared() {
        bail!("{client} is learned as shared: the kernel never rejects it");
    }
    Ok(learned.tenant_id)
}

// -------------------------------------------------------------- load: SYNs

struct LoadOutcome {
    attempts: u64,
    send_errors: u64,
    start_ns: u64,
    send_end_ns: u64,
    thread_cpu_ns: u64,
    http: Option<HttpOutcome>,
}

fn due(rate: u32, start: u64, now: u64) -> u64 {
    (u128::from(now.saturating_sub(start)) * u128::from(rate) / 1_000_000_000) as u64
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn syn_flood(
    a: &FloodArgs,
    host_mac: [u8; 6],
    start_at: u64,
    tid_tx: mpsc::Sender<i32>,
) -> thread::JoinHandle<Result<LoadOutcome>> {
    let net = a.net.clone();
    let (rate, tick, dur) = (a.rate, a.tick_us * 1000, (a.duration * 1e9) as u64);
    inside(&a.net.netns, move || {
        pin_thread(net.client_cpu)?;
        set_fifo(0, net.client_fifo)?;
        tight_timers();
        let src_mac = mac_of(&net.ns_if)?;
        let tx = PacketTx::open(&net.ns_if, host_mac)?;
        let syn = SynBuilder::new(src_mac, host_mac, net.client_ip, net.host_ip, net.port);
        let mut frames = vec![[0u8; SYN_LEN]; 256];
        let _ = tid_tx.send(gettid());
        sleep_until(start_at);
        let cpu0 = thread_cpu_ns();
        let start = mono_ns();
        let end = start + dur;
        let (mut sent, mut errors, mut n) = (0u64, 0u64, 0u32);
        let mut next = start;
        loop {
            let now = mono_ns();
            let want = due(rate, start, now.min(end)) - sent - errors;
            let mut left = want;
            while left > 0 {
                let k = left.min(frames.len() as u64) as usize;
                for f in frames.iter_mut().take(k) {
                    syn.build(n, f);
                    n = n.wrapping_add(1);
                }
                let ok = tx.send_batch(&mut frames[..k]) as u64;
                sent += ok;
                errors += k as u64 - ok;
                left -= k as u64;
            }
            if now >= end {
                break;
            }
            next += tick;
            sleep_until(next.min(end));
        }
        let send_end = mono_ns();
        let cpu = thread_cpu_ns() - cpu0;
        Ok(LoadOutcome {
            attempts: sent,
            send_errors: errors,
            start_ns: start,
            send_end_ns: send_end,
            thread_cpu_ns: cpu,
            http: None,
        })
    })
}

// -------------------------------------------------------- load: userspace

struct Conn {
    fd: OwnedFd,
    connected: bool,
    started: u64,
    buf: Vec<u8>,
}

fn epoll_mod(ep: RawFd, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a valid epoll fd, a valid socket fd and event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Real connections: connect, one request, read the 429 to EOF, close.
fn http_flood(
    a: &FloodArgs,
    start_at: u64,
    tid_tx: mpsc::Sender<i32>,
) -> thread::JoinHandle<Result<LoadOutcome>> {
    let net = a.net.clone();
    let (rate, tick, dur, max_inflight) = (
        a.rate,
        a.tick_us * 1000,
        (a.duration * 1e9) as u64,
        a.max_inflight,
    );
    inside(&a.net.netns, move || {
        pin_thread(net.client_cpu)?;
        set_fifo(0, net.client_fifo)?;
        tight_timers();
        let req = http_request(&net.key, &net.model);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: net.port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(net.host_ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: plain descriptor creation, owned at once.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(os_err("epoll_create1"));
        }
        // SAFETY: the kernel just returned it.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        // SAFETY: as above.
        let tfd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if tfd < 0 {
            return Err(os_err("timerfd_create"));
        }
        // SAFETY: as above.
        let tfd = unsafe { OwnedFd::from_raw_fd(tfd) };
        const TIMER: u64 = u64::MAX;
        epoll_mod(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            tfd.as_raw_fd(),
            libc::EPOLLIN as u32,
            TIMER,
        )?;

        let mut slots: Vec<Option<Conn>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut out = HttpOutcome::default();
        let mut latencies: Vec<f64> = Vec::new();
        let mut inflight = 0usize;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut rbuf = vec![0u8; 4096];

        let _ = tid_tx.send(gettid());
        sleep_until(start_at);
        let cpu0 = thread_cpu_ns();
        let start = mono_ns();
        let end = start + dur;
        let drain_deadline = end + 10_000_000_000;
        let its = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: tick as libc::c_long,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: tick as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd and itimerspec.
        if unsafe { libc::timerfd_settime(tfd.as_raw_fd(), 0, &its, std::ptr::null_mut()) } != 0 {
            return Err(os_err("timerfd_settime"));
        }
        let (mut started, mut send_end) = (0u64, 0u64);
        loop {
            let now = mono_ns();
            if now < end {
                let want = due(rate, start, now);
                while started < want {
                    started += 1;
                    if inflight >= max_inflight {
                        out.connect_errors += 1;
                        continue;
                    }
                    // SAFETY: plain socket creation, owned at once.
                    let fd = unsafe {
                        libc::socket(
                            libc::AF_INET,
                            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                            0,
                        )
                    };
                    if fd < 0 {
                        out.connect_errors += 1;
                        continue;
                    }
                    // SAFETY: as above.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    // SAFETY: connect reads a valid sockaddr_in.
                    let rc = unsafe {
                        libc::connect(
                            fd.as_raw_fd(),
                            (&to as *const libc::sockaddr_in).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as u32,
                        )
                    };
                    if rc != 0
                        && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
                    {
                        out.connect_errors += 1;
                        continue;
                    }
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    if epoll_mod(
                        ep.as_raw_fd(),
                        libc::EPOLL_CTL_ADD,
                        fd.as_raw_fd(),
                        libc::EPOLLOUT as u32,
                        slot as u64,
                    )
                    .is_err()
                    {
                        out.connect_errors += 1;
                        free.push(slot);
                        continue;
                    }
                    slots[slot] = Some(Conn {
                        fd,
                        connected: false,
                        started: now,
                        buf: Vec::new(),
                    });
                    inflight += 1;
                    out.max_inflight = out.max_inflight.max(inflight as u64);
                }
            } else {
                if send_end == 0 {
                    send_end = now;
                }
                if inflight == 0 || now > drain_deadline {
                    break;
                }
            }
            // SAFETY: a valid epoll fd and event buffer of that length.
            let n = unsafe {
                libc::epoll_wait(
                    ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    100,
                )
            };
            for ev in events.iter().take(n.max(0) as usize) {
                let (flags, key) = (ev.events, ev.u64);
                if key == TIMER {
                    let mut b = [0u8; 8];
                    // SAFETY: reads 8 bytes into a valid buffer.
                    unsafe { libc::read(tfd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
                    continue;
                }
                let slot = key as usize;
                let Some(c) = slots.get_mut(slot).and_then(|s| s.as_mut()) else {
                    continue;
                };
                let mut done: Option<u8> = None; // 0 ok, 1 other, 2 connect err, 3 reset
                if !c.connected {
                    let mut err: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as u32;
                    // SAFETY: getsockopt writes one int.
                    unsafe {
                        libc::getsockopt(
                            c.fd.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            (&mut err as *mut libc::c_int).cast(),
                            &mut len,
                        )
                    };
                    if err != 0 {
                        done = Some(2);
                    } else {
                        // SAFETY: writes from a valid buffer.
                        let w = unsafe {
                            libc::write(c.fd.as_raw_fd(), req.as_ptr().cast(), req.len())
                        };
                        if w != req.len() as isize {
                            done = Some(3);
                        } else {
                            c.connected = true;
                            let _ = epoll_mod(
                                ep.as_raw_fd(),
                                libc::EPOLL_CTL_MOD,
                                c.fd.as_raw_fd(),
                                libc::EPOLLIN as u32,
                                key,
                            );
                        }
                    }
                } else if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    loop {
                        // SAFETY: reads into a valid buffer of that length.
                        let r = unsafe {
                            libc::read(c.fd.as_raw_fd(), rbuf.as_mut_ptr().cast(), rbuf.len())
                        };
                        if r > 0 {
                            if c.buf.len() < 8192 {
                                c.buf.extend_from_slice(&rbuf[..r as usize]);
                            }
                            continue;
                        }
                        if r == 0 {
                            done = Some(if is_quota_429(&c.buf) { 0 } else { 1 });
                        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                            done = Some(if is_quota_429(&c.buf) { 0 } else { 3 });
                        }
                        break;
                    }
                }
                if let Some(code) = done {
                    match code {
                        0 => {
                            out.insufficient_quota_429 += 1;
                            latencies.push((mono_ns() - c.started) as f64 / 1e6);
                        }
                        1 => out.other_status += 1,
                        2 => out.connect_errors += 1,
                        _ => out.resets += 1,
                    }
                    slots[slot] = None; // closes the socket
                    free.push(slot);
                    inflight -= 1;
                }
            }
        }
        out.timeouts = inflight as u64;
        let end_ns = mono_ns();
        latencies.sort_by(f64::total_cmp);
        out.mean_ms = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        out.p99_ms = percentile(&latencies, 99.0);
        Ok(LoadOutcome {
            attempts: started,
            send_errors: 0,
            start_ns: start,
            send_end_ns: if send_end == 0 { end_ns } else { send_end },
            thread_cpu_ns: thread_cpu_ns() - cpu0,
            http: Some(out),
        })
    })
}

// ------------------------------------------------------------------- flood

fn read_mac(host_if: &str) -> Result<[u8; 6]> {
    let text = fs::read_to_string(format!("/sys/class/net/{host_if}/address"))
        .with_context(|| format!("MAC of {host_if}"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| anyhow!("bad MAC {text:?} of {host_if}"))
}

fn flood(a: &FloodArgs) -> Result<()> {
    raise_nofile();
    let mut problems = Vec::new();
    let own_pid = std::process::id() as i32;
    let host_mac = read_mac(&a.net.host_if)?;
    let ns_name = a.net.netns.clone();
    // The receive work of each veth end runs in its own NAPI thread
    // (`napi` subcommand, run by run.sh): pinned here, accounted exactly.
    let server_napi = napi_thread(&a.net.host_if)?;
    let client_napi = napi_thread(&a.net.ns_if)?;
    pin_tid(server_napi, a.net.server_cpu)?;
    pin_tid(client_napi, a.net.client_cpu)?;

    // XDP cases: a real refusal first, so sluice learns the address and
    // writes the verdict itself; then check what the kernel holds.
    let mut maps = None;
    let mut xdp = None;
    let mut prog_stats = None;
    let mut _stats_fd = None;
    if let Some(action) = a.case.action() {
        let pin_dir = a
            .net
            .pin_dir
            .as_deref()
            .context("--pin-dir is needed for the XDP cases")?;
        // A priming request that timed out on a busy machine may still have
        // been refused by sluice later (and its retries then by the
        // kernel): what counts is what the maps hold.
        let primed = prime(&a.net);
        let m = Maps::open(pin_dir)?;
        let found = tenant_of(&m, a.net.client_ip).and_then(|t| Ok((t, m.verdict(t)?)));
        let (tenant, v) = match (found, primed) {
            (Ok((t, Some(v))), _) => (t, v),
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(())) => return Err(e),
            (Ok((t, None)), Ok(())) => {
                bail!("sluice wrote no verdict for tenant {t} after its 429")
            }
        };
        let left_ns = v.expires_at_ns.saturating_sub(mono_ns());
        if Action::from_raw(v.action) != action {
            problems.push(format!(
                "verdict action is {}, not {action}",
                Action::from_raw(v.action)
            ));
        }
        if left_ns < 60_000_000_000 {
            problems.push(format!(
                "verdict expires in {} ms: raise quota_verdict_ms",
                left_ns / 1_000_000
            ));
        }
        let links = loader::attach::link_pins(pin_dir)?;
        let attached = links
            .iter()
            .map(|l| format!("{} ({})", l.interface, l.mode))
            .collect::<Vec<_>>()
            .join(", ");
        if !links.iter().any(|l| l.interface == a.net.host_if) {
            problems.push(format!(
                "no link pinned for {} under {}",
                a.net.host_if,
                pin_dir.display()
            ));
        }
        xdp = Some(XdpCheck {
            tenant,
            verdict_action: Action::from_raw(v.action).to_string(),
            attached,
            ..XdpCheck::default()
        });
        _stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        prog_stats = Some(pin_dir.join(layout::PIN_PROG));
        maps = Some(m);
    } else {
        prime(&a.net)?;
    }
    let prog_sample = |p: &Option<PathBuf>| -> Option<(u64, u64)> {
        let info = aya::programs::ProgramInfo::from_pin(p.as_ref()?).ok()?;
        Some((
            info.run_count(),
            u64::try_from(info.run_time().as_nanos()).ok()?,
        ))
    };

    // Settle after priming (the priming connection's close, TIME_WAIT).
    thread::sleep(Duration::from_millis(500));

    let perf_run = match &a.perf {
        Some(p) => Some(perf_start(
            p,
            &a.work.join(format!("perf-{:?}-{}.data", a.case, a.round)),
            a.perf_period_ns,
        )?),
        None => None,
    };

    // ---- baseline: everything idle.
    // (perf stat starts before and stops after each /proc/stat window, so
    // its own start-up and report are in neither.)
    let base_len = (a.baseline * 1e9) as u64;
    let sluice_tids = thread_ids(a.sluice_pid);
    let mut base_tids = vec![server_napi, client_napi];
    base_tids.extend(&sluice_tids);
    let base_tc = match &a.perf {
        Some(p) => Some(task_clock_start(
            p,
            &base_tids,
            &a.work.join("taskclock-base.csv"),
        )?),
        None => None,
    };
    let b_stat0 = read_stat()?;
    let b_sluice0 = process_runtime_ns(a.sluice_pid);
    let b_napi0 = (
        thread_runtime_ns(server_napi),
        thread_runtime_ns(client_napi),
    );
    let b0 = mono_ns();
    sleep_until(b0 + base_len);
    let b1 = mono_ns();
    let b_stat1 = read_stat()?;
    let b_sluice1 = process_runtime_ns(a.sluice_pid);
    let b_napi1 = (
        thread_runtime_ns(server_napi),
        thread_runtime_ns(client_napi),
    );
    let base_times = base_tc.map(task_clock_stop).transpose()?;

    // ---- load.
    let accepted0 = accepted(a.admin)?;
    let counters0 = maps
        .as_ref()
        .map(|m| m.counters())
        .transpose()
        .context("XDP counters")?;
    let mib0 = join(inside(&ns_name, ns_tcp_mib)).context("the namespace's TCP counters")?;
    let prog0 = prog_sample(&prog_stats);
    let start_at = mono_ns() + 800_000_000;
    let (tid_tx, tid_rx) = mpsc::channel();
    let handle = match a.case {
        Case::Userspace => http_flood(a, start_at, tid_tx),
        _ => syn_flood(a, host_mac, start_at, tid_tx),
    };
    let client_tid = tid_rx.recv_timeout(Duration::from_secs(5)).ok();
    let load_tc = match (&a.perf, client_tid) {
        (Some(p), Some(tid)) => {
            let mut tids = base_tids.clone();
            tids.push(tid);
            Some(task_clock_start(
                p,
                &tids,
                &a.work.join("taskclock-load.csv"),
            )?)
        }
        _ => None,
    };
    let stat0 = read_stat()?;
    let sluice0 = process_runtime_ns(a.sluice_pid);
    let napi0 = (
        thread_runtime_ns(server_napi),
        thread_runtime_ns(client_napi),
    );
    let runs0 = (thread_runs(server_napi), thread_runs(client_napi));
    if mono_ns() >= start_at {
        problems.push("perf stat took too long to start: the load began before it counted".into());
    }
    let outcome = join(handle).context("the load generator")?;
    // Let the last packets (and, for userspace, closes) settle.
    thread::sleep(Duration::from_millis(50));
    let l1 = mono_ns();
    let stat1 = read_stat()?;
    let sluice1 = process_runtime_ns(a.sluice_pid);
    let napi1 = (
        thread_runtime_ns(server_napi),
        thread_runtime_ns(client_napi),
    );
    let runs1 = (thread_runs(server_napi), thread_runs(client_napi));
    let load_times = load_tc.map(task_clock_stop).transpose()?;
    let prog1 = prog_sample(&prog_stats);
    let mib1 = join(inside(&ns_name, ns_tcp_mib)).context("the namespace's TCP counters")?;
    let counters1 = maps
        .as_ref()
        .map(|m| m.counters())
        .transpose()
        .context("XDP counters")?;
    let accepted1 = accepted(a.admin)?;

    let perf_data = perf_run.map(perf_stop).transpose()?;

    // ---- /proc/stat
    let window_ns = l1.saturating_sub(outcome.start_ns).max(1);
    let hz = clk_tck();
    let scale = (stat1.t - stat0.t) as f64 / (b_stat1.t - b_stat0.t) as f64;
    let busy_s_base = |cpu: usize| busy_s(&b_stat0, &b_stat1, cpu, hz);
    let mut stat_cpus = Vec::new();
    let (mut host, mut host_base, mut base_busy_share) = (0.0, 0.0, 0.0);
    for (i, (s0, s1)) in stat0.cpus.iter().zip(&stat1.cpus).enumerate() {
        let d = |k: usize| s1[k].saturating_sub(s0[k]) as f64 / hz;
        let busy_s = busy_s(&stat0, &stat1, i, hz);
        let base_s = busy_s_base(i);
        host += busy_s;
        host_base += base_s * scale;
        base_busy_share += base_s / ((b_stat1.t - b_stat0.t) as f64 / 1e9);
        stat_cpus.push(CpuStat {
            cpu: i,
            busy_s,
            baseline_busy_s: base_s * scale,
            user_s: d(0) + d(1),
            system_s: d(2),
            softirq_s: d(6),
            steal_s: d(7),
            net_rx: stat1.net_rx.get(i).copied().unwrap_or(0)
                - stat0.net_rx.get(i).copied().unwrap_or(0),
        });
    }
    let ncpu = stat_cpus.len().max(1) as f64;
    let attempts = outcome.attempts.max(1) as f64;
    let stat_host_s = host - host_base;

    // ---- exact run times (schedstat), the baseline's removed
    // Snapshots were taken with the /proc/stat ones: the same spans.
    let exact = |l0: u64, l1: u64, b0: u64, b1: u64| {
        l1.saturating_sub(l0) as f64 / 1e9 - b1.saturating_sub(b0) as f64 / 1e9 * scale
    };
    // perf samples are counted in [b0, b1) and [start, l1).
    let k = window_ns as f64 / (b1 - b0) as f64;
    let schedstat_server_s = exact(sluice0, sluice1, b_sluice0, b_sluice1)
        + exact(napi0.0, napi1.0, b_napi0.0, b_napi1.0);
    // perf's task-clock when there is perf; schedstat otherwise.
    let (clock, sluice_s, server_napi_s, client_napi_s, client_thread_s, napi_switches) =
        match (&base_times, &load_times, client_tid) {
            (Some((base, base_len)), Some((load, load_len)), Some(ctid)) => {
                let kk = *load_len as f64 / *base_len as f64;
                let t = |m: &ThreadTimes, tid: i32| m.get(&tid).map_or(0.0, |v| v.0);
                let sub = |tids: &[i32]| {
                    tids.iter()
                        .map(|tid| t(load, *tid) - t(base, *tid) * kk)
                        .sum::<f64>()
                };
                (
                    "perf task-clock",
                    sub(&sluice_tids),
                    sub(&[server_napi]),
                    sub(&[client_napi]),
                    t(load, ctid),
                    load.get(&server_napi).map_or(0, |v| v.1),
                )
            }
            _ => (
                "schedstat",
                exact(sluice0, sluice1, b_sluice0, b_sluice1),
                exact(napi0.0, napi1.0, b_napi0.0, b_napi1.0),
                exact(napi0.1, napi1.1, b_napi0.1, b_napi1.1),
                outcome.thread_cpu_ns as f64 / 1e9,
                0,
            ),
        };
    let server_s = sluice_s + server_napi_s;
    let client_s = client_thread_s + client_napi_s;

    // ---- perf
    let perf = match (&a.perf, perf_data) {
        (Some(p), Some(data)) => {
            let win = Windows {
                baseline: (b0, b1),
                load: (outcome.start_ns, l1),
            };
            let (base, load) = perf_analyse(
                p,
                &data,
                &win,
                a.sluice_pid,
                own_pid,
                server_napi,
                client_napi,
            )?;
            let _ = fs::remove_file(&data);
            let per = a.perf_period_ns as f64 / 1e9;
            let sub = |l: u64, b: u64| (l as f64 - b as f64 * k) * per;
            let server_s = sub(load.server_napi, base.server_napi)
                + sub(load.sluice_user, base.sluice_user)
                + sub(load.sluice_kernel, base.sluice_kernel);
            let client_s = sub(load.client_napi, base.client_napi)
                + sub(load.client_user, base.client_user)
                + sub(load.client_kernel, base.client_kernel);
            let total = load.server_total_for_shares.max(1) as f64;
            let mut inclusive: Vec<Share> = MARKERS
                .iter()
                .filter_map(|(m, label)| {
                    let n = *load.inclusive.get(m)?;
                    Some(Share {
                        name: (*label).to_owned(),
                        pct: n as f64 * 100.0 / total,
                    })
                })
                .collect();
            inclusive.sort_by(|x, y| y.pct.total_cmp(&x.pct));
            let mut leaf: Vec<(String, u64)> = load.leaf.into_iter().collect();
            leaf.sort_by_key(|x| std::cmp::Reverse(x.1));
            let top_leaf = leaf
                .into_iter()
                .take(12)
                .map(|(name, n)| Share {
                    name,
                    pct: n as f64 * 100.0 / total,
                })
                .collect();
            Some(Perf {
                period_ns: a.perf_period_ns,
                server_napi_s: sub(load.server_napi, base.server_napi),
                sluice_user_s: sub(load.sluice_user, base.sluice_user),
                sluice_kernel_s: sub(load.sluice_kernel, base.sluice_kernel),
                client_napi_s: sub(load.client_napi, base.client_napi),
                client_user_s: sub(load.client_user, base.client_user),
                client_kernel_s: sub(load.client_kernel, base.client_kernel),
                other_s: load.other as f64 * per,
                baseline_server_s: (base.server_napi + base.sluice_user + base.sluice_kernel)
                    as f64
                    * k
                    * per,
                baseline_other_s: base.other as f64 * k * per,
                server_per_attempt_us: server_s / attempts * 1e6,
                client_per_attempt_us: client_s / attempts * 1e6,
                inclusive,
                top_leaf,
            })
        }
        _ => None,
    };

    // ---- checks
    let accepted_delta = accepted1.saturating_sub(accepted0);
    if let (Some(x), Some(c0), Some(c1)) = (xdp.as_mut(), counters0, counters1) {
        x.tenant_rejected = c1.tenant_rejected - c0.tenant_rejected;
        x.passed = c1.passed - c0.passed;
        x.malformed = c1.malformed - c0.malformed;
        x.syn_limited = c1.syn_limited - c0.syn_limited;
        x.per_tenant = c1.per_tenant.get(&x.tenant).copied().unwrap_or(0)
            - c0.per_tenant.get(&x.tenant).copied().unwrap_or(0);
        x.ns_in_segs =
            mib1.get("InSegs").copied().unwrap_or(0) - mib0.get("InSegs").copied().unwrap_or(0);
        x.ns_in_csum_errors = mib1.get("InCsumErrors").copied().unwrap_or(0)
            - mib0.get("InCsumErrors").copied().unwrap_or(0);
        if let (Some((r0, t0)), Some((r1, t1))) = (prog0, prog1) {
            x.prog_runs = r1 - r0;
            x.prog_ns_per_run = (t1 - t0) as f64 / (r1 - r0).max(1) as f64;
        }
        let sent = outcome.attempts;
        if x.tenant_rejected != sent {
            problems.push(format!(
                "{sent} SYNs sent but the program counted {} tenant_rejected",
                x.tenant_rejected
            ));
        }
        if x.per_tenant != sent {
            problems.push(format!(
                "{sent} SYNs sent but tenant {} has {} rejections",
                x.tenant, x.per_tenant
            ));
        }
        if x.passed != 0 {
            problems.push(format!("{} SYNs passed the program", x.passed));
        }
        if accepted_delta != 0 {
            problems.push(format!(
                "sluice accepted {accepted_delta} connections during the flood"
            ));
        }
        if a.case == Case::XdpRst && x.ns_in_segs != sent {
            problems.push(format!(
                "{sent} SYNs sent, the namespace received {} TCP segments (RSTs)",
                x.ns_in_segs
            ));
        }
        if a.case == Case::XdpRst && x.ns_in_csum_errors != 0 {
            problems.push(format!("{} RSTs with a bad checksum", x.ns_in_csum_errors));
        }
        if a.case == Case::XdpDrop && x.ns_in_segs != 0 {
            problems.push(format!(
                "the namespace received {} TCP segments though every SYN was dropped",
                x.ns_in_segs
            ));
        }
    }
    if let Some(h) = &outcome.http {
        if h.insufficient_quota_429 != outcome.attempts {
            problems.push(format!(
                "{} attempts, {} answered 429 insufficient_quota ({} other status, {} connect errors, {} resets, {} unfinished)",
                outcome.attempts, h.insufficient_quota_429, h.other_status, h.connect_errors, h.resets, h.timeouts
            ));
        }
        if accepted_delta != h.insufficient_quota_429 + h.other_status {
            problems.push(format!(
                "sluice accepted {accepted_delta} connections for {} answered attempts",
                h.insufficient_quota_429 + h.other_status
            ));
        }
    }
    if outcome.send_errors > 0 {
        problems.push(format!("{} SYNs could not be sent", outcome.send_errors));
    }
    let send_s = (outcome.send_end_ns - outcome.start_ns) as f64 / 1e9;
    let result = FloodResult {
        case: Some(a.case),
        round: a.round,
        mode: if a.case == Case::Userspace {
            "-".into()
        } else {
            a.mode.clone()
        },
        rate: a.rate,
        attempts: outcome.attempts,
        send_s,
        window_s: window_ns as f64 / 1e9,
        baseline_s: (b1 - b0) as f64 / 1e9,
        achieved_rate: outcome.attempts as f64 / send_s.max(1e-9),
        send_errors: outcome.send_errors,
        accepted_delta,
        stat_host_s,
        stat_host_per_attempt_us: stat_host_s / attempts * 1e6,
        stat_server_per_attempt_us: stat_cpus.get(a.net.server_cpu).map_or(f64::NAN, |c| {
            (c.busy_s - c.baseline_busy_s) / attempts * 1e6
        }),
        server_cpu: a.net.server_cpu,
        stat_baseline_busy_pct: base_busy_share / ncpu * 100.0,
        stat_cpus,
        server_s,
        server_per_attempt_us: server_s / attempts * 1e6,
        server_napi_s,
        server_napi_wakeups_per_attempt: (runs1.0 - runs0.0) as f64 / attempts,
        server_napi_switches_per_attempt: napi_switches as f64 / attempts,
        clock: clock.to_owned(),
        schedstat_server_per_attempt_us: schedstat_server_s / attempts * 1e6,
        sluice_s,
        sluice_per_attempt_us: sluice_s / attempts * 1e6,
        client_s,
        client_per_attempt_us: client_s / attempts * 1e6,
        client_napi_s,
        client_thread_s,
        perf,
        xdp,
        http: outcome.http,
        problems,
    };
    write_toml(&a.out, &result)?;
    eprintln!(
        "{} round {}: {} attempts in {:.2} s; server {:.2} µs/attempt (NAPI {:.2} + sluice {:.2}), perf {:.2}, host {:.2} (/proc/stat, baseline {:.0}% busy); client {:.2}; {}",
        a.case.label(),
        a.round,
        result.attempts,
        result.send_s,
        result.server_per_attempt_us,
        result.server_napi_s / attempts * 1e6,
        result.sluice_per_attempt_us,
        result.perf.as_ref().map_or(f64::NAN, |p| p.server_per_attempt_us),
        result.stat_host_per_attempt_us,
        result.stat_baseline_busy_pct,
        result.client_per_attempt_us,
        if result.problems.is_empty() { "verified".to_owned() } else { result.problems.join("; ") }
    );
    Ok(())
}

// ----------------------------------------------------------------- latency

#[derive(Clone, Copy, Debug)]
enum Seen {
    Rst,
    SynAck,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    /// Kernel receive time, CLOCK_MONOTONIC ns.
    t: u64,
    kind: Seen,
    /// The SYN it answers (ack − 1).
    id: u32,
}

const SO_TIMESTAMPNS: libc::c_int = 35;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Receives what comes back to the namespace end from sluice's port.
fn receiver(
    net: NetArgs,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
) -> thread::JoinHandle<Result<()>> {
    inside(&net.netns.clone(), move || {
        let ifindex = ifindex(&net.ns_if)?;
        // SAFETY: plain socket creation, owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        if fd < 0 {
            return Err(os_err("socket(AF_PACKET) for receiving"));
        }
        // SAFETY: just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt/bind read valid structs of the given sizes.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_TIMESTAMPNS,
                (&one as *const libc::c_int).cast(),
                4,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                4,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            addr.sll_ifindex = ifindex;
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(os_err("bind receiving AF_PACKET socket"));
            }
        }
        // Realtime (the receive stamps) to monotonic.
        let offset = {
            let mut best = (u64::MAX, 0i128);
            for _ in 0..20 {
                let m0 = mono_ns();
                let r = realtime_ns();
                let m1 = mono_ns();
                if m1 - m0 < best.0 {
                    best = (m1 - m0, i128::from(r) - i128::from(m0 + (m1 - m0) / 2));
                }
            }
            best.1
        };
        let mut buf = [0u8; 256];
        let mut cbuf = [0u64; 16];
        let host = net.host_ip.octets();
        while !stop.load(Ordering::Relaxed) {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            // SAFETY: every pointer in msg is valid for its length.
            let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
            if n < 34 + 20 {
                continue;
            }
            let n = n as usize;
            let mut stamp = None;
            // SAFETY: walking the control messages the kernel wrote into
            // cbuf with the CMSG macros.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                        let ts =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                        stamp = Some((ts.tv_sec as i128) * 1_000_000_000 + ts.tv_nsec as i128);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            let f = &buf[..n];
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if f[23] != 6 || f[26..30] != host || n < 14 + ihl + 20 {
                continue;
            }
            let tcp = &f[14 + ihl..];
            if u16::from_be_bytes([tcp[0], tcp[1]]) != net.port {
                continue;
            }
            let flags = tcp[13];
            let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            let kind = if flags & 0x04 != 0 {
                Seen::Rst
            } else if flags & 0x12 == 0x12 {
                Seen::SynAck
            } else {
                continue;
            };
            let t = match stamp {
                Some(s) => u64::try_from(s - offset).unwrap_or(0),
                None => mono_ns(),
            };
            let _ = tx.send(Event {
                t,
                kind,
                id: ack.wrapping_sub(1),
            });
        }
        Ok(())
    })
}

const RING: usize = 1 << 22;

/// Rounds whose idle baseline found the machine busier than this (% of all
/// CPUs) do not count for the `/proc/stat` columns.
const QUIET_PCT: f64 = 10.0;

/// Sends one SYN every `interval` ns until `stop`; records send times.
fn pacer(
    net: NetArgs,
    host_mac: [u8; 6],
    interval: u64,
    stop: Arc<AtomicBool>,
    sent_at: Arc<Vec<AtomicU64>>,
    count: Arc<AtomicU64>,
) -> thread::JoinHandle<Result<()>> {
    inside(&net.netns.clone(), move || {
        pin_thread(net.client_cpu)?;
        set_fifo(0, net.client_fifo)?;
        tight_timers();
        let src_mac = mac_of(&net.ns_if)?;
        let tx = PacketTx::open(&net.ns_if, host_mac)?;
        let syn = SynBuilder::new(src_mac, host_mac, net.client_ip, net.host_ip, net.port);
        let mut frame = [[0u8; SYN_LEN]; 1];
        let mut n: u32 = 0;
        let mut next = mono_ns();
        while !stop.load(Ordering::Relaxed) {
            syn.build(n, &mut frame[0]);
            let t = mono_ns();
            if tx.send_batch(&mut frame) == 1 {
                sent_at[n as usize % RING].store(t, Ordering::Release);
                count.store(u64::from(n) + 1, Ordering::Release);
                n = n.wrapping_add(1);
            }
            next = (next + interval).max(mono_ns());
            sleep_until(next);
        }
        Ok(())
    })
}

fn latency(a: &LatencyArgs) -> Result<()> {
    let pin_dir = a.net.pin_dir.as_deref().context("--pin-dir is needed")?;
    let host_mac = read_mac(&a.net.host_if)?;
    let mut problems = Vec::new();
    let mut maps = Maps::open(pin_dir)?;
    let tenant = match tenant_of(&maps, a.net.client_ip) {
        Ok(t) => t,
        Err(_) => {
            prime(&a.net)?;
            tenant_of(&maps, a.net.client_ip)?
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..RING).map(|_| AtomicU64::new(0)).collect());
    let count = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    maps.clear_verdict(tenant)?;
    let recv = receiver(a.net.clone(), stop.clone(), tx);
    thread::sleep(Duration::from_millis(200));
    let pace = pacer(
        a.net.clone(),
        host_mac,
        a.interval_us * 1000,
        stop.clone(),
        sent_at.clone(),
        count.clone(),
    );
    let started = Instant::now();
    let send_time = |id: u32| sent_at[id as usize % RING].load(Ordering::Acquire);
    // The writer, too, must not be preempted between its write and its
    // clock reads by other work on the machine; below the SYN sender, whose
    // CPU its counter polling must not take, and on the server CPU.
    pin_thread(a.net.server_cpu)?;
    set_fifo(
        0,
        (a.net.client_fifo - 5).max(i32::from(a.net.client_fifo > 0)),
    )?;

    let run = (|| -> Result<Vec<Trial>> {
        let mut trials = Vec::new();
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ mono_ns();
        for i in 0..a.trials {
            // Lift the verdict, and wait for a SYN sent after that to be
            // let through (a SYN-ACK).
            maps.clear_verdict(tenant)?;
            let cleared = mono_ns();
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!("trial {i}: no SYN-ACK within 3 s of lifting the verdict");
                }
                match rx.recv_timeout(left) {
                    Ok(Event {
                        kind: Seen::SynAck,
                        id,
                        ..
                    }) if send_time(id) > cleared => break,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(e) => bail!("receiver gone: {e}"),
                }
            }
            // A random pause, so the write lands anywhere between two SYNs.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            thread::sleep(Duration::from_micros(2_000 + rng % 8_000));
            while rx.try_recv().is_ok() {}
            let before = maps
                .counters()?
                .per_tenant
                .get(&tenant)
                .copied()
                .unwrap_or(0);

            let t0 = mono_ns();
            maps.write_verdict(
                tenant,
                Action::Rst,
                loader::monotonic_now() + Duration::from_secs(60),
            )?;
            let t1 = mono_ns();

            let mut counter_at = None;
            let poll_deadline = t1 + 200_000_000;
            while mono_ns() < poll_deadline {
                let now_count = maps
                    .counters()?
                    .per_tenant
                    .get(&tenant)
                    .copied()
                    .unwrap_or(0);
                if now_count > before {
                    counter_at = Some(mono_ns());
                    break;
                }
            }
            // The first RST, and any SYN sent after the write that passed.
            let mut first_rst: Option<Event> = None;
            let mut passed_after = 0u64;
            let deadline = Instant::now() + Duration::from_millis(300);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ev = match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                    Ok(ev) => ev,
                    Err(_) => break,
                };
                match ev.kind {
                    Seen::SynAck if send_time(ev.id) > t1 => passed_after += 1,
                    Seen::SynAck => {}
                    Seen::Rst => {
                        if first_rst.is_none_or(|f| ev.t < f.t) {
                            first_rst = Some(ev);
                        }
                    }
                }
                // Once the first RST is in, 5 ms more for stragglers.
                if let Some(f) = first_rst {
                    if mono_ns() > f.t + 5_000_000 {
                        break;
                    }
                }
            }
            let Some(rst) = first_rst else {
                bail!("trial {i}: no RST within 300 ms of the verdict");
            };
            let signed_us = |t: u64| (t as f64 - t1 as f64) / 1e3;
            trials.push(Trial {
                write_us: (t1 - t0) as f64 / 1e3,
                rst_us: signed_us(rst.t),
                rejected_syn_sent_us: signed_us(send_time(rst.id)),
                counter_us: counter_at.map_or(f64::NAN, signed_us),
                passed_after_write: passed_after,
            });
        }
        Ok(trials)
    })();
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let sent = count.load(Ordering::Acquire);
    join(pace)?;
    join(recv)?;
    // Leave the tenant refused, as sluice had it.
    maps.write_verdict(
        tenant,
        Action::Rst,
        loader::monotonic_now() + Duration::from_secs(600),
    )?;
    let trials = run?;
    for (i, t) in trials.iter().enumerate() {
        if t.passed_after_write > 0 {
            problems.push(format!(
                "trial {i}: {} SYNs sent after the write passed",
                t.passed_after_write
            ));
        }
    }
    let result = LatencyResult {
        mode: a.mode.clone(),
        interval_us: a.interval_us,
        achieved_interval_us: elapsed.as_secs_f64() * 1e6 / sent.max(1) as f64,
        trials,
        problems,
    };
    write_toml(&a.out, &result)?;
    let mut rst: Vec<f64> = result.trials.iter().map(|t| t.rst_us).collect();
    rst.sort_by(f64::total_cmp);
    eprintln!(
        "verdict → first RST: median {:.1} µs, p99 {:.1} µs over {} trials (SYN every {:.1} µs)",
        percentile(&rst, 50.0),
        percentile(&rst, 99.0),
        rst.len(),
        result.achieved_interval_us
    );
    Ok(())
}

// ------------------------------------------------------------------ report

fn report(a: &ReportArgs) -> Result<()> {
    let mut floods: Vec<FloodResult> = Vec::new();
    let mut latency: Option<LatencyResult> = None;
    let mut names: Vec<PathBuf> = fs::read_dir(&a.dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    for p in names {
        let text = fs::read_to_string(&p)?;
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("flood-") {
            floods.push(toml::from_str(&text).with_context(|| format!("parse {}", p.display()))?);
        } else if name.starts_with("latency") {
            latency =
                Some(toml::from_str(&text).with_context(|| format!("parse {}", p.display()))?);
        }
    }
    let env = fs::read_to_string(a.dir.join("env.txt")).unwrap_or_default();
    let mut md = String::new();
    md.push_str(&render(&floods, latency.as_ref(), &env));
    fs::write(&a.out, &md).with_context(|| format!("write {}", a.out.display()))?;
    print!("{md}");
    Ok(())
}

fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".to_owned()
    }
}

fn render(floods: &[FloodResult], latency: Option<&LatencyResult>, env: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Kernel early rejection: CPU per refused connection and verdict latency\n"
    );
    if !env.trim().is_empty() {
        let _ = writeln!(s, "```text\n{}\n```\n", env.trim());
    }
    let _ = writeln!(
        s,
        "How: a client in a network namespace behind a veth pair offers connection attempts at a \
         fixed rate (open loop) to sluice on the host end. *userspace 429*: sluice without \
         `[ebpf]`; every attempt is a full TCP connection with one request of an over-quota \
         tenant, answered `429 insufficient_quota`. *XDP drop / RST*: sluice with `[ebpf]` \
         (skb or native mode on the host end), after one real refused request made it learn the \
         client address and write the tenant's verdict; the attempts are raw SYNs (AF_PACKET), \
         which the program drops or answers with a RST. Each veth end receives in its own \
         threaded-NAPI kernel thread, so the **server CPU** is the time on CPU (perf's \
         task-clock per thread) of the host end's NAPI thread plus sluice's threads, whatever \
         else runs on the machine. Details and caveats: `bench/xdp/README.md`.\n"
    );
    // One group per (rate, case), lowest rate first.
    let mut keys: Vec<(u32, Case)> = floods
        .iter()
        .filter_map(|r| Some((r.rate, r.case?)))
        .collect();
    keys.sort_by_key(|(rate, c)| (*rate, *c as u8));
    keys.dedup();
    let groups: Vec<(u32, Case, Vec<&FloodResult>)> = keys
        .iter()
        .map(|(rate, c)| {
            (
                *rate,
                *c,
                // Rounds that failed a check (listed below) do not count.
                floods
                    .iter()
                    .filter(|r| r.rate == *rate && r.case == Some(*c) && r.problems.is_empty())
                    .collect(),
            )
        })
        .collect();
    let userspace_at = |rate: u32| {
        groups
            .iter()
            .find(|g| g.0 == rate && g.1 == Case::Userspace)
    };
    let med = |rs: &[&FloodResult], g: &dyn Fn(&FloodResult) -> f64| -> f64 {
        median(&rs.iter().map(|r| g(r)).collect::<Vec<_>>())
    };
    let per_attempt = |r: &FloodResult, x: f64| x / r.attempts.max(1) as f64 * 1e6;
    let exact = |r: &FloodResult| r.server_per_attempt_us;
    let perf = |r: &FloodResult| {
        r.perf
            .as_ref()
            .map_or(f64::NAN, |p| p.server_per_attempt_us)
    };
    let rounds = floods.iter().map(|r| r.round).max().unwrap_or(0);
    let ratio = |base: Option<f64>, x: f64, bold: bool| match base {
        Some(b) if (b / x).is_finite() => {
            let text = format!("{}×", f(b / x, 1));
            if bold {
                format!("**{text}**")
            } else {
                text
            }
        }
        _ => "–".to_owned(),
    };

    let clock = floods.first().map_or("schedstat", |r| r.clock.as_str());
    let _ = writeln!(s, "## CPU per refused connection attempt\n");
    let quiet = |r: &FloodResult| r.stat_baseline_busy_pct < QUIET_PCT;
    let stat_server = |r: &FloodResult| {
        if quiet(r) {
            r.stat_server_per_attempt_us
        } else {
            f64::NAN
        }
    };
    let stat_host = |r: &FloodResult| {
        if quiet(r) {
            r.stat_host_per_attempt_us
        } else {
            f64::NAN
        }
    };
    let _ = writeln!(
        s,
        "Medians over {rounds} round(s); each round runs every case back to back, each after an \
         idle baseline of its own. µs of CPU per connection attempt; each ratio is the userspace \
         429's figure at the same rate ÷ the row's. The `/proc/stat` columns use only the \
         rounds whose baseline found the rest of the machine quiet (< {QUIET_PCT}% busy; how many \
         in brackets), since they count every process.\n"
    );
    let _ = writeln!(
        s,
        "| case | attempts/s | XDP mode | attempts/round | **server CPU µs**: sluice + host-end NAPI thread ({clock}) | of which NAPI thread | of which sluice | **ratio** | server CPU µs, `/proc/stat` of CPU {} | ratio | server, perf samples µs | host, all CPUs, `/proc/stat` µs | client CPU µs ({clock}) | NAPI wakeups per attempt | XDP program ns/run | verified |",
        floods.first().map_or(0, |r| r.server_cpu)
    );
    let _ = writeln!(
        s,
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for (rate, c, rs) in &groups {
        let base = userspace_at(*rate).filter(|_| *c != Case::Userspace);
        let bm = |g: &dyn Fn(&FloodResult) -> f64| base.map(|b| med(&b.2, g));
        let (e, ss) = (med(rs, &exact), med(rs, &stat_server));
        let n_quiet = rs.iter().filter(|r| quiet(r)).count();
        let prog = med(rs, &|r: &FloodResult| {
            r.xdp.as_ref().map_or(f64::NAN, |x| x.prog_ns_per_run)
        });
        let bad = floods
            .iter()
            .filter(|r| r.rate == *rate && r.case == Some(*c) && !r.problems.is_empty())
            .count();
        if rs.is_empty() {
            let _ = writeln!(
                s,
                "| {} | {rate} | | | every round (**{bad}**) failed a check, below | | | | | | | | | | | |",
                c.label()
            );
            continue;
        }
        let one = *c == Case::Userspace;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | **{}** | {} | {} | {} | {} ({n_quiet}) | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            rate,
            rs[0].mode,
            f(med(rs, &|r| r.attempts as f64), 0),
            f(e, 2),
            f(med(rs, &|r| per_attempt(r, r.server_napi_s)), 2),
            f(med(rs, &|r| r.sluice_per_attempt_us), 2),
            if one { "1×".to_owned() } else { ratio(bm(&exact), e, true) },
            f(ss, 2),
            if one { "1×".to_owned() } else { ratio(bm(&stat_server), ss, false) },
            f(med(rs, &perf), 2),
            f(med(rs, &stat_host), 2),
            f(med(rs, &|r| r.client_per_attempt_us), 2),
            f(med(rs, &|r| r.server_napi_wakeups_per_attempt), 2),
            f(prog, 0),
            if bad == 0 {
                "yes".to_owned()
            } else {
                format!("{} rounds; **{bad} failed** (below), left out", rs.len())
            }
        );
    }
    let _ = writeln!(s);
    for (rate, c, rs) in &groups {
        if *c == Case::Userspace {
            continue;
        }
        match userspace_at(*rate) {
            Some(u) => {
                let r = med(&u.2, &exact) / med(rs, &exact);
                let r_stat = med(&u.2, &stat_server) / med(rs, &stat_server);
                let per_round: Vec<String> = (1..=rounds)
                    .filter_map(|n| {
                        let a = u.2.iter().find(|x| x.round == n)?;
                        let b = rs.iter().find(|x| x.round == n)?;
                        Some(f(a.server_per_attempt_us / b.server_per_attempt_us, 1))
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "- {rate}/s, userspace 429 ÷ {}: **{}×** server CPU per refused attempt by thread time (per round: {}); {}; target ≥ 10×: {}.",
                    c.label(),
                    f(r, 1),
                    per_round.join(", "),
                    if r_stat.is_finite() {
                        format!("{}× by the server CPU's `/proc/stat`", f(r_stat, 1))
                    } else {
                        "no quiet round for the `/proc/stat` ratio".to_owned()
                    },
                    if r >= 10.0 && (r_stat >= 10.0 || r_stat.is_nan()) { "met" } else { "**not met**" }
                );
            }
            None => {
                let cpus = med(rs, &exact) * f64::from(*rate) / 1e6;
                let lowest = groups.iter().find(|g| g.1 == Case::Userspace);
                let _ = writeln!(
                    s,
                    "- {rate}/s, {}: {} µs per attempt = {} of a CPU.{}",
                    c.label(),
                    f(med(rs, &exact), 2),
                    f(cpus, 2),
                    lowest.map_or(String::new(), |u| format!(
                        " Refusing as many in userspace at the {}/s cost would take {} CPUs.",
                        u.0,
                        f(med(&u.2, &exact) * f64::from(*rate) / 1e6, 2)
                    ))
                );
            }
        }
    }
    let worst_base = floods
        .iter()
        .map(|r| r.stat_baseline_busy_pct)
        .fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "- Other work on the machine during the idle baselines: up to {}% of all CPUs busy. \
         The `/proc/stat` column charges the attempts with whatever that other work did \
         differently during the load window, so it is only meaningful near 0%; the task-clock \
         and perf columns count only the threads that handle the attempts.\n",
        f(worst_base, 0)
    );

    // Where CPU went.
    let _ = writeln!(s, "## Where the CPU went\n");
    let _ = writeln!(
        s,
        "perf samples (cpu-clock) by thread, µs per attempt (medians), and other processes' \
         samples (CPU-seconds in the load window, not per attempt):\n"
    );
    let _ = writeln!(
        s,
        "| case | attempts/s | host-end NAPI thread | sluice user | sluice kernel | ns-end NAPI thread | client user | client kernel | other processes, s |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (rate, c, rs) in &groups {
        if rs.first().is_none_or(|r| r.perf.is_none()) {
            continue;
        }
        let per = |g: &dyn Fn(&Perf) -> f64| {
            med(rs, &|r: &FloodResult| {
                r.perf.as_ref().map_or(f64::NAN, |p| per_attempt(r, g(p)))
            })
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            rate,
            f(per(&|p| p.server_napi_s), 2),
            f(per(&|p| p.sluice_user_s), 2),
            f(per(&|p| p.sluice_kernel_s), 2),
            f(per(&|p| p.client_napi_s), 2),
            f(per(&|p| p.client_user_s), 2),
            f(per(&|p| p.client_kernel_s), 2),
            f(
                med(rs, &|r| r.perf.as_ref().map_or(f64::NAN, |p| p.other_s)),
                2
            ),
        );
    }
    let _ = writeln!(s);
    for (rate, c, rs) in &groups {
        let Some(r) = rs.iter().find(|r| r.perf.is_some()) else {
            continue;
        };
        let Some(p) = &r.perf else { continue };
        let _ = writeln!(
            s,
            "**{}, {rate}/s** (round {}): server-side samples (host-end NAPI thread and sluice)\n",
            c.label(),
            r.round
        );
        let _ = writeln!(s, "| call chain contains | % | | function sampled | % |");
        let _ = writeln!(s, "|---|--:|---|---|--:|");
        let n = p.inclusive.len().max(p.top_leaf.len());
        for k in 0..n {
            let (a, b) = p
                .inclusive
                .get(k)
                .map_or((String::new(), String::new()), |x| {
                    (x.name.clone(), f(x.pct, 1))
                });
            let (c2, d) = p
                .top_leaf
                .get(k)
                .map_or((String::new(), String::new()), |x| {
                    (format!("`{}`", x.name), f(x.pct, 1))
                });
            let _ = writeln!(s, "| {a} | {b} | | {c2} | {d} |");
        }
        let _ = writeln!(s);
    }

    // Verdict latency.
    if let Some(l) = latency {
        let _ = writeln!(s, "## Verdict latency\n");
        let col = |g: &dyn Fn(&Trial) -> f64| {
            let mut v: Vec<f64> = l.trials.iter().map(g).filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            (
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                v.last().copied().unwrap_or(f64::NAN),
                v.first().copied().unwrap_or(f64::NAN),
            )
        };
        let _ = writeln!(
            s,
            "{} trials, XDP in {} mode, a SYN every {} µs asked ({} µs achieved) from the namespace; \
             times relative to the moment `Maps::write_verdict` returned.\n",
            l.trials.len(),
            l.mode,
            l.interval_us,
            f(l.achieved_interval_us, 1)
        );
        let _ = writeln!(s, "| µs | median | p99 | min | max |");
        let _ = writeln!(s, "|---|--:|--:|--:|--:|");
        for (name, g) in [
            (
                "write → first RST received by the client (kernel rx timestamp)",
                &(|t: &Trial| t.rst_us) as &dyn Fn(&Trial) -> f64,
            ),
            ("write → that RST's SYN was sent", &|t: &Trial| {
                t.rejected_syn_sent_us
            }),
            (
                "write → tenant counter seen moving (polling the map)",
                &|t: &Trial| t.counter_us,
            ),
            ("`write_verdict` syscall itself", &|t: &Trial| t.write_us),
        ] {
            let (m, p99, max, min) = col(g);
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                f(m, 1),
                f(p99, 1),
                f(min, 1),
                f(max, 1)
            );
        }
        let passed: u64 = l.trials.iter().map(|t| t.passed_after_write).sum();
        let (_, p99, _, _) = col(&|t: &Trial| t.rst_us);
        let _ = writeln!(
            s,
            "\nSYNs sent after the write returned that still got through: {passed}. \
             Target ≤ 1 ms: {} (p99 {} µs).\n",
            if p99 <= 1000.0 && passed == 0 {
                "met"
            } else {
                "**not met**"
            },
            f(p99, 1)
        );
        for p in &l.problems {
            let _ = writeln!(s, "- problem: {p}");
        }
    }

    // Per round.
    let _ = writeln!(s, "## Every round\n");
    let _ = writeln!(
        s,
        "| round | case | attempts/s | attempts | window s | server µs (task-clock) | server µs (schedstat) | server µs (perf samples) | server CPU µs (/proc/stat) | host µs (/proc/stat) | baseline busy % | steal % | sluice µs | client µs | accepted Δ | XDP tenant_rejected Δ / passed Δ | RSTs into the namespace | problems |"
    );
    let _ = writeln!(
        s,
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|"
    );
    let mut all: Vec<&FloodResult> = floods.iter().collect();
    all.sort_by_key(|r| (r.round, r.rate, r.case.map(|c| c as u8)));
    for r in all {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.round,
            r.case.map_or("?", |c| c.label()),
            r.rate,
            r.attempts,
            f(r.window_s, 2),
            f(r.server_per_attempt_us, 2),
            f(r.schedstat_server_per_attempt_us, 2),
            f(perf(r), 2),
            f(r.stat_server_per_attempt_us, 2),
            f(r.stat_host_per_attempt_us, 2),
            f(r.stat_baseline_busy_pct, 0),
            f(
                r.stat_cpus.iter().map(|c| c.steal_s).sum::<f64>() * 100.0
                    / (r.window_s * r.stat_cpus.len().max(1) as f64),
                1
            ),
            f(r.sluice_per_attempt_us, 2),
            f(r.client_per_attempt_us, 2),
            r.accepted_delta,
            r.xdp.as_ref().map_or("–".to_owned(), |x| format!(
                "{} / {}",
                x.tenant_rejected, x.passed
            )),
            r.xdp
                .as_ref()
                .map_or("–".to_owned(), |x| x.ns_in_segs.to_string()),
            if r.problems.is_empty() {
                "–".to_owned()
            } else {
                r.problems.join("; ")
            }
        );
    }
    let _ = writeln!(s);
    if let Some((round, h)) = floods
        .iter()
        .filter(|r| r.problems.is_empty())
        .find_map(|r| Some((r.round, r.http.as_ref()?)))
    {
        let _ = writeln!(
            s,
            "Userspace client (round {round}): {} × 429 insufficient_quota, {} other, {} connect errors, {} resets, {} unfinished; at most {} in flight; connect→EOF mean {} ms, p99 {} ms.\n",
            h.insufficient_quota_429, h.other_status, h.connect_errors, h.resets, h.timeouts, h.max_inflight, f(h.mean_ms, 2), f(h.p99_ms, 2)
        );
    }
    s
}
