//! When one endpoint of a provider is taken out of rotation and brought back.
//!
//! `validate` builds a [`Health`] from a provider's `health` table (the
//! defaults when it has none); every endpoint of `base_url`/`base_urls` gets
//! its own circuit with these settings. The upstream stage in `edge` counts
//! consecutive failures per endpoint (connect error, timeout, 5xx); at
//! [`Health::failures_to_eject`] it opens the endpoint's circuit for
//! [`Health::ejection`], which doubles on each re-open up to
//! [`Health::max_ejection`], and sends requests to the other endpoints
//! meanwhile. With an [`ActiveCheck`] a worker also probes every endpoint on
//! a timer and closes the circuit on the first 2xx. Nothing here keeps
//! state; the counters and circuits live in `edge`.

use std::time::Duration;

/// Circuit-breaker settings shared by every endpoint of one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Consecutive failures (connect error, timeout, 5xx) that open an
    /// endpoint's circuit; default 5, 1..=1000.
    pub failures_to_eject: u32,
    /// How long a circuit stays open the first time; default 1 s.
    pub base_ejection: Duration,
    /// Longest a circuit stays open however often it re-opens; default 60 s,
    /// >= `base_ejection`.
    pub max_ejection: Duration,
    /// Probe the endpoints on a timer; `None` = only real requests (and the
    /// end of an ejection) bring an endpoint back.
    pub check: Option<ActiveCheck>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            failures_to_eject: 5,
            base_ejection: Duration::from_millis(1_000),
            max_ejection: Duration::from_millis(60_000),
            check: None,
        }
    }
}

impl Health {
    /// How long a circuit stays open after its `reopens`-th consecutive
    /// re-open (0 for the first time it opens): `base_ejection` doubled
    /// `reopens` times, capped at `max_ejection`.
    pub fn ejection(&self, reopens: u32) -> Duration {
        let factor = 1u32.checked_shl(reopens).unwrap_or(u32::MAX);
        self.base_ejection
            .checked_mul(factor)
            .map_or(self.max_ejection, |d| d.min(self.max_ejection))
    }
}

/// An active health check: `GET` on the endpoint's base path followed by
/// [`ActiveCheck::path`]; any 2xx means healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// Appended to the endpoint's path prefix, e.g. `/models` for
    /// `http://10.0.0.1:8000/v1` probes `/v1/models`; starts with `/`.
    pub path: String,
    /// Time between two probes of one endpoint; 100 ms..=1 h.
    pub interval: Duration,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Health;

    #[test]
    fn ejection_doubles_up_to_the_max() {
        let health = Health::default();
        let ms = |reopens| health.ejection(reopens).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(5), ms(6), ms(7)],
            [1_000, 2_000, 4_000, 32_000, 60_000, 60_000]
        );
        // Shifts and products past the integer range stay at the max.
        assert_eq!(health.ejection(31), Duration::from_secs(60));
        assert_eq!(health.ejection(32), Duration::from_secs(60));
        assert_eq!(health.ejection(u32::MAX), Duration::from_secs(60));
        let big = Health {
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
            ..Health::default()
        };
        assert_eq!(big.ejection(3), Duration::MAX);
    }
}
