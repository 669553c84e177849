//! `sluice-bench compare`: one scenario set, several targets, one run.
//!
//! Starts the mock upstream and the proxies (`targets`), pins roles to CPUs
//! — load generator and mock on the client CPUs, the proxy under test on
//! the proxy CPUs — and runs every scenario (`scenarios`) against every
//! target in turn, scenario by scenario so the targets are measured close
//! together in time. Around each phase it reads the proxy's CPU time and
//! RSS and the machine's CPU counters (`procs`); a phase during which some
//! other process took noticeable CPU is run again, and if it stays noisy
//! its figures are marked as such. Optional `perf` profiles (`profile`)
//! show where a proxy's time goes. Everything lands in the output
//! directory: `results.json`, `report.md` (`report`) and SVG plots.

pub mod machine;
pub mod procs;
pub mod profile;
pub mod report;
pub mod scenarios;
pub mod targets;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::load::{self, Load, Plan, Progress, Summary, Verify};
use procs::{Noise, Proc, Snapshot};
use scenarios::{Scenario, SetOptions, Timing};
use targets::{Env, Extra, Kind, Target};

/// Everything `compare` can be told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where `sluice` and `sluice-mock` are.
    pub bin_dir: PathBuf,
    /// Output directory (created).
    pub out: PathBuf,
    /// The repository, for the commit id in the report.
    pub repo: PathBuf,
    pub timing: Timing,
    pub set: SetOptions,
    /// Run only these scenario ids (all when empty).
    pub only: Vec<String>,
    /// Built-in targets to run, in column order.
    pub targets: Vec<String>,
    pub extra: Vec<Extra>,
    pub client_cpus: Vec<usize>,
    pub proxy_cpus: Vec<usize>,
    /// sluice worker threads.
    pub sluice_workers: usize,
    pub repeat: usize,
    /// Extra attempts for a phase found noisy.
    pub retries: usize,
    /// Other processes above this share of one core (%) make a phase noisy.
    pub noise_limit_pct: f64,
    pub profile: bool,
    pub nginx: PathBuf,
    /// Fixed mock port (so an external gateway can be pointed at it).
    pub mock_port: Option<u16>,
    /// Retries of noisy phases stop when they would push the whole run
    /// past this long.
    pub budget: Duration,
    /// Keep the measured CPUs from halting ([`procs::spin`]).
    pub keep_awake: bool,
}

/// Memory of a proxy around the idle-stream phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleMemory {
    /// Right after a fresh start, before any request.
    pub fresh_kb: u64,
    /// After a short warm-up, just before the streams open.
    pub warm_kb: u64,
    /// While every stream is held open.
    pub holding_kb: u64,
    /// (holding − warm) / streams opened.
    pub per_stream_bytes: f64,
}

/// One scenario against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Phase {
    pub scenario: String,
    pub target: String,
    pub repeat: usize,
    /// Attempts made (more than one when earlier ones were noisy).
    pub attempts: usize,
    pub wall_s: f64,
    pub summary: Summary,
    /// The target's CPU time over the phase (warm-up and drain included).
    pub cpu_ms: Option<f64>,
    /// The target's CPU as % of one core over the phase.
    pub cpu_pct: Option<f64>,
    /// Target CPU per finished request (per stream for streams).
    pub cpu_us_per_request: Option<f64>,
    /// The target's helper (redis-server) CPU per finished request.
    #[serde(default)]
    pub helper_cpu_us_per_request: Option<f64>,
    /// Load generator + mock, % of one core: near 100 × client CPUs means
    /// the client side, not the target, set the pace.
    pub client_pct: f64,
    /// Target RSS at the end of the phase.
    pub rss_kb: Option<u64>,
    pub memory: Option<IdleMemory>,
    pub noise: Noise,
}

/// The whole result file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub machine: machine::Machine,
    pub settings: Settings,
    pub targets: Vec<TargetInfo>,
    /// Targets skipped and other remarks.
    pub notes: Vec<String>,
    pub scenarios: Vec<ScenarioInfo>,
    pub phases: Vec<Phase>,
    pub profiles: Vec<profile::Profile>,
    /// Wall time of the whole comparison.
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Settings {
    pub warmup_s: f64,
    pub duration_s: f64,
    pub idle_hold_s: f64,
    pub repeat: usize,
    pub client_cpus: Vec<usize>,
    pub proxy_cpus: Vec<usize>,
    pub sluice_workers: usize,
    pub noise_limit_pct: f64,
    /// Idle-priority spinners kept the measured CPUs from halting.
    pub keep_awake: bool,
    pub command: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub label: String,
    pub url: String,
    pub measured: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ScenarioInfo {
    pub id: String,
    pub title: String,
}

/// A running comparison.
struct Bench {
    o: Options,
    env: Env,
    mock: Proc,
    targets: Vec<Target>,
    me: u32,
    /// Idle-priority spinners keeping the watched CPUs awake.
    spinners: Vec<Proc>,
    watched_cpus: Vec<usize>,
    started: Instant,
    /// Phases planned and done so far (for the retry budget).
    planned: usize,
    done: std::sync::atomic::AtomicUsize,
}

/// Descriptors a proxy needs besides two per idle stream (listeners,
/// pollers, logs, the warm-up's connections).
const IDLE_FD_RESERVE: u64 = 400;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Bench {
    /// Pids that belong to this comparison: itself, the mock, every target.
    fn known(&self) -> Vec<u32> {
        let mut k = vec![self.me, self.mock.pid()];
        k.extend(self.spinners.iter().map(Proc::pid));
        for t in &self.targets {
            k.extend(&t.pids);
            k.extend(t.helper_pid());
        }
        k
    }

    fn client_cpu_ns(&self) -> u64 {
        procs::cpu_ns(self.me).unwrap_or(0) + procs::cpu_ns(self.mock.pid()).unwrap_or(0)
    }

    /// Runs one phase once: load, CPU, RSS, noise.
    fn attempt(
        &self,
        sc: &Scenario,
        t: usize,
        plan: &Plan,
        spec: &load::RequestSpec,
        repeat: usize,
    ) -> Result<Phase, String> {
        let target = &self.targets[t];
        let lt = load::Target::parse(&target.url, &Verify::Insecure)?;
        let known = self.known();
        let snap0 = Snapshot::take(&self.watched_cpus, &known);
        let cpu0 = procs::tree_cpu_ns(&target.pids);
        let helper0 = target.helper_pid().and_then(procs::cpu_ns);
        let client0 = self.client_cpu_ns();
        let progress = Progress::default();
        let done = AtomicBool::new(false);
        let idle_streams = match plan.load {
            Load::Idle { streams, .. } => Some(streams as u64),
            _ => None,
        };
        let (outcome, holding_kb) = std::thread::scope(|s| {
            let bar = s.spawn(|| show_progress(&sc.id, &target.name, plan, &progress, &done));
            let sampler = s.spawn(|| {
                // Idle streams: read the proxy's memory while all are held.
                idle_streams?;
                while progress.holding.load(Ordering::Relaxed) == 0 {
                    if done.load(Ordering::Relaxed) {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(Duration::from_millis(
                    ms(self.o.timing.idle_hold).saturating_sub(500).min(1500),
                ));
                procs::tree_rss_kb(&target.pids)
            });
            let outcome = load::run(&lt, spec, plan, &progress);
            done.store(true, Ordering::Relaxed);
            let _ = bar.join();
            let holding = sampler.join().ok().flatten();
            (outcome, holding)
        });
        let outcome = outcome.map_err(|e| format!("{} / {}: {e}", sc.id, target.name))?;
        let snap1 = Snapshot::take(&self.watched_cpus, &known);
        let wall = snap1
            .at
            .zip(snap0.at)
            .map_or(0.0, |(b, a)| (b - a).as_secs_f64())
            .max(1e-9);
        let cpu_ns = target
            .measurable()
            .then(|| procs::tree_cpu_ns(&target.pids).saturating_sub(cpu0));
        let client_ns = self.client_cpu_ns().saturating_sub(client0);
        let helper_ns = helper0.and_then(|h0| {
            let h1 = target.helper_pid().and_then(procs::cpu_ns)?;
            Some(h1.saturating_sub(h0))
        });
        let s = &outcome.summary;
        let per_unit = match (&s.idle, s.counts.all_completed) {
            (Some(idle), _) => idle.opened,
            (None, n) => n,
        };
        let memory = holding_kb.map(|holding| IdleMemory {
            holding_kb: holding,
            ..IdleMemory::default()
        });
        Ok(Phase {
            scenario: sc.id.clone(),
            target: target.name.clone(),
            repeat,
            attempts: 1,
            wall_s: round2(wall),
            cpu_ms: cpu_ns.map(|n| round2(n as f64 / 1e6)),
            cpu_pct: cpu_ns.map(|n| round2(n as f64 / 1e9 / wall * 100.0)),
            cpu_us_per_request: cpu_ns
                .filter(|_| per_unit > 0)
                .map(|n| round2(n as f64 / 1e3 / per_unit as f64)),
            helper_cpu_us_per_request: helper_ns
                .filter(|_| per_unit > 0)
                .map(|n| round2(n as f64 / 1e3 / per_unit as f64)),
            client_pct: round2(client_ns as f64 / 1e9 / wall * 100.0),
            rss_kb: procs::tree_rss_kb(&target.pids),
            memory,
            noise: procs::noise(&snap0, &snap1, self.o.noise_limit_pct),
            summary: outcome.summary,
        })
    }

    /// Runs one phase, again while it is noisy (up to `retries` more
    /// times), keeping the quietest attempt. The idle-stream phase runs
    /// once: its memory figures do not depend on CPU noise, and a second
    /// attempt would meet a proxy still tearing down (or, after failures,
    /// refusing) the first attempt's streams.
    fn phase(
        &self,
        sc: &Scenario,
        t: usize,
        capacity: Option<f64>,
        repeat: usize,
    ) -> Result<Phase, String> {
        let target = &self.targets[t];
        let plan = sc.plan(&self.o.timing, capacity)?;
        let spec = sc.request(targets::MODEL, &target.key);
        let mut best: Option<Phase> = None;
        let retries = if sc.is_idle() { 0 } else { self.o.retries };
        for attempt in 0..=retries {
            if attempt > 0 && !self.may_retry() {
                println!(
                    "  {:<12} {:<20} noisy, but no time is left for another attempt",
                    sc.id, target.name
                );
                break;
            }
            if attempt > 0 {
                println!(
                    "  {:<12} {:<20} noisy (other processes {:.1}% of a core, steal {:.1}%), running it again",
                    sc.id,
                    target.name,
                    best.as_ref().map_or(0.0, |p| p.noise.others_pct),
                    best.as_ref().map_or(0.0, |p| p.noise.steal_pct)
                );
                std::thread::sleep(Duration::from_secs(2));
            }
            let mut p = self.attempt(sc, t, &plan, &spec, repeat)?;
            p.attempts = attempt + 1;
            let quieter = best.as_ref().is_none_or(|b| {
                p.noise.others_pct + p.noise.steal_pct < b.noise.others_pct + b.noise.steal_pct
            });
            let noisy = p.noise.noisy;
            if quieter {
                best = Some(p);
            } else if let Some(b) = best.as_mut() {
                b.attempts = attempt + 1;
            }
            if !noisy {
                break;
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        best.ok_or_else(|| format!("{}: no attempt ran", sc.id))
    }

    /// Whether one more attempt still leaves time for the phases left,
    /// each taken at its nominal length (warm-up + window + setup).
    fn may_retry(&self) -> bool {
        let done = self.done.load(Ordering::Relaxed);
        let t = &self.o.timing;
        let per_phase = t.warmup + t.duration + Duration::from_millis(1500);
        let left = self.planned.saturating_sub(done) as u32 + 1;
        self.started.elapsed() + per_phase * left < self.o.budget
    }

    /// The idle-stream phase of one target: restart it for a clean heap,
    /// read its memory fresh and after a warm-up, then open the streams.
    fn idle_phase(&mut self, sc: &Scenario, t: usize, repeat: usize) -> Result<Phase, String> {
        if self.targets[t].owned() {
            self.targets[t].restart(&self.env)?;
            std::thread::sleep(Duration::from_millis(500));
            self.targets[t].refresh_pids();
        }
        let fresh = procs::tree_rss_kb(&self.targets[t].pids);
        // A short warm-up: connection pools, buffers and per-core state
        // that every proxy sets up on its first requests.
        let target = &self.targets[t];
        let lt = load::Target::parse(&target.url, &Verify::Insecure)?;
        for stream in [false, true] {
            let spec = load::RequestSpec::chat(targets::MODEL, stream, None).with_key(&target.key);
            let plan = Plan {
                load: Load::Closed { concurrency: 16 },
                requests: Some(400),
                duration: Duration::from_secs(30),
                ..Plan::default()
            };
            load::run(&lt, &spec, &plan, &Progress::default())
                .map_err(|e| format!("idle warm-up of {}: {e}", target.name))?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let warm = procs::tree_rss_kb(&target.pids);
        let mut p = self.phase(sc, t, None, repeat)?;
        if let (Some(fresh), Some(warm), Some(mem)) = (fresh, warm, p.memory.as_mut()) {
            let opened = p.summary.idle.as_ref().map_or(0, |i| i.opened);
            mem.fresh_kb = fresh;
            mem.warm_kb = warm;
            mem.per_stream_bytes = if opened > 0 {
                round2(mem.holding_kb.saturating_sub(warm) as f64 * 1024.0 / opened as f64)
            } else {
                0.0
            };
        }
        Ok(p)
    }

    /// A few requests of each kind; a target that fails them is dropped.
    fn sanity(&self, t: usize) -> Result<(), String> {
        let target = &self.targets[t];
        let lt = load::Target::parse(&target.url, &Verify::Insecure)?;
        for stream in [false, true] {
            let spec = load::RequestSpec::chat(targets::MODEL, stream, None)
                .with_key(&target.key)
                .with_header(crate::mock::header::CHUNKS, "4");
            let plan = Plan {
                load: Load::Closed { concurrency: 1 },
                requests: Some(3),
                timeout: Duration::from_secs(5),
                ..Plan::default()
            };
            let out = load::run(&lt, &spec, &plan, &Progress::default())
                .map_err(|e| format!("{}: {e}", target.name))?;
            if out.summary.counts.ok != 3 {
                return Err(format!(
                    "{} failed a {} request: {:?}",
                    target.name,
                    if stream { "streamed" } else { "plain" },
                    out.summary.errors
                ));
            }
        }
        Ok(())
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Draws a progress bar for a phase until `done`; hidden when stderr is
/// not a terminal.
fn show_progress(scenario: &str, target: &str, plan: &Plan, p: &Progress, done: &AtomicBool) {
    let (len, idle) = match plan.load {
        Load::Idle { streams, .. } => (streams as u64, true),
        _ => (ms(plan.warmup + plan.duration), false),
    };
    let bar = ProgressBar::new(len.max(1));
    let style = ProgressStyle::with_template("{prefix:>34} [{bar:30}] {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{scenario} · {target}"));
    let start = Instant::now();
    let mut last = (start, 0u64);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        let completed = p.completed();
        if idle {
            bar.set_position(p.opened());
            bar.set_message(format!("{} open, {} failed", p.opened(), p.failed()));
        } else {
            let rate = (completed - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
            bar.set_position(ms(now - start).min(len));
            let phase = if now - start < plan.warmup {
                "warm-up"
            } else {
                "measuring"
            };
            bar.set_message(format!(
                "{phase} · {} req/s · {} failed",
                crate::report::count(rate),
                p.failed()
            ));
        }
        last = (now, completed);
    }
    bar.finish_and_clear();
}

/// One line per finished phase on stdout.
fn print_phase(p: &Phase) {
    let s = &p.summary;
    let main = if let Some(idle) = &s.idle {
        format!("{}/{} streams open", idle.opened, idle.requested)
    } else if let Some(ttft) = &s.ttft {
        format!(
            "ttft p50 {} p99 {} · {} streams/s",
            crate::report::us(ttft.p50),
            crate::report::us(ttft.p99),
            crate::report::count(s.throughput_rps)
        )
    } else {
        format!(
            "p50 {} p99 {} · {} req/s",
            crate::report::us(s.latency.p50),
            crate::report::us(s.latency.p99),
            crate::report::count(s.throughput_rps)
        )
    };
    let cpu = p
        .cpu_us_per_request
        .map_or(String::new(), |c| format!(" · cpu {c:.1} µs/req"));
    let mem = p.memory.as_ref().map_or(String::new(), |m| {
        format!(
            " · rss {:.1} MB, {:.1} KB/stream",
            m.holding_kb as f64 / 1024.0,
            m.per_stream_bytes / 1024.0
        )
    });
    let failed = if s.counts.failed > 0 || s.idle.as_ref().is_some_and(|i| i.failed > 0) {
        format!(" · FAILED {:?}", s.errors)
    } else {
        String::new()
    };
    let overloaded = match s.offered_rps {
        Some(offered) if s.throughput_rps < offered * 0.95 => format!(
            " · OVERLOADED ({:.0}% of the offered rate served)",
            s.throughput_rps / offered * 100.0
        ),
        _ => String::new(),
    };
    let noisy = if p.noise.noisy {
        format!(" · NOISY (others {:.1}% of a core)", p.noise.others_pct)
    } else {
        String::new()
    };
    println!(
        "  {:<12} {:<20} {main}{cpu}{mem}{overloaded}{failed}{noisy}",
        p.scenario, p.target
    );
    let _ = std::io::stdout().flush();
}

/// Runs the comparison and writes its results; returns the output
/// directory's report path.
pub fn run(o: Options, command: String) -> Result<PathBuf, String> {
    let started = Instant::now();
    let mut o = o;
    let mut notes = Vec::new();
    // A proxy holds two descriptors per idle stream (client and upstream
    // side). Without CAP_SYS_RESOURCE the hard limit cannot be raised, so
    // the idle phase is cut to what fits, and the report says so.
    let nofile = procs::raise_nofile(1 << 20);
    let fits = (nofile.saturating_sub(IDLE_FD_RESERVE) / 2 / 100 * 100) as usize;
    if o.set.idle_streams > fits {
        let note = format!(
            "the open-file limit here is {nofile} and cannot be raised (no CAP_SYS_RESOURCE): \
             a proxy needs two descriptors per idle stream, so the idle phase holds {fits} \
             streams instead of {}",
            o.set.idle_streams
        );
        println!("note: {note}");
        notes.push(note);
        o.set.idle_streams = fits;
    }
    procs::pin_current_thread(&o.client_cpus)
        .map_err(|e| format!("pinning to CPUs {:?}: {e}", o.client_cpus))?;
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let work = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let machine = machine::describe(&o.repo, &o.nginx);
    println!(
        "sluice-bench compare: {} ({} CPUs), client on CPU {:?}, proxies on CPU {:?}; work dir {}",
        machine.cpu_model,
        machine.cpus,
        o.client_cpus,
        o.proxy_cpus,
        work.display()
    );

    // The mock upstream, on the client CPUs.
    let mock_bin = o.bin_dir.join("sluice-mock");
    let mut cmd = std::process::Command::new(&mock_bin);
    let listen = format!("127.0.0.1:{}", o.mock_port.unwrap_or(0));
    cmd.args([
        "--listen",
        &listen,
        "--api-key",
        targets::MOCK_KEY,
        "--no-record",
        "--workers",
    ])
    .arg(o.client_cpus.len().to_string());
    let mock = Proc::start(
        "mock",
        cmd,
        &o.client_cpus,
        &work.join("mock.log"),
        &["listening on "],
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{e} (is {} built?)", mock_bin.display()))?;
    let mock_addr: std::net::SocketAddr = mock
        .announced("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or("the mock announced no address")?;
    println!("  mock upstream on {mock_addr}");

    let env = Env {
        bin_dir: o.bin_dir.clone(),
        work: work.clone(),
        mock: mock_addr,
        proxy_cpus: o.proxy_cpus.clone(),
        client_cpus: o.client_cpus.clone(),
        nginx: o.nginx.clone(),
        // Each idle stream holds a client and an upstream connection.
        connections: (o.set.idle_streams * 2 + 4096).max(8192),
    };
    let mut list = Vec::new();
    for name in &o.targets {
        let t = match name.as_str() {
            "direct" => Target::direct(mock_addr),
            "nginx" => Target::nginx(),
            other => match targets::Variant::from_name(other) {
                Some(v) => Target::sluice(v),
                None => {
                    let sluices: Vec<&str> =
                        targets::Variant::ALL.iter().map(|v| v.name()).collect();
                    return Err(format!(
                        "--targets: unknown target {other:?} (direct, nginx, {}; others with --target NAME=URL)",
                        sluices.join(", ")
                    ));
                }
            },
        };
        list.push(t);
    }
    list.extend(o.extra.iter().map(Target::external));
    let mut bench = Bench {
        watched_cpus: o.client_cpus.iter().chain(&o.proxy_cpus).copied().collect(),
        o: o.clone(),
        env,
        mock,
        targets: Vec::new(),
        me: std::process::id(),
        spinners: Vec::new(),
        started,
        planned: 0,
        done: std::sync::atomic::AtomicUsize::new(0),
    };
    for mut t in list {
        let ready = t
            .prepare(&bench.env, o.sluice_workers)
            .and_then(|()| t.start(&bench.env));
        match ready {
            Ok(()) => {
                println!("  {:<20} {}", t.name, t.url);
                bench.targets.push(t);
            }
            Err(e) => {
                println!("  {:<20} skipped: {e}", t.name);
                notes.push(format!("`{}` skipped: {e}", t.name));
            }
        }
    }
    if o.keep_awake {
        bench.spinners = procs::start_spinners(&bench.watched_cpus, &work)?;
    }
    let mut i = 0;
    while i < bench.targets.len() {
        if let Err(e) = bench.sanity(i) {
            println!("  {:<20} dropped: {e}", bench.targets[i].name);
            notes.push(format!("`{}` dropped: {e}", bench.targets[i].name));
            bench.targets[i].stop();
            bench.targets.remove(i);
        } else {
            i += 1;
        }
    }
    if bench.targets.is_empty() {
        return Err("no target is left to measure".into());
    }

    let all = scenarios::all(&o.set);
    let chosen: Vec<Scenario> = if o.only.is_empty() {
        all
    } else {
        for id in &o.only {
            if !all.iter().any(|s| &s.id == id) {
                let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
                return Err(format!(
                    "--scenarios: unknown scenario {id:?} (one of {})",
                    ids.join(", ")
                ));
            }
        }
        all.into_iter().filter(|s| o.only.contains(&s.id)).collect()
    };
    let profiled = if o.profile { 4 } else { 0 };
    bench.planned = chosen.len() * bench.targets.len() * o.repeat.max(1) + profiled;
    let mut phases = Vec::new();
    // Open-loop rates are shares of the first run's maximum, so every
    // repeat offers the same rates and their medians compare.
    let mut capacity: Option<f64> = None;
    for repeat in 0..o.repeat.max(1) {
        if repeat > 0 {
            for t in 0..bench.targets.len() {
                bench.targets[t].restart(&bench.env)?;
            }
        }
        println!("\nrun {} of {}", repeat + 1, o.repeat.max(1));
        for sc in &chosen {
            println!("{}", sc.title);
            for t in 0..bench.targets.len() {
                let result = if sc.is_idle() {
                    bench.idle_phase(sc, t, repeat)
                } else {
                    bench.phase(sc, t, capacity, repeat)
                };
                match result {
                    Ok(p) => {
                        print_phase(&p);
                        // Open-loop rates are shares of direct's maximum
                        // (or of the first target's, without direct).
                        if sc.id == "max"
                            && repeat == 0
                            && (bench.targets[t].kind == Kind::Direct || capacity.is_none())
                        {
                            capacity = Some(p.summary.throughput_rps);
                        }
                        phases.push(p);
                    }
                    Err(e) => {
                        println!("  {:<12} {:<20} error: {e}", sc.id, bench.targets[t].name);
                        notes.push(format!("{} / {}: {e}", sc.id, bench.targets[t].name));
                    }
                }
                bench.targets[t].refresh_pids();
            }
        }
    }

    let mut profiles = Vec::new();
    if o.profile {
        match profile::find_perf() {
            None => notes.push("no profile: perf not found (apt-get install linux-perf)".into()),
            Some(perf) => {
                println!("\nprofiles (perf record, not part of the figures above)");
                let wanted: Vec<&Scenario> = chosen
                    .iter()
                    .filter(|s| matches!(s.id.as_str(), "max" | "stream-64" | "body-64k"))
                    .collect();
                for t in 0..bench.targets.len() {
                    let kind = bench.targets[t].kind.clone();
                    let is_sluice = matches!(kind, Kind::Sluice(_));
                    if !bench.targets[t].measurable() || !(is_sluice || kind == Kind::Nginx) {
                        continue;
                    }
                    // A fresh process: the idle phase may have left it short
                    // of descriptors or with its circuits open.
                    if let Err(e) = bench.targets[t].restart(&bench.env) {
                        notes.push(format!(
                            "profile of {}: restart failed: {e}",
                            bench.targets[t].name
                        ));
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    bench.targets[t].refresh_pids();
                    let target = &bench.targets[t];
                    for sc in &wanted {
                        if target.kind == Kind::Nginx && sc.id != "max" {
                            continue;
                        }
                        let data = work.join(format!("perf-{}-{}.data", target.name, sc.id));
                        let child = match profile::start(&perf, &target.pids, &data) {
                            Ok(c) => c,
                            Err(e) => {
                                notes.push(format!("profile of {}: {e}", target.name));
                                continue;
                            }
                        };
                        // One attempt: these runs explain figures, they are
                        // not figures.
                        let spec = sc.request(targets::MODEL, &target.key);
                        let ran = sc
                            .plan(&o.timing, None)
                            .and_then(|plan| bench.attempt(sc, t, &plan, &spec, 0));
                        profile::stop(child);
                        let ran = ran.and_then(|p| {
                            let c = &p.summary.counts;
                            if c.failed * 100 > c.completed.max(1) {
                                Err(format!(
                                    "{} of {} requests failed: {:?}",
                                    c.failed, c.completed, p.summary.errors
                                ))
                            } else {
                                Ok(p)
                            }
                        });
                        if let Err(e) = ran {
                            notes.push(format!(
                                "profile run {} / {} dropped: {e}",
                                sc.id, target.name
                            ));
                            continue;
                        }
                        let txt = o.out.join(format!("profile-{}-{}.txt", target.name, sc.id));
                        match profile::read(&perf, &data, &target.name, &sc.id, &txt) {
                            Ok(p) => {
                                println!(
                                    "  {:<12} {:<20} top: {}",
                                    sc.id,
                                    target.name,
                                    p.symbols
                                        .iter()
                                        .take(3)
                                        .map(|e| format!("{:.1}% {}", e.percent, e.symbol))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                );
                                profiles.push(p);
                            }
                            Err(e) => {
                                notes.push(format!("profile of {} / {}: {e}", target.name, sc.id))
                            }
                        }
                    }
                }
            }
        }
    }

    let results = Results {
        machine,
        settings: Settings {
            warmup_s: o.timing.warmup.as_secs_f64(),
            duration_s: o.timing.duration.as_secs_f64(),
            idle_hold_s: o.timing.idle_hold.as_secs_f64(),
            repeat: o.repeat.max(1),
            client_cpus: o.client_cpus.clone(),
            proxy_cpus: o.proxy_cpus.clone(),
            sluice_workers: o.sluice_workers,
            noise_limit_pct: o.noise_limit_pct,
            keep_awake: o.keep_awake,
            command,
        },
        targets: bench
            .targets
            .iter()
            .map(|t| TargetInfo {
                name: t.name.clone(),
                label: t.label.clone(),
                url: t.url.clone(),
                measured: t.measurable(),
            })
            .collect(),
        notes,
        scenarios: chosen
            .iter()
            .map(|s| ScenarioInfo {
                id: s.id.clone(),
                title: s.title.clone(),
            })
            .collect(),
        phases,
        profiles,
        elapsed_s: round2(started.elapsed().as_secs_f64()),
    };
    for t in &mut bench.targets {
        t.stop();
    }
    bench.mock.stop();
    for s in &mut bench.spinners {
        s.stop();
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| format!("results.json: {e}"))?;
    let json_path = o.out.join("results.json");
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let report_path = report::write(&results, &o.out)?;
    println!("\n{}", report::headline(&results));
    println!("report: {}", report_path.display());
    println!("elapsed: {:.0} s", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&work);
    Ok(report_path)
}
