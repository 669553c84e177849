//! `[features]`: which policy stages run on every request.
//!
//! All on by default. Turning a stage off is for a node that is only a
//! relay (and for measuring what each stage costs, as `sluice-bench
//! compare` does with its `sluice-passthrough` target):
//!
//! - `auth = false`: no consumer key is checked; every request is
//!   anonymous and the provider's own key is still sent upstream.
//! - `accounting = false`: no token counting, no usage asked for on
//!   streams, no quota admission or settlement, no tokenizer tables loaded;
//!   streams are relayed byte for byte unless they need translating.
//! - `audit = false`: no audit records.
//!
//! A switch that would silently disarm something configured elsewhere is an
//! error, not a warning: consumers (their keys would not be checked) with
//! `auth = false`; limits, balances, prices, a quota store, a cluster or
//! kernel early rejection with `accounting = false`; an `[audit]` table with
//! `audit = false`.

use serde::Deserialize;

use crate::raw::{RawConfig, RawLimitSet};

/// The validated `[features]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Consumer API keys are checked (401 without a known one).
    pub auth: bool,
    /// Token usage is counted, priced and held against quota limits.
    pub accounting: bool,
    /// Every request leaves an audit record.
    pub audit: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            auth: true,
            accounting: true,
            audit: true,
        }
    }
}

/// `[features]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeatures {
    pub auth: Option<bool>,
    pub accounting: Option<bool>,
    pub audit: Option<bool>,
}

fn limits_set(raw: &RawLimitSet) -> bool {
    raw.entries().iter().any(|e| match e {
        crate::raw::RawLimit::Count(v) => v.is_some(),
        crate::raw::RawLimit::Money(v) => v.is_some(),
    })
}

/// Builds [`Features`] and reports every setting a switched-off stage
/// would leave without effect, as (path, message).
pub(crate) fn validate(raw: &RawConfig, errors: &mut Vec<(String, String)>) -> Features {
    let f = &raw.features;
    let features = Features {
        auth: f.auth.unwrap_or(true),
        accounting: f.accounting.unwrap_or(true),
        audit: f.audit.unwrap_or(true),
    };
    let mut error = |path: String, message: &str| errors.push((path, message.to_string()));
    if !features.auth && !raw.consumers.is_empty() {
        error(
            "features.auth".into(),
            "false, but [[consumers]] are configured: their keys would not be checked and \
             anyone could call the gateway; remove the consumers or turn auth on",
        );
    }
    if !features.accounting {
        const OFF: &str = "is set, but features.accounting = false counts no tokens, so it \
                           would have no effect; remove it or turn accounting on";
        if limits_set(&raw.quota.defaults) {
            error("quota.defaults".into(), OFF);
        }
        if raw
            .quota
            .state_path
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty())
        {
            error("quota.state_path".into(), OFF);
        }
        if raw.cluster.is_some() {
            error("cluster".into(), OFF);
        }
        if raw.ebpf.enabled == Some(true) {
            error("ebpf.enabled".into(), OFF);
        }
        for (i, m) in raw.models.iter().enumerate() {
            if m.price.is_some() {
                error(format!("models[{i}].price"), OFF);
            }
        }
        for (i, c) in raw.consumers.iter().enumerate() {
            if limits_set(&c.limits) {
                error(format!("consumers[{i}].limits"), OFF);
            }
            if !c.model_limits.is_empty() {
                error(format!("consumers[{i}].model_limits"), OFF);
            }
            if c.balance.is_some() {
                error(format!("consumers[{i}].balance"), OFF);
            }
        }
    }
    if !features.auth && raw.ebpf.enabled == Some(true) {
        error(
            "ebpf.enabled".into(),
            "true, but features.auth = false: kernel early rejection learns tenants' \
             addresses from their authenticated requests; turn auth on",
        );
    }
    if !features.audit {
        const OFF: &str = "is set, but features.audit = false writes no audit log; \
                           remove it or turn audit on";
        if raw.audit.path.is_some() {
            error("audit.path".into(), OFF);
        }
        if raw.audit.flush_interval_ms.is_some() {
            error("audit.flush_interval_ms".into(), OFF);
        }
    }
    features
}
