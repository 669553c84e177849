//! A description of the machine and software a comparison ran on, for the
//! report: CPU model and count, memory, kernel, OS, virtualisation, tool
//! versions, the git commit of the tree that was measured.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// Hypervisor, if the CPU flags or DMI say there is one.
    pub virtualization: String,
    pub nginx: String,
    pub rustc: String,
    pub commit: String,
    pub date_utc: String,
}

fn first_line(out: std::io::Result<std::process::Output>) -> String {
    out.ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

pub fn describe(repo: &Path, nginx: &Path) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    // A container and a VM can both be true (a container in a microVM).
    let mut layers = Vec::new();
    let container = first_line(
        Command::new("systemd-detect-virt")
            .arg("--container")
            .output(),
    );
    if !container.is_empty() && container != "none" {
        layers.push(format!("container ({container})"));
    }
    if cpuinfo.contains(" hypervisor") {
        let product = fs::read_to_string("/sys/class/dmi/id/product_name").unwrap_or_default();
        let product = product.trim();
        layers.push(if product.is_empty() {
            "VM (hypervisor CPU flag)".to_owned()
        } else {
            format!("VM ({product})")
        });
    }
    let virtualization = if layers.is_empty() {
        "none detected".to_owned()
    } else {
        layers.join(" in a ")
    };
    let nginx_version = first_line(Command::new(nginx).arg("-v").output());
    let rustc = first_line(Command::new("rustc").arg("--version").output());
    let mut commit = first_line(
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["rev-parse", "--short", "HEAD"])
            .output(),
    );
    let dirty = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty && !commit.is_empty() {
        commit.push_str(" + local changes");
    }
    Machine {
        cpu_model,
        cpus,
        memory_gib,
        kernel,
        os,
        virtualization,
        nginx: nginx_version,
        rustc,
        commit,
        date_utc: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}
