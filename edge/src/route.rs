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

use sluice_config::{Config, Target};

use crate::body;
use crate::error::{Error, ErrorKind};
use crate::filter::{Endpoint, Filter, Request, RequestCtx, Wire};
use crate::translate;

pub struct Route {
    config: Arc<Config>,
}

impl Route {
    pub fn new(config: Arc<Config>) -> Self {
        Route { config }
    }
}

impl Route {
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
        // Only OpenAI-shaped chat and completions streams need asking for usage.
        let force_usage =
            ctx.stream && ctx.upstream_wire == Wire::OpenAi && endpoint != Endpoint::Embeddings;
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
        let Some((index, model)) = self.config.model(&fields.model) else {
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
        let primary = Target {
            provider: model.provider,
            upstream_model: model.upstream_model.clone(),
        };
        self.prepare(ctx, &primary)?;
        Ok(())
    }
}
