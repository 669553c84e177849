//! `[ebpf]`: kernel early rejection of over-quota tenants (XDP).
//!
//! Off by default. When on, sluice opens the maps the XDP program pins under
//! `pin_dir` — attaching the program itself to `interfaces` when `attach` is
//! true, or using what `sluice-loader attach` set up — records which tenant
//! each authenticated source address belongs to, and writes a verdict when
//! the quota engine finds a tenant over quota, so the kernel turns its next
//! connection attempts away. Tenants' declared source networks live on the
//! consumers (`consumers[].networks`).

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// What the kernel does to a rejected connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RejectAction {
    /// Answer the SYN with a TCP RST: the client fails at once.
    #[default]
    Rst,
    /// Drop the SYN: the client times out.
    Drop,
}

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (fastest); falls back to skb with a warning.
    #[default]
    Native,
    /// Generic XDP in the network stack; works everywhere.
    Skb,
}

/// The validated `[ebpf]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ebpf {
    /// Kernel early rejection on; default false.
    pub enabled: bool,
    /// sluice loads and attaches the program itself (needs CAP_BPF and
    /// CAP_NET_ADMIN); false = use maps pinned by `sluice-loader attach`.
    pub attach: bool,
    /// Interfaces to attach to (when `attach`).
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
    /// bpffs directory holding the pins; default /sys/fs/bpf/sluice.
    pub pin_dir: PathBuf,
    /// What a tenant verdict does.
    pub action: RejectAction,
    /// A rate-limited tenant is rejected in the kernel only when its limit
    /// resets further away than this; default 10 s.
    pub escalate_after: Duration,
    /// How long a spent balance keeps a tenant out before one request may
    /// come through to be checked again; default 60 s.
    pub quota_verdict: Duration,
    /// SYNs per second per source (0 = no SYN limit) and the burst.
    pub syn_rate_per_second: u32,
    pub syn_burst: u32,
    /// Source networks always rejected.
    pub deny: Vec<IpNet>,
}

impl Default for Ebpf {
    fn default() -> Self {
        Ebpf {
            enabled: false,
            attach: true,
            interfaces: Vec::new(),
            mode: XdpMode::Native,
            pin_dir: PathBuf::from("/sys/fs/bpf/sluice"),
            action: RejectAction::Rst,
            escalate_after: Duration::from_secs(10),
            quota_verdict: Duration::from_secs(60),
            syn_rate_per_second: 0,
            syn_burst: 0,
            deny: Vec::new(),
        }
    }
}

/// `[ebpf]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEbpf {
    /// Turn kernel early rejection on; default false.
    pub enabled: Option<bool>,
    /// Load and attach the program from sluice itself; default true.
    pub attach: Option<bool>,
    /// Interfaces to attach to; required when enabled and attach.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// "native" (default) or "skb".
    pub mode: Option<String>,
    /// bpffs directory for the pins; default "/sys/fs/bpf/sluice".
    pub pin_dir: Option<PathBuf>,
    /// "rst" (default) or "drop".
    pub action: Option<String>,
    /// Rate-limit resets further away than this escalate to the kernel; default 10000.
    pub escalate_after_ms: Option<u64>,
    /// Length of a verdict for a spent balance or budget; default 60000.
    pub quota_verdict_ms: Option<u64>,
    /// SYNs per second per source; 0 (default) = no SYN limit.
    pub syn_rate_per_second: Option<u32>,
    /// SYN burst per source; default = the rate.
    pub syn_burst: Option<u32>,
    /// Source networks always rejected, e.g. ["192.0.2.0/24"].
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Validate `[ebpf]`, pushing `(path, message)` errors.
pub(crate) fn validate(raw: &RawEbpf, errors: &mut Vec<(String, String)>) -> Ebpf {
    let mut out = Ebpf {
        enabled: raw.enabled.unwrap_or(false),
        attach: raw.attach.unwrap_or(true),
        interfaces: raw.interfaces.clone(),
        ..Ebpf::default()
    };
    if let Some(dir) = &raw.pin_dir {
        out.pin_dir = dir.clone();
    }
    match raw.mode.as_deref() {
        None | Some("native") => {}
        Some("skb") => out.mode = XdpMode::Skb,
        Some(other) => errors.push((
            "ebpf.mode".into(),
            format!("unknown mode \"{other}\"; expected \"native\" or \"skb\""),
        )),
    }
    match raw.action.as_deref() {
        None | Some("rst") => {}
        Some("drop") => out.action = RejectAction::Drop,
        Some(other) => errors.push((
            "ebpf.action".into(),
            format!("unknown action \"{other}\"; expected \"rst\" or \"drop\""),
        )),
    }
    for (field, value, slot) in [
        (
            "escalate_after_ms",
            raw.escalate_after_ms,
            &mut out.escalate_after,
        ),
        (
            "quota_verdict_ms",
            raw.quota_verdict_ms,
            &mut out.quota_verdict,
        ),
    ] {
        match value {
            None => {}
            Some(0) => errors.push((format!("ebpf.{field}"), "must be > 0".into())),
            Some(ms) if ms > 86_400_000 => errors.push((
                format!("ebpf.{field}"),
                format!("{ms} ms is more than a day; the unit is milliseconds"),
            )),
            Some(ms) => *slot = Duration::from_millis(ms),
        }
    }
    out.syn_rate_per_second = raw.syn_rate_per_second.unwrap_or(0);
    out.syn_burst = raw.syn_burst.unwrap_or(out.syn_rate_per_second);
    if out.syn_rate_per_second > 0 && out.syn_burst == 0 {
        errors.push((
            "ebpf.syn_burst".into(),
            "must be > 0 when syn_rate_per_second is set".into(),
        ));
    }
    for (i, net) in raw.deny.iter().enumerate() {
        match parse_net(net) {
            Ok(n) => out.deny.push(n),
            Err(e) => errors.push((format!("ebpf.deny[{i}]"), e)),
        }
    }
    if out.enabled && out.attach && out.interfaces.is_empty() {
        errors.push((
            "ebpf.interfaces".into(),
            "name at least one interface to attach to, e.g. interfaces = [\"eth0\"] (or set attach = false to use `sluice-loader attach`)".into(),
        ));
    }
    for (i, name) in out.interfaces.iter().enumerate() {
        if name.is_empty()
            || name.len() > 15
            || name.contains('/')
            || name.contains(char::is_whitespace)
        {
            errors.push((
                format!("ebpf.interfaces[{i}]"),
                format!("\"{name}\" is not an interface name"),
            ));
        }
    }
    out
}

/// A network "a.b.c.d/len" or "x::/len", or a single address.
pub(crate) fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| {
            format!(
                "\"{text}\" is not a network; write e.g. \"203.0.113.0/24\" or \"2001:db8::/32\""
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let mut errors = Vec::new();
        let e = validate(&RawEbpf::default(), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(e, Ebpf::default());
        let raw = RawEbpf {
            enabled: Some(true),
            mode: Some("fast".into()),
            action: Some("reject".into()),
            escalate_after_ms: Some(0),
            deny: vec!["10.0.0.0/8".into(), "nope".into(), "2001:db8::1".into()],
            ..RawEbpf::default()
        };
        let e = validate(&raw, &mut errors);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ebpf.mode",
                "ebpf.action",
                "ebpf.escalate_after_ms",
                "ebpf.deny[1]",
                "ebpf.interfaces"
            ]
        );
        assert_eq!(e.deny.len(), 2);
        assert_eq!(e.deny[1].prefix_len(), 128);
    }
}
