//! Process start-up and shutdown.
//!
//! [`run`] builds what every core shares (config snapshot, TLS configs,
//! per-core metrics), starts one worker thread per configured core (pinned
//! to a CPU when asked), the admin thread, and a signal thread. SIGTERM or
//! SIGINT starts a drain: listeners close, in-flight requests finish (up to
//! `workers.drain_timeout`), then each core flushes its audit buffer and
//! the process exits. Listener port 0 is resolved once by worker 0 and the
//! other workers bind the same port, so tests can ask for a free port and
//! read it from the `listening on` line on stdout.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use monoio::{FusionDriver, RuntimeBuilder};
use monoio_rustls::TlsAcceptor;
use sluice_config::Config;

use crate::health::Endpoints;
use crate::metrics::CoreMetrics;
use crate::pool::{Capacity, KeyPool, RetryBudget};
use crate::quota::store::Store;
use crate::quota::Engine;
use crate::worker::{self, Core};
use crate::{admin, kernel, log, tls, tokens};

/// State shared by every core: read-only after start, or atomics.
pub struct Shared {
    pub config: Arc<Config>,
    /// Limits, balances and budgets, shared lock-free by every core.
    pub engine: Arc<Engine>,
    pub metrics: Vec<Arc<CoreMetrics>>,
    /// Per provider: the TLS client config when its base URL is https.
    pub upstream_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// Per listener: the TLS server config when it terminates TLS.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Random per process start, prefixes generated request ids.
    pub nonce: u32,
    /// Per provider: its API keys' live state.
    pub pools: Vec<KeyPool>,
    /// Retries as a share of traffic, node-wide.
    pub retry_budget: RetryBudget,
    /// Per provider: requests in flight against `max_concurrency`.
    pub capacity: Vec<Capacity>,
    /// Per provider: its endpoints' health and circuits.
    pub endpoints: Vec<Endpoints>,
    /// Kernel early rejection is on (maps open, in step with config).
    pub kernel_on: bool,
    /// What /readyz says about it.
    pub kernel_status: String,
    /// The admin thread's handle on the maps, for counters in /metrics.
    pub kernel_maps: Mutex<Option<loader::Maps>>,
    /// Durable quota state (standalone node), when `quota.state_path` is set.
    pub store: Option<Store>,
    /// The audit file, for admin changes (written from the admin thread).
    admin_audit: Mutex<Option<std::fs::File>>,
    shutdown: AtomicBool,
    workers_ready: AtomicUsize,
}

impl Shared {
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub fn start_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// Resolves once shutdown has started (polled: cheap, and no cross-core
    /// wake-up machinery on the hot path).
    pub async fn wait_shutdown(&self) {
        while !self.is_shutting_down() {
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin change: its own audit record, and the quota state saved now.
    pub fn record_admin_change(&self, change: &serde_json::Value, peer: SocketAddr) {
        let mut record = serde_json::json!({
            "kind": "admin",
            "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "client": peer.ip().to_string(),
        });
        if let (Some(r), Some(c)) = (record.as_object_mut(), change.as_object()) {
            r.extend(c.clone());
        }
        let mut line = record.to_string();
        line.push('\n');
        let mut file = self.admin_audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = file.as_mut() {
            use std::io::Write;
            if let Err(e) = f.write_all(line.as_bytes()) {
                log::error(&format!("audit log write failed for an admin change: {e}"));
            }
        }
        self.save_quota();
    }

    /// Write the quota state to the store now (no-op without a store).
    pub fn save_quota(&self) {
        if let Some(store) = &self.store {
            if let Err(e) = store.save(&self.engine) {
                log::error(&e.to_string());
            }
        }
    }

    pub fn readiness(&self) -> (bool, String) {
        let ready = self.workers_ready.load(Ordering::Relaxed);
        let want = self.config.workers.count.get();
        let draining = self.is_shutting_down();
        let ok = ready == want && !draining;
        let body = serde_json::json!({
            "status": if ok { "ready" } else if draining { "draining" } else { "starting" },
            "workers_ready": ready,
            "workers": want,
            "quota": self.engine.mode().as_str(),
            "kernel": self.kernel_status,
        });
        (ok, body.to_string())
    }
}

/// io_uring with epoll as the fallback, timers on (DESIGN.md §5).
type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

fn runtime() -> anyhow::Result<Runtime> {
    RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .build()
        .context("start the monoio runtime")
}

fn pin_to_cpu(core: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it for an
    // index below CPU_SETSIZE, and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % cpus, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::warn(&format!(
                "could not pin worker {core} to CPU {}",
                core % cpus
            ));
        }
    }
}

/// Run one worker until shutdown; `bound` reports its listeners' addresses.
fn worker_main(
    id: usize,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    bound: mpsc::Sender<Result<Vec<SocketAddr>, String>>,
) {
    if shared.config.workers.pin_cpus {
        pin_to_cpu(id);
    }
    let mut rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(format!("worker {id}: {e:#}")));
            return;
        }
    };
    let core = match Core::new(id, shared.clone()) {
        Ok(core) => Rc::new(core),
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    rt.block_on({
        let core = core.clone();
        async move {
            let mut listeners = Vec::new();
            for (i, addr) in addrs.iter().enumerate() {
                match worker::bind(*addr) {
                    Ok(l) => listeners.push((i, l)),
                    Err(e) => {
                        let _ = bound.send(Err(format!(
                            "listeners[{i}].address: cannot listen on {addr}: {e}"
                        )));
                        return;
                    }
                }
            }
            let actual = listeners
                .iter()
                .map(|(_, l)| l.local_addr())
                .collect::<Result<Vec<_>, _>>();
            // Ready before the addresses are announced: whoever reads
            // `listening on` may ask /readyz at once.
            shared.workers_ready.fetch_add(1, Ordering::Relaxed);
            let _ = bound.send(actual.map_err(|e| e.to_string()));
            drop(bound);
            let mut accepting = Vec::new();
            for (i, listener) in listeners {
                let acceptor = shared.listener_tls[i].clone().map(TlsAcceptor::from);
                accepting.push(monoio::spawn(worker::accept_loop(
                    core.clone(),
                    listener,
                    acceptor,
                )));
            }
            monoio::spawn(worker::audit_flusher(core.clone()));
            if id == 0 {
                monoio::spawn(worker::cluster_upkeep(core.clone()));
                monoio::spawn(worker::health_checks(core.clone()));
            }
            for task in accepting {
                task.await;
            }
            worker::drain(&core).await;
            if let (0, Some(cluster)) = (id, core.chain.cluster()) {
                // What this node still holds goes back to the cluster.
                if let Err(e) = cluster.give_back(true).await {
                    log::warn(&format!("cluster: leases not handed back at shutdown: {e}"));
                }
            }
        }
    });
    drop(rt);
    if let Some(audit) = &core.audit {
        audit.flush();
    }
}

/// Raise the open-file soft limit to the hard limit and log the result.
/// Each client connection holds a descriptor and each proxied request a
/// second one; the usual soft default (1024) would cap sluice far below
/// what the host allows.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit that lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        log::warn(&format!("cannot read the open-file limit: {e}"));
        return;
    }
    let mut want = limit.rlim_max;
    if want == libc::RLIM_INFINITY {
        // The kernel refuses more descriptors than fs.nr_open per process.
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if limit.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            let e = std::io::Error::last_os_error();
            log::warn(&format!(
                "cannot raise the open-file limit from {} to {want}: {e}",
                limit.rlim_cur
            ));
        }
    }
    log::info(&format!(
        "open-file limit: {} descriptors (hard limit {})",
        limit.rlim_cur,
        match limit.rlim_max {
            libc::RLIM_INFINITY => "unlimited".to_string(),
            max => max.to_string(),
        }
    ));
}

/// Start sluice with `config`; returns when it has shut down.
pub fn run(config: Config) -> anyhow::Result<()> {
    for w in &config.warnings {
        log::warn(w);
    }
    raise_open_file_limit();
    let config = Arc::new(config);
    let workers = config.workers.count.get();
    if let Some(dir) = config
        .audit
        .path
        .parent()
        .filter(|d| config.features.audit && !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("audit.path: cannot create {}", dir.display()))?;
    }
    let mut listener_tls = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        listener_tls.push(match &l.tls {
            Some(t) => Some(
                tls::server_config(&t.cert_file, &t.key_file)
                    .with_context(|| format!("listeners[{i}].tls"))?,
            ),
            None => None,
        });
    }
    let mut upstream_tls = Vec::new();
    for (i, p) in config.providers.iter().enumerate() {
        upstream_tls.push(if p.endpoints.iter().any(|e| e.tls) {
            Some(
                tls::client_config(p.ca_file.as_deref())
                    .with_context(|| format!("providers[{i}].ca_file"))?,
            )
        } else {
            None
        });
    }
    // Build the configured models' tokenizers before serving, in parallel:
    // building one on first use would stall a core for ~130 ms.
    // Without accounting nothing is ever counted: no tables at all.
    let mut encodings: Vec<_> = config.models.iter().map(|m| m.encoding).collect();
    if !config.features.accounting {
        encodings.clear();
    }
    encodings.sort_by_key(|e| e.as_str());
    encodings.dedup();
    std::thread::scope(|s| {
        for e in encodings {
            s.spawn(move || tokens::bpe(e).is_some());
        }
    });
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32))
        ^ std::process::id().rotate_left(16);
    let (kernel_on, kernel_status) = if config.ebpf.enabled {
        match kernel::start(&config) {
            Ok(status) => {
                log::info(&format!("kernel early rejection on: {status}"));
                (true, status)
            }
            Err(why) => {
                let status = format!("userspace rejection only: {why}");
                log::warn(&format!(
                    "kernel early rejection off ({why}); over-quota tenants get a userspace 429"
                ));
                (false, status)
            }
        }
    } else {
        (
            false,
            "userspace rejection only: ebpf.enabled = false".to_string(),
        )
    };
    let kernel_maps = if kernel_on {
        loader::Maps::open(&config.ebpf.pin_dir).ok()
    } else {
        None
    };
    let engine = Arc::new(Engine::new(config.clone()));
    let store = match &config.quota.state_path {
        Some(path) => {
            let store = Store::open(path).context("quota.state_path")?;
            store
                .load(&engine)
                .context("quota.state_path: loading the saved state")?;
            Some(store)
        }
        None => None,
    };
    let admin_audit = if config.features.audit {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.audit.path)
                .with_context(|| {
                    format!("audit.path: cannot open {}", config.audit.path.display())
                })?,
        )
    } else {
        None
    };
    let shared = Arc::new(Shared {
        metrics: (0..workers)
            .map(|_| Arc::new(CoreMetrics::default()))
            .collect(),
        config: config.clone(),
        engine,
        store,
        kernel_on,
        kernel_status,
        kernel_maps: Mutex::new(kernel_maps),
        pools: config.providers.iter().map(KeyPool::new).collect(),
        retry_budget: RetryBudget::new(config.retry.budget_ratio),
        capacity: config.providers.iter().map(Capacity::new).collect(),
        endpoints: config.providers.iter().map(Endpoints::new).collect(),
        admin_audit: Mutex::new(admin_audit),
        upstream_tls,
        listener_tls,
        nonce,
        shutdown: AtomicBool::new(false),
        workers_ready: AtomicUsize::new(0),
    });

    // Admin first, so health checks answer while workers start.
    let admin_listener = std::net::TcpListener::bind(config.admin.address)
        .with_context(|| format!("admin.address: cannot listen on {}", config.admin.address))?;
    let admin_addr = admin_listener.local_addr()?;
    admin_listener.set_nonblocking(true)?;
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("sluice-admin".into())
            .spawn(move || {
                let Ok(mut rt) = runtime() else {
                    log::error("admin: could not start its runtime");
                    return;
                };
                rt.block_on(async move {
                    match monoio::net::TcpListener::from_std(admin_listener) {
                        Ok(l) => admin::serve(shared, l).await,
                        Err(e) => log::error(&format!("admin listener: {e}")),
                    }
                });
            })?;
    }

    // Every core binds with SO_REUSEPORT, which would also let this process
    // share a port with another sluice still running there and split its
    // traffic. A plain bind first says "in use" instead.
    for (i, l) in config.listeners.iter().enumerate() {
        if l.address.port() != 0 {
            std::net::TcpListener::bind(l.address).with_context(|| {
                format!("listeners[{i}].address: cannot listen on {}", l.address)
            })?;
        }
    }

    // Worker 0 resolves port 0; the others bind what it got.
    let mut addrs: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let mut handles = Vec::new();
    for id in 0..workers {
        let (tx, rx) = mpsc::channel();
        let for_worker = shared.clone();
        let want = addrs.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("sluice-w{id}"))
                .spawn(move || worker_main(id, for_worker, want, tx))?,
        );
        match rx.recv() {
            Ok(Ok(got)) => addrs = got,
            Ok(Err(e)) => {
                shared.start_shutdown();
                return Err(anyhow!(e));
            }
            Err(_) => {
                shared.start_shutdown();
                return Err(anyhow!("worker {id} exited during start-up"));
            }
        }
    }
    if shared.kernel_on {
        if let Err(e) = kernel::protect_ports(&config, &addrs) {
            log::warn(&format!(
                "kernel early rejection: protected ports not updated: {e}"
            ));
        }
    }
    for (addr, l) in addrs.iter().zip(&config.listeners) {
        println!(
            "listening on {}://{addr}",
            if l.tls.is_some() { "https" } else { "http" }
        );
    }
    println!("admin on http://{admin_addr}");
    log::info(&format!(
        "sluice {} ready: {workers} workers",
        env!("CARGO_PKG_VERSION")
    ));
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("install signal handlers")?;
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                log::info("shutdown signal: draining");
                shared.start_shutdown();
            }
        });
    }
    // Quota state to disk every flush interval, and once more at the end.
    if shared.store.is_some() {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("sluice-quota".into())
            .spawn(move || {
                while !shared.is_shutting_down() {
                    std::thread::sleep(shared.config.quota.flush_interval);
                    shared.save_quota();
                }
            })?;
    }
    for h in handles {
        let _ = h.join();
    }
    shared.save_quota();
    log::info("drained; audit flushed; bye");
    Ok(())
}
