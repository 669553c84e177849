//! Chain stage 1: who is calling.
//!
//! Takes the consumer's API key from `Authorization: Bearer`, `x-api-key`
//! or `api-key` (OpenAI, Anthropic and Azure SDKs each use one), hashes it
//! with SHA-256 and looks the hash up among the configured keys (config
//! stores hashes only). Sets `ctx.consumer` / `ctx.key`; a missing or
//! unknown key answers 401 before anything else happens.

use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use sluice_config::Config;

use crate::error::{Error, ErrorKind};
use crate::filter::{Filter, Request, RequestCtx};
use crate::http::RequestHead;
use crate::kernel::{self, Kernel};

pub struct Auth {
    /// sha256(key) → (consumer index, key index).
    keys: HashMap<[u8; 32], (usize, usize)>,
    /// Kernel early rejection: learns which tenant a source address is.
    kernel: Option<Rc<Kernel>>,
    /// Per consumer: its tenant id in the kernel maps.
    tenants: Vec<u32>,
}

impl Auth {
    pub fn new(config: &Config, kernel: Option<Rc<Kernel>>) -> Self {
        let mut keys = HashMap::new();
        for (c, consumer) in config.consumers.iter().enumerate() {
            for (k, key) in consumer.keys.iter().enumerate() {
                keys.insert(key.sha256, (c, k));
            }
        }
        Auth {
            keys,
            kernel,
            tenants: config
                .consumers
                .iter()
                .map(|c| kernel::tenant_id(&c.name))
                .collect(),
        }
    }
}

/// The API key a client presented, if any.
pub fn presented_key(head: &RequestHead) -> Option<&[u8]> {
    if let Some(v) = head.header("authorization") {
        let v = trim(v);
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(trim(&v[7..]));
        }
    }
    head.header("x-api-key")
        .or_else(|| head.header("api-key"))
        .map(trim)
        .filter(|k| !k.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

impl Filter for Auth {
    async fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request) -> Result<(), Error> {
        let Some(key) = presented_key(&req.head) else {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            ));
        };
        let hash: [u8; 32] = Sha256::digest(key).into();
        let Some(&(consumer, k)) = self.keys.get(&hash) else {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                "incorrect API key provided",
            ));
        };
        ctx.consumer = Some(consumer);
        ctx.key = Some(k);
        if let Some(kernel) = &self.kernel {
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the
            // kernel judges them by their IPv4 source.
            kernel.learned(ctx.peer.ip().to_canonical(), self.tenants[consumer]);
        }
        Ok(())
    }
}
