//! Results as people read them: Markdown tables and SVG plots.
//!
//! In: [`Summary`]s of runs (and, for the comparison, the figures that
//! `compare` adds: CPU time, RSS, noise). Out: Markdown text and SVG files.
//! Nothing here measures; everything can be redrawn from a result file.
//! Number formatting lives here so every table reads the same way: times
//! in µs below 10 ms and in ms above, rates with thousands grouped.

pub mod plot;

use std::fmt::Write as _;

use crate::load::{Dist, Summary};

/// A time given in microseconds, for a table cell: µs below 1 ms, ms above.
pub fn us(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000_000.0 {
        format!("{:.2} s", v / 1e6)
    } else if a >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else if a >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

/// A count or rate with thousands separated by a thin space.
pub fn count(v: f64) -> String {
    let rounded = v.round();
    if (v - rounded).abs() > 1e-9 && v < 100.0 {
        return format!("{v:.1}");
    }
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(ch);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// `a / b` as `1.23×`, or `–` when either side is missing or zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

/// One table row of a distribution: count, p50, p90, p99, p99.9, max.
fn dist_row(out: &mut String, name: &str, d: &Dist) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} |",
        count(d.count as f64),
        us(d.p50),
        us(d.p90),
        us(d.p99),
        us(d.p999),
        us(d.max)
    );
}

/// The Markdown summary of one `sluice-bench run`.
pub fn run_markdown(target: &str, s: &Summary) -> String {
    let mut out = String::new();
    let load = match (s.mode.as_str(), s.offered_rps, s.concurrency) {
        ("open", Some(rate), _) => format!("open loop at {} req/s", count(rate)),
        ("idle", _, Some(n)) => format!("{} idle streams", count(n as f64)),
        (_, _, Some(c)) => format!("closed loop, concurrency {c}"),
        _ => s.mode.clone(),
    };
    let _ = writeln!(out, "# sluice-bench: {target}\n");
    let _ = writeln!(
        out,
        "{load}, {}, measured for {:.1} s.\n",
        if s.stream { "streamed" } else { "not streamed" },
        s.duration_s
    );
    let c = &s.counts;
    if let Some(idle) = &s.idle {
        let _ = writeln!(
            out,
            "| streams asked | opened | failed | dropped while held | time to open all |\n|---|---|---|---|---|\n| {} | {} | {} | {} | {} ms |\n",
            idle.requested, idle.opened, idle.failed, idle.dropped, idle.open_ms
        );
    } else {
        let _ = writeln!(
            out,
            "| sent | ok | failed | throughput | events/s |\n|---|---|---|---|---|\n| {} | {} | {} | {} req/s | {} |\n",
            count(c.sent as f64),
            count(c.ok as f64),
            count(c.failed as f64),
            count(s.throughput_rps),
            count(s.events_per_s)
        );
    }
    let _ = writeln!(
        out,
        "| time | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
    );
    if s.mode != "idle" {
        let name = if s.stream {
            "total (from start)"
        } else {
            "latency (from start)"
        };
        dist_row(&mut out, name, &s.latency);
        dist_row(&mut out, "service (from send)", &s.service);
    }
    if let Some(d) = &s.ttfb {
        dist_row(&mut out, "time to first byte", d);
    }
    if let Some(d) = &s.ttft {
        dist_row(&mut out, "time to first token", d);
    }
    if let Some(d) = &s.gap {
        dist_row(&mut out, "gap between events", d);
    }
    if let Some(d) = &s.stream_rate {
        let _ = writeln!(
            out,
            "\nEvents per second per stream: p50 {}, p1 ≈ {} (slowest streams), max {}.",
            count(d.p50),
            count(d.spectrum.get(1).map_or(d.min, |p| p[1])),
            count(d.max)
        );
    }
    if let Some(ch) = &s.checks {
        let _ = writeln!(
            out,
            "\nStream checks: {} of {} streams passed; missing [DONE] {}, missing usage {}, error events {}, not an event stream {}, no text {}.",
            ch.ok, ch.streams, ch.missing_done, ch.missing_usage, ch.error_event, ch.not_event_stream, ch.no_token
        );
    }
    if !s.errors.is_empty() {
        let list: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "\nFailures: {}.", list.join(", "));
    }
    if s.mode == "open" {
        let _ = writeln!(
            out,
            "\nLatency runs from each request's scheduled time, so queueing in front of a \
             slow server counts; service time runs from the actual send."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(us(12.345), "12.3 µs");
        assert_eq!(us(456.0), "456 µs");
        assert_eq!(us(12_345.0), "12.3 ms");
        assert_eq!(us(3_873.0), "3.87 ms");
        assert_eq!(us(-120.0), "-120 µs");
        assert_eq!(us(3_697_300.0), "3.70 s");
        assert_eq!(count(1_234_567.0), "1\u{2009}234\u{2009}567");
        assert_eq!(count(12.5), "12.5");
        assert_eq!(count(999.0), "999");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(Some(3.0), None), "–");
    }
}
