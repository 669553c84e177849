//! Upstream key pools and the retry budget, shared by every core.
//!
//! A provider may have several API keys. [`KeyPool::pick`] hands out the
//! next key round-robin (or the one with the fewest requests in flight),
//! skipping keys that are cooling down and keys this request already tried
//! — a retry never reuses the key that just failed. A key that gets 429,
//! 401 or 403 cools down for the provider's `Retry-After` or for
//! `key_cooldown_ms`; when every key is cooling, `pick` says when the
//! soonest one recovers. All state is atomics: no lock on the request path.
//!
//! [`RetryBudget`] keeps retries to a share of traffic: every first attempt
//! deposits `retry.budget_ratio` of a token, every retry spends one, so an
//! outage cannot turn into a retry storm.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use sluice_config::{KeySelection, Provider};

/// One key's live state.
#[derive(Debug, Default)]
pub struct KeyState {
    cooling_until_ns: AtomicU64,
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cooldowns: AtomicU64,
}

/// A provider's keys.
#[derive(Debug)]
pub struct KeyPool {
    pub keys: Vec<KeyState>,
    next: AtomicUsize,
    selection: KeySelection,
}

/// A key in use by one attempt; `in_flight` drops back when it ends.
#[derive(Debug)]
pub struct KeyUse<'a> {
    pub index: usize,
    pool: &'a KeyPool,
}

impl Drop for KeyUse<'_> {
    fn drop(&mut self) {
        self.pool.keys[self.index]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Monotonic nanoseconds since the process's first call.
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

impl KeyPool {
    pub fn new(provider: &Provider) -> Self {
        KeyPool {
            keys: provider.keys.iter().map(|_| KeyState::default()).collect(),
            next: AtomicUsize::new(0),
            selection: provider.key_selection,
        }
    }

    /// A usable key not in `tried`. `Ok(None)`: the provider has no keys.
    /// `Err(ns)`: every usable key is cooling; the soonest recovers in `ns`.
    pub fn pick(&self, now: u64, tried: &[usize]) -> Result<Option<KeyUse<'_>>, u64> {
        let n = self.keys.len();
        if n == 0 {
            return Ok(None);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64)> = None;
        let mut soonest = u64::MAX;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.contains(&i) {
                continue;
            }
            let key = &self.keys[i];
            let until = key.cooling_until_ns.load(Ordering::Acquire);
            if until > now {
                soonest = soonest.min(until - now);
                continue;
            }
            let load = key.in_flight.load(Ordering::Acquire);
            match self.selection {
                KeySelection::RoundRobin => {
                    best = Some((i, load));
                    break;
                }
                KeySelection::LeastInFlight => {
                    if best.is_none_or(|(_, l)| load < l) {
                        best = Some((i, load));
                    }
                }
            }
        }
        match best {
            Some((index, _)) => {
                let key = &self.keys[index];
                key.in_flight.fetch_add(1, Ordering::AcqRel);
                key.requests.fetch_add(1, Ordering::Relaxed);
                Ok(Some(KeyUse { index, pool: self }))
            }
            None => Err(if soonest == u64::MAX { 0 } else { soonest }),
        }
    }

    /// Whether a key not in `tried` is usable now.
    pub fn has_untried(&self, now: u64, tried: &[usize]) -> bool {
        self.keys
            .iter()
            .enumerate()
            .any(|(i, k)| !tried.contains(&i) && k.cooling_until_ns.load(Ordering::Acquire) <= now)
    }

    /// Rest key `index` for `for_ns` (a 429/401/403 answer).
    pub fn cool(&self, index: usize, now: u64, for_ns: u64) {
        if let Some(key) = self.keys.get(index) {
            key.errors.fetch_add(1, Ordering::Relaxed);
            key.cooldowns.fetch_add(1, Ordering::Relaxed);
            key.cooling_until_ns
                .fetch_max(now + for_ns, Ordering::AcqRel);
        }
    }

    /// Count a failure that does not cool the key (5xx, timeout).
    pub fn failed(&self, index: usize) {
        if let Some(key) = self.keys.get(index) {
            key.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn is_cooling(&self, index: usize, now: u64) -> bool {
        self.keys
            .get(index)
            .is_some_and(|k| k.cooling_until_ns.load(Ordering::Acquire) > now)
    }
}

/// Retries allowed as a share of traffic.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry token.
    milli: AtomicI64,
    deposit: i64,
    cap: i64,
}

impl RetryBudget {
    pub fn new(ratio: f64) -> Self {
        let deposit = (ratio * 1000.0).round() as i64;
        RetryBudget {
            // Start with a little so the first failures can be retried.
            milli: AtomicI64::new(10 * 1000),
            deposit,
            // At most 100 retries banked: a long quiet spell is no licence for a storm.
            cap: 100 * 1000,
        }
    }

    /// A first attempt: earns `ratio` of a retry.
    pub fn on_request(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some((m + self.deposit).min(self.cap))
            });
    }

    /// Spend one retry, if the budget holds one.
    pub fn try_retry(&self) -> bool {
        self.milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, selection: KeySelection) -> KeyPool {
        KeyPool {
            keys: (0..n).map(|_| KeyState::default()).collect(),
            next: AtomicUsize::new(0),
            selection,
        }
    }

    #[test]
    fn round_robin_skips_cooling_and_tried_keys() {
        let p = pool(3, KeySelection::RoundRobin);
        let picks: Vec<usize> = (0..3)
            .map(|_| p.pick(100, &[]).unwrap().unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
        p.cool(1, 100, 50);
        let picks: Vec<usize> = (0..4)
            .map(|_| p.pick(120, &[]).unwrap().unwrap().index)
            .collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // A retry never gets the key that just failed.
        for _ in 0..5 {
            assert_ne!(p.pick(120, &[0]).unwrap().unwrap().index, 0);
        }
        // All cooling or tried: the soonest recovery.
        assert_eq!(p.pick(120, &[0, 2]).unwrap_err(), 30);
        assert_eq!(p.pick(200, &[0, 2]).unwrap().unwrap().index, 1);
    }

    #[test]
    fn least_in_flight_prefers_the_idle_key() {
        let p = pool(2, KeySelection::LeastInFlight);
        let a = p.pick(1, &[]).unwrap().unwrap();
        let b = p.pick(1, &[]).unwrap().unwrap();
        assert_ne!(a.index, b.index);
        drop(a);
        let c = p.pick(1, &[]).unwrap().unwrap();
        assert_ne!(c.index, b.index, "the key with nothing in flight");
    }

    #[test]
    fn no_keys_means_no_key() {
        assert!(pool(0, KeySelection::RoundRobin)
            .pick(1, &[])
            .unwrap()
            .is_none());
    }

    #[test]
    fn retry_budget_is_a_share_of_requests() {
        let b = RetryBudget::new(0.2);
        for _ in 0..10 {
            assert!(b.try_retry(), "the starting allowance");
        }
        assert!(!b.try_retry());
        for _ in 0..10 {
            b.on_request();
        }
        assert!(b.try_retry(), "ten requests earn two retries");
        assert!(b.try_retry());
        assert!(!b.try_retry());
    }
}

/// A provider's concurrency limit on this node (`max_concurrency`).
#[derive(Debug)]
pub struct Capacity {
    limit: Option<u64>,
    pub in_flight: AtomicU64,
}

/// One request's place in a provider's capacity; freed on drop.
#[derive(Debug)]
pub struct Slot<'a>(&'a Capacity);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Capacity {
    pub fn new(provider: &Provider) -> Self {
        Capacity {
            limit: provider.max_concurrency.map(|n| n.get()),
            in_flight: AtomicU64::new(0),
        }
    }

    /// A slot, unless the provider is at its limit.
    pub fn enter(&self) -> Option<Slot<'_>> {
        let limit = self.limit.unwrap_or(u64::MAX);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }
}
