//! `sluice-bench`: the load generator and the comparison, from the command
//! line.
//!
//! `run` drives one OpenAI-compatible endpoint (closed loop, open loop or
//! idle streams) and prints a Markdown summary, optionally writing the JSON
//! result and a percentile plot. `compare` runs the scenario set against
//! direct, nginx, sluice and extra targets and writes a report directory.
//! Flags map one to one onto `sluice_bench::load::Plan` and
//! `sluice_bench::compare::Options`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use sluice_bench::compare::{self, scenarios::SetOptions, scenarios::Timing, targets::Extra};
use sluice_bench::load::{self, Load, Plan, Progress, RequestSpec, Target};
use sluice_bench::report;

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load generator and benchmark harness for OpenAI-compatible gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load one endpoint and report latency, throughput and stream checks.
    Run(RunArgs),
    /// Run the scenario set against direct, nginx, sluice and extra targets.
    Compare(CompareArgs),
    /// Redraw a comparison's report.md and plots from its results.json.
    Report {
        /// The comparison's output directory.
        dir: PathBuf,
    },
    /// Keep this CPU from going idle at the lowest priority (started by
    /// `compare` on the CPUs it measures).
    #[command(hide = true)]
    Spin,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 10s, 2m)"))
}

#[derive(Args)]
struct RunArgs {
    /// http[s]://host:port[/path]; the path defaults to /v1/chat/completions.
    url: String,
    /// Constant request rate (open loop; latency counts from each request's
    /// scheduled time). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: requests in flight (one per connection).
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Open loop: most keep-alive connections to open.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Open this many streams, hold them, close them (memory per stream);
    /// add `-H 'x-mock-stall-after: 0'` against the mock.
    #[arg(long)]
    idle_streams: Option<usize>,
    /// How long idle streams are held.
    #[arg(long, value_parser = duration, default_value = "5s")]
    hold: Duration,
    /// Measured time.
    #[arg(long, short = 'd', value_parser = duration, default_value = "10s")]
    duration: Duration,
    /// Load before measuring starts (default 1s; none with --requests).
    #[arg(long, value_parser = duration)]
    warmup: Option<Duration>,
    /// Send exactly this many measured requests, then stop.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Per-request timeout.
    #[arg(long, value_parser = duration, default_value = "30s")]
    timeout: Duration,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin the generator to these CPUs (e.g. 0 or 0-1).
    #[arg(long)]
    cpus: Option<String>,
    /// Stream the response (SSE) and check every stream.
    #[arg(long)]
    stream: bool,
    /// Do not ask for (nor require) a usage chunk on streams.
    #[arg(long)]
    no_usage: bool,
    /// Model in the request body.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Bearer key (Authorization header).
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request body from a file (replaces the generated chat body).
    #[arg(long, conflicts_with = "body_bytes")]
    body: Option<PathBuf>,
    /// Generated chat body padded to exactly this many bytes.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// Content chunks asked of the mock (x-mock-chunks).
    #[arg(long)]
    chunks: Option<usize>,
    /// CA file (PEM) for https targets.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Do not verify the server certificate.
    #[arg(long)]
    insecure: bool,
    /// Write the JSON result here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown summary here (it is printed as well).
    #[arg(long)]
    md: Option<PathBuf>,
    /// Draw the latency percentile plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    /// Directory holding the release `sluice` and `sluice-mock` binaries.
    #[arg(long, env = "SLUICE_BIN_DIR", default_value = "target/release")]
    bin_dir: PathBuf,
    /// Output directory for report.md, results.json and the plots.
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
    /// Measured time per phase.
    #[arg(long, value_parser = duration, default_value = "5s")]
    duration: Duration,
    /// Warm-up per phase.
    #[arg(long, value_parser = duration, default_value = "1s")]
    warmup: Duration,
    /// How long the idle streams are held.
    #[arg(long, value_parser = duration, default_value = "3s")]
    idle_hold: Duration,
    /// Run the whole set this many times; figures are medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Only these scenarios (comma-separated ids: c1,max,rate-50,stream-64,idle,…).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Built-in targets, in column order: direct, nginx, and the sluice
    /// variants sluice-passthrough (every stage off), sluice-nolimits (auth +
    /// accounting + audit), sluice (+ quota), sluice-redis (limits through a
    /// redis-server started here), sluice-translate (OpenAI in, Anthropic
    /// provider). With two or more variants the report prices each stage.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nginx,sluice,sluice-passthrough"
    )]
    targets: Vec<String>,
    /// An extra target: NAME=URL[,key=KEY][,pid=PID] (repeatable). Point it
    /// at the mock (see --mock-port); with pid= its CPU and RSS are read.
    #[arg(long = "target")]
    extra: Vec<String>,
    /// CPUs of the load generator and the mock.
    #[arg(long, default_value = "0")]
    client_cpus: String,
    /// CPUs of the proxy under test.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// sluice worker threads (one per proxy CPU is the fair setting).
    #[arg(long, default_value_t = 1)]
    sluice_workers: usize,
    /// Open-loop rates, as % of direct's maximum throughput.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,80")]
    rates: Vec<u32>,
    /// Closed-loop connections of the maximum-throughput phase.
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Concurrent streams of the streaming phases.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    streams: Vec<usize>,
    /// Content chunks per stream.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Concurrent streams of the paced phase (`stream-paced`: chunks 1 ms
    /// apart, each event on its own); 0 leaves it out.
    #[arg(long, default_value_t = 64)]
    paced_streams: usize,
    /// Idle streams held open.
    #[arg(long, default_value_t = 10_000)]
    idle_streams: usize,
    /// Request body sizes (bytes) of the body phases.
    #[arg(long, value_delimiter = ',', default_value = "4096,65536")]
    bodies: Vec<usize>,
    /// Extra attempts of a phase during which other processes were busy.
    #[arg(long, default_value_t = 1)]
    retries: usize,
    /// Other processes above this % of one core make a phase noisy.
    #[arg(long, default_value_t = 3.0)]
    noise_limit: f64,
    /// Skip the perf profiles.
    #[arg(long)]
    no_profile: bool,
    /// nginx binary.
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// Fixed port for the mock (for external targets set up beforehand).
    #[arg(long)]
    mock_port: Option<u16>,
    /// Retries of noisy phases stop when they would make the run longer.
    #[arg(long, value_parser = duration, default_value = "9m")]
    budget: Duration,
    /// Let the measured CPUs go idle between requests. By default a
    /// lowest-priority spinner keeps each one busy: on a VM an idle vCPU
    /// takes milliseconds to wake, which would swamp every proxy's tail.
    #[arg(long)]
    no_keep_awake: bool,
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let verify = load::verify_from(a.ca.as_deref(), a.insecure);
    let target = Target::parse(&a.url, &verify).map_err(anyhow::Error::msg)?;
    // Idle streams are streams: the body must ask for one.
    let stream = a.stream || a.idle_streams.is_some();
    let mut spec = RequestSpec::chat(&a.model, stream, a.body_bytes);
    if a.no_usage && stream {
        spec.body = String::from_utf8_lossy(&spec.body)
            .replace(",\"stream_options\":{\"include_usage\":true}", "")
            .into_bytes();
        spec.require_usage = false;
    }
    if let Some(path) = &a.body {
        spec.body = std::fs::read(path).with_context(|| format!("--body {}", path.display()))?;
        spec.require_usage = stream && !a.no_usage;
    }
    if let Some(key) = &a.key {
        spec = spec.with_key(key);
    }
    if let Some(n) = a.chunks {
        spec = spec.with_header(sluice_bench::mock::header::CHUNKS, &n.to_string());
    }
    for h in &a.headers {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?}: expected 'Name: value'");
        };
        spec = spec.with_header(name.trim(), value.trim());
    }
    let load = match (a.idle_streams, a.rate) {
        (Some(streams), _) => Load::Idle {
            streams,
            hold: a.hold,
            parallel: 256,
        },
        (None, Some(rate)) if rate > 0.0 => Load::Open {
            rate,
            max_connections: a.connections,
        },
        (None, Some(rate)) => bail!("--rate {rate}: must be > 0"),
        (None, None) => Load::Closed {
            concurrency: a.concurrency.max(1),
        },
    };
    if let Some(cpus) = &a.cpus {
        let cpus = compare::procs::parse_cpus(cpus).map_err(anyhow::Error::msg)?;
        compare::procs::pin_current_thread(&cpus).context("--cpus")?;
    }
    if let Load::Idle { streams, .. } = load {
        compare::procs::raise_nofile(streams as u64 * 2 + 1024);
    }
    let plan = Plan {
        load,
        warmup: match (load, a.warmup) {
            (Load::Idle { .. }, _) => Duration::ZERO,
            (_, Some(w)) => w,
            (_, None) if a.requests.is_some() => Duration::ZERO,
            (_, None) => Duration::from_secs(1),
        },
        duration: a.duration,
        requests: a.requests,
        timeout: a.timeout,
        drain_timeout: Duration::from_secs(10),
        threads: a.threads,
    };
    let progress = Progress::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            let total = (plan.warmup + plan.duration).as_millis() as u64;
            let bar = indicatif::ProgressBar::new(total.max(1));
            if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:40}] {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            let start = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                bar.set_position((start.elapsed().as_millis() as u64).min(total));
                bar.set_message(format!(
                    "{} done, {} failed, {} open",
                    progress.completed(),
                    progress.failed(),
                    progress.opened()
                ));
            }
            bar.finish_and_clear();
        });
        let out = load::run(&target, &spec, &plan, &progress);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })?;
    let md = report::run_markdown(&a.url, &outcome.summary);
    println!("{md}");
    if let Some(path) = &a.md {
        std::fs::write(path, &md).with_context(|| format!("--md {}", path.display()))?;
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "target": a.url,
            "summary": outcome.summary,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("--json {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        let s = &outcome.summary;
        let (dist, what) = match &s.ttft {
            Some(d) => (d, "time to first token"),
            None if s.mode == "idle" => {
                (s.ttfb.as_ref().unwrap_or(&s.latency), "time to first byte")
            }
            None => (&s.latency, "latency"),
        };
        report::plot::percentiles(
            path,
            &format!("{} — {what}", a.url),
            &[(a.url.clone(), dist)],
        )
        .map_err(anyhow::Error::msg)?;
    }
    if outcome.summary.counts.ok == 0 && outcome.summary.idle.as_ref().is_none_or(|i| i.opened == 0)
    {
        bail!("no request succeeded");
    }
    Ok(())
}

fn compare_cmd(a: CompareArgs) -> anyhow::Result<()> {
    let extra = a
        .extra
        .iter()
        .map(|s| s.parse::<Extra>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let client_cpus = compare::procs::parse_cpus(&a.client_cpus).map_err(anyhow::Error::msg)?;
    let proxy_cpus = compare::procs::parse_cpus(&a.proxy_cpus).map_err(anyhow::Error::msg)?;
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(c) = client_cpus
        .iter()
        .chain(&proxy_cpus)
        .find(|c| **c >= online)
    {
        bail!("CPU {c} does not exist here ({online} CPUs): set --client-cpus/--proxy-cpus");
    }
    if client_cpus.iter().any(|c| proxy_cpus.contains(c)) {
        eprintln!("warning: client and proxy share a CPU; figures will mix their costs");
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let repo = std::env::current_dir().unwrap_or_default();
    let options = compare::Options {
        // Absolute: the proxies run in the comparison's work directory.
        bin_dir: std::path::absolute(&a.bin_dir).unwrap_or(a.bin_dir),
        out: a.out,
        repo,
        timing: Timing {
            warmup: a.warmup,
            duration: a.duration,
            idle_hold: a.idle_hold,
            drain_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(15),
        },
        set: SetOptions {
            rates: a.rates,
            max_concurrency: a.max_concurrency,
            stream_concurrency: a.streams,
            stream_chunks: a.chunks,
            paced_streams: a.paced_streams,
            idle_streams: a.idle_streams,
            body_sizes: a.bodies,
        },
        only: a.scenarios,
        targets: a.targets,
        extra,
        client_cpus,
        proxy_cpus,
        sluice_workers: a.sluice_workers.max(1),
        repeat: a.repeat.max(1),
        retries: a.retries,
        noise_limit_pct: a.noise_limit,
        profile: !a.no_profile,
        nginx: a.nginx.unwrap_or_else(compare::targets::find_nginx),
        mock_port: a.mock_port,
        budget: a.budget,
        keep_awake: !a.no_keep_awake,
    };
    compare::run(options, command).map_err(anyhow::Error::msg)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(a) => run(a),
        Cmd::Compare(a) => compare_cmd(a),
        Cmd::Report { dir } => {
            let path = compare::report::rerender(&dir).map_err(anyhow::Error::msg)?;
            println!("{}", path.display());
            Ok(())
        }
        Cmd::Spin => compare::procs::spin(),
    }
}
