//! What the mock answers, decided without touching a socket.
//!
//! In: a parsed request head, its decoded body and the process defaults.
//! Out: the effective [`Script`] (timing and faults, applied by `server`)
//! and a [`Reply`]: either a complete JSON response or a [`StreamPlan`] that
//! renders each SSE event of a streamed completion into the write buffer,
//! already framed as its own HTTP chunk. Everything is rendered in the exact
//! OpenAI wire shape; the parts shared by every event of a stream (id,
//! model, created) are rendered once per request.
//!
//! Decision order: `x-mock-*` headers → route → API key → scripted status →
//! JSON body → endpoint.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{json, Value};

use super::http::Head;
use super::plan::EventPlan;
use super::script::Script;
use super::tokens::{self, WORDS};

/// Paths the mock serves; `/mock/stats` is answered by `server` itself.
pub(crate) mod path {
    pub(crate) const CHAT: &str = "/v1/chat/completions";
    pub(crate) const COMPLETIONS: &str = "/v1/completions";
    pub(crate) const EMBEDDINGS: &str = "/v1/embeddings";
    pub(crate) const MODELS: &str = "/v1/models";
    pub(crate) const STATS: &str = "/mock/stats";
}

/// The models `GET /v1/models` lists.
pub const MODELS: [&str; 6] = [
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o3-mini",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
];

/// Largest `dimensions` an embeddings request may ask for.
const MAX_DIMENSIONS: u64 = 4096;
/// Embedding size when the request does not give `dimensions`.
const DEFAULT_DIMENSIONS: usize = 8;

/// A response decided for one request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A complete response with a JSON body and `Content-Length`.
    Full {
        status: u16,
        retry_after: Option<String>,
        body: Vec<u8>,
    },
    /// A streamed completion.
    Stream(StreamPlan),
}

/// Request-independent inputs of a reply.
pub(crate) struct Ctx<'a> {
    /// The bearer key every request must carry, if any.
    pub(crate) api_key: Option<&'a str>,
    /// Sequence number for the response id.
    pub(crate) id: u64,
    /// Unix seconds for `created`.
    pub(crate) created: u64,
}

/// Decides the script and reply for one request.
pub(crate) fn respond(head: &Head, body: &[u8], defaults: &Script, ctx: &Ctx) -> (Script, Reply) {
    if head.path() == super::anthropic::PATH {
        return super::anthropic::respond(head, body, defaults, ctx);
    }
    let script = match defaults.for_request(head) {
        Ok(s) => s,
        Err(msg) => return (defaults.clone(), error(400, &msg, None)),
    };
    let reply = route(head, body, &script, ctx);
    (script, reply)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
}

fn route(head: &Head, body: &[u8], script: &Script, ctx: &Ctx) -> Reply {
    let (endpoint, method) = match head.path() {
        path::CHAT => (Endpoint::Chat, "POST"),
        path::COMPLETIONS => (Endpoint::Completions, "POST"),
        path::EMBEDDINGS => (Endpoint::Embeddings, "POST"),
        path::MODELS => (Endpoint::Models, "GET"),
        _ => {
            let msg = format!("Unknown request URL: {} {}.", head.method(), head.path());
            return error(404, &msg, Some("unknown_url"));
        }
    };
    if head.method() != method {
        let msg = format!(
            "{} {} is not supported; use {method}.",
            head.method(),
            head.path()
        );
        return error(405, &msg, None);
    }
    if let Some(key) = ctx.api_key {
        let given = head
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(str::trim) != Some(key) {
            return error(401, "Incorrect API key provided.", Some("invalid_api_key"));
        }
    }
    if let Some(status) = script.status {
        let mut reply = scripted_error(status);
        if let Reply::Full { retry_after, .. } = &mut reply {
            retry_after.clone_from(&script.retry_after);
        }
        return reply;
    }
    if endpoint == Endpoint::Models {
        return Reply::Full {
            status: 200,
            retry_after: None,
            body: models_body(),
        };
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(400, "The request body must be a JSON object.", None),
        Err(e) => {
            let msg = format!("We could not parse the JSON body of your request: {e}");
            return error(400, &msg, None);
        }
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return error(400, "you must provide a model parameter", None);
    };
    match endpoint {
        Endpoint::Chat => super::tools::openai_tool_call(head, model, &request, script, ctx)
            .unwrap_or_else(|| completion(endpoint, model, &request, script, ctx)),
        Endpoint::Completions => completion(endpoint, model, &request, script, ctx),
        _ => embeddings(model, &request),
    }
}

/// An OpenAI-shaped error body.
/// Fields in OpenAI's order: message, type, param, code.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    let mut body = String::with_capacity(96 + message.len());
    body.push_str("{\"error\":{\"message\":");
    push_json_str(&mut body, message);
    body.push_str(",\"type\":");
    push_json_str(&mut body, kind);
    body.push_str(",\"param\":null,\"code\":");
    match code {
        Some(code) => push_json_str(&mut body, code),
        None => body.push_str("null"),
    }
    body.push_str("}}");
    body.into_bytes()
}

/// An error reply of `status`, typed as OpenAI types request errors.
pub(crate) fn error(status: u16, message: &str, code: Option<&str>) -> Reply {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    Reply::Full {
        status,
        retry_after: None,
        body: error_body(message, kind, code),
    }
}

/// The error a scripted status answers with.
fn scripted_error(status: u16) -> Reply {
    let message = format!("mock: scripted status {status}");
    let (kind, code) = match status {
        429 => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
        401 => ("invalid_request_error", Some("invalid_api_key")),
        s if s >= 500 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    Reply::Full {
        status,
        retry_after: None,
        body: error_body(&message, kind, code),
    }
}

fn models_body() -> Vec<u8> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // A &str always serializes.
    if let Ok(lit) = serde_json::to_string(s) {
        out.push_str(&lit);
    }
}

/// The usage object, in OpenAI's field order.
pub(crate) fn usage_json(prompt: usize, completion: usize, cached: u64) -> String {
    format!(
        "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{},\
         \"prompt_tokens_details\":{{\"cached_tokens\":{cached},\"audio_tokens\":0}},\
         \"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\
         \"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}",
        prompt + completion
    )
}

fn completion(endpoint: Endpoint, model: &str, req: &Value, script: &Script, ctx: &Ctx) -> Reply {
    let chat = endpoint == Endpoint::Chat;
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .filter(|k| chat || **k == "max_tokens")
        .find_map(|k| req.get(*k).and_then(Value::as_u64));
    let (chunks, finish) = match cap {
        Some(cap) if cap < script.chunks as u64 => (cap as usize, "length"),
        _ => (script.chunks, "stop"),
    };
    let prompt = if chat {
        tokens::prompt_tokens_chat(model, req)
    } else {
        req.get("prompt")
            .map_or(0, |p| tokens::input_tokens(model, p))
    };
    let usage = (!script.omit_usage).then(|| usage_json(prompt, chunks, script.cached_tokens));
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let id = if chat {
        format!("chatcmpl-mock{}", ctx.id)
    } else {
        format!("cmpl-mock{}", ctx.id)
    };
    let mut head = String::with_capacity(192);
    head.push_str("{\"id\":\"");
    head.push_str(&id);
    head.push_str(if chat {
        "\",\"object\":\"chat.completion"
    } else {
        "\",\"object\":\"text_completion"
    });
    if stream && chat {
        head.push_str(".chunk");
    }
    let _ = write!(head, "\",\"created\":{},\"model\":", ctx.created);
    push_json_str(&mut head, model);
    if chat {
        head.push_str(",\"service_tier\":\"default\"");
    }
    head.push_str(",\"system_fingerprint\":\"fp_mock\",\"choices\":[");
    if stream {
        let include_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return Reply::Stream(StreamPlan::Chat(ChatPlan::new(
            chat,
            head,
            chunks,
            finish,
            include_usage,
            usage,
        )));
    }
    let text = tokens::chat_content(chunks);
    let mut body = head;
    if chat {
        body.push_str("{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
        body.push_str(&text);
        body.push_str("\",\"refusal\":null,\"annotations\":[]}");
    } else {
        body.push_str("{\"index\":0,\"text\":\"");
        body.push_str(&text);
        body.push('"');
    }
    let _ = write!(body, ",\"logprobs\":null,\"finish_reason\":\"{finish}\"}}]");
    if let Some(usage) = usage {
        body.push_str(",\"usage\":");
        body.push_str(&usage);
    }
    body.push('}');
    Reply::Full {
        status: 200,
        retry_after: None,
        body: body.into_bytes(),
    }
}

/// A streamed reply, in whichever wire shape the request called for.
#[derive(Debug)]
pub(crate) enum StreamPlan {
    /// OpenAI chat / completions text chunks.
    Chat(ChatPlan),
    /// Anthropic Messages events, or a tool call in either shape.
    Events(EventPlan),
}

impl StreamPlan {
    /// Content items between the opening and closing events; the scripted
    /// faults count these.
    pub(crate) fn chunks(&self) -> usize {
        match self {
            StreamPlan::Chat(p) => p.chunks,
            StreamPlan::Events(p) => p.chunks(),
        }
    }

    /// The events before the first content item.
    pub(crate) fn push_role(&self, out: &mut Vec<u8>) {
        match self {
            StreamPlan::Chat(p) => p.push_role(out),
            StreamPlan::Events(p) => p.push_start(out),
        }
    }

    /// Content item `i`.
    pub(crate) fn push_content(&self, i: usize, out: &mut Vec<u8>) {
        match self {
            StreamPlan::Chat(p) => p.push_content(i, out),
            StreamPlan::Events(p) => p.push_item(i, out),
        }
    }

    /// The closing events and the last-chunk.
    pub(crate) fn push_end(&self, out: &mut Vec<u8>) {
        match self {
            StreamPlan::Chat(p) => p.push_end(out),
            StreamPlan::Events(p) => p.push_end(out),
        }
    }
}

/// The events of one streamed completion, rendered piece by piece into a
/// write buffer. Every event is `data: <json>\n\n` framed as one HTTP chunk.
#[derive(Debug)]
pub(crate) struct ChatPlan {
    chat: bool,
    /// The chunk object up to the choice payload:
    /// `{"id":…,"choices":[{"index":0,"delta":` (chat) or `…"text":`.
    open: Vec<u8>,
    /// After the payload of a non-final choice (`finish_reason` null).
    close: Vec<u8>,
    /// After the payload of the finishing choice.
    close_finish: Vec<u8>,
    /// The usage chunk's JSON, when the client asked for it and it is not
    /// scripted away.
    usage_event: Option<Vec<u8>>,
    /// Content chunks to send.
    pub(crate) chunks: usize,
}

impl ChatPlan {
    fn new(
        chat: bool,
        head: String,
        chunks: usize,
        finish: &str,
        include_usage: bool,
        usage: Option<String>,
    ) -> Self {
        let usage_null = if include_usage { ",\"usage\":null" } else { "" };
        let usage_event = match (include_usage, usage) {
            (true, Some(usage)) => Some(format!("{head}],\"usage\":{usage}}}").into_bytes()),
            _ => None,
        };
        let open = format!(
            "{head}{{\"index\":0,\"{}\":",
            if chat { "delta" } else { "text" }
        );
        let close = format!(",\"logprobs\":null,\"finish_reason\":null}}]{usage_null}}}");
        let close_finish =
            format!(",\"logprobs\":null,\"finish_reason\":\"{finish}\"}}]{usage_null}}}");
        Self {
            chat,
            open: open.into_bytes(),
            close: close.into_bytes(),
            close_finish: close_finish.into_bytes(),
            usage_event,
            chunks,
        }
    }

    /// The first event: the assistant role (chat only; completions have none).
    pub(crate) fn push_role(&self, out: &mut Vec<u8>) {
        if self.chat {
            let role: &[u8] = br#"{"role":"assistant","content":"","refusal":null}"#;
            push_event(out, &[&self.open, role, &self.close]);
        }
    }

    /// Content chunk `i`.
    pub(crate) fn push_content(&self, i: usize, out: &mut Vec<u8>) {
        let word = WORDS[i % WORDS.len()].as_bytes();
        if self.chat {
            push_event(
                out,
                &[&self.open, br#"{"content":""#, word, b"\"}", &self.close],
            );
        } else {
            push_event(out, &[&self.open, b"\"", word, b"\"", &self.close]);
        }
    }

    /// The chunk carrying `finish_reason`, then the usage chunk if any, then
    /// `[DONE]` and the last-chunk that ends the HTTP body.
    pub(crate) fn push_end(&self, out: &mut Vec<u8>) {
        let empty: &[u8] = if self.chat { b"{}" } else { b"\"\"" };
        push_event(out, &[&self.open, empty, &self.close_finish]);
        if let Some(usage) = &self.usage_event {
            push_event(out, &[usage]);
        }
        push_event(out, &[b"[DONE]"]);
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// Appends one SSE event `data: <parts>\n\n` as one HTTP chunk
/// (RFC 9112 §7.1: hex size, CRLF, data, CRLF).
fn push_event(out: &mut Vec<u8>, parts: &[&[u8]]) {
    use std::io::Write as _;
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let _ = write!(out, "{len:x}\r\ndata: ");
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(b"\n\n\r\n");
}

/// FNV-1a over bytes, ASCII case folded.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64: the next state and its output.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic unit vector for one input: the sum of one pseudo-random
/// vector per word (hashed case-insensitively; token ids count as words),
/// normalized. Equal texts give equal vectors, texts sharing words give
/// similar ones, which is enough for a semantic cache to find neighbours.
pub(crate) fn embedding(input: &Value, dims: usize) -> Vec<f32> {
    let features: Vec<u64> = match input {
        Value::String(text) => text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| fnv1a(w.bytes()))
            .collect(),
        Value::Array(ids) => ids
            .iter()
            .map(|id| fnv1a(id.to_string().bytes()).rotate_left(17))
            .collect(),
        _ => Vec::new(),
    };
    let features = if features.is_empty() {
        vec![fnv1a(input.to_string().bytes())]
    } else {
        features
    };
    let mut v = vec![0f64; dims];
    for mut state in features {
        for x in &mut v {
            // The top 53 bits as a float in [-1, 1).
            *x += (splitmix(&mut state) >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|x| (x * scale) as f32).collect()
}

fn embeddings(model: &str, req: &Value) -> Reply {
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let msg = format!("encoding_format: {other:?} must be \"float\" or \"base64\"");
            return error(400, &msg, None);
        }
    };
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(d) => match d.as_u64() {
            Some(n @ 1..=MAX_DIMENSIONS) => n as usize,
            _ => {
                let msg = format!("dimensions: must be an integer in 1..={MAX_DIMENSIONS}");
                return error(400, &msg, None);
            }
        },
    };
    let Some(input) = req.get("input") else {
        return error(400, "you must provide an input parameter", None);
    };
    // One input, unless it is an array of strings or of token-id arrays.
    let items: Vec<&Value> = match input {
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_array()) && !a.is_empty() => {
            a.iter().collect()
        }
        other => vec![other],
    };
    let prompt = tokens::input_tokens(model, input);
    let mut body = String::with_capacity(64 + items.len() * (dims * 12 + 48));
    body.push_str("{\"object\":\"list\",\"data\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":"
        );
        let v = embedding(item, dims);
        if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            body.push('"');
            body.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            body.push('"');
        } else {
            body.push('[');
            for (j, x) in v.iter().enumerate() {
                if j > 0 {
                    body.push(',');
                }
                let _ = write!(body, "{x}");
            }
            body.push(']');
        }
        body.push('}');
    }
    body.push_str("],\"model\":");
    push_json_str(&mut body, model);
    let _ = write!(
        body,
        ",\"usage\":{{\"prompt_tokens\":{prompt},\"total_tokens\":{prompt}}}}}"
    );
    Reply::Full {
        status: 200,
        retry_after: None,
        body: body.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::http::parse_head;

    fn run(method: &str, path: &str, headers: &str, body: &str) -> (Script, Reply) {
        let raw = format!("{method} {path} HTTP/1.1\r\n{headers}\r\n");
        let Ok(Some((head, _))) = parse_head(raw.as_bytes()) else {
            panic!("head")
        };
        let ctx = Ctx {
            api_key: Some("sk-test"),
            id: 7,
            created: 1_700_000_000,
        };
        respond(&head, body.as_bytes(), &Script::default(), &ctx)
    }

    fn full(reply: Reply) -> (u16, Value) {
        match reply {
            Reply::Full { status, body, .. } => {
                (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
            }
            Reply::Stream(_) => panic!("expected a full reply"),
        }
    }

    const AUTH: &str = "Authorization: Bearer sk-test\r\n";

    #[test]
    fn decision_order() {
        let table = [
            ("POST", "/v1/nope", AUTH, "{}", 404),
            ("GET", path::CHAT, AUTH, "", 405),
            ("POST", path::CHAT, "", "{}", 401),
            (
                "POST",
                path::CHAT,
                "Authorization: Bearer wrong\r\n",
                "{}",
                401,
            ),
            ("POST", path::CHAT, "x-mock-chunks: x\r\n", "{}", 400),
            (
                "POST",
                path::CHAT,
                "Authorization: Bearer sk-test\r\nx-mock-status: 503\r\n",
                "not json",
                503,
            ),
            ("POST", path::CHAT, AUTH, "not json", 400),
            ("POST", path::CHAT, AUTH, "[1]", 400),
            ("POST", path::CHAT, AUTH, "{\"messages\":[]}", 400),
            (
                "POST",
                path::EMBEDDINGS,
                AUTH,
                "{\"model\":\"m\",\"input\":\"a\",\"dimensions\":0}",
                400,
            ),
            ("GET", path::MODELS, AUTH, "", 200),
            (
                "POST",
                path::CHAT,
                AUTH,
                "{\"model\":\"gpt-4o\",\"messages\":[]}",
                200,
            ),
        ];
        for (method, path, headers, body, want) in table {
            let (status, v) = full(run(method, path, headers, body).1);
            assert_eq!(status, want, "{method} {path} {headers:?} {body:?}");
            if status >= 400 {
                assert!(v["error"]["message"].is_string(), "{v}");
                assert!(v["error"]["type"].is_string(), "{v}");
            }
        }
    }

    #[test]
    fn scripted_errors_are_typed() {
        let (_, reply) = run(
            "POST",
            path::CHAT,
            "Authorization: Bearer sk-test\r\nx-mock-status: 429\r\nx-mock-retry-after: 3\r\n",
            "",
        );
        let Reply::Full {
            status,
            retry_after,
            body,
        } = reply
        else {
            panic!("full")
        };
        assert_eq!((status, retry_after.as_deref()), (429, Some("3")));
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["param"], Value::Null);
    }

    #[test]
    fn chat_body_shape() {
        let body =
            r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        let (status, v) = full(run("POST", path::CHAT, AUTH, body).1);
        assert_eq!(status, 200);
        assert_eq!(v["id"], "chatcmpl-mock7");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_700_000_000);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            tokens::chat_content(5)
        );
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 5);
        let p = tokens::prompt_tokens_chat(
            "gpt-4o-mini",
            &serde_json::from_str(body).unwrap_or(Value::Null),
        );
        assert_eq!(v["usage"]["prompt_tokens"], p);
        assert_eq!(v["usage"]["total_tokens"], p + 5);
        assert_eq!(v["system_fingerprint"], "fp_mock");
    }

    #[test]
    fn completions_body_shape() {
        let body = r#"{"model":"gpt-3.5-turbo-instruct","prompt":["say","it"],"max_tokens":100}"#;
        let (_, v) = full(run("POST", path::COMPLETIONS, AUTH, body).1);
        assert_eq!(v["id"], "cmpl-mock7");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], tokens::chat_content(16));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 2);
    }

    fn events(plan: &StreamPlan) -> Vec<String> {
        let mut out = Vec::new();
        plan.push_role(&mut out);
        for i in 0..plan.chunks() {
            plan.push_content(i, &mut out);
        }
        plan.push_end(&mut out);
        // Undo the chunked framing, checking each size line.
        let mut events = Vec::new();
        let mut rest = &out[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap_or("x"), 16)
                    .unwrap_or(usize::MAX);
            if size == 0 {
                assert_eq!(&rest[line_end..], b"\r\n\r\n");
                return events;
            }
            let data = &rest[line_end + 2..line_end + 2 + size];
            assert_eq!(&rest[line_end + 2 + size..line_end + 4 + size], b"\r\n");
            events.push(String::from_utf8_lossy(data).into_owned());
            rest = &rest[line_end + 4 + size..];
        }
    }

    #[test]
    fn stream_events_frame_and_parse() {
        let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        let (_, Reply::Stream(plan)) = run(
            "POST",
            path::CHAT,
            &format!("{AUTH}x-mock-chunks: 2\r\n"),
            body,
        ) else {
            panic!("stream")
        };
        let ev = events(&plan);
        assert_eq!(ev.len(), 1 + 2 + 1 + 1 + 1);
        assert_eq!(ev.last().map(String::as_str), Some("data: [DONE]\n\n"));
        let json: Vec<Value> = ev[..5]
            .iter()
            .map(|e| {
                serde_json::from_str(
                    e.strip_prefix("data: ")
                        .and_then(|e| e.strip_suffix("\n\n"))
                        .unwrap_or(""),
                )
                .unwrap_or(Value::Null)
            })
            .collect();
        assert_eq!(json[0]["object"], "chat.completion.chunk");
        assert_eq!(json[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(json[1]["choices"][0]["delta"]["content"], " alpha");
        assert_eq!(json[2]["choices"][0]["delta"]["content"], " delta");
        assert_eq!(json[3]["choices"][0]["finish_reason"], "stop");
        for j in &json[..4] {
            assert!(j.get("usage").is_some_and(Value::is_null), "{j}");
        }
        assert_eq!(json[4]["choices"], json!([]));
        assert_eq!(json[4]["usage"]["completion_tokens"], 2);
        assert_eq!(json[4]["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn completions_stream_has_no_role_chunk() {
        let body = r#"{"model":"m","stream":true,"prompt":"x"}"#;
        let (_, Reply::Stream(plan)) = run(
            "POST",
            path::COMPLETIONS,
            &format!("{AUTH}x-mock-chunks: 1\r\n"),
            body,
        ) else {
            panic!("stream")
        };
        let ev = events(&plan);
        assert_eq!(ev.len(), 3);
        assert!(ev[0].contains(r#""text":" alpha""#), "{}", ev[0]);
        assert!(!ev[0].contains("usage"), "{}", ev[0]);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding(&json!("The cat sat"), 16);
        assert_eq!(a, embedding(&json!("the CAT, sat!"), 16));
        assert_ne!(a, embedding(&json!("a dog ran"), 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_eq!(embedding(&json!(""), 4).len(), 4);
    }
}
