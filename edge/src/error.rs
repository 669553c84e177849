//! One error type for the whole request path.
//!
//! Every failure a request can meet — a bad request from downstream, an
//! upstream that refuses, times out or breaks its framing, or a fault of our
//! own — is an [`Error`] that records which side failed and whether a retry
//! is safe. One table ([`ErrorKind::reply`]) turns a kind into the HTTP
//! status and the OpenAI-shaped body the client sees, so every early answer
//! of the chain and every upstream failure reads the same to an SDK:
//! `{"error":{"message","type","param","code"}}`.

use std::borrow::Cow;
use std::fmt;

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: malformed or oversized request, slow headers, disconnect.
    Downstream,
    /// The provider: connect error, timeout, bad framing.
    Upstream,
    /// sluice itself.
    Internal,
}

/// What went wrong; decides the status and body the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The body is not valid JSON, or not a JSON object.
    InvalidJson,
    /// The request is well-formed HTTP and JSON but not a valid API request.
    BadRequest,
    /// Malformed HTTP framing.
    BadFraming,
    /// Request head larger than `limits.max_header_bytes`.
    HeaderTooLarge,
    /// Request body larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// The client did not send its head or body in time.
    RequestTimeout,
    /// No API key, or one that no consumer owns.
    Unauthorized,
    /// The consumer may not use the requested model.
    ModelNotAllowed,
    /// No configured model has the requested name.
    ModelNotFound,
    /// No endpoint at this path.
    NotFound,
    /// The path exists but not for this method.
    MethodNotAllowed,
    /// Could not open (or keep) a connection to the provider.
    UpstreamConnect,
    /// The provider did not answer within its connect/first-byte/idle timeout.
    UpstreamTimeout,
    /// The provider's bytes were not valid HTTP/1.1 or SSE framing.
    UpstreamProtocol,
    /// The provider answered with an error status, passed through as is.
    UpstreamStatus,
    /// The client went away before the response was complete.
    ClientAbort,
    /// A rate limit of the consumer refused the request (requests or tokens per window, concurrency).
    RateLimited,
    /// The consumer's token balance or currency budget is spent.
    InsufficientQuota,
    /// Shared state this request needs is unreachable (fail-closed).
    Unavailable,
    /// Every target is at its concurrency limit or has every circuit open.
    UpstreamUnavailable,
    /// The node is draining and takes no new requests.
    ShuttingDown,
    /// sluice itself ran out of file descriptors, socket buffers, memory or
    /// local ports opening an upstream connection: not the provider's fault.
    LocalResources,
    /// A fault of sluice's own.
    Internal,
}

/// The answer a kind maps to: HTTP status, OpenAI error `type` and `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub error_type: &'static str,
    pub code: &'static str,
}

impl ErrorKind {
    /// The one table from error kind to what the client sees.
    pub const fn reply(self) -> Reply {
        use ErrorKind::*;
        let (status, error_type, code) = match self {
            InvalidJson => (400, "invalid_request_error", "invalid_json"),
            BadRequest => (400, "invalid_request_error", "invalid_request"),
            BadFraming => (400, "invalid_request_error", "bad_framing"),
            HeaderTooLarge => (431, "invalid_request_error", "headers_too_large"),
            BodyTooLarge => (413, "invalid_request_error", "body_too_large"),
            RequestTimeout => (408, "invalid_request_error", "request_timeout"),
            Unauthorized => (401, "invalid_request_error", "invalid_api_key"),
            ModelNotAllowed => (403, "permission_error", "model_not_allowed"),
            ModelNotFound => (404, "invalid_request_error", "model_not_found"),
            NotFound => (404, "invalid_request_error", "unknown_url"),
            MethodNotAllowed => (405, "invalid_request_error", "method_not_allowed"),
            UpstreamConnect => (502, "upstream_error", "upstream_connect_failed"),
            UpstreamTimeout => (504, "upstream_error", "upstream_timeout"),
            UpstreamProtocol => (502, "upstream_error", "upstream_protocol_error"),
            UpstreamStatus => (502, "upstream_error", "upstream_error"),
            ClientAbort => (499, "invalid_request_error", "client_closed_request"),
            RateLimited => (429, "rate_limit_exceeded", "rate_limit_exceeded"),
            InsufficientQuota => (429, "insufficient_quota", "insufficient_quota"),
            Unavailable => (503, "server_error", "quota_state_unavailable"),
            UpstreamUnavailable => (503, "upstream_error", "upstream_unavailable"),
            ShuttingDown => (503, "server_error", "shutting_down"),
            LocalResources => (503, "server_error", "local_resources_exhausted"),
            Internal => (500, "server_error", "internal_error"),
        };
        Reply {
            status,
            error_type,
            code,
        }
    }

    /// Stable snake_case name, used in audit records and metric labels.
    pub const fn as_str(self) -> &'static str {
        use ErrorKind::*;
        match self {
            InvalidJson => "invalid_json",
            BadRequest => "bad_request",
            BadFraming => "bad_framing",
            HeaderTooLarge => "header_too_large",
            BodyTooLarge => "body_too_large",
            RequestTimeout => "request_timeout",
            Unauthorized => "unauthorized",
            ModelNotAllowed => "model_not_allowed",
            ModelNotFound => "model_not_found",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            UpstreamConnect => "upstream_connect",
            UpstreamTimeout => "upstream_timeout",
            UpstreamProtocol => "upstream_protocol",
            UpstreamStatus => "upstream_status",
            ClientAbort => "client_abort",
            RateLimited => "rate_limited",
            InsufficientQuota => "insufficient_quota",
            Unavailable => "unavailable",
            UpstreamUnavailable => "upstream_unavailable",
            ShuttingDown => "shutting_down",
            LocalResources => "local_resources",
            Internal => "internal",
        }
    }

    /// The side a kind belongs to.
    pub const fn side(self) -> Side {
        use ErrorKind::*;
        match self {
            UpstreamConnect | UpstreamTimeout | UpstreamProtocol | UpstreamStatus
            | UpstreamUnavailable => Side::Upstream,
            ShuttingDown | Internal | Unavailable | LocalResources => Side::Internal,
            _ => Side::Downstream,
        }
    }
}

/// A request-path failure.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub side: Side,
    /// True when nothing reached the upstream yet, so sending the request
    /// again (elsewhere) cannot duplicate work or charges.
    pub retry_safe: bool,
    pub message: Cow<'static, str>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            side: kind.side(),
            retry_safe: false,
            message: message.into(),
        }
    }

    /// Mark the failure as happening before the upstream saw the request.
    pub fn retry_safe(mut self) -> Self {
        self.retry_safe = true;
        self
    }

    /// The OpenAI-shaped JSON body for this error.
    pub fn body(&self) -> Vec<u8> {
        error_body(self.kind, &self.message)
    }
}

/// `{"error":{"message":…,"type":…,"param":null,"code":…}}`
pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let reply = kind.reply();
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": reply.error_type,
            "param": null,
            "code": reply.code,
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_maps_kinds_to_statuses_and_bodies() {
        assert_eq!(ErrorKind::Unauthorized.reply().status, 401);
        assert_eq!(ErrorKind::ModelNotFound.reply().code, "model_not_found");
        assert_eq!(ErrorKind::BodyTooLarge.reply().status, 413);
        assert_eq!(ErrorKind::HeaderTooLarge.reply().status, 431);
        assert_eq!(ErrorKind::UpstreamTimeout.reply().status, 504);
        let e = Error::new(ErrorKind::InvalidJson, "expected value at line 1");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "expected value at line 1");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_json");
        assert!(v["error"]["param"].is_null());
        assert_eq!(e.side, Side::Downstream);
        assert_eq!(
            Error::new(ErrorKind::UpstreamConnect, "x").side,
            Side::Upstream
        );
        let local = ErrorKind::LocalResources.reply();
        assert_eq!((local.status, local.error_type), (503, "server_error"));
        assert_eq!(
            Error::new(ErrorKind::LocalResources, "x").side,
            Side::Internal,
            "running out of descriptors is sluice's fault, not the provider's"
        );
    }
}
