//! Cluster mode: limits shared between nodes through Redis, by leases.
//!
//! The hot path stays local. When this node's lease of a limit runs short,
//! the admission stage asks Redis (this core's own connection, one
//! pipelined round trip for every limit the request needs) for a chunk of
//! it: `quota.cluster.lease_fraction` of the limit, or what the request
//! lacks if more. Each grant is one Lua script run atomically in Redis:
//! rate limits keep a GCRA bucket (theoretical arrival time) per limit,
//! balances and budgets a counter. The node then spends the lease locally,
//! lock-free, and hands back what is left when the lease lapses
//! (`lease_ttl_ms`), so idle nodes do not sit on a share.
//!
//! Bound: within any window a limit admits at most its size plus what the
//! other nodes leased before the window began and spent inside it — at
//! most one lease per node (`lease_fraction` × limit) — plus usage beyond a
//! request's reservation. A balance is overspent by at most one request.
//!
//! When Redis cannot be reached the engine switches to local-only limits
//! (`on_redis_down = "open"`) or refuses with 503 (`"closed"`); core 0
//! pings Redis every second and switches back when it answers.

pub mod conn;
pub mod resp;

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use sluice_config::Config;

use crate::quota::{Engine, Lease, Limit, Need, Refusal, Windows, LEASED};
use conn::RedisConn;

/// GCRA grant of `want` units (at least `need`) from a shared bucket.
/// KEYS[1] = TAT in µs (Redis clock). ARGV = limit, period_us, want, need.
/// Returns {granted, wait_ms}: granted 0 means refused for wait_ms.
const RATE_LEASE: &str = r"
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local per = period / limit
local free = math.floor((period - (tat - now)) / per)
if free < need then
  if not (tat == now and need > limit) then
    local wait = tat + need * per - now - period
    if wait < 0 then wait = 0 end
    return {0, math.ceil(wait / 1000)}
  end
  free = need
end
local grant = math.min(want, free)
if grant < need then grant = need end
tat = tat + grant * per
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {grant, 0}
";

/// Hand `units` back to a GCRA bucket. ARGV = limit, period_us, units.
const RATE_RETURN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
tat = tat - tonumber(ARGV[3]) * tonumber(ARGV[2]) / tonumber(ARGV[1])
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// Lease from a shared balance: admitted while positive; grants at least
/// `need`, at most `want` and not more than is left.
/// ARGV = starting balance (when the key is new), want, need.
const BALANCE_LEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
local b = tonumber(redis.call('GET', KEYS[1]))
if b <= 0 then return {0, 0} end
local grant = math.max(tonumber(ARGV[3]), math.min(tonumber(ARGV[2]), b))
redis.call('DECRBY', KEYS[1], grant)
return {grant, 0}
";

/// Lease from a budget window's spend counter. ARGV = limit, want, need, ttl_s.
const BUDGET_LEASE: &str = r"
local spend = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
local need = tonumber(ARGV[3])
if spend >= limit or (spend > 0 and spend + need > limit) then return {0, -1} end
local grant = math.max(need, math.min(tonumber(ARGV[2]), limit - spend))
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {grant, 0}
";

/// Why a lease was not granted.
#[derive(Debug)]
pub enum LeaseError {
    /// The cluster-wide limit is spent.
    Refused(Refusal),
    /// Redis did not answer.
    Down(String),
}

/// A Lua script: its SHA for EVALSHA, its source for SCRIPT LOAD.
struct Lua {
    script: Script,
    source: &'static str,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Lua {
            script: Script::new(source),
            source,
        }
    }

    /// EVALSHA with one key (the script is loaded on NOSCRIPT and sent again).
    fn call(&self, key: &str, args: &[i64]) -> Vec<u8> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(1).arg(key);
        for a in args {
            cmd.arg(*a);
        }
        cmd.get_packed_command()
    }

    fn load(&self) -> Vec<u8> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.source)
            .get_packed_command()
    }
}

/// One core's side of cluster mode.
pub struct Cluster {
    config: Arc<Config>,
    engine: Arc<Engine>,
    conn: RedisConn,
    rate_lease: Lua,
    rate_return: Lua,
    balance_lease: Lua,
    budget_lease: Lua,
}

fn period_us(limit: Limit) -> u64 {
    match limit {
        Limit::RequestsPerSecond => 1_000_000,
        Limit::RequestsPerMinute | Limit::TokensPerMinute => 60_000_000,
        Limit::TokensPerHour => 3_600_000_000,
        _ => 86_400_000_000,
    }
}

impl Cluster {
    pub fn new(config: Arc<Config>, engine: Arc<Engine>) -> Option<Self> {
        let cluster = config.cluster.as_ref()?;
        let conn = RedisConn::new(cluster.redis.clone(), cluster.connect_timeout);
        Some(Cluster {
            conn,
            rate_lease: Lua::new(RATE_LEASE),
            rate_return: Lua::new(RATE_RETURN),
            balance_lease: Lua::new(BALANCE_LEASE),
            budget_lease: Lua::new(BUDGET_LEASE),
            config,
            engine,
        })
    }

    fn settings(&self) -> (f64, Duration) {
        self.config
            .cluster
            .as_ref()
            .map_or((0.05, Duration::from_secs(2)), |c| {
                (c.lease_fraction, c.lease_ttl)
            })
    }

    /// The Redis key of a limit (names, not indices: config order may differ between nodes).
    fn key(&self, need: &Need, windows: &Windows) -> String {
        let consumer = &self.config.consumers[need.consumer].name;
        let model = need
            .model
            .map_or("-", |m| self.config.models[m].name.as_str());
        match need.limit {
            Limit::BudgetPerDay => {
                format!("sluice:{consumer}:{model}:budget_per_day:{}", windows.day)
            }
            Limit::BudgetPerMonth => format!(
                "sluice:{consumer}:{model}:budget_per_month:{}",
                windows.month
            ),
            l => format!("sluice:{consumer}:{model}:{}", l.as_str()),
        }
    }

    /// The lease command for one need.
    fn lease_command(&self, need: &Need, windows: &Windows) -> Vec<u8> {
        let (fraction, _) = self.settings();
        let key = self.key(need, windows);
        let want = |size: u64| need.units.max((size as f64 * fraction).ceil() as u64);
        let size = self
            .engine
            .cells(need.consumer, need.model)
            .and_then(|c| c.size(need.limit));
        match need.limit {
            Limit::Balance => {
                let start = self.config.consumers[need.consumer]
                    .balance
                    .unwrap_or(0)
                    .max(0) as u64;
                self.balance_lease
                    .call(&key, &signed(&[start, want(start), need.units]))
            }
            Limit::BudgetPerDay | Limit::BudgetPerMonth => {
                let size = size.unwrap_or(0);
                let ttl_s = if need.limit == Limit::BudgetPerDay {
                    2 * 86_400
                } else {
                    40 * 86_400
                };
                self.budget_lease
                    .call(&key, &signed(&[size, want(size), need.units, ttl_s]))
            }
            l => {
                let size = size.unwrap_or(1);
                self.rate_lease
                    .call(&key, &signed(&[size, period_us(l), want(size), need.units]))
            }
        }
    }

    /// Send `commands`; on NOSCRIPT (a fresh or flushed Redis) load the
    /// scripts and send them once more.
    async fn run(&self, commands: &[Vec<u8>]) -> Result<Vec<redis::Value>, String> {
        let replies = self.conn.pipeline(commands).await?;
        if !replies.iter().any(is_noscript) {
            return Ok(replies);
        }
        let scripts = [
            &self.rate_lease,
            &self.rate_return,
            &self.balance_lease,
            &self.budget_lease,
        ];
        let mut again: Vec<Vec<u8>> = scripts.iter().map(|s| s.load()).collect();
        again.extend(commands.iter().cloned());
        Ok(self
            .conn
            .pipeline(&again)
            .await?
            .into_iter()
            .skip(scripts.len())
            .collect())
    }

    /// Get every lease `needs` names in one round trip and credit them.
    pub async fn lease(&self, needs: &[Need]) -> Result<(), LeaseError> {
        let windows = Windows::at(std::time::SystemTime::now());
        let commands: Vec<Vec<u8>> = needs
            .iter()
            .map(|n| self.lease_command(n, &windows))
            .collect();
        let replies = self.run(&commands).await.map_err(LeaseError::Down)?;
        let (_, ttl) = self.settings();
        let mut refusal: Option<Refusal> = None;
        let mut granted = Vec::new();
        for (need, reply) in needs.iter().zip(&replies) {
            let (units, wait_ms) = grant_of(reply).map_err(LeaseError::Down)?;
            if units == 0 {
                let retry_after_ns = match (need.limit, wait_ms) {
                    (Limit::Balance, _) => 0,
                    (Limit::BudgetPerDay, _) => windows.next_day_ns,
                    (Limit::BudgetPerMonth, _) => windows.next_month_ns,
                    (_, w) => (w.max(1) as u64) * 1_000_000,
                };
                refusal.get_or_insert(Refusal {
                    limit: need.limit,
                    retry_after_ns,
                });
            } else {
                granted.push((need, units));
            }
        }
        for (need, units) in &granted {
            self.engine.credit(need, *units, ttl.as_nanos() as u64);
        }
        match refusal {
            Some(r) => Err(LeaseError::Refused(r)),
            None => Ok(()),
        }
    }

    /// Hand lapsed leases back to Redis (`all`: every lease, at shutdown).
    pub async fn give_back(&self, all: bool) -> Result<(), String> {
        let now = self.engine.now();
        let windows = Windows::at(std::time::SystemTime::now());
        let mut commands = Vec::new();
        // What was taken from the leases, to put back if Redis fails.
        let mut reclaimed: Vec<(&Lease, i64)> = Vec::new();
        let take = |lease: &Lease| {
            if all {
                lease.reclaim_all()
            } else {
                lease.reclaim(now)
            }
        };
        for (c, q) in self.engine.consumers.iter().enumerate() {
            let scopes = std::iter::once((None, &q.cells)).chain(
                q.per_model
                    .iter()
                    .enumerate()
                    .filter_map(|(m, cells)| cells.as_ref().map(|cells| (Some(m), cells))),
            );
            for (model, cells) in scopes {
                for (i, limit) in LEASED.iter().enumerate() {
                    let lease = &cells.leases[i];
                    // Positive: unspent, handed back. Negative: used beyond
                    // the reservations, charged now.
                    let units = take(lease);
                    if units == 0 {
                        continue;
                    }
                    let need = Need {
                        consumer: c,
                        model,
                        limit: *limit,
                        units: 0,
                    };
                    let key = self.key(&need, &windows);
                    let cmd = match limit {
                        Limit::BudgetPerDay | Limit::BudgetPerMonth => redis::cmd("DECRBY")
                            .arg(&key)
                            .arg(units)
                            .get_packed_command(),
                        l => {
                            let size = cells.size(*l).unwrap_or(1).min(i64::MAX as u64) as i64;
                            self.rate_return
                                .call(&key, &[size, period_us(*l) as i64, units])
                        }
                    };
                    commands.push(cmd);
                    reclaimed.push((lease, units));
                }
            }
            let units = take(&q.balance_lease);
            if units != 0 {
                let need = Need {
                    consumer: c,
                    model: None,
                    limit: Limit::Balance,
                    units: 0,
                };
                commands.push(
                    redis::cmd("INCRBY")
                        .arg(self.key(&need, &windows))
                        .arg(units)
                        .get_packed_command(),
                );
                reclaimed.push((&q.balance_lease, units));
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.run(&commands).await {
            // Keep the units: they are settled on the next round.
            for (lease, units) in reclaimed {
                lease.adjust(units);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether Redis answers a PING.
    pub async fn ping(&self) -> bool {
        matches!(
            self.conn
                .pipeline(&[redis::cmd("PING").get_packed_command()])
                .await
                .as_deref(),
            Ok([redis::Value::SimpleString(_)] | [redis::Value::Okay])
        )
    }

    /// Run a plain command (the admin API's balance changes).
    pub async fn command(&self, cmd: Vec<u8>) -> Result<redis::Value, String> {
        let mut replies = self.conn.pipeline(&[cmd]).await?;
        replies.pop().ok_or_else(|| "no reply".to_string())
    }

    /// The Redis key of a consumer's shared balance.
    pub fn balance_key(&self, consumer: usize) -> String {
        let need = Need {
            consumer,
            model: None,
            limit: Limit::Balance,
            units: 0,
        };
        self.key(&need, &Windows::at(std::time::SystemTime::now()))
    }
}

fn signed(args: &[u64]) -> Vec<i64> {
    args.iter()
        .map(|a| (*a).min(i64::MAX as u64) as i64)
        .collect()
}

fn is_noscript(v: &redis::Value) -> bool {
    matches!(v, redis::Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// `{granted, wait_ms}` from a lease script.
fn grant_of(v: &redis::Value) -> Result<(u64, i64), String> {
    match v {
        redis::Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (redis::Value::Int(g), redis::Value::Int(w)) => Ok(((*g).max(0) as u64, *w)),
            _ => Err(format!("unexpected lease reply {v:?}")),
        },
        redis::Value::ServerError(e) => Err(format!("lease script failed: {e:?}")),
        _ => Err(format!("unexpected lease reply {v:?}")),
    }
}
