//! Durable quota state for a standalone node: an embedded redb database.
//!
//! Balances, budget spend, rate-window positions and usage totals live in
//! the engine's atomics; a background thread copies them into one ACID
//! write transaction every `quota.flush_interval` (and once more on
//! shutdown, and after every admin change). On start the rows are read back
//! before the first request. A `kill -9` therefore loses at most one flush
//! interval of usage. Rows are keyed by consumer and model *names*, so
//! reordering the config keeps state; rate windows are stored in wall-clock
//! time because the engine's monotonic clock starts anew each run.

use std::path::Path;
use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Cells, Engine, ALL_LIMITS};

/// key → value; what a value means depends on the key (see `rows`).
const STATE: TableDefinition<&str, u64> = TableDefinition::new("quota_state");

#[derive(Debug, thiserror::Error)]
#[error("quota store {path}: {message}")]
pub struct StoreError {
    path: String,
    message: String,
}

pub struct Store {
    db: Database,
    path: String,
}

/// The rows of one cell set under `prefix`.
fn cell_rows(engine: &Engine, prefix: &str, cells: &Cells, out: &mut Vec<(String, u64)>) {
    for limit in ALL_LIMITS {
        if let Some(rate) = cells.rate(limit) {
            let tat = rate.tat();
            let wall = if tat == 0 { 0 } else { engine.to_wall(tat) };
            out.push((format!("{prefix}{}", limit.as_str()), wall));
        }
    }
    if let Some(b) = &cells.budget_day {
        out.push((format!("{prefix}budget_per_day"), b.settled_word()));
    }
    if let Some(b) = &cells.budget_month {
        out.push((format!("{prefix}budget_per_month"), b.settled_word()));
    }
}

fn restore_cells(engine: &Engine, prefix: &str, cells: &Cells, get: &dyn Fn(&str) -> Option<u64>) {
    for limit in ALL_LIMITS {
        if let (Some(rate), Some(wall)) = (
            cells.rate(limit),
            get(&format!("{prefix}{}", limit.as_str())),
        ) {
            rate.set_tat(if wall == 0 { 0 } else { engine.from_wall(wall) });
        }
    }
    if let (Some(b), Some(word)) = (&cells.budget_day, get(&format!("{prefix}budget_per_day"))) {
        b.set_word(word);
    }
    if let (Some(b), Some(word)) = (
        &cells.budget_month,
        get(&format!("{prefix}budget_per_month")),
    ) {
        b.set_word(word);
    }
}

/// Everything the engine holds, as rows.
pub fn rows(engine: &Engine) -> Vec<(String, u64)> {
    let config = engine.config();
    let mut out = Vec::new();
    for (c, q) in engine.consumers.iter().enumerate() {
        let name = &config.consumers[c].name;
        cell_rows(engine, &format!("c/{name}/"), &q.cells, &mut out);
        if let Some(balance) = &q.balance {
            // Reservations of requests in flight are not spent yet: a crash
            // must not persist them as if they were.
            out.push((format!("c/{name}/balance"), balance.settled() as u64));
        }
        for (m, cells) in q.per_model.iter().enumerate() {
            if let Some(cells) = cells {
                cell_rows(
                    engine,
                    &format!("c/{name}/m/{}/", config.models[m].name),
                    cells,
                    &mut out,
                );
            }
        }
        for (m, u) in q.usage.iter().enumerate() {
            let requests = u.requests.load(Ordering::Relaxed);
            if requests == 0 {
                continue;
            }
            let at = format!("u/{name}/{}/", config.models[m].name);
            out.push((format!("{at}requests"), requests));
            out.push((
                format!("{at}prompt_tokens"),
                u.prompt_tokens.load(Ordering::Relaxed),
            ));
            out.push((
                format!("{at}completion_tokens"),
                u.completion_tokens.load(Ordering::Relaxed),
            ));
            out.push((
                format!("{at}cached_tokens"),
                u.cached_tokens.load(Ordering::Relaxed),
            ));
            out.push((
                format!("{at}cost_micros"),
                u.cost_micros.load(Ordering::Relaxed),
            ));
        }
    }
    out
}

/// Put stored rows back into the engine (balances as stored override the
/// config's starting balance).
pub fn restore(engine: &Engine, get: &dyn Fn(&str) -> Option<u64>) {
    let config = engine.config();
    for (c, q) in engine.consumers.iter().enumerate() {
        let name = &config.consumers[c].name;
        restore_cells(engine, &format!("c/{name}/"), &q.cells, get);
        if let (Some(balance), Some(v)) = (&q.balance, get(&format!("c/{name}/balance"))) {
            balance.set(v as i64);
        }
        for (m, cells) in q.per_model.iter().enumerate() {
            if let Some(cells) = cells {
                restore_cells(
                    engine,
                    &format!("c/{name}/m/{}/", config.models[m].name),
                    cells,
                    get,
                );
            }
        }
        for (m, u) in q.usage.iter().enumerate() {
            let at = format!("u/{name}/{}/", config.models[m].name);
            let load = |field: &str, cell: &std::sync::atomic::AtomicU64| {
                if let Some(v) = get(&format!("{at}{field}")) {
                    cell.store(v, Ordering::Relaxed);
                }
            };
            load("requests", &u.requests);
            load("prompt_tokens", &u.prompt_tokens);
            load("completion_tokens", &u.completion_tokens);
            load("cached_tokens", &u.cached_tokens);
            load("cost_micros", &u.cost_micros);
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError {
                path: shown.clone(),
                message: format!("cannot create its directory: {e}"),
            })?;
        }
        let db = Database::create(path).map_err(|e| StoreError {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(Store { db, path: shown })
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Read the stored state into the engine.
    pub fn load(&self, engine: &Engine) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(self.fail(e)),
        };
        let mut all = std::collections::HashMap::new();
        for row in table.iter().map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            all.insert(k.value().to_string(), v.value());
        }
        restore(engine, &|key| all.get(key).copied());
        Ok(())
    }

    /// Write the engine's state in one transaction, replacing the old rows.
    pub fn save(&self, engine: &Engine) -> Result<(), StoreError> {
        let rows = rows(engine);
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut table = tx.open_table(STATE).map_err(|e| self.fail(e))?;
            table.retain(|_, _| false).map_err(|e| self.fail(e))?;
            for (k, v) in &rows {
                table.insert(k.as_str(), v).map_err(|e| self.fail(e))?;
            }
        }
        tx.commit().map_err(|e| self.fail(e))
    }
}
