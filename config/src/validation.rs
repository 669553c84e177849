//! Layer two: checks a `RawConfig` and builds the typed `Config`.
//!
//! Every section is checked even after an error, and every finding is
//! pushed with its key path, so one run reports all that is wrong. Defaults
//! are filled in here, units are applied (`_ms` -> `Duration`), names are
//! resolved to indices (`models[].provider`, `fallbacks[].provider` and
//! `degrade_to.provider` -> `Config::providers` index), upstream keys are
//! read into each provider's pool, `fallback_on` entries are parsed,
//! `base_url`/`base_urls` become endpoint lists, `match` patterns are
//! compiled and the upstream model templates checked against them (named
//! groups turned into numbers), `variants` become weighted targets,
//! consumer keys and the admin token are reduced to SHA-256 hashes, budgets
//! to integer micro-units, and each consumer's limits are merged with
//! `[quota.defaults]`. Cross-references are checked against the raw names,
//! so a provider with a bad URL does not also make every model that uses it
//! "unknown".
//!
//! Invariant: a section builder returns `None` only after pushing an error,
//! so when no error was pushed every `Option` is `Some` and indices into the
//! raw lists are indices into the typed ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raw::{
    RawAdmin, RawAudit, RawCluster, RawConfig, RawConsumer, RawHealth, RawKey, RawLimit,
    RawLimitSet, RawLimits, RawListener, RawModel, RawPrice, RawProvider, RawQuota, RawRetry,
    RawTarget, RawTls, RawUpstreamKey, RawWorkers,
};
use crate::routing::{is_header_name, pieces, Piece};
use crate::span::path_key;
use crate::{
    sha256, ActiveCheck, Admin, ApiKey, Audit, BaseUrl, Cluster, Config, ConfigError, ConfigErrors,
    Consumer, Encoding, FallbackOn, Health, KeySelection, LimitSet, Limits, Listener, Model,
    ModelMatch, Price, Provider, ProviderKind, Quota, RedisUrl, Retry, StatusMatch, Sticky, Target,
    TlsFiles, UpstreamKey, Variant, Workers,
};

/// Longest accepted timeout or interval: one day. Anything longer is almost
/// certainly a unit mistake (seconds or microseconds written as `_ms`).
const MAX_MS: u64 = 24 * 60 * 60 * 1000;
/// Upper bound for `workers.count`.
const MAX_WORKERS: u64 = 1024;
/// Bounds for `limits.max_header_bytes`: below 1 KiB ordinary requests fail.
const HEADER_BYTES: (u64, u64) = (1024, 1 << 20);
/// Upper bound for `limits.max_body_bytes`: 1 GiB.
const MAX_BODY_BYTES: u64 = 1 << 30;
/// Upper bound for `providers[].max_idle_connections`.
const MAX_IDLE_CONNECTIONS: u64 = 65_536;
/// Bounds for `quota.flush_interval_ms`: more often than every 10 ms only
/// burns I/O; less often than a minute loses too much on a crash.
const FLUSH_INTERVAL_MS: (u64, u64) = (10, 60_000);
/// Upper bound for `quota.completion_weight`.
const MAX_COMPLETION_WEIGHT: f64 = 100.0;
/// Largest budget, in currency units: far above any real budget, and small
/// enough that micro-units fit a u64 with room for sums.
const MAX_BUDGET: f64 = 1e12;
/// Largest price per million tokens: one currency unit per token. Keeps
/// `Price::cost_micros` far from saturating.
const MAX_PRICE_PER_MILLION: f64 = 1e6;
/// Bounds for `cluster.lease_ttl_ms`.
const LEASE_TTL_MS: (u64, u64) = (100, 60_000);
/// Upper bound for `cluster.lease_fraction`: leasing more than half of a
/// limit would let two nodes take all of it.
const MAX_LEASE_FRACTION: f64 = 0.5;
/// Bounds for `retry.max_attempts`: beyond 10 a request mostly waits on
/// providers that are down.
const MAX_ATTEMPTS: (u64, u64) = (1, 10);
/// Bounds for `retry.backoff_base_ms` and `retry.backoff_max_ms`: a backoff
/// longer than a minute outlasts any client's patience.
const BACKOFF_MS: (u64, u64) = (1, 60_000);
/// Bounds for `providers[].health.failures_to_eject`.
const FAILURES_TO_EJECT: (u64, u64) = (1, 1_000);
/// Bounds for `health.base_ejection_ms` and `health.max_ejection_ms`: an
/// endpoint shut out for more than an hour is better removed from the file.
const EJECTION_MS: (u64, u64) = (1, 3_600_000);
/// Bounds for `health.check_interval_ms`: probing more often than every
/// 100 ms loads the upstream for nothing; less often than hourly is no check.
const CHECK_INTERVAL_MS: (u64, u64) = (100, 3_600_000);
/// Largest `variants[].weight`: weights read as parts of 10000 (0.01 %).
const MAX_WEIGHT: u64 = 10_000;
/// `cluster.node_id` when neither it nor a host name is available.
const FALLBACK_NODE_ID: &str = "sluice";

/// Validates `raw`; returns the config or every error found.
pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut v = Validator::default();

    let listeners = v.listeners(&raw.listeners);
    let admin = v.admin(&raw.admin, &listeners);
    let workers = v.workers(&raw.workers);
    let limits = v.limits(&raw.limits);
    let defaults = v.limit_set("quota.defaults", &raw.quota.defaults, Scope::Defaults);
    let quota = v.quota(&raw.quota, defaults.clone());
    let providers = v.providers(&raw.providers);
    let models = v.models(&raw.models, &raw.providers);
    let retry = v.retry(&raw.retry);
    let consumers = v.consumers(&raw.consumers, &raw.models, defaults.as_ref(), &raw.quota);
    let audit = v.audit(&raw.audit);
    let cluster = match &raw.cluster {
        None => Some(None),
        Some(cluster) => v.cluster(cluster).map(Some),
    };
    v.admin_token_unused(&raw.admin, admin.as_ref(), &consumers);
    let mut section_errors = Vec::new();
    let ebpf = crate::ebpf::validate(&raw.ebpf, &mut section_errors);
    let features = crate::features::validate(&raw, &mut section_errors);
    for (path, message) in section_errors {
        v.error(path, message);
    }

    if !v.errors.is_empty() {
        return Err(ConfigErrors(v.errors));
    }
    match (admin, workers, limits, audit, quota, cluster, retry) {
        (
            Some(admin),
            Some(workers),
            Some(limits),
            Some(audit),
            Some(quota),
            Some(cluster),
            Some(retry),
        ) => Ok(Config {
            listeners: listeners.into_iter().flatten().collect(),
            admin,
            workers,
            limits,
            providers: providers.into_iter().flatten().collect(),
            models: models.into_iter().flatten().collect(),
            retry,
            consumers: consumers.into_iter().flatten().collect(),
            audit,
            // A node that counts nothing keeps no quota store.
            quota: Quota {
                state_path: quota.state_path.filter(|_| features.accounting),
                ..quota
            },
            cluster,
            ebpf,
            features,
            warnings: v.warnings,
        }),
        // Unreachable by the invariant above; kept as an error, not a panic.
        _ => Err(ConfigError::new("", "internal error: a section failed without an error").into()),
    }
}

/// Where a limit set sits, for the advice given on a zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// `[quota.defaults]`.
    Defaults,
    /// A consumer's `limits`, which override the defaults.
    Consumer,
    /// One entry of a consumer's `model_limits`.
    Model,
}

/// Collects errors and warnings while the sections are checked.
#[derive(Default)]
struct Validator {
    /// Fatal findings, in the order found.
    errors: Vec<ConfigError>,
    /// Non-fatal findings as "path: message".
    warnings: Vec<String>,
}

impl Validator {
    /// Records an error at `path`.
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// Records a warning at `path`.
    fn warn(&mut self, path: &str, message: &str) {
        self.warnings.push(format!("{path}: {message}"));
    }

    // ----- sections -------------------------------------------------------

    /// `[[listeners]]`: at least one, addresses valid and distinct.
    fn listeners(&mut self, raw: &[RawListener]) -> Vec<Option<Listener>> {
        if raw.is_empty() {
            self.error(
                "listeners",
                "at least one [[listeners]] entry is required, e.g. address = \"127.0.0.1:8080\"",
            );
        }
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, listener) in raw.iter().enumerate() {
            let at = format!("listeners[{i}]");
            let address = self.required_address(&format!("{at}.address"), &listener.address);
            if let Some(address) = address {
                // Port 0 means "any free port", so several may share it.
                if address.port() != 0 {
                    if let Some(first) = seen.insert(address, i) {
                        self.error(
                            format!("{at}.address"),
                            format!("{address} is already used by listeners[{first}]"),
                        );
                    }
                }
            }
            let tls = match &listener.tls {
                None => Some(None),
                Some(tls) => self.tls(&format!("{at}.tls"), tls).map(Some),
            };
            out.push(match (address, tls) {
                (Some(address), Some(tls)) => Some(Listener { address, tls }),
                _ => None,
            });
        }
        out
    }

    /// A listener's `tls` table: both files present and readable.
    fn tls(&mut self, at: &str, raw: &RawTls) -> Option<TlsFiles> {
        let cert_file = self.required_file(&format!("{at}.cert_file"), &raw.cert_file);
        let key_file = self.required_file(&format!("{at}.key_file"), &raw.key_file);
        Some(TlsFiles {
            cert_file: cert_file?,
            key_file: key_file?,
        })
    }

    /// `[admin]`: a valid address not taken by a listener, and at most one
    /// form of the token.
    fn admin(&mut self, raw: &RawAdmin, listeners: &[Option<Listener>]) -> Option<Admin> {
        let mut address = match &raw.address {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            Some(text) => self.address("admin.address", text),
        };
        if let Some(taken) = address.filter(|a| a.port() != 0) {
            let clash = listeners
                .iter()
                .position(|l| l.as_ref().is_some_and(|l| l.address == taken));
            if let Some(i) = clash {
                self.error(
                    "admin.address",
                    format!("{taken} is already used by listeners[{i}]"),
                );
                address = None;
            }
        }
        let token_sha256 = self.admin_token(raw);
        if let (Some(address), Some(Some(_))) = (address, token_sha256) {
            if !address.ip().is_loopback() {
                self.warn(
                    "admin.address",
                    "not a loopback address: the admin token crosses the network in plain HTTP; \
                     keep admin on 127.0.0.1 or put a TLS proxy in front",
                );
            }
        }
        Some(Admin {
            address: address?,
            token_sha256: token_sha256?,
        })
    }

    /// The admin token's hash from `token_env`, `token_sha256` or `token`;
    /// `Some(None)` when none is set (the admin API stays off).
    fn admin_token(&mut self, raw: &RawAdmin) -> Option<Option<[u8; 32]>> {
        match (&raw.token_env, &raw.token_sha256, &raw.token) {
            (None, None, None) => Some(None),
            (Some(var), None, None) => {
                let token = self.env_value("admin.token_env", var, "token_sha256")?;
                if token.is_empty() || !is_header_token(&token) {
                    self.error(
                        "admin.token_env",
                        format!(
                            "environment variable \"{var}\": the token must be non-empty visible \
                             ASCII (no spaces or newlines)"
                        ),
                    );
                    return None;
                }
                Some(Some(sha256(&token)))
            }
            (None, Some(hex_text), None) => {
                self.sha256_hex("admin.token_sha256", hex_text).map(Some)
            }
            (None, None, Some(token)) => {
                if token.is_empty() || !is_header_token(token) {
                    self.error(
                        "admin.token",
                        "the token must be non-empty visible ASCII (no spaces or newlines)",
                    );
                    return None;
                }
                self.warn(
                    "admin.token",
                    "plain-text admin token; in production use token_env or token_sha256",
                );
                Some(Some(sha256(token)))
            }
            _ => {
                self.error("admin", "set only one of token_env, token_sha256 or token");
                None
            }
        }
    }

    /// The admin token must not also be a consumer key: a consumer could
    /// then change its own quota.
    fn admin_token_unused(
        &mut self,
        raw: &RawAdmin,
        admin: Option<&Admin>,
        consumers: &[Option<Consumer>],
    ) {
        let Some(token) = admin.and_then(|a| a.token_sha256) else {
            return;
        };
        let path = if raw.token_env.is_some() {
            "admin.token_env"
        } else if raw.token_sha256.is_some() {
            "admin.token_sha256"
        } else {
            "admin.token"
        };
        for (i, consumer) in consumers.iter().enumerate() {
            let keys = consumer.iter().flat_map(|c| c.keys.iter());
            for (k, key) in keys.enumerate() {
                if key.sha256 == token {
                    self.error(
                        path,
                        format!(
                            "same as consumers[{i}].keys[{k}]; the admin token must differ from \
                             every consumer key"
                        ),
                    );
                }
            }
        }
    }

    /// `[workers]`.
    fn workers(&mut self, raw: &RawWorkers) -> Option<Workers> {
        let count = match raw.count {
            None => Some(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)),
            // `size` has checked 1..=MAX_WORKERS, so `new` cannot see a zero.
            Some(count) => self
                .size("workers.count", Some(count), 1, (1, MAX_WORKERS))
                .and_then(NonZeroUsize::new),
        };
        let drain_timeout = self.millis("workers.drain_timeout_ms", raw.drain_timeout_ms, 30_000);
        Some(Workers {
            count: count?,
            pin_cpus: raw.pin_cpus.unwrap_or(false),
            drain_timeout: drain_timeout?,
        })
    }

    /// `[limits]`.
    fn limits(&mut self, raw: &RawLimits) -> Option<Limits> {
        let max_header_bytes = self.size(
            "limits.max_header_bytes",
            raw.max_header_bytes,
            16 * 1024,
            HEADER_BYTES,
        );
        let max_body_bytes = self.size(
            "limits.max_body_bytes",
            raw.max_body_bytes,
            4 * 1024 * 1024,
            (1, MAX_BODY_BYTES),
        );
        let header_timeout = self.millis("limits.header_timeout_ms", raw.header_timeout_ms, 10_000);
        let body_timeout = self.millis("limits.body_timeout_ms", raw.body_timeout_ms, 30_000);
        let idle_timeout = self.millis("limits.idle_timeout_ms", raw.idle_timeout_ms, 60_000);
        Some(Limits {
            max_header_bytes: max_header_bytes?,
            max_body_bytes: max_body_bytes?,
            header_timeout: header_timeout?,
            body_timeout: body_timeout?,
            idle_timeout: idle_timeout?,
        })
    }

    /// `[[providers]]`: at least one, names unique.
    fn providers(&mut self, raw: &[RawProvider]) -> Vec<Option<Provider>> {
        if raw.is_empty() {
            self.error(
                "providers",
                "at least one [[providers]] entry is required, e.g. name = \"openai\", \
                 base_url = \"https://api.openai.com/v1\"",
            );
        }
        let names: Vec<Option<&String>> = raw.iter().map(|p| p.name.as_ref()).collect();
        raw.iter()
            .enumerate()
            .map(|(i, provider)| {
                let at = format!("providers[{i}]");
                let name = self.unique_name(&at, &names, i);
                let provider = self.provider(&at, provider);
                Some(Provider {
                    name: name?,
                    ..provider?
                })
            })
            .collect()
    }

    /// One provider, except its name (checked by the caller).
    fn provider(&mut self, at: &str, raw: &RawProvider) -> Option<Provider> {
        let kind = match raw.kind.as_deref() {
            None => Some(ProviderKind::OpenAi),
            Some(text) => {
                let kind = ProviderKind::parse(text);
                if kind.is_none() {
                    let known: Vec<&str> = ProviderKind::ALL.iter().map(|(n, _)| *n).collect();
                    self.error(
                        format!("{at}.kind"),
                        format!(
                            "unknown kind \"{text}\"; expected one of: {}",
                            known.join(", ")
                        ),
                    );
                }
                kind
            }
        };
        let endpoints = self.endpoints(at, raw);
        let health = self.health(&format!("{at}.health"), &raw.health);
        let primary = self.upstream_key(at, raw);
        let keys = self.key_pool(at, raw, primary);
        let key_selection = match raw.key_selection.as_deref() {
            None => Some(KeySelection::default()),
            Some(text) => {
                let selection = KeySelection::parse(text);
                if selection.is_none() {
                    self.error(
                        format!("{at}.key_selection"),
                        format!(
                            "unknown value \"{text}\"; expected \"round_robin\" or \"least_in_flight\""
                        ),
                    );
                }
                selection
            }
        };
        let key_cooldown = self.millis(
            &format!("{at}.key_cooldown_ms"),
            raw.key_cooldown_ms,
            60_000,
        );
        let connect_timeout = self.millis(
            &format!("{at}.connect_timeout_ms"),
            raw.connect_timeout_ms,
            5_000,
        );
        let first_byte_timeout = self.millis(
            &format!("{at}.first_byte_timeout_ms"),
            raw.first_byte_timeout_ms,
            60_000,
        );
        let idle_timeout = self.millis(
            &format!("{at}.idle_timeout_ms"),
            raw.idle_timeout_ms,
            60_000,
        );
        let ca_file = match &raw.ca_file {
            None => Some(None),
            Some(path) => self.readable_file(&format!("{at}.ca_file"), path).map(Some),
        };
        let max_idle_connections = self.size(
            &format!("{at}.max_idle_connections"),
            raw.max_idle_connections,
            64,
            (0, MAX_IDLE_CONNECTIONS),
        );
        let max_concurrency = match raw.max_concurrency {
            None => Some(None),
            Some(count) => {
                let count = NonZeroU64::new(count);
                if count.is_none() {
                    self.error(
                        format!("{at}.max_concurrency"),
                        "must be > 0; remove the key for no limit",
                    );
                }
                count.map(Some)
            }
        };

        if let Some(endpoints) = &endpoints {
            let has_keys = keys.as_ref().is_some_and(|keys| !keys.is_empty());
            self.plain_http(
                at,
                raw,
                endpoints,
                has_keys,
                matches!(ca_file, Some(Some(_))),
            );
        }

        let api_version = match (kind, &raw.api_version) {
            (_, Some(v)) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) => {
                self.error(
                    format!("{at}.api_version"),
                    "must be a non-empty version string without spaces",
                );
                None
            }
            (_, Some(v)) => Some(v.clone()),
            (Some(ProviderKind::AzureOpenAi), None) => Some("2024-10-21".to_string()),
            (Some(ProviderKind::Anthropic), None) => Some("2023-06-01".to_string()),
            _ => Some(String::new()),
        };
        Some(Provider {
            name: String::new(),
            api_version: api_version?,
            kind: kind?,
            base_url: endpoints.as_ref()?.first()?.clone(),
            endpoints: endpoints?,
            health: health?,
            api_key: keys.as_ref()?.first().map(|k| k.key.clone()),
            keys: keys?,
            key_selection: key_selection?,
            key_cooldown: key_cooldown?,
            max_concurrency: max_concurrency?,
            connect_timeout: connect_timeout?,
            first_byte_timeout: first_byte_timeout?,
            idle_timeout: idle_timeout?,
            ca_file: ca_file?,
            max_idle_connections: max_idle_connections?,
        })
    }

    /// A provider's endpoints: `base_url` alone or the `base_urls` list,
    /// exactly one of the two; at least one URL, no two equal.
    fn endpoints(&mut self, at: &str, raw: &RawProvider) -> Option<Vec<BaseUrl>> {
        match (&raw.base_url, &raw.base_urls) {
            (None, None) => {
                self.error(
                    format!("{at}.base_url"),
                    "missing; set it, e.g. base_url = \"https://api.openai.com/v1\", or list \
                     several endpoints in base_urls",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(
                    format!("{at}.base_urls"),
                    "set either base_url or base_urls, not both",
                );
                None
            }
            (Some(text), None) => self
                .base_url(&format!("{at}.base_url"), text)
                .map(|url| vec![url]),
            (None, Some(list)) => {
                if list.is_empty() {
                    self.error(
                        format!("{at}.base_urls"),
                        "an empty list names no endpoint; list at least one URL",
                    );
                    return None;
                }
                let mut ok = true;
                let mut urls: Vec<BaseUrl> = Vec::with_capacity(list.len());
                for (j, text) in list.iter().enumerate() {
                    let path = format!("{at}.base_urls[{j}]");
                    let Some(url) = self.base_url(&path, text) else {
                        ok = false;
                        continue;
                    };
                    // Compared parsed, so "http://h:80/v1/" repeats "http://h/v1".
                    if let Some(k) = list
                        .iter()
                        .take(j)
                        .position(|other| BaseUrl::parse(other).as_ref() == Ok(&url))
                    {
                        self.error(path, format!("same endpoint as {at}.base_urls[{k}]"));
                        ok = false;
                        continue;
                    }
                    urls.push(url);
                }
                ok.then_some(urls)
            }
        }
    }

    /// One base URL at `path`.
    fn base_url(&mut self, path: &str, text: &str) -> Option<BaseUrl> {
        match BaseUrl::parse(text) {
            Ok(url) => Some(url),
            Err(e) => {
                self.error(path, format!("{e} (got \"{text}\")"));
                None
            }
        }
    }

    /// Warns about endpoints on plain http: the key crosses the network in
    /// clear to a non-loopback one, and a `ca_file` is of no use when no
    /// endpoint uses TLS.
    fn plain_http(
        &mut self,
        at: &str,
        raw: &RawProvider,
        endpoints: &[BaseUrl],
        has_keys: bool,
        has_ca_file: bool,
    ) {
        let remote_plain = |url: &BaseUrl| !url.tls && !url.is_loopback();
        if has_keys {
            for (j, url) in endpoints.iter().enumerate() {
                if remote_plain(url) {
                    let path = if raw.base_urls.is_some() {
                        format!("{at}.base_urls[{j}]")
                    } else {
                        format!("{at}.base_url")
                    };
                    self.warn(
                        &path,
                        "the upstream key is sent over plain http to a non-loopback host; use https",
                    );
                }
            }
        }
        if has_ca_file && endpoints.iter().all(|u| !u.tls) && endpoints.iter().any(remote_plain) {
            let message = if raw.base_urls.is_some() {
                "unused: every endpoint in base_urls is plain http"
            } else {
                "unused: base_url is plain http"
            };
            self.warn(&format!("{at}.ca_file"), message);
        }
    }

    /// A provider's `health` table.
    fn health(&mut self, at: &str, raw: &RawHealth) -> Option<Health> {
        let defaults = Health::default();
        let failures_to_eject = self
            .in_range(
                &format!("{at}.failures_to_eject"),
                raw.failures_to_eject
                    .unwrap_or(u64::from(defaults.failures_to_eject)),
                FAILURES_TO_EJECT.0,
                FAILURES_TO_EJECT.1,
            )
            .and_then(|n| u32::try_from(n).ok());
        let base = self.in_range(
            &format!("{at}.base_ejection_ms"),
            raw.base_ejection_ms.unwrap_or(1_000),
            EJECTION_MS.0,
            EJECTION_MS.1,
        );
        let max = self.in_range(
            &format!("{at}.max_ejection_ms"),
            raw.max_ejection_ms.unwrap_or(60_000),
            EJECTION_MS.0,
            EJECTION_MS.1,
        );
        let max = match (base, max) {
            (Some(base), Some(max)) if max < base => {
                self.error(
                    format!("{at}.max_ejection_ms"),
                    format!("{max} is less than {at}.base_ejection_ms ({base})"),
                );
                None
            }
            (_, max) => max,
        };
        let check = match (&raw.check_path, raw.check_interval_ms) {
            (None, None) => Some(None),
            (Some(_), None) => {
                self.error(
                    format!("{at}.check_interval_ms"),
                    format!(
                        "missing; an active check needs check_path and check_interval_ms \
                         ({}..={}), or neither",
                        CHECK_INTERVAL_MS.0, CHECK_INTERVAL_MS.1
                    ),
                );
                None
            }
            (None, Some(_)) => {
                self.error(
                    format!("{at}.check_path"),
                    "missing; an active check needs check_path (e.g. \"/models\") and \
                     check_interval_ms, or neither",
                );
                None
            }
            (Some(path), Some(ms)) => {
                let path = if path.starts_with('/') && is_header_token(path) && !path.contains('#')
                {
                    Some(path.clone())
                } else {
                    self.error(
                        format!("{at}.check_path"),
                        format!(
                            "\"{path}\" is not a request path: start it with \"/\" and use only \
                             visible ASCII without \"#\", e.g. \"/models\""
                        ),
                    );
                    None
                };
                let interval = self.in_range(
                    &format!("{at}.check_interval_ms"),
                    ms,
                    CHECK_INTERVAL_MS.0,
                    CHECK_INTERVAL_MS.1,
                );
                Some(Some(ActiveCheck {
                    path: path?,
                    interval: Duration::from_millis(interval?),
                }))
            }
        };
        Some(Health {
            failures_to_eject: failures_to_eject?,
            base_ejection: Duration::from_millis(base?),
            max_ejection: Duration::from_millis(max?),
            check: check?,
        })
    }

    /// A provider's key: inline `api_key`, or read from `key_env`, or none.
    fn upstream_key(&mut self, at: &str, raw: &RawProvider) -> Option<Option<String>> {
        let (key, path) = match (&raw.api_key, &raw.key_env) {
            (None, None) => return Some(None),
            (Some(_), Some(_)) => {
                self.error(
                    format!("{at}.key_env"),
                    "set either api_key or key_env, not both",
                );
                return None;
            }
            (Some(key), None) => (key.clone(), format!("{at}.api_key")),
            (None, Some(var)) => {
                let path = format!("{at}.key_env");
                (self.env_value(&path, var, "api_key")?, path)
            }
        };
        self.key_text(&path, key, "remove api_key/key_env to send no key")
            .map(Some)
    }

    /// An upstream key read from `path`: non-empty visible ASCII. `remedy`
    /// says what to do about an empty one.
    fn key_text(&mut self, path: &str, key: String, remedy: &str) -> Option<String> {
        if key.is_empty() {
            self.error(path, format!("the key is empty; {remedy}"));
            return None;
        }
        if !is_header_token(&key) {
            // It becomes `Authorization: Bearer <key>`: a newline would split
            // the header, so only visible ASCII is accepted.
            self.error(
                path,
                "the key may contain only visible ASCII characters (no spaces or newlines)",
            );
            return None;
        }
        Some(key)
    }

    /// A provider's key pool: `primary` (from `api_key`/`key_env`, already
    /// checked; `None` if that failed) with id "primary", then `api_keys`.
    /// Ids are unique and no key appears twice.
    fn key_pool(
        &mut self,
        at: &str,
        raw: &RawProvider,
        primary: Option<Option<String>>,
    ) -> Option<Vec<UpstreamKey>> {
        let mut ok = primary.is_some();
        let mut keys = Vec::with_capacity(raw.api_keys.len() + 1);
        // Path of each key in `keys`, for "same key as" errors.
        let mut sources = Vec::with_capacity(raw.api_keys.len() + 1);
        if let Some(Some(key)) = primary {
            sources.push(if raw.api_key.is_some() {
                format!("{at}.api_key")
            } else {
                format!("{at}.key_env")
            });
            keys.push(UpstreamKey {
                id: UpstreamKey::PRIMARY_ID.to_string(),
                key,
            });
        }
        let has_primary = raw.api_key.is_some() || raw.key_env.is_some();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (j, entry) in raw.api_keys.iter().enumerate() {
            let key_at = format!("{at}.api_keys[{j}]");
            let id = self.upstream_key_id(&key_at, entry, has_primary);
            if let Some(id) = &id {
                if let Some(first) = ids.insert(id, j) {
                    self.error(
                        format!("{key_at}.id"),
                        format!("duplicate id \"{id}\" (also {at}.api_keys[{first}])"),
                    );
                    ok = false;
                }
            }
            let key = self.pool_key(&key_at, entry);
            if let Some(key) = &key {
                if let Some(k) = keys.iter().position(|other| other.key == *key) {
                    let first = sources.get(k).map_or("", String::as_str);
                    self.error(
                        key_at.clone(),
                        format!("same key as {first}; every key of a pool must differ"),
                    );
                    ok = false;
                    continue;
                }
            }
            match (id, key) {
                (Some(id), Some(key)) => {
                    keys.push(UpstreamKey {
                        id: id.clone(),
                        key,
                    });
                    sources.push(key_at);
                }
                _ => ok = false,
            }
        }
        ok.then_some(keys)
    }

    /// The `id` of an `api_keys` entry: present, non-blank, and not
    /// "primary" when `api_key`/`key_env` already uses that id.
    fn upstream_key_id<'a>(
        &mut self,
        at: &str,
        raw: &'a RawUpstreamKey,
        has_primary: bool,
    ) -> Option<&'a String> {
        let path = format!("{at}.id");
        match &raw.id {
            None => {
                self.error(
                    path,
                    "missing; every key needs an id for logs and metrics, e.g. id = \"k2\"",
                );
                None
            }
            Some(id) if id.trim().is_empty() => {
                self.error(path, "must not be empty");
                None
            }
            Some(id) if has_primary && id == UpstreamKey::PRIMARY_ID => {
                self.error(
                    path,
                    "\"primary\" is the id of the key from api_key/key_env; choose another",
                );
                None
            }
            Some(id) => Some(id),
        }
    }

    /// The key of an `api_keys` entry, from `key_env` or (with a warning)
    /// `key`; exactly one of the two.
    fn pool_key(&mut self, at: &str, raw: &RawUpstreamKey) -> Option<String> {
        match (&raw.key_env, &raw.key) {
            (None, None) => {
                self.error(at, "set key_env = \"VAR\" (or key = \"<key>\" for testing)");
                None
            }
            (Some(_), Some(_)) => {
                self.error(at, "set either key_env or key, not both");
                None
            }
            (Some(var), None) => {
                let path = format!("{at}.key_env");
                let key = self.env_value(&path, var, "key")?;
                self.key_text(&path, key, "remove this entry")
            }
            (None, Some(key)) => {
                let key = self.key_text(&format!("{at}.key"), key.clone(), "remove this entry")?;
                self.warn(at, "plain-text key in the config file; use key_env instead");
                Some(key)
            }
        }
    }

    /// `[[models]]`: at least one, names and exact matches unique,
    /// providers known, templates referring only to groups their `match`
    /// has.
    fn models(&mut self, raw: &[RawModel], providers: &[RawProvider]) -> Vec<Option<Model>> {
        if raw.is_empty() {
            self.error(
                "models",
                "at least one [[models]] entry is required, e.g. name = \"gpt-4o-mini\", \
                 provider = \"openai\"",
            );
        }
        let names: Vec<Option<&String>> = raw.iter().map(|m| m.name.as_ref()).collect();
        // Exact requested name -> the first entry serving it.
        let mut exact: HashMap<String, usize> = HashMap::new();
        raw.iter()
            .enumerate()
            .map(|(i, model)| {
                let at = format!("models[{i}]");
                let name = self.unique_name(&at, &names, i);
                let matcher = self.model_match(&at, model, name.as_deref());
                if let Some(ModelMatch::Exact(served)) = &matcher {
                    match exact.get(served) {
                        None => {
                            exact.insert(served.clone(), i);
                        }
                        // (Two entries without `match` and the same name
                        // never get here: the second has no name.)
                        Some(&first) => {
                            let key = if model.matcher.is_some() {
                                "match"
                            } else {
                                "name"
                            };
                            self.error(
                                format!("{at}.{key}"),
                                format!(
                                    "\"{served}\" is already served by models[{first}]; one \
                                     entry per exact name"
                                ),
                            );
                        }
                    }
                }
                let split = model.variants.is_some();
                let provider = if split {
                    if model.provider.is_some() {
                        self.error(
                            format!("{at}.provider"),
                            "set either provider or variants; with variants each variant \
                             names its provider",
                        );
                    }
                    None
                } else {
                    self.provider_index(&format!("{at}.provider"), &model.provider, providers)
                };
                let upstream_model = self.upstream_model(&at, model, matcher.as_ref());
                let variants = self.variants(
                    &at,
                    model,
                    matcher.as_ref(),
                    upstream_model.as_deref(),
                    providers,
                );
                let (sticky, variant_header) = self.split_keys(&at, model);
                let encoding = match model.encoding.as_deref() {
                    None => Some(Encoding::default()),
                    Some(text) => {
                        let encoding = Encoding::parse(text);
                        if encoding.is_none() {
                            let known: Vec<&str> =
                                Encoding::ALL.iter().map(|e| e.as_str()).collect();
                            self.error(
                                format!("{at}.encoding"),
                                format!(
                                    "unknown encoding \"{text}\"; expected one of: {}",
                                    known.join(", ")
                                ),
                            );
                        }
                        encoding
                    }
                };
                let price = match &model.price {
                    None => Some(None),
                    Some(price) => self.price(&format!("{at}.price"), price).map(Some),
                };
                let fallbacks = if split {
                    if !model.fallbacks.is_empty() {
                        self.error(
                            format!("{at}.fallbacks"),
                            "with variants, set fallbacks on each variant",
                        );
                    }
                    None
                } else {
                    self.fallbacks(
                        &at,
                        &model.fallbacks,
                        (provider, upstream_model.as_deref()),
                        matcher.as_ref(),
                        providers,
                    )
                };
                let fallback_on = match &model.fallback_on {
                    None => Some(FallbackOn::default()),
                    Some(list) => self.fallback_on(&format!("{at}.fallback_on"), list),
                };
                let degrade_to = match &model.degrade_to {
                    None => Some(None),
                    Some(target) => self
                        .target(
                            &format!("{at}.degrade_to"),
                            target,
                            upstream_model.as_deref(),
                            matcher.as_ref(),
                            providers,
                        )
                        .map(Some),
                };
                // A split's first variant stands in for the primary target,
                // so that code unaware of variants still has one.
                let (provider, upstream_model, fallbacks) = match &variants {
                    Some(variants) if split => {
                        let first = variants.first();
                        let clean = model.provider.is_none() && model.fallbacks.is_empty();
                        (
                            first.filter(|_| clean).map(|v| v.target.provider),
                            first.map(|v| v.target.upstream_model.clone()),
                            first.map(|v| v.fallbacks.clone()),
                        )
                    }
                    _ => (provider, upstream_model, fallbacks),
                };
                Some(Model {
                    name: name?,
                    matcher: matcher?,
                    provider: provider?,
                    upstream_model: upstream_model?,
                    encoding: encoding?,
                    price: price?,
                    fallbacks: fallbacks?,
                    fallback_on: fallback_on?,
                    degrade_to: degrade_to?,
                    variants: variants?,
                    sticky: sticky?,
                    variant_header: variant_header?,
                })
            })
            .collect()
    }

    /// A model's `match`, by default its exact `name` (`None` when the name
    /// failed, which has its error already).
    fn model_match(&mut self, at: &str, raw: &RawModel, name: Option<&str>) -> Option<ModelMatch> {
        let Some(text) = &raw.matcher else {
            return name.map(|name| ModelMatch::Exact(name.to_string()));
        };
        match ModelMatch::parse(text) {
            Ok(matcher) => Some(matcher),
            Err(e) => {
                self.error(format!("{at}.match"), e);
                None
            }
        }
    }

    /// A model's `upstream_model` template, by default the requested name:
    /// the exact name served, or `$0` for a pattern.
    fn upstream_model(
        &mut self,
        at: &str,
        raw: &RawModel,
        matcher: Option<&ModelMatch>,
    ) -> Option<String> {
        match (&raw.upstream_model, matcher) {
            (Some(upstream), _) if upstream.trim().is_empty() => {
                self.error(
                    format!("{at}.upstream_model"),
                    "must not be empty; remove it to send the public name",
                );
                None
            }
            (Some(upstream), _) => {
                self.template(&format!("{at}.upstream_model"), upstream, matcher)
            }
            // Stored as written, not as "$0", for code that sends
            // `upstream_model` without expanding it; so it must not read as
            // a template.
            (None, Some(ModelMatch::Exact(served))) if served.contains(['$', '*']) => {
                let key = if raw.matcher.is_some() {
                    "match"
                } else {
                    "name"
                };
                self.error(
                    format!("{at}.{key}"),
                    format!(
                        "\"{served}\" holds \"$\" or \"*\", which upstream model names use for \
                         captures; set upstream_model (or match = \"{served}\" for a wildcard)"
                    ),
                );
                None
            }
            (None, Some(ModelMatch::Exact(served))) => Some(served.clone()),
            (None, Some(_)) => Some("$0".to_string()),
            // The name or `match` failed and has its error.
            (None, None) => None,
        }
    }

    /// A model's `variants`; empty when it has none. Names unique, weights
    /// in range and not all 0, providers known.
    fn variants(
        &mut self,
        at: &str,
        raw: &RawModel,
        matcher: Option<&ModelMatch>,
        upstream_model: Option<&str>,
        providers: &[RawProvider],
    ) -> Option<Vec<Variant>> {
        let Some(list) = &raw.variants else {
            return Some(Vec::new());
        };
        let list_at = format!("{at}.variants");
        if list.is_empty() {
            self.error(
                list_at,
                "an empty list makes no split; list at least one variant or remove the key",
            );
            return None;
        }
        let names: Vec<Option<&String>> = list.iter().map(|v| v.name.as_ref()).collect();
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for (j, variant) in list.iter().enumerate() {
            let variant_at = format!("{list_at}[{j}]");
            let name = match self.unique_name(&variant_at, &names, j) {
                Some(name) if !is_label(&name) => {
                    self.error(
                        format!("{variant_at}.name"),
                        format!(
                            "\"{name}\" is not a variant name: 1 to 64 of A-Z a-z 0-9 . _ - \
                             (it goes into metric labels and the variant header)"
                        ),
                    );
                    None
                }
                name => name,
            };
            let weight = match variant.weight {
                None => {
                    self.error(
                        format!("{variant_at}.weight"),
                        format!("missing; set a share of requests, 0..={MAX_WEIGHT}"),
                    );
                    None
                }
                Some(weight) => self
                    .in_range(&format!("{variant_at}.weight"), weight, 0, MAX_WEIGHT)
                    .and_then(|w| u32::try_from(w).ok()),
            };
            let provider = self.provider_index(
                &format!("{variant_at}.provider"),
                &variant.provider,
                providers,
            );
            let model = match &variant.model {
                Some(model) if model.trim().is_empty() => {
                    self.error(
                        format!("{variant_at}.model"),
                        "must not be empty; remove it to send the model's upstream_model",
                    );
                    None
                }
                Some(model) => self.template(&format!("{variant_at}.model"), model, matcher),
                None => upstream_model.map(str::to_string),
            };
            let fallbacks = self.fallbacks(
                &variant_at,
                &variant.fallbacks,
                (provider, model.as_deref()),
                matcher,
                providers,
            );
            match (name, weight, provider, model, fallbacks) {
                (Some(name), Some(weight), Some(provider), Some(model), Some(fallbacks)) => {
                    out.push(Variant {
                        name,
                        weight,
                        target: Target {
                            provider,
                            upstream_model: model,
                        },
                        fallbacks,
                    });
                }
                _ => ok = false,
            }
        }
        if list.iter().all(|v| v.weight == Some(0)) {
            self.error(
                list_at,
                "every weight is 0; give at least one variant a weight > 0",
            );
            ok = false;
        }
        ok.then_some(out)
    }

    /// A model's `sticky` and `variant_header`; both only mean something
    /// with `variants`, and warn without.
    fn split_keys(&mut self, at: &str, raw: &RawModel) -> (Option<Sticky>, Option<Option<String>>) {
        let sticky = match raw.sticky.as_deref() {
            None => Some(Sticky::default()),
            Some(text) => {
                let sticky = Sticky::parse(text);
                if sticky.is_none() {
                    self.error(
                        format!("{at}.sticky"),
                        format!(
                            "unknown value \"{text}\"; expected \"consumer\", \"none\" or \
                             \"header:<name>\" such as \"header:x-session-id\""
                        ),
                    );
                }
                sticky
            }
        };
        let variant_header = match &raw.variant_header {
            None => Some(None),
            Some(header) if is_header_name(header) => Some(Some(header.to_ascii_lowercase())),
            Some(header) => {
                self.error(
                    format!("{at}.variant_header"),
                    format!(
                        "\"{header}\" is not a header name: letters, digits and \
                         !#$%&'*+-.^_`|~ only, e.g. \"x-sluice-variant\""
                    ),
                );
                None
            }
        };
        if raw.variants.is_none() {
            for (key, set) in [
                ("sticky", raw.sticky.is_some()),
                ("variant_header", raw.variant_header.is_some()),
            ] {
                if set {
                    self.warn(&format!("{at}.{key}"), "has no effect without variants");
                }
            }
        }
        (sticky, variant_header)
    }

    /// An upstream model template at `path`: every group it refers to
    /// exists in `matcher` (`None` when the model's `match` failed; nothing
    /// is checked then). Named groups become numbers, so that `expand`
    /// needs only the captures.
    fn template(&mut self, path: &str, text: &str, matcher: Option<&ModelMatch>) -> Option<String> {
        let mut out = String::with_capacity(text.len());
        let mut ok = true;
        let kind = match matcher {
            Some(ModelMatch::Regex(_)) => "the pattern",
            Some(ModelMatch::Wildcard(_)) => "a wildcard",
            _ => "an exact name",
        };
        for piece in pieces(text) {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Dollar => out.push_str("$$"),
                Piece::Unclosed(_) => {
                    self.error(
                        path,
                        "unclosed \"${\"; write ${1} or ${name}, or $$ for a literal \"$\"",
                    );
                    ok = false;
                }
                Piece::Group(index, raw) => {
                    out.push_str(raw);
                    let Some(matcher) = matcher else { continue };
                    let groups = matcher.groups();
                    if index > groups {
                        let message = if matches!(matcher, ModelMatch::Regex(_)) {
                            format!(
                                "\"{raw}\" refers to group {index}, but the pattern has {groups}"
                            )
                        } else {
                            format!(
                                "\"{raw}\" refers to group {index}, but {kind} has no groups; use \
                                 $0 or * for the requested name, or a re: pattern"
                            )
                        };
                        self.error(path, message);
                        ok = false;
                    }
                }
                Piece::Name(name) => {
                    let index = match matcher {
                        Some(ModelMatch::Regex(regex)) => {
                            regex.capture_names().position(|n| n == Some(name))
                        }
                        _ => None,
                    };
                    match (index, matcher) {
                        (Some(index), _) => out.push_str(&format!("${{{index}}}")),
                        (None, None) => out.push_str(&format!("${{{name}}}")),
                        (None, Some(_)) => {
                            self.error(
                                path,
                                format!("\"${{{name}}}\": {kind} has no group named \"{name}\""),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        ok.then_some(out)
    }

    /// The index of the provider named at `path` (a model's `provider`, or
    /// a target's). Looked up among the raw names, so a provider with other
    /// errors still resolves.
    fn provider_index(
        &mut self,
        path: &str,
        wanted: &Option<String>,
        providers: &[RawProvider],
    ) -> Option<usize> {
        let Some(wanted) = wanted else {
            self.error(path, "missing; name one of the [[providers]]");
            return None;
        };
        let index = providers
            .iter()
            .position(|p| p.name.as_ref() == Some(wanted));
        if index.is_none() {
            let mut known: Vec<&str> = Vec::new();
            for name in providers.iter().filter_map(|p| p.name.as_deref()) {
                if !known.contains(&name) {
                    known.push(name);
                }
            }
            self.error(
                path,
                format!(
                    "unknown provider \"{wanted}\"; configured: {}",
                    quoted_list(&known)
                ),
            );
        }
        index
    }

    /// The `fallbacks` of a model or variant at `at`, each checked by
    /// `target`. A target equal to the `primary` one (provider,
    /// upstream model) or to an earlier fallback gets a warning: it adds
    /// nothing that `[retry]` does not.
    fn fallbacks(
        &mut self,
        at: &str,
        raw: &[RawTarget],
        primary: (Option<usize>, Option<&str>),
        matcher: Option<&ModelMatch>,
        providers: &[RawProvider],
    ) -> Option<Vec<Target>> {
        let (provider, upstream_model) = primary;
        let mut out = Vec::with_capacity(raw.len());
        let mut ok = true;
        for (j, target) in raw.iter().enumerate() {
            let target_at = format!("{at}.fallbacks[{j}]");
            let Some(target) = self.target(&target_at, target, upstream_model, matcher, providers)
            else {
                ok = false;
                continue;
            };
            let same = |p: usize, m: &str| target.provider == p && target.upstream_model == m;
            let earlier = out
                .iter()
                .position(|t: &Target| same(t.provider, &t.upstream_model));
            let repeats = match (earlier, provider, upstream_model) {
                (Some(k), _, _) => Some(format!("{at}.fallbacks[{k}]")),
                (None, Some(p), Some(m)) if same(p, m) => {
                    Some(format!("the primary target of {at}"))
                }
                _ => None,
            };
            if let Some(repeats) = repeats {
                self.warn(
                    &target_at,
                    &format!(
                        "same provider and model as {repeats}; retry.max_attempts already \
                         retries a target, so this entry only uses up attempts"
                    ),
                );
            }
            out.push(target);
        }
        ok.then_some(out)
    }

    /// One fallback or `degrade_to` target at `at`: a known provider and a
    /// non-empty model template, by default `upstream_model` (`None` when
    /// the model's own `upstream_model` failed, which has its error
    /// already).
    fn target(
        &mut self,
        at: &str,
        raw: &RawTarget,
        upstream_model: Option<&str>,
        matcher: Option<&ModelMatch>,
        providers: &[RawProvider],
    ) -> Option<Target> {
        let provider = self.provider_index(&format!("{at}.provider"), &raw.provider, providers);
        let model = match &raw.model {
            Some(model) if model.trim().is_empty() => {
                self.error(
                    format!("{at}.model"),
                    "must not be empty; remove it to send the model's upstream_model",
                );
                None
            }
            Some(model) => self.template(&format!("{at}.model"), model, matcher),
            None => upstream_model.map(str::to_string),
        };
        Some(Target {
            provider: provider?,
            upstream_model: model?,
        })
    }

    /// A model's `fallback_on` list; each entry a status code 400..=599, a
    /// class (`4xx`, `5xx`), `connect` or `timeout`. An empty list is valid:
    /// then only unavailable targets (circuit open, provider full) are
    /// skipped.
    fn fallback_on(&mut self, at: &str, raw: &[String]) -> Option<FallbackOn> {
        const EXPECTED: &str = "expected a status code 400..=599 such as \"429\", \"4xx\", \
                                \"5xx\", \"connect\" or \"timeout\"";
        let mut on = FallbackOn {
            statuses: Vec::new(),
            connect: false,
            timeout: false,
        };
        let mut ok = true;
        for (j, entry) in raw.iter().enumerate() {
            let path = format!("{at}[{j}]");
            let status = match entry.as_str() {
                "connect" => {
                    on.connect = true;
                    continue;
                }
                "timeout" => {
                    on.timeout = true;
                    continue;
                }
                "4xx" => StatusMatch::Class(4),
                "5xx" => StatusMatch::Class(5),
                code if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
                    match code.parse::<u16>() {
                        Ok(code) if (400..=599).contains(&code) => StatusMatch::Code(code),
                        _ => {
                            self.error(
                                path,
                                format!("\"{code}\" is not an error status; {EXPECTED}"),
                            );
                            ok = false;
                            continue;
                        }
                    }
                }
                other => {
                    self.error(path, format!("unknown entry \"{other}\"; {EXPECTED}"));
                    ok = false;
                    continue;
                }
            };
            if !on.statuses.contains(&status) {
                on.statuses.push(status);
            }
        }
        ok.then_some(on)
    }

    /// `[retry]`.
    fn retry(&mut self, raw: &RawRetry) -> Option<Retry> {
        let max_attempts = self
            .in_range(
                "retry.max_attempts",
                raw.max_attempts.unwrap_or(3),
                MAX_ATTEMPTS.0,
                MAX_ATTEMPTS.1,
            )
            .and_then(|n| u32::try_from(n).ok());
        let budget_ratio = raw.budget_ratio.unwrap_or(0.2);
        // `contains` is false for NaN.
        let budget_ratio = if (0.0..=1.0).contains(&budget_ratio) {
            Some(budget_ratio)
        } else {
            self.error(
                "retry.budget_ratio",
                format!("{budget_ratio} is out of range 0..=1 (a share of requests)"),
            );
            None
        };
        let backoff_base = self.in_range(
            "retry.backoff_base_ms",
            raw.backoff_base_ms.unwrap_or(50),
            BACKOFF_MS.0,
            BACKOFF_MS.1,
        );
        let backoff_max = self.in_range(
            "retry.backoff_max_ms",
            raw.backoff_max_ms.unwrap_or(2_000),
            BACKOFF_MS.0,
            BACKOFF_MS.1,
        );
        let backoff_max = match (backoff_base, backoff_max) {
            (Some(base), Some(max)) if max < base => {
                self.error(
                    "retry.backoff_max_ms",
                    format!("{max} is less than retry.backoff_base_ms ({base})"),
                );
                None
            }
            (_, max) => max,
        };
        Some(Retry {
            max_attempts: max_attempts?,
            budget_ratio: budget_ratio?,
            backoff_base: Duration::from_millis(backoff_base?),
            backoff_max: Duration::from_millis(backoff_max?),
        })
    }

    /// `[[consumers]]`: names unique, keys valid and never shared, allowed
    /// models known, limits merged with `defaults` (`None` when
    /// `[quota.defaults]` had errors).
    fn consumers(
        &mut self,
        raw: &[RawConsumer],
        models: &[RawModel],
        defaults: Option<&LimitSet>,
        quota: &RawQuota,
    ) -> Vec<Option<Consumer>> {
        let names: Vec<Option<&String>> = raw.iter().map(|c| c.name.as_ref()).collect();
        // Hash -> path of the key that first used it.
        let mut owners: HashMap<[u8; 32], String> = HashMap::new();
        raw.iter()
            .enumerate()
            .map(|(i, consumer)| {
                let at = format!("consumers[{i}]");
                let name = self.unique_name(&at, &names, i);
                let keys = self.consumer_keys(&at, name.as_deref(), &consumer.keys, &mut owners);
                let allowed_models = match &consumer.allowed_models {
                    None => Some(None),
                    Some(list) => self.allowed_models(&at, list, models).map(Some),
                };
                let balance = match consumer.balance {
                    Some(balance) if balance < 0 => {
                        self.error(
                            format!("{at}.balance"),
                            format!("{balance} is negative; a starting token balance is >= 0"),
                        );
                        None
                    }
                    balance => Some(balance),
                };
                let limits = self.consumer_limits(&at, consumer, defaults, &quota.defaults);
                let model_limits = self.model_limits(&at, consumer, models);
                if let Some(limits) = &limits {
                    self.unpriced_budget(&at, consumer, limits, models);
                }
                let mut networks = Vec::new();
                for (j, net) in consumer.networks.iter().enumerate() {
                    match crate::ebpf::parse_net(net) {
                        Ok(n) => networks.push(n),
                        Err(e) => self.error(format!("{at}.networks[{j}]"), e),
                    }
                }
                Some(Consumer {
                    networks,
                    name: name?,
                    keys: keys?,
                    allowed_models: allowed_models?,
                    limits: limits?,
                    model_limits: model_limits?,
                    balance: balance?,
                })
            })
            .collect()
    }

    /// A consumer's `keys`: at least one; each a sha256 or a plain key.
    fn consumer_keys(
        &mut self,
        at: &str,
        consumer: Option<&str>,
        raw: &[RawKey],
        owners: &mut HashMap<[u8; 32], String>,
    ) -> Option<Vec<ApiKey>> {
        if raw.is_empty() {
            self.error(
                format!("{at}.keys"),
                "at least one key is required, e.g. keys = [{ sha256 = \"<64 hex digits>\" }]",
            );
            return None;
        }
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut keys = Vec::with_capacity(raw.len());
        let mut ok = true;
        for (k, key) in raw.iter().enumerate() {
            let key_at = format!("{at}.keys[{k}]");
            let id = match &key.id {
                Some(id) if id.trim().is_empty() => {
                    self.error(
                        format!("{key_at}.id"),
                        "must not be empty; remove it for the default",
                    );
                    None
                }
                Some(id) => Some(id.clone()),
                None => consumer.map(|name| format!("{name}#{k}")),
            };
            if let Some(id) = &key.id {
                if let Some(first) = ids.insert(id, k) {
                    self.error(
                        format!("{key_at}.id"),
                        format!("duplicate id \"{id}\" (also {at}.keys[{first}])"),
                    );
                }
            }
            let hash = self.key_hash(&key_at, key);
            if let Some(hash) = hash {
                if let Some(first) = owners.get(&hash) {
                    self.error(
                        key_at.clone(),
                        format!("same key as {first}; every key must be unique"),
                    );
                } else {
                    owners.insert(hash, key_at);
                }
            }
            match (id, hash) {
                (Some(id), Some(sha256)) => keys.push(ApiKey { id, sha256 }),
                _ => ok = false,
            }
        }
        // A missing consumer name leaves ids unset but has its own error.
        ok.then_some(keys)
    }

    /// The SHA-256 of one key entry, from `sha256` or by hashing `plain`.
    fn key_hash(&mut self, at: &str, raw: &RawKey) -> Option<[u8; 32]> {
        match (&raw.sha256, &raw.plain) {
            (None, None) => {
                self.error(
                    at,
                    "set sha256 = \"<64 hex digits>\" (or plain = \"<key>\" for testing)",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(at, "set either sha256 or plain, not both");
                None
            }
            (Some(hex_text), None) => {
                let mut hash = [0u8; 32];
                match hex::decode_to_slice(hex_text, &mut hash) {
                    Ok(()) => Some(hash),
                    Err(_) => {
                        self.error(
                            format!("{at}.sha256"),
                            format!(
                                "expected 64 hex digits (the SHA-256 of the key), got \"{hex_text}\""
                            ),
                        );
                        None
                    }
                }
            }
            (None, Some(plain)) => {
                if plain.is_empty() || !is_header_token(plain) {
                    self.error(
                        format!("{at}.plain"),
                        "a key must be non-empty visible ASCII (no spaces or newlines)",
                    );
                    return None;
                }
                self.warn(at, "plain-text key; store its sha256 instead");
                Some(sha256(plain))
            }
        }
    }

    /// A consumer's `allowed_models`: non-empty, each a configured model.
    fn allowed_models(
        &mut self,
        at: &str,
        list: &[String],
        models: &[RawModel],
    ) -> Option<Vec<String>> {
        if list.is_empty() {
            self.error(
                format!("{at}.allowed_models"),
                "an empty list allows no model; remove the key to allow every model",
            );
            return None;
        }
        let mut ok = true;
        for (j, wanted) in list.iter().enumerate() {
            if !models.iter().any(|m| m.name.as_ref() == Some(wanted)) {
                self.error(
                    format!("{at}.allowed_models[{j}]"),
                    format!("unknown model \"{wanted}\""),
                );
                ok = false;
            }
        }
        ok.then(|| list.to_vec())
    }

    /// A consumer's effective limits: `defaults`, each key replaced by its
    /// own `limits`, minus the names in `unlimited`.
    fn consumer_limits(
        &mut self,
        at: &str,
        raw: &RawConsumer,
        defaults: Option<&LimitSet>,
        raw_defaults: &RawLimitSet,
    ) -> Option<LimitSet> {
        let own = self.limit_set(&format!("{at}.limits"), &raw.limits, Scope::Consumer);
        let own_raw = raw.limits.entries();
        let default_raw = raw_defaults.entries();
        let mut exempt = Vec::with_capacity(raw.unlimited.len());
        let mut ok = true;
        for (j, name) in raw.unlimited.iter().enumerate() {
            let path = format!("{at}.unlimited[{j}]");
            let Some(i) = LimitSet::NAMES.iter().position(|n| n == name) else {
                self.error(
                    path,
                    format!(
                        "unknown limit \"{name}\"; expected one of: {}",
                        LimitSet::NAMES.join(", ")
                    ),
                );
                ok = false;
                continue;
            };
            if own_raw[i].is_set() {
                self.error(
                    path,
                    format!("\"{name}\" is also set in {at}.limits; keep one of the two"),
                );
                ok = false;
            } else if !default_raw[i].is_set() {
                self.warn(
                    &path,
                    &format!("quota.defaults sets no {name}, so this entry changes nothing"),
                );
            }
            exempt.push(i);
        }
        let mut merged = defaults?.to_array();
        for (slot, own) in merged.iter_mut().zip(own?.to_array()) {
            if own.is_some() {
                *slot = own;
            }
        }
        for i in exempt {
            merged[i] = None;
        }
        ok.then(|| LimitSet::from_array(merged))
    }

    /// A consumer's `model_limits`: each key a model it may use, each value
    /// a valid limit set. Sorted by model index.
    fn model_limits(
        &mut self,
        at: &str,
        raw: &RawConsumer,
        models: &[RawModel],
    ) -> Option<Vec<(usize, LimitSet)>> {
        let mut out = Vec::with_capacity(raw.model_limits.len());
        let mut ok = true;
        for (model, raw_set) in &raw.model_limits {
            let path = format!("{at}.model_limits.{}", path_key(model));
            let index = models.iter().position(|m| m.name.as_ref() == Some(model));
            let allowed = raw
                .allowed_models
                .as_ref()
                .is_none_or(|list| list.contains(model));
            match index {
                None => self.error(path.clone(), format!("unknown model \"{model}\"")),
                Some(_) if !allowed => self.error(
                    path.clone(),
                    format!(
                        "this consumer may not use \"{model}\"; add it to {at}.allowed_models \
                         or remove this entry"
                    ),
                ),
                Some(_) => {}
            }
            let set = self.limit_set(&path, raw_set, Scope::Model);
            if let Some(set) = &set {
                if set.is_empty() {
                    self.warn(&path, "sets no limit; remove it or add one");
                }
                let priced = index
                    .and_then(|i| models.get(i))
                    .is_some_and(|m| m.price.is_some());
                let budget =
                    set.budget_per_day_micros.is_some() || set.budget_per_month_micros.is_some();
                if budget && index.is_some() && !priced {
                    self.warn(
                        &path,
                        &format!("\"{model}\" has no price, so its budget is never spent; set models[].price"),
                    );
                }
            }
            match (index, set) {
                (Some(index), Some(set)) if allowed => out.push((index, set)),
                _ => ok = false,
            }
        }
        out.sort_by_key(|(index, _)| *index);
        ok.then_some(out)
    }

    /// Warns when a consumer with a budget may use a model without a price:
    /// those requests cost 0 and never count against the budget.
    fn unpriced_budget(
        &mut self,
        at: &str,
        raw: &RawConsumer,
        limits: &LimitSet,
        models: &[RawModel],
    ) {
        if limits.budget_per_day_micros.is_none() && limits.budget_per_month_micros.is_none() {
            return;
        }
        let unpriced: Vec<&str> = models
            .iter()
            .filter(|m| m.price.is_none())
            .filter_map(|m| m.name.as_deref())
            .filter(|name| {
                raw.allowed_models
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|a| a == name))
            })
            .collect();
        if !unpriced.is_empty() {
            self.warn(
                at,
                &format!(
                    "has a budget but may use unpriced model(s) {}: their requests cost 0 and \
                     never count against it; set models[].price",
                    quoted_list(&unpriced)
                ),
            );
        }
    }

    /// `[audit]`.
    fn audit(&mut self, raw: &RawAudit) -> Option<Audit> {
        let path = match &raw.path {
            None => Some(PathBuf::from("sluice-audit.jsonl")),
            Some(path) if path.as_os_str().is_empty() => {
                self.error("audit.path", "must not be empty");
                None
            }
            Some(path) => Some(path.clone()),
        };
        let flush_interval = self.millis("audit.flush_interval_ms", raw.flush_interval_ms, 1_000);
        Some(Audit {
            path: path?,
            flush_interval: flush_interval?,
        })
    }

    /// `[quota]`, with `[quota.defaults]` already checked into `defaults`.
    fn quota(&mut self, raw: &RawQuota, defaults: Option<LimitSet>) -> Option<Quota> {
        let state_path = match &raw.state_path {
            None => Some(PathBuf::from("sluice-quota.redb")),
            Some(path) if path.as_os_str().is_empty() => {
                self.warn(
                    "quota.state_path",
                    "empty: balances, spend and rate windows live in memory only and are \
                     lost on restart",
                );
                None
            }
            Some(path) => Some(path.clone()),
        };
        let flush_interval = self
            .in_range(
                "quota.flush_interval_ms",
                raw.flush_interval_ms.unwrap_or(1_000),
                FLUSH_INTERVAL_MS.0,
                FLUSH_INTERVAL_MS.1,
            )
            .map(Duration::from_millis);
        let default_max_tokens = match raw.default_max_tokens {
            None => Some(4096),
            Some(0) => {
                self.error("quota.default_max_tokens", "must be > 0");
                None
            }
            Some(tokens) => Some(tokens),
        };
        let completion_weight = raw.completion_weight.unwrap_or(1.0);
        // Written so that NaN fails too.
        let completion_weight = if completion_weight > 0.0
            && completion_weight <= MAX_COMPLETION_WEIGHT
        {
            Some(completion_weight)
        } else {
            self.error(
                "quota.completion_weight",
                format!("{completion_weight} is out of range: 0 < completion_weight <= {MAX_COMPLETION_WEIGHT}"),
            );
            None
        };
        let currency = match raw.currency.as_deref() {
            None => Some("USD".to_string()),
            Some(code) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(code.to_string())
            }
            Some(code) => {
                self.error(
                    "quota.currency",
                    format!(
                        "expected an ISO 4217 code of 3 upper-case letters such as \"USD\", got \"{code}\""
                    ),
                );
                None
            }
        };
        Some(Quota {
            state_path,
            flush_interval: flush_interval?,
            default_max_tokens: default_max_tokens?,
            completion_weight: completion_weight?,
            currency: currency?,
            defaults: defaults?,
        })
    }

    /// A set of limits at `at`: every count > 0, every budget a positive
    /// amount, turned into micro-units.
    fn limit_set(&mut self, at: &str, raw: &RawLimitSet, scope: Scope) -> Option<LimitSet> {
        let mut values = [None; 8];
        let mut ok = true;
        for ((value, name), raw) in values.iter_mut().zip(LimitSet::NAMES).zip(raw.entries()) {
            let path = format!("{at}.{name}");
            let parsed = match raw {
                RawLimit::Count(None) | RawLimit::Money(None) => continue,
                RawLimit::Count(Some(count)) => NonZeroU64::new(count),
                RawLimit::Money(Some(amount)) => self.budget_micros(&path, amount),
            };
            if parsed.is_none() && matches!(raw, RawLimit::Count(_)) {
                let advice = match scope {
                    Scope::Consumer => format!(
                        "to lift a quota.defaults limit for this consumer use unlimited = [\"{name}\"]"
                    ),
                    Scope::Defaults | Scope::Model => "remove the key for no limit".to_string(),
                };
                self.error(path, format!("must be > 0; {advice}"));
            }
            ok &= parsed.is_some();
            *value = parsed;
        }
        ok.then(|| LimitSet::from_array(values))
    }

    /// A budget in currency units as micro-units: > 0 and at most
    /// `MAX_BUDGET`, at least one micro-unit after rounding.
    fn budget_micros(&mut self, path: &str, amount: f64) -> Option<NonZeroU64> {
        if amount.is_nan() || amount <= 0.0 {
            self.error(
                path,
                format!("{amount} is not a positive amount; remove the key for no budget"),
            );
            return None;
        }
        if amount > MAX_BUDGET {
            self.error(
                path,
                format!("{amount} is more than the largest budget, {MAX_BUDGET}"),
            );
            return None;
        }
        // In range (0, 1e18]: the cast is exact enough and cannot wrap.
        let micros = NonZeroU64::new((amount * 1e6).round() as u64);
        if micros.is_none() {
            self.error(
                path,
                format!("{amount} is less than 0.000001, the smallest amount counted"),
            );
        }
        micros
    }

    /// A model's `price` table.
    fn price(&mut self, at: &str, raw: &RawPrice) -> Option<Price> {
        let input = self.price_value(
            &format!("{at}.input_per_million"),
            raw.input_per_million,
            true,
        );
        let output = self.price_value(
            &format!("{at}.output_per_million"),
            raw.output_per_million,
            true,
        );
        let cached = self.price_value(
            &format!("{at}.cached_input_per_million"),
            raw.cached_input_per_million,
            false,
        );
        let input = input??;
        Some(Price {
            input_per_million: input,
            output_per_million: output??,
            cached_input_per_million: cached?.unwrap_or(input),
        })
    }

    /// One price per million tokens: finite, in 0..=MAX_PRICE_PER_MILLION.
    /// `Some(None)` when absent and not `required`.
    fn price_value(&mut self, path: &str, raw: Option<f64>, required: bool) -> Option<Option<f64>> {
        match raw {
            None if required => {
                self.error(
                    path,
                    "missing; set the price per million tokens (0 for free)",
                );
                None
            }
            None => Some(None),
            // `contains` is false for NaN.
            Some(price) if (0.0..=MAX_PRICE_PER_MILLION).contains(&price) => Some(Some(price)),
            Some(price) => {
                self.error(
                    path,
                    format!(
                        "{price} is out of range 0..={MAX_PRICE_PER_MILLION} (per million tokens)"
                    ),
                );
                None
            }
        }
    }

    /// `[cluster]`.
    fn cluster(&mut self, raw: &RawCluster) -> Option<Cluster> {
        let redis = self.redis_url(raw);
        let node_id = match &raw.node_id {
            Some(id) if is_label(id) => Some(id.clone()),
            Some(id) => {
                self.error(
                    "cluster.node_id",
                    format!("\"{id}\" is not a node id: 1 to 64 of A-Z a-z 0-9 . _ -"),
                );
                None
            }
            None => {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                let host = host.trim();
                if is_label(host) {
                    Some(host.to_string())
                } else {
                    self.warn(
                        "cluster.node_id",
                        &format!(
                            "no usable host name in /etc/hostname; using \"{FALLBACK_NODE_ID}\". \
                             Set node_id so that every node has its own"
                        ),
                    );
                    Some(FALLBACK_NODE_ID.to_string())
                }
            }
        };
        let lease_fraction = raw.lease_fraction.unwrap_or(0.05);
        // Written so that NaN fails too.
        let lease_fraction = if lease_fraction > 0.0 && lease_fraction <= MAX_LEASE_FRACTION {
            Some(lease_fraction)
        } else {
            self.error(
                "cluster.lease_fraction",
                format!(
                    "{lease_fraction} is out of range: 0 < lease_fraction <= {MAX_LEASE_FRACTION}"
                ),
            );
            None
        };
        let lease_ttl = self
            .in_range(
                "cluster.lease_ttl_ms",
                raw.lease_ttl_ms.unwrap_or(2_000),
                LEASE_TTL_MS.0,
                LEASE_TTL_MS.1,
            )
            .map(Duration::from_millis);
        let fail_open = match raw.on_redis_down.as_deref() {
            None | Some("open") => Some(true),
            Some("closed") => Some(false),
            Some(other) => {
                self.error(
                    "cluster.on_redis_down",
                    format!("unknown value \"{other}\"; expected \"open\" or \"closed\""),
                );
                None
            }
        };
        let connect_timeout =
            self.millis("cluster.connect_timeout_ms", raw.connect_timeout_ms, 500);
        Some(Cluster {
            redis: redis?,
            node_id: node_id?,
            lease_fraction: lease_fraction?,
            lease_ttl: lease_ttl?,
            fail_open: fail_open?,
            connect_timeout: connect_timeout?,
        })
    }

    /// The Redis URL from `redis` or from the variable named by `redis_env`;
    /// exactly one of the two.
    fn redis_url(&mut self, raw: &RawCluster) -> Option<RedisUrl> {
        match (&raw.redis, &raw.redis_env) {
            (None, None) => {
                self.error(
                    "cluster.redis",
                    "missing; set redis = \"redis://127.0.0.1:6379/0\" or redis_env = \"VAR\" \
                     (or remove [cluster] to run standalone)",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(
                    "cluster.redis_env",
                    "set either redis or redis_env, not both",
                );
                None
            }
            (Some(text), None) => match RedisUrl::parse(text) {
                Ok(url) => {
                    if url.password.is_some() {
                        self.warn(
                            "cluster.redis",
                            "the Redis password is written in the config file; use redis_env",
                        );
                    }
                    Some(url)
                }
                Err(e) => {
                    self.error("cluster.redis", e);
                    None
                }
            },
            (None, Some(var)) => {
                let text = self.env_value("cluster.redis_env", var, "redis")?;
                match RedisUrl::parse(&text) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        self.error(
                            "cluster.redis_env",
                            format!("environment variable \"{var}\": {e}"),
                        );
                        None
                    }
                }
            }
        }
    }

    // ----- shared checks --------------------------------------------------

    /// The value of environment variable `var`, named at `path`; `instead`
    /// is the key to suggest when it is not set.
    fn env_value(&mut self, path: &str, var: &str, instead: &str) -> Option<String> {
        if var.is_empty() {
            self.error(path, "must name an environment variable");
            return None;
        }
        match std::env::var(var) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => {
                self.error(
                    path,
                    format!(
                        "environment variable \"{var}\" is not set; export it or use {instead}"
                    ),
                );
                None
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                self.error(
                    path,
                    format!("environment variable \"{var}\" is not valid UTF-8"),
                );
                None
            }
        }
    }

    /// 64 hex digits of the admin token's SHA-256.
    fn sha256_hex(&mut self, path: &str, hex_text: &str) -> Option<[u8; 32]> {
        let mut hash = [0u8; 32];
        match hex::decode_to_slice(hex_text, &mut hash) {
            Ok(()) => Some(hash),
            Err(_) => {
                self.error(
                    path,
                    format!(
                        "expected 64 hex digits (the SHA-256 of the token, as printed by \
                         `sluice hash-key TOKEN`), got \"{hex_text}\""
                    ),
                );
                None
            }
        }
    }

    /// `<at>.name`: present, non-blank, and not used by an earlier entry of
    /// the same list (`names` holds every entry's name, in order).
    fn unique_name(&mut self, at: &str, names: &[Option<&String>], i: usize) -> Option<String> {
        let path = format!("{at}.name");
        let name = match names.get(i).copied().flatten() {
            None => {
                self.error(path, "missing; every entry needs a unique name");
                return None;
            }
            Some(name) if name.trim().is_empty() => {
                self.error(path, "must not be empty");
                return None;
            }
            Some(name) => name,
        };
        // "providers" for "providers[2]", "models[0].variants" for
        // "models[0].variants[1]".
        let list = at.rsplit_once('[').map_or(at, |(list, _)| list);
        if let Some(first) = names.iter().take(i).position(|n| *n == Some(name)) {
            self.error(
                path,
                format!("duplicate name \"{name}\" (also {list}[{first}])"),
            );
            return None;
        }
        Some(name.clone())
    }

    /// A required socket address.
    fn required_address(&mut self, path: &str, raw: &Option<String>) -> Option<SocketAddr> {
        match raw {
            Some(text) => self.address(path, text),
            None => {
                self.error(path, "missing; set an IP:port, e.g. \"127.0.0.1:8080\"");
                None
            }
        }
    }

    /// An `IP:port` socket address (`[v6]:port` for IPv6).
    fn address(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                self.error(
                    path,
                    format!(
                        "invalid socket address \"{text}\"; expected IP:port such as \
                         \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"
                    ),
                );
                None
            }
        }
    }

    /// A required path to a readable file.
    fn required_file(&mut self, path: &str, raw: &Option<PathBuf>) -> Option<PathBuf> {
        match raw {
            Some(file) => self.readable_file(path, file),
            None => {
                self.error(path, "missing; set the path of a PEM file");
                None
            }
        }
    }

    /// A path that must name a readable regular file right now.
    fn readable_file(&mut self, path: &str, file: &Path) -> Option<PathBuf> {
        if file.as_os_str().is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        let shown = file.display();
        match std::fs::metadata(file) {
            Err(e) => {
                self.error(path, format!("cannot read \"{shown}\": {e}"));
                return None;
            }
            Ok(meta) if !meta.is_file() => {
                self.error(path, format!("\"{shown}\" is not a regular file"));
                return None;
            }
            Ok(_) => {}
        }
        // Metadata does not prove read permission; opening does.
        if let Err(e) = std::fs::File::open(file) {
            self.error(path, format!("cannot read \"{shown}\": {e}"));
            return None;
        }
        Some(file.to_path_buf())
    }

    /// A `_ms` key: default when absent, else 1..=MAX_MS.
    fn millis(&mut self, path: &str, raw: Option<u64>, default_ms: u64) -> Option<Duration> {
        let ms = raw.unwrap_or(default_ms);
        if ms == 0 {
            self.error(path, "must be > 0");
            return None;
        }
        if ms > MAX_MS {
            self.error(
                path,
                format!("{ms} ms is more than a day (max {MAX_MS}); the unit is milliseconds"),
            );
            return None;
        }
        Some(Duration::from_millis(ms))
    }

    /// A size or count: default when absent, else within `min..=max`.
    fn size(
        &mut self,
        path: &str,
        raw: Option<u64>,
        default: u64,
        (min, max): (u64, u64),
    ) -> Option<usize> {
        let value = self.in_range(path, raw.unwrap_or(default), min, max)?;
        match usize::try_from(value) {
            Ok(value) => Some(value),
            Err(_) => {
                self.error(path, format!("{value} does not fit this machine's usize"));
                None
            }
        }
    }

    /// `value` within `min..=max`.
    fn in_range(&mut self, path: &str, value: u64, min: u64, max: u64) -> Option<u64> {
        if value < min || value > max {
            let message = if min == 1 && value == 0 {
                format!("must be > 0 (max {max})")
            } else {
                format!("{value} is out of range {min}..={max}")
            };
            self.error(path, message);
            return None;
        }
        Some(value)
    }
}

/// A `cluster.node_id` or variant name: 1..=64 of `A-Z a-z 0-9 . _ -`, safe
/// inside a Redis key, a header value and a metric label.
fn is_label(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Visible ASCII only: safe inside an HTTP header value.
fn is_header_token(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// `"a", "b"` or `(none)`.
fn quoted_list(items: &[&str]) -> String {
    if items.is_empty() {
        return "(none)".into();
    }
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
