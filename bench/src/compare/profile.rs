//! Where a proxy's CPU time goes: `perf record` on its pid during a
//! phase, then `perf report` flattened to a table of symbols.
//!
//! The profile uses the `cpu-clock` software event, which works in VMs
//! without hardware counters, and no call graphs (the release build has no
//! frame pointers): a flat list of functions by share of samples, plus the
//! split between the kernel, the proxy binary and libraries.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One line of a flat profile.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub percent: f64,
    /// Binary or library (`[kernel.kallsyms]` for the kernel).
    pub object: String,
    pub symbol: String,
}

/// A finished profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub target: String,
    pub scenario: String,
    /// Share of samples by binary/library.
    pub objects: Vec<Entry>,
    /// Share of samples by kind of work (see [`category`]).
    pub categories: Vec<(String, f64)>,
    /// Hottest functions (0.2 % of samples and more).
    pub symbols: Vec<Entry>,
}

/// The kind of work a sampled function does, by its object and name.
pub fn category(e: &Entry) -> &'static str {
    let s = e.symbol.as_str();
    let has = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    // A crate path: at the start of the symbol or of a path inside it
    // (`alloc::string::String` is not the `ring` crate).
    let krate = |names: &[&str]| {
        names.iter().any(|n| {
            s.starts_with(n) || s.contains(&format!("<{n}")) || s.contains(&format!(" {n}"))
        })
    };
    if e.object.contains("kernel") {
        // Samples that land where interrupts are re-enabled belong to the
        // wake-ups that ran with interrupts off (no PMU in a VM).
        return if has(&[
            "tcp", "skb", "inet", "ip_", "sock", "net_", "napi", "bbr", "__dev_", "loopback",
        ]) {
            "kernel: TCP/IP"
        } else if has(&["io_", "sys_", "syscall", "epoll", "fget", "fput", "entry_"]) {
            "kernel: syscalls, io_uring, epoll"
        } else if has(&[
            "irqrestore",
            "unlock_irq",
            "schedule",
            "wake",
            "futex",
            "switch",
            "enqueue",
            "dequeue",
        ]) {
            "kernel: wake-ups and scheduling"
        } else {
            "kernel: other"
        };
    }
    if has(&[
        "malloc",
        "free",
        "_int_",
        "realloc",
        "calloc",
        "unlink_chunk",
        "consolidate",
        "tcache",
    ]) {
        "allocator (malloc/free)"
    } else if has(&["memmove", "memcpy", "memset", "memcmp", "memchr", "strlen"]) {
        "memory copies"
    } else if has(&["tiktoken", "fancy_regex", "regex", "bstr", "CoreBPE"]) {
        "tokenizer (tiktoken, regex)"
    } else if has(&["serde_json", "simd_json", "serde::", "ryu", "itoa"]) {
        "JSON"
    } else if krate(&["rustls::", "ring::", "ring_core"]) {
        "TLS"
    } else if krate(&["sha2::", "sha1::", "md5::"]) {
        "hashing (API keys)"
    } else if has(&["monoio", "io_uring"]) {
        "async runtime (monoio)"
    } else if has(&["hdrhistogram"]) {
        "metrics histograms"
    } else if e.object.contains("nginx") || s.starts_with("ngx_") {
        "nginx"
    } else if has(&["edge::", "sluice", "httparse"]) || e.object == "sluice" {
        "sluice code"
    } else {
        "other"
    }
}

/// Sums the entries by [`category`], largest first.
pub fn categories(entries: &[Entry]) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for e in entries {
        let c = category(e);
        match sums.iter_mut().find(|(name, _)| name == c) {
            Some(slot) => slot.1 += e.percent,
            None => sums.push((c.to_owned(), e.percent)),
        }
    }
    for s in &mut sums {
        s.1 = (s.1 * 10.0).round() / 10.0;
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// Finds `perf` on PATH.
pub fn find_perf() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join("perf"))
        .find(|p| p.is_file())
        .filter(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Starts sampling `pids` into `data`.
pub fn start(perf: &Path, pids: &[u32], data: &Path) -> Result<Child, String> {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut cmd = Command::new(perf);
    // SAFETY: only an async-signal-safe prctl runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            super::procs::die_with_parent();
            Ok(())
        });
    }
    let child = cmd
        .args(["record", "-q", "-e", "cpu-clock", "-F", "2999", "-p"])
        .arg(list.join(","))
        .arg("-o")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf record: {e}"))?;
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// Stops sampling (SIGINT lets perf write its file out).
pub fn stop(mut child: Child) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Parses `perf report --stdio` lines: `  12.34%  object  [.] symbol`.
pub fn parse_report(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let Some(pct) = parts
            .next()
            .and_then(|p| p.strip_suffix('%'))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let rest = parts.next().unwrap_or_default().trim();
        // With symbols: `object  [k] symbol`; objects only: `object`.
        let (object, symbol) = match rest.find(" [") {
            Some(i) => {
                let sym = rest[i..].trim();
                let sym = sym.get(4..).map_or(sym, str::trim);
                (rest[..i].trim().to_owned(), sym.to_owned())
            }
            None => (rest.to_owned(), String::new()),
        };
        out.push(Entry {
            percent: pct,
            object,
            symbol,
        });
    }
    out
}

fn report(perf: &Path, data: &Path, sort: &str, limit: &str) -> Result<String, String> {
    let out = Command::new(perf)
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            sort,
            "--percent-limit",
            limit,
            "-i",
        ])
        .arg(data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "perf report: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rebuilds a profile's tables from a kept full report (`profile-*.txt`).
pub fn from_text(target: &str, scenario: &str, objects: Vec<Entry>, text: &str) -> Profile {
    let all = parse_report(text);
    Profile {
        target: target.to_owned(),
        scenario: scenario.to_owned(),
        objects,
        categories: categories(&all),
        symbols: all.into_iter().filter(|e| e.percent >= 0.2).collect(),
    }
}

/// Reads a recorded profile; the full symbol report is kept next to it.
pub fn read(
    perf: &Path,
    data: &Path,
    target: &str,
    scenario: &str,
    text_out: &Path,
) -> Result<Profile, String> {
    let objects = report(perf, data, "dso", "0.5")?;
    let symbols = report(perf, data, "dso,sym", "0")?;
    let _ = std::fs::write(text_out, &symbols);
    Ok(from_text(
        target,
        scenario,
        parse_report(&objects),
        &symbols,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse() {
        let text = "# Samples: 10K of event 'cpu-clock'\n#\n# Overhead  Shared Object  Symbol\n\
                    #\n    12.50%  sluice             [.] sluice_edge::http::parse_head\n\
                    \x20    3.10%  [kernel.kallsyms]  [k] tcp_sendmsg_locked\n\
                    \x20    1.00%  libc.so.6          [.] __memmove_avx_unaligned_erms\n\
                    \x20   40.00%  [kernel.kallsyms]\n";
        let e = parse_report(text);
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[0],
            Entry {
                percent: 12.5,
                object: "sluice".into(),
                symbol: "sluice_edge::http::parse_head".into()
            }
        );
        assert_eq!(
            (e[1].object.as_str(), e[1].symbol.as_str()),
            ("[kernel.kallsyms]", "tcp_sendmsg_locked")
        );
        assert_eq!(
            (e[3].object.as_str(), e[3].symbol.as_str()),
            ("[kernel.kallsyms]", "")
        );
    }
}
