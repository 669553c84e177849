//! Desired state → the exact map changes. Pure: no kernel, no I/O.
//!
//! The loader's "reconcile" step is split in two (STYLE.md): [`plan`] takes
//! what config wants ([`Desired`]: protected ports, deny list, tenant
//! networks, SYN bucket settings) and what the pinned maps hold now
//! ([`Current`], read by `Maps::current`) and returns a [`Plan`] listing
//! only the differences; `Maps::apply` performs it. Running the same config
//! twice plans nothing the second time, and a reload writes only what
//! changed. Learned addresses and verdicts are runtime state owned by edge
//! and never touched here.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use ipnet::IpNet;

use crate::layout::{self, Action, Settings};

/// What the maps should hold, as config says. edge builds this from
/// sluice's config; `sluice-loader apply` reads it from a small TOML file
/// ([`crate::file`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Destination ports whose connection attempts are judged.
    pub protected_ports: BTreeSet<u16>,
    /// Source networks always rejected.
    pub deny: Vec<IpNet>,
    /// What a deny-list hit does.
    pub deny_action: Action,
    /// Networks declared by tenants (`tenants[].networks`), with the
    /// tenant's id. Host bits are ignored (10.1.2.3/8 means 10.0.0.0/8).
    pub tenant_networks: Vec<(IpNet, u32)>,
    /// SYNs per second per source address; 0 turns the SYN limit off.
    pub syn_rate_per_second: u32,
    /// SYNs a quiet source may send at once; at least 1 when the rate is on.
    pub syn_burst: u32,
}

impl Default for Desired {
    fn default() -> Self {
        Self {
            protected_ports: BTreeSet::new(),
            deny: Vec::new(),
            deny_action: Action::Drop,
            tenant_networks: Vec::new(),
            syn_rate_per_second: 0,
            syn_burst: 0,
        }
    }
}

/// What the config-owned maps hold now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub settings: Settings,
    pub protected_ports: BTreeSet<u16>,
    pub deny: BTreeSet<IpNet>,
    pub tenant_networks: BTreeMap<IpNet, u32>,
}

/// The changes that turn [`Current`] into [`Desired`]. Each list is sorted;
/// an empty plan means the maps already match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New settings entry, when it differs.
    pub settings: Option<Settings>,
    pub add_ports: Vec<u16>,
    pub remove_ports: Vec<u16>,
    pub add_deny: Vec<IpNet>,
    pub remove_deny: Vec<IpNet>,
    /// Networks to insert, or whose tenant changes.
    pub set_tenant_networks: Vec<(IpNet, u32)>,
    pub remove_tenant_networks: Vec<IpNet>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// How many map writes (inserts, updates, deletes) the plan makes.
    pub fn len(&self) -> usize {
        usize::from(self.settings.is_some())
            + self.add_ports.len()
            + self.remove_ports.len()
            + self.add_deny.len()
            + self.remove_deny.len()
            + self.set_tenant_networks.len()
            + self.remove_tenant_networks.len()
    }
}

impl fmt::Display for Plan {
    /// One line per change, `+` insert, `-` delete, `~` update.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.settings {
            writeln!(
                f,
                "~ settings syn_rate_per_second={} syn_burst={} deny_action={}",
                s.syn_rate,
                s.syn_burst,
                Action::from_raw(s.deny_action)
            )?;
        }
        for port in &self.add_ports {
            writeln!(f, "+ protected port {port}")?;
        }
        for port in &self.remove_ports {
            writeln!(f, "- protected port {port}")?;
        }
        for net in &self.add_deny {
            writeln!(f, "+ deny {net}")?;
        }
        for net in &self.remove_deny {
            writeln!(f, "- deny {net}")?;
        }
        for (net, tenant) in &self.set_tenant_networks {
            writeln!(f, "+ tenant network {net} -> tenant {tenant}")?;
        }
        for net in &self.remove_tenant_networks {
            writeln!(f, "- tenant network {net}")?;
        }
        Ok(())
    }
}

/// Everything wrong with a [`Desired`], each with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("desired state is invalid:\n  {}", .problems.join("\n  "))]
pub struct PlanError {
    pub problems: Vec<String>,
}

/// The changes that make `current` match `desired`, or every problem with
/// `desired` at once.
pub fn plan(desired: &Desired, current: &Current) -> Result<Plan, PlanError> {
    let mut problems = Vec::new();

    if desired.protected_ports.contains(&0) {
        problems.push("protected_ports: 0 is not a port".to_owned());
    }
    check_size(
        &mut problems,
        "protected_ports",
        desired.protected_ports.len(),
        layout::MAX_PORTS,
    );
    if desired.syn_rate_per_second > 0 && desired.syn_burst == 0 {
        problems.push(format!(
            "syn_burst: must be >= 1 when syn_rate_per_second is {} (0 turns the SYN limit off)",
            desired.syn_rate_per_second
        ));
    }
    if desired.syn_rate_per_second > 1_000_000_000 {
        problems.push(format!(
            "syn_rate_per_second: {} is more than one SYN per nanosecond",
            desired.syn_rate_per_second
        ));
    }

    let deny: BTreeSet<IpNet> = desired.deny.iter().map(IpNet::trunc).collect();
    check_size(&mut problems, "deny", deny.len(), layout::MAX_DENY);

    // The same network claimed by two tenants is a config error: XDP could
    // only name one of them.
    let mut tenant_networks: BTreeMap<IpNet, (u32, usize)> = BTreeMap::new();
    for (index, (net, tenant)) in desired.tenant_networks.iter().enumerate() {
        let net = net.trunc();
        match tenant_networks.get(&net) {
            Some(&(other, first)) if other != *tenant => problems.push(format!(
                "tenant_networks[{index}]: {net} -> tenant {tenant}: also claimed by tenant \
                 {other} (tenant_networks[{first}])"
            )),
            Some(_) => {}
            None => {
                tenant_networks.insert(net, (*tenant, index));
            }
        }
    }
    check_size(
        &mut problems,
        "tenant_networks",
        tenant_networks.len(),
        layout::MAX_TENANT_NETS,
    );

    if !problems.is_empty() {
        return Err(PlanError { problems });
    }

    let settings = Settings {
        syn_rate: desired.syn_rate_per_second,
        syn_burst: desired.syn_burst,
        deny_action: desired.deny_action.to_raw(),
        pad: 0,
    };
    Ok(Plan {
        settings: (settings != current.settings).then_some(settings),
        add_ports: desired
            .protected_ports
            .difference(&current.protected_ports)
            .copied()
            .collect(),
        remove_ports: current
            .protected_ports
            .difference(&desired.protected_ports)
            .copied()
            .collect(),
        add_deny: deny.difference(&current.deny).copied().collect(),
        remove_deny: current.deny.difference(&deny).copied().collect(),
        set_tenant_networks: tenant_networks
            .iter()
            .filter(|(net, (tenant, _))| current.tenant_networks.get(net) != Some(tenant))
            .map(|(net, (tenant, _))| (*net, *tenant))
            .collect(),
        remove_tenant_networks: current
            .tenant_networks
            .keys()
            .filter(|net| !tenant_networks.contains_key(net))
            .copied()
            .collect(),
    })
}

fn check_size(problems: &mut Vec<String>, what: &str, len: usize, max: u32) {
    if len > max as usize {
        problems.push(format!("{what}: {len} entries, the map holds {max}"));
    }
}

/// What the maps hold after `plan` is applied to `current`; lets tests
/// check that applying a plan reaches the desired state without a kernel.
pub fn after(current: &Current, plan: &Plan) -> Current {
    let mut next = current.clone();
    if let Some(settings) = plan.settings {
        next.settings = settings;
    }
    next.protected_ports.extend(&plan.add_ports);
    for port in &plan.remove_ports {
        next.protected_ports.remove(port);
    }
    next.deny.extend(&plan.add_deny);
    for net in &plan.remove_deny {
        next.deny.remove(net);
    }
    next.tenant_networks
        .extend(plan.set_tenant_networks.iter().copied());
    for net in &plan.remove_tenant_networks {
        next.tenant_networks.remove(net);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn desired() -> Desired {
        Desired {
            protected_ports: [443, 8443].into(),
            deny: vec![net("203.0.113.0/24"), net("2001:db8:bad::/48")],
            deny_action: Action::Rst,
            tenant_networks: vec![
                (net("198.51.100.0/24"), 7),
                (net("2001:db8:7::/48"), 7),
                (net("192.0.2.0/25"), 8),
            ],
            syn_rate_per_second: 50,
            syn_burst: 10,
        }
    }

    #[test]
    fn from_empty_maps_everything_is_added() {
        let plan = plan(&desired(), &Current::default()).unwrap();
        assert_eq!(
            plan.settings,
            Some(Settings {
                syn_rate: 50,
                syn_burst: 10,
                deny_action: layout::ACTION_RST,
                pad: 0
            })
        );
        assert_eq!(plan.add_ports, [443, 8443]);
        assert_eq!(
            plan.add_deny,
            [net("203.0.113.0/24"), net("2001:db8:bad::/48")]
        );
        assert_eq!(plan.set_tenant_networks.len(), 3);
        assert!(plan.remove_ports.is_empty() && plan.remove_deny.is_empty());
        assert!(plan.remove_tenant_networks.is_empty());
        assert_eq!(plan.len(), 1 + 2 + 2 + 3);
    }

    #[test]
    fn applying_the_plan_reaches_the_desired_state_and_rerunning_is_a_no_op() {
        let first = plan(&desired(), &Current::default()).unwrap();
        let state = after(&Current::default(), &first);
        let second = plan(&desired(), &state).unwrap();
        assert!(second.is_empty(), "second run plans {second}");
        assert_eq!(second.to_string(), "");
    }

    #[test]
    fn a_reload_changes_only_the_difference() {
        let state = after(
            &Current::default(),
            &plan(&desired(), &Current::default()).unwrap(),
        );
        let mut next = desired();
        next.protected_ports = [443, 9443].into();
        next.deny.retain(|n| n.addr().is_ipv4());
        next.deny.push(net("100.64.0.0/10"));
        next.tenant_networks = vec![(net("198.51.100.0/24"), 9), (net("192.0.2.0/25"), 8)];

        let plan = plan(&next, &state).unwrap();
        assert_eq!(plan.settings, None, "settings unchanged");
        assert_eq!(plan.add_ports, [9443]);
        assert_eq!(plan.remove_ports, [8443]);
        assert_eq!(plan.add_deny, [net("100.64.0.0/10")]);
        assert_eq!(plan.remove_deny, [net("2001:db8:bad::/48")]);
        assert_eq!(
            plan.set_tenant_networks,
            [(net("198.51.100.0/24"), 9)],
            "moved to another tenant"
        );
        assert_eq!(plan.remove_tenant_networks, [net("2001:db8:7::/48")]);
        assert_eq!(
            plan.to_string(),
            "+ protected port 9443\n- protected port 8443\n+ deny 100.64.0.0/10\n\
             - deny 2001:db8:bad::/48\n+ tenant network 198.51.100.0/24 -> tenant 9\n\
             - tenant network 2001:db8:7::/48\n"
        );
        assert!(super::plan(&next, &after(&state, &plan))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn settings_change_alone() {
        let state = after(
            &Current::default(),
            &plan(&desired(), &Current::default()).unwrap(),
        );
        let mut next = desired();
        next.syn_rate_per_second = 0;
        next.deny_action = Action::Drop;
        let plan = plan(&next, &state).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan.settings,
            Some(Settings {
                syn_rate: 0,
                syn_burst: 10,
                deny_action: layout::ACTION_DROP,
                pad: 0
            })
        );
    }

    #[test]
    fn host_bits_and_duplicates_collapse() {
        let d = Desired {
            deny: vec![net("10.1.2.3/8"), net("10.0.0.0/8")],
            tenant_networks: vec![(net("192.0.2.9/24"), 3), (net("192.0.2.0/24"), 3)],
            ..Desired::default()
        };
        let plan = plan(&d, &Current::default()).unwrap();
        assert_eq!(plan.add_deny, [net("10.0.0.0/8")]);
        assert_eq!(plan.set_tenant_networks, [(net("192.0.2.0/24"), 3)]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_place() {
        let d = Desired {
            protected_ports: [0, 443].into(),
            tenant_networks: vec![
                (net("192.0.2.0/24"), 1),
                (net("10.0.0.0/8"), 2),
                (net("192.0.2.1/24"), 3),
            ],
            syn_rate_per_second: 10,
            syn_burst: 0,
            ..Desired::default()
        };
        let err = plan(&d, &Current::default()).unwrap_err();
        assert_eq!(
            err.problems,
            [
                "protected_ports: 0 is not a port",
                "syn_burst: must be >= 1 when syn_rate_per_second is 10 (0 turns the SYN limit off)",
                "tenant_networks[2]: 192.0.2.0/24 -> tenant 3: also claimed by tenant 1 (tenant_networks[0])",
            ]
        );
        assert!(err
            .to_string()
            .starts_with("desired state is invalid:\n  protected_ports"));
    }

    #[test]
    fn too_many_entries_for_a_map() {
        let d = Desired {
            protected_ports: (1..=u16::try_from(layout::MAX_PORTS + 1).unwrap()).collect(),
            ..Desired::default()
        };
        let err = plan(&d, &Current::default()).unwrap_err();
        assert_eq!(
            err.problems,
            [format!(
                "protected_ports: {} entries, the map holds {}",
                layout::MAX_PORTS + 1,
                layout::MAX_PORTS
            )]
        );
    }

    #[test]
    fn entries_written_by_someone_else_are_removed() {
        // A pinned map may hold entries from an older config or a manual
        // bpftool write; the plan converges to config either way.
        let current = Current {
            protected_ports: [22].into(),
            deny: [net("0.0.0.0/0")].into(),
            tenant_networks: [(net("10.0.0.0/8"), 1)].into(),
            ..Current::default()
        };
        let plan = plan(&Desired::default(), &current).unwrap();
        assert_eq!(plan.remove_ports, [22]);
        assert_eq!(plan.remove_deny, [net("0.0.0.0/0")]);
        assert_eq!(plan.remove_tenant_networks, [net("10.0.0.0/8")]);
        assert_eq!(
            plan.settings,
            Some(Settings {
                deny_action: layout::ACTION_DROP,
                ..Settings::default()
            })
        );
    }
}
