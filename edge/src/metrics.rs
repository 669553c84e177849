//! Metrics: per-core counters and histograms, merged on scrape.
//!
//! Each worker core owns one [`CoreMetrics`]. Gauges are atomics; the
//! labelled counters and the hdrhistograms sit behind a mutex that only the
//! owning core takes on the request path (once, when a request finishes),
//! so it is never contended except for the instant a scrape copies it. The
//! admin listener's `/metrics` merges every core's state and renders the
//! Prometheus text exposition format (version 0.0.4).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use sluice_config::Config;

use crate::error::ErrorKind;
use crate::filter::{RequestCtx, UsageSource};

/// Label index for "no model / no consumer known".
const NONE: u32 = u32::MAX;

/// Histogram buckets in seconds for latency and TTFT.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// One variant of a split model: what an operator compares a canary by.
#[derive(Clone)]
struct VariantStats {
    requests: u64,
    errors: u64,
    prompt: u64,
    completion: u64,
    cost_micros: u64,
    latency_us: Histogram<u64>,
    ttft_us: Histogram<u64>,
}

fn histogram_us() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits; bounds hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl VariantStats {
    fn new() -> Self {
        VariantStats {
            requests: 0,
            errors: 0,
            prompt: 0,
            completion: 0,
            cost_micros: 0,
            latency_us: histogram_us(),
            ttft_us: histogram_us(),
        }
    }
}

#[derive(Clone)]
struct Inner {
    /// (model, variant) → its stats.
    variants: HashMap<(u32, u32), VariantStats>,
    /// (model, consumer, status) → requests.
    requests: HashMap<(u32, u32, u16), u64>,
    /// (consumer, model) → [prompt, completion, cached tokens, cost micros].
    tokens: HashMap<(u32, u32), [u64; 4]>,
    /// Requests whose usage sluice estimated.
    estimated: u64,
    /// (provider, kind) → upstream errors.
    upstream_errors: HashMap<(u32, ErrorKind), u64>,
    latency_us: Histogram<u64>,
    latency_sum_us: u64,
    ttft_us: Histogram<u64>,
    ttft_sum_us: u64,
}

impl Inner {
    fn new() -> Self {
        // 1 µs .. 1 hour, 3 significant digits; the bounds are constants
        // that hdrhistogram accepts, so construction cannot fail.
        let hist = || {
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
        };
        Inner {
            variants: HashMap::new(),
            requests: HashMap::new(),
            tokens: HashMap::new(),
            estimated: 0,
            upstream_errors: HashMap::new(),
            latency_us: hist(),
            latency_sum_us: 0,
            ttft_us: hist(),
            ttft_sum_us: 0,
        }
    }

    fn merge(&mut self, other: &Inner) {
        for (k, v) in &other.requests {
            *self.requests.entry(*k).or_default() += v;
        }
        for (k, v) in &other.tokens {
            let e = self.tokens.entry(*k).or_default();
            for i in 0..4 {
                e[i] += v[i];
            }
        }
        self.estimated += other.estimated;
        for (k, v) in &other.variants {
            let e = self.variants.entry(*k).or_insert_with(VariantStats::new);
            e.requests += v.requests;
            e.errors += v.errors;
            e.prompt += v.prompt;
            e.completion += v.completion;
            e.cost_micros += v.cost_micros;
            let _ = e.latency_us.add(&v.latency_us);
            let _ = e.ttft_us.add(&v.ttft_us);
        }
        for (k, v) in &other.upstream_errors {
            *self.upstream_errors.entry(*k).or_default() += v;
        }
        let _ = self.latency_us.add(&other.latency_us);
        self.latency_sum_us += other.latency_sum_us;
        let _ = self.ttft_us.add(&other.ttft_us);
        self.ttft_sum_us += other.ttft_sum_us;
    }
}

/// One core's metrics.
pub struct CoreMetrics {
    pub open_connections: AtomicI64,
    pub open_streams: AtomicI64,
    pub accepted: AtomicU64,
    inner: Mutex<Inner>,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics {
            open_connections: AtomicI64::new(0),
            open_streams: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
            inner: Mutex::new(Inner::new()),
        }
    }
}

/// Decrements a gauge when dropped.
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn idx(i: Option<usize>) -> u32 {
    i.map_or(NONE, |i| i as u32)
}

impl CoreMetrics {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the counters are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connection_guard(&self) -> GaugeGuard<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(&self.open_connections)
    }

    pub fn stream_guard(&self) -> GaugeGuard<'_> {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(&self.open_streams)
    }

    pub fn upstream_error(&self, provider: usize, kind: ErrorKind) {
        *self
            .lock()
            .upstream_errors
            .entry((provider as u32, kind))
            .or_default() += 1;
    }

    /// Count a finished request.
    pub fn record(&self, ctx: &RequestCtx) {
        let latency = ctx.received.elapsed().as_micros() as u64;
        let mut m = self.lock();
        *m.requests
            .entry((idx(ctx.model), idx(ctx.consumer), ctx.status))
            .or_default() += 1;
        if ctx.usage.source != UsageSource::None {
            let t = m
                .tokens
                .entry((idx(ctx.consumer), idx(ctx.model)))
                .or_default();
            t[0] += ctx.usage.prompt;
            t[1] += ctx.usage.completion;
            t[2] += ctx.usage.cached;
            t[3] += ctx.cost_micros;
            if ctx.usage.source == UsageSource::Estimated {
                m.estimated += 1;
            }
        }
        if let (Some(model), Some(variant)) = (ctx.model, ctx.variant_index) {
            let v = m
                .variants
                .entry((model as u32, variant as u32))
                .or_insert_with(VariantStats::new);
            v.requests += 1;
            if ctx.status >= 400 || ctx.error.is_some() {
                v.errors += 1;
            }
            v.prompt += ctx.usage.prompt;
            v.completion += ctx.usage.completion;
            v.cost_micros += ctx.cost_micros;
            let _ = v.latency_us.record(latency.max(1));
            if let Some(ttft) = ctx.ttft {
                let _ = v.ttft_us.record((ttft.as_micros() as u64).max(1));
            }
        }
        let _ = m.latency_us.record(latency.max(1));
        m.latency_sum_us += latency;
        if let Some(ttft) = ctx.ttft {
            let us = ttft.as_micros() as u64;
            let _ = m.ttft_us.record(us.max(1));
            m.ttft_sum_us += us;
        }
    }
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Render every core's metrics, merged, in Prometheus text format.
pub fn render(config: &Config, cores: &[Arc<CoreMetrics>], mode: crate::quota::Mode) -> String {
    let mut total = Inner::new();
    let (mut conns, mut streams, mut accepted) = (0i64, 0i64, 0u64);
    for core in cores {
        let snapshot = core.lock().clone();
        total.merge(&snapshot);
        conns += core.open_connections.load(Ordering::Relaxed);
        streams += core.open_streams.load(Ordering::Relaxed);
        accepted += core.accepted.load(Ordering::Relaxed);
    }
    let model = |i: u32| -> String {
        config
            .models
            .get(i as usize)
            .map_or_else(|| "none".to_string(), |m| escape(&m.name))
    };
    let consumer = |i: u32| -> String {
        config
            .consumers
            .get(i as usize)
            .map_or_else(|| "anonymous".to_string(), |c| escape(&c.name))
    };
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# HELP sluice_requests_total Requests finished, by model, consumer and status sent to the client.");
    let _ = writeln!(out, "# TYPE sluice_requests_total counter");
    let mut rows: Vec<_> = total.requests.iter().collect();
    rows.sort();
    for ((m, c, s), v) in rows {
        let _ = writeln!(
            out,
            "sluice_requests_total{{model=\"{}\",consumer=\"{}\",status=\"{}\"}} {v}",
            model(*m),
            consumer(*c),
            s
        );
    }
    let _ = writeln!(out, "# HELP sluice_tokens_total Tokens used, by consumer, model and direction (cached is the part of input served from the provider's prompt cache).");
    let _ = writeln!(out, "# TYPE sluice_tokens_total counter");
    let mut rows: Vec<_> = total.tokens.iter().collect();
    rows.sort();
    for ((c, m), t) in rows {
        for (dir, v) in [("input", t[0]), ("output", t[1]), ("cached", t[2])] {
            let _ = writeln!(
                out,
                "sluice_tokens_total{{consumer=\"{}\",model=\"{}\",direction=\"{dir}\"}} {v}",
                consumer(*c),
                model(*m)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_cost_total Cost of the tokens used, in {}, by consumer and model.",
        config.quota.currency
    );
    let _ = writeln!(out, "# TYPE sluice_cost_total counter");
    let mut rows: Vec<_> = total.tokens.iter().collect();
    rows.sort();
    for ((c, m), t) in rows {
        let _ = writeln!(
            out,
            "sluice_cost_total{{consumer=\"{}\",model=\"{}\"}} {}",
            consumer(*c),
            model(*m),
            t[3] as f64 / 1e6
        );
    }
    let _ = writeln!(out, "# HELP sluice_usage_estimated_total Requests whose token usage sluice counted itself because the provider reported none.");
    let _ = writeln!(out, "# TYPE sluice_usage_estimated_total counter");
    let _ = writeln!(out, "sluice_usage_estimated_total {}", total.estimated);
    // Running out of descriptors or memory is this host's failure, not the
    // provider's: its own series, so upstream error rates stay the
    // provider's.
    let (local, upstream): (Vec<_>, Vec<_>) = total
        .upstream_errors
        .iter()
        .map(|((p, k), v)| (*p, *k, *v))
        .partition(|(_, k, _)| *k == ErrorKind::LocalResources);
    let provider = |p: u32| {
        escape(
            config
                .providers
                .get(p as usize)
                .map_or("unknown", |p| p.name.as_str()),
        )
    };
    let _ = writeln!(
        out,
        "# HELP sluice_upstream_errors_total Upstream failures by provider and kind."
    );
    let _ = writeln!(out, "# TYPE sluice_upstream_errors_total counter");
    let mut rows: Vec<_> = upstream
        .iter()
        .map(|(p, k, v)| (*p, k.as_str(), *v))
        .collect();
    rows.sort();
    for (p, k, v) in rows {
        let _ = writeln!(
            out,
            "sluice_upstream_errors_total{{provider=\"{}\",kind=\"{k}\"}} {v}",
            provider(p)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_local_resource_errors_total Requests sluice could not send upstream because this host ran out of descriptors, memory or ports (raise LimitNOFILE), by provider."
    );
    let _ = writeln!(out, "# TYPE sluice_local_resource_errors_total counter");
    let mut rows: Vec<_> = local.iter().map(|(p, _, v)| (*p, *v)).collect();
    rows.sort();
    for (p, v) in rows {
        let _ = writeln!(
            out,
            "sluice_local_resource_errors_total{{provider=\"{}\"}} {v}",
            provider(p)
        );
    }
    variants(&mut out, config, &total.variants);
    histogram(
        &mut out,
        "sluice_request_duration_seconds",
        "Time from request head received to response end.",
        &total.latency_us,
        total.latency_sum_us,
    );
    histogram(&mut out, "sluice_time_to_first_byte_seconds", "Time from request head received to the first response byte sent (first event for streams).", &total.ttft_us, total.ttft_sum_us);
    let _ = writeln!(out, "# HELP sluice_quota_mode How limits are enforced: 0 standalone, 1 cluster (Redis up), 2 local-only (Redis down, fail-open), 3 closed (Redis down, fail-closed).");
    let _ = writeln!(out, "# TYPE sluice_quota_mode gauge");
    let _ = writeln!(out, "sluice_quota_mode {}", mode as u8);
    let _ = writeln!(
        out,
        "# HELP sluice_open_connections Downstream connections open now."
    );
    let _ = writeln!(out, "# TYPE sluice_open_connections gauge");
    let _ = writeln!(out, "sluice_open_connections {conns}");
    let _ = writeln!(
        out,
        "# HELP sluice_open_streams Streamed responses in progress now."
    );
    let _ = writeln!(out, "# TYPE sluice_open_streams gauge");
    let _ = writeln!(out, "sluice_open_streams {streams}");
    let _ = writeln!(
        out,
        "# HELP sluice_connections_accepted_total Downstream connections accepted, by worker core."
    );
    let _ = writeln!(out, "# TYPE sluice_connections_accepted_total counter");
    for (i, core) in cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "sluice_connections_accepted_total{{worker=\"{i}\"}} {}",
            core.accepted.load(Ordering::Relaxed)
        );
    }
    let _ = accepted;
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram<u64>, sum_us: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for bound in BUCKETS {
        let us = (bound * 1e6) as u64;
        let n = if h.is_empty() {
            0
        } else {
            h.count_between(0, us)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

/// The XDP program's counters (summed over CPUs), in Prometheus text.
pub fn render_kernel(config: &Config, c: &loader::Counters) -> String {
    let mut out = String::with_capacity(1024);
    let _ = writeln!(out, "# HELP sluice_xdp_syn_total Connection attempts to protected ports seen by the XDP program, by verdict.");
    let _ = writeln!(out, "# TYPE sluice_xdp_syn_total counter");
    for (verdict, n) in [
        ("passed", c.passed),
        ("denied", c.denied),
        ("tenant_rejected", c.tenant_rejected),
        ("syn_limited", c.syn_limited),
        ("malformed", c.malformed),
    ] {
        let _ = writeln!(out, "sluice_xdp_syn_total{{verdict=\"{verdict}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP sluice_xdp_tenant_rejected_total Connection attempts rejected in the kernel, by tenant.");
    let _ = writeln!(out, "# TYPE sluice_xdp_tenant_rejected_total counter");
    for (tenant, n) in &c.per_tenant {
        let name = config
            .consumers
            .iter()
            .find(|cons| crate::kernel::tenant_id(&cons.name) == *tenant)
            .map_or_else(|| tenant.to_string(), |cons| escape(&cons.name));
        let _ = writeln!(
            out,
            "sluice_xdp_tenant_rejected_total{{consumer=\"{name}\"}} {n}"
        );
    }
    out
}

/// Per-variant metrics of split models: requests and errors, tokens, cost,
/// and latency / TTFT quantiles (Prometheus summaries).
fn variants(out: &mut String, config: &Config, stats: &HashMap<(u32, u32), VariantStats>) {
    if stats.is_empty() {
        return;
    }
    let mut rows: Vec<_> = stats.iter().collect();
    rows.sort_by_key(|(k, _)| **k);
    let label = |(m, v): (u32, u32)| -> String {
        let model = config.models.get(m as usize);
        let variant = model
            .and_then(|model| model.variants.get(v as usize))
            .map_or("", |v| v.name.as_str());
        format!(
            "model=\"{}\",variant=\"{}\"",
            escape(model.map_or("", |m| m.name.as_str())),
            escape(variant)
        )
    };
    let _ = writeln!(
        out,
        "# HELP sluice_variant_requests_total Requests per variant of a split model, by outcome."
    );
    let _ = writeln!(out, "# TYPE sluice_variant_requests_total counter");
    for (k, s) in &rows {
        let l = label(**k);
        let _ = writeln!(
            out,
            "sluice_variant_requests_total{{{l},outcome=\"success\"}} {}",
            s.requests - s.errors
        );
        let _ = writeln!(
            out,
            "sluice_variant_requests_total{{{l},outcome=\"error\"}} {}",
            s.errors
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_variant_tokens_total Tokens per variant of a split model."
    );
    let _ = writeln!(out, "# TYPE sluice_variant_tokens_total counter");
    for (k, s) in &rows {
        let l = label(**k);
        let _ = writeln!(
            out,
            "sluice_variant_tokens_total{{{l},direction=\"input\"}} {}",
            s.prompt
        );
        let _ = writeln!(
            out,
            "sluice_variant_tokens_total{{{l},direction=\"output\"}} {}",
            s.completion
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_variant_cost_total Cost per variant of a split model, in {}.",
        config.quota.currency
    );
    let _ = writeln!(out, "# TYPE sluice_variant_cost_total counter");
    for (k, s) in &rows {
        let _ = writeln!(
            out,
            "sluice_variant_cost_total{{{}}} {}",
            label(**k),
            s.cost_micros as f64 / 1e6
        );
    }
    for (name, help, pick) in [
        (
            "sluice_variant_latency_seconds",
            "Request latency per variant.",
            0,
        ),
        (
            "sluice_variant_ttft_seconds",
            "Time to first byte per variant.",
            1,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} summary");
        for (k, s) in &rows {
            let h = if pick == 0 { &s.latency_us } else { &s.ttft_us };
            let l = label(**k);
            for q in [0.5, 0.9, 0.99] {
                let v = if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / 1e6
                };
                let _ = writeln!(out, "{name}{{{l},quantile=\"{q}\"}} {v}");
            }
            let _ = writeln!(out, "{name}_count{{{l}}} {}", h.len());
        }
    }
}

/// Key pools and endpoint circuits, from the node-wide atomics.
pub fn render_upstreams(
    config: &Config,
    pools: &[crate::pool::KeyPool],
    endpoints: &[crate::health::Endpoints],
) -> String {
    let now = crate::pool::now_ns();
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "# HELP sluice_upstream_key_requests_total Attempts per provider API key (by key id, never the key).");
    let _ = writeln!(out, "# TYPE sluice_upstream_key_requests_total counter");
    let _ = writeln!(
        out,
        "# HELP sluice_upstream_key_errors_total Failed attempts per provider API key."
    );
    let _ = writeln!(out, "# TYPE sluice_upstream_key_errors_total counter");
    let _ = writeln!(out, "# HELP sluice_upstream_key_cooling Whether a key is resting after a 429/401/403 (1) or usable (0).");
    let _ = writeln!(out, "# TYPE sluice_upstream_key_cooling gauge");
    for (p, pool) in pools.iter().enumerate() {
        let Some(provider) = config.providers.get(p) else {
            continue;
        };
        for (k, state) in pool.keys.iter().enumerate() {
            let id = provider.keys.get(k).map_or("", |k| k.id.as_str());
            let l = format!(
                "provider=\"{}\",key=\"{}\"",
                escape(&provider.name),
                escape(id)
            );
            let _ = writeln!(
                out,
                "sluice_upstream_key_requests_total{{{l}}} {}",
                state.requests.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "sluice_upstream_key_errors_total{{{l}}} {}",
                state.errors.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "sluice_upstream_key_cooling{{{l}}} {}",
                u8::from(pool.is_cooling(k, now))
            );
        }
    }
    let _ = writeln!(out, "# HELP sluice_upstream_endpoint_circuit Circuit breaker per endpoint: 0 closed, 1 open, 2 half-open.");
    let _ = writeln!(out, "# TYPE sluice_upstream_endpoint_circuit gauge");
    let _ = writeln!(
        out,
        "# HELP sluice_upstream_endpoint_ejections_total Times an endpoint's circuit opened."
    );
    let _ = writeln!(
        out,
        "# TYPE sluice_upstream_endpoint_ejections_total counter"
    );
    for (p, eps) in endpoints.iter().enumerate() {
        let Some(provider) = config.providers.get(p) else {
            continue;
        };
        for (e, health) in eps.endpoints.iter().enumerate() {
            let url = provider
                .endpoints
                .get(e)
                .map(|u| u.to_string())
                .unwrap_or_default();
            let l = format!(
                "provider=\"{}\",endpoint=\"{}\"",
                escape(&provider.name),
                escape(&url)
            );
            let _ = writeln!(
                out,
                "sluice_upstream_endpoint_circuit{{{l}}} {}",
                health.circuit(now) as u8
            );
            let _ = writeln!(
                out,
                "sluice_upstream_endpoint_ejections_total{{{l}}} {}",
                health.ejections.load(Ordering::Relaxed)
            );
        }
    }
    out
}
