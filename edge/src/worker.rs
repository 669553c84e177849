//! One worker core: its runtime, listeners and per-core state.
//!
//! Each worker thread runs its own monoio runtime (io_uring, epoll as the
//! fallback) and binds its own SO_REUSEPORT socket on every listener, so
//! the kernel spreads connections over cores and no lock sits between them.
//! [`Core`] holds what a core owns: the policy chain, the upstream pools,
//! metrics, the audit buffer. `Core::finish` is where every request ends.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};
use monoio_rustls::TlsAcceptor;
use sluice_config::{Config, FallbackOn};

use crate::audit::AuditLog;
use crate::conn;
use crate::error::Error;
use crate::filter::{Attempt, Chain, RequestCtx};
use crate::http::RequestHead;
use crate::io::{DownStream, Peers, Stream};
use crate::kernel::Kernel;
use crate::metrics::CoreMetrics;
use crate::quota::Mode;
use crate::server::Shared;
use crate::upstream::Upstream;
use std::os::fd::AsRawFd;

/// Everything one core owns.
pub struct Core {
    pub id: usize,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub chain: Chain,
    pub upstreams: Vec<Upstream>,
    pub metrics: Arc<CoreMetrics>,
    /// The audit buffer; `None` with `features.audit = false`.
    pub audit: Option<AuditLog>,
    /// Requests between head received and audit record written.
    pub in_flight: Cell<usize>,
    /// Watches on this core's client sockets for clients that leave.
    pub peers: Peers,
    seq: Cell<u64>,
}

impl Core {
    pub fn new(id: usize, shared: Arc<Shared>) -> Result<Self, String> {
        let config = shared.config.clone();
        let mut upstreams = Vec::with_capacity(config.providers.len());
        for (i, tls) in shared.upstream_tls.iter().enumerate() {
            upstreams
                .push(Upstream::new(config.clone(), i, tls.clone()).map_err(|e| e.to_string())?);
        }
        let kernel = if shared.kernel_on {
            match Kernel::open(&config) {
                Ok(k) => Some(Rc::new(k)),
                Err(e) => {
                    crate::log::warn(&format!("worker {id}: kernel maps not opened ({e}); userspace rejection only on this core"));
                    None
                }
            }
        } else {
            None
        };
        let audit = match config.features.audit {
            true => Some(AuditLog::open(&config.audit.path).map_err(|e| {
                format!(
                    "audit.path: cannot open {}: {e}",
                    config.audit.path.display()
                )
            })?),
            false => None,
        };
        Ok(Core {
            id,
            chain: Chain::new(&config, shared.engine.clone(), kernel),
            metrics: shared.metrics[id].clone(),
            config,
            shared,
            upstreams,
            audit,
            in_flight: Cell::new(0),
            peers: Peers::default(),
            seq: Cell::new(0),
        })
    }

    pub fn draining(&self) -> bool {
        self.shared.is_shutting_down()
    }

    /// A fresh context; the client's `x-request-id` is kept when sane.
    pub fn new_ctx(&self, head: Option<&RequestHead>, peer: SocketAddr) -> RequestCtx {
        let given = head
            .and_then(|h| h.header("x-request-id"))
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()))
            .and_then(|v| std::str::from_utf8(v).ok());
        let id = match given {
            Some(id) => id.to_string(),
            None => {
                let n = self.seq.get();
                self.seq.set(n + 1);
                format!("{:08x}{:02x}{:014x}", self.shared.nonce, self.id as u8, n)
            }
        };
        RequestCtx::new(id, peer, Instant::now())
    }

    /// The end of every request: chain `on_done`, metrics, audit record.
    pub fn finish(&self, ctx: &mut RequestCtx) {
        self.settle(ctx);
        self.metrics.record(ctx);
        if let Some(audit) = &self.audit {
            audit.record(&self.config, ctx);
        }
    }

    /// Run the chain's `on_done` (usage, cost, quota settlement) once. The
    /// relay calls it just before the last byte goes to the client, so a
    /// client that sends its next request the moment this one ends finds
    /// its quota already settled; `finish` calls it for every other path.
    pub fn settle(&self, ctx: &mut RequestCtx) {
        if !ctx.settled {
            ctx.settled = true;
            self.chain.on_done(ctx);
        }
    }

    /// What makes the routed model fall back to its next target.
    pub fn fallback_on(&self, ctx: &RequestCtx) -> FallbackOn {
        ctx.model
            .and_then(|m| self.config.models.get(m))
            .map(|m| m.fallback_on.clone())
            .unwrap_or_default()
    }

    pub fn provider_name(&self, provider: usize) -> &str {
        self.config
            .providers
            .get(provider)
            .map_or("", |p| p.name.as_str())
    }

    /// Exponential backoff with jitter before attempt `n` (n ≥ 2) on the same provider.
    pub fn backoff(&self, attempt: usize) -> Duration {
        let retry = &self.config.retry;
        let exp = retry
            .backoff_base
            .saturating_mul(1u32 << (attempt.saturating_sub(2)).min(16));
        let capped = exp.min(retry.backoff_max);
        // Jitter in [0.5, 1.5) from the request counter: no shared RNG needed.
        let n = self.seq.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let jitter = 0.5 + (n >> 11) as f64 / (1u64 << 53) as f64;
        capped.mul_f64(jitter)
    }

    /// Note one upstream attempt for the audit record.
    pub fn record_attempt(
        &self,
        ctx: &mut RequestCtx,
        provider: usize,
        key: Option<usize>,
        status: Option<u16>,
        error: Option<&Error>,
        started: Instant,
    ) {
        let p = self.config.providers.get(provider);
        ctx.attempts.push(Attempt {
            provider: p.map_or(String::new(), |p| p.name.clone()),
            model: ctx.upstream_model.clone(),
            key: key
                .and_then(|k| p.and_then(|p| p.keys.get(k)))
                .map(|k| k.id.clone()),
            status,
            error: error.map(|e| e.kind.as_str()),
            ms: started.elapsed().as_micros() as f64 / 1000.0,
        });
    }

    /// `GET /v1/models`: the models this consumer may use.
    pub fn models_list(&self, consumer: Option<usize>) -> Vec<u8> {
        let allowed = consumer
            .and_then(|c| self.config.consumers.get(c))
            .and_then(|c| c.allowed_models.as_ref());
        let data: Vec<serde_json::Value> = self
            .config
            .models
            .iter()
            .filter(|m| allowed.is_none_or(|a| a.contains(&m.name)))
            .map(|m| {
                serde_json::json!({
                    "id": m.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": self.config.providers.get(m.provider).map_or("", |p| p.name.as_str()),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap_or_default()
    }
}

/// Bind this core's socket for one listener (SO_REUSEPORT: one per core).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    TcpListener::bind_with_config(addr, &opts)
}

/// Accept connections until shutdown, serving each on this core.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    // The peer registry's epoll fd is opened before the first connection,
    // not when descriptors may already be short.
    core.peers.start();
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = core.shared.wait_shutdown() => None,
        };
        let Some(accepted) = accepted else {
            return;
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly.
                crate::log::warn(&format!("accept failed on worker {}: {e}", core.id));
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let fd = tcp.as_raw_fd();
        let core = core.clone();
        let tls = tls.clone();
        monoio::spawn(async move {
            let metrics = core.metrics.clone();
            let _open = metrics.connection_guard();
            // The watch is made once the connection is ours to serve and
            // handed to `serve`, which drops it before the socket: a TLS
            // handshake that fails closes the socket, so it gets none.
            match tls {
                None => {
                    let watch = core.peers.watch(fd);
                    conn::serve(core, DownStream::Plain(tcp), peer, watch).await;
                }
                Some(acceptor) => {
                    let handshake = monoio::time::timeout(
                        core.config.limits.header_timeout,
                        acceptor.accept(tcp),
                    )
                    .await;
                    if let Ok(Ok(stream)) = handshake {
                        let watch = core.peers.watch(fd);
                        conn::serve(core, Stream::Tls(Box::new(stream)), peer, watch).await;
                    }
                }
            }
        });
    }
}

/// After shutdown: wait for in-flight requests, at most `drain_timeout`.
pub async fn drain(core: &Core) {
    let deadline = Instant::now() + core.config.workers.drain_timeout;
    while core.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Cluster mode, core 0: hand lapsed leases back to Redis; while Redis is
/// unreachable, ping it every second and switch back when it answers.
pub async fn cluster_upkeep(core: Rc<Core>) {
    let Some(cluster) = core.chain.cluster() else {
        return;
    };
    let engine = &core.shared.engine;
    let ttl = core
        .config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(2), |c| c.lease_ttl);
    let period = (ttl / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        monoio::time::sleep(period).await;
        match engine.mode() {
            Mode::LocalOnly | Mode::Closed => {
                if cluster.ping().await && engine.set_redis_up(true) {
                    crate::log::info("cluster: Redis answers again; limits are shared again");
                }
            }
            _ => {
                if let Err(e) = cluster.give_back(false).await {
                    if engine.set_redis_up(false) {
                        crate::log::error(&format!(
                            "cluster: {e}; limits are now {}",
                            engine.mode().as_str()
                        ));
                    }
                }
            }
        }
    }
}

/// Core 0: active health checks for providers that configure one; the
/// result feeds the same circuit breakers as real traffic.
pub async fn health_checks(core: Rc<Core>) {
    let checked: Vec<usize> = core
        .config
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.health.check.is_some())
        .map(|(i, _)| i)
        .collect();
    if checked.is_empty() {
        return;
    }
    let interval = checked
        .iter()
        .filter_map(|i| {
            core.config.providers[*i]
                .health
                .check
                .as_ref()
                .map(|c| c.interval)
        })
        .min()
        .unwrap_or(Duration::from_secs(5));
    loop {
        monoio::time::sleep(interval).await;
        for &p in &checked {
            let provider = &core.config.providers[p];
            let Some(check) = &provider.health.check else {
                continue;
            };
            let endpoints = &core.shared.endpoints[p];
            for (at, health) in endpoints.endpoints.iter().enumerate() {
                let started = Instant::now();
                match core.upstreams[p].check(at, &check.path).await {
                    Some(true) => health.success(started.elapsed().as_micros() as u64),
                    Some(false) => health.check_failed(&endpoints.health),
                    // sluice was short of descriptors or memory: no verdict.
                    None => {}
                }
            }
        }
    }
}

/// Flush the audit buffer on the configured interval.
pub async fn audit_flusher(core: Rc<Core>) {
    let Some(audit) = &core.audit else {
        return;
    };
    loop {
        monoio::time::sleep(core.config.audit.flush_interval).await;
        audit.flush();
    }
}

impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}
