//! The admin API's quota endpoints, behind the admin bearer token.
//!
//! Read and change a consumer's quota state without a restart:
//! - `GET  /admin/consumers` — every consumer with its balance and usage;
//! - `GET  /admin/consumers/{name}` — limits, current windows (remaining,
//!   reset), balance, budget spend, requests in flight, usage per model;
//! - `POST /admin/consumers/{name}/balance` — `{"set": N}` or `{"add": ±N}`;
//! - `POST /admin/consumers/{name}/reset` — `{"limit": "tokens_per_minute"
//!   | … | "all", "model": optional}` empties that window.
//!
//! JSON in and out; a bad body is a 400 naming the field. Every change is
//! saved to the quota store at once and leaves an audit record of its own.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cluster::Cluster;
use crate::error::{error_body, ErrorKind};
use crate::http::RequestHead;
use crate::quota::{Cells, Engine, Limit, Windows, ALL_LIMITS};
use crate::server::Shared;

/// An admin answer: status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// What changed, for the audit log; `None` for reads.
    pub change: Option<Value>,
}

fn ok(v: Value) -> Answer {
    Answer {
        status: 200,
        body: v.to_string().into_bytes(),
        change: None,
    }
}

fn fail(kind: ErrorKind, message: &str) -> Answer {
    Answer {
        status: kind.reply().status,
        body: error_body(kind, message),
        change: None,
    }
}

/// Whether the request carries the admin token.
pub fn authorized(shared: &Shared, head: &RequestHead) -> bool {
    let Some(expected) = &shared.config.admin.token_sha256 else {
        return false;
    };
    let Some(key) = crate::auth::presented_key(head) else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(key).into();
    // Compare hashes in constant time (both are 32 bytes).
    got.iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Route an `/admin/...` request. In cluster mode balances live in Redis
/// and `cluster` changes them there.
pub async fn handle(
    shared: &Shared,
    cluster: Option<&Cluster>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Answer {
    let engine = &shared.engine;
    let parts: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["consumers"]) => ok(json!({
            "currency": shared.config.quota.currency,
            "consumers": (0..engine.consumers.len()).map(|c| summary(engine, c)).collect::<Vec<_>>(),
        })),
        ("GET", ["consumers", name]) => match find(engine, name) {
            Some(c) => ok(detail(engine, c)),
            None => unknown(name),
        },
        ("POST", ["consumers", name, "balance"]) => match find(engine, name) {
            Some(c) => match cluster {
                Some(cluster) => set_shared_balance(shared, cluster, c, body).await,
                None => set_balance(shared, c, body),
            },
            None => unknown(name),
        },
        ("POST", ["consumers", name, "reset"]) => match find(engine, name) {
            Some(c) => reset(shared, c, body),
            None => unknown(name),
        },
        (_, ["consumers"] | ["consumers", _] | ["consumers", _, "balance" | "reset"]) => fail(
            ErrorKind::MethodNotAllowed,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => fail(ErrorKind::NotFound, &format!("unknown admin path {path}")),
    }
}

fn find(engine: &Engine, name: &str) -> Option<usize> {
    engine
        .config()
        .consumers
        .iter()
        .position(|c| c.name == name)
}

fn unknown(name: &str) -> Answer {
    fail(ErrorKind::NotFound, &format!("no consumer named '{name}'"))
}

fn summary(engine: &Engine, c: usize) -> Value {
    let config = engine.config();
    let q = &engine.consumers[c];
    let (mut requests, mut tokens, mut cost) = (0u64, 0u64, 0u64);
    for u in &q.usage {
        requests += u.requests.load(Ordering::Relaxed);
        tokens +=
            u.prompt_tokens.load(Ordering::Relaxed) + u.completion_tokens.load(Ordering::Relaxed);
        cost += u.cost_micros.load(Ordering::Relaxed);
    }
    json!({
        "name": config.consumers[c].name,
        "balance": q.balance.as_ref().map(|b| b.get()),
        "requests": requests,
        "tokens": tokens,
        "cost": cost as f64 / 1e6,
    })
}

fn cells_json(engine: &Engine, cells: &Cells) -> Value {
    let now = engine.now();
    let windows = Windows::at(SystemTime::now());
    let mut out = serde_json::Map::new();
    for limit in ALL_LIMITS {
        if let Some(rate) = cells.rate(limit) {
            out.insert(
                limit.as_str().into(),
                json!({
                    "limit": rate.limit(),
                    "remaining": rate.remaining(now),
                    "reset_ms": rate.reset_ns(now) / 1_000_000,
                }),
            );
        }
    }
    if let Some(c) = &cells.concurrent {
        out.insert(
            "concurrent_requests".into(),
            json!({"limit": c.limit(), "in_flight": c.current()}),
        );
    }
    for (name, budget, window) in [
        ("budget_per_day", &cells.budget_day, windows.day),
        ("budget_per_month", &cells.budget_month, windows.month),
    ] {
        if let Some(b) = budget {
            out.insert(
                name.into(),
                json!({"limit": b.limit_micros() as f64 / 1e6, "spent": b.spent(window) as f64 / 1e6}),
            );
        }
    }
    Value::Object(out)
}

fn detail(engine: &Engine, c: usize) -> Value {
    let config = engine.config();
    let q = &engine.consumers[c];
    let mut usage = serde_json::Map::new();
    for (m, u) in q.usage.iter().enumerate() {
        let requests = u.requests.load(Ordering::Relaxed);
        if requests == 0 {
            continue;
        }
        usage.insert(
            config.models[m].name.clone(),
            json!({
                "requests": requests,
                "prompt_tokens": u.prompt_tokens.load(Ordering::Relaxed),
                "completion_tokens": u.completion_tokens.load(Ordering::Relaxed),
                "cached_tokens": u.cached_tokens.load(Ordering::Relaxed),
                "cost": u.cost_micros.load(Ordering::Relaxed) as f64 / 1e6,
            }),
        );
    }
    let mut per_model = serde_json::Map::new();
    for (m, cells) in q.per_model.iter().enumerate() {
        if let Some(cells) = cells {
            per_model.insert(config.models[m].name.clone(), cells_json(engine, cells));
        }
    }
    json!({
        "name": config.consumers[c].name,
        "currency": config.quota.currency,
        "balance": q.balance.as_ref().map(|b| b.get()),
        "limits": cells_json(engine, &q.cells),
        "model_limits": per_model,
        "usage": usage,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceBody {
    set: Option<i64>,
    add: Option<i64>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Answer> {
    serde_json::from_slice(body)
        .map_err(|e| fail(ErrorKind::InvalidJson, &format!("bad request body: {e}")))
}

fn set_balance(shared: &Shared, c: usize, body: &[u8]) -> Answer {
    let engine = &shared.engine;
    let name = &engine.config().consumers[c].name;
    let req: BalanceBody = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let Some(balance) = &engine.consumers[c].balance else {
        return fail(
            ErrorKind::BadRequest,
            &format!("consumer '{name}' has no balance; give it `balance = N` in the config first"),
        );
    };
    let before = balance.get();
    let after = match (req.set, req.add) {
        (Some(v), None) => {
            balance.set(v);
            v
        }
        (None, Some(delta)) => balance.add(delta),
        _ => {
            return fail(
                ErrorKind::BadRequest,
                "send exactly one of {\"set\": N} or {\"add\": N}",
            )
        }
    };
    lift_verdict(shared, c);
    let mut answer = ok(json!({"name": name, "balance": after, "previous": before}));
    answer.change =
        Some(json!({"action": "balance", "consumer": name, "before": before, "after": after}));
    answer
}

/// Cluster mode: the balance is the one in Redis (this node's unspent
/// lease goes back to it when the lease lapses).
async fn set_shared_balance(shared: &Shared, cluster: &Cluster, c: usize, body: &[u8]) -> Answer {
    let config = &shared.config;
    let name = &config.consumers[c].name;
    let req: BalanceBody = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let Some(start) = config.consumers[c].balance else {
        return fail(
            ErrorKind::BadRequest,
            &format!("consumer '{name}' has no balance; give it `balance = N` in the config first"),
        );
    };
    let key = cluster.balance_key(c);
    let cmd = match (req.set, req.add) {
        (Some(v), None) => redis::cmd("SET")
            .arg(&key)
            .arg(v)
            .arg("GET")
            .get_packed_command(),
        (None, Some(delta)) => {
            // A key no node has leased from yet starts at the configured balance.
            let init = redis::cmd("SET")
                .arg(&key)
                .arg(start)
                .arg("NX")
                .get_packed_command();
            if let Err(e) = cluster.command(init).await {
                return fail(
                    ErrorKind::Unavailable,
                    &format!("cluster state unreachable: {e}"),
                );
            }
            redis::cmd("INCRBY")
                .arg(&key)
                .arg(delta)
                .get_packed_command()
        }
        _ => {
            return fail(
                ErrorKind::BadRequest,
                "send exactly one of {\"set\": N} or {\"add\": N}",
            )
        }
    };
    let after = match cluster.command(cmd).await {
        Ok(redis::Value::Int(v)) => v,
        Ok(_) => req.set.unwrap_or(0),
        Err(e) => {
            return fail(
                ErrorKind::Unavailable,
                &format!("cluster state unreachable: {e}"),
            )
        }
    };
    lift_verdict(shared, c);
    let mut answer = ok(json!({"name": name, "balance": after, "shared": true}));
    answer.change =
        Some(json!({"action": "balance", "consumer": name, "after": after, "shared": true}));
    answer
}

/// A balance change may let the tenant in again: lift its kernel verdict.
fn lift_verdict(shared: &Shared, c: usize) {
    let mut maps = shared.kernel_maps.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(maps), Some(consumer)) = (maps.as_mut(), shared.config.consumers.get(c)) {
        crate::kernel::lift(maps, &consumer.name);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    limit: String,
    model: Option<String>,
}

fn reset(shared: &Shared, c: usize, body: &[u8]) -> Answer {
    let engine = &shared.engine;
    let config = engine.config();
    let name = &config.consumers[c].name;
    let req: ResetBody = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    let q = &engine.consumers[c];
    let cells = match &req.model {
        None => &q.cells,
        Some(model) => match config.models.iter().position(|m| &m.name == model) {
            Some(m) => match q.per_model.get(m).and_then(Option::as_ref) {
                Some(cells) => cells,
                None => {
                    return fail(
                        ErrorKind::BadRequest,
                        &format!("model: consumer '{name}' has no limits of its own for '{model}'"),
                    )
                }
            },
            None => {
                return fail(
                    ErrorKind::BadRequest,
                    &format!("model: unknown model '{model}'"),
                )
            }
        },
    };
    let windows = Windows::at(SystemTime::now());
    let targets: Vec<Limit> = if req.limit == "all" {
        ALL_LIMITS.to_vec()
    } else {
        match Limit::parse(&req.limit) {
            Some(l) if l != Limit::Balance && l != Limit::ConcurrentRequests => vec![l],
            _ => {
                return fail(
                    ErrorKind::BadRequest,
                    &format!("limit: '{}' is not a window; use one of requests_per_second, requests_per_minute, tokens_per_minute, tokens_per_hour, tokens_per_day, budget_per_day, budget_per_month, all", req.limit),
                )
            }
        }
    };
    let mut done = Vec::new();
    for limit in targets {
        let hit = match limit {
            Limit::BudgetPerDay => cells
                .budget_day
                .as_ref()
                .map(|b| b.set(windows.day, 0))
                .is_some(),
            Limit::BudgetPerMonth => cells
                .budget_month
                .as_ref()
                .map(|b| b.set(windows.month, 0))
                .is_some(),
            l => cells.rate(l).map(|r| r.reset()).is_some(),
        };
        if hit {
            done.push(limit.as_str());
        }
    }
    if done.is_empty() {
        return fail(
            ErrorKind::BadRequest,
            &format!("limit: consumer '{name}' has no '{}' limit", req.limit),
        );
    }
    let mut answer = ok(json!({"name": name, "reset": done, "model": req.model}));
    answer.change =
        Some(json!({"action": "reset", "consumer": name, "limits": done, "model": req.model}));
    answer
}
