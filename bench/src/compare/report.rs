//! The comparison's report: `report.md` and its SVG plots.
//!
//! In: [`Results`] (as also written to `results.json`). Out: a Markdown
//! file with the machine, a headline table with ratios, the §7 goals with
//! how far sluice is from each, one table per scenario, the profiles, and
//! links to the plots drawn next to it. With repeated runs every figure is
//! the median of the repeats; a figure from a noisy phase carries ⚠.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Phase, Results};
use crate::load::Dist;
use crate::report::plot::{self, LoadSeries};
use crate::report::{count, ratio, us};

/// A hand-written reading of a run, included in its report when present.
pub const ANALYSIS: &str = "analysis.md";

/// Redraws a comparison's report and plots from its `results.json`,
/// rebuilding the profile tables from the kept `profile-*.txt` reports.
pub fn rerender(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r: Results =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for p in &mut r.profiles {
        let txt = dir.join(format!("profile-{}-{}.txt", p.target, p.scenario));
        if let Ok(t) = std::fs::read_to_string(&txt) {
            *p = super::profile::from_text(&p.target, &p.scenario, p.objects.clone(), &t);
        }
    }
    let json = serde_json::to_string_pretty(&r).map_err(|e| format!("results.json: {e}"))?;
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    write(&r, dir)
}

/// Marks a figure measured while other processes used the CPU.
const NOISY: &str = " ⚠";

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The phases of one scenario and target, over the repeats.
fn phases<'a>(r: &'a Results, scenario: &str, target: &str) -> Vec<&'a Phase> {
    r.phases
        .iter()
        .filter(|p| p.scenario == scenario && p.target == target)
        .collect()
}

/// A figure: the median over repeats, and whether any repeat was noisy.
fn fig(
    r: &Results,
    scenario: &str,
    target: &str,
    f: impl Fn(&Phase) -> Option<f64>,
) -> (Option<f64>, bool) {
    let ps = phases(r, scenario, target);
    let noisy = ps.iter().any(|p| p.noise.noisy);
    (median(ps.iter().filter_map(|p| f(p)).collect()), noisy)
}

/// The repeat whose latency p99 is the median (for plots).
fn median_phase<'a>(r: &'a Results, scenario: &str, target: &str) -> Option<&'a Phase> {
    let mut ps = phases(r, scenario, target);
    ps.sort_by(|a, b| a.summary.latency.p99.total_cmp(&b.summary.latency.p99));
    ps.get(ps.len() / 2).copied()
}

fn cell(v: (Option<f64>, bool), show: impl Fn(f64) -> String) -> String {
    match v {
        (Some(x), noisy) => format!("{}{}", show(x), if noisy { NOISY } else { "" }),
        (None, _) => "–".to_owned(),
    }
}

fn mb(kb: f64) -> String {
    format!("{:.1} MB", kb / 1024.0)
}

fn has(r: &Results, scenario: &str) -> bool {
    r.phases.iter().any(|p| p.scenario == scenario)
}

fn target_names(r: &Results) -> Vec<&str> {
    r.targets.iter().map(|t| t.name.as_str()).collect()
}

/// One headline row: a figure per target, plus how sluice compares with
/// nginx.
struct Row {
    label: String,
    scenario: &'static str,
    get: fn(&Phase) -> Option<f64>,
    show: fn(f64) -> String,
    /// Show the difference to direct next to proxies' values.
    added: bool,
}

fn latency_p50(p: &Phase) -> Option<f64> {
    Some(p.summary.latency.p50)
}
fn latency_p99(p: &Phase) -> Option<f64> {
    Some(p.summary.latency.p99)
}
fn throughput(p: &Phase) -> Option<f64> {
    Some(p.summary.throughput_rps)
}
fn cpu_per_request(p: &Phase) -> Option<f64> {
    p.cpu_us_per_request
}
fn ttft_p50(p: &Phase) -> Option<f64> {
    p.summary.ttft.as_ref().map(|d| d.p50)
}
fn ttft_p99(p: &Phase) -> Option<f64> {
    p.summary.ttft.as_ref().map(|d| d.p99)
}
fn events_per_s(p: &Phase) -> Option<f64> {
    Some(p.summary.events_per_s)
}
fn fresh_rss(p: &Phase) -> Option<f64> {
    p.memory
        .as_ref()
        .map(|m| m.fresh_kb as f64)
        .filter(|k| *k > 0.0)
}
fn per_stream(p: &Phase) -> Option<f64> {
    p.memory.as_ref().map(|m| m.per_stream_bytes / 1024.0)
}
fn opened(p: &Phase) -> Option<f64> {
    p.summary.idle.as_ref().map(|i| i.opened as f64)
}

/// Events a client received per stream (the mean over the phase).
fn events_per_stream(p: &Phase) -> Option<f64> {
    (p.summary.throughput_rps > 0.0).then(|| p.summary.events_per_s / p.summary.throughput_rps)
}

/// `## What each stage costs`: when the run has two or more sluice
/// variants, their CPU per request and per streamed event side by side,
/// each against the variant it adds one thing to.
fn stage_costs(r: &Results, out: &mut String) {
    use super::targets::Variant;
    let present: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| r.targets.iter().any(|t| t.name == v.name()))
        .collect();
    if present.len() < 2 {
        return;
    }
    // Each variant adds one thing to its parent; when the parent was not
    // run, the nearest ancestor that was is the base, and the row adds
    // every step between them.
    let parent = |v: Variant| match v {
        Variant::Passthrough => None,
        Variant::NoLimits => Some(Variant::Passthrough),
        Variant::Limits => Some(Variant::NoLimits),
        Variant::Redis | Variant::Translate => Some(Variant::Limits),
    };
    let step = |v: Variant| match v {
        Variant::Passthrough => "a plain relay",
        Variant::NoLimits => "auth, accounting (usage asked for, parsed, priced), audit",
        Variant::Limits => "quota admission (tokenizer estimate, reservation) + settlement",
        Variant::Redis => "the limits shared through Redis (leases)",
        Variant::Translate => "OpenAI ⇄ Anthropic translation, both ways",
    };
    let base = |v: Variant| -> Option<Variant> {
        let mut b = parent(v);
        while let Some(p) = b.filter(|p| !present.contains(p)) {
            b = parent(p);
        }
        b
    };
    let adds = |v: Variant| -> String {
        let mut steps = vec![step(v)];
        let mut p = parent(v);
        while let Some(q) = p.filter(|q| Some(*q) != base(v) && *q != Variant::Passthrough) {
            steps.push(step(q));
            p = parent(q);
        }
        steps.reverse();
        steps.join(" + ")
    };
    let cpu = |sc: &str, v: Variant| fig(r, sc, v.name(), |p| p.cpu_us_per_request);
    let per_event = |sc: &str, v: Variant| -> (Option<f64>, bool) {
        let (c, noisy) = cpu(sc, v);
        let (e, _) = fig(r, sc, v.name(), events_per_stream);
        (
            c.zip(e).filter(|(_, e)| *e > 0.0).map(|(c, e)| c / e),
            noisy,
        )
    };
    let delta = |x: (Option<f64>, bool), b: Option<(Option<f64>, bool)>| -> String {
        match (x.0, b.and_then(|b| b.0)) {
            (Some(x), Some(b)) => format!(" ({:+.2})", x - b),
            _ => String::new(),
        }
    };
    let _ = writeln!(
        out,
        "## What each stage costs\n\nsluice's CPU time per request and per streamed event in each \
         variant; (±x) is the difference to the variant it adds one thing to. Per event = CPU per \
         stream ÷ events the client received per stream. In `stream-64` the mock writes a stream's \
         events at once, so the proxy reads many per system call; in `stream-paced` they come \
         milliseconds apart, each on its own, as a provider's do.\n"
    );
    let _ = writeln!(
        out,
        "| variant | adds | CPU µs/request at max | at concurrency 1 | CPU µs/stream, `stream-64` | µs/event | CPU µs/stream, `stream-paced` | µs/event | helper CPU µs/request at max |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for &v in &present {
        let b = base(v);
        let show = |x: (Option<f64>, bool), bx: Option<(Option<f64>, bool)>| {
            format!("{}{}", cell(x, show_cpu), delta(x, bx))
        };
        let max = show(cpu("max", v), b.map(|b| cpu("max", b)));
        let c1 = show(cpu("c1", v), b.map(|b| cpu("c1", b)));
        let stream = show(cpu("stream-64", v), b.map(|b| cpu("stream-64", b)));
        let event = |sc: &str| {
            let ev = per_event(sc, v);
            format!(
                "{}{}",
                cell(ev, |x| format!("{x:.2}")),
                delta(ev, b.map(|b| per_event(sc, b)))
            )
        };
        let ev = event("stream-64");
        let paced = show(cpu("stream-paced", v), b.map(|b| cpu("stream-paced", b)));
        let paced_ev = event("stream-paced");
        let helper = cell(
            fig(r, "max", v.name(), |p| p.helper_cpu_us_per_request),
            show_cpu,
        );
        let _ = writeln!(
            out,
            "| `{}` | {} | {max} | {c1} | {stream} | {ev} | {paced} | {paced_ev} | {helper} |",
            v.name(),
            adds(v)
        );
    }
    out.push('\n');
}

fn show_us(x: f64) -> String {
    us(x)
}
fn show_rate(x: f64) -> String {
    count(x)
}
fn show_cpu(x: f64) -> String {
    format!("{x:.1} µs")
}
fn show_mb(x: f64) -> String {
    mb(x)
}
fn show_kb(x: f64) -> String {
    format!("{x:.1} KB")
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            label: "Latency p50, 1 request at a time".into(),
            scenario: "c1",
            get: latency_p50,
            show: show_us,
            added: true,
        },
        Row {
            label: "Latency p99, 1 request at a time".into(),
            scenario: "c1",
            get: latency_p99,
            show: show_us,
            added: true,
        },
        Row {
            label: "Maximum throughput, req/s".into(),
            scenario: "max",
            get: throughput,
            show: show_rate,
            added: false,
        },
        Row {
            label: "CPU per request at maximum throughput".into(),
            scenario: "max",
            get: cpu_per_request,
            show: show_cpu,
            added: false,
        },
        Row {
            label: "CPU per request at 25% of direct's maximum".into(),
            scenario: "rate-25",
            get: cpu_per_request,
            show: show_cpu,
            added: false,
        },
        Row {
            label: "Latency p99 at 25% of direct's maximum".into(),
            scenario: "rate-25",
            get: latency_p99,
            show: show_us,
            added: true,
        },
        Row {
            label: "Time to first token p99, 1 stream".into(),
            scenario: "stream-1",
            get: ttft_p99,
            show: show_us,
            added: true,
        },
        Row {
            label: "Time to first token p50, 1024 streams".into(),
            scenario: "stream-1024",
            get: ttft_p50,
            show: show_us,
            added: true,
        },
        Row {
            label: "CPU per stream of 64 chunks (64 streams)".into(),
            scenario: "stream-64",
            get: cpu_per_request,
            show: show_cpu,
            added: false,
        },
        Row {
            label: "SSE events/s relayed, 1024 streams".into(),
            scenario: "stream-1024",
            get: events_per_s,
            show: show_rate,
            added: false,
        },
        Row {
            label: "RSS of a fresh process".into(),
            scenario: "idle",
            get: fresh_rss,
            show: show_mb,
            added: false,
        },
        Row {
            label: "Memory per idle stream".into(),
            scenario: "idle",
            get: per_stream,
            show: show_kb,
            added: false,
        },
        Row {
            label: "Idle streams held on one core".into(),
            scenario: "idle",
            get: opened,
            show: show_rate,
            added: false,
        },
    ]
}

/// The headline table (Markdown), also printed at the end of a run.
pub fn headline(r: &Results) -> String {
    let names = target_names(r);
    let sluices: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("sluice"))
        .collect();
    let with_nginx = names.contains(&"nginx");
    let mut out = String::new();
    let _ = write!(out, "| | {} |", names.join(" | "));
    if with_nginx {
        for s in &sluices {
            let _ = write!(out, " {s} ÷ nginx |");
        }
    }
    out.push('\n');
    let _ = write!(out, "|---|{}", "---:|".repeat(names.len()));
    if with_nginx {
        out.push_str(&"---:|".repeat(sluices.len()));
    }
    out.push('\n');
    for row in rows() {
        if !has(r, row.scenario) {
            continue;
        }
        let direct = fig(r, row.scenario, "direct", row.get).0;
        let _ = write!(out, "| {} |", row.label);
        for name in &names {
            let v = fig(r, row.scenario, name, row.get);
            let mut c = cell(v, row.show);
            if row.added && *name != "direct" {
                if let (Some(x), Some(d)) = (v.0, direct) {
                    let _ = write!(c, " (+{})", us(x - d));
                }
            }
            let _ = write!(out, " {c} |");
        }
        if with_nginx {
            let nginx = fig(r, row.scenario, "nginx", row.get).0;
            for s in &sluices {
                let v = fig(r, row.scenario, s, row.get).0;
                let _ = write!(out, " {} |", ratio(v, nginx));
            }
        }
        out.push('\n');
    }
    out
}

/// The §7 goals and where sluice stands.
fn goals(r: &Results, out: &mut String) {
    if !target_names(r).contains(&"sluice") {
        return;
    }
    // (goal, sluice's figure, nginx's figure for scale, verdict)
    let mut lines: Vec<(String, String, String, String)> = Vec::new();
    let verdict = |ok: bool, short: String| {
        if ok {
            "met".to_owned()
        } else {
            format!("**short** by {short}")
        }
    };
    let added = |sc: &str, t: &str, get: fn(&Phase) -> Option<f64>| -> Option<f64> {
        Some(fig(r, sc, t, get).0? - fig(r, sc, "direct", get).0?)
    };
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "–".to_owned());
    if let Some(a) = added("c1", "sluice", latency_p99) {
        lines.push((
            "Added latency p99 at concurrency 1 ≤ 50 µs over direct".into(),
            format!("+{}", us(a)),
            or_dash(added("c1", "nginx", latency_p99).map(|n| format!("+{}", us(n)))),
            verdict(a <= 50.0, us(a - 50.0)),
        ));
    }
    for sc in ["max", "rate-25"] {
        let n = fig(r, sc, "nginx", cpu_per_request).0;
        let v = fig(r, sc, "sluice", cpu_per_request).0;
        if let (Some(n), Some(v)) = (n, v) {
            lines.push((
                format!("CPU per non-streaming request ≤ nginx's (`{sc}`)"),
                format!("{v:.1} µs ({:.2}×)", v / n),
                format!("{n:.1} µs"),
                verdict(
                    v <= n,
                    format!(
                        "{:.1} µs per request ({:.0}%)",
                        v - n,
                        (v / n - 1.0) * 100.0
                    ),
                ),
            ));
        }
    }
    if let Some(a) = added("stream-1", "sluice", ttft_p99) {
        lines.push((
            "Added time-to-first-token p99 ≤ 100 µs (1 stream)".into(),
            format!("+{}", us(a)),
            or_dash(added("stream-1", "nginx", ttft_p99).map(|n| format!("+{}", us(n)))),
            verdict(a <= 100.0, us(a - 100.0)),
        ));
    }
    let held = |t: &str| -> Option<crate::load::IdleCounts> {
        phases(r, "idle", t).first()?.summary.idle.clone()
    };
    if let Some(idle) = held("sluice") {
        let workers = r.settings.sluice_workers.max(1) as u64;
        let per_core = idle.opened / workers;
        let value = format!(
            "{} of {} held on {workers} core(s), {} failed",
            idle.opened, idle.requested, idle.failed
        );
        let v = if idle.requested / workers < 10_000 && idle.failed == 0 {
            format!("not tested: only {} streams asked", idle.requested)
        } else {
            verdict(
                per_core >= 10_000 && idle.failed == 0,
                format!(
                    "{} streams",
                    10_000u64.saturating_sub(per_core).max(idle.failed)
                ),
            )
        };
        let nginx = or_dash(held("nginx").map(|i| format!("{} of {}", i.opened, i.requested)));
        lines.push((
            "≥ 10 000 concurrent streams per core".into(),
            value,
            nginx,
            v,
        ));
    }
    if let Some(kb) = fig(r, "idle", "sluice", fresh_rss).0 {
        lines.push((
            "Idle RSS ≤ 10 MB".into(),
            mb(kb),
            or_dash(fig(r, "idle", "nginx", fresh_rss).0.map(mb)),
            verdict(kb <= 10.0 * 1024.0, mb(kb - 10.0 * 1024.0)),
        ));
    }
    if let Some(kb) = fig(r, "idle", "sluice", per_stream).0 {
        lines.push((
            "≤ 10 KB per idle stream".into(),
            format!("{kb:.1} KB"),
            or_dash(
                fig(r, "idle", "nginx", per_stream)
                    .0
                    .map(|k| format!("{k:.1} KB")),
            ),
            verdict(kb <= 10.0, format!("{:.1} KB per stream", kb - 10.0)),
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Targets (DESIGN §7)\n\nnginx's figure is there for scale: what a plain proxy \
         costs on the same machine in the same run.\n\n\
         | goal | sluice | nginx | verdict |\n|---|---|---|---|"
    );
    for (goal, value, nginx, v) in lines {
        let _ = writeln!(out, "| {goal} | {value} | {nginx} | {v} |");
    }
    out.push('\n');
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.0}%"))
}

fn noise_cell(ps: &[&Phase]) -> String {
    let worst = ps
        .iter()
        .map(|p| p.noise.others_pct.max(p.noise.steal_pct))
        .fold(0.0, f64::max);
    if ps.iter().any(|p| p.noise.noisy) {
        format!("⚠ {worst:.1}%")
    } else {
        format!("{worst:.1}%")
    }
}

/// Failed requests: the median over repeats, with every reason summed
/// over the repeats.
fn failures(ps: &[&Phase]) -> String {
    let failed = median(
        ps.iter()
            .map(|p| {
                (p.summary.counts.failed + p.summary.idle.as_ref().map_or(0, |i| i.failed)) as f64
            })
            .collect(),
    )
    .unwrap_or(0.0);
    let mut kinds: std::collections::BTreeMap<&str, u64> = Default::default();
    for p in ps {
        for (k, v) in &p.summary.errors {
            *kinds.entry(k.as_str()).or_default() += v;
        }
    }
    if failed == 0.0 && kinds.is_empty() {
        return "0".into();
    }
    let list: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let over = if ps.len() > 1 {
        format!(" over {} runs", ps.len())
    } else {
        String::new()
    };
    format!("{} ({}{over})", count(failed), list.join(", "))
}

fn scenario_table(r: &Results, id: &str, out: &mut String) {
    let names = target_names(r);
    let is_stream = r
        .phases
        .iter()
        .any(|p| p.scenario == id && p.summary.ttft.is_some());
    let is_idle = id == "idle";
    if is_idle {
        let _ = writeln!(
            out,
            "| target | opened | failed | time to open all | TTFB p99 | RSS fresh | RSS warm | RSS holding | per stream | CPU per stream | noise |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
    } else if is_stream {
        let _ = writeln!(
            out,
            "| target | streams/s | TTFB p50 | TTFT p50 | TTFT p99 | TTFT p99 vs direct | total p50 | total p99 | gap p99 | events/s | checks ok | CPU per stream | proxy CPU | client CPU | failed | noise |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        );
    } else {
        let _ = writeln!(
            out,
            "| target | req/s | p50 | p90 | p99 | p99.9 | max | p99 vs direct | CPU per request | proxy CPU | client CPU | RSS | failed | noise |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        );
    }
    let open = r
        .phases
        .iter()
        .find(|p| p.scenario == id)
        .and_then(|p| p.summary.offered_rps);
    for name in names {
        let ps = phases(r, id, name);
        if ps.is_empty() {
            continue;
        }
        let f = |g: &dyn Fn(&Phase) -> Option<f64>| fig(r, id, name, g);
        let d = |g: &dyn Fn(&Dist) -> f64, which: fn(&Phase) -> Option<&Dist>| {
            cell(fig(r, id, name, |p| which(p).map(g)), us)
        };
        let cpu = cell(f(&|p| p.cpu_us_per_request), show_cpu);
        if is_idle {
            let idle = |g: &dyn Fn(&crate::load::IdleCounts) -> f64| {
                median(
                    ps.iter()
                        .filter_map(|p| p.summary.idle.as_ref().map(g))
                        .collect(),
                )
            };
            let mem = |g: &dyn Fn(&super::IdleMemory) -> f64| {
                median(ps.iter().filter_map(|p| p.memory.as_ref().map(g)).collect())
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {cpu} | {} |",
                idle(&|i| i.opened as f64).map_or("–".into(), count),
                idle(&|i| i.failed as f64).map_or("–".into(), count),
                idle(&|i| i.open_ms as f64).map_or("–".into(), |v| format!("{} ms", count(v))),
                d(&|x| x.p99, |p| p.summary.ttfb.as_ref()),
                mem(&|m| m.fresh_kb as f64)
                    .filter(|v| *v > 0.0)
                    .map_or("–".into(), mb),
                mem(&|m| m.warm_kb as f64)
                    .filter(|v| *v > 0.0)
                    .map_or("–".into(), mb),
                mem(&|m| m.holding_kb as f64)
                    .filter(|v| *v > 0.0)
                    .map_or("–".into(), mb),
                mem(&|m| m.per_stream_bytes / 1024.0)
                    .map_or("–".into(), |v| format!("{v:.1} KB")),
                noise_cell(&ps),
            );
        } else if is_stream {
            let direct_ttft = fig(r, id, "direct", ttft_p99).0;
            let this_ttft = fig(r, id, name, ttft_p99).0;
            let vs = if name == "direct" {
                "–".into()
            } else {
                match (this_ttft, direct_ttft) {
                    (Some(a), Some(b)) => format!("+{}", us(a - b)),
                    _ => "–".into(),
                }
            };
            let checks: (u64, u64) = ps.iter().fold((0, 0), |acc, p| {
                p.summary
                    .checks
                    .as_ref()
                    .map_or(acc, |c| (acc.0 + c.ok, acc.1 + c.streams))
            });
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {vs} | {} | {} | {} | {} | {}/{} | {cpu} | {} | {} | {} | {} |",
                cell(f(&|p| Some(p.summary.throughput_rps)), count),
                d(&|x| x.p50, |p| p.summary.ttfb.as_ref()),
                d(&|x| x.p50, |p| p.summary.ttft.as_ref()),
                d(&|x| x.p99, |p| p.summary.ttft.as_ref()),
                d(&|x| x.p50, |p| Some(&p.summary.latency)),
                d(&|x| x.p99, |p| Some(&p.summary.latency)),
                d(&|x| x.p99, |p| p.summary.gap.as_ref()),
                cell(f(&|p| Some(p.summary.events_per_s)), count),
                checks.0,
                checks.1,
                pct(f(&|p| p.cpu_pct).0),
                pct(f(&|p| Some(p.client_pct)).0),
                failures(&ps),
                noise_cell(&ps),
            );
        } else {
            let direct_p99 = fig(r, id, "direct", latency_p99).0;
            let this_p99 = fig(r, id, name, latency_p99).0;
            let vs = if name == "direct" {
                "–".into()
            } else {
                match (this_p99, direct_p99) {
                    (Some(a), Some(b)) => format!("+{} ({})", us(a - b), ratio(Some(a), Some(b))),
                    _ => "–".into(),
                }
            };
            let served = f(&|p| Some(p.summary.throughput_rps));
            let mut rate = cell(served, count);
            if let (Some(offered), Some(got)) = (open, served.0) {
                if got < offered * 0.95 {
                    let _ = write!(
                        rate,
                        " (overloaded: {:.0}% of offered)",
                        got / offered * 100.0
                    );
                }
            }
            let _ = writeln!(
                out,
                "| {name} | {rate} | {} | {} | {} | {} | {} | {vs} | {cpu} | {} | {} | {} | {} | {} |",
                d(&|x| x.p50, |p| Some(&p.summary.latency)),
                d(&|x| x.p90, |p| Some(&p.summary.latency)),
                d(&|x| x.p99, |p| Some(&p.summary.latency)),
                d(&|x| x.p999, |p| Some(&p.summary.latency)),
                d(&|x| x.max, |p| Some(&p.summary.latency)),
                pct(f(&|p| p.cpu_pct).0),
                pct(f(&|p| Some(p.client_pct)).0),
                cell(f(&|p| p.rss_kb.map(|k| k as f64)), mb),
                failures(&ps),
                noise_cell(&ps),
            );
        }
    }
    out.push('\n');
}

/// Picks the distribution a plot shows from a phase.
type WhichDist = fn(&Phase) -> Option<&Dist>;

/// Draws the plots; returns `(file name, caption)` of each one drawn.
fn plots(r: &Results, dir: &Path, notes: &mut Vec<String>) -> Vec<(String, String)> {
    let names = target_names(r);
    let mut drawn = Vec::new();
    let percentile_plots: [(&str, &str, &str, WhichDist); 6] = [
        (
            "c1",
            "latency-c1.svg",
            "Latency, one request at a time",
            |p| Some(&p.summary.latency),
        ),
        (
            "max",
            "latency-max.svg",
            "Latency at maximum throughput (closed loop)",
            |p| Some(&p.summary.latency),
        ),
        (
            "rate-25",
            "latency-rate-25.svg",
            "Latency at 25% of direct's maximum (open loop)",
            |p| Some(&p.summary.latency),
        ),
        (
            "stream-1",
            "ttft-stream-1.svg",
            "Time to first token, 1 stream",
            |p| p.summary.ttft.as_ref(),
        ),
        (
            "stream-1024",
            "ttft-stream-1024.svg",
            "Time to first token, 1024 concurrent streams",
            |p| p.summary.ttft.as_ref(),
        ),
        (
            "body-64k",
            "latency-body-64k.svg",
            "Latency with a 64 KB request body",
            |p| Some(&p.summary.latency),
        ),
    ];
    for (id, file, title, which) in percentile_plots {
        let series: Vec<(String, &Dist)> = names
            .iter()
            .filter_map(|n| {
                median_phase(r, id, n)
                    .and_then(|p| which(p))
                    .map(|d| (n.to_string(), d))
            })
            .filter(|(_, d)| d.count > 0)
            .collect();
        if series.is_empty() {
            continue;
        }
        match plot::percentiles(&dir.join(file), title, &series) {
            Ok(()) => drawn.push((file.to_owned(), format!("{title} (by percentile)"))),
            Err(e) => notes.push(format!("{file}: {e}")),
        }
    }
    let mut load_series = Vec::new();
    let rates: Vec<&str> = r
        .scenarios
        .iter()
        .map(|s| s.id.as_str())
        .filter(|id| id.starts_with("rate-"))
        .collect();
    for name in &names {
        // One point per open-loop scenario: medians over the repeats.
        let mut points: Vec<(f64, f64, f64)> = rates
            .iter()
            .filter_map(|id| {
                let offered = fig(r, id, name, |p| p.summary.offered_rps).0?;
                let p50 = fig(r, id, name, latency_p50).0?;
                let p99 = fig(r, id, name, latency_p99).0?;
                Some((offered, p50, p99))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            load_series.push(LoadSeries {
                name: name.to_string(),
                points,
            });
        }
    }
    if !load_series.is_empty() {
        let file = "latency-vs-load.svg";
        match plot::latency_vs_load(
            &dir.join(file),
            "Latency against offered load (open loop)",
            &load_series,
        ) {
            Ok(()) => drawn.push((file.to_owned(), "Latency against offered load".to_owned())),
            Err(e) => notes.push(format!("{file}: {e}")),
        }
    }
    drawn
}

fn profiles(r: &Results, out: &mut String) {
    if r.profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Where the time goes\n\n`perf record -e cpu-clock` on the proxy's process during an extra run \
         of the scenario (not one of the measured phases); flat profile, share of the proxy's samples. \
         The full reports are the `profile-*.txt` files next to this one. Without hardware \
         counters (a VM) samples taken while interrupts were off land on the instruction that \
         turns them back on, so `_raw_spin_unlock_irqrestore` stands for the wake-ups \
         (waking the peer socket's reader) rather than for a lock.\n"
    );
    for p in &r.profiles {
        let _ = writeln!(out, "### {} · {}\n", p.target, p.scenario);
        let split: Vec<String> = p
            .objects
            .iter()
            .take(6)
            .map(|e| format!("{} {:.1}%", e.object, e.percent))
            .collect();
        let _ = writeln!(out, "By binary: {}.\n", split.join(", "));
        let kinds: Vec<String> = p
            .categories
            .iter()
            .filter(|(_, v)| *v >= 0.5)
            .map(|(k, v)| format!("{k} {v:.1}%"))
            .collect();
        let _ = writeln!(out, "By kind of work: {}.\n", kinds.join(", "));
        let _ = writeln!(out, "| share | in | function |\n|---:|---|---|");
        for e in p.symbols.iter().take(25) {
            let symbol = e.symbol.replace('|', "\\|");
            let _ = writeln!(out, "| {:.1}% | {} | `{}` |", e.percent, e.object, symbol);
        }
        out.push('\n');
    }
}

/// Writes `report.md` and the plots into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<PathBuf, String> {
    let mut notes = Vec::new();
    let drawn = plots(r, dir, &mut notes);
    let m = &r.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# sluice benchmark: {}\n", m.date_utc);
    let _ =
        writeln!(
        out,
        "Commit {} · {} · {} CPUs · {:.1} GiB · kernel {} · {} · virtualisation: {} · {} · {}\n",
        if m.commit.is_empty() { "unknown" } else { &m.commit },
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.os,
        m.virtualization,
        m.nginx,
        m.rustc
    );
    let s = &r.settings;
    let _ = writeln!(
        out,
        "Load generator and mock upstream on CPU {:?}, the proxy under test on CPU {:?} \
         ({} sluice worker{}). Each phase: {:.1} s warm-up, {:.1} s measured; idle streams held {:.1} s. \
         {} · run took {:.0} s. Command: `{}`\n",
        s.client_cpus,
        s.proxy_cpus,
        s.sluice_workers,
        if s.sluice_workers == 1 { "" } else { "s" },
        s.warmup_s,
        s.duration_s,
        s.idle_hold_s,
        if s.repeat > 1 {
            format!("Every figure is the median of {} runs", s.repeat)
        } else {
            "One run".to_owned()
        } + if s.keep_awake {
            " · an idle-priority spinner kept each measured CPU from halting \
             (a halted vCPU takes milliseconds to wake)"
        } else {
            " · CPUs allowed to go idle"
        },
        r.elapsed_s,
        s.command
    );
    let _ = writeln!(out, "Targets:\n");
    for t in &r.targets {
        let _ = writeln!(out, "- `{}` — {}", t.name, t.label);
    }
    out.push('\n');
    let _ = writeln!(out, "## Headline\n\n{}", headline(r));
    let _ = writeln!(
        out,
        "(+x) is the difference to `direct`; the last column{} divide{} sluice's figure by nginx's. \
         ⚠ marks a figure from a phase during which other processes took more than {:.0}% of a core.\n",
        if r.targets.iter().filter(|t| t.name.starts_with("sluice")).count() > 1 { "s" } else { "" },
        if r.targets.iter().filter(|t| t.name.starts_with("sluice")).count() > 1 { "" } else { "s" },
        s.noise_limit_pct
    );
    goals(r, &mut out);
    stage_costs(r, &mut out);
    // A reading of the run written by hand, kept next to the report so
    // that re-rendering keeps it.
    if let Ok(text) = std::fs::read_to_string(dir.join(ANALYSIS)) {
        out.push_str(text.trim_end());
        out.push_str("\n\n");
    }
    if !drawn.is_empty() {
        let _ = writeln!(out, "## Plots\n");
        for (file, caption) in &drawn {
            let _ = writeln!(out, "- [{caption}]({file})");
        }
        out.push('\n');
        for (file, caption) in &drawn {
            let _ = writeln!(out, "![{caption}]({file})\n");
        }
    }
    let _ = writeln!(out, "## Scenarios\n");
    let _ = writeln!(
        out,
        "Latency runs from each request's start — its scheduled time in the open-loop phases, so a \
         target that falls behind shows its queueing delay. CPU per request is the target's CPU time \
         over the phase (warm-up included) divided by the requests it finished; proxy CPU and client \
         CPU (load generator + mock) are shares of one core — a client near 100% means the client \
         side set the pace. Noise is the CPU other processes took during the phase, in % of one core.\n"
    );
    for sc in &r.scenarios {
        if !has(r, &sc.id) {
            continue;
        }
        let _ = writeln!(out, "### {} (`{}`)\n", sc.title, sc.id);
        let offered = r
            .phases
            .iter()
            .find(|p| p.scenario == sc.id)
            .and_then(|p| p.summary.offered_rps);
        if let Some(offered) = offered {
            let _ = writeln!(
                out,
                "Offered: {} requests/s to every target.\n",
                count(offered)
            );
        }
        scenario_table(r, &sc.id, &mut out);
    }
    profiles(r, &mut out);
    let noisy: Vec<String> = r
        .phases
        .iter()
        .filter(|p| p.noise.noisy)
        .map(|p| {
            format!(
                "{} / {} (others {:.1}%, steal {:.1}%, {} attempt{})",
                p.scenario,
                p.target,
                p.noise.others_pct,
                p.noise.steal_pct,
                p.attempts,
                if p.attempts == 1 { "" } else { "s" }
            )
        })
        .collect();
    let all_notes: Vec<&String> = r.notes.iter().chain(&notes).collect();
    if !noisy.is_empty() || !all_notes.is_empty() {
        let _ = writeln!(out, "## Notes\n");
        if !noisy.is_empty() {
            let _ = writeln!(
                out,
                "- Noisy phases (their figures carry ⚠; read them as upper bounds): {}.",
                noisy.join("; ")
            );
        }
        for n in all_notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Raw results: [results.json](results.json). What each figure means and how to read \
         them on a noisy machine: `bench/README.md`."
    );
    let path = dir.join("report.md");
    std::fs::write(&path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::{IdleMemory, Settings, TargetInfo};
    use crate::compare::procs::Noise;
    use crate::load::Recorder;
    use std::time::Duration;

    fn phase(scenario: &str, target: &str, p99: f64, cpu: Option<f64>) -> Phase {
        let mut rec = Recorder::default();
        for v in [p99 * 500.0, p99 * 1000.0] {
            rec.latency.record(v as u64).unwrap();
        }
        rec.counts.completed_in_window = 5000;
        let idle = scenario == "idle";
        let mut summary = rec.summary(
            if idle { "idle" } else { "closed" },
            idle,
            Duration::from_secs(5),
            None,
            Some(1),
        );
        if let Some(i) = summary.idle.as_mut() {
            i.requested = 10_000;
            i.opened = 10_000;
        }
        Phase {
            scenario: scenario.into(),
            target: target.into(),
            repeat: 0,
            attempts: 1,
            wall_s: 6.0,
            summary,
            cpu_ms: cpu.map(|c| c * 5.0),
            cpu_pct: cpu.map(|_| 50.0),
            cpu_us_per_request: cpu,
            helper_cpu_us_per_request: None,
            client_pct: 90.0,
            rss_kb: Some(4096),
            memory: idle.then_some(IdleMemory {
                fresh_kb: 8 * 1024,
                warm_kb: 9 * 1024,
                holding_kb: 59 * 1024,
                per_stream_bytes: 5120.0,
            }),
            noise: Noise {
                noisy: target == "nginx",
                others_pct: 9.0,
                ..Noise::default()
            },
        }
    }

    /// A run of `targets` with `phases`, one repeat, no scenarios listed.
    fn results(targets: &[&str], phases: Vec<Phase>) -> Results {
        Results {
            machine: Default::default(),
            settings: Settings {
                warmup_s: 1.0,
                duration_s: 5.0,
                idle_hold_s: 3.0,
                repeat: 1,
                client_cpus: vec![0],
                proxy_cpus: vec![1],
                sluice_workers: 1,
                noise_limit_pct: 3.0,
                keep_awake: true,
                command: "sluice-bench compare".into(),
            },
            targets: targets
                .iter()
                .map(|t| TargetInfo {
                    name: (*t).into(),
                    label: (*t).into(),
                    url: String::new(),
                    measured: *t != "direct",
                })
                .collect(),
            notes: Vec::new(),
            scenarios: Vec::new(),
            phases,
            profiles: Vec::new(),
            elapsed_s: 300.0,
        }
    }

    #[test]
    fn a_report_renders_ratios_goals_and_noise() {
        let mut r = results(
            &["direct", "nginx", "sluice"],
            vec![
                phase("c1", "direct", 20.0, None),
                phase("c1", "nginx", 100.0, Some(60.0)),
                phase("c1", "sluice", 60.0, Some(40.0)),
                phase("max", "direct", 900.0, None),
                phase("max", "nginx", 1200.0, Some(20.0)),
                phase("max", "sluice", 1000.0, Some(25.0)),
                phase("idle", "nginx", 1.0, Some(90.0)),
                phase("idle", "sluice", 1.0, Some(90.0)),
            ],
        );
        r.notes = vec!["`sluice-passthrough` skipped: no switch".into()];
        r.scenarios = vec![
            super::super::ScenarioInfo {
                id: "c1".into(),
                title: "c1".into(),
            },
            super::super::ScenarioInfo {
                id: "max".into(),
                title: "max".into(),
            },
            super::super::ScenarioInfo {
                id: "idle".into(),
                title: "idle".into(),
            },
        ];
        let h = headline(&r);
        assert!(
            h.contains("| | direct | nginx | sluice | sluice ÷ nginx |"),
            "{h}"
        );
        assert!(h.contains("1.25×"), "CPU at max, sluice ÷ nginx: {h}");
        assert!(h.contains("⚠"), "nginx's phases were noisy: {h}");
        let dir = std::env::temp_dir().join(format!("sluice-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write(&r, &dir).unwrap();
        let md = std::fs::read_to_string(path).unwrap();
        assert!(md.contains("## Targets (DESIGN §7)"), "{md}");
        assert!(
            md.contains(
                "| Added latency p99 at concurrency 1 ≤ 50 µs over direct | +40.0 µs | +80.0 µs | met |"
            ),
            "{md}"
        );
        assert!(md.contains("**short** by 5.0 µs per request (25%)"), "{md}");
        assert!(md.contains("| ≥ 10 000 concurrent streams per core | 10000 of 10000 held on 1 core(s), 0 failed | 10000 of 10000 | met |"), "{md}");
        assert!(
            md.contains("![Latency, one request at a time (by percentile)](latency-c1.svg)"),
            "{md}"
        );
        assert!(md.contains("sluice-passthrough` skipped"), "{md}");
        assert!(dir.join("latency-c1.svg").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stage_costs_compare_each_variant_with_the_one_it_extends() {
        let names = [
            "sluice-passthrough",
            "sluice-nolimits",
            "sluice",
            "sluice-translate",
        ];
        let mut phases = Vec::new();
        for (i, t) in names.iter().enumerate() {
            phases.push(phase("max", t, 100.0, Some(20.0 + 2.0 * i as f64)));
            let mut st = phase("stream-64", t, 100.0, Some(100.0 + 10.0 * i as f64));
            st.summary.throughput_rps = 100.0;
            st.summary.events_per_s = 6600.0;
            phases.push(st);
        }
        let r = results(&names, phases);
        let mut out = String::new();
        stage_costs(&r, &mut out);
        // Passthrough has no base; nolimits is +2 over it; sluice +2 over
        // nolimits; translate is measured against sluice (+2), not nolimits.
        assert!(
            out.contains(
                "| `sluice-passthrough` | a plain relay | 20.0 µs | – | 100.0 µs | 1.52 | – |"
            ),
            "{out}"
        );
        assert!(out.contains("| `sluice-nolimits` |"), "{out}");
        assert!(out.contains("22.0 µs (+2.00)"), "{out}");
        let translate = out
            .lines()
            .find(|l| l.contains("`sluice-translate`"))
            .unwrap();
        assert!(translate.contains("26.0 µs (+2.00)"), "{translate}");
        assert!(translate.contains("130.0 µs (+10.00)"), "{translate}");
        // 130 µs over 66 events = 1.97 µs, 0.15 more than sluice's 1.82.
        assert!(translate.contains("1.97 (+0.15)"), "{translate}");

        // Without nolimits, sluice is measured against passthrough and adds
        // both steps.
        let r2 = results(
            &["sluice-passthrough", "sluice"],
            r.phases
                .iter()
                .filter(|p| p.target != "sluice-nolimits")
                .cloned()
                .collect(),
        );
        let mut two = String::new();
        stage_costs(&r2, &mut two);
        let row = two.lines().find(|l| l.starts_with("| `sluice` |")).unwrap();
        assert!(
            row.contains(
                "auth, accounting (usage asked for, parsed, priced), audit + quota admission"
            ),
            "{row}"
        );
        assert!(row.contains("24.0 µs (+4.00)"), "{row}");

        // One variant alone: no section.
        let mut one = String::new();
        let r = Results {
            targets: r.targets.into_iter().take(1).collect(),
            ..r
        };
        stage_costs(&r, &mut one);
        assert!(one.is_empty(), "{one}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
