//! Chain stage 2: which model, which provider, and the upstream body.
//!
//! Reads the JSON body (400 when it is not a valid request), finds the
//! public model name among the configured models (404 `model_not_found`),
//! checks the consumer may use it (403), and prepares the upstream body:
//! the provider's model name in `model`, and for streams
//! `stream_options.include_usage` switched on so the provider reports usage
//! (the accounting stage later hides that chunk from clients that did not
//! ask for it). `GET /v1/models` has no body and passes through untouched.

use std::borrow::Cow;
use std::sync::Arc;

use sluice_config::{Config, Model, Sticky, Target, Variant};

use crate::body;
use crate::error::{Error, ErrorKind};
use crate::filter::{Endpoint, Filter, Request, RequestCtx, Wire};
use crate::http::RequestHead;
use crate::translate;

pub struct Route {
    config: Arc<Config>,
}

impl Route {
    pub fn new(config: Arc<Config>) -> Self {
        Route { config }
    }
}

/// FNV-1a, 64 bits: the same sticky key picks the same variant on every
/// node and across restarts.
fn sticky_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Route {
    /// The variant of a split model this request goes to.
    fn variant<'m>(
        &self,
        model: &'m Model,
        ctx: &RequestCtx,
        head: &RequestHead,
    ) -> Option<&'m Variant> {
        if model.variants.is_empty() {
            return None;
        }
        if let Some(forced) = model
            .variant_header
            .as_deref()
            .and_then(|h| head.header(h))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|name| model.variant(name.trim()))
        {
            return Some(forced);
        }
        let key: Option<Vec<u8>> = match &model.sticky {
            Sticky::Consumer => ctx
                .consumer
                .and_then(|c| self.config.consumers.get(c))
                .map(|c| c.name.clone().into_bytes()),
            Sticky::Header(name) => head.header(name).map(<[u8]>::to_vec),
            Sticky::None => None,
        };
        // No sticky key: spread by request id.
        let hash = sticky_hash(key.as_deref().unwrap_or(ctx.id.as_bytes()));
        model.pick_variant(hash)
    }

    /// Aim the request at `target`: its provider's wire format (translating
    /// the client's body if they differ), its model name, and usage asked
    /// for on OpenAI-shaped streams. Runs again for each fallback target.
    pub fn prepare(&self, ctx: &mut RequestCtx, target: &Target) -> Result<(), Error> {
        let endpoint = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions);
        let provider = &self.config.providers[target.provider];
        ctx.provider = Some(target.provider);
        ctx.upstream_model = target.upstream_model.clone();
        ctx.upstream_wire = if provider.kind.is_anthropic() {
            Wire::Anthropic
        } else {
            Wire::OpenAi
        };
        if ctx.upstream_wire == Wire::Anthropic
            && !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Messages)
        {
            return Err(Error::new(
                ErrorKind::BadRequest,
                format!(
                    "provider '{}' speaks Anthropic's API, which has no {} endpoint",
                    provider.name,
                    endpoint.as_str()
                ),
            ));
        }
        // Only OpenAI-shaped chat and completions streams need asking for
        // usage, and only when something counts it.
        let force_usage = self.config.features.accounting
            && ctx.stream
            && ctx.upstream_wire == Wire::OpenAi
            && endpoint != Endpoint::Embeddings;
        let translated = match (ctx.client_wire, ctx.upstream_wire) {
            (Wire::OpenAi, Wire::Anthropic) => Some(translate::openai_to_anthropic(
                &ctx.client_body,
                self.config.quota.default_max_tokens.min(u32::MAX as u64) as u32,
            )),
            (Wire::Anthropic, Wire::OpenAi) => {
                Some(translate::anthropic_to_openai(&ctx.client_body))
            }
            _ => None,
        };
        let body = match translated {
            Some(Ok(body)) => Cow::Owned(body),
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    format!("cannot translate the request: {e}"),
                ))
            }
            None => Cow::Borrowed(ctx.client_body.as_slice()),
        };
        ctx.upstream_body = match body::rewrite(&body, &target.upstream_model, force_usage) {
            Some(rewritten) => rewritten,
            None => body.into_owned(),
        };
        Ok(())
    }
}

impl Filter for Route {
    async fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request) -> Result<(), Error> {
        if ctx.endpoint == Some(Endpoint::Models) || ctx.endpoint.is_none() {
            return Ok(());
        }
        let fields = body::inspect(&req.body)?;
        ctx.model_requested = Some(fields.model.clone());
        ctx.stream = fields.stream;
        ctx.client_wants_usage = fields.include_usage == Some(true);
        ctx.max_tokens = fields.max_tokens;
        // Exact names first, then patterns in file order (captures feed `$1`…).
        let Some((index, model, captures)) = self.config.route(&fields.model) else {
            return Err(Error::new(
                ErrorKind::ModelNotFound,
                format!(
                    "The model '{}' does not exist or you do not have access to it.",
                    fields.model
                ),
            ));
        };
        if let Some(consumer) = ctx.consumer.and_then(|c| self.config.consumers.get(c)) {
            if let Some(allowed) = &consumer.allowed_models {
                if !allowed.iter().any(|m| m == &model.name) {
                    return Err(Error::new(
                        ErrorKind::ModelNotAllowed,
                        format!(
                            "consumer '{}' is not allowed to use model '{}'",
                            consumer.name, model.name
                        ),
                    ));
                }
            }
        }
        ctx.model = Some(index);
        ctx.client_wire = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions).wire();
        ctx.client_body = std::mem::take(&mut req.body);
        let expand = |t: &Target| Target {
            provider: t.provider,
            upstream_model: if t.upstream_model.contains(['$', '*']) {
                sluice_config::expand(&t.upstream_model, &captures)
            } else {
                t.upstream_model.clone()
            },
        };
        // A canary / A-B split picks the variant: forced by header, else
        // by the sticky key (the consumer, or a header), so one user keeps
        // hitting one variant and provider-side prompt caches stay warm.
        let (primary, fallbacks) = match self.variant(model, ctx, &req.head) {
            Some(v) => {
                ctx.variant = Some(v.name.clone());
                ctx.variant_index = model.variants.iter().position(|x| x.name == v.name);
                (expand(&v.target), &v.fallbacks)
            }
            None => (expand(&model.primary()), &model.fallbacks),
        };
        ctx.targets = std::iter::once(primary.clone())
            .chain(fallbacks.iter().map(expand))
            .collect();
        ctx.degrade = model.degrade_to.as_ref().map(expand);
        self.prepare(ctx, &primary)?;
        Ok(())
    }
}
