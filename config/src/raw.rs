//! Layer one: the TOML file exactly as written.
//!
//! These serde structs mirror the file's tables one to one, reject unknown
//! keys (`deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting) and carry units in their key names (`_ms`, `_bytes`).
//! Keys the file may leave out are `Option` or `#[serde(default)]`; even keys
//! that are required are `Option` here, so that a missing one is reported by
//! `validate` together with every other finding instead of stopping serde.
//! Enumerations (`kind`, `encoding`, `key_selection`, `fallback_on`,
//! `sticky`) and patterns (`match`) stay strings for the same reason.
//! Nothing here is used outside this crate: `validate` turns it into `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `[[listeners]]`: downstream sockets; at least one is required.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// `[admin]`: the admin/metrics endpoint.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[workers]`: the thread-per-core runtime.
    #[serde(default)]
    pub workers: RawWorkers,
    /// `[limits]`: downstream request size and time limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[[providers]]`: upstream servers; at least one is required.
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    /// `[[models]]`: public model names; at least one is required.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// `[[consumers]]`: who may call the gateway, with which keys.
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    /// `[audit]`: the request audit log.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[quota]`: the quota store and the limits every consumer gets.
    #[serde(default)]
    pub quota: RawQuota,
    /// `[cluster]`: share quota state through Redis; absent = standalone.
    pub cluster: Option<RawCluster>,
    /// `[ebpf]`: kernel early rejection.
    #[serde(default)]
    pub ebpf: crate::ebpf::RawEbpf,
    /// `[retry]`: how often and how fast a failed request is tried again.
    #[serde(default)]
    pub retry: RawRetry,
    /// `[features]`: which policy stages run.
    #[serde(default)]
    pub features: crate::features::RawFeatures,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    /// `address = "127.0.0.1:8080"`: IP and port to bind; required.
    pub address: Option<String>,
    /// `tls = { cert_file = "...", key_file = "..." }`: serve HTTPS.
    pub tls: Option<RawTls>,
}

/// A listener's `tls` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// PEM certificate chain, leaf first; required.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate; required.
    pub key_file: Option<PathBuf>,
}

/// The `[admin]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// `address = "127.0.0.1:9901"`: IP and port of the admin endpoint.
    pub address: Option<String>,
    /// Name of an environment variable holding the admin token; excludes
    /// `token_sha256` and `token`.
    pub token_env: Option<String>,
    /// SHA-256 of the admin token as 64 hex digits; excludes the others.
    pub token_sha256: Option<String>,
    /// The admin token itself (hashed at load, with a warning); excludes the
    /// others. With none of the three the admin API stays off.
    pub token: Option<String>,
}

/// The `[workers]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkers {
    /// Number of worker threads; default: the number of available CPUs.
    pub count: Option<u64>,
    /// Pin worker `i` to CPU `i`; default false.
    pub pin_cpus: Option<bool>,
    /// Time in-flight requests get to finish on shutdown; default 30000.
    pub drain_timeout_ms: Option<u64>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Largest request head (request line + headers); default 16384.
    pub max_header_bytes: Option<u64>,
    /// Largest request body; default 4194304.
    pub max_body_bytes: Option<u64>,
    /// Time allowed to receive a full request head; default 10000.
    pub header_timeout_ms: Option<u64>,
    /// Time allowed to receive the full request body; default 30000.
    pub body_timeout_ms: Option<u64>,
    /// Keep-alive idle time between two requests; default 60000.
    pub idle_timeout_ms: Option<u64>,
}

/// One `[[providers]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    /// Unique name that `models[].provider` refers to; required.
    pub name: Option<String>,
    /// API flavour; only `"openai"` (the default) exists today.
    pub kind: Option<String>,
    /// `http(s)://host[:port][/prefix]`; required unless `base_urls` is
    /// set, and excludes it.
    pub base_url: Option<String>,
    /// `base_urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]`:
    /// several endpoints of the same server, each with its own circuit;
    /// excludes `base_url`.
    pub base_urls: Option<Vec<String>>,
    /// `health = { failures_to_eject = 5, ... }`: when an endpoint's
    /// circuit opens and how it is probed; absent = the defaults.
    #[serde(default)]
    pub health: RawHealth,
    /// The upstream key written inline (key id `"primary"`); excludes
    /// `key_env`.
    pub api_key: Option<String>,
    /// Name of an environment variable holding the upstream key (key id
    /// `"primary"`).
    pub key_env: Option<String>,
    /// `api_keys = [{ id = "k2", key_env = "VAR" }]`: more keys for the
    /// pool, after the primary one.
    #[serde(default)]
    pub api_keys: Vec<RawUpstreamKey>,
    /// `"round_robin"` (the default) or `"least_in_flight"`.
    pub key_selection: Option<String>,
    /// How long a key rests after a 429 without `Retry-After`, a 401 or a
    /// 403; default 60000.
    pub key_cooldown_ms: Option<u64>,
    /// TCP (and TLS) connect timeout; default 5000.
    pub connect_timeout_ms: Option<u64>,
    /// From request sent to response head received; default 60000.
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest gap between two body reads while streaming; default 60000.
    pub idle_timeout_ms: Option<u64>,
    /// Extra PEM CA bundle trusted for this provider's TLS.
    pub ca_file: Option<PathBuf>,
    /// Keep-alive connections kept per worker; default 64.
    pub max_idle_connections: Option<u64>,
    /// `api-version` (azure-openai) or `anthropic-version` (anthropic).
    pub api_version: Option<String>,
    /// Requests in flight to this provider from this node; absent =
    /// unlimited, else > 0.
    pub max_concurrency: Option<u64>,
}

/// A provider's `health` table. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    /// Consecutive failures (connect error, timeout, 5xx) that open an
    /// endpoint's circuit; default 5, 1..=1000.
    pub failures_to_eject: Option<u64>,
    /// How long a circuit stays open the first time; doubles on each
    /// re-open. Default 1000.
    pub base_ejection_ms: Option<u64>,
    /// Longest a circuit stays open; default 60000, >= `base_ejection_ms`.
    pub max_ejection_ms: Option<u64>,
    /// Active check: `GET` on the base path followed by this, 2xx =
    /// healthy, e.g. `"/models"`; needs `check_interval_ms`.
    pub check_path: Option<String>,
    /// Time between two active checks of one endpoint, 100..=3600000;
    /// needs `check_path`.
    pub check_interval_ms: Option<u64>,
}

/// One entry of a provider's `api_keys` array.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamKey {
    /// Label for logs and metrics; required, unique within the provider.
    pub id: Option<String>,
    /// Name of an environment variable holding the key; excludes `key`.
    pub key_env: Option<String>,
    /// The key itself (accepted with a warning); excludes `key_env`.
    pub key: Option<String>,
}

/// One `[[models]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    /// Public model name clients send in `"model"` (unless `match` is set)
    /// and the label of limits and metrics; required, unique.
    pub name: Option<String>,
    /// Requested names this entry serves: an exact name, a wildcard with
    /// `*` (`"gpt-4o-*"`), or `"re:<regex>"`; default: `name`.
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    /// Name of the provider serving it; required unless `variants` is set,
    /// and excludes it.
    pub provider: Option<String>,
    /// Model name sent upstream, a template (`$1`, `${name}`, `$0`, `*`);
    /// default: the exact name served (`name` or an exact `match`), or
    /// `"$0"` (the requested name) when `match` is a pattern. With
    /// `variants`, the default of each variant's `model`.
    pub upstream_model: Option<String>,
    /// `variants = [{ name = "stable", weight = 90, provider = "openai" }]`:
    /// a canary or A/B split, each variant with its own target.
    pub variants: Option<Vec<RawVariant>>,
    /// Key hashed to keep a user on one variant: `"consumer"` (the
    /// default), `"header:<name>"` or `"none"`.
    pub sticky: Option<String>,
    /// Request header whose value names the variant to use.
    pub variant_header: Option<String>,
    /// Tokenizer used to count tokens; default `"o200k_base"`.
    pub encoding: Option<String>,
    /// `price = { input_per_million = 0.15, ... }`; absent = costs nothing.
    pub price: Option<RawPrice>,
    /// `fallbacks = [{ provider = "azure", model = "gpt4o" }]`: targets
    /// tried in order after the primary one; with `variants`, set on each
    /// variant instead.
    #[serde(default)]
    pub fallbacks: Vec<RawTarget>,
    /// Failures that move a request on: status codes (`"429"`), classes
    /// (`"4xx"`, `"5xx"`), `"connect"`, `"timeout"`; default
    /// `["429", "5xx", "connect", "timeout"]`.
    pub fallback_on: Option<Vec<String>>,
    /// `degrade_to = { provider = "openai", model = "gpt-4o-mini" }`: used
    /// instead of failing when no target can take the request.
    pub degrade_to: Option<RawTarget>,
}

/// One entry of a model's `variants`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVariant {
    /// Unique within the model; 1..=64 of `A-Z a-z 0-9 . _ -`; required.
    pub name: Option<String>,
    /// Share of requests, 0..=10000, relative to the other variants;
    /// required.
    pub weight: Option<u64>,
    /// Name of the provider serving it; required.
    pub provider: Option<String>,
    /// Model name sent to it, a template like `upstream_model`; default:
    /// the model's `upstream_model`.
    pub model: Option<String>,
    /// Targets tried in order after this variant's own; `model` defaults to
    /// the variant's.
    #[serde(default)]
    pub fallbacks: Vec<RawTarget>,
}

/// One entry of a model's `fallbacks`, or its `degrade_to`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    /// Name of the provider; required.
    pub provider: Option<String>,
    /// Model name sent to it, a template like `upstream_model`; default:
    /// the model's `upstream_model` (a variant's `model` for the variant's
    /// fallbacks).
    pub model: Option<String>,
}

/// A model's `price` table, in `quota.currency` per million tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    /// Price of a million uncached prompt tokens; required, >= 0.
    pub input_per_million: Option<f64>,
    /// Price of a million completion tokens; required, >= 0.
    pub output_per_million: Option<f64>,
    /// Price of a million cached prompt tokens; default `input_per_million`.
    pub cached_input_per_million: Option<f64>,
}

/// One `[[consumers]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsumer {
    /// Unique consumer name, written to the audit log; required.
    pub name: Option<String>,
    /// API keys this consumer authenticates with; at least one.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Models this consumer may use; absent means all.
    pub allowed_models: Option<Vec<String>>,
    /// Token balance to start from when the quota store holds none for this
    /// consumer; absent = no balance limit. >= 0.
    pub balance: Option<i64>,
    /// Own limits; each key set here replaces the same key of
    /// `quota.defaults`.
    #[serde(default)]
    pub limits: RawLimitSet,
    /// Names of `quota.defaults` limits this consumer is exempt from.
    #[serde(default)]
    pub unlimited: Vec<String>,
    /// Limits per model for this consumer, keyed by public model name.
    #[serde(default)]
    pub model_limits: BTreeMap<String, RawLimitSet>,
    /// Source networks this consumer's traffic comes from (for kernel
    /// early rejection), e.g. ["203.0.113.0/24"].
    #[serde(default)]
    pub networks: Vec<String>,
}

/// One entry of a consumer's `keys` array.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    /// Label for logs; default `"<consumer>#<index>"`.
    pub id: Option<String>,
    /// SHA-256 of the key as 64 hex digits; excludes `plain`.
    pub sha256: Option<String>,
    /// The key itself (hashed at load, with a warning); excludes `sha256`.
    pub plain: Option<String>,
}

/// The `[audit]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    /// JSON-lines file the audit records are appended to.
    pub path: Option<PathBuf>,
    /// How often buffered records are written out; default 1000.
    pub flush_interval_ms: Option<u64>,
}

/// The `[quota]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    /// Embedded store for balances, spend and windows; default
    /// `"sluice-quota.redb"`; `""` keeps them in memory only.
    pub state_path: Option<PathBuf>,
    /// How often quota state is written to the store; default 1000.
    pub flush_interval_ms: Option<u64>,
    /// Completion tokens reserved when a request sets no `max_tokens`;
    /// default 4096.
    pub default_max_tokens: Option<u64>,
    /// Weight of a completion token in token rate limits; default 1.0.
    pub completion_weight: Option<f64>,
    /// ISO 4217 code of every price and budget; default `"USD"`.
    pub currency: Option<String>,
    /// `[quota.defaults]`: limits every consumer gets unless it overrides
    /// them.
    #[serde(default)]
    pub defaults: RawLimitSet,
}

/// A set of limits: `quota.defaults`, a consumer's `limits`, or one entry of
/// its `model_limits`. Every key is optional; absent = no such limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimitSet {
    /// Requests started per second.
    pub requests_per_second: Option<u64>,
    /// Requests started per minute.
    pub requests_per_minute: Option<u64>,
    /// Requests in flight at once.
    pub concurrent_requests: Option<u64>,
    /// Weighted tokens (prompt + weight x completion) per minute.
    pub tokens_per_minute: Option<u64>,
    /// Weighted tokens per hour.
    pub tokens_per_hour: Option<u64>,
    /// Weighted tokens per day.
    pub tokens_per_day: Option<u64>,
    /// Spend per day, in `quota.currency`.
    pub budget_per_day: Option<f64>,
    /// Spend per month, in `quota.currency`.
    pub budget_per_month: Option<f64>,
}

/// One limit as written: a count or an amount of money.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawLimit {
    /// A count of requests or tokens.
    Count(Option<u64>),
    /// An amount in `quota.currency`.
    Money(Option<f64>),
}

impl RawLimit {
    /// Whether the key is set.
    pub fn is_set(&self) -> bool {
        match self {
            RawLimit::Count(value) => value.is_some(),
            RawLimit::Money(value) => value.is_some(),
        }
    }
}

impl RawLimitSet {
    /// Every key, in `LimitSet::NAMES` order (a test in `tests.rs` sets
    /// each name and checks it lands in the matching field).
    pub fn entries(&self) -> [RawLimit; 8] {
        [
            RawLimit::Count(self.requests_per_second),
            RawLimit::Count(self.requests_per_minute),
            RawLimit::Count(self.concurrent_requests),
            RawLimit::Count(self.tokens_per_minute),
            RawLimit::Count(self.tokens_per_hour),
            RawLimit::Count(self.tokens_per_day),
            RawLimit::Money(self.budget_per_day),
            RawLimit::Money(self.budget_per_month),
        ]
    }
}

/// The `[cluster]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    /// `redis://[:password@]host[:port][/db]`; excludes `redis_env`.
    pub redis: Option<String>,
    /// Name of an environment variable holding the Redis URL; excludes
    /// `redis`.
    pub redis_env: Option<String>,
    /// This node's name in shared state; default: the host name.
    pub node_id: Option<String>,
    /// Share of a limit a node leases at a time; default 0.05.
    pub lease_fraction: Option<f64>,
    /// Lease lifetime; default 2000.
    pub lease_ttl_ms: Option<u64>,
    /// `"open"` (local limits only) or `"closed"` (503) while Redis is
    /// unreachable; default `"open"`.
    pub on_redis_down: Option<String>,
    /// TCP connect timeout to Redis; default 500.
    pub connect_timeout_ms: Option<u64>,
}

/// The `[retry]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    /// Attempts per request across all targets, the first included;
    /// default 3, 1..=10.
    pub max_attempts: Option<u64>,
    /// Largest share of requests that may be retries (over about 10 s);
    /// default 0.2, 0..=1.
    pub budget_ratio: Option<f64>,
    /// First backoff before retrying the same provider; default 50.
    pub backoff_base_ms: Option<u64>,
    /// Longest backoff; default 2000, >= `backoff_base_ms`.
    pub backoff_max_ms: Option<u64>,
}
