//! The policy chain: the stages every proxied request passes through.
//!
//! A stage implements [`Filter`]. The proxy driver (`proxy::handle`) calls
//! the hooks of [`Chain`]'s stages in field order: `on_request` once the
//! request head and body are in, `on_event` for every upstream SSE event
//! (or once with a whole non-streamed body), and `on_done` exactly once when
//! the exchange is over, however it ended. Stages are per core (built by
//! each worker from the config snapshot) so they keep scratch state in
//! `RefCell`s with no locking; dispatch is static. Everything a stage learns
//! about a request goes into [`RequestCtx`], which the audit record is made
//! from at the end.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_config::Config;

use crate::accounting::Accounting;
use crate::admission::Admission;
use crate::auth::Auth;
use crate::error::{Error, ErrorKind};
use crate::http::RequestHead;
use crate::kernel::Kernel;
use crate::quota::{Engine, Reservation};
use crate::route::Route;

/// Where the token counts on a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageSource {
    /// No tokens were used (rejected, or the upstream failed).
    #[default]
    None,
    /// The provider's `usage` object.
    Provider,
    /// Counted by sluice with the model's tokenizer.
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::None => "none",
            UsageSource::Provider => "provider",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// Token usage of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens the provider served from its prompt cache.
    pub cached: u64,
    pub source: UsageSource,
}

/// The two wire formats sluice speaks on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// OpenAI Chat Completions (and every OpenAI-compatible server).
    #[default]
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// The API endpoints sluice serves on its data-plane listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    /// Anthropic's Messages API, for Anthropic clients.
    Messages,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// The endpoint for a method and path; `Err` says whether the path
    /// exists for another method (405) or not at all (404).
    pub fn resolve(method: &str, path: &str) -> Result<Endpoint, ErrorKind> {
        let path = path.split('?').next().unwrap_or(path);
        let (endpoint, wanted) = match path {
            "/v1/chat/completions" => (Endpoint::ChatCompletions, "POST"),
            "/v1/messages" => (Endpoint::Messages, "POST"),
            "/v1/completions" => (Endpoint::Completions, "POST"),
            "/v1/embeddings" => (Endpoint::Embeddings, "POST"),
            "/v1/models" => (Endpoint::Models, "GET"),
            _ => return Err(ErrorKind::NotFound),
        };
        if method == wanted {
            Ok(endpoint)
        } else {
            Err(ErrorKind::MethodNotAllowed)
        }
    }

    /// The path under the provider's base URL (`/v1` is the base's job).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions | Endpoint::Messages => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Models => "/models",
        }
    }

    /// The wire format clients of this endpoint speak.
    pub fn wire(self) -> Wire {
        match self {
            Endpoint::Messages => Wire::Anthropic,
            _ => Wire::OpenAi,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Messages => "/v1/messages",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Models => "/v1/models",
        }
    }
}

/// A request as the connection loop hands it to the proxy.
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// Everything known about one request; the audit record is made from it.
pub struct RequestCtx {
    pub id: String,
    /// When the request head was complete.
    pub received: Instant,
    pub time: SystemTime,
    pub peer: SocketAddr,
    pub endpoint: Option<Endpoint>,
    /// Index into `config.consumers`, once authenticated.
    pub consumer: Option<usize>,
    /// Index into that consumer's keys.
    pub key: Option<usize>,
    /// The `model` the client asked for.
    pub model_requested: Option<String>,
    /// Index into `config.models`, once routed.
    pub model: Option<usize>,
    /// Index into `config.providers`, once routed.
    pub provider: Option<usize>,
    pub stream: bool,
    /// The wire format the client speaks (by endpoint).
    pub client_wire: Wire,
    /// The wire format the provider speaks (by provider kind); when it
    /// differs from `client_wire` the request and response are translated.
    pub upstream_wire: Wire,
    /// The client asked for the usage chunk itself.
    pub client_wants_usage: bool,
    pub max_tokens: Option<u64>,
    /// The client's body as received (kept to aim it at fallback targets).
    pub client_body: Vec<u8>,
    /// The body to send upstream (the client's, rewritten by the chain).
    pub upstream_body: Vec<u8>,
    /// The provider's name for the model, for the current target.
    pub upstream_model: String,
    /// Every upstream attempt, in order (more than one after a fallback).
    pub attempts: Vec<Attempt>,
    /// Where the request may go, in order: the primary target, then fallbacks.
    pub targets: Vec<sluice_config::Target>,
    /// The cheaper target for when every target is unavailable.
    pub degrade: Option<sluice_config::Target>,
    /// The variant of a split model this request went to (name, index).
    pub variant: Option<String>,
    pub variant_index: Option<usize>,
    pub usage: Usage,
    /// Generated text seen so far, for estimating completion tokens.
    pub completion_text: String,
    /// Status sent to the client (499 when it went away first).
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub error: Option<ErrorKind>,
    pub error_message: Option<String>,
    /// Time to the first response byte sent to the client.
    pub ttft: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Headers a stage wants on the response (rate-limit headroom, Retry-After).
    pub response_headers: Vec<(&'static str, String)>,
    /// The quota engine's hold on this request's limits, settled in `on_done`.
    pub reservation: Option<Reservation>,
    /// Cost of the usage in micro-units of `quota.currency`.
    pub cost_micros: u64,
    /// The limit that refused the request, if one did.
    pub refused_by: Option<&'static str>,
    /// The chain's `on_done` has run (it runs exactly once).
    pub settled: bool,
}

impl RequestCtx {
    pub fn new(id: String, peer: SocketAddr, received: Instant) -> Self {
        RequestCtx {
            id,
            received,
            time: SystemTime::now(),
            peer,
            endpoint: None,
            consumer: None,
            key: None,
            model_requested: None,
            model: None,
            provider: None,
            stream: false,
            client_wire: Wire::OpenAi,
            upstream_wire: Wire::OpenAi,
            client_wants_usage: false,
            max_tokens: None,
            client_body: Vec::new(),
            upstream_body: Vec::new(),
            upstream_model: String::new(),
            attempts: Vec::new(),
            targets: Vec::new(),
            degrade: None,
            variant: None,
            variant_index: None,
            usage: Usage::default(),
            completion_text: String::new(),
            status: 0,
            upstream_status: None,
            error: None,
            error_message: None,
            ttft: None,
            bytes_in: 0,
            bytes_out: 0,
            response_headers: Vec::new(),
            reservation: None,
            cost_micros: 0,
            refused_by: None,
            settled: false,
        }
    }

    /// Record a failure (the first one wins: later ones are consequences).
    pub fn fail(&mut self, error: &Error) {
        if self.error.is_none() {
            self.error = Some(error.kind);
            self.error_message = Some(error.message.to_string());
        }
    }
}

/// One try at an upstream, for the audit record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// The key's id (never the key).
    pub key: Option<String>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
    pub ms: f64,
}

/// What to do with one upstream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the client as received.
    Forward,
    /// Keep it from the client (e.g. the usage chunk it did not ask for).
    Drop,
}

/// One stage of the policy chain. Futures are not `Send`: everything a
/// stage touches lives on one core, so no `Send` bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Filter {
    /// Runs once the request head and body are read, before anything goes
    /// upstream. `Err` answers the client at once with that error; the later
    /// stages' `on_request` do not run, every stage's `on_done` still does.
    async fn on_request(&self, _ctx: &mut RequestCtx, _req: &mut Request) -> Result<(), Error> {
        Ok(())
    }

    /// Runs for each upstream SSE event's `data` (and once with the whole
    /// body of a non-streamed 2xx response). Synchronous and on the hot
    /// path: no allocation per event beyond what the stage must keep.
    fn on_event(&self, _ctx: &mut RequestCtx, _data: &[u8]) -> Verdict {
        Verdict::Forward
    }

    /// Runs exactly once per request when it is over — success, rejection,
    /// upstream failure or client abort — before the audit record is written.
    fn on_done(&self, _ctx: &mut RequestCtx) {}
}

/// The stages, in the order they run. A stage switched off in `[features]`
/// is `None` and costs nothing: route always runs; admission runs only with
/// accounting, since it reserves what accounting later settles.
pub struct Chain {
    pub auth: Option<Auth>,
    pub route: Route,
    pub admission: Option<Admission>,
    pub accounting: Option<Accounting>,
}

impl Chain {
    pub fn new(config: &Arc<Config>, engine: Arc<Engine>, kernel: Option<Rc<Kernel>>) -> Self {
        let on = config.features;
        Chain {
            auth: on.auth.then(|| Auth::new(config, kernel.clone())),
            route: Route::new(config.clone()),
            admission: on
                .accounting
                .then(|| Admission::new(config.clone(), engine, kernel)),
            accounting: on.accounting.then(|| Accounting::new(config.clone())),
        }
    }

    pub async fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request) -> Result<(), Error> {
        if let Some(auth) = &self.auth {
            auth.on_request(ctx, req).await?;
        }
        self.route.on_request(ctx, req).await?;
        if let Some(admission) = &self.admission {
            admission.on_request(ctx, req).await?;
        }
        if let Some(accounting) = &self.accounting {
            accounting.on_request(ctx, req).await?;
        }
        Ok(())
    }

    /// Whether any stage looks at upstream events; when none does (and
    /// nothing needs translating) a stream is relayed byte for byte.
    pub fn sees_events(&self) -> bool {
        self.accounting.is_some()
    }

    pub fn on_event(&self, ctx: &mut RequestCtx, data: &[u8]) -> Verdict {
        // Only accounting looks at events today; a stage that may hold an
        // event back joins here and the verdicts combine (any Drop wins).
        match &self.accounting {
            Some(accounting) => accounting.on_event(ctx, data),
            None => Verdict::Forward,
        }
    }

    /// In reverse order, like unwinding: accounting settles the usage and
    /// cost first, then admission settles the reservation with them.
    pub fn on_done(&self, ctx: &mut RequestCtx) {
        if let Some(accounting) = &self.accounting {
            accounting.on_done(ctx);
        }
        if let Some(admission) = &self.admission {
            admission.on_done(ctx);
        }
        self.route.on_done(ctx);
        if let Some(auth) = &self.auth {
            auth.on_done(ctx);
        }
    }

    /// The cluster client, when this node shares quota through Redis.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.admission.as_ref()?.cluster.as_ref()
    }
}
