//! The audit log: exactly one JSON line per request.
//!
//! `Core::finish` hands every finished request context here — success,
//! rejection, upstream failure, timeout, client abort. Records are buffered
//! per core and appended to the configured file on the flush interval, when
//! the buffer grows past a bound, and on shutdown after the drain. Each
//! flush is one `write` of whole lines to a file opened `O_APPEND`, so lines
//! from different cores never interleave.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use sluice_config::Config;

use crate::filter::RequestCtx;

/// Flush early past this many buffered bytes.
const FLUSH_AT: usize = 256 * 1024;

/// One audit record, as written.
#[derive(Serialize)]
pub struct Record<'a> {
    /// "request" (admin changes are written as "admin").
    pub kind: &'static str,
    pub ts: String,
    pub request_id: &'a str,
    pub consumer: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub client: String,
    pub endpoint: Option<&'static str>,
    pub model: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
    /// The variant of a split model (canary / A-B).
    pub variant: Option<&'a str>,
    /// Every upstream attempt when there was more than one (fallback, retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<&'a [crate::filter::Attempt]>,
    pub stream: bool,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    pub usage_source: &'static str,
    /// Cost of the usage in `currency` units.
    pub cost: f64,
    pub currency: &'a str,
    /// The limit that refused the request (429), if one did.
    pub limit: Option<&'static str>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<&'static str>,
    pub error_message: Option<&'a str>,
}

impl<'a> Record<'a> {
    pub fn new(config: &'a Config, ctx: &'a RequestCtx) -> Self {
        let consumer = ctx.consumer.and_then(|c| config.consumers.get(c));
        let provider = ctx.provider.and_then(|p| config.providers.get(p));
        let ms = |d: std::time::Duration| (d.as_micros() as f64) / 1000.0;
        Record {
            kind: "request",
            ts: humantime::format_rfc3339_millis(ctx.time).to_string(),
            request_id: &ctx.id,
            consumer: consumer.map(|c| c.name.as_str()),
            key_id: consumer
                .zip(ctx.key)
                .and_then(|(c, k)| c.keys.get(k))
                .map(|k| k.id.as_str()),
            client: ctx.peer.ip().to_canonical().to_string(),
            endpoint: ctx.endpoint.map(|e| e.as_str()),
            model: ctx.model_requested.as_deref(),
            provider: provider.map(|p| p.name.as_str()),
            upstream_model: (!ctx.upstream_model.is_empty()).then_some(ctx.upstream_model.as_str()),
            variant: ctx.variant.as_deref(),
            attempts: (ctx.attempts.len() > 1).then_some(ctx.attempts.as_slice()),
            stream: ctx.stream,
            status: ctx.status,
            upstream_status: ctx.upstream_status,
            prompt_tokens: ctx.usage.prompt,
            completion_tokens: ctx.usage.completion,
            cached_tokens: ctx.usage.cached,
            total_tokens: ctx.usage.prompt + ctx.usage.completion,
            usage_source: ctx.usage.source.as_str(),
            cost: ctx.cost_micros as f64 / 1e6,
            currency: &config.quota.currency,
            limit: ctx.refused_by,
            latency_ms: ms(ctx.received.elapsed()),
            ttft_ms: ctx.ttft.map(ms),
            bytes_in: ctx.bytes_in,
            bytes_out: ctx.bytes_out,
            error: ctx.error.map(|e| e.as_str()),
            error_message: ctx.error_message.as_deref(),
        }
    }
}

/// One core's audit buffer and its handle on the file.
pub struct AuditLog {
    buf: RefCell<Vec<u8>>,
    file: RefCell<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT)),
            file: RefCell::new(file),
        })
    }

    pub fn record(&self, config: &Config, ctx: &RequestCtx) {
        let record = Record::new(config, ctx);
        let full = {
            let mut buf = self.buf.borrow_mut();
            if serde_json::to_writer(&mut *buf, &record).is_ok() {
                buf.push(b'\n');
            }
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Append one JSON value as a line (admin changes), written at once.
    pub fn record_now(&self, value: &serde_json::Value) {
        {
            let mut buf = self.buf.borrow_mut();
            if serde_json::to_writer(&mut *buf, value).is_ok() {
                buf.push(b'\n');
            }
        }
        self.flush();
    }

    /// Append what is buffered to the file, in one write.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        if let Err(e) = self.file.borrow_mut().write_all(&buf) {
            crate::log::error(&format!(
                "audit log write failed, {} bytes kept for the next try: {e}",
                buf.len()
            ));
            return;
        }
        buf.clear();
    }
}
