//! What a run measured: histograms, counters and check tallies, and their
//! serializable summary.
//!
//! The engine records into one [`Recorder`] per thread; threads are merged
//! at the end. Times are recorded in nanoseconds into hdrhistograms (3
//! significant digits, up to an hour) and summarised in microseconds.
//! [`Recorder::summary`] turns a recorder into the [`Summary`] that the JSON
//! result file and the Markdown tables are made from.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a time histogram holds: one hour in nanoseconds.
const MAX_NS: u64 = 3_600_000_000_000;
/// Quantiles listed in a [`Dist`]'s spectrum, for percentile plots:
/// evenly spaced on a log scale of 1/(1-q), up to 99.999 %.
const SPECTRUM_STEPS_PER_DECADE: u32 = 8;
const SPECTRUM_DECADES: u32 = 5;

/// A histogram of nanoseconds (or of any count, for rates).
pub type Hist = Histogram<u64>;

#[allow(clippy::expect_used)] // constant bounds that hdrhistogram accepts
pub(crate) fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("1..=1h at 3 digits is a valid range")
}

pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counters of one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Requests written in the measured window.
    pub sent: u64,
    /// Measured requests that got a complete response (any status).
    pub completed: u64,
    /// Measured requests that succeeded: 2xx, and for streams every check
    /// passed.
    pub ok: u64,
    /// Measured requests that failed (errors has the reasons).
    pub failed: u64,
    /// Responses (any status) that ended inside the measured window,
    /// whenever their request was sent; throughput is this over the window.
    pub completed_in_window: u64,
    /// Every response received, warm-up and drain included (what the
    /// target's CPU time is divided by); requests that failed before any
    /// response byte are not in it.
    pub all_completed: u64,
    /// SSE events received by measured requests.
    pub events: u64,
    /// Response body bytes received by measured requests.
    pub body_bytes: u64,
    /// TCP connections opened.
    pub connections: u64,
}

/// How the stream checks went, over measured streamed requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamChecks {
    /// Streamed requests checked.
    pub streams: u64,
    /// Streams that passed every check.
    pub ok: u64,
    /// Ended (or broke off) without `data: [DONE]`.
    pub missing_done: u64,
    /// Asked for usage (`stream_options.include_usage`) and got none.
    pub missing_usage: u64,
    /// Carried an error event.
    pub error_event: u64,
    /// A 2xx answer that was not `text/event-stream`.
    pub not_event_stream: u64,
    /// Carried no generated text at all.
    pub no_token: u64,
}

/// How the idle-stream phase went.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdleCounts {
    /// Streams asked for.
    pub requested: u64,
    /// Streams whose response head arrived and that were then held open.
    pub opened: u64,
    /// Streams that never opened (connect error, error status, timeout).
    pub failed: u64,
    /// Opened streams the server ended while they were held.
    pub dropped: u64,
    /// Milliseconds from the first connect until every stream was open or
    /// had failed.
    pub open_ms: u64,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Request start (scheduled time in open loop, send time in closed
    /// loop) to the end of the response.
    pub latency: Hist,
    /// Actual send to the end of the response (no queueing).
    pub service: Hist,
    /// Request start to the first response byte.
    pub ttfb: Hist,
    /// Request start to the first event carrying generated text.
    pub ttft: Hist,
    /// Between consecutive events of a stream, as received.
    pub gap: Hist,
    /// Events per second of each stream (events / time from first to last).
    pub stream_rate: Hist,
    pub counts: Counts,
    /// Failure reasons of measured requests.
    pub errors: BTreeMap<String, u64>,
    pub checks: StreamChecks,
    pub idle: IdleCounts,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: new_hist(),
            service: new_hist(),
            ttfb: new_hist(),
            ttft: new_hist(),
            gap: new_hist(),
            stream_rate: new_hist(),
            counts: Counts::default(),
            errors: BTreeMap::new(),
            checks: StreamChecks::default(),
            idle: IdleCounts::default(),
        }
    }
}

/// A distribution as reported. Time distributions are in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Dist {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// `[percentile, value]` pairs from 0 % to 99.999 % and the maximum,
    /// for percentile (inverse CDF) plots.
    pub spectrum: Vec<[f64; 2]>,
}

impl Dist {
    /// Summarises `h`, dividing every value by `scale` (1000 turns
    /// nanoseconds into microseconds).
    pub fn of(h: &Hist, scale: f64) -> Dist {
        if h.is_empty() {
            return Dist::default();
        }
        let v = |q: f64| round2(h.value_at_quantile(q) as f64 / scale);
        let mut spectrum = Vec::new();
        for step in 0..=SPECTRUM_STEPS_PER_DECADE * SPECTRUM_DECADES {
            let q = 1.0 - 10f64.powf(-f64::from(step) / f64::from(SPECTRUM_STEPS_PER_DECADE));
            spectrum.push([round4(q * 100.0), v(q)]);
        }
        spectrum.push([100.0, round2(h.max() as f64 / scale)]);
        Dist {
            count: h.len(),
            min: round2(h.min() as f64 / scale),
            mean: round2(h.mean() / scale),
            p50: v(0.5),
            p90: v(0.9),
            p99: v(0.99),
            p999: v(0.999),
            max: round2(h.max() as f64 / scale),
            spectrum,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The serializable result of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// `closed`, `open` or `idle`.
    pub mode: String,
    pub stream: bool,
    /// The measured window (warm-up excluded), seconds.
    pub duration_s: f64,
    /// Open loop: the constant request rate asked for.
    pub offered_rps: Option<f64>,
    /// Closed loop: connections kept busy.
    pub concurrency: Option<usize>,
    /// Responses completed per second of the window.
    pub throughput_rps: f64,
    /// SSE events received per second of the window.
    pub events_per_s: f64,
    pub counts: Counts,
    pub errors: BTreeMap<String, u64>,
    pub checks: Option<StreamChecks>,
    pub idle: Option<IdleCounts>,
    /// Request start to response end, µs (for streams: the total time).
    pub latency: Dist,
    /// Actual send to response end, µs.
    pub service: Dist,
    pub ttfb: Option<Dist>,
    pub ttft: Option<Dist>,
    pub gap: Option<Dist>,
    /// Events per second per stream.
    pub stream_rate: Option<Dist>,
}

impl Recorder {
    /// Counts a failed measured request under `reason`.
    pub(crate) fn fail(&mut self, reason: &str) {
        self.counts.failed += 1;
        *self.errors.entry(reason.to_owned()).or_default() += 1;
    }

    /// Adds another thread's recordings.
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in [
            (&mut self.latency, &other.latency),
            (&mut self.service, &other.service),
            (&mut self.ttfb, &other.ttfb),
            (&mut self.ttft, &other.ttft),
            (&mut self.gap, &other.gap),
            (&mut self.stream_rate, &other.stream_rate),
        ] {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
        let (c, o) = (&mut self.counts, &other.counts);
        c.sent += o.sent;
        c.completed += o.completed;
        c.ok += o.ok;
        c.failed += o.failed;
        c.completed_in_window += o.completed_in_window;
        c.all_completed += o.all_completed;
        c.events += o.events;
        c.body_bytes += o.body_bytes;
        c.connections += o.connections;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        let (s, o) = (&mut self.checks, &other.checks);
        s.streams += o.streams;
        s.ok += o.ok;
        s.missing_done += o.missing_done;
        s.missing_usage += o.missing_usage;
        s.error_event += o.error_event;
        s.not_event_stream += o.not_event_stream;
        s.no_token += o.no_token;
        let (s, o) = (&mut self.idle, &other.idle);
        s.requested += o.requested;
        s.opened += o.opened;
        s.failed += o.failed;
        s.dropped += o.dropped;
        s.open_ms = s.open_ms.max(o.open_ms);
    }

    /// The summary of a run of `mode` whose window lasted `window`.
    pub fn summary(
        &self,
        mode: &str,
        stream: bool,
        window: Duration,
        offered_rps: Option<f64>,
        concurrency: Option<usize>,
    ) -> Summary {
        let secs = window.as_secs_f64().max(1e-9);
        let us = |h: &Hist| Dist::of(h, 1000.0);
        let idle = mode == "idle";
        Summary {
            mode: mode.to_owned(),
            stream,
            duration_s: window.as_secs_f64(),
            offered_rps,
            concurrency,
            throughput_rps: round2(self.counts.completed_in_window as f64 / secs),
            events_per_s: round2(self.counts.events as f64 / secs),
            counts: self.counts.clone(),
            errors: self.errors.clone(),
            checks: (stream && !idle).then(|| self.checks.clone()),
            idle: idle.then(|| self.idle.clone()),
            latency: us(&self.latency),
            service: us(&self.service),
            ttfb: (stream || idle).then(|| us(&self.ttfb)),
            ttft: (stream && !idle).then(|| us(&self.ttft)),
            gap: (stream && !idle).then(|| us(&self.gap)),
            stream_rate: (stream && !idle).then(|| Dist::of(&self.stream_rate, 1.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_reports_microseconds_and_a_spectrum() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).ok();
        }
        let d = Dist::of(&h, 1000.0);
        assert_eq!(d.count, 1000);
        assert!((d.p50 - 500.0).abs() < 1.0, "{d:?}");
        assert!((d.p99 - 990.0).abs() < 1.0, "{d:?}");
        assert!((d.max - 1000.0).abs() < 1.0, "{d:?}");
        assert_eq!(d.spectrum.first().map(|p| p[0]), Some(0.0));
        assert_eq!(d.spectrum.last().map(|p| p[0]), Some(100.0));
        assert!(d.spectrum.windows(2).all(|w| w[0][1] <= w[1][1]));
        assert_eq!(Dist::of(&new_hist(), 1000.0), Dist::default());
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Recorder::default();
        a.fail("timeout");
        a.latency.record(10).ok();
        let mut b = Recorder::default();
        b.fail("timeout");
        b.fail("connect");
        b.latency.record(20).ok();
        b.idle.open_ms = 7;
        a.merge(&b);
        assert_eq!(a.counts.failed, 3);
        assert_eq!(a.errors.get("timeout"), Some(&2));
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.idle.open_ms, 7);
    }
}
