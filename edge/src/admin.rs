//! The admin listener (default 127.0.0.1:9901): metrics and health.
//!
//! Runs on its own thread and runtime so scrapes never take a worker core's
//! time. `GET /metrics` merges every core's metrics (Prometheus text),
//! `GET /healthz` answers while the process runs, `GET /readyz` answers 200
//! once every worker listens and 503 while starting or draining, with the
//! details as JSON.

use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpListener;

use crate::error::{error_body, ErrorKind};
use crate::http;
use crate::io::{BufConn, Stream};
use crate::metrics;
use crate::server::Shared;

/// Serve the admin API on `listener` until the process exits.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        monoio::spawn(async move {
            let conn: BufConn<crate::io::DownStream> = BufConn::new(Stream::Plain(tcp));
            serve_conn(shared, conn).await;
        });
    }
}

async fn serve_conn<S: AsyncReadRent + AsyncWriteRent>(shared: Arc<Shared>, mut conn: BufConn<S>) {
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
        if !matches!(head.body, http::BodyKind::None | http::BodyKind::Length(0)) {
            // The admin API of this version takes no bodies.
            return;
        }
        let path = head.path.split('?').next().unwrap_or("");
        let (status, content_type, body): (u16, &str, Vec<u8>) = match (head.method.as_str(), path)
        {
            ("GET", "/metrics") => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&shared.config, &shared.metrics).into_bytes(),
            ),
            ("GET", "/healthz") => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            ("GET", "/readyz") => {
                let (ready, details) = shared.readiness();
                (
                    if ready { 200 } else { 503 },
                    "application/json",
                    details.into_bytes(),
                )
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
