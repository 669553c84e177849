//! Request bodies: read what the chain needs, rewrite only what it must.
//!
//! The client's JSON body comes in whole (it is bounded by
//! `limits.max_body_bytes`). [`inspect`] validates it as a JSON object and
//! pulls out the fields the policy chain reads (`model`, `stream`,
//! `stream_options.include_usage`, `max_tokens`). [`rewrite`] then produces
//! the upstream body: the `model` value is swapped for the provider's name
//! and `stream_options.include_usage` is switched on for streams, splicing
//! bytes at the top-level member spans so everything else goes upstream
//! byte-for-byte (key order, spacing, numbers exactly as the client wrote).

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;

use crate::error::{Error, ErrorKind};

/// What the chain needs to know about a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    /// The `model` the client asked for.
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
    /// The client's own `stream_options.include_usage`, if it set one.
    pub include_usage: Option<bool>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    // Every other member is still parsed (so the whole body is validated as
    // JSON) and skipped without allocating.
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Validate the body as a JSON object and read the fields the chain uses.
pub fn inspect(body: &[u8]) -> Result<Inspected, Error> {
    if body.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidJson,
            "request body is empty; send a JSON object",
        ));
    }
    let fields: Fields<'_> = serde_json::from_slice(body).map_err(|e| {
        let kind = if e.is_data() {
            ErrorKind::BadRequest
        } else {
            ErrorKind::InvalidJson
        };
        Error::new(kind, format!("could not parse the JSON body: {e}"))
    })?;
    let model = fields
        .model
        .ok_or_else(|| Error::new(ErrorKind::BadRequest, "missing required parameter: 'model'"))?;
    Ok(Inspected {
        model: model.into_owned(),
        stream: fields.stream.unwrap_or(false),
        include_usage: fields.stream_options.and_then(|o| o.include_usage),
        max_tokens: fields.max_completion_tokens.or(fields.max_tokens),
    })
}

/// Build the upstream body: `model` set to `upstream_model`, and when
/// `force_usage` is set, `stream_options.include_usage` set to true.
/// Returns `None` when the body can go upstream unchanged.
pub fn rewrite(body: &[u8], upstream_model: &str, force_usage: bool) -> Option<Vec<u8>> {
    let members = top_level_members(body)?;
    let find = |key: &[u8]| members.iter().find(|m| &body[m.key.clone()] == key);
    let model = find(b"model");
    let options = find(b"stream_options");
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    match model {
        Some(m) => {
            let current = &body[m.value.clone()];
            let wanted = serde_json::to_vec(upstream_model).ok()?;
            if current != wanted.as_slice() {
                edits.push((m.value.clone(), wanted));
            }
        }
        // An escaped key spelling ("mod\u0065l"): fall back to a re-encode.
        None => return reencode(body, upstream_model, force_usage),
    }
    if force_usage {
        match options {
            Some(o) => {
                let mut value: serde_json::Value =
                    serde_json::from_slice(&body[o.value.clone()]).ok()?;
                match value.as_object_mut() {
                    Some(map) => {
                        map.insert("include_usage".into(), serde_json::Value::Bool(true));
                    }
                    None => value = serde_json::json!({"include_usage": true}),
                }
                edits.push((o.value.clone(), serde_json::to_vec(&value).ok()?));
            }
            None => {
                // Insert right after the opening brace; the object is not
                // empty (it has a model), so a comma always follows.
                let open = body.iter().position(|&b| b == b'{')?;
                edits.push((
                    open + 1..open + 1,
                    br#""stream_options":{"include_usage":true},"#.to_vec(),
                ));
            }
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0;
    for (range, bytes) in edits {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(&bytes);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Some(out)
}

fn reencode(body: &[u8], upstream_model: &str, force_usage: bool) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let map = value.as_object_mut()?;
    map.insert("model".into(), upstream_model.into());
    if force_usage {
        let options = map
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), true.into());
        }
    }
    serde_json::to_vec(&value).ok()
}

/// Byte ranges of one top-level member: the key without its quotes, and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// Spans of the members of a top-level JSON object. Expects JSON that a
/// full parser has already accepted; returns `None` on anything else.
pub fn top_level_members(json: &[u8]) -> Option<Vec<Member>> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut members = Vec::new();
    loop {
        i = skip_ws(json, i);
        match json.get(i)? {
            b'}' => return Some(members),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(json, i)?;
        let key = i + 1..key_end - 1;
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(json, i + 1);
        let value_end = skip_value(json, i)?;
        members.push(Member {
            key,
            value: i..value_end,
        });
        i = value_end;
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `i` at an opening quote; returns the index just past the closing quote.
fn skip_string(json: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match json.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// `i` at the first byte of a value; returns the index just past it.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => skip_string(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = skip_string(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&b) = json.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn inspect_reads_fields() {
        let b = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"max_tokens":7,"messages":[{"role":"user","content":"hi"}]}"#;
        let i = inspect(b).unwrap();
        assert_eq!(i.model, "m");
        assert!(i.stream);
        assert_eq!(i.include_usage, Some(false));
        assert_eq!(i.max_tokens, Some(7));
    }

    #[test]
    fn inspect_rejects_bad_bodies() {
        assert_eq!(inspect(b"").unwrap_err().kind, ErrorKind::InvalidJson);
        assert_eq!(
            inspect(b"{\"model\":").unwrap_err().kind,
            ErrorKind::InvalidJson
        );
        assert_eq!(inspect(b"{nope}").unwrap_err().kind, ErrorKind::InvalidJson);
        assert_eq!(inspect(b"[1,2]").unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(
            inspect(b"{\"stream\":true}").unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert_eq!(
            inspect(b"{\"model\":5}").unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert_eq!(
            inspect(br#"{"model":"a","model":"b"}"#).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn rewrite_swaps_model_and_keeps_the_rest_byte_for_byte() {
        let b = br#"{ "messages" : [{"role":"user","content":"a \"model\": x"}], "model":"pub", "temperature": 0.70 }"#;
        let out = rewrite(b, "up-1", false).unwrap();
        assert_eq!(
            s(&out),
            r#"{ "messages" : [{"role":"user","content":"a \"model\": x"}], "model":"up-1", "temperature": 0.70 }"#
        );
        assert!(rewrite(br#"{"model":"same"}"#, "same", false).is_none());
    }

    #[test]
    fn rewrite_injects_include_usage() {
        let out = rewrite(br#"{"model":"m","stream":true}"#, "m", true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream"], true);

        let out = rewrite(
            br#"{"model":"m","stream_options":{"include_usage":false,"x":1},"stream":true}"#,
            "n",
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert_eq!(v["model"], "n");
    }

    #[test]
    fn escaped_key_falls_back_to_reencode() {
        let out = rewrite(br#"{"mod\u0065l":"m"}"#, "up", false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "up");
    }

    #[test]
    fn member_spans() {
        let j = br#"{"a":{"b":[1,"}"]},"c":"d\"e" ,"f":-1.5e3,"g":null}"#;
        let m = top_level_members(j).unwrap();
        let got: Vec<(&str, &str)> = m
            .iter()
            .map(|m| (s(&j[m.key.clone()]), s(&j[m.value.clone()])))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", r#"{"b":[1,"}"]}"#),
                ("c", r#""d\"e""#),
                ("f", "-1.5e3"),
                ("g", "null")
            ]
        );
    }
}
