//! sluice-loader: the user-space half of kernel early rejection.
//!
//! The XDP program (`ebpf/sluice_xdp.c`, embedded by [`object`]) turns away
//! connection attempts from denied sources and over-quota tenants before
//! they cost a TLS handshake. This crate loads it with aya, attaches it to
//! interfaces and pins everything under one bpffs directory ([`attach`]),
//! keeps the config-owned maps in step with config through a pure
//! [`plan::plan`] and [`Maps::apply`], and gives edge the runtime writes:
//!
//! ```no_run
//! # fn main() -> Result<(), loader::Error> {
//! use std::{path::Path, time::Duration};
//! let mut maps = loader::Maps::open(Path::new(loader::layout::PIN_DIR))?;
//! maps.record_learned("198.51.100.7".parse().unwrap(), 7)?; // authenticated request from there
//! let until = loader::monotonic_now() + Duration::from_secs(30);
//! maps.write_verdict(7, loader::Action::Rst, until)?;        // tenant 7 is over quota
//! let counters = maps.counters()?;
//! # Ok(()) }
//! ```
//!
//! Map names, layouts and numbers come from `ebpf/sluice_maps.h` through
//! [`layout`]; the CLI is `src/main.rs`.

pub mod attach;
pub mod file;
pub mod layout;
pub mod maps;
pub mod object;
pub mod plan;
mod sys;

use std::{io, path::PathBuf};

pub use attach::{attach, detach, status, Attached, Interface, Mode};
pub use layout::{Action, Reason};
pub use maps::{monotonic_now, Counters, LearnedOutcome, Maps};
pub use plan::{plan, Current, Desired, Plan, PlanError};

/// Everything the loader can fail at, each naming the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path}: no bpf filesystem ({source}); mount one: mount -t bpf bpf /sys/fs/bpf, or pick a \
         pin dir under a bpffs"
    )]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("no sluice maps are pinned under {dir}: run `sluice-loader attach` first")]
    NotPinned { dir: PathBuf },
    #[error(
        "{path} is missing while other sluice maps are pinned beside it: run `sluice-loader \
         detach`, then attach again"
    )]
    MissingPin { path: PathBuf },
    #[error(
        "pinned map {path} is {found}, but this loader's program expects {expected}: it was \
         pinned by another sluice version; `sluice-loader detach` removes the old pins (learned \
         addresses and verdicts are lost)"
    )]
    PinnedMapMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {name} holds an entry the loader never writes (unknown family or prefix length)")]
    ForeignEntry { name: &'static str },
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("the XDP object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("loading the XDP object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("attach xdp to {interface} in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: Mode,
        source: aya::programs::ProgramError,
    },
    #[error(
        "attach xdp to {interface}: the kernel attached without a bpf_link (Linux 5.9+ needed), \
         so the attachment cannot be pinned"
    )]
    NoLinkSupport { interface: String },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("pin {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
}
