//! Load, attach, pin, detach, status: everything that touches the kernel
//! besides map contents.
//!
//! Everything lives under one bpffs directory (default [`layout::PIN_DIR`]):
//! one pin per map (named after the map), the program ([`layout::PIN_PROG`])
//! and one bpf_link per interface (`link_<mode>_<ifname>`). Pinned links keep
//! the program attached after the loader exits, and pinned maps keep their
//! contents across loader restarts and program upgrades: [`attach`] run
//! again loads the program anew against the same maps and swaps it into the
//! existing links atomically, so no packet goes unjudged. [`detach`] undoes
//! it all.

use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapType},
    programs::{links::FdLink, links::PinnedLink, xdp::XdpLink, ProgramInfo, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

use crate::{
    layout,
    maps::{Counters, Fill, Maps},
    object, sys, Error,
};

/// Where XDP runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the driver, before any skb exists (fastest). Falls back to skb
    /// with a warning when the driver has no native XDP.
    Native,
    /// Generic XDP in the network stack: works on every interface.
    Skb,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(Self::Native),
            "skb" => Some(Self::Skb),
            _ => None,
        }
    }

    fn xdp(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| format!("unknown XDP mode `{s}`: use native or skb"))
    }
}

/// An interface to attach to, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mode: Mode,
}

/// What [`attach`] did on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub interface: String,
    /// The mode the program runs in now.
    pub mode: Mode,
    /// The interface already had a sluice link: the new program was swapped
    /// into it atomically.
    pub replaced: bool,
    /// Native was asked for and failed: why, and that skb is used instead.
    pub fallback: Option<String>,
}

/// Makes sure `pin_dir` can hold pins: mounts bpffs on /sys/fs/bpf when the
/// directory lies below it and nothing is mounted there, then creates the
/// directory. Returns whether it mounted.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<bool, Error> {
    let bpffs_root = Path::new("/sys/fs/bpf");
    let mut mounted = false;
    if pin_dir.starts_with(bpffs_root) {
        // Two loaders starting at once must not both mount: the second mount
        // would hide the first one's pins. The lock is taken on the directory
        // as it was before any mount, so both contend for the same inode.
        let _lock = sys::lock_dir(bpffs_root).map_err(|source| Error::Io {
            what: "lock",
            path: bpffs_root.to_owned(),
            source,
        })?;
        let on_bpffs = sys::is_bpffs(bpffs_root).map_err(|source| Error::Io {
            what: "statfs",
            path: bpffs_root.to_owned(),
            source,
        })?;
        if !on_bpffs {
            sys::mount_bpffs(bpffs_root).map_err(|source| Error::Bpffs {
                path: bpffs_root.to_owned(),
                source,
            })?;
            mounted = true;
        }
    }
    fs::create_dir_all(pin_dir).map_err(|source| Error::Io {
        what: "create pin dir",
        path: pin_dir.to_owned(),
        source,
    })?;
    match sys::is_bpffs(pin_dir) {
        Ok(true) => Ok(mounted),
        Ok(false) => Err(Error::Bpffs {
            path: pin_dir.to_owned(),
            source: io::Error::other("not a bpf filesystem"),
        }),
        Err(source) => Err(Error::Io {
            what: "statfs",
            path: pin_dir.to_owned(),
            source,
        }),
    }
}

/// Checks a pinned map against what this loader's program expects, so a
/// pin left by another sluice version is refused instead of misread.
pub fn check_pinned_map(name: &str, data: &MapData, path: &Path) -> Result<(), Error> {
    let Some(spec) = layout::MAP_SPECS.iter().find(|s| s.name == name) else {
        return Ok(());
    };
    let info = data.info().map_err(|source| Error::Map {
        name: spec.name,
        source,
    })?;
    let found = (
        info.map_type().ok(),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    let expected = (
        Some(spec.kind),
        spec.key_size,
        spec.value_size,
        spec.max_entries,
    );
    if found == expected {
        return Ok(());
    }
    let describe = |kind: Option<MapType>, key: u32, value: u32, max: u32| {
        format!(
            "{} with {key}-byte keys, {value}-byte values and {max} entries",
            kind.map_or("an unknown type".to_owned(), |k| format!("{k:?}"))
        )
    };
    Err(Error::PinnedMapMismatch {
        path: path.to_owned(),
        found: describe(found.0, found.1, found.2, found.3),
        expected: describe(expected.0, expected.1, expected.2, expected.3),
    })
}

/// Loads the XDP program into the kernel. With `pin_dir`, its maps are the
/// ones pinned there (checked first), or new ones that get pinned there;
/// without, the maps are private to the returned object (tests).
pub fn load(pin_dir: Option<&Path>) -> Result<Ebpf, Error> {
    let mut loader = EbpfLoader::new();
    let pins: Vec<(&'static str, PathBuf)> = match pin_dir {
        Some(dir) => layout::MAP_NAMES
            .iter()
            .map(|name| (*name, dir.join(name)))
            .collect(),
        None => Vec::new(),
    };
    for (name, path) in &pins {
        if path.exists() {
            let data = MapData::from_pin(path).map_err(|source| Error::Map { name, source })?;
            check_pinned_map(name, &data, path)?;
        }
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object::bytes()).map_err(Error::Load)?;
    program_mut(&mut ebpf)?
        .load()
        .map_err(|source| Error::Program {
            name: layout::PROG_XDP,
            source,
        })?;
    Ok(ebpf)
}

/// The XDP program of a loaded object.
pub fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    ebpf.program_mut(layout::PROG_XDP)
        .ok_or(Error::MissingProgram {
            name: layout::PROG_XDP,
        })?
        .try_into()
        .map_err(|source| Error::Program {
            name: layout::PROG_XDP,
            source,
        })
}

/// A pinned link found under the pin dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub interface: String,
    pub mode: Mode,
    pub path: PathBuf,
}

/// `link_<mode>_<ifname>`: the mode first, since interface names may
/// contain `_` but modes do not.
pub fn link_pin_name(interface: &str, mode: Mode) -> String {
    format!("{}{}_{interface}", layout::PIN_LINK_PREFIX, mode)
}

fn parse_link_pin_name(name: &str) -> Option<(String, Mode)> {
    let rest = name.strip_prefix(layout::PIN_LINK_PREFIX)?;
    let (mode, interface) = rest.split_once('_')?;
    Some((interface.to_owned(), Mode::from_name(mode)?))
}

/// The links pinned under `pin_dir`, sorted by interface.
pub fn link_pins(pin_dir: &Path) -> Result<Vec<LinkPin>, Error> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                what: "read pin dir",
                path: pin_dir.to_owned(),
                source,
            })
        }
    };
    let mut pins = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            what: "read pin dir",
            path: pin_dir.to_owned(),
            source,
        })?;
        let file_name = entry.file_name();
        if let Some((interface, mode)) = file_name.to_str().and_then(parse_link_pin_name) {
            pins.push(LinkPin {
                interface,
                mode,
                path: entry.path(),
            });
        }
    }
    pins.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(pins)
}

/// Loads the program (reusing pinned maps), attaches it to every interface
/// and pins program, maps and links under `pin_dir`. Idempotent: an
/// interface that already has a sluice link gets the new program swapped in
/// (in the mode it has; asking for native where an earlier run fell back to
/// skb keeps skb), so running it again — or after an upgrade — never leaves
/// a moment without the program. Interfaces attached earlier and not named
/// now get the new program too; links whose interface vanished are dropped.
pub fn attach(pin_dir: &Path, interfaces: &[Interface]) -> Result<Vec<Attached>, Error> {
    prepare_pin_dir(pin_dir)?;
    let fresh = !layout::MAP_NAMES
        .iter()
        .any(|name| pin_dir.join(name).exists());
    let result = attach_pinned(pin_dir, interfaces);
    // A first attach that failed (unknown interface, verifier) leaves no
    // half-made state behind; existing state is never removed on failure.
    if result.is_err() && fresh && link_pins(pin_dir).is_ok_and(|links| links.is_empty()) {
        let _ = detach(pin_dir, None);
    }
    result
}

fn attach_pinned(pin_dir: &Path, interfaces: &[Interface]) -> Result<Vec<Attached>, Error> {
    let mut ebpf = load(Some(pin_dir))?;
    let program = program_mut(&mut ebpf)?;
    let mut report = Vec::new();

    // A link whose interface is gone (or was recreated under the same name)
    // is defunct and cannot take a new program: drop it and attach anew.
    let mut live = Vec::new();
    for pin in link_pins(pin_dir)? {
        if link_ifindex(&pin)? == 0 {
            detach_link(&pin)?;
        } else {
            live.push(pin);
        }
    }
    // Interfaces attached earlier but not named now keep their link and get
    // the new program too, so every interface runs the same code.
    let mut wanted: Vec<Interface> = interfaces.to_vec();
    for pin in &live {
        if !wanted.iter().any(|i| i.name == pin.interface) {
            wanted.push(Interface {
                name: pin.interface.clone(),
                mode: pin.mode,
            });
        }
    }

    for iface in &wanted {
        let mine: Vec<&LinkPin> = live.iter().filter(|p| p.interface == iface.name).collect();
        let keep = mine
            .iter()
            .find(|p| p.mode == iface.mode || (iface.mode == Mode::Native && p.mode == Mode::Skb));
        // Links in a mode we are not keeping go first (one XDP program per
        // interface and mode family).
        for pin in mine.iter().filter(|p| Some(**p) != keep.copied()) {
            detach_link(pin)?;
        }
        if let Some(pin) = keep {
            replace_program(program, pin)?;
            report.push(Attached {
                interface: iface.name.clone(),
                mode: pin.mode,
                replaced: true,
                fallback: None,
            });
            continue;
        }

        let (link_id, mode, fallback) = match program.attach(&iface.name, iface.mode.xdp()) {
            Ok(id) => (id, iface.mode, None),
            Err(native_error)
                if iface.mode == Mode::Native
                    && !matches!(
                        native_error,
                        aya::programs::ProgramError::UnknownInterface { .. }
                    ) =>
            {
                let id = program
                    .attach(&iface.name, XdpMode::Skb)
                    .map_err(|source| Error::Attach {
                        interface: iface.name.clone(),
                        mode: Mode::Skb,
                        source,
                    })?;
                let why = format!(
                    "attach xdp to {} in native mode failed ({}): the driver has no native XDP; \
                     attached in skb (generic) mode instead, which runs after the kernel has built \
                     an skb and costs more per packet. Set mode = \"skb\" for this interface to \
                     choose it explicitly.",
                    iface.name,
                    error_chain(&native_error)
                );
                (id, Mode::Skb, Some(why))
            }
            Err(source) => {
                return Err(Error::Attach {
                    interface: iface.name.clone(),
                    mode: iface.mode,
                    source,
                })
            }
        };
        let link = program.take_link(link_id).map_err(|source| Error::Attach {
            interface: iface.name.clone(),
            mode,
            source,
        })?;
        let link = FdLink::try_from(link).map_err(|_| Error::NoLinkSupport {
            interface: iface.name.clone(),
        })?;
        let path = pin_dir.join(link_pin_name(&iface.name, mode));
        link.pin(&path)
            .map_err(|source| Error::Pin { path, source })?;
        report.push(Attached {
            interface: iface.name.clone(),
            mode,
            replaced: false,
            fallback,
        });
    }

    // The program pin names the program now in the links; the previous one
    // (if any) goes away with its last link reference.
    let prog_path = pin_dir.join(layout::PIN_PROG);
    remove_if_exists(&prog_path)?;
    program.pin(&prog_path).map_err(|source| Error::Pin {
        path: prog_path,
        source,
    })?;
    Ok(report)
}

/// Swaps `program` into the pinned link atomically (bpf_link_update).
fn replace_program(program: &mut Xdp, pin: &LinkPin) -> Result<(), Error> {
    let link = PinnedLink::from_pin(&pin.path).map_err(|source| Error::Link {
        path: pin.path.clone(),
        source,
    })?;
    let link = XdpLink::try_from(FdLink::from(link)).map_err(|source| Error::Link {
        path: pin.path.clone(),
        source,
    })?;
    program
        .attach_to_link(link)
        .map_err(|source| Error::Attach {
            interface: pin.interface.clone(),
            mode: pin.mode,
            source,
        })?;
    Ok(())
}

/// The interface a pinned link is attached to; 0 when it is defunct.
fn link_ifindex(pin: &LinkPin) -> Result<u32, Error> {
    let fd = sys::obj_get(&pin.path).map_err(|source| Error::Io {
        what: "open pinned link",
        path: pin.path.clone(),
        source,
    })?;
    let info = sys::link_info(fd.as_fd()).map_err(|source| Error::Io {
        what: "link info",
        path: pin.path.clone(),
        source,
    })?;
    Ok(info.ifindex)
}

/// What [`detach`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detached {
    pub links: Vec<LinkPin>,
    /// No link was left, so the program and map pins and the directory were
    /// removed too.
    pub cleaned_up: bool,
}

/// Detaches from `interfaces` (all when `None`). Once no interface is left,
/// removes the program and map pins and the pin directory: nothing of
/// sluice stays in the kernel (learned addresses and verdicts are lost).
pub fn detach(pin_dir: &Path, interfaces: Option<&[String]>) -> Result<Detached, Error> {
    let mut detached = Detached::default();
    for pin in link_pins(pin_dir)? {
        if interfaces.is_some_and(|names| !names.contains(&pin.interface)) {
            continue;
        }
        detach_link(&pin)?;
        detached.links.push(pin);
    }
    if link_pins(pin_dir)?.is_empty() {
        remove_if_exists(&pin_dir.join(layout::PIN_PROG))?;
        for name in layout::MAP_NAMES {
            remove_if_exists(&pin_dir.join(name))?;
        }
        match fs::remove_dir(pin_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "remove pin dir (not empty?)",
                    path: pin_dir.to_owned(),
                    source,
                })
            }
        }
        detached.cleaned_up = true;
    }
    Ok(detached)
}

/// Detaches the link now (so the interface has no program when this
/// returns) and removes its pin.
fn detach_link(pin: &LinkPin) -> Result<(), Error> {
    match sys::obj_get(&pin.path) {
        Ok(fd) => {
            // A link whose interface is gone is already defunct: ENOLINK or
            // similar is fine, the pin still goes.
            let _ = sys::link_detach(fd.as_fd());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                what: "open pinned link",
                path: pin.path.clone(),
                source,
            })
        }
    }
    remove_if_exists(&pin.path)
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            what: "remove pin",
            path: path.to_owned(),
            source,
        }),
    }
}

/// One attached interface as the kernel sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub pin: LinkPin,
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 when the interface is gone (the link is defunct).
    pub ifindex: u32,
}

/// The pinned program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStatus {
    pub id: u32,
    pub name: String,
}

/// Everything `sluice-loader status` shows.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub program: Option<ProgramStatus>,
    pub links: Vec<LinkStatus>,
    /// `None` when no maps are pinned.
    pub maps: Option<Vec<Fill>>,
    pub counters: Option<Counters>,
}

pub fn status(pin_dir: &Path) -> Result<Status, Error> {
    let mut status = Status::default();
    let prog_path = pin_dir.join(layout::PIN_PROG);
    if prog_path.exists() {
        let info = ProgramInfo::from_pin(&prog_path).map_err(|source| Error::Program {
            name: layout::PROG_XDP,
            source,
        })?;
        status.program = Some(ProgramStatus {
            id: info.id(),
            name: info.name_as_str().unwrap_or("").to_owned(),
        });
    }
    for pin in link_pins(pin_dir)? {
        let fd = sys::obj_get(&pin.path).map_err(|source| Error::Io {
            what: "open pinned link",
            path: pin.path.clone(),
            source,
        })?;
        let info = sys::link_info(fd.as_fd()).map_err(|source| Error::Io {
            what: "link info",
            path: pin.path.clone(),
            source,
        })?;
        status.links.push(LinkStatus {
            pin,
            link_id: info.id,
            prog_id: info.prog_id,
            ifindex: info.ifindex,
        });
    }
    match Maps::open(pin_dir) {
        Ok(maps) => {
            status.maps = Some(maps.fill()?);
            status.counters = Some(maps.counters()?);
        }
        Err(Error::NotPinned { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(status)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
