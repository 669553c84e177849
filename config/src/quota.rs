//! The token economy's typed values: quota settings, limit sets and prices.
//!
//! `validate` builds these from `[quota]`, `[quota.defaults]`, a consumer's
//! `limits` / `unlimited` / `model_limits` and a model's `price`. The quota
//! engine in `edge` reads them: admission checks a request against the
//! consumer's [`LimitSet`] (and the consumer x model one), reserving
//! estimated prompt tokens plus `max_tokens` (or
//! [`Quota::default_max_tokens`]); settlement charges the actual usage and
//! its cost from [`Price::cost_micros`]. Money is counted in integer
//! micro-units of [`Quota::currency`] (1 USD = 1 000 000), so sums of many
//! small requests never drift the way floating-point totals do.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

/// The `[quota]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    /// Embedded store for balances, spend and windows; default
    /// `sluice-quota.redb`. `None` (`state_path = ""`) keeps them in memory
    /// only, so a restart forgets them.
    pub state_path: Option<PathBuf>,
    /// How often quota state is written to the store; default 1 s,
    /// 10 ms..=60 s.
    pub flush_interval: Duration,
    /// Completion tokens reserved when a request sets no `max_tokens`;
    /// default 4096, > 0.
    pub default_max_tokens: u64,
    /// Weight of a completion token in token rate limits, which count
    /// `prompt + completion_weight * completion`; default 1.0, in (0, 100].
    pub completion_weight: f64,
    /// ISO 4217 code of every price and budget, e.g. `"USD"`.
    pub currency: String,
    /// `[quota.defaults]` as written. Already merged into every
    /// [`crate::Consumer::limits`]; kept for the admin API to show.
    pub defaults: LimitSet,
}

/// A set of limits; every `None` means "no such limit".
///
/// Token limits count weighted tokens (see [`Quota::completion_weight`]).
/// Budgets are in micro-units of [`Quota::currency`], rounded to the
/// nearest micro-unit from the configured amount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSet {
    /// Requests started per second.
    pub requests_per_second: Option<NonZeroU64>,
    /// Requests started per minute.
    pub requests_per_minute: Option<NonZeroU64>,
    /// Requests in flight at once.
    pub concurrent_requests: Option<NonZeroU64>,
    /// Weighted tokens per minute.
    pub tokens_per_minute: Option<NonZeroU64>,
    /// Weighted tokens per hour.
    pub tokens_per_hour: Option<NonZeroU64>,
    /// Weighted tokens per day.
    pub tokens_per_day: Option<NonZeroU64>,
    /// Spend per day in micro-units of the currency (`budget_per_day` x 1e6).
    pub budget_per_day_micros: Option<NonZeroU64>,
    /// Spend per month in micro-units of the currency.
    pub budget_per_month_micros: Option<NonZeroU64>,
}

impl LimitSet {
    /// The config spelling of every limit, in field order. These are the
    /// keys of `[quota.defaults]`, `limits` and `model_limits` entries, and
    /// the names `unlimited` accepts. Budgets are spelled without `_micros`:
    /// the file holds currency units.
    pub const NAMES: [&'static str; 8] = [
        "requests_per_second",
        "requests_per_minute",
        "concurrent_requests",
        "tokens_per_minute",
        "tokens_per_hour",
        "tokens_per_day",
        "budget_per_day",
        "budget_per_month",
    ];

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.to_array().iter().all(Option::is_none)
    }

    /// The limit with config name `name` (one of [`LimitSet::NAMES`]);
    /// `None` when it is not set or the name is unknown.
    pub fn get(&self, name: &str) -> Option<NonZeroU64> {
        let i = Self::NAMES.iter().position(|n| *n == name)?;
        self.to_array()[i]
    }

    /// The limits that are set, with their config names, in field order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, NonZeroU64)> {
        Self::NAMES
            .into_iter()
            .zip(self.to_array())
            .filter_map(|(name, value)| Some((name, value?)))
    }

    /// The fields in [`LimitSet::NAMES`] order.
    pub(crate) fn to_array(&self) -> [Option<NonZeroU64>; 8] {
        [
            self.requests_per_second,
            self.requests_per_minute,
            self.concurrent_requests,
            self.tokens_per_minute,
            self.tokens_per_hour,
            self.tokens_per_day,
            self.budget_per_day_micros,
            self.budget_per_month_micros,
        ]
    }

    /// The inverse of [`LimitSet::to_array`].
    pub(crate) fn from_array(values: [Option<NonZeroU64>; 8]) -> Self {
        let [requests_per_second, requests_per_minute, concurrent_requests, tokens_per_minute, tokens_per_hour, tokens_per_day, budget_per_day_micros, budget_per_month_micros] =
            values;
        Self {
            requests_per_second,
            requests_per_minute,
            concurrent_requests,
            tokens_per_minute,
            tokens_per_hour,
            tokens_per_day,
            budget_per_day_micros,
            budget_per_month_micros,
        }
    }
}

/// A model's price in [`Quota::currency`] per million tokens. Validated
/// values are finite and >= 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// A million uncached prompt tokens.
    pub input_per_million: f64,
    /// A million completion tokens.
    pub output_per_million: f64,
    /// A million cached prompt tokens; equals `input_per_million` unless set.
    pub cached_input_per_million: f64,
}

// `validate` admits only finite prices, so `==` is reflexive; `Model` keeps
// its `Eq` this way.
impl Eq for Price {}

impl Price {
    /// Cost of one request in micro-units of the currency, rounded up.
    ///
    /// `cached_tokens` is the part of `prompt_tokens` served from the
    /// provider's prompt cache (OpenAI's `prompt_tokens_details.
    /// cached_tokens`); it is clamped to `prompt_tokens`. The cost is
    /// `(prompt - cached) * input + cached * cached_input + completion *
    /// output`, each price per million tokens, which in micro-units is
    /// simply tokens x price. Prices count to 1e-6 of a currency unit per
    /// million tokens and the sum is exact integer arithmetic, rounded up
    /// once at the end; it saturates at `u64::MAX`.
    pub fn cost_micros(
        &self,
        prompt_tokens: u64,
        cached_tokens: u64,
        completion_tokens: u64,
    ) -> u64 {
        let cached = cached_tokens.min(prompt_tokens);
        let uncached = prompt_tokens - cached;
        let pico = u128::from(uncached)
            .saturating_mul(pico_per_token(self.input_per_million))
            .saturating_add(
                u128::from(cached).saturating_mul(pico_per_token(self.cached_input_per_million)),
            )
            .saturating_add(
                u128::from(completion_tokens)
                    .saturating_mul(pico_per_token(self.output_per_million)),
            );
        u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// A price per million tokens as pico-units (1e-12) of the currency per
/// token, i.e. the price x 1e6, rounded. NaN and negative prices (never
/// produced by `validate`) count as 0; the cast saturates.
fn pico_per_token(per_million: f64) -> u128 {
    (per_million * 1e6).round() as u128
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::{LimitSet, Price};

    #[test]
    fn cost_is_exact_and_rounds_up() {
        let price = Price {
            input_per_million: 0.15,
            output_per_million: 0.60,
            cached_input_per_million: 0.075,
        };
        // 600 x 0.15 + 400 x 0.075 + 500 x 0.60 = 90 + 30 + 300 micro-USD.
        assert_eq!(price.cost_micros(1000, 400, 500), 420);
        assert_eq!(price.cost_micros(0, 0, 0), 0);
        // One token at 0.15 per million is 0.15 micro-units: rounds up to 1.
        assert_eq!(price.cost_micros(1, 0, 0), 1);
        // Cached tokens beyond the prompt are clamped: all 10 are cached.
        assert_eq!(price.cost_micros(10, 99, 0), 1);
        assert_eq!(price.cost_micros(1_000_000, 0, 0), 150_000);
        // In f64, 1 x 0.1 + 1 x 0.1 + 14 x 0.2 = 3.0000000000000004, which
        // would round up to 4; integer pico-units give exactly 3.
        let tenth = Price {
            input_per_million: 0.1,
            output_per_million: 0.2,
            cached_input_per_million: 0.1,
        };
        assert_eq!(tenth.cost_micros(2, 1, 14), 3);
        // A million tokens at 75 per million: 75 units = 75_000_000 micros.
        let big = Price {
            input_per_million: 15.0,
            output_per_million: 75.0,
            cached_input_per_million: 1.5,
        };
        assert_eq!(big.cost_micros(0, 0, 1_000_000), 75_000_000);
        assert_eq!(big.cost_micros(u64::MAX, 0, u64::MAX), u64::MAX);
    }

    #[test]
    fn limit_set_names_follow_the_fields() {
        let mut values = [None; 8];
        for (i, value) in values.iter_mut().enumerate() {
            *value = NonZeroU64::new(i as u64 + 1);
        }
        let set = LimitSet::from_array(values);
        assert_eq!(set.to_array(), values);
        assert_eq!(set.requests_per_second, NonZeroU64::new(1));
        assert_eq!(set.budget_per_month_micros, NonZeroU64::new(8));
        assert_eq!(set.get("tokens_per_minute"), NonZeroU64::new(4));
        assert_eq!(set.get("budget_per_day"), NonZeroU64::new(7));
        assert_eq!(set.get("budget_per_day_micros"), None);
        let names: Vec<&str> = set.iter().map(|(n, _)| n).collect();
        assert_eq!(names, LimitSet::NAMES);
        assert!(!set.is_empty());
        assert!(LimitSet::default().is_empty());
        assert_eq!(LimitSet::default().iter().count(), 0);
    }
}
