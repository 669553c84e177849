//! Lock-free limit cells, shared by every core.
//!
//! Each limit of a consumer (or consumer × model) is one cell holding a
//! single atomic word, updated with compare-and-swap, so admission on any
//! core is exact without a lock:
//! - [`Rate`]: a GCRA ("virtual scheduling") token bucket for requests or
//!   tokens per second/minute/hour/day. It stores the theoretical arrival
//!   time (TAT); taking `n` units moves it `n × period / limit` forward and
//!   is refused when that would put it more than one period ahead.
//! - [`Concurrency`]: requests in flight.
//! - [`Balance`]: a token balance that only goes down with use.
//! - [`Budget`]: currency spend in a calendar window (UTC day or month),
//!   window id and spend packed into one word.
//!
//! Times are nanoseconds on the quota engine's monotonic clock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why a cell refused, and when it may admit again (ns from now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_ns: u64,
}

/// A GCRA token bucket: up to `limit` units per `period`, bursts up to `limit`.
#[derive(Debug)]
pub struct Rate {
    limit: u64,
    period_ns: u64,
    tat: AtomicU64,
}

impl Rate {
    pub fn new(limit: u64, period_ns: u64) -> Self {
        Rate {
            limit: limit.max(1),
            period_ns,
            tat: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// Time the bucket advances for `units`.
    fn span(&self, units: u64) -> u64 {
        ((units as u128 * self.period_ns as u128) / self.limit as u128).min(u64::MAX as u128) as u64
    }

    /// Take `units` now, or say when they would fit. A request larger than
    /// the whole bucket is admitted when the bucket is full (it goes into
    /// debt), so an oversized request is slow, never impossible.
    pub fn take(&self, now: u64, units: u64) -> Result<(), Refused> {
        let span = self.span(units);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now);
            let new = base.saturating_add(span);
            let ahead = new - now;
            if ahead > self.period_ns && base > now {
                let wait = (ahead - self.period_ns).min(base - now);
                return Err(Refused {
                    retry_after_ns: wait,
                });
            }
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Give back `units` taken earlier (never beyond a full bucket).
    pub fn give_back(&self, now: u64, units: u64) {
        let span = self.span(units);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(span).max(now.min(tat)))
            });
    }

    /// Charge `units` unconditionally (usage above the reservation).
    pub fn charge(&self, now: u64, units: u64) {
        let span = self.span(units);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(span))
            });
    }

    /// Units that could be taken now.
    pub fn remaining(&self, now: u64) -> u64 {
        let used = self.tat.load(Ordering::Acquire).saturating_sub(now);
        let free = self.period_ns.saturating_sub(used);
        ((free as u128 * self.limit as u128) / self.period_ns as u128) as u64
    }

    /// Time until the bucket is full again.
    pub fn reset_ns(&self, now: u64) -> u64 {
        self.tat.load(Ordering::Acquire).saturating_sub(now)
    }

    /// Empty the debt: the bucket is full again.
    pub fn reset(&self) {
        self.tat.store(0, Ordering::Release);
    }

    /// The raw TAT, for persistence.
    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Acquire)
    }

    pub fn set_tat(&self, tat: u64) {
        self.tat.store(tat, Ordering::Release);
    }
}

/// Requests in flight, at most `limit`.
#[derive(Debug)]
pub struct Concurrency {
    limit: u64,
    current: AtomicU64,
}

impl Concurrency {
    pub fn new(limit: u64) -> Self {
        Concurrency {
            limit,
            current: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    pub fn enter(&self) -> bool {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.limit).then_some(c + 1)
            })
            .is_ok()
    }

    pub fn leave(&self) {
        let _ = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(1))
            });
    }
}

/// A token balance: admission needs it positive; use brings it down and
/// may take it below zero by at most one request's usage.
#[derive(Debug)]
pub struct Balance {
    tokens: AtomicI64,
    /// Reserved by requests still in flight (already taken off `tokens`).
    held: AtomicI64,
}

impl Balance {
    pub fn new(tokens: i64) -> Self {
        Balance {
            tokens: AtomicI64::new(tokens),
            held: AtomicI64::new(0),
        }
    }

    pub fn get(&self) -> i64 {
        self.tokens.load(Ordering::Acquire)
    }

    pub fn set(&self, tokens: i64) {
        self.tokens.store(tokens, Ordering::Release);
    }

    /// Add `delta` (saturating: a huge top-up never wraps around).
    pub fn add(&self, delta: i64) -> i64 {
        let before = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_add(delta))
            })
            .unwrap_or_else(|b| b);
        before.saturating_add(delta)
    }

    /// Reserve `tokens` if the balance is positive.
    pub fn reserve(&self, tokens: u64) -> bool {
        let tokens = tokens.min(i64::MAX as u64) as i64;
        let ok = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b > 0).then(|| b.saturating_sub(tokens))
            })
            .is_ok();
        if ok {
            self.held.fetch_add(tokens, Ordering::AcqRel);
        }
        ok
    }

    /// Settle a reservation of `reserved` tokens that used `used`.
    pub fn settle(&self, reserved: u64, used: u64) {
        self.add(reserved as i64 - used as i64);
        self.held
            .fetch_sub(reserved.min(i64::MAX as u64) as i64, Ordering::AcqRel);
    }

    /// The balance as if every request in flight gave its reservation
    /// back: what a crash must not lose (persisted instead of `get`).
    pub fn settled(&self) -> i64 {
        self.get().saturating_add(self.held.load(Ordering::Acquire))
    }
}

/// Bits of a budget word holding the spend (micro-units); the rest is the window id.
const SPEND_BITS: u32 = 44;
const SPEND_MASK: u64 = (1 << SPEND_BITS) - 1;

/// Currency spend within a calendar window, in micro-units.
#[derive(Debug)]
pub struct Budget {
    limit_micros: u64,
    word: AtomicU64,
    /// Reserved by requests still in flight (already in the spend).
    held: AtomicU64,
}

fn pack(window: u64, spend: u64) -> u64 {
    (window << SPEND_BITS) | spend.min(SPEND_MASK)
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> SPEND_BITS, word & SPEND_MASK)
}

impl Budget {
    pub fn new(limit_micros: u64) -> Self {
        Budget {
            limit_micros,
            word: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    pub fn limit_micros(&self) -> u64 {
        self.limit_micros
    }

    /// Spend so far in `window`.
    pub fn spent(&self, window: u64) -> u64 {
        let (w, spend) = unpack(self.word.load(Ordering::Acquire));
        if w == window {
            spend
        } else {
            0
        }
    }

    /// Reserve `micros` in `window`: refused when it would pass the limit,
    /// except for the first spend of a window (one oversized request may go).
    pub fn reserve(&self, window: u64, micros: u64) -> bool {
        let ok = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (w, spend) = unpack(word);
                let spend = if w == window { spend } else { 0 };
                if spend >= self.limit_micros || (spend > 0 && spend + micros > self.limit_micros) {
                    None
                } else {
                    Some(pack(window, spend + micros))
                }
            })
            .is_ok();
        if ok {
            self.held.fetch_add(micros, Ordering::AcqRel);
        }
        ok
    }

    /// Settle a reservation of `reserved` micros in `window` that cost `used`.
    pub fn settle(&self, window: u64, reserved: u64, used: u64) {
        self.adjust(window, used as i64 - reserved as i64);
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(reserved))
            });
    }

    /// The word as if every request in flight gave its reservation back.
    pub fn settled_word(&self) -> u64 {
        let (w, spend) = unpack(self.word.load(Ordering::Acquire));
        pack(w, spend.saturating_sub(self.held.load(Ordering::Acquire)))
    }

    /// Adjust the spend in `window` by `delta` micro-units (settlement).
    /// A window that has ended is left alone: settling into it would
    /// overwrite the new window's spend.
    pub fn adjust(&self, window: u64, delta: i64) {
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (w, spend) = unpack(word);
                (w == window).then(|| pack(window, spend.saturating_add_signed(delta)))
            });
    }

    pub fn set(&self, window: u64, micros: u64) {
        self.word.store(pack(window, micros), Ordering::Release);
    }

    /// The packed (window, spend) word, for persistence.
    pub fn word(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }

    pub fn set_word(&self, word: u64) {
        self.word.store(word, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn rate_admits_a_burst_of_the_limit_then_refuses_with_the_wait() {
        let r = Rate::new(10, 60 * SEC);
        let now = 1000 * SEC;
        for _ in 0..10 {
            assert!(r.take(now, 1).is_ok());
        }
        let refused = r.take(now, 1).unwrap_err();
        assert_eq!(refused.retry_after_ns, 6 * SEC);
        // After one emission interval one more unit fits.
        assert!(r.take(now + 6 * SEC, 1).is_ok());
        assert!(r.take(now + 6 * SEC, 1).is_err());
    }

    #[test]
    fn rate_refund_and_extra_charge() {
        let r = Rate::new(1000, 60 * SEC);
        let now = 10 * SEC;
        r.take(now, 800).unwrap();
        assert_eq!(r.remaining(now), 200);
        r.give_back(now, 500);
        assert_eq!(r.remaining(now), 700);
        r.charge(now, 100);
        assert_eq!(r.remaining(now), 600);
        // A refund never fills past full.
        r.give_back(now, 10_000);
        assert_eq!(r.remaining(now), 1000);
    }

    #[test]
    fn oversized_request_goes_only_into_a_full_bucket() {
        let r = Rate::new(100, 60 * SEC);
        let now = 5 * SEC;
        assert!(
            r.take(now, 250).is_ok(),
            "full bucket admits an oversized take"
        );
        let wait = r.take(now, 1).unwrap_err().retry_after_ns;
        // 250 units at 0.6 s each = 150 s of debt, minus one period.
        assert_eq!(wait, 90 * SEC + 600_000_000);
    }

    #[test]
    fn rate_window_refills_over_time() {
        let r = Rate::new(60, 60 * SEC);
        let t0 = 100 * SEC;
        r.take(t0, 60).unwrap();
        assert_eq!(r.remaining(t0), 0);
        assert_eq!(r.remaining(t0 + 30 * SEC), 30);
        assert_eq!(r.reset_ns(t0), 60 * SEC);
    }

    #[test]
    fn concurrency_limits_in_flight() {
        let c = Concurrency::new(2);
        assert!(c.enter());
        assert!(c.enter());
        assert!(!c.enter());
        c.leave();
        assert!(c.enter());
    }

    #[test]
    fn balance_overdraft_is_one_request_deep() {
        let b = Balance::new(100);
        assert!(b.reserve(150), "positive balance admits");
        assert_eq!(b.get(), -50);
        assert!(!b.reserve(1), "negative balance refuses");
        b.add(200);
        assert!(b.reserve(1));
    }

    #[test]
    fn budget_windows_and_overshoot() {
        let b = Budget::new(1_000_000);
        assert!(b.reserve(7, 600_000));
        assert!(!b.reserve(7, 600_000), "would pass the limit");
        assert!(b.reserve(7, 400_000));
        assert!(!b.reserve(7, 1));
        // Next window starts from zero; a first oversized spend may go.
        assert!(b.reserve(8, 5_000_000));
        assert_eq!(b.spent(8), 5_000_000);
        b.adjust(8, -4_500_000);
        assert_eq!(b.spent(8), 500_000);
        assert_eq!(b.spent(7), 0);
    }
}

/// This node's share of a cluster-wide limit: units leased from Redis and
/// not yet spent, and when the lease lapses (its remainder then goes back).
/// The allowance may go below zero when a request used more than it
/// reserved; the next lease covers that debt first.
#[derive(Debug, Default)]
pub struct Lease {
    allowance: AtomicI64,
    expires_ns: AtomicU64,
}

impl Lease {
    /// Spend `units` from the allowance, if it holds that many.
    pub fn take(&self, units: u64) -> bool {
        let units = units.min(i64::MAX as u64) as i64;
        self.allowance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a >= units).then(|| a - units)
            })
            .is_ok()
    }

    /// Units missing for a take of `units` now.
    pub fn shortfall(&self, units: u64) -> u64 {
        (units as i64)
            .saturating_sub(self.allowance.load(Ordering::Acquire))
            .max(0) as u64
    }

    /// Adjust the allowance (refunds are positive, extra use negative).
    pub fn adjust(&self, delta: i64) {
        self.allowance.fetch_add(delta, Ordering::AcqRel);
    }

    /// Add units granted by Redis, valid until `expires_ns`.
    pub fn credit(&self, units: u64, expires_ns: u64) {
        self.allowance
            .fetch_add(units.min(i64::MAX as u64) as i64, Ordering::AcqRel);
        self.expires_ns.fetch_max(expires_ns, Ordering::AcqRel);
    }

    pub fn allowance(&self) -> i64 {
        self.allowance.load(Ordering::Acquire)
    }

    /// If the lease lapsed, take what is left to settle with Redis:
    /// positive units to hand back, or a negative debt (use beyond the
    /// reservations) to charge. Zero when there is nothing to settle.
    pub fn reclaim(&self, now: u64) -> i64 {
        if self.expires_ns.load(Ordering::Acquire) > now {
            return 0;
        }
        self.allowance.swap(0, Ordering::AcqRel)
    }

    /// Take whatever is left, lapsed or not (shutdown).
    pub fn reclaim_all(&self) -> i64 {
        self.allowance.swap(0, Ordering::AcqRel)
    }
}
