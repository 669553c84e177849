//! Typed handles on the program's maps: apply a plan, runtime writes from
//! edge, counters.
//!
//! [`Maps::open`] opens the maps pinned under a bpffs directory (what edge
//! and the CLI do once `attach` has run); [`Maps::take`] takes them from a
//! freshly loaded, unpinned object (tests). Config-owned maps change only
//! through [`Maps::apply`] of a [`Plan`]; edge writes the runtime ones:
//! learned addresses ([`Maps::record_learned`]) and verdicts
//! ([`Maps::write_verdict`]). Writes take `&mut self` (aya's map API); a
//! handle is a few file descriptors, so each core can open its own.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use aya::{
    maps::{
        Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
    },
    Ebpf,
};

use crate::{
    layout::{self, Action, Addr, Learned, Reason, Settings, SynBucket, Verdict},
    plan::{Current, Plan},
    Error,
};

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// Every map of the program, typed.
pub struct Maps {
    settings: Array<MapData, Settings>,
    ports: HashMap<MapData, u16, u8>,
    deny: LpmTrie<MapData, Addr, u8>,
    tenant_nets: LpmTrie<MapData, Addr, u32>,
    learned: HashMap<MapData, Addr, Learned>,
    verdicts: HashMap<MapData, u32, Verdict>,
    syn_buckets: HashMap<MapData, Addr, SynBucket>,
    stats: PerCpuArray<MapData, u64>,
    tenant_rejects: PerCpuHashMap<MapData, u32, u64>,
}

/// What [`Maps::record_learned`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LearnedOutcome {
    /// First time this address is seen: now tied to the tenant.
    New,
    /// Already tied to this tenant; nothing written.
    Known,
    /// Was tied to another tenant: now shared, never rejected.
    NowShared,
    /// Already shared; nothing written.
    Shared,
}

/// Totals summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Protected connection attempts let through.
    pub passed: u64,
    /// Rejected by the static deny list.
    pub denied: u64,
    /// Rejected by a tenant verdict.
    pub tenant_rejected: u64,
    /// Dropped by the per-source SYN bucket.
    pub syn_limited: u64,
    /// Packets whose headers did not parse (passed).
    pub malformed: u64,
    /// Connection attempts rejected per tenant id.
    pub per_tenant: BTreeMap<u32, u64>,
}

impl Counters {
    pub fn get(&self, reason: Reason) -> u64 {
        match reason {
            Reason::Passed => self.passed,
            Reason::Denied => self.denied,
            Reason::TenantRejected => self.tenant_rejected,
            Reason::SynLimited => self.syn_limited,
            Reason::Malformed => self.malformed,
        }
    }

    fn slot(&mut self, reason: Reason) -> &mut u64 {
        match reason {
            Reason::Passed => &mut self.passed,
            Reason::Denied => &mut self.denied,
            Reason::TenantRejected => &mut self.tenant_rejected,
            Reason::SynLimited => &mut self.syn_limited,
            Reason::Malformed => &mut self.malformed,
        }
    }
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    pub name: &'static str,
    pub entries: u32,
    pub max_entries: u32,
}

impl Maps {
    /// Opens the maps pinned under `pin_dir` (by [`crate::attach`]).
    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        let missing: Vec<&str> = layout::MAP_NAMES
            .iter()
            .copied()
            .filter(|name| !pin_dir.join(name).exists())
            .collect();
        if missing.len() == layout::MAP_NAMES.len() {
            return Err(Error::NotPinned {
                dir: pin_dir.to_owned(),
            });
        }
        if let Some(name) = missing.first() {
            return Err(Error::MissingPin {
                path: pin_dir.join(name),
            });
        }
        Self::from_source(|name| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| map_error(name, source))?;
            crate::attach::check_pinned_map(name, &data, &path)?;
            Map::from_map_data(data).map_err(|source| map_error(name, source))
        })
    }

    /// Takes the maps out of a loaded object (the program keeps its own
    /// references, so they stay shared with it).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Self::from_source(|name| ebpf.take_map(name).ok_or(Error::MissingMap { name }))
    }

    fn from_source(
        mut source: impl FnMut(&'static str) -> Result<Map, Error>,
    ) -> Result<Self, Error> {
        macro_rules! typed {
            ($name:expr) => {{
                let name: &'static str = $name;
                source(name)?.try_into().map_err(|e| map_error(name, e))?
            }};
        }
        Ok(Self {
            settings: typed!(layout::MAP_SETTINGS),
            ports: typed!(layout::MAP_PORTS),
            deny: typed!(layout::MAP_DENY),
            tenant_nets: typed!(layout::MAP_TENANT_NETS),
            learned: typed!(layout::MAP_LEARNED),
            verdicts: typed!(layout::MAP_VERDICTS),
            syn_buckets: typed!(layout::MAP_SYN_BUCKETS),
            stats: typed!(layout::MAP_STATS),
            tenant_rejects: typed!(layout::MAP_TENANT_REJECTS),
        })
    }

    /// What the config-owned maps hold now (input of [`crate::plan::plan`]).
    pub fn current(&self) -> Result<Current, Error> {
        let mut current = Current {
            settings: self
                .settings
                .get(&0, 0)
                .map_err(|e| map_error(layout::MAP_SETTINGS, e))?,
            ..Current::default()
        };
        for port in self.ports.keys() {
            current
                .protected_ports
                .insert(port.map_err(|e| map_error(layout::MAP_PORTS, e))?);
        }
        for key in self.deny.keys() {
            let key = key.map_err(|e| map_error(layout::MAP_DENY, e))?;
            current
                .deny
                .insert(layout::lpm_net(&key).ok_or_else(|| foreign_key(layout::MAP_DENY))?);
        }
        for entry in self.tenant_nets.iter() {
            let (key, tenant) = entry.map_err(|e| map_error(layout::MAP_TENANT_NETS, e))?;
            let net = layout::lpm_net(&key).ok_or_else(|| foreign_key(layout::MAP_TENANT_NETS))?;
            current.tenant_networks.insert(net, tenant);
        }
        Ok(current)
    }

    /// Performs `plan`: additions first, removals last, so a reload never
    /// opens a moment where a network still denied by the new config is let
    /// through.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), Error> {
        if let Some(settings) = &plan.settings {
            self.settings
                .set(0, settings, 0)
                .map_err(|e| map_error(layout::MAP_SETTINGS, e))?;
        }
        for net in &plan.add_deny {
            self.deny
                .insert(&layout::lpm_key(net), 1, BPF_ANY)
                .map_err(|e| map_error(layout::MAP_DENY, e))?;
        }
        for (net, tenant) in &plan.set_tenant_networks {
            self.tenant_nets
                .insert(&layout::lpm_key(net), tenant, BPF_ANY)
                .map_err(|e| map_error(layout::MAP_TENANT_NETS, e))?;
        }
        for port in &plan.add_ports {
            self.ports
                .insert(port, 1, BPF_ANY)
                .map_err(|e| map_error(layout::MAP_PORTS, e))?;
        }
        for port in &plan.remove_ports {
            ignore_missing(self.ports.remove(port)).map_err(|e| map_error(layout::MAP_PORTS, e))?;
        }
        for net in &plan.remove_tenant_networks {
            ignore_missing(self.tenant_nets.remove(&layout::lpm_key(net)))
                .map_err(|e| map_error(layout::MAP_TENANT_NETS, e))?;
        }
        for net in &plan.remove_deny {
            ignore_missing(self.deny.remove(&layout::lpm_key(net)))
                .map_err(|e| map_error(layout::MAP_DENY, e))?;
        }
        Ok(())
    }

    /// Ties `addr` to `tenant` after an authenticated request from it. An
    /// address already tied to another tenant becomes shared and is never
    /// rejected for either (a NAT in front of several tenants). Safe to call
    /// from several cores at once: the first tie is an insert-if-absent, and
    /// every later write only ever sets the shared flag. Costs one or two
    /// syscalls: call it when a (source, tenant) pair is new, not per request.
    pub fn record_learned(&mut self, addr: IpAddr, tenant: u32) -> Result<LearnedOutcome, Error> {
        let key = Addr::from_ip(addr);
        let fresh = Learned {
            tenant_id: tenant,
            flags: 0,
        };
        // Two tries: an entry evicted by the LRU between our insert attempt
        // and the lookup is simply inserted again.
        for _ in 0..2 {
            match self.learned.insert(key, fresh, BPF_NOEXIST) {
                Ok(()) => return Ok(LearnedOutcome::New),
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(map_error(layout::MAP_LEARNED, e)),
            }
            let existing = match self.learned.get(&key, 0) {
                Ok(existing) => existing,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_error(layout::MAP_LEARNED, e)),
            };
            if existing.is_shared() {
                return Ok(LearnedOutcome::Shared);
            }
            if existing.tenant_id == tenant {
                return Ok(LearnedOutcome::Known);
            }
            let shared = Learned {
                tenant_id: existing.tenant_id,
                flags: existing.flags | layout::LEARNED_SHARED,
            };
            self.learned
                .insert(key, shared, BPF_ANY)
                .map_err(|e| map_error(layout::MAP_LEARNED, e))?;
            return Ok(LearnedOutcome::NowShared);
        }
        // Evicted between insert and lookup twice in a row: one last plain
        // insert-if-absent, whose error (if any) is reported.
        self.learned
            .insert(key, fresh, BPF_NOEXIST)
            .map_err(|e| map_error(layout::MAP_LEARNED, e))?;
        Ok(LearnedOutcome::New)
    }

    /// The learned entry for `addr`, if any.
    pub fn learned(&self, addr: IpAddr) -> Result<Option<Learned>, Error> {
        optional(self.learned.get(&Addr::from_ip(addr), 0))
            .map_err(|e| map_error(layout::MAP_LEARNED, e))
    }

    /// Rejects `tenant`'s new connections with `action` until `expires_at`,
    /// a time on the CLOCK_MONOTONIC clock that `bpf_ktime_get_ns` reads
    /// (see [`monotonic_now`]). Overwrites any earlier verdict; an expired
    /// verdict simply stops matching, nobody has to delete it.
    pub fn write_verdict(
        &mut self,
        tenant: u32,
        action: Action,
        expires_at: Duration,
    ) -> Result<(), Error> {
        let verdict = Verdict {
            action: action.to_raw(),
            pad: 0,
            expires_at_ns: u64::try_from(expires_at.as_nanos()).unwrap_or(u64::MAX),
        };
        self.verdicts
            .insert(tenant, verdict, BPF_ANY)
            .map_err(|e| map_error(layout::MAP_VERDICTS, e))
    }

    /// Lifts `tenant`'s verdict before it expires (e.g. after a top-up).
    pub fn clear_verdict(&mut self, tenant: u32) -> Result<(), Error> {
        ignore_missing(self.verdicts.remove(&tenant))
            .map_err(|e| map_error(layout::MAP_VERDICTS, e))
    }

    /// `tenant`'s verdict, expired or not.
    pub fn verdict(&self, tenant: u32) -> Result<Option<Verdict>, Error> {
        optional(self.verdicts.get(&tenant, 0)).map_err(|e| map_error(layout::MAP_VERDICTS, e))
    }

    /// Per-reason totals and per-tenant rejections, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut counters = Counters::default();
        for reason in Reason::ALL {
            let per_cpu = self
                .stats
                .get(&reason.index(), 0)
                .map_err(|e| map_error(layout::MAP_STATS, e))?;
            *counters.slot(reason) = per_cpu.iter().sum();
        }
        for entry in self.tenant_rejects.iter() {
            let (tenant, per_cpu) = entry.map_err(|e| map_error(layout::MAP_TENANT_REJECTS, e))?;
            counters.per_tenant.insert(tenant, per_cpu.iter().sum());
        }
        Ok(counters)
    }

    /// Entries and capacity of every map, in header order.
    pub fn fill(&self) -> Result<Vec<Fill>, Error> {
        fn row<K: aya::Pod>(
            name: &'static str,
            data: &MapData,
            keys: aya::maps::MapKeys<'_, K>,
        ) -> Result<Fill, Error> {
            let max_entries = data.info().map_err(|e| map_error(name, e))?.max_entries();
            let mut entries = 0u32;
            for key in keys {
                key.map_err(|e| map_error(name, e))?;
                entries += 1;
            }
            Ok(Fill {
                name,
                entries,
                max_entries,
            })
        }
        Ok(vec![
            // Arrays are always full: one settings entry, one slot per reason.
            Fill {
                name: layout::MAP_SETTINGS,
                entries: 1,
                max_entries: 1,
            },
            row(layout::MAP_PORTS, self.ports.map(), self.ports.keys())?,
            row(layout::MAP_DENY, self.deny.map(), self.deny.keys())?,
            row(
                layout::MAP_TENANT_NETS,
                self.tenant_nets.map(),
                self.tenant_nets.keys(),
            )?,
            row(layout::MAP_LEARNED, self.learned.map(), self.learned.keys())?,
            row(
                layout::MAP_VERDICTS,
                self.verdicts.map(),
                self.verdicts.keys(),
            )?,
            row(
                layout::MAP_SYN_BUCKETS,
                self.syn_buckets.map(),
                self.syn_buckets.keys(),
            )?,
            Fill {
                name: layout::MAP_STATS,
                entries: layout::REASON_COUNT,
                max_entries: layout::REASON_COUNT,
            },
            row(
                layout::MAP_TENANT_REJECTS,
                self.tenant_rejects.map(),
                self.tenant_rejects.keys(),
            )?,
        ])
    }
}

/// Now on the clock verdict expiries use: CLOCK_MONOTONIC, which is what
/// `bpf_ktime_get_ns` reads (it does not count time suspended).
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer; with
    // CLOCK_MONOTONIC it cannot fail on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn optional<V>(r: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn map_error(name: &'static str, source: MapError) -> Error {
    Error::Map { name, source }
}

fn foreign_key(name: &'static str) -> Error {
    Error::ForeignEntry { name }
}
