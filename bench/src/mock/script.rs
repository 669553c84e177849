//! Scripted behaviour of one mock response.
//!
//! A [`Script`] says how the mock misbehaves for a request: how long it waits
//! before the head, between streamed events, which status it answers, where
//! it stalls or cuts the connection, what it reports as usage. The process
//! defaults come from `spawn_with` (the binary's CLI flags); each request may
//! override any of them with an `x-mock-*` header. `server` reads the timing
//! and faults, `reply` reads the rest.

use super::http::Head;

/// Header names of the scripted behaviour; one constant each, shared by the
/// parser and the tests.
pub mod header {
    /// Content chunks in the completion.
    pub const CHUNKS: &str = "x-mock-chunks";
    /// Milliseconds before the response head.
    pub const TTFB_MS: &str = "x-mock-ttfb-ms";
    /// Milliseconds before each streamed content chunk.
    pub const GAP_MS: &str = "x-mock-gap-ms";
    /// Answer this status with an OpenAI error body.
    pub const STATUS: &str = "x-mock-status";
    /// `Retry-After` value sent with the scripted status.
    pub const RETRY_AFTER: &str = "x-mock-retry-after";
    /// Stop sending after this many content chunks, keep the connection open.
    pub const STALL_AFTER: &str = "x-mock-stall-after";
    /// Close the connection after this many content chunks.
    pub const DISCONNECT_AFTER: &str = "x-mock-disconnect-after";
    /// `1` leaves usage out of the response.
    pub const OMIT_USAGE: &str = "x-mock-omit-usage";
    /// `prompt_tokens_details.cached_tokens` to report.
    pub const CACHED_TOKENS: &str = "x-mock-cached-tokens";
}

/// How one response behaves. `Default` is a well-behaved upstream answering
/// 16 content chunks at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Content chunks when the request does not cap them with `max_tokens`.
    pub chunks: usize,
    /// Delay before the response head.
    pub ttfb_ms: u64,
    /// Delay before each streamed content chunk.
    pub gap_ms: u64,
    /// Answer this status (400..=599) with an OpenAI-shaped error body
    /// (`200` as a header or flag value means "no scripted status").
    pub status: Option<u16>,
    /// `Retry-After` header value sent with `status`.
    pub retry_after: Option<String>,
    /// Streaming: send nothing after this many content chunks and keep the
    /// connection open until the peer closes it. Non-streaming: 0 never sends
    /// the head, N > 0 sends the head and withholds the body.
    pub stall_after: Option<usize>,
    /// Streaming: close the connection after this many content chunks, with
    /// no last-chunk. Non-streaming: 0 closes without a response, N > 0 after
    /// the head.
    pub disconnect_after: Option<usize>,
    /// Never report usage.
    pub omit_usage: bool,
    /// `prompt_tokens_details.cached_tokens`.
    pub cached_tokens: u64,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            chunks: 16,
            ttfb_ms: 0,
            gap_ms: 0,
            status: None,
            retry_after: None,
            stall_after: None,
            disconnect_after: None,
            omit_usage: false,
            cached_tokens: 0,
        }
    }
}

/// Parses an integer header value; the error names the header.
fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{name}: {value:?} is not a non-negative integer"))
}

/// Parses a boolean option: `1`/`true`/`yes` or `0`/`false`/`no`.
pub(crate) fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(format!("{name}: {value:?} must be 1 or 0")),
    }
}

/// Parses a scripted status; only error statuses make sense to script.
pub(crate) fn status(name: &str, value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(s) if (400..=599).contains(&s) => Ok(s),
        _ => Err(format!("{name}: {value:?} must be a status in 400..=599")),
    }
}

impl Script {
    /// Sets one option by its header name (also used for CLI flags, which
    /// are the header names without `x-mock-`). Unknown names are an error.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            header::CHUNKS => self.chunks = number(name, value)?,
            header::TTFB_MS => self.ttfb_ms = number(name, value)?,
            header::GAP_MS => self.gap_ms = number(name, value)?,
            // 200 is the unscripted answer, so it clears a default status.
            header::STATUS if value == "200" => self.status = None,
            header::STATUS => self.status = Some(status(name, value)?),
            header::RETRY_AFTER => self.retry_after = Some(value.to_owned()),
            header::STALL_AFTER => self.stall_after = Some(number(name, value)?),
            header::DISCONNECT_AFTER => self.disconnect_after = Some(number(name, value)?),
            header::OMIT_USAGE => self.omit_usage = flag(name, value)?,
            header::CACHED_TOKENS => self.cached_tokens = number(name, value)?,
            _ => return Err(format!("{name}: unknown mock option")),
        }
        Ok(())
    }

    /// These defaults overridden by the request's `x-mock-*` headers. Other
    /// `x-mock-` headers are ignored so clients may tag requests freely.
    pub(crate) fn for_request(&self, head: &Head) -> Result<Script, String> {
        let mut script = self.clone();
        for (name, value) in head.headers() {
            let is_mock = name
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("x-mock-"));
            if !is_mock {
                continue;
            }
            match script.set(name, value.trim()) {
                Err(e) if e.ends_with("unknown mock option") => {}
                other => other?,
            }
        }
        Ok(script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::http::parse_head;

    fn script(headers: &str) -> Result<Script, String> {
        let raw = format!("POST / HTTP/1.1\r\n{headers}\r\n");
        let Ok(Some((head, _))) = parse_head(raw.as_bytes()) else {
            panic!("head")
        };
        Script::default().for_request(&head)
    }

    #[test]
    fn headers_override_defaults() {
        let s = script(
            "X-Mock-Chunks: 3\r\nx-mock-ttfb-ms: 5\r\nx-mock-gap-ms: 7\r\nx-mock-status: 429\r\n\
             x-mock-retry-after: 2\r\nx-mock-stall-after: 1\r\nx-mock-disconnect-after: 2\r\n\
             x-mock-omit-usage: 1\r\nx-mock-cached-tokens: 4\r\nx-mock-tag: ignored\r\n",
        );
        let want = Script {
            chunks: 3,
            ttfb_ms: 5,
            gap_ms: 7,
            status: Some(429),
            retry_after: Some("2".into()),
            stall_after: Some(1),
            disconnect_after: Some(2),
            omit_usage: true,
            cached_tokens: 4,
        };
        assert_eq!(s, Ok(want));
        assert_eq!(script(""), Ok(Script::default()));
        assert_eq!(script("x-mock-status: 200\r\n").map(|s| s.status), Ok(None));
    }

    #[test]
    fn bad_values_name_the_header() {
        let table = [
            ("x-mock-chunks: many\r\n", "x-mock-chunks"),
            ("x-mock-status: 302\r\n", "x-mock-status"),
            ("x-mock-omit-usage: maybe\r\n", "x-mock-omit-usage"),
        ];
        for (fields, name) in table {
            let err = script(fields).err().unwrap_or_default();
            assert!(err.starts_with(name), "{fields:?}: {err}");
        }
    }
}
