//! sluice's configuration: a TOML file in, an immutable [`Config`] out.
//!
//! This crate sits before everything else: the binary calls [`Config::load`]
//! once at start-up (and on reload), prints every [`ConfigError`] if there
//! are any, and otherwise hands the [`Config`] to the workers, which share it
//! read-only. Loading has two layers: `raw` mirrors the file with serde
//! (`deny_unknown_fields`, units in key names such as `_ms` and `_bytes`),
//! then `validation` checks everything at once and builds the typed values
//! below (`SocketAddr`, `Duration`, `NonZeroUsize`, `BaseUrl`, key hashes,
//! model -> provider indices, per-consumer [`LimitSet`]s with the defaults
//! merged in, budgets in integer micro-units, upstream key pools, fallback
//! [`Target`]s and the [`Retry`] policy, endpoint [`Health`] settings, model
//! name patterns ([`ModelMatch`]) and canary/A-B [`Variant`]s). Findings
//! that do not stop the gateway, such as a plain-text consumer key, land in
//! [`Config::warnings`]; [`Config::route`] finds the entry for a requested
//! model name.
//!
//! Nothing here opens sockets or spawns threads; the only I/O is reading the
//! file, checking that TLS/CA files are readable, reading the `*_env`
//! variables and, for a cluster node without `node_id`, `/etc/hostname`.
//! Relative paths stay relative to the caller's working directory.

mod base_url;
mod cluster;
mod ebpf;
mod error;
mod failover;
mod features;
mod health;
mod quota;
mod raw;
mod routing;
mod span;
mod validation;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use base_url::BaseUrl;
pub use cluster::{Cluster, RedisUrl};
pub use ebpf::{Ebpf, RejectAction, XdpMode};
pub use error::{ConfigError, ConfigErrors};
pub use failover::{FallbackOn, KeySelection, Retry, StatusMatch, Target, UpstreamKey};
pub use features::Features;
pub use health::{ActiveCheck, Health};
pub use ipnet::IpNet;
pub use quota::{LimitSet, Price, Quota};
pub use routing::{expand, ModelMatch, Sticky, Variant};

/// A validated configuration. Built only by [`Config::from_toml_str`] and
/// [`Config::load`], so every value in it has passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Downstream listeners; never empty.
    pub listeners: Vec<Listener>,
    /// The admin/metrics endpoint.
    pub admin: Admin,
    /// Worker threads and shutdown.
    pub workers: Workers,
    /// Downstream request limits.
    pub limits: Limits,
    /// Upstream providers; never empty. [`Model::provider`] indexes this.
    pub providers: Vec<Provider>,
    /// Public models; never empty, names and exact matches unique. Found
    /// by label with [`Config::model`], by requested name with
    /// [`Config::route`].
    pub models: Vec<Model>,
    /// How failed requests are retried and fall back, for every model.
    pub retry: Retry,
    /// Who may call the gateway; may be empty.
    pub consumers: Vec<Consumer>,
    /// The audit log.
    pub audit: Audit,
    /// The quota store and how tokens and money are counted.
    pub quota: Quota,
    /// Shared quota state through Redis; `None` = a standalone node.
    pub cluster: Option<Cluster>,
    /// Kernel early rejection (XDP).
    pub ebpf: Ebpf,
    /// Which policy stages run on every request.
    pub features: Features,
    /// Non-fatal findings, each "path: message", for the caller to log.
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses and validates a config held in memory.
    pub fn from_toml_str(source: &str) -> Result<Config, ConfigErrors> {
        let raw: raw::RawConfig =
            toml::from_str(source).map_err(|e| ConfigErrors::from(span::toml_error(source, &e)))?;
        validation::validate(raw)
    }

    /// Reads, parses and validates the config file at `path`. A read error
    /// is one [`ConfigError`] whose path is the file name.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path.display().to_string(),
                format!("cannot read the config file: {e}"),
            )
        })?;
        Self::from_toml_str(&source)
    }

    /// Looks a model up by its public name (its label in `allowed_models`,
    /// `model_limits` and metrics); returns its index in [`Config::models`]
    /// with it. To serve a request use [`Config::route`], which also
    /// follows `match` patterns.
    pub fn model(&self, name: &str) -> Option<(usize, &Model)> {
        self.models.iter().enumerate().find(|(_, m)| m.name == name)
    }

    /// The model entry serving `requested`, with its index in
    /// [`Config::models`] and the captures ([`ModelMatch::captures`]) that
    /// [`expand`] fills the target's model name with. Exact names are tried
    /// first, so an exact entry always wins over a pattern; then the
    /// patterns, in file order. `None` = no entry serves it.
    pub fn route(&self, requested: &str) -> Option<(usize, &Model, Vec<String>)> {
        let exact = self
            .models
            .iter()
            .enumerate()
            .find(|(_, m)| matches!(&m.matcher, ModelMatch::Exact(name) if name == requested));
        if let Some((index, model)) = exact {
            return Some((index, model, vec![requested.to_string()]));
        }
        self.models
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.matcher.is_exact())
            .find_map(|(index, m)| Some((index, m, m.matcher.captures(requested)?)))
    }
}

/// One downstream listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// IP and port to bind; port 0 asks the OS for a free port.
    pub address: SocketAddr,
    /// Serve HTTPS with these files; `None` means plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// A certificate and key pair, checked readable at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key_file: PathBuf,
}

/// The admin/metrics endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    /// IP and port to bind; default 127.0.0.1:9901.
    pub address: SocketAddr,
    /// SHA-256 of the token admin requests send as `Authorization: Bearer`,
    /// from `token_env`, `token_sha256` or `token`. `None` turns the admin
    /// API off, reads included: only `/metrics`, `/healthz` and `/readyz`
    /// answer.
    pub token_sha256: Option<[u8; 32]>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("address", &self.address)
            .field("token_sha256", &self.token_sha256.map(hex::encode))
            .finish()
    }
}

/// The thread-per-core runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workers {
    /// Number of worker threads; default: available parallelism.
    pub count: NonZeroUsize,
    /// Pin worker `i` to CPU `i`; default false.
    pub pin_cpus: bool,
    /// Time in-flight requests get to finish on shutdown; default 30 s.
    pub drain_timeout: Duration,
}

/// Limits on what a downstream client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line + headers); default 16 KiB, >= 1024.
    pub max_header_bytes: usize,
    /// Largest request body; default 4 MiB, > 0.
    pub max_body_bytes: usize,
    /// Time to receive a full request head; default 10 s.
    pub header_timeout: Duration,
    /// Time to receive the full request body; default 30 s.
    pub body_timeout: Duration,
    /// Keep-alive idle time between two requests; default 60 s.
    pub idle_timeout: Duration,
}

/// An upstream server that speaks one provider API.
#[derive(Clone, PartialEq, Eq)]
pub struct Provider {
    /// Unique, non-empty name.
    pub name: String,
    /// Which API the server speaks.
    pub kind: ProviderKind,
    /// Where the server is and which path prefix it uses: the first of
    /// [`Provider::endpoints`], kept for code that uses one endpoint.
    pub base_url: BaseUrl,
    /// Every endpoint of the server (`base_urls`, or `base_url` alone);
    /// never empty, no two equal. Each has its own circuit.
    pub endpoints: Vec<BaseUrl>,
    /// When an endpoint's circuit opens and closes; the defaults unless
    /// `health` is set.
    pub health: Health,
    /// The first key of [`Provider::keys`]; `None` when the pool is empty
    /// (no key is sent). Kept for code that uses one key per provider.
    pub api_key: Option<String>,
    /// The key pool: the key from `api_key` or `key_env` (id
    /// [`UpstreamKey::PRIMARY_ID`]) first, then `api_keys` in order. Sent
    /// as the kind's auth header (`Authorization: Bearer`, `api-key`,
    /// `x-api-key`); empty when the provider needs none.
    pub keys: Vec<UpstreamKey>,
    /// How a request picks a key from [`Provider::keys`]; default round robin.
    pub key_selection: KeySelection,
    /// How long a key rests after a 429 without `Retry-After`, a 401 or a
    /// 403; default 60 s.
    pub key_cooldown: Duration,
    /// Requests in flight to this provider from this node; `None` =
    /// unlimited. A full provider is skipped like one whose circuit is open.
    pub max_concurrency: Option<NonZeroU64>,
    /// TCP (and TLS) connect timeout; default 5 s.
    pub connect_timeout: Duration,
    /// From request sent to response head received; default 60 s.
    pub first_byte_timeout: Duration,
    /// Longest gap between two body reads while streaming; default 60 s.
    pub idle_timeout: Duration,
    /// Extra PEM CA bundle trusted for this provider's TLS; checked readable.
    pub ca_file: Option<PathBuf>,
    /// Keep-alive connections kept per worker; default 64, 0 disables reuse.
    pub max_idle_connections: usize,
    /// `azure-openai`: the `api-version` query value; default "2024-10-21".
    /// `anthropic`: the `anthropic-version` header; default "2023-06-01".
    pub api_version: String,
}

// Hand-written so that logging a config never prints an upstream key.
impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("endpoints", &self.endpoints)
            .field("health", &self.health)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys)
            .field("key_selection", &self.key_selection)
            .field("key_cooldown", &self.key_cooldown)
            .field("max_concurrency", &self.max_concurrency)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("ca_file", &self.ca_file)
            .field("max_idle_connections", &self.max_idle_connections)
            .field("api_version", &self.api_version)
            .finish()
    }
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// `kind = "openai"`: OpenAI's API or any server compatible with it
    /// (DeepSeek, Qwen/DashScope compatible mode, Moonshot, Groq, Mistral,
    /// OpenRouter, vLLM, Ollama…): `Authorization: Bearer`, `{base}/chat/completions`.
    OpenAi,
    /// `kind = "azure-openai"`: Azure OpenAI deployments:
    /// `{base}/openai/deployments/{upstream_model}/chat/completions?api-version=…`, `api-key` header.
    AzureOpenAi,
    /// `kind = "anthropic"`: the Messages API: `{base}/v1/messages`,
    /// `x-api-key` and `anthropic-version` headers.
    Anthropic,
    /// `kind = "gemini"`: Gemini through its OpenAI-compatible endpoint
    /// (`https://generativelanguage.googleapis.com/v1beta/openai`).
    Gemini,
}

impl ProviderKind {
    /// Every kind with its config spelling.
    const ALL: [(&'static str, ProviderKind); 4] = [
        ("openai", ProviderKind::OpenAi),
        ("azure-openai", ProviderKind::AzureOpenAi),
        ("anthropic", ProviderKind::Anthropic),
        ("gemini", ProviderKind::Gemini),
    ];

    /// The config spelling, e.g. `"openai"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::AzureOpenAi => "azure-openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }

    /// Whether the provider speaks Anthropic's Messages API (else OpenAI's).
    pub fn is_anthropic(&self) -> bool {
        matches!(self, ProviderKind::Anthropic)
    }

    /// Parses the config spelling.
    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, kind)| *kind)
    }
}

/// A model clients may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Public name: clients send it in `"model"` unless `match` says
    /// otherwise; the label of `allowed_models`, `model_limits`, metrics and
    /// the audit log. Unique.
    pub name: String,
    /// Which requested names this entry serves; `Exact(name)` unless
    /// `match` is set.
    pub matcher: ModelMatch,
    /// Index of its provider in [`Config::providers`]. With
    /// [`Model::variants`], the first variant's.
    pub provider: usize,
    /// Name sent upstream in place of the requested one, a template for
    /// [`expand`]; defaults to the exact name served (`name`, or an exact
    /// `match`), or to `$0` (the requested name) when `match` is a pattern.
    /// With [`Model::variants`], the first variant's.
    pub upstream_model: String,
    /// Tokenizer used to count its tokens.
    pub encoding: Encoding,
    /// What its tokens cost; `None` = nothing (never spends a budget).
    /// Charged whichever target serves the request.
    pub price: Option<Price>,
    /// Targets tried in order after the primary one (`provider`,
    /// `upstream_model`); may be empty. With [`Model::variants`], the first
    /// variant's.
    pub fallbacks: Vec<Target>,
    /// Which failures move a request on to the next attempt.
    pub fallback_on: FallbackOn,
    /// Used instead of failing when no target can take the request (every
    /// circuit open or every provider at `max_concurrency`); `None` fails.
    pub degrade_to: Option<Target>,
    /// A canary or A/B split; each variant has its own target and
    /// fallbacks. Empty = no split: `provider`, `upstream_model` and
    /// `fallbacks` serve every request.
    pub variants: Vec<Variant>,
    /// What keeps a user on one variant; [`Sticky::Consumer`] by default.
    pub sticky: Sticky,
    /// A request header (lower-cased) whose value names the variant to use,
    /// overriding the weights; `None` = the weights always decide.
    pub variant_header: Option<String>,
}

impl Model {
    /// The primary target: [`Model::provider`] with [`Model::upstream_model`].
    pub fn primary(&self) -> Target {
        Target {
            provider: self.provider,
            upstream_model: self.upstream_model.clone(),
        }
    }

    /// The variant called `name`, e.g. from the [`Model::variant_header`].
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// The variant for a request whose [`Sticky`] key hashes to `hash` (or
    /// a random number): each variant owns a share of `0..sum of weights`
    /// as large as its weight, in config order, and `hash % sum` falls in
    /// one. The same hash always picks the same variant while the weights
    /// stay the same. `None` when the model has no variants.
    pub fn pick_variant(&self, hash: u64) -> Option<&Variant> {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        let mut point = hash.checked_rem(total)?;
        for variant in &self.variants {
            let weight = u64::from(variant.weight);
            if point < weight {
                return Some(variant);
            }
            point -= weight;
        }
        None
    }
}

/// A tiktoken encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// `"o200k_base"`: GPT-4o and later; the default.
    #[default]
    O200kBase,
    /// `"cl100k_base"`: GPT-4, GPT-3.5 and the text-embedding-3 models.
    Cl100kBase,
    /// `"p50k_base"`: Codex and text-davinci-002/003.
    P50kBase,
    /// `"r50k_base"`: GPT-3 models such as davinci.
    R50kBase,
}

impl Encoding {
    /// Every encoding, for parsing and error messages.
    pub const ALL: [Encoding; 4] = [
        Encoding::O200kBase,
        Encoding::Cl100kBase,
        Encoding::P50kBase,
        Encoding::R50kBase,
    ];

    /// The config (and tiktoken) spelling, e.g. `"o200k_base"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::P50kBase => "p50k_base",
            Encoding::R50kBase => "r50k_base",
        }
    }

    /// Parses the config spelling.
    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A downstream client identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Source networks declared for this consumer (kernel early rejection).
    pub networks: Vec<IpNet>,
    /// Unique name, written to the audit log.
    pub name: String,
    /// Keys it authenticates with; at least one, none shared with others.
    pub keys: Vec<ApiKey>,
    /// Public model names it may use; `None` means every model.
    pub allowed_models: Option<Vec<String>>,
    /// Its limits: `[quota.defaults]`, each key replaced by its own
    /// `limits`, minus the names in `unlimited`.
    pub limits: LimitSet,
    /// Limits per model for this consumer, as (index into
    /// [`Config::models`], limits), sorted by index; only models it may use.
    /// They apply on top of [`Consumer::limits`].
    pub model_limits: Vec<(usize, LimitSet)>,
    /// Token balance to start from when the quota store holds none for this
    /// consumer; `None` = no balance limit.
    pub balance: Option<i64>,
}

impl Consumer {
    /// Its limits for the model at `model` (index into [`Config::models`]),
    /// if it has any.
    pub fn limits_for(&self, model: usize) -> Option<&LimitSet> {
        self.model_limits
            .iter()
            .find(|(index, _)| *index == model)
            .map(|(_, limits)| limits)
    }

    /// Whether this consumer may use the model with public name `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == model))
    }
}

/// One downstream API key, stored as its SHA-256 only.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Label for logs; `"<consumer>#<index>"` unless set.
    pub id: String,
    /// SHA-256 of the key as sent in `Authorization: Bearer <key>`.
    pub sha256: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("sha256", &hex::encode(self.sha256))
            .finish()
    }
}

/// The audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// JSON-lines file records are appended to; default `sluice-audit.jsonl`.
    pub path: PathBuf,
    /// How often buffered records are written out; default 1 s, > 0.
    pub flush_interval: Duration,
}

/// SHA-256 of `key` as 64 lower-case hex digits: what goes into
/// `keys = [{ sha256 = "..." }]`.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(sha256(key))
}

/// SHA-256 of `key`.
pub(crate) fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
