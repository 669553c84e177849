//! What the gateway does when an upstream fails: key pools, fallback chains
//! and retries, as typed values.
//!
//! `validate` builds these from a provider's `api_key`/`key_env`/`api_keys`,
//! `key_selection` and `key_cooldown_ms`, a model's `fallbacks`,
//! `fallback_on` and `degrade_to`, and the `[retry]` table. The upstream
//! stage in `edge` reads them per attempt: it picks an [`UpstreamKey`] of the
//! target's provider by [`KeySelection`] (resting a key for
//! `Provider::key_cooldown` after a 429, 401 or 403), asks
//! [`FallbackOn`] whether a failed attempt may move on, walks the model's
//! [`Target`] list in order, and stops after [`Retry::max_attempts`] or when
//! the retry budget ([`Retry::budget_ratio`]) is spent. Nothing here keeps
//! state; the counters, cool-downs and circuits live in `edge`.

use std::fmt;
use std::time::Duration;

/// One upstream key of a provider's pool.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamKey {
    /// Label for logs and metrics; unique within the provider.
    /// [`UpstreamKey::PRIMARY_ID`] for the key from `api_key`/`key_env`.
    pub id: String,
    /// The key itself, sent as the provider kind's auth header; non-empty
    /// visible ASCII.
    pub key: String,
}

impl UpstreamKey {
    /// The id of the key given by a provider's `api_key` or `key_env`.
    pub const PRIMARY_ID: &'static str = "primary";
}

// Hand-written so that logging a config never prints an upstream key.
impl fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// How a request picks a key from its provider's pool. Keys resting after a
/// 429, 401 or 403 are skipped either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeySelection {
    /// `"round_robin"`: each key in turn; the default.
    #[default]
    RoundRobin,
    /// `"least_in_flight"`: the key with the fewest requests in flight on
    /// this worker.
    LeastInFlight,
}

impl KeySelection {
    /// Every selection with its config spelling.
    pub(crate) const ALL: [KeySelection; 2] =
        [KeySelection::RoundRobin, KeySelection::LeastInFlight];

    /// The config spelling, e.g. `"round_robin"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeySelection::RoundRobin => "round_robin",
            KeySelection::LeastInFlight => "least_in_flight",
        }
    }

    /// Parses the config spelling.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where an attempt goes: a provider and the model name sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of the provider in [`crate::Config::providers`].
    pub provider: usize,
    /// Model name sent upstream (for `azure-openai`, the deployment).
    pub upstream_model: String,
}

/// Which failures of an attempt let the request move on to another attempt
/// (the same provider after a backoff, or the next target). Only failures
/// before the response head reached the client qualify: after that the
/// client has seen part of one answer and cannot be given another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackOn {
    /// Upstream response statuses that count as failures, in config order.
    pub statuses: Vec<StatusMatch>,
    /// The TCP or TLS connection to the provider failed.
    pub connect: bool,
    /// The provider did not answer in time (`connect_timeout_ms`,
    /// `first_byte_timeout_ms`).
    pub timeout: bool,
}

impl FallbackOn {
    /// Whether an upstream response with `status` triggers a fallback.
    pub fn status(&self, status: u16) -> bool {
        self.statuses.iter().any(|m| m.matches(status))
    }
}

/// `["429", "5xx", "connect", "timeout"]`: rate limits, server errors and
/// unreachable providers move on; other 4xx (a bad request stays bad on
/// every provider) do not.
impl Default for FallbackOn {
    fn default() -> Self {
        Self {
            statuses: vec![StatusMatch::Code(429), StatusMatch::Class(5)],
            connect: true,
            timeout: true,
        }
    }
}

/// One status entry of `fallback_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    /// One status code in 400..=599, e.g. `"401"`.
    Code(u16),
    /// A class by its first digit: 4 for `"4xx"`, 5 for `"5xx"`.
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` is this code or in this class.
    pub fn matches(&self, status: u16) -> bool {
        match *self {
            StatusMatch::Code(code) => status == code,
            StatusMatch::Class(class) => status / 100 == class,
        }
    }
}

/// The `[retry]` settings, shared by every model.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts per request across all targets, the first included;
    /// default 3, 1..=10. 1 turns retries and fallbacks off.
    pub max_attempts: u32,
    /// Retries (attempts after the first, on any target) may be at most
    /// this share of requests, counted over about 10 s, so that an outage
    /// does not multiply the load on the providers; default 0.2, in 0..=1.
    pub budget_ratio: f64,
    /// First backoff before retrying the same provider; doubles on each
    /// retry, with jitter. Default 50 ms, 1 ms..=60 s.
    pub backoff_base: Duration,
    /// Longest backoff; default 2 s, `backoff_base`..=60 s.
    pub backoff_max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget_ratio: 0.2,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(2000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FallbackOn, KeySelection, StatusMatch, UpstreamKey};

    #[test]
    fn default_fallback_on_is_429_5xx_connect_timeout() {
        let on = FallbackOn::default();
        assert!(on.connect && on.timeout);
        for status in [429, 500, 502, 503, 504, 599] {
            assert!(on.status(status), "{status}");
        }
        for status in [200, 301, 400, 401, 403, 404, 428, 430, 499, 600] {
            assert!(!on.status(status), "{status}");
        }
    }

    #[test]
    fn status_matches_code_or_class() {
        assert!(StatusMatch::Code(401).matches(401));
        assert!(!StatusMatch::Code(401).matches(403));
        assert!(StatusMatch::Class(4).matches(400));
        assert!(StatusMatch::Class(4).matches(499));
        assert!(!StatusMatch::Class(4).matches(500));
        let none = FallbackOn {
            statuses: Vec::new(),
            connect: false,
            timeout: false,
        };
        assert!(!none.status(503));
    }

    #[test]
    fn key_selection_spellings_round_trip() {
        for selection in KeySelection::ALL {
            assert_eq!(KeySelection::parse(selection.as_str()), Some(selection));
        }
        assert_eq!(KeySelection::parse("random"), None);
        assert_eq!(KeySelection::default(), KeySelection::RoundRobin);
    }

    #[test]
    fn upstream_key_debug_is_redacted() {
        let key = UpstreamKey {
            id: "k2".into(),
            key: "sk-secret".into(),
        };
        let debug = format!("{key:?}");
        assert_eq!(debug, "UpstreamKey { id: \"k2\", key: \"<redacted>\" }");
    }
}
