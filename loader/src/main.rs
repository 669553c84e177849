//! `sluice-loader`: attach, apply, status, detach from a shell.
//!
//! ```text
//! sluice-loader [--pin-dir DIR] attach [--config FILE] [--iface NAME]... [--mode native|skb]
//! sluice-loader [--pin-dir DIR] apply --config FILE [--dry-run]
//! sluice-loader [--pin-dir DIR] status
//! sluice-loader [--pin-dir DIR] detach [--iface NAME]...
//! ```
//!
//! The config file is the loader's own desired-state TOML (see
//! `loader::file`). Every command is idempotent: attach twice swaps the
//! program in place, apply twice writes nothing the second time.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use loader::{attach, file, layout, Interface, Maps, Mode};

#[derive(Parser)]
#[command(
    name = "sluice-loader",
    version,
    about = "Load and manage sluice's XDP early-rejection program"
)]
struct Cli {
    /// bpffs directory holding the program, link and map pins.
    #[arg(long, global = true, default_value = layout::PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the program, attach it to interfaces and pin it (mounts bpffs if
    /// needed); with --config, also apply the file's desired state.
    Attach {
        /// Desired-state file; its [[interfaces]] are attached too.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Interface to attach to (repeatable).
        #[arg(long = "iface")]
        interfaces: Vec<String>,
        /// Mode for the --iface interfaces; native falls back to skb with a
        /// warning when the driver has no native XDP.
        #[arg(long, default_value = "native")]
        mode: Mode,
    },
    /// Bring the pinned maps in line with a desired-state file, writing only
    /// the differences.
    Apply {
        #[arg(long)]
        config: PathBuf,
        /// Print the changes without writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Attached interfaces and modes, map fill levels, counters.
    Status,
    /// Detach from interfaces (all by default); with none left, remove every
    /// pin.
    Detach {
        #[arg(long = "iface")]
        interfaces: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("sluice-loader: {}", describe(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, skipping a cause that the message
/// above it already spells out (the library's messages embed their source).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

fn run(cli: Cli) -> Result<()> {
    let pin_dir = cli.pin_dir.as_path();
    match cli.command {
        Command::Attach {
            config,
            interfaces,
            mode,
        } => {
            let file = config.as_deref().map(read_file).transpose()?;
            let mut wanted: Vec<Interface> = file
                .as_ref()
                .map(|f| f.interfaces.clone())
                .unwrap_or_default();
            wanted.extend(interfaces.into_iter().map(|name| Interface { name, mode }));
            if wanted.is_empty() {
                bail!("nothing to attach to: give --iface NAME or [[interfaces]] in --config");
            }
            for attached in attach::attach(pin_dir, &wanted)? {
                if let Some(why) = &attached.fallback {
                    eprintln!("warning: {why}");
                }
                let how = if attached.replaced {
                    "program replaced in place"
                } else {
                    "attached"
                };
                println!("{}: {how} ({} mode)", attached.interface, attached.mode);
            }
            if let Some(file) = file {
                apply(pin_dir, &file.desired, false)?;
            }
            Ok(())
        }
        Command::Apply { config, dry_run } => apply(pin_dir, &read_file(&config)?.desired, dry_run),
        Command::Status => {
            print!("{}", render_status(pin_dir, &attach::status(pin_dir)?));
            Ok(())
        }
        Command::Detach { interfaces } => {
            let only = (!interfaces.is_empty()).then_some(interfaces.as_slice());
            let detached = attach::detach(pin_dir, only)?;
            for link in &detached.links {
                println!("{}: detached ({} mode)", link.interface, link.mode);
            }
            if detached.links.is_empty() && !detached.cleaned_up {
                println!("no sluice program is attached to {}", interfaces.join(", "));
            }
            if detached.cleaned_up {
                println!("removed every pin under {}", pin_dir.display());
            }
            Ok(())
        }
    }
}

fn read_file(path: &Path) -> Result<file::File> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    file::parse(&text).with_context(|| format!("{}", path.display()))
}

fn apply(pin_dir: &Path, desired: &loader::Desired, dry_run: bool) -> Result<()> {
    let mut maps = Maps::open(pin_dir)?;
    let plan = loader::plan(desired, &maps.current()?)?;
    if plan.is_empty() {
        println!("maps already match the desired state");
        return Ok(());
    }
    print!("{plan}");
    if dry_run {
        println!("dry run: {} change(s) not written", plan.len());
    } else {
        maps.apply(&plan)?;
        println!("applied {} change(s)", plan.len());
    }
    Ok(())
}

fn render_status(pin_dir: &Path, status: &attach::Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pin dir     {}", pin_dir.display());
    match &status.program {
        Some(p) => {
            let _ = writeln!(out, "program     {} (id {})", p.name, p.id);
        }
        None => {
            let _ = writeln!(out, "program     not loaded");
        }
    }
    let _ = writeln!(out, "interfaces");
    if status.links.is_empty() {
        let _ = writeln!(out, "  (none attached)");
    }
    for link in &status.links {
        let state = if link.ifindex == 0 {
            "interface gone, link defunct".to_owned()
        } else {
            format!("ifindex {}", link.ifindex)
        };
        let _ = writeln!(
            out,
            "  {:<15} {:<6} link {} prog {} {state}",
            link.pin.interface, link.pin.mode, link.link_id, link.prog_id
        );
    }
    if let Some(maps) = &status.maps {
        let _ = writeln!(out, "maps        entries / max");
        for fill in maps {
            let _ = writeln!(
                out,
                "  {:<16} {:>8} / {}",
                fill.name, fill.entries, fill.max_entries
            );
        }
    }
    if let Some(counters) = &status.counters {
        let _ = writeln!(out, "counters");
        for reason in loader::Reason::ALL {
            let _ = writeln!(out, "  {:<16} {}", reason.name(), counters.get(reason));
        }
        if !counters.per_tenant.is_empty() {
            let _ = writeln!(out, "rejections per tenant");
            for (tenant, n) in &counters.per_tenant {
                let _ = writeln!(out, "  tenant {tenant:<9} {n}");
            }
        }
    }
    out
}
