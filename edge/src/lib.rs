//! sluice's data plane: a thread-per-core, OpenAI-compatible AI gateway.
//!
//! Request path (one function, `proxy::handle`): connection loop (`conn`)
//! → policy chain (`filter`: `auth` → `route` → `accounting`) → upstream
//! (`upstream`) → relay (SSE event by event, `sse` + `http` framing) →
//! `Core::finish` (metrics, audit). `server` starts the cores, `admin`
//! serves metrics and health.

pub mod accounting;
pub mod admin;
pub mod admin_api;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cluster;
pub mod conn;
pub mod error;
pub mod filter;
pub mod health;
pub mod http;
pub mod io;
pub mod kernel;
pub mod log;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod quota;
pub mod route;
pub mod server;
pub mod sse;
pub mod tls;
pub mod tokens;
pub mod translate;
pub mod upstream;
pub mod worker;
