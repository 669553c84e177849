//! Chain stage 3: admission against the consumer's limits, and settlement.
//!
//! Before anything goes upstream, the request's cost is estimated — prompt
//! tokens counted with the model's tokenizer, plus `max_tokens` (or
//! `quota.default_max_tokens`) for the completion, priced from the model's
//! price table — and reserved in the quota engine against every limit of
//! the consumer and consumer × model. A refusal answers 429 with an
//! OpenAI-shaped body (`rate_limit_exceeded`, or `insufficient_quota` for a
//! spent balance or budget), `Retry-After` and `x-ratelimit-*` headers.
//! `on_done`, which runs exactly once per request, settles the reservation
//! to the usage the accounting stage found — refund or extra charge — on
//! every path: success, upstream error, timeout, client abort.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::Config;

use crate::cluster::{Cluster, LeaseError};
use crate::error::{Error, ErrorKind};
use crate::filter::{Endpoint, Filter, Request, RequestCtx};
use crate::kernel::Kernel;
use crate::quota::{Actual, Admit, Ask, Engine, Headroom, Limit, Refusal, Reservation};
use crate::tokens;

pub struct Admission {
    config: Arc<Config>,
    engine: Arc<Engine>,
    /// Cluster mode: this core's Redis side.
    pub cluster: Option<Cluster>,
    /// Kernel early rejection: lasting refusals become kernel verdicts.
    kernel: Option<Rc<Kernel>>,
}

/// Lease round trips one request may make before it is refused (others
/// on other nodes keep taking what this node leased).
const MAX_LEASE_TRIES: usize = 3;

impl Admission {
    pub fn new(config: Arc<Config>, engine: Arc<Engine>, kernel: Option<Rc<Kernel>>) -> Self {
        let cluster = Cluster::new(config.clone(), engine.clone());
        Admission {
            config,
            engine,
            cluster,
            kernel,
        }
    }

    /// Admit, leasing from Redis first when this node's share ran short.
    async fn admit(
        &self,
        consumer: usize,
        model: usize,
        ask: Ask,
    ) -> Result<Reservation, Result<Refusal, Error>> {
        for _ in 0..MAX_LEASE_TRIES {
            match self.engine.admit(consumer, model, ask) {
                Admit::Admitted(r) => return Ok(r),
                Admit::Refused(r) => return Err(Ok(r)),
                Admit::Unavailable => {
                    return Err(Err(Error::new(
                        ErrorKind::Unavailable,
                        "shared quota state (Redis) is unreachable and cluster.on_redis_down = \"closed\"",
                    )))
                }
                Admit::Lease(needs) => {
                    let Some(cluster) = &self.cluster else {
                        return Err(Err(Error::new(ErrorKind::Internal, "lease needed without cluster mode")));
                    };
                    match cluster.lease(&needs).await {
                        Ok(()) => {}
                        Err(LeaseError::Refused(r)) => return Err(Ok(r)),
                        Err(LeaseError::Down(why)) => {
                            if self.engine.set_redis_up(false) {
                                crate::log::error(&format!("cluster: {why}; limits are now {}", self.engine.mode().as_str()));
                            }
                        }
                    }
                }
            }
        }
        Err(Ok(Refusal {
            limit: Limit::RequestsPerSecond,
            retry_after_ns: 1_000_000_000,
        }))
    }
}

/// OpenAI's reset format: "1s", "6m0s", "1h2m3s", "250ms".
pub fn format_reset(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs_f64();
    let h = (secs / 3600.0).floor() as u64;
    let m = ((secs - h as f64 * 3600.0) / 60.0).floor() as u64;
    let s = secs - h as f64 * 3600.0 - m as f64 * 60.0;
    let s = if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.3}").trim_end_matches('0').to_string()
    };
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for a response.
pub fn headroom_headers(h: &Headroom, out: &mut Vec<(&'static str, String)>) {
    if let Some((limit, remaining, reset)) = h.requests {
        out.push(("x-ratelimit-limit-requests", limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", format_reset(reset)));
    }
    if let Some((limit, remaining, reset)) = h.tokens {
        out.push(("x-ratelimit-limit-tokens", limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", format_reset(reset)));
    }
}

impl Filter for Admission {
    async fn on_request(&self, ctx: &mut RequestCtx, _req: &mut Request) -> Result<(), Error> {
        let (Some(consumer), Some(m)) = (ctx.consumer, ctx.model) else {
            return Ok(());
        };
        if !self.engine.is_limited(consumer, m) {
            // Nothing to admit against; the usage is still counted.
            ctx.reservation = Some(self.engine.track(consumer, m));
            return Ok(());
        }
        let Some(model) = self.config.models.get(m) else {
            return Ok(());
        };
        let quota = &self.config.quota;
        let endpoint = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions);
        let prompt = if self.engine.needs_tokens(consumer, m) {
            tokens::prompt_tokens(model.encoding, endpoint.as_str(), &ctx.upstream_body)
        } else {
            0
        };
        let completion = match endpoint {
            Endpoint::Embeddings | Endpoint::Models => 0,
            _ => ctx.max_tokens.unwrap_or(quota.default_max_tokens),
        };
        let ask = Ask {
            tokens: prompt + weighted(completion, quota.completion_weight),
            balance_tokens: prompt + completion,
            cost_micros: model
                .price
                .as_ref()
                .map_or(0, |p| p.cost_micros(prompt, 0, completion)),
        };
        let admitted = self.admit(consumer, m, ask).await;
        headroom_headers(
            &self.engine.headroom(consumer, m),
            &mut ctx.response_headers,
        );
        match admitted {
            Ok(reservation) => {
                ctx.reservation = Some(reservation);
                Ok(())
            }
            Err(Err(e)) => Err(e),
            Err(Ok(refusal)) => {
                let name = &self.config.consumers[consumer].name;
                let (kind, message) = if refusal.limit.is_quota() {
                    (
                        ErrorKind::InsufficientQuota,
                        format!(
                            "consumer '{name}' has no {} left for model '{}'",
                            refusal.limit.as_str(),
                            model.name
                        ),
                    )
                } else {
                    (
                        ErrorKind::RateLimited,
                        format!(
                            "rate limit reached for consumer '{name}' on model '{}': {} (requested {} tokens); retry in {}",
                            model.name,
                            refusal.limit.as_str(),
                            ask.tokens,
                            format_reset(refusal.retry_after_ns)
                        ),
                    )
                };
                if refusal.retry_after_ns > 0 {
                    let secs = refusal.retry_after_ns.div_ceil(1_000_000_000);
                    ctx.response_headers.push(("retry-after", secs.to_string()));
                    ctx.response_headers.push((
                        "retry-after-ms",
                        refusal.retry_after_ns.div_ceil(1_000_000).to_string(),
                    ));
                }
                ctx.refused_by = Some(refusal.limit.as_str());
                if let Some(kernel) = &self.kernel {
                    kernel.refused(
                        crate::kernel::tenant_id(name),
                        refusal.limit.is_quota(),
                        Duration::from_nanos(refusal.retry_after_ns),
                    );
                }
                Err(Error::new(kind, message))
            }
        }
    }

    fn on_done(&self, ctx: &mut RequestCtx) {
        let Some(reservation) = ctx.reservation.take() else {
            return;
        };
        let u = ctx.usage;
        let weight = self.config.quota.completion_weight;
        self.engine.settle(
            reservation,
            Actual {
                tokens: u.prompt + weighted(u.completion, weight),
                balance_tokens: u.prompt + u.completion,
                prompt_tokens: u.prompt,
                completion_tokens: u.completion,
                cached_tokens: u.cached,
                cost_micros: ctx.cost_micros,
            },
        );
    }
}

fn weighted(tokens: u64, weight: f64) -> u64 {
    if weight == 1.0 {
        tokens
    } else {
        (tokens as f64 * weight).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(250_000_000), "250ms");
        assert_eq!(format_reset(1_000_000_000), "1s");
        assert_eq!(format_reset(360_000_000_000), "6m0s");
        assert_eq!(format_reset(3_723_000_000_000), "1h2m3s");
        assert_eq!(format_reset(1_500_000_000), "1.5s");
    }
}
