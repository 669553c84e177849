//! The loader's own desired-state file for `sluice-loader attach/apply
//! --config` — a stand-in until edge builds [`Desired`] from sluice's config.
//! `loader/desired.example.toml` is a commented example.
//!
//! ```toml
//! protected_ports = [443, 8443]
//! deny = ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7"]
//! deny_action = "rst"            # or "drop" (default)
//! syn_rate_per_second = 50       # per source address; 0 (default) = off
//! syn_burst = 20
//!
//! [[interfaces]]
//! name = "eth0"
//! mode = "native"                # or "skb"; native falls back to skb
//!
//! [[tenant_networks]]
//! network = "192.0.2.0/24"
//! tenant = 7
//! ```
//!
//! Parsed in two layers like sluice's config: serde structs that refuse
//! unknown keys, then a check that collects every bad value with its path.

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    attach::{Interface, Mode},
    layout::Action,
    plan::Desired,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    protected_ports: Vec<u16>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default = "default_action")]
    deny_action: Action,
    #[serde(default)]
    tenant_networks: Vec<RawTenantNetwork>,
    #[serde(default)]
    syn_rate_per_second: u32,
    #[serde(default)]
    syn_burst: u32,
}

fn default_action() -> Action {
    Action::Drop
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    #[serde(default = "default_mode")]
    mode: Mode,
}

fn default_mode() -> Mode {
    Mode::Native
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantNetwork {
    network: String,
    tenant: u32,
}

/// A parsed file: where to attach, and what the maps should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub interfaces: Vec<Interface>,
    pub desired: Desired,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A network, or a bare address meaning just that host.
fn network(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

pub fn parse(text: &str) -> Result<File, FileError> {
    let raw: Raw = toml::from_str(text)?;
    let mut problems = Vec::new();
    let mut desired = Desired {
        protected_ports: raw.protected_ports.iter().copied().collect(),
        deny_action: raw.deny_action,
        syn_rate_per_second: raw.syn_rate_per_second,
        syn_burst: raw.syn_burst,
        ..Desired::default()
    };
    for (i, text) in raw.deny.iter().enumerate() {
        match network(text) {
            Some(net) => desired.deny.push(net),
            None => problems.push(format!(
                "deny[{i}]: `{text}` is not a network (ADDRESS/PREFIX) or address"
            )),
        }
    }
    for (i, entry) in raw.tenant_networks.iter().enumerate() {
        match network(&entry.network) {
            Some(net) => desired.tenant_networks.push((net, entry.tenant)),
            None => problems.push(format!(
                "tenant_networks[{i}].network: `{}` is not a network (ADDRESS/PREFIX) or address",
                entry.network
            )),
        }
    }
    for (i, iface) in raw.interfaces.iter().enumerate() {
        if iface.name.is_empty()
            || iface.name.len() >= libc::IF_NAMESIZE
            || iface.name.contains(['/', '\0'])
        {
            problems.push(format!(
                "interfaces[{i}].name: `{}` is not an interface name",
                iface.name
            ));
        }
    }
    // The plan's checks (port 0, burst, conflicting claims) run here too so
    // a bad file fails before touching the kernel.
    if let Err(e) = crate::plan::plan(&desired, &Default::default()) {
        problems.extend(e.problems);
    }
    if !problems.is_empty() {
        return Err(FileError::Invalid(problems));
    }
    let interfaces = raw
        .interfaces
        .into_iter()
        .map(|i| Interface {
            name: i.name,
            mode: i.mode,
        })
        .collect();
    Ok(File {
        interfaces,
        desired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let file = parse(
            r#"
            protected_ports = [443, 8443]
            deny = ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7"]
            deny_action = "rst"
            syn_rate_per_second = 50
            syn_burst = 20

            [[interfaces]]
            name = "eth0"

            [[interfaces]]
            name = "eth1"
            mode = "skb"

            [[tenant_networks]]
            network = "192.0.2.0/24"
            tenant = 7
            "#,
        )
        .unwrap();
        assert_eq!(
            file.interfaces,
            [
                Interface {
                    name: "eth0".into(),
                    mode: Mode::Native
                },
                Interface {
                    name: "eth1".into(),
                    mode: Mode::Skb
                }
            ]
        );
        let d = file.desired;
        assert_eq!(d.protected_ports, [443, 8443].into());
        assert_eq!(
            d.deny[2],
            "198.51.100.7/32".parse::<IpNet>().unwrap(),
            "bare address = host"
        );
        assert_eq!(d.deny_action, Action::Rst);
        assert_eq!(d.tenant_networks, [("192.0.2.0/24".parse().unwrap(), 7)]);
        assert_eq!((d.syn_rate_per_second, d.syn_burst), (50, 20));
    }

    #[test]
    fn the_example_file_parses() {
        let file = parse(include_str!("../desired.example.toml")).unwrap();
        assert_eq!(file.interfaces.len(), 1);
        assert_eq!(file.desired.protected_ports, [443].into());
    }

    #[test]
    fn empty_file_means_nothing_protected() {
        let file = parse("").unwrap();
        assert!(file.interfaces.is_empty());
        assert_eq!(file.desired, Desired::default());
    }

    #[test]
    fn every_bad_value_is_reported_with_its_path() {
        let err = parse(
            r#"
            protected_ports = [0]
            deny = ["10.0.0/8", "10.0.0.0/8"]
            syn_rate_per_second = 5
            [[tenant_networks]]
            network = "nope"
            tenant = 1
            "#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "deny[0]: `10.0.0/8` is not a network (ADDRESS/PREFIX) or address\n\
             tenant_networks[0].network: `nope` is not a network (ADDRESS/PREFIX) or address\n\
             protected_ports: 0 is not a port\n\
             syn_burst: must be >= 1 when syn_rate_per_second is 5 (0 turns the SYN limit off)"
        );
    }

    #[test]
    fn unknown_keys_and_actions_are_refused() {
        assert!(parse("protected_port = [443]")
            .unwrap_err()
            .to_string()
            .contains("unknown field `protected_port`"));
        assert!(parse("deny_action = \"reject\"")
            .unwrap_err()
            .to_string()
            .contains("unknown variant `reject`"));
    }
}
