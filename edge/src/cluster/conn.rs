//! One core's connection to Redis.
//!
//! Each worker core keeps its own monoio TCP connection (no cross-core
//! sharing, no locks). Commands are encoded by the redis crate; a request
//! that needs several leases sends all its commands in one write and reads
//! the replies back to back (pipelined). Requests on the same core take
//! turns through a small FIFO gate. After a failure the connection is
//! dropped and not retried for a second, so an outage costs one timeout,
//! not one per request; the next call after that reconnects.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use sluice_config::RedisUrl;

use super::resp;
use crate::io::BufConn;

/// How long a failed connection is left alone before the next try.
const BACKOFF: Duration = Duration::from_secs(1);

/// FIFO turn-taking among the tasks of one core.
#[derive(Default)]
struct Gate {
    busy: Cell<bool>,
    waiters: RefCell<VecDeque<Waker>>,
}

struct Turn<'a>(&'a Gate);

impl Gate {
    async fn enter(&self) -> Turn<'_> {
        poll_fn(|cx| {
            if self.busy.get() {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            } else {
                self.busy.set(true);
                Poll::Ready(())
            }
        })
        .await;
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        if let Some(w) = self.0.waiters.borrow_mut().pop_front() {
            w.wake();
        }
    }
}

pub struct RedisConn {
    url: RedisUrl,
    connect_timeout: Duration,
    /// Time allowed for one pipelined exchange.
    op_timeout: Duration,
    conn: RefCell<Option<BufConn<TcpStream>>>,
    gate: Gate,
    retry_at: Cell<Option<Instant>>,
}

impl RedisConn {
    pub fn new(url: RedisUrl, connect_timeout: Duration) -> Self {
        RedisConn {
            url,
            connect_timeout,
            op_timeout: connect_timeout.max(Duration::from_millis(200)),
            conn: RefCell::new(None),
            gate: Gate::default(),
            retry_at: Cell::new(None),
        }
    }

    /// Send every command in one write; one reply each, in order. A kept
    /// connection that turns out dead (Redis restarted while this core was
    /// idle) is replaced once before Redis counts as down.
    pub async fn pipeline(&self, commands: &[Vec<u8>]) -> Result<Vec<redis::Value>, String> {
        let _turn = self.gate.enter().await;
        if let Some(at) = self.retry_at.get() {
            if Instant::now() < at {
                return Err(format!(
                    "redis {} is down; next try in under {} ms",
                    self.url,
                    BACKOFF.as_millis()
                ));
            }
        }
        // Taken out for the exchange (never borrowed across an await).
        let mut kept = self.conn.borrow_mut().take();
        loop {
            let reused = kept.is_some();
            let mut conn = match kept.take() {
                Some(c) => c,
                None => match self.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.retry_at.set(Some(Instant::now() + BACKOFF));
                        return Err(e);
                    }
                },
            };
            match monoio::time::timeout(self.op_timeout, exchange(&mut conn, commands)).await {
                Ok(Ok(values)) => {
                    self.retry_at.set(None);
                    *self.conn.borrow_mut() = Some(conn);
                    return Ok(values);
                }
                Ok(Err(_)) if reused => continue,
                Ok(Err(e)) => {
                    self.retry_at.set(Some(Instant::now() + BACKOFF));
                    return Err(format!("redis {}: {e}", self.url));
                }
                Err(_) => {
                    self.retry_at.set(Some(Instant::now() + BACKOFF));
                    return Err(format!(
                        "redis {}: no answer within {} ms",
                        self.url,
                        self.op_timeout.as_millis()
                    ));
                }
            }
        }
    }

    async fn connect(&self) -> Result<BufConn<TcpStream>, String> {
        let addr = self.url.authority();
        let tcp =
            match monoio::time::timeout(self.connect_timeout, TcpStream::connect(addr.as_str()))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("redis {}: connect failed: {e}", self.url)),
                Err(_) => {
                    return Err(format!(
                        "redis {}: connect took over {} ms",
                        self.url,
                        self.connect_timeout.as_millis()
                    ))
                }
            };
        let _ = tcp.set_nodelay(true);
        let mut conn = BufConn::new(tcp);
        let mut hello = Vec::new();
        if let Some(password) = &self.url.password {
            hello.push(redis::cmd("AUTH").arg(password).get_packed_command());
        }
        if self.url.db != 0 {
            hello.push(redis::cmd("SELECT").arg(self.url.db).get_packed_command());
        }
        if !hello.is_empty() {
            let replies = monoio::time::timeout(self.op_timeout, exchange(&mut conn, &hello))
                .await
                .map_err(|_| format!("redis {}: no answer to AUTH/SELECT", self.url))?
                .map_err(|e| format!("redis {}: {e}", self.url))?;
            for reply in replies {
                if let redis::Value::ServerError(e) = reply {
                    return Err(format!("redis {}: AUTH/SELECT refused: {e:?}", self.url));
                }
            }
        }
        Ok(conn)
    }
}

/// Write `commands` at once and read as many replies.
async fn exchange(
    conn: &mut BufConn<TcpStream>,
    commands: &[Vec<u8>],
) -> Result<Vec<redis::Value>, String> {
    let out: Vec<u8> = commands.concat();
    let (res, _) = conn.write_all(out).await;
    res.map_err(|e| format!("write failed: {e}"))?;
    let mut values = Vec::with_capacity(commands.len());
    while values.len() < commands.len() {
        match resp::frame_len(conn.buffered()).map_err(str::to_string)? {
            Some(len) => {
                let value =
                    redis::parse_redis_value(&conn.buffered()[..len]).map_err(|e| e.to_string())?;
                conn.consume(len);
                values.push(value);
            }
            None => match conn.fill().await {
                Ok(0) => return Err("connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            },
        }
    }
    Ok(values)
}
