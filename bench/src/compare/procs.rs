//! Processes of a comparison and what /proc says about them.
//!
//! Starts the mock and the proxies pinned to their CPUs, reads the address
//! each one announces on stdout, stops them; reads CPU time (per-thread
//! schedstat, nanoseconds), resident memory and the process tree of a pid,
//! and the machine-wide CPU counters that tell whether something else ran
//! during a phase ([`Snapshot`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The CPUs in a list like `0`, `1-3` or `0,2`.
pub fn parse_cpus(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("CPU list {list:?}: {part:?} is not N or N-M");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("CPU list {list:?} is empty"));
    }
    Ok(cpus)
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET indexes the set's bit array with a bounds check
        // (a CPU past CPU_SETSIZE panics here, before any fork); it writes
        // nothing outside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Pins the calling thread (and the threads it starts later) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t for the duration of the call;
    // pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs forever at SCHED_IDLE priority, so the CPU it is pinned to never
/// halts: any runnable task preempts it at once, and it only burns time
/// that would otherwise be idle. On a VM a halted vCPU is descheduled by
/// the host and takes milliseconds to come back when an interrupt (a
/// packet from the other CPU) arrives; with a spinner it never halts.
pub fn spin() -> ! {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    loop {
        std::hint::spin_loop();
    }
}

/// Starts one [`spin`] process per CPU in `cpus` (this same binary's
/// hidden `spin` command).
pub fn start_spinners(cpus: &[usize], work: &Path) -> Result<Vec<Proc>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let mut out = Vec::new();
    for &cpu in cpus {
        let mut cmd = Command::new(&exe);
        cmd.arg("spin");
        let log = work.join(format!("spin-{cpu}.log"));
        out.push(Proc::start(
            &format!("spin-{cpu}"),
            cmd,
            &[cpu],
            &log,
            &[],
            Duration::ZERO,
        )?);
    }
    Ok(out)
}

/// Raises the open-file limit (soft, and hard when allowed) so this
/// process and its children can hold tens of thousands of sockets.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let cap = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(want);
    let target = want.min(cap);
    let attempts = [
        libc::rlimit {
            rlim_cur: target,
            rlim_max: target.max(lim.rlim_max),
        },
        libc::rlimit {
            rlim_cur: target.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        },
    ];
    for attempt in attempts {
        // SAFETY: `attempt` is a valid rlimit; failure leaves the limit as is.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &attempt) } == 0 {
            return attempt.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Asks the kernel to SIGTERM the calling process when the thread that
/// started it exits, so a comparison that is interrupted (or crashes)
/// leaves no proxy or mock behind. Only for use between fork and exec.
pub fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; it only affects the
    // calling process and is async-signal-safe.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

/// A child process started by the comparison.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// What it announced on stdout (`listening on …` lines and the like).
    pub lines: Vec<String>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `cmd` pinned to `cpus`, stderr to `log`, and waits until
    /// every one of `wait_for` has appeared at the start of a stdout line
    /// (within `timeout`). Stdout keeps being copied to `log`.out.
    pub fn start(
        name: &str,
        mut cmd: Command,
        cpus: &[usize],
        log: &Path,
        wait_for: &[&str],
        timeout: Duration,
    ) -> Result<Proc, String> {
        let set = cpu_set(cpus);
        let err_log = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_log));
        // SAFETY: between fork and exec only async-signal-safe calls are
        // allowed; sched_setaffinity and prctl are plain syscalls on stack
        // values.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                die_with_parent();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting {name}: {e}"))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(format!("{name}: no stdout"));
        };
        let (tx, rx) = mpsc::channel::<String>();
        let out_log = log.with_extension("out");
        std::thread::spawn(move || {
            let mut copy = fs::File::create(out_log).ok();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = copy.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        let mut proc = Proc {
            name: name.to_owned(),
            child,
            lines: Vec::new(),
        };
        while !wait_for
            .iter()
            .all(|w| lines.iter().any(|l: &String| l.starts_with(w)))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = proc.child.try_wait() {
                        let err = fs::read_to_string(log).unwrap_or_default();
                        return Err(format!(
                            "{name} exited ({status}) before it was ready:\n{err}"
                        ));
                    }
                    if left.is_zero() {
                        proc.stop();
                        return Err(format!(
                            "{name} did not print {wait_for:?} within {timeout:?}; see {}",
                            log.display()
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = proc.child.wait();
                    let err = fs::read_to_string(log).unwrap_or_default();
                    return Err(format!("{name} closed stdout before it was ready:\n{err}"));
                }
            }
        }
        proc.lines = lines;
        Ok(proc)
    }

    /// The rest of the first announced line starting with `prefix`.
    pub fn announced(&self, prefix: &str) -> Option<String> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|s| s.trim().to_owned())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Sum of on-CPU time over every thread of `pid`, in nanoseconds
/// (`/proc/PID/task/*/schedstat`, first field); falls back to the tick
/// counts of `/proc/PID/stat` where schedstat is missing.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Some(ns) = fs::read_to_string(path).ok().and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        }) {
            total += ns;
            any = true;
        }
    }
    if any {
        return Some(total);
    }
    let ticks = stat_ticks(pid)?;
    Some(ticks * 1_000_000_000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf with a constant name has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100)
}

/// Fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let rest = text[close + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((comm, rest))
}

/// utime + stime of `pid` in clock ticks.
fn stat_ticks(pid: u32) -> Option<u64> {
    let (_, f) = stat_fields(pid)?;
    // After ")": state ppid … utime is field 14 overall, index 11 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Every pid with its parent pid and command name.
fn all_processes() -> Vec<(u32, u32, String, u64)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((comm, f)) = stat_fields(pid) {
            let ppid = f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let ticks = f
                .get(11)
                .zip(f.get(12))
                .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
                .unwrap_or(0);
            out.push((pid, ppid, comm, ticks));
        }
    }
    out
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let procs = all_processes();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    found
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Total RSS of a process tree in KiB.
pub fn tree_rss_kb(pids: &[u32]) -> Option<u64> {
    let values: Vec<u64> = pids.iter().filter_map(|p| rss_kb(*p)).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// CPU time of a process tree in nanoseconds.
pub fn tree_cpu_ns(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ns(*p)).sum()
}

/// Machine-wide CPU counters at one moment, in clock ticks.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub at: Option<Instant>,
    /// user + nice + system over the watched CPUs.
    pub busy: u64,
    pub irq: u64,
    pub steal: u64,
    /// Ticks of processes this comparison runs (all targets, the mock,
    /// itself), keyed by pid.
    pub known: BTreeMap<u32, u64>,
    /// Ticks of kernel threads (children of kthreadd), keyed by pid.
    pub kernel: BTreeMap<u32, u64>,
}

impl Snapshot {
    /// Reads /proc/stat for `cpus` and the ticks of every process.
    pub fn take(cpus: &[usize], known: &[u32]) -> Snapshot {
        let mut snap = Snapshot {
            at: Some(Instant::now()),
            ..Snapshot::default()
        };
        if let Ok(stat) = fs::read_to_string("/proc/stat") {
            for line in stat.lines() {
                let mut f = line.split_whitespace();
                let Some(name) = f.next() else { continue };
                let Some(cpu) = name
                    .strip_prefix("cpu")
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                if !cpus.contains(&cpu) {
                    continue;
                }
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal
                let get = |i: usize| v.get(i).copied().unwrap_or(0);
                snap.busy += get(0) + get(1) + get(2);
                snap.irq += get(5) + get(6);
                snap.steal += get(7);
            }
        }
        for (pid, ppid, _, ticks) in all_processes() {
            if known.contains(&pid) {
                snap.known.insert(pid, ticks);
            } else if ppid == 2 || pid == 2 {
                snap.kernel.insert(pid, ticks);
            }
        }
        snap
    }
}

/// What ran besides the comparison's own processes between two snapshots.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Noise {
    /// CPU time of other user processes, as % of one core over the phase.
    pub others_pct: f64,
    /// Kernel threads (softirq daemons, workers), % of one core.
    pub kernel_threads_pct: f64,
    /// Interrupt and softirq time on the watched CPUs, % of one core.
    pub irq_pct: f64,
    /// Time the hypervisor took (steal), % of one core.
    pub steal_pct: f64,
    /// Other processes or steal above the limit: the phase's figures are
    /// not trustworthy.
    pub noisy: bool,
}

pub fn noise(before: &Snapshot, after: &Snapshot, limit_pct: f64) -> Noise {
    let wall = match (before.at, after.at) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    if wall <= 0.0 {
        return Noise::default();
    }
    let delta = |a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>| -> u64 {
        b.iter()
            .map(|(pid, t)| t.saturating_sub(a.get(pid).copied().unwrap_or(*t)))
            .sum()
    };
    let hz = clock_ticks() as f64;
    let pct = |ticks: u64| ticks as f64 / hz / wall * 100.0;
    let busy = after.busy.saturating_sub(before.busy);
    let known = delta(&before.known, &after.known);
    let kernel = delta(&before.kernel, &after.kernel);
    let others = busy.saturating_sub(known + kernel);
    let n = Noise {
        others_pct: round1(pct(others)),
        kernel_threads_pct: round1(pct(kernel)),
        irq_pct: round1(pct(after.irq.saturating_sub(before.irq))),
        steal_pct: round1(pct(after.steal.saturating_sub(before.steal))),
        noisy: false,
    };
    Noise {
        noisy: n.others_pct > limit_pct || n.steal_pct > limit_pct,
        ..n
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A free TCP port on 127.0.0.1 (bound and released: a small race, fine
/// for a process started right after on a quiet machine).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0"), Ok(vec![0]));
        assert_eq!(parse_cpus("1-3,5"), Ok(vec![1, 2, 3, 5]));
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("").is_err());
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        assert!(cpu_ns(me).is_some_and(|n| n > 0));
        assert!(rss_kb(me).is_some_and(|k| k > 0));
        assert_eq!(tree(me).first(), Some(&me));
    }

    #[test]
    fn noise_counts_only_strangers() {
        let t0 = Instant::now();
        let hz = clock_ticks();
        let before = Snapshot {
            at: Some(t0),
            busy: 0,
            known: BTreeMap::from([(10, 0)]),
            ..Snapshot::default()
        };
        // One second: our process used half a core, something else 10 %.
        let after = Snapshot {
            at: Some(t0 + Duration::from_secs(1)),
            busy: hz * 6 / 10,
            known: BTreeMap::from([(10, hz / 2)]),
            ..Snapshot::default()
        };
        let n = noise(&before, &after, 3.0);
        assert!((n.others_pct - 10.0).abs() < 0.5, "{n:?}");
        assert!(n.noisy);
        let quiet = noise(
            &before,
            &Snapshot {
                busy: hz / 2,
                ..after.clone()
            },
            3.0,
        );
        assert!(!quiet.noisy, "{quiet:?}");
    }
}
