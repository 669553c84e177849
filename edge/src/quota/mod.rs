//! The quota engine: exact admission before forwarding, settlement after.
//!
//! One engine per process, shared by every core. For each consumer (and
//! consumer × model with its own limits) it keeps the configured limits as
//! lock-free cells (`cell`). The quota stage calls [`Engine::admit`] with a
//! reservation — one request, the estimated prompt tokens plus the
//! request's `max_tokens` (or the configured default), and the cost those
//! would have — which takes from every applicable cell or from none (a
//! refusal rolls back what it took) and answers with the limit that
//! refused and when it would admit. When the response is over the stage
//! calls [`Engine::settle`] with the real usage: refunds or extra charges
//! to the same cells, exactly once. A burst of concurrent requests
//! therefore cannot overshoot a limit the way after-the-fact counters do.

pub mod cell;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sluice_config::{Config, LimitSet};

pub use cell::{Balance, Budget, Concurrency, Lease, Rate, Refused};

const SEC: u64 = 1_000_000_000;

/// The limits a cell set can hold, in the order admission checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ConcurrentRequests,
    RequestsPerSecond,
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerHour,
    TokensPerDay,
    Balance,
    BudgetPerDay,
    BudgetPerMonth,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::ConcurrentRequests => "concurrent_requests",
            Limit::RequestsPerSecond => "requests_per_second",
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TokensPerMinute => "tokens_per_minute",
            Limit::TokensPerHour => "tokens_per_hour",
            Limit::TokensPerDay => "tokens_per_day",
            Limit::Balance => "balance",
            Limit::BudgetPerDay => "budget_per_day",
            Limit::BudgetPerMonth => "budget_per_month",
        }
    }

    pub fn parse(name: &str) -> Option<Limit> {
        ALL_LIMITS.iter().copied().find(|l| l.as_str() == name)
    }

    /// Balance and budgets are quota (`insufficient_quota`); the rest are
    /// rate limits (`rate_limit_exceeded`).
    pub fn is_quota(self) -> bool {
        matches!(
            self,
            Limit::Balance | Limit::BudgetPerDay | Limit::BudgetPerMonth
        )
    }
}

pub const ALL_LIMITS: [Limit; 9] = [
    Limit::ConcurrentRequests,
    Limit::RequestsPerSecond,
    Limit::RequestsPerMinute,
    Limit::TokensPerMinute,
    Limit::TokensPerHour,
    Limit::TokensPerDay,
    Limit::Balance,
    Limit::BudgetPerDay,
    Limit::BudgetPerMonth,
];

/// The cells of one limit set (a consumer's, or a consumer × model's).
#[derive(Debug, Default)]
pub struct Cells {
    pub concurrent: Option<Concurrency>,
    pub rps: Option<Rate>,
    pub rpm: Option<Rate>,
    pub tpm: Option<Rate>,
    pub tph: Option<Rate>,
    pub tpd: Option<Rate>,
    pub budget_day: Option<Budget>,
    pub budget_month: Option<Budget>,
    /// Cluster mode: this node's lease for each rate and budget above.
    pub leases: [Lease; 7],
}

/// The limits that are leased in cluster mode, in `Cells::leases` order.
pub const LEASED: [Limit; 7] = [
    Limit::RequestsPerSecond,
    Limit::RequestsPerMinute,
    Limit::TokensPerMinute,
    Limit::TokensPerHour,
    Limit::TokensPerDay,
    Limit::BudgetPerDay,
    Limit::BudgetPerMonth,
];

/// How admission runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// One node: every limit is this node's own.
    Standalone = 0,
    /// Cluster with Redis reachable: limits are spent from leases.
    Cluster = 1,
    /// Cluster, Redis unreachable, fail-open: each node enforces the limits alone.
    LocalOnly = 2,
    /// Cluster, Redis unreachable, fail-closed: refuse.
    Closed = 3,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
            Mode::LocalOnly => "local-only (fail-open)",
            Mode::Closed => "closed (fail-closed)",
        }
    }
}

/// Outcome of one cell set's take.
enum Take {
    Done,
    Refused(Refusal),
    /// Cluster mode: these leases hold too little (limit, units missing).
    Short(Vec<(Limit, u64)>),
}

impl Cells {
    pub fn new(limits: &LimitSet) -> Self {
        let rate =
            |n: Option<std::num::NonZeroU64>, period: u64| n.map(|n| Rate::new(n.get(), period));
        Cells {
            concurrent: limits
                .concurrent_requests
                .map(|n| Concurrency::new(n.get())),
            rps: rate(limits.requests_per_second, SEC),
            rpm: rate(limits.requests_per_minute, 60 * SEC),
            tpm: rate(limits.tokens_per_minute, 60 * SEC),
            tph: rate(limits.tokens_per_hour, 3600 * SEC),
            tpd: rate(limits.tokens_per_day, 86400 * SEC),
            budget_day: limits.budget_per_day_micros.map(|n| Budget::new(n.get())),
            budget_month: limits.budget_per_month_micros.map(|n| Budget::new(n.get())),
            leases: Default::default(),
        }
    }

    /// This node's lease of a limit (cluster mode).
    pub fn lease(&self, limit: Limit) -> Option<&Lease> {
        LEASED
            .iter()
            .position(|l| *l == limit)
            .map(|i| &self.leases[i])
    }

    /// The size of a limit, for lease sizing: units per window, or budget micros.
    pub fn size(&self, limit: Limit) -> Option<u64> {
        match limit {
            Limit::BudgetPerDay => self.budget_day.as_ref().map(Budget::limit_micros),
            Limit::BudgetPerMonth => self.budget_month.as_ref().map(Budget::limit_micros),
            l => self.rate(l).map(Rate::limit),
        }
    }

    /// Every limit this set holds with the units `ask` takes from it.
    fn demands(&self, ask: &Ask) -> impl Iterator<Item = (Limit, u64)> + '_ {
        let ask = *ask;
        LEASED.into_iter().filter_map(move |l| {
            let units = match l {
                Limit::RequestsPerSecond | Limit::RequestsPerMinute => 1,
                Limit::BudgetPerDay | Limit::BudgetPerMonth => ask.cost_micros,
                _ => ask.tokens,
            };
            self.size(l).map(|_| (l, units))
        })
    }

    /// Cluster mode: take `ask` from this node's leases, or from none.
    fn take_leased(&self, ask: &Ask) -> Take {
        if let Some(c) = &self.concurrent {
            if !c.enter() {
                return Take::Refused(Refusal {
                    limit: Limit::ConcurrentRequests,
                    retry_after_ns: SEC,
                });
            }
        }
        let mut taken: Vec<(&Lease, u64)> = Vec::new();
        let mut short = Vec::new();
        for (limit, units) in self.demands(ask) {
            let Some(lease) = self.lease(limit) else {
                continue;
            };
            if lease.take(units) {
                taken.push((lease, units));
            } else {
                short.push((limit, lease.shortfall(units)));
            }
        }
        if short.is_empty() {
            return Take::Done;
        }
        for (lease, units) in taken {
            lease.adjust(units as i64);
        }
        if let Some(c) = &self.concurrent {
            c.leave();
        }
        Take::Short(short)
    }

    /// Cluster mode: settle (or, with a zero `actual` and `requests`, undo) a leased take.
    fn settle_leased(&self, ask: &Ask, actual: &Actual, undo_requests: bool) {
        if let Some(c) = &self.concurrent {
            c.leave();
        }
        let used = Ask {
            tokens: actual.tokens,
            balance_tokens: actual.balance_tokens,
            cost_micros: actual.cost_micros,
        };
        let asked: Vec<(Limit, u64)> = self.demands(ask).collect();
        for ((limit, reserved), (_, spent)) in asked.into_iter().zip(self.demands(&used)) {
            let is_request = matches!(limit, Limit::RequestsPerSecond | Limit::RequestsPerMinute);
            if is_request && !undo_requests {
                continue;
            }
            let spent = if is_request { 0 } else { spent };
            if let Some(lease) = self.lease(limit) {
                lease.adjust(reserved as i64 - spent as i64);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.concurrent.is_none()
            && self.rps.is_none()
            && self.rpm.is_none()
            && self.tpm.is_none()
            && self.tph.is_none()
            && self.tpd.is_none()
            && self.budget_day.is_none()
            && self.budget_month.is_none()
    }

    fn request_rates(&self) -> impl Iterator<Item = (Limit, &Rate)> {
        [
            (Limit::RequestsPerSecond, &self.rps),
            (Limit::RequestsPerMinute, &self.rpm),
        ]
        .into_iter()
        .filter_map(|(l, r)| r.as_ref().map(|r| (l, r)))
    }

    fn token_rates(&self) -> impl Iterator<Item = (Limit, &Rate)> {
        [
            (Limit::TokensPerMinute, &self.tpm),
            (Limit::TokensPerHour, &self.tph),
            (Limit::TokensPerDay, &self.tpd),
        ]
        .into_iter()
        .filter_map(|(l, r)| r.as_ref().map(|r| (l, r)))
    }

    pub fn rate(&self, limit: Limit) -> Option<&Rate> {
        match limit {
            Limit::RequestsPerSecond => self.rps.as_ref(),
            Limit::RequestsPerMinute => self.rpm.as_ref(),
            Limit::TokensPerMinute => self.tpm.as_ref(),
            Limit::TokensPerHour => self.tph.as_ref(),
            Limit::TokensPerDay => self.tpd.as_ref(),
            _ => None,
        }
    }

    fn uses_tokens(&self) -> bool {
        self.tpm.is_some()
            || self.tph.is_some()
            || self.tpd.is_some()
            || self.budget_day.is_some()
            || self.budget_month.is_some()
    }

    /// Take `ask` from every cell, or from none.
    fn take(&self, now: u64, windows: Windows, ask: &Ask) -> Result<(), Refusal> {
        if let Some(c) = &self.concurrent {
            if !c.enter() {
                return Err(Refusal {
                    limit: Limit::ConcurrentRequests,
                    retry_after_ns: SEC,
                });
            }
        }
        let mut taken: Vec<(&Rate, u64)> = Vec::new();
        let rollback = |taken: &[(&Rate, u64)]| {
            for (rate, units) in taken {
                rate.give_back(now, *units);
            }
            if let Some(c) = &self.concurrent {
                c.leave();
            }
        };
        let rates = self
            .request_rates()
            .map(|(l, r)| (l, r, 1))
            .chain(self.token_rates().map(|(l, r)| (l, r, ask.tokens)));
        for (limit, rate, units) in rates {
            match rate.take(now, units) {
                Ok(()) => taken.push((rate, units)),
                Err(refused) => {
                    rollback(&taken);
                    return Err(Refusal {
                        limit,
                        retry_after_ns: refused.retry_after_ns,
                    });
                }
            }
        }
        let budgets = [
            (
                Limit::BudgetPerDay,
                &self.budget_day,
                windows.day,
                windows.next_day_ns,
            ),
            (
                Limit::BudgetPerMonth,
                &self.budget_month,
                windows.month,
                windows.next_month_ns,
            ),
        ];
        let mut reserved: Vec<(&Budget, u64)> = Vec::new();
        for (limit, budget, window, wait) in budgets {
            let Some(budget) = budget else { continue };
            if budget.reserve(window, ask.cost_micros) {
                reserved.push((budget, window));
            } else {
                for (b, w) in &reserved {
                    b.settle(*w, ask.cost_micros, 0);
                }
                rollback(&taken);
                return Err(Refusal {
                    limit,
                    retry_after_ns: wait,
                });
            }
        }
        Ok(())
    }

    /// Undo a successful `take` (a later limit refused the request).
    fn rollback(&self, now: u64, windows: Windows, ask: &Ask) {
        for (_, rate) in self.request_rates() {
            rate.give_back(now, 1);
        }
        self.settle(now, windows, ask, &Actual::default());
    }

    /// Settle what `take` reserved against the actual use.
    fn settle(&self, now: u64, windows: Windows, ask: &Ask, actual: &Actual) {
        if let Some(c) = &self.concurrent {
            c.leave();
        }
        for (_, rate) in self.token_rates() {
            match actual.tokens.cmp(&ask.tokens) {
                std::cmp::Ordering::Less => rate.give_back(now, ask.tokens - actual.tokens),
                std::cmp::Ordering::Greater => rate.charge(now, actual.tokens - ask.tokens),
                std::cmp::Ordering::Equal => {}
            }
        }
        if let Some(b) = &self.budget_day {
            b.settle(windows.day, ask.cost_micros, actual.cost_micros);
        }
        if let Some(b) = &self.budget_month {
            b.settle(windows.month, ask.cost_micros, actual.cost_micros);
        }
    }
}

/// Totals of one consumer × model, for the admin API.
#[derive(Debug, Default)]
pub struct Usage {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub cost_micros: AtomicU64,
}

/// One consumer's quota state.
#[derive(Debug)]
pub struct ConsumerQuota {
    pub cells: Cells,
    pub balance: Option<Balance>,
    /// Cluster mode: this node's lease of the shared balance.
    pub balance_lease: Lease,
    /// Per model index: that consumer × model's own cells, if any.
    pub per_model: Vec<Option<Cells>>,
    /// Per model index: usage totals.
    pub usage: Vec<Usage>,
}

/// What a request asks to reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// Weighted tokens for the token rate limits: prompt estimate + weight × max completion.
    pub tokens: u64,
    /// Unweighted tokens for the balance.
    pub balance_tokens: u64,
    /// Estimated cost in micro-units of the currency.
    pub cost_micros: u64,
}

/// What a request actually used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actual {
    pub tokens: u64,
    pub balance_tokens: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
}

/// The limit that refused and when it may admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    /// 0 when waiting does not help (a spent balance).
    pub retry_after_ns: u64,
}

/// An admitted request's hold on the cells; settled exactly once.
#[derive(Debug)]
#[must_use = "a reservation must be settled"]
pub struct Reservation {
    consumer: usize,
    model: usize,
    ask: Ask,
    windows: Windows,
    /// Taken from cluster leases rather than the local cells.
    leased: bool,
}

/// Cluster mode: a lease this node must get from Redis before admitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub consumer: usize,
    /// `Some` for a consumer × model limit.
    pub model: Option<usize>,
    pub limit: Limit,
    /// Units missing right now.
    pub units: u64,
}

/// What `Engine::admit` decided.
#[derive(Debug)]
pub enum Admit {
    Admitted(Reservation),
    Refused(Refusal),
    /// Cluster mode: get these leases, credit them, and ask again.
    Lease(Vec<Need>),
    /// Cluster mode, fail-closed, Redis unreachable.
    Unavailable,
}

impl Reservation {
    pub fn ask(&self) -> Ask {
        self.ask
    }
}

/// Calendar windows at admission time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub day: u64,
    pub month: u64,
    pub next_day_ns: u64,
    pub next_month_ns: u64,
}

impl Windows {
    pub fn at(wall: SystemTime) -> Windows {
        let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let day = secs / 86400;
        let (year, month) = civil_from_days(day as i64);
        let next_month_day = days_from_civil(
            if month == 12 { year + 1 } else { year },
            if month == 12 { 1 } else { month + 1 },
        );
        let now_ns = since.as_nanos() as u64;
        Windows {
            day,
            month: (year as u64) * 12 + (month as u64 - 1),
            next_day_ns: (day + 1) * 86400 * SEC - now_ns,
            next_month_ns: (next_month_day as u64 * 86400 * SEC).saturating_sub(now_ns),
        }
    }
}

/// (year, month 1..=12) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// Days since 1970-01-01 of the first day of `month` in `year`.
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Rate-limit headers for a response (OpenAI's `x-ratelimit-*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<(u64, u64, u64)>,
    pub tokens: Option<(u64, u64, u64)>,
}

/// The quota engine.
pub struct Engine {
    config: Arc<Config>,
    epoch: Instant,
    pub consumers: Vec<ConsumerQuota>,
    mode: std::sync::atomic::AtomicU8,
}

impl Engine {
    pub fn new(config: Arc<Config>) -> Self {
        let models = config.models.len();
        let consumers = config
            .consumers
            .iter()
            .map(|c| {
                let mut per_model: Vec<Option<Cells>> = (0..models).map(|_| None).collect();
                for (m, limits) in &c.model_limits {
                    if let Some(slot) = per_model.get_mut(*m) {
                        *slot = Some(Cells::new(limits));
                    }
                }
                ConsumerQuota {
                    cells: Cells::new(&c.limits),
                    balance: c.balance.map(Balance::new),
                    balance_lease: Lease::default(),
                    per_model,
                    usage: (0..models).map(|_| Usage::default()).collect(),
                }
            })
            .collect();
        let mode = if config.cluster.is_some() {
            Mode::Cluster
        } else {
            Mode::Standalone
        };
        Engine {
            config,
            epoch: Instant::now(),
            consumers,
            mode: std::sync::atomic::AtomicU8::new(mode as u8),
        }
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Cluster,
            2 => Mode::LocalOnly,
            3 => Mode::Closed,
            _ => Mode::Standalone,
        }
    }

    /// Cluster mode: Redis became unreachable (or reachable again).
    /// Returns whether the mode changed.
    pub fn set_redis_up(&self, up: bool) -> bool {
        let Some(cluster) = &self.config.cluster else {
            return false;
        };
        let mode = match (up, cluster.fail_open) {
            (true, _) => Mode::Cluster,
            (false, true) => Mode::LocalOnly,
            (false, false) => Mode::Closed,
        };
        self.mode.swap(mode as u8, Ordering::AcqRel) != mode as u8
    }

    /// The cells a `Need` names.
    pub fn cells(&self, consumer: usize, model: Option<usize>) -> Option<&Cells> {
        let q = self.consumers.get(consumer)?;
        match model {
            None => Some(&q.cells),
            Some(m) => q.per_model.get(m)?.as_ref(),
        }
    }

    /// Cluster mode: add `units` granted by Redis to the lease a `Need` names.
    pub fn credit(&self, need: &Need, units: u64, ttl_ns: u64) {
        let expires = self.now() + ttl_ns;
        if need.limit == Limit::Balance {
            if let Some(q) = self.consumers.get(need.consumer) {
                q.balance_lease.credit(units, expires);
            }
        } else if let Some(lease) = self
            .cells(need.consumer, need.model)
            .and_then(|c| c.lease(need.limit))
        {
            lease.credit(units, expires);
        }
    }

    /// Nanoseconds on the engine's monotonic clock (never 0).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + SEC
    }

    /// Convert between the monotonic clock and wall-clock nanoseconds.
    pub fn to_wall(&self, mono: u64) -> u64 {
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        (wall_now + mono).saturating_sub(self.now())
    }

    pub fn from_wall(&self, wall: u64) -> u64 {
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        (self.now() + wall).saturating_sub(wall_now)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether admission for this consumer × model needs a token estimate.
    pub fn needs_tokens(&self, consumer: usize, model: usize) -> bool {
        self.consumers.get(consumer).is_some_and(|q| {
            q.balance.is_some()
                || q.cells.uses_tokens()
                || q.per_model
                    .get(model)
                    .is_some_and(|c| c.as_ref().is_some_and(Cells::uses_tokens))
        })
    }

    /// Whether anything limits this consumer × model at all.
    pub fn is_limited(&self, consumer: usize, model: usize) -> bool {
        self.consumers.get(consumer).is_some_and(|q| {
            q.balance.is_some()
                || !q.cells.is_empty()
                || q.per_model.get(model).is_some_and(Option::is_some)
        })
    }

    /// A reservation that holds nothing: for a consumer × model without
    /// limits, so its settlement still counts the usage.
    pub fn track(&self, consumer: usize, model: usize) -> Reservation {
        Reservation {
            consumer,
            model,
            ask: Ask::default(),
            windows: Windows::at(SystemTime::now()),
            leased: false,
        }
    }

    /// Reserve `ask` against every limit of the consumer and consumer × model.
    pub fn admit(&self, consumer: usize, model: usize, ask: Ask) -> Admit {
        let windows = Windows::at(SystemTime::now());
        let mode = self.mode();
        let reservation = Reservation {
            consumer,
            model,
            ask,
            windows,
            leased: mode == Mode::Cluster,
        };
        let Some(q) = self.consumers.get(consumer) else {
            return Admit::Admitted(reservation);
        };
        let per_model = q.per_model.get(model).and_then(Option::as_ref);
        match mode {
            Mode::Closed => Admit::Unavailable,
            Mode::Cluster => self.admit_leased(q, consumer, model, per_model, reservation),
            Mode::Standalone | Mode::LocalOnly => {
                let now = self.now();
                if let Err(refusal) = q.cells.take(now, windows, &ask) {
                    return Admit::Refused(refusal);
                }
                if let Some(cells) = per_model {
                    if let Err(refusal) = cells.take(now, windows, &ask) {
                        q.cells.rollback(now, windows, &ask);
                        return Admit::Refused(refusal);
                    }
                }
                if let Some(balance) = &q.balance {
                    if !balance.reserve(ask.balance_tokens) {
                        if let Some(cells) = per_model {
                            cells.rollback(now, windows, &ask);
                        }
                        q.cells.rollback(now, windows, &ask);
                        return Admit::Refused(Refusal {
                            limit: Limit::Balance,
                            retry_after_ns: 0,
                        });
                    }
                }
                Admit::Admitted(reservation)
            }
        }
    }

    /// Cluster mode: spend from this node's leases; what they lack is a `Need`.
    fn admit_leased(
        &self,
        q: &ConsumerQuota,
        consumer: usize,
        model: usize,
        per_model: Option<&Cells>,
        reservation: Reservation,
    ) -> Admit {
        let ask = reservation.ask;
        let none = Actual::default();
        let mut needs = Vec::new();
        let mut held: Vec<&Cells> = Vec::new();
        for (cells, scope) in
            std::iter::once((&q.cells, None)).chain(per_model.map(|c| (c, Some(model))))
        {
            match cells.take_leased(&ask) {
                Take::Done => held.push(cells),
                Take::Refused(r) => {
                    for c in held {
                        c.settle_leased(&ask, &none, true);
                    }
                    return Admit::Refused(r);
                }
                Take::Short(short) => needs.extend(short.into_iter().map(|(limit, units)| Need {
                    consumer,
                    model: scope,
                    limit,
                    units,
                })),
            }
        }
        if needs.is_empty() && q.balance.is_some() && !q.balance_lease.take(ask.balance_tokens) {
            needs.push(Need {
                consumer,
                model: None,
                limit: Limit::Balance,
                units: q.balance_lease.shortfall(ask.balance_tokens),
            });
        }
        if needs.is_empty() {
            return Admit::Admitted(reservation);
        }
        for c in held {
            c.settle_leased(&ask, &none, true);
        }
        Admit::Lease(needs)
    }

    /// Settle a reservation to the actual use; consumes it, so it happens once.
    pub fn settle(&self, reservation: Reservation, actual: Actual) {
        let Reservation {
            consumer,
            model,
            ask,
            windows,
            leased,
        } = reservation;
        let Some(q) = self.consumers.get(consumer) else {
            return;
        };
        let now = self.now();
        let per_model = q.per_model.get(model).and_then(Option::as_ref);
        if leased {
            q.cells.settle_leased(&ask, &actual, false);
            if let Some(cells) = per_model {
                cells.settle_leased(&ask, &actual, false);
            }
            if q.balance.is_some() {
                q.balance_lease
                    .adjust(ask.balance_tokens as i64 - actual.balance_tokens as i64);
            }
        } else {
            q.cells.settle(now, windows, &ask, &actual);
            if let Some(cells) = per_model {
                cells.settle(now, windows, &ask, &actual);
            }
            if let Some(balance) = &q.balance {
                balance.settle(ask.balance_tokens, actual.balance_tokens);
            }
        }
        if let Some(u) = q.usage.get(model) {
            u.requests.fetch_add(1, Ordering::Relaxed);
            u.prompt_tokens
                .fetch_add(actual.prompt_tokens, Ordering::Relaxed);
            u.completion_tokens
                .fetch_add(actual.completion_tokens, Ordering::Relaxed);
            u.cached_tokens
                .fetch_add(actual.cached_tokens, Ordering::Relaxed);
            u.cost_micros
                .fetch_add(actual.cost_micros, Ordering::Relaxed);
        }
    }

    /// Remaining requests and tokens for the rate-limit headers: the
    /// tightest request window and the tightest token window.
    pub fn headroom(&self, consumer: usize, model: usize) -> Headroom {
        let mut out = Headroom::default();
        let Some(q) = self.consumers.get(consumer) else {
            return out;
        };
        let now = self.now();
        let sets = std::iter::once(&q.cells).chain(q.per_model.get(model).and_then(Option::as_ref));
        let tighter = |slot: &mut Option<(u64, u64, u64)>, rate: &Rate| {
            let remaining = rate.remaining(now);
            if slot.is_none_or(|(_, r, _)| remaining < r) {
                *slot = Some((rate.limit(), remaining, rate.reset_ns(now)));
            }
        };
        for cells in sets {
            for (_, rate) in cells.request_rates() {
                tighter(&mut out.requests, rate);
            }
            for (_, rate) in cells.token_rates() {
                tighter(&mut out.tokens, rate);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
