//! Upstream endpoint health: load balancing, passive ejection, circuit breaking.
//!
//! A provider may list several base URLs (`base_urls`). For each attempt
//! [`Endpoints::choose`] picks one by power of two choices: two endpoints
//! at random, the one with the lower EWMA latency times one plus its
//! requests in flight wins — cheap, and it steers load away from a slow
//! endpoint without herding. Every endpoint has a circuit breaker: `failures_to_eject`
//! consecutive failures (connect error, timeout, 5xx; not a connect sluice
//! could not even try for want of its own descriptors or ports) open it for
//! `base_ejection`, doubling on each re-open up to `max_ejection`; when the
//! time is up it is half-open and lets exactly one probe through, whose
//! outcome closes it (and resets the backoff) or opens it again. An
//! optional active check (`health.check_path`) feeds the same breaker.
//! State is atomics shared by every core.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use sluice_config::{Health, Provider};

use crate::pool::now_ns;

/// Circuit states, as exported in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// One endpoint's live state.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    failures: AtomicU32,
    /// 0 = closed; otherwise open until then (ns, `pool::now_ns` clock).
    open_until: AtomicU64,
    reopens: AtomicU32,
    probing: AtomicBool,
    /// EWMA of attempt latency in µs, as f64 bits (0 = no sample yet).
    ewma_us: AtomicU64,
    pub in_flight: AtomicU64,
    pub ejections: AtomicU64,
}

impl EndpointHealth {
    pub fn circuit(&self, now: u64) -> Circuit {
        match self.open_until.load(Ordering::Acquire) {
            0 => Circuit::Closed,
            until if now < until => Circuit::Open,
            _ => Circuit::HalfOpen,
        }
    }

    /// May an attempt go here now? A half-open endpoint admits one probe.
    /// `Some(probe)` when it does.
    fn admits(&self, now: u64) -> Option<bool> {
        match self.circuit(now) {
            Circuit::Closed => Some(false),
            Circuit::Open => None,
            Circuit::HalfOpen => self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then_some(true),
        }
    }

    /// Whether it would admit now (without taking the probe).
    fn open_to_traffic(&self, now: u64) -> bool {
        match self.circuit(now) {
            Circuit::Closed => true,
            Circuit::Open => false,
            Circuit::HalfOpen => !self.probing.load(Ordering::Acquire),
        }
    }

    fn score(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_us.load(Ordering::Relaxed)).max(1.0);
        ewma * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// The attempt succeeded (any answer below 500) in `latency_us`.
    pub fn success(&self, latency_us: u64) {
        self.failures.store(0, Ordering::Release);
        if self.open_until.load(Ordering::Acquire) != 0 {
            self.open_until.store(0, Ordering::Release);
            self.reopens.store(0, Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
        // EWMA with α = 0.2; a lost race just drops one sample.
        let old = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            latency_us as f64
        } else {
            old * 0.8 + latency_us as f64 * 0.2
        };
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
    }

    /// An active check failed: a closed endpoint counts it as a failure; an
    /// open or half-open one stays out of traffic for another ejection.
    pub fn check_failed(&self, health: &Health) {
        let now = now_ns();
        if self.circuit(now) == Circuit::Closed {
            self.failure(health);
            return;
        }
        let reopens = self.reopens.load(Ordering::Acquire).saturating_sub(1);
        self.open_until.store(
            now + health.ejection(reopens).as_nanos() as u64,
            Ordering::Release,
        );
    }

    /// The attempt failed (connect error, timeout, 5xx).
    pub fn failure(&self, health: &Health) {
        let now = now_ns();
        // No latency sample: a failing endpoint keeps its place until its
        // circuit opens (the request itself retries on another endpoint),
        // so ejection and recovery stay driven by the breaker alone.
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probing.swap(false, Ordering::AcqRel);
        if probe_failed
            || (failures >= health.failures_to_eject && self.circuit(now) == Circuit::Closed)
        {
            let reopens = self.reopens.fetch_add(1, Ordering::AcqRel);
            let length = health.ejection(reopens);
            self.open_until
                .store(now + length.as_nanos() as u64, Ordering::Release);
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A provider's endpoints.
#[derive(Debug)]
pub struct Endpoints {
    pub endpoints: Vec<EndpointHealth>,
    pub health: Health,
    seq: AtomicU64,
}

/// An attempt's hold on an endpoint (in flight until dropped).
#[derive(Debug)]
pub struct Pick<'a> {
    pub index: usize,
    pub endpoint: &'a EndpointHealth,
    /// This attempt is a half-open endpoint's one probe.
    probe: bool,
    reported: std::cell::Cell<bool>,
}

impl Pick<'_> {
    pub fn success(&self, latency_us: u64) {
        self.reported.set(true);
        self.endpoint.success(latency_us);
    }

    pub fn failure(&self, health: &Health) {
        self.reported.set(true);
        self.endpoint.failure(health);
    }
}

impl Drop for Pick<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.probe && !self.reported.get() {
            // The probe ended without a verdict (the client left): let the
            // next request probe instead of leaving the endpoint half-open.
            self.endpoint.probing.store(false, Ordering::Release);
        }
    }
}

impl Endpoints {
    pub fn new(provider: &Provider) -> Self {
        Endpoints {
            endpoints: provider
                .endpoints
                .iter()
                .map(|_| EndpointHealth::default())
                .collect(),
            health: provider.health.clone(),
            seq: AtomicU64::new(0),
        }
    }

    /// Power of two choices among the endpoints whose circuit admits,
    /// preferring ones this request has not tried (`tried`). `None`: every
    /// circuit is open.
    pub fn choose(&self, tried: &[usize]) -> Option<Pick<'_>> {
        let n = self.endpoints.len();
        let now = now_ns();
        let order: Vec<usize> = if n == 1 {
            vec![0]
        } else {
            // Two distinct starting points from a Weyl sequence: cheap and
            // spread well enough for choosing between a handful.
            let s = self
                .seq
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let a = (s >> 32) as usize % n;
            let b = (a + 1 + (s as usize % (n - 1))) % n;
            let (first, second) = if self.endpoints[a].score() <= self.endpoints[b].score() {
                (a, b)
            } else {
                (b, a)
            };
            let mut order = vec![first, second];
            order.extend((0..n).filter(|i| *i != a && *i != b));
            // Untried ones first, keeping the preference order.
            order.sort_by_key(|i| tried.contains(i));
            order
        };
        order.into_iter().find_map(|i| {
            let endpoint = &self.endpoints[i];
            let probe = endpoint.admits(now)?;
            endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
            Some(Pick {
                index: i,
                endpoint,
                probe,
                reported: std::cell::Cell::new(false),
            })
        })
    }

    /// Whether an endpoint not in `tried` is open to traffic now.
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        let now = now_ns();
        self.endpoints
            .iter()
            .enumerate()
            .any(|(i, e)| !tried.contains(&i) && e.open_to_traffic(now))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn health() -> Health {
        Health {
            failures_to_eject: 3,
            base_ejection: Duration::from_millis(50),
            max_ejection: Duration::from_millis(400),
            check: None,
        }
    }

    #[test]
    fn consecutive_failures_open_then_half_open_probe_closes() {
        let h = health();
        let e = EndpointHealth::default();
        e.failure(&h);
        e.failure(&h);
        assert_eq!(e.circuit(now_ns()), Circuit::Closed);
        e.failure(&h);
        assert_eq!(e.circuit(now_ns()), Circuit::Open);
        assert_eq!(e.admits(now_ns()), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.circuit(now_ns()), Circuit::HalfOpen);
        assert_eq!(e.admits(now_ns()), Some(true), "one probe");
        assert_eq!(e.admits(now_ns()), None, "only one probe");
        e.success(1000);
        assert_eq!(e.circuit(now_ns()), Circuit::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let h = health();
        let e = EndpointHealth::default();
        for _ in 0..3 {
            e.failure(&h);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.admits(now_ns()), Some(true));
        e.failure(&h);
        assert_eq!(e.circuit(now_ns()), Circuit::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            e.circuit(now_ns()),
            Circuit::Open,
            "the second ejection lasts 100 ms"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(e.circuit(now_ns()), Circuit::HalfOpen);
        assert_eq!(e.ejections.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint_and_skips_open_ones() {
        let eps = Endpoints {
            endpoints: (0..2).map(|_| EndpointHealth::default()).collect(),
            health: health(),
            seq: AtomicU64::new(0),
        };
        eps.endpoints[0].success(10_000);
        eps.endpoints[1].success(100);
        for _ in 0..20 {
            assert_eq!(eps.choose(&[]).unwrap().index, 1);
        }
        for _ in 0..3 {
            eps.endpoints[1].failure(&eps.health);
        }
        for _ in 0..20 {
            assert_eq!(eps.choose(&[]).unwrap().index, 0, "the open one is skipped");
        }
        for _ in 0..3 {
            eps.endpoints[0].failure(&eps.health);
        }
        assert!(eps.choose(&[]).is_none(), "every circuit open");
    }
}
