//! The admin listener (default 127.0.0.1:9901): metrics and health.
//!
//! Runs on its own thread and runtime so scrapes never take a worker core's
//! time. `GET /metrics` merges every core's metrics (Prometheus text),
//! `GET /healthz` answers while the process runs, `GET /readyz` answers 200
//! once every worker listens and 503 while starting or draining, with the
//! details as JSON. `/admin/...` is the quota API (`admin_api`), behind the
//! admin bearer token.

use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpListener;

use crate::cluster::Cluster;
use crate::error::{error_body, ErrorKind};
use crate::http;
use crate::io::{BufConn, Stream};
use crate::server::Shared;
use crate::{admin_api, conn, metrics};
use std::net::SocketAddr;
use std::rc::Rc;

/// Serve the admin API on `listener` until the process exits.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let cluster = Cluster::new(shared.config.clone(), shared.engine.clone()).map(Rc::new);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let cluster = cluster.clone();
        monoio::spawn(async move {
            let conn: BufConn<crate::io::DownStream> = BufConn::new(Stream::Plain(tcp));
            serve_conn(shared, cluster, conn, peer).await;
        });
    }
}

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn serve_conn<S: AsyncReadRent + AsyncWriteRent>(
    shared: Arc<Shared>,
    cluster: Option<Rc<Cluster>>,
    mut conn: BufConn<S>,
    peer: SocketAddr,
) {
    let timeout = shared.config.limits.idle_timeout;
    loop {
        let head = loop {
            match http::parse_request_head(conn.buffered(), 16 * 1024) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(_) => return,
            }
            match monoio::time::timeout(timeout, conn.fill()).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        conn.consume(head.head_len);
        let body = match conn::read_body(&mut conn, &head, MAX_ADMIN_BODY, timeout).await {
            Ok(body) => body,
            Err(_) => return,
        };
        let path = head.path.split('?').next().unwrap_or("").to_string();
        let (status, content_type, body): (u16, &str, Vec<u8>) = match (
            head.method.as_str(),
            path.as_str(),
        ) {
            ("GET", "/metrics") => {
                let mut text =
                    metrics::render(&shared.config, &shared.metrics, shared.engine.mode());
                text.push_str(&metrics::render_upstreams(
                    &shared.config,
                    &shared.pools,
                    &shared.endpoints,
                ));
                let maps = shared.kernel_maps.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(counters) = maps.as_ref().and_then(crate::kernel::counters) {
                    text.push_str(&metrics::render_kernel(&shared.config, &counters));
                }
                (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                )
            }
            ("GET", "/healthz") => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            ("GET", "/readyz") => {
                let (ready, details) = shared.readiness();
                (
                    if ready { 200 } else { 503 },
                    "application/json",
                    details.into_bytes(),
                )
            }
            (method, p) if p.starts_with("/admin/") => {
                let answer = if !admin_api::authorized(&shared, &head) {
                    let why = if shared.config.admin.token_sha256.is_some() {
                        "missing or wrong admin token: send 'Authorization: Bearer <admin token>'"
                    } else {
                        "the admin API is disabled: set admin.token_env (or admin.token_sha256) in the config"
                    };
                    admin_api::Answer {
                        status: 401,
                        body: error_body(ErrorKind::Unauthorized, why),
                        change: None,
                    }
                } else {
                    admin_api::handle(&shared, cluster.as_deref(), method, p, &body).await
                };
                if let Some(change) = &answer.change {
                    shared.record_admin_change(change, peer);
                }
                (answer.status, "application/json", answer.body)
            }
            _ => (
                404,
                "application/json",
                error_body(ErrorKind::NotFound, &format!("unknown admin path {path}")),
            ),
        };
        let mut out = Vec::with_capacity(256 + body.len());
        let len = body.len().to_string();
        http::write_response_head(
            &mut out,
            status,
            &[
                ("content-type", content_type.as_bytes()),
                ("content-length", len.as_bytes()),
            ],
        );
        out.extend_from_slice(&body);
        let (res, _) = conn.send(out).await;
        if res.is_err() || !head.keep_alive {
            return;
        }
    }
}
