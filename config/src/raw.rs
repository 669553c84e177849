//! Layer one: the TOML file exactly as written.
//!
//! These serde structs mirror the file's tables one to one, reject unknown
//! keys (`deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting) and carry units in their key names (`_ms`, `_bytes`).
//! Keys the file may leave out are `Option` or `#[serde(default)]`; even keys
//! that are required are `Option` here, so that a missing one is reported by
//! `validate` together with every other finding instead of stopping serde.
//! Enumerations (`kind`, `encoding`) stay strings for the same reason.
//! Nothing here is used outside this crate: `validate` turns it into `Config`.

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
    /// `http(s)://host[:port][/prefix]`; required.
    pub base_url: Option<String>,
    /// The upstream key written inline; excludes `key_env`.
    pub api_key: Option<String>,
    /// Name of an environment variable holding the upstream key.
    pub key_env: Option<String>,
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
}

/// One `[[models]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    /// Public model name clients send in `"model"`; required, unique.
    pub name: Option<String>,
    /// Name of the provider serving it; required.
    pub provider: Option<String>,
    /// Model name sent upstream; default: `name`.
    pub upstream_model: Option<String>,
    /// Tokenizer used to count tokens; default `"o200k_base"`.
    pub encoding: Option<String>,
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
