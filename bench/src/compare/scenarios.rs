//! The scenario set a comparison runs against every target.
//!
//! Each [`Scenario`] is one request shape (streamed or not, chunks, body
//! size, scripted mock behaviour) under one load (closed loop at a
//! concurrency, open loop at a share of direct capacity, idle streams).
//! `all` lists the default set in the order it runs: the closed-loop
//! maximum comes before the open-loop rates because the rates are shares
//! of what `direct` reached there, and idle streams come last because they
//! restart the proxies.

use std::time::Duration;

use crate::load::{Load, Plan, RequestSpec};
use crate::mock::header;

/// How a scenario offers load.
#[derive(Clone, Debug, PartialEq)]
pub enum Offer {
    Closed(usize),
    /// Open loop at this percentage of direct's closed-loop maximum.
    Share(u32),
    /// This many idle streams, held open.
    Idle(usize),
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short id used in file names and tables: `c1`, `max`, `rate-50`, …
    pub id: String,
    /// What it measures, for the report.
    pub title: String,
    pub stream: bool,
    /// Content chunks the mock sends (`x-mock-chunks`).
    pub chunks: Option<usize>,
    /// Exact request body size.
    pub body_bytes: Option<usize>,
    /// Milliseconds the mock waits before each content chunk
    /// (`x-mock-gap-ms`); without it a stream's events go out in one write.
    pub gap_ms: Option<u64>,
    pub offer: Offer,
}

/// Settings that shape the default scenario set.
#[derive(Clone, Debug)]
pub struct SetOptions {
    pub rates: Vec<u32>,
    pub max_concurrency: usize,
    pub stream_concurrency: Vec<usize>,
    pub stream_chunks: usize,
    /// Concurrent streams of the paced scenario, whose events arrive 1 ms
    /// apart as a provider's do (0 leaves the scenario out).
    pub paced_streams: usize,
    pub idle_streams: usize,
    pub body_sizes: Vec<usize>,
}

impl Default for SetOptions {
    fn default() -> Self {
        Self {
            rates: vec![10, 25, 50, 80],
            max_concurrency: 64,
            stream_concurrency: vec![1, 64, 1024],
            stream_chunks: 64,
            paced_streams: 64,
            idle_streams: 10_000,
            body_sizes: vec![4 * 1024, 64 * 1024],
        }
    }
}

fn size_name(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}k", bytes / 1024)
    } else {
        format!("{bytes}b")
    }
}

/// The default scenario set, in run order.
pub fn all(o: &SetOptions) -> Vec<Scenario> {
    let plain = |id: String, title: String, offer: Offer| Scenario {
        id,
        title,
        stream: false,
        chunks: None,
        body_bytes: None,
        gap_ms: None,
        offer,
    };
    let mut set = vec![
        plain(
            "c1".into(),
            "Added latency: one request at a time (closed loop, concurrency 1)".into(),
            Offer::Closed(1),
        ),
        plain(
            "max".into(),
            format!(
                "Maximum throughput (closed loop, {} connections)",
                o.max_concurrency
            ),
            Offer::Closed(o.max_concurrency),
        ),
    ];
    for &pct in &o.rates {
        set.push(plain(
            format!("rate-{pct}"),
            format!("Open loop at {pct}% of direct's maximum (latency from the scheduled time)"),
            Offer::Share(pct),
        ));
    }
    for &c in &o.stream_concurrency {
        set.push(Scenario {
            id: format!("stream-{c}"),
            title: format!(
                "Streaming: {c} concurrent stream{} of {} chunks (closed loop)",
                if c == 1 { "" } else { "s" },
                o.stream_chunks
            ),
            stream: true,
            chunks: Some(o.stream_chunks),
            body_bytes: None,
            gap_ms: None,
            offer: Offer::Closed(c),
        });
    }
    if o.paced_streams > 0 {
        set.push(Scenario {
            id: "stream-paced".into(),
            title: format!(
                "Streaming, paced: {} concurrent streams of {} chunks, the mock waiting 1 ms or more before each, so each event \
                 arrives on its own (closed loop)",
                o.paced_streams, o.stream_chunks
            ),
            stream: true,
            chunks: Some(o.stream_chunks),
            body_bytes: None,
            gap_ms: Some(1),
            offer: Offer::Closed(o.paced_streams),
        });
    }
    for &b in &o.body_sizes {
        set.push(Scenario {
            id: format!("body-{}", size_name(b)),
            title: format!(
                "{} request body, one request at a time",
                size_name(b).to_uppercase()
            ),
            stream: false,
            chunks: None,
            body_bytes: Some(b),
            gap_ms: None,
            offer: Offer::Closed(1),
        });
    }
    set.push(Scenario {
        id: "idle".into(),
        title: format!(
            "{} idle streams held open (memory per stream)",
            o.idle_streams
        ),
        stream: true,
        chunks: Some(o.stream_chunks),
        body_bytes: None,
        gap_ms: None,
        offer: Offer::Idle(o.idle_streams),
    });
    set
}

/// Timing of a comparison's phases.
#[derive(Clone, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
    pub idle_hold: Duration,
    pub drain_timeout: Duration,
    pub request_timeout: Duration,
}

impl Scenario {
    pub fn is_idle(&self) -> bool {
        matches!(self.offer, Offer::Idle(_))
    }

    /// The request sent to a target with `key`.
    pub fn request(&self, model: &str, key: &str) -> RequestSpec {
        let mut spec = RequestSpec::chat(model, self.stream, self.body_bytes).with_key(key);
        if let Some(n) = self.chunks {
            spec = spec.with_header(header::CHUNKS, &n.to_string());
        }
        if let Some(ms) = self.gap_ms {
            spec = spec.with_header(header::GAP_MS, &ms.to_string());
        }
        if self.is_idle() {
            // The mock sends the head and the role event, then holds.
            spec = spec.with_header(header::STALL_AFTER, "0");
        }
        spec
    }

    /// The plan; `capacity` is direct's closed-loop maximum in req/s.
    pub fn plan(&self, t: &Timing, capacity: Option<f64>) -> Result<Plan, String> {
        let load = match self.offer {
            Offer::Closed(concurrency) => Load::Closed { concurrency },
            Offer::Share(pct) => {
                let Some(cap) = capacity.filter(|c| *c > 0.0) else {
                    return Err(format!(
                        "{}: no maximum throughput measured to take {pct}% of",
                        self.id
                    ));
                };
                Load::Open {
                    rate: cap * f64::from(pct) / 100.0,
                    max_connections: 256,
                }
            }
            Offer::Idle(streams) => Load::Idle {
                streams,
                hold: t.idle_hold,
                parallel: 256,
            },
        };
        Ok(Plan {
            load,
            warmup: if self.is_idle() {
                Duration::ZERO
            } else {
                t.warmup
            },
            duration: t.duration,
            requests: None,
            timeout: t.request_timeout,
            drain_timeout: t.drain_timeout,
            threads: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_covers_the_issue() {
        let ids: Vec<String> = all(&SetOptions::default())
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            ids,
            [
                "c1",
                "max",
                "rate-10",
                "rate-25",
                "rate-50",
                "rate-80",
                "stream-1",
                "stream-64",
                "stream-1024",
                "stream-paced",
                "body-4k",
                "body-64k",
                "idle"
            ]
        );
    }

    #[test]
    fn shares_need_a_capacity() {
        let t = Timing {
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            idle_hold: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        };
        let set = all(&SetOptions::default());
        let rate50 = set.iter().find(|s| s.id == "rate-50").unwrap();
        assert!(rate50.plan(&t, None).is_err());
        let plan = rate50.plan(&t, Some(10_000.0)).unwrap();
        assert_eq!(
            plan.load,
            Load::Open {
                rate: 5000.0,
                max_connections: 256
            }
        );
        let idle = set.iter().find(|s| s.id == "idle").unwrap();
        let raw = String::from_utf8(
            idle.request("m", "k").render(
                &crate::load::Target::parse("http://127.0.0.1:1", &crate::load::Verify::System)
                    .unwrap(),
            ),
        )
        .unwrap();
        assert!(raw.contains("x-mock-stall-after: 0\r\n"), "{raw}");
    }
}
