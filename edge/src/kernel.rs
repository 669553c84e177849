//! Kernel early rejection, the edge side (DESIGN.md §2 items 19–20, §3).
//!
//! With `[ebpf] enabled`, sluice opens the maps the XDP program pins under
//! `ebpf.pin_dir` (attaching the program itself first when `ebpf.attach`)
//! and keeps the config-owned maps in step (protected ports = the
//! listeners', deny list, tenants' declared networks, SYN bucket). On the
//! request path, without blocking it:
//! - after a successful auth, a source address not seen before on this core
//!   is recorded as the consumer's (a second tenant on the same address
//!   marks it shared, and the kernel never rejects a shared address);
//! - when the quota engine refuses a tenant for a spent balance or budget,
//!   or for a rate limit that resets further away than
//!   `ebpf.escalate_after_ms`, a verdict with an expiry goes into the map,
//!   and the kernel turns the tenant's new connections away until then.
//!   Nothing clears a verdict by hand: it expires.
//!
//! Each map write is a syscall (~1 µs), so each core remembers the
//! addresses it recorded. Without privileges or kernel support sluice runs with userspace
//! rejection only and says so at start and in `/readyz`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use sluice_config::{Config, RejectAction, XdpMode};

/// A consumer's tenant id in the kernel maps: stable across reloads and
/// config reordering (FNV-1a of the name), never 0.
pub fn tenant_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn action(a: RejectAction) -> loader::Action {
    match a {
        RejectAction::Rst => loader::Action::Rst,
        RejectAction::Drop => loader::Action::Drop,
    }
}

/// What the config says the maps should hold.
pub fn desired(config: &Config) -> loader::Desired {
    let e = &config.ebpf;
    loader::Desired {
        protected_ports: config
            .listeners
            .iter()
            .map(|l| l.address.port())
            .filter(|p| *p != 0)
            .collect(),
        deny: e.deny.clone(),
        deny_action: action(e.action),
        tenant_networks: config
            .consumers
            .iter()
            .flat_map(|c| c.networks.iter().map(move |n| (*n, tenant_id(&c.name))))
            .collect(),
        syn_rate_per_second: e.syn_rate_per_second,
        syn_burst: e.syn_burst,
    }
}

/// Process start: attach when configured, bring the maps in step with the
/// config. `Ok(status)` for /readyz and the log; `Err(why)` = userspace only.
pub fn start(config: &Config) -> Result<String, String> {
    let e = &config.ebpf;
    let pin_dir = e.pin_dir.as_path();
    let mut status = String::new();
    if e.attach {
        let mode = match e.mode {
            XdpMode::Native => loader::Mode::Native,
            XdpMode::Skb => loader::Mode::Skb,
        };
        let interfaces: Vec<loader::Interface> = e
            .interfaces
            .iter()
            .map(|name| loader::Interface {
                name: name.clone(),
                mode,
            })
            .collect();
        let attached =
            loader::attach(pin_dir, &interfaces).map_err(|err| format!("attach failed: {err}"))?;
        let list: Vec<String> = attached
            .iter()
            .map(|a| format!("{} ({})", a.interface, a.mode.name()))
            .collect();
        status = format!("XDP attached to {}", list.join(", "));
    }
    let mut maps = loader::Maps::open(pin_dir).map_err(|err| err.to_string())?;
    let current = maps.current().map_err(|err| err.to_string())?;
    let plan = loader::plan(&desired(config), &current).map_err(|err| format!("{err:?}"))?;
    maps.apply(&plan).map_err(|err| err.to_string())?;
    if status.is_empty() {
        status = format!("using XDP maps pinned under {}", pin_dir.display());
    }
    Ok(status)
}

/// Source addresses a core remembers having recorded.
const LEARNED_CACHE: usize = 65_536;

/// One core's handle on the maps, and what it already wrote.
pub struct Kernel {
    maps: RefCell<loader::Maps>,
    learned: RefCell<HashMap<IpAddr, u32>>,
    action: loader::Action,
    escalate_after: Duration,
    quota_verdict: Duration,
}

impl Kernel {
    pub fn open(config: &Config) -> Result<Kernel, String> {
        let maps =
            loader::Maps::open(Path::new(&config.ebpf.pin_dir)).map_err(|e| e.to_string())?;
        Ok(Kernel {
            maps: RefCell::new(maps),
            learned: RefCell::new(HashMap::new()),
            action: action(config.ebpf.action),
            escalate_after: config.ebpf.escalate_after,
            quota_verdict: config.ebpf.quota_verdict,
        })
    }

    /// An authenticated request of `tenant` came from `addr`.
    pub fn learned(&self, addr: IpAddr, tenant: u32) {
        if self.learned.borrow().get(&addr) == Some(&tenant) {
            return;
        }
        if self.maps.borrow_mut().record_learned(addr, tenant).is_ok() {
            let mut learned = self.learned.borrow_mut();
            // Bounded: forgetting only costs a repeated (idempotent) write.
            if learned.len() >= LEARNED_CACHE {
                learned.clear();
            }
            learned.insert(addr, tenant);
        }
    }

    /// The quota engine refused `tenant`: reject it in the kernel when the
    /// refusal lasts (`retry_after` 0 = a spent balance, which lasts until a
    /// top-up: re-checked every `quota_verdict`).
    pub fn refused(&self, tenant: u32, quota: bool, retry_after: Duration) {
        let length = if quota {
            // A budget admits again when its window turns; a balance when
            // topped up, which only a request can find out.
            if retry_after.is_zero() {
                self.quota_verdict
            } else {
                retry_after
            }
        } else if retry_after > self.escalate_after {
            retry_after
        } else {
            return;
        };
        // Refusals reach here only over connections opened before the
        // verdict (new ones stop in the kernel), so writing every time is
        // cheap, and an admin top-up that lifted the verdict is honoured.
        let until = loader::monotonic_now() + length;
        let _ = self
            .maps
            .borrow_mut()
            .write_verdict(tenant, self.action, until);
    }
}

/// Listeners on port 0 get their port only when bound: protect those too.
pub fn protect_ports(config: &Config, bound: &[std::net::SocketAddr]) -> Result<(), String> {
    let mut want = desired(config);
    want.protected_ports.extend(bound.iter().map(|a| a.port()));
    let mut maps =
        loader::Maps::open(Path::new(&config.ebpf.pin_dir)).map_err(|e| e.to_string())?;
    let current = maps.current().map_err(|e| e.to_string())?;
    let plan = loader::plan(&want, &current).map_err(|e| format!("{e:?}"))?;
    maps.apply(&plan).map_err(|e| e.to_string())
}

/// A topped-up tenant need not wait for its verdict to lapse.
pub fn lift(maps: &mut loader::Maps, consumer: &str) {
    let _ = maps.clear_verdict(tenant_id(consumer));
}

/// Kernel counters for /metrics, read from a handle of the admin thread's.
pub fn counters(maps: &loader::Maps) -> Option<loader::Counters> {
    maps.counters().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_stable_and_never_zero() {
        assert_eq!(tenant_id("alice"), tenant_id("alice"));
        assert_ne!(tenant_id("alice"), tenant_id("bob"));
        assert_ne!(tenant_id(""), 0);
    }
}
