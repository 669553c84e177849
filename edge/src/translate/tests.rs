//! Translation tests over recorded-shape fixtures (`fixtures/`): each input
//! is what the provider or SDK sends, each `*.openai.*` / `*.anthropic.*`
//! file what the other side must receive. Streams are checked event by
//! event (name and JSON), for wire framing, for the shape invariants SDKs
//! rely on, and fed both in one go and one event at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

use super::*;

fn j(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

fn js(text: &str) -> Value {
    j(text.as_bytes())
}

/// One SSE event: its `event:` name (if any) and its data.
type Sse = (Option<String>, String);

/// Splits fixture text (or translated output) into events, asserting the
/// exact framing the translators write: an optional `event: x` line, one
/// `data: …` line, a blank line.
fn split_sse(text: &str) -> Vec<Sse> {
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "unterminated: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|raw| {
            let mut lines = raw.split('\n');
            let first = lines.next().unwrap();
            let (name, data_line) = match first.strip_prefix("event: ") {
                Some(name) => (Some(name.to_owned()), lines.next().unwrap()),
                None => (None, first),
            };
            assert!(lines.next().is_none(), "one data line per event: {raw:?}");
            let data = data_line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("data line: {raw:?}"));
            (name, data.to_owned())
        })
        .collect()
}

/// Compares events by name and by JSON value (`[DONE]` literally).
fn assert_events(actual: &[u8], expected: &str) {
    let actual = split_sse(std::str::from_utf8(actual).unwrap());
    let expected = split_sse(expected);
    for (k, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(a.0, e.0, "event {k} name");
        if e.1 == "[DONE]" {
            assert_eq!(a.1, "[DONE]", "event {k}");
        } else {
            assert_eq!(js(&a.1), js(&e.1), "event {k}");
        }
    }
    assert_eq!(actual.len(), expected.len(), "event count");
}

enum Machine {
    ToAnthropic(OpenAiToAnthropicStream),
    ToOpenAi(AnthropicToOpenAiStream),
}

impl Machine {
    fn to_anthropic(model: &str) -> Self {
        Machine::ToAnthropic(OpenAiToAnthropicStream::new(model))
    }

    fn to_openai(model: &str, include_usage: bool) -> Self {
        Machine::ToOpenAi(AnthropicToOpenAiStream::new(model, include_usage).created(1_700_000_000))
    }

    fn feed(&mut self, ev: &Sse, out: &mut Vec<u8>) {
        let name = ev.0.as_deref().map(str::as_bytes);
        match self {
            Machine::ToAnthropic(m) => m.on_event(name, ev.1.as_bytes(), out),
            Machine::ToOpenAi(m) => m.on_event(name, ev.1.as_bytes(), out),
        }
        .unwrap();
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        match self {
            Machine::ToAnthropic(m) => m.finish(out),
            Machine::ToOpenAi(m) => m.finish(out),
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Machine::ToAnthropic(m) => m.usage(),
            Machine::ToOpenAi(m) => m.usage(),
        }
    }
}

/// Runs a stream fixture through a machine two ways — all events into one
/// buffer that already holds other bytes, and one event per fresh buffer,
/// concatenated — asserts both give the same bytes, and returns them.
fn run(make: impl Fn() -> Machine, input: &str) -> (Vec<u8>, Machine) {
    let events = split_sse(input);
    let mut whole = b"previous bytes".to_vec();
    let mut m = make();
    for ev in &events {
        m.feed(ev, &mut whole);
    }
    assert!(m.finish(&mut whole), "stream complete");
    let whole = whole.split_off(b"previous bytes".len());

    let mut pieces = Vec::new();
    let mut m2 = make();
    for ev in &events {
        let mut out = Vec::new();
        m2.feed(ev, &mut out);
        pieces.extend_from_slice(&out);
    }
    m2.finish(&mut pieces);
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&pieces),
        "one go vs one by one"
    );
    assert_eq!(m.usage(), m2.usage());
    (whole, m)
}

/// The invariants the Anthropic SDKs' stream accumulators rely on:
/// `message_start` first, blocks opened in index order from 0 and each
/// closed once before the next opens, deltas only to a started block of
/// the matching kind, `message_delta` then `message_stop` last.
fn check_anthropic_stream(out: &[u8]) {
    let events = split_sse(std::str::from_utf8(out).unwrap());
    assert_eq!(events[0].0.as_deref(), Some("message_start"));
    let start = js(&events[0].1);
    assert_eq!(start["message"]["stop_reason"], Value::Null);
    assert_eq!(start["message"]["content"], json!([]));
    assert!(start["message"]["id"].as_str().unwrap().starts_with("msg_"));
    let mut kinds: Vec<String> = Vec::new();
    let mut open: Option<u64> = None;
    let n = events.len();
    for (k, (name, data)) in events.iter().enumerate() {
        let v = js(data);
        assert_eq!(
            name.as_deref(),
            v["type"].as_str(),
            "event name = data type"
        );
        match v["type"].as_str().unwrap() {
            "content_block_start" => {
                assert_eq!(open, None, "previous block closed");
                let i = v["index"].as_u64().unwrap();
                assert_eq!(i as usize, kinds.len(), "indexes count up from 0");
                kinds.push(v["content_block"]["type"].as_str().unwrap().to_owned());
                open = Some(i);
            }
            "content_block_delta" => {
                let i = v["index"].as_u64().unwrap() as usize;
                let want = match v["delta"]["type"].as_str().unwrap() {
                    "text_delta" => "text",
                    "input_json_delta" => "tool_use",
                    other => panic!("delta {other}"),
                };
                assert_eq!(kinds[i], want);
            }
            "content_block_stop" => {
                assert_eq!(open, v["index"].as_u64());
                open = None;
            }
            "message_delta" => {
                assert_eq!(k, n - 2);
                assert_eq!(open, None);
                assert!(v["delta"]["stop_reason"].is_string());
                assert!(v["usage"]["output_tokens"].is_u64());
            }
            "message_stop" => assert_eq!(k, n - 1),
            "message_start" => assert_eq!(k, 0),
            other => panic!("unexpected event {other}"),
        }
    }
}

/// The invariants of an OpenAI chunk stream: one id/created/model, the
/// role first, one finish chunk, at most one usage chunk (after it), and
/// `[DONE]` last.
fn check_openai_stream(out: &[u8], include_usage: bool) {
    let events = split_sse(std::str::from_utf8(out).unwrap());
    let (last, chunks) = events.split_last().unwrap();
    assert_eq!(last.1, "[DONE]");
    let first = js(&chunks[0].1);
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let mut finished = 0;
    let mut usage_chunks = 0;
    for (name, data) in chunks {
        assert_eq!(name, &None);
        let v = js(data);
        for key in ["id", "created", "model"] {
            assert_eq!(v[key], first[key]);
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v.get("usage").is_some(), include_usage, "{v}");
        let choices = v["choices"].as_array().unwrap();
        if choices.is_empty() {
            assert_eq!(finished, 1, "usage after the finish chunk");
            assert!(v["usage"]["prompt_tokens"].is_u64());
            usage_chunks += 1;
            continue;
        }
        assert_eq!(usage_chunks, 0);
        assert_eq!(choices[0]["index"], 0);
        assert_eq!(choices[0]["logprobs"], Value::Null);
        if !choices[0]["finish_reason"].is_null() {
            finished += 1;
        } else {
            assert_eq!(finished, 0, "nothing after the finish chunk but usage");
        }
    }
    assert_eq!(finished, 1);
    assert_eq!(usage_chunks, usize::from(include_usage));
}

// ---------------------------------------------------------------------------
// Requests

#[test]
fn anthropic_request_fixture_to_openai() {
    let out = anthropic_to_openai(include_bytes!("fixtures/anthropic_request.json")).unwrap();
    assert_eq!(
        j(&out),
        js(include_str!("fixtures/anthropic_request.openai.json"))
    );
}

#[test]
fn openai_request_fixture_to_anthropic() {
    let out = openai_to_anthropic(include_bytes!("fixtures/openai_request.json"), 4096).unwrap();
    assert_eq!(
        j(&out),
        js(include_str!("fixtures/openai_request.anthropic.json"))
    );
}

#[test]
fn anthropic_request_round_trip() {
    // Everything here has an OpenAI equivalent, so the trip is lossless.
    let original = json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Oslo? Here is a map."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo", "days": [1, 2]}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "-3 degrees"},
                {"type": "text", "text": "And tomorrow?"}
            ]},
            {"role": "assistant", "content": "Colder."}
        ],
        "tools": [{"name": "get_weather", "description": "Weather by city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["###"],
        "temperature": 0.2,
        "top_p": 0.5,
        "stream": true,
        "metadata": {"user_id": "u1"}
    });
    let openai = anthropic_to_openai(original.to_string().as_bytes()).unwrap();
    let back = openai_to_anthropic(&openai, 1).unwrap();
    assert_eq!(j(&back), original);
}

#[test]
fn openai_request_round_trip() {
    let original = json!({
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Read this"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "found"},
            {"role": "user", "content": "ok"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": "required",
        "max_completion_tokens": 99,
        "temperature": 0.5,
        "stop": ["a", "b"],
        "user": "u2"
    });
    let anthropic = openai_to_anthropic(original.to_string().as_bytes(), 1).unwrap();
    let back = anthropic_to_openai(&anthropic).unwrap();
    assert_eq!(j(&back), original);
}

#[test]
fn max_tokens_field_and_default() {
    let a = br#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":"hi"}]}"#;
    let out = j(&anthropic_to_openai(a).unwrap());
    assert_eq!(out["max_completion_tokens"], 7);
    assert!(out.get("max_tokens").is_none());
    let options = OpenAiOptions {
        max_tokens_field: MaxTokensField::MaxTokens,
    };
    let out = j(&anthropic_to_openai_with(a, &options).unwrap());
    assert_eq!(out["max_tokens"], 7);
    assert!(out.get("max_completion_tokens").is_none());
    // Not streamed: no stream fields at all.
    assert!(out.get("stream").is_none() && out.get("stream_options").is_none());

    let table: [(&[u8], u64); 4] = [
        (br#"{"model":"m","messages":[]}"#, 333),
        (br#"{"model":"m","max_tokens":5,"messages":[]}"#, 5),
        (
            br#"{"model":"m","max_tokens":5,"max_completion_tokens":6,"messages":[]}"#,
            6,
        ),
        (
            br#"{"model":"m","max_completion_tokens":null,"max_tokens":4,"messages":[]}"#,
            4,
        ),
    ];
    for (body, want) in table {
        let out = j(&openai_to_anthropic(body, 333).unwrap());
        assert_eq!(out["max_tokens"], want, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn errors_name_the_field() {
    let a2o: [(&str, &str); 12] = [
        (
            "{",
            "request body is not valid JSON: EOF while parsing an object at line 1 column 1",
        ),
        ("[1]", "body: must be a JSON object"),
        (r#"{"messages":[]}"#, "model: required string is missing"),
        (r#"{"model":"m"}"#, "messages: required array is missing"),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":[{"type":"foo"}]}]}"#,
            "messages[2].content[0]: unknown block type 'foo'",
        ),
        (
            r#"{"model":"m","messages":[{"role":"system","content":"a"}]}"#,
            "messages[0].role: must be 'user' or 'assistant', not 'system'",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            "messages[0].content: must be a string or an array of blocks, not a number",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            "messages[0].content[0].text: required string is missing",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#,
            "messages[0].content[0].source.type: image source 'file' has no OpenAI equivalent",
        ),
        (
            r#"{"model":"m","messages":[],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
            "tools[0].type: server tool 'web_search_20250305' has no OpenAI equivalent",
        ),
        (
            r#"{"model":"m","messages":[],"tool_choice":{"type":"tool"},"tools":[{"name":"f"}]}"#,
            "tool_choice.name: required string is missing",
        ),
        (
            r#"{"model":"m","messages":[],"stream":"yes"}"#,
            "stream: must be a boolean, not a string",
        ),
    ];
    for (body, want) in a2o {
        let e = anthropic_to_openai(body.as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), want, "{body}");
    }
    let o2a: [(&str, &str); 9] = [
        (
            r#"{"model":"m","messages":[{"role":"robot","content":"a"}]}"#,
            "messages[0].role: unknown role 'robot'",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#,
            "messages[0].tool_calls[0].function.arguments: must be a JSON object encoded as a string",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
            "messages[0].tool_call_id: required string is missing",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#,
            "messages[0].content[0]: audio input has no Anthropic equivalent",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-1"}}]}]}"#,
            "messages[0].content[0].file: only inline file_data is supported (Anthropic cannot see OpenAI file ids)",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,raw"}}]}]}"#,
            "messages[0].content[0].image_url.url: only base64 data: URLs and http(s) URLs are supported",
        ),
        (r#"{"model":"m","messages":[],"n":2}"#, "n: Anthropic answers with one choice; only n = 1 is supported"),
        (
            r#"{"model":"m","messages":[],"max_tokens":0}"#,
            "max_tokens: must be a positive integer",
        ),
        (
            r#"{"model":"m","messages":[],"tools":[{"type":"custom","custom":{"name":"x"}}]}"#,
            "tools[0].type: tool type 'custom' has no Anthropic equivalent",
        ),
    ];
    for (body, want) in o2a {
        let e = openai_to_anthropic(body.as_bytes(), 10).unwrap_err();
        assert_eq!(e.to_string(), want, "{body}");
    }
    assert!(matches!(
        openai_to_anthropic(br#"{"model":"m","messages":[],"n":3}"#, 1),
        Err(TranslateError::Unsupported { .. })
    ));
}

#[test]
fn tool_result_images_move_to_the_user_message() {
    let body = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_9", "is_error": true, "content": [
                {"type": "text", "text": "chart attached"},
                {"type": "image", "source": {"type": "url", "url": "https://x/c.png"}},
                {"type": "text", "text": "second line"}
            ]},
            {"type": "tool_result", "tool_use_id": "toolu_10"}
        ]}
    ]});
    let out = j(&anthropic_to_openai(body.to_string().as_bytes()).unwrap());
    assert_eq!(
        out["messages"],
        json!([
            {"role": "tool", "tool_call_id": "toolu_9", "content": [
                {"type": "text", "text": "chart attached"},
                {"type": "text", "text": "second line"}
            ]},
            {"role": "tool", "tool_call_id": "toolu_10", "content": ""},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/c.png"}}]}
        ])
    );
}

#[test]
fn system_messages_anywhere_are_lifted_and_turns_merge() {
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "late rule"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "three"}]}
    ]});
    let out = j(&openai_to_anthropic(body.to_string().as_bytes(), 10).unwrap());
    assert_eq!(out["system"], "late rule");
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "one"},
            {"type": "text", "text": "two"},
            {"type": "text", "text": "three"}
        ]}])
    );
}

#[test]
fn tool_ids_are_made_valid_for_anthropic_consistently() {
    let body = json!({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "call:1.a", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call:1.a", "content": "r"}
    ]});
    let out = j(&openai_to_anthropic(body.to_string().as_bytes(), 10).unwrap());
    assert_eq!(out["messages"][0]["content"][0]["id"], "call_1_a");
    assert_eq!(out["messages"][0]["content"][0]["input"], json!({}));
    assert_eq!(out["messages"][1]["content"][0]["tool_use_id"], "call_1_a");
}

#[test]
fn tool_choice_both_ways() {
    let tools_a = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    let table = [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
        ),
    ];
    for (anthropic, openai) in table {
        let a = json!({"model": "m", "messages": [], "tools": tools_a, "tool_choice": anthropic});
        let out = j(&anthropic_to_openai(a.to_string().as_bytes()).unwrap());
        assert_eq!(out["tool_choice"], openai);
        assert!(out.get("parallel_tool_calls").is_none());
        let o = json!({"model": "m", "messages": [], "tool_choice": openai,
                       "tools": [{"type": "function", "function": {"name": "f"}}]});
        let back = j(&openai_to_anthropic(o.to_string().as_bytes(), 1).unwrap());
        assert_eq!(back["tool_choice"], anthropic);
        // Neither side takes a tool choice without tools.
        let a = json!({"model": "m", "messages": [], "tool_choice": anthropic});
        let out = j(&anthropic_to_openai(a.to_string().as_bytes()).unwrap());
        assert!(out.get("tool_choice").is_none());
        let o = json!({"model": "m", "messages": [], "tool_choice": openai});
        let out = j(&openai_to_anthropic(o.to_string().as_bytes(), 1).unwrap());
        assert!(out.get("tool_choice").is_none());
    }
    // parallel_tool_calls=false alone makes an auto choice without parallel use.
    let o = json!({"model": "m", "messages": [], "parallel_tool_calls": false,
                   "tools": [{"type": "function", "function": {"name": "f"}}]});
    let out = j(&openai_to_anthropic(o.to_string().as_bytes(), 1).unwrap());
    assert_eq!(
        out["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        out["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {}})
    );
}

#[test]
fn sampling_and_stops() {
    let o = br#"{"model":"m","messages":[],"temperature":-1,"stop":"x","stream":false}"#;
    let out = j(&openai_to_anthropic(o, 1).unwrap());
    assert_eq!(out["temperature"], 0.0);
    assert_eq!(out["stop_sequences"], json!(["x"]));
    assert!(out.get("stream").is_none());
    let o = br#"{"model":"m","messages":[],"stop":[],"user":null}"#;
    let out = j(&openai_to_anthropic(o, 1).unwrap());
    assert!(out.get("stop_sequences").is_none() && out.get("metadata").is_none());
    let a = br#"{"model":"m","max_tokens":1,"messages":[],"stop_sequences":[],"top_k":5,"thinking":{"type":"enabled","budget_tokens":1024}}"#;
    let out = j(&anthropic_to_openai(a).unwrap());
    assert_eq!(
        out,
        json!({"model": "m", "messages": [], "max_completion_tokens": 1})
    );
}

#[test]
fn documents_both_ways() {
    let a = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}}
    ]}]});
    let out = j(&anthropic_to_openai(a.to_string().as_bytes()).unwrap());
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
            {"type": "text", "text": "plain words"}
        ])
    );
}

// ---------------------------------------------------------------------------
// Responses

#[test]
fn openai_response_fixture_to_anthropic() {
    let out =
        openai_response_to_anthropic(include_bytes!("fixtures/openai_response.json"), "gpt-4o")
            .unwrap();
    assert_eq!(
        j(&out),
        js(include_str!("fixtures/openai_response.anthropic.json"))
    );
}

fn without_created(mut v: Value) -> Value {
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    v["created"] = json!(0);
    v
}

#[test]
fn anthropic_response_fixture_to_openai() {
    let out = anthropic_response_to_openai(
        include_bytes!("fixtures/anthropic_response.json"),
        "claude-sonnet-4-5",
    )
    .unwrap();
    assert_eq!(
        without_created(j(&out)),
        js(include_str!("fixtures/anthropic_response.openai.json"))
    );
}

#[test]
fn response_round_trips() {
    // OpenAI → Anthropic → OpenAI keeps text, calls, finish and usage.
    let openai = include_bytes!("fixtures/openai_response.json");
    let anthropic = openai_response_to_anthropic(openai, "gpt-4o").unwrap();
    let back = j(&anthropic_response_to_openai(&anthropic, "gpt-4o").unwrap());
    let orig = j(openai);
    assert_eq!(back["id"], orig["id"]);
    assert_eq!(
        back["choices"][0]["message"]["content"],
        orig["choices"][0]["message"]["content"]
    );
    assert_eq!(
        back["choices"][0]["message"]["tool_calls"],
        orig["choices"][0]["message"]["tool_calls"]
    );
    assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(back["usage"][key], orig["usage"][key], "{key}");
    }
    assert_eq!(
        back["usage"]["prompt_tokens_details"]["cached_tokens"],
        1024
    );

    // Anthropic → OpenAI → Anthropic keeps all but thinking and the split
    // between cache writes and uncached input.
    let anthropic = include_bytes!("fixtures/anthropic_response.json");
    let openai = anthropic_response_to_openai(anthropic, "c").unwrap();
    let back = j(&openai_response_to_anthropic(&openai, "c").unwrap());
    let orig = j(anthropic);
    assert_eq!(back["id"], orig["id"]);
    assert_eq!(
        back["content"],
        json!(orig["content"].as_array().unwrap()[1..])
    );
    assert_eq!(back["stop_reason"], "tool_use");
    assert_eq!(
        back["usage"],
        json!({"input_tokens": 572, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 2048, "output_tokens": 89})
    );
}

#[test]
fn stop_and_finish_reasons() {
    let table = [
        ("stop", "end_turn", "stop"),
        ("length", "max_tokens", "length"),
        ("tool_calls", "tool_use", "tool_calls"),
        ("content_filter", "refusal", "content_filter"),
        ("function_call", "tool_use", "tool_calls"),
    ];
    for (finish, stop, back) in table {
        assert_eq!(stop_reason_for(finish), stop);
        assert_eq!(finish_reason_for(stop), back);
    }
    for (stop, finish) in [
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ] {
        assert_eq!(finish_reason_for(stop), finish);
    }
    // Through whole responses too.
    let a = |stop: &str| {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
            "content": [{"type": "text", "text": "x"}], "stop_reason": stop,
            "stop_sequence": "###", "usage": {"input_tokens": 1, "output_tokens": 1}});
        j(&anthropic_response_to_openai(body.to_string().as_bytes(), "c").unwrap())["choices"][0]
            ["finish_reason"]
            .clone()
    };
    assert_eq!(a("stop_sequence"), "stop");
    assert_eq!(a("max_tokens"), "length");
}

#[test]
fn odd_openai_responses() {
    // A refusal, a call with no id and arguments that are not JSON, no usage.
    let body = json!({"id": "", "object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "refusal": "I can't help with that.",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"a\": 1"}}]},
        "finish_reason": "stop"}]});
    let out = j(&openai_response_to_anthropic(body.to_string().as_bytes(), "m").unwrap());
    assert_eq!(out["stop_reason"], "refusal");
    assert_eq!(
        out["content"][0],
        json!({"type": "text", "text": "I can't help with that."})
    );
    assert_eq!(out["content"][1]["input"], "{\"a\": 1");
    assert!(out["content"][1]["id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    assert_eq!(out["usage"]["input_tokens"], 0);
    assert_eq!(out["id"], "msg_");

    let e = openai_response_to_anthropic(br#"{"choices":[]}"#, "m").unwrap_err();
    assert_eq!(e.to_string(), "choices: the response has no choice");
    let e = anthropic_response_to_openai(br#"{"type":"message"}"#, "m").unwrap_err();
    assert_eq!(e.to_string(), "content: required array is missing");

    // An Anthropic answer with nothing in it.
    let empty = br#"{"id":"msg_2","type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":0}}"#;
    let out = j(&anthropic_response_to_openai(empty, "m").unwrap());
    assert_eq!(out["choices"][0]["message"]["content"], "");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn errors_both_ways() {
    let table = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ];
    let openai = br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    for (status, kind) in table {
        assert_eq!(anthropic_error_type(status), kind, "{status}");
        let out = j(&openai_error_to_anthropic(status, openai));
        assert_eq!(
            out,
            json!({"type": "error", "error": {"type": kind, "message": "Rate limit reached for gpt-4o"}})
        );
    }
    let anthropic =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(
        j(&anthropic_error_to_openai(529, anthropic)),
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
    );
    assert_eq!(openai_status_for_anthropic(529), 503);
    assert_eq!(openai_status_for_anthropic(429), 429);
    let a = |status, kind: &str| {
        let body = json!({"type": "error", "error": {"type": kind, "message": "m"}});
        j(&anthropic_error_to_openai(
            status,
            body.to_string().as_bytes(),
        ))["error"]["type"]
            .clone()
    };
    assert_eq!(a(401, "authentication_error"), "invalid_request_error");
    assert_eq!(a(403, "permission_error"), "permission_error");
    assert_eq!(a(429, "rate_limit_error"), "rate_limit_exceeded");
    assert_eq!(a(500, "api_error"), "server_error");
    // Bodies that are not the expected JSON still make a useful message.
    assert_eq!(
        j(&openai_error_to_anthropic(502, b"<html>Bad Gateway</html>")),
        json!({"type": "error", "error": {"type": "api_error", "message": "<html>Bad Gateway</html>"}})
    );
    assert_eq!(
        j(&anthropic_error_to_openai(500, b"")),
        json!({"error": {"message": "provider answered 500", "type": "server_error", "param": null, "code": "api_error"}})
    );
    assert_eq!(
        j(&openai_error_to_anthropic(400, br#"{"error":"bad model"}"#))["error"]["message"],
        "bad model"
    );
    assert_eq!(
        j(&openai_error_to_anthropic(
            422,
            br#"{"detail":"field required"}"#
        ))["error"]["message"],
        "field required"
    );
    let long = "é".repeat(600);
    let msg = j(&openai_error_to_anthropic(500, long.as_bytes()))["error"]["message"].clone();
    assert_eq!(msg.as_str().unwrap().len(), 512);
}

// ---------------------------------------------------------------------------
// Streams

#[test]
fn openai_text_stream_to_anthropic() {
    let (out, m) = run(
        || Machine::to_anthropic("gpt-4o-mini"),
        include_str!("fixtures/openai_stream_text.sse"),
    );
    assert_events(
        &out,
        include_str!("fixtures/openai_stream_text.anthropic.sse"),
    );
    check_anthropic_stream(&out);
    assert_eq!(
        m.usage(),
        Some(Usage {
            prompt: 19,
            completion: 7,
            cached: 0
        })
    );
}

#[test]
fn openai_tool_stream_to_anthropic() {
    let (out, m) = run(
        || Machine::to_anthropic("gpt-4o"),
        include_str!("fixtures/openai_stream_tools.sse"),
    );
    assert_events(
        &out,
        include_str!("fixtures/openai_stream_tools.anthropic.sse"),
    );
    check_anthropic_stream(&out);
    assert_eq!(
        m.usage(),
        Some(Usage {
            prompt: 80,
            completion: 48,
            cached: 64
        })
    );
}

#[test]
fn anthropic_text_stream_to_openai() {
    let (out, m) = run(
        || Machine::to_openai("claude-sonnet-4-5", true),
        include_str!("fixtures/anthropic_stream_text.sse"),
    );
    assert_events(
        &out,
        include_str!("fixtures/anthropic_stream_text.openai.sse"),
    );
    check_openai_stream(&out, true);
    assert_eq!(
        m.usage(),
        Some(Usage {
            prompt: 35,
            completion: 15,
            cached: 10
        })
    );
}

#[test]
fn anthropic_tool_stream_to_openai() {
    let (out, m) = run(
        || Machine::to_openai("claude-sonnet-4-5", false),
        include_str!("fixtures/anthropic_stream_tools.sse"),
    );
    assert_events(
        &out,
        include_str!("fixtures/anthropic_stream_tools.openai.sse"),
    );
    check_openai_stream(&out, false);
    assert_eq!(
        m.usage(),
        Some(Usage {
            prompt: 472,
            completion: 89,
            cached: 0
        })
    );
}

#[test]
fn anthropic_tool_stream_with_usage() {
    let (out, _) = run(
        || Machine::to_openai("c", true),
        include_str!("fixtures/anthropic_stream_tools.sse"),
    );
    check_openai_stream(&out, true);
    let events = split_sse(std::str::from_utf8(&out).unwrap());
    let usage = js(&events[events.len() - 2].1);
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

/// Reassembles what an OpenAI client would see: the text and each tool
/// call's id, name and arguments.
fn openai_assembled(out: &[u8]) -> (String, Vec<(String, String, String)>, String) {
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for (_, data) in split_sse(std::str::from_utf8(out).unwrap()) {
        if data == "[DONE]" {
            continue;
        }
        let v = js(&data);
        let Some(choice) = v["choices"].get(0) else {
            continue;
        };
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                calls.push(Default::default());
            }
            if let Some(id) = call["id"].as_str() {
                calls[i].0 = id.to_owned();
            }
            if let Some(n) = call["function"]["name"].as_str() {
                calls[i].1 = n.to_owned();
            }
            if let Some(a) = call["function"]["arguments"].as_str() {
                calls[i].2.push_str(a);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (text, calls, finish)
}

/// Round trip: OpenAI stream → Anthropic → OpenAI gives the same text,
/// calls and finish reason; Anthropic → OpenAI → Anthropic the same events
/// (but `ping` and the empty first `input_json_delta`).
#[test]
fn stream_round_trips() {
    for fixture in [
        include_str!("fixtures/openai_stream_text.sse"),
        include_str!("fixtures/openai_stream_tools.sse"),
    ] {
        let (anthropic, first) = run(|| Machine::to_anthropic("m"), fixture);
        let (back, second) = run(
            || Machine::to_openai("m", true),
            std::str::from_utf8(&anthropic).unwrap(),
        );
        let orig: Vec<u8> = fixture.as_bytes().to_vec();
        assert_eq!(openai_assembled(&back), openai_assembled(&orig));
        assert_eq!(first.usage(), second.usage());
    }
    for (fixture, include_usage) in [
        (include_str!("fixtures/anthropic_stream_text.sse"), true),
        (include_str!("fixtures/anthropic_stream_tools.sse"), true),
    ] {
        let (openai, first) = run(|| Machine::to_openai("m", include_usage), fixture);
        let (back, second) = run(
            || Machine::to_anthropic("m"),
            std::str::from_utf8(&openai).unwrap(),
        );
        check_anthropic_stream(&back);
        let keep = |e: &Sse| {
            let v = js(&e.1);
            v["type"] != "ping" && v["delta"]["partial_json"] != ""
        };
        let orig: Vec<Sse> = split_sse(fixture).into_iter().filter(keep).collect();
        let back = split_sse(std::str::from_utf8(&back).unwrap());
        assert_eq!(orig.len(), back.len());
        for (o, b) in orig.iter().zip(&back) {
            let (o, b) = (js(&o.1), js(&b.1));
            match o["type"].as_str().unwrap() {
                // Usage moves to message_delta; the model is the client's.
                "message_start" => assert_eq!(o["message"]["id"], b["message"]["id"]),
                "message_delta" => assert_eq!(o["delta"], b["delta"]),
                _ => assert_eq!(o, b),
            }
        }
        assert_eq!(first.usage(), second.usage());
    }
}

#[test]
fn anthropic_error_event_becomes_an_openai_error() {
    let input = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ignored\"}}\n\n",
    );
    let mut m = AnthropicToOpenAiStream::new("c", false).created(1);
    let mut out = Vec::new();
    for (name, data) in split_sse(input) {
        m.on_event(
            name.as_deref().map(str::as_bytes),
            data.as_bytes(),
            &mut out,
        )
        .unwrap();
    }
    assert!(m.is_done());
    assert!(m.finish(&mut out));
    let events = split_sse(std::str::from_utf8(&out).unwrap());
    assert_eq!(events.len(), 3);
    assert_eq!(js(&events[1].1)["choices"][0]["delta"]["content"], "Hel");
    assert_eq!(
        js(&events[2].1),
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
    );
    assert_eq!(
        m.usage(),
        Some(Usage {
            prompt: 5,
            completion: 1,
            cached: 0
        })
    );
}

#[test]
fn openai_error_chunk_becomes_an_anthropic_error() {
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(
        None,
        br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
        &mut out,
    )
    .unwrap();
    m.on_event(
        None,
        br#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
        &mut out,
    )
    .unwrap();
    m.on_event(None, b"[DONE]", &mut out).unwrap();
    let events = split_sse(std::str::from_utf8(&out).unwrap());
    let last = events.last().unwrap();
    assert_eq!(last.0.as_deref(), Some("error"));
    assert_eq!(
        js(&last.1),
        json!({"type": "error", "error": {"type": "api_error", "message": "The server had an error"}})
    );
    assert_eq!(
        events.len(),
        4,
        "start, block start, delta, error; nothing after"
    );

    // Some servers name the event instead.
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(Some(b"error"), b"upstream exploded", &mut out)
        .unwrap();
    assert_eq!(
        out,
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream exploded\"}}\n\n"
    );
}

#[test]
fn openai_stream_usage_timing() {
    let role = br#"{"id":"chatcmpl-u","choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#;
    let finish_with_usage = br#"{"id":"chatcmpl-u","choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}"#;
    let finish =
        br#"{"id":"chatcmpl-u","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
    let names = |out: &[u8]| -> Vec<String> {
        split_sse(std::str::from_utf8(out).unwrap())
            .into_iter()
            .map(|e| e.0.unwrap())
            .collect()
    };

    // Usage on the finish chunk itself (vLLM, Groq): the end goes out at once.
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(None, role, &mut out).unwrap();
    m.on_event(None, finish_with_usage, &mut out).unwrap();
    assert!(m.is_done());
    assert_eq!(names(&out)[4..], ["message_delta", "message_stop"]);
    let delta = js(&split_sse(std::str::from_utf8(&out).unwrap())[4].1);
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 1);

    // No usage at all: held until [DONE], then sent with zero output tokens.
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(None, role, &mut out).unwrap();
    m.on_event(None, finish, &mut out).unwrap();
    assert_eq!(names(&out).last().unwrap(), "content_block_stop");
    assert!(!m.is_done());
    m.on_event(None, b"[DONE]", &mut out).unwrap();
    assert_eq!(names(&out)[4..], ["message_delta", "message_stop"]);
    assert_eq!(m.usage(), None);
    let delta = js(&split_sse(std::str::from_utf8(&out).unwrap())[4].1);
    assert_eq!(delta["usage"], json!({"output_tokens": 0}));

    // The body ends after the finish chunk without [DONE]: finish() completes it.
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(None, role, &mut out).unwrap();
    m.on_event(None, finish, &mut out).unwrap();
    assert!(m.finish(&mut out));
    check_anthropic_stream(&out);

    // Cut before the finish: finish() says so and writes nothing.
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(None, role, &mut out).unwrap();
    let before = out.len();
    assert!(!m.finish(&mut out));
    assert_eq!(out.len(), before);
}

#[test]
fn anthropic_stream_cut_short() {
    let events = split_sse(include_str!("fixtures/anthropic_stream_text.sse"));
    // Cut before message_delta: incomplete.
    let mut m = AnthropicToOpenAiStream::new("c", true);
    let mut out = Vec::new();
    for (name, data) in &events[..5] {
        m.on_event(
            name.as_deref().map(str::as_bytes),
            data.as_bytes(),
            &mut out,
        )
        .unwrap();
    }
    assert!(!m.finish(&mut out));
    assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    // Cut after message_delta: the usage chunk and [DONE] still go out.
    let mut m = AnthropicToOpenAiStream::new("c", true);
    let mut out = Vec::new();
    for (name, data) in &events[..7] {
        m.on_event(
            name.as_deref().map(str::as_bytes),
            data.as_bytes(),
            &mut out,
        )
        .unwrap();
    }
    assert!(m.finish(&mut out));
    check_openai_stream(&out, true);
}

#[test]
fn streams_skip_noise_and_report_bad_json() {
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    m.on_event(None, b"", &mut out).unwrap();
    m.on_event(None, b"  \n", &mut out).unwrap();
    assert!(out.is_empty());
    let e = m.on_event(None, b"{not json", &mut out).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("stream event is not valid JSON: "),
        "{e}"
    );

    let mut m = AnthropicToOpenAiStream::new("c", false);
    m.on_event(Some(b"ping"), br#"{"type": "ping"}"#, &mut out)
        .unwrap();
    m.on_event(
        Some(b"future_event"),
        br#"{"type":"future_event","x":1}"#,
        &mut out,
    )
    .unwrap();
    assert!(out.is_empty());
    assert!(m.on_event(None, b"[DONE", &mut out).is_err());
    // A data object without `type` is read by the event name.
    m.on_event(
        Some(b"message_start"),
        br#"{"message":{"id":"msg_x"}}"#,
        &mut out,
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&out).contains("chatcmpl-x"));
}

#[test]
fn odd_openai_stream_shapes() {
    // Azure's leading prompt-filter chunk (no id, no choices), tool calls
    // without an index (one complete call per chunk), a text after calls,
    // choice index 1 ignored, a whole-input tool start.
    let chunks: [&[u8]; 7] = [
        br#"{"id":"","choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#,
        br#"{"id":"chatcmpl-z","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_a","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
        br#"{"id":"chatcmpl-z","choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_b","type":"function","function":{"name":"g","arguments":"{\"x\":1}"}}]}}]}"#,
        br#"{"id":"chatcmpl-z","choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
        br#"{"id":"chatcmpl-z","choices":[{"index":0,"delta":{"content":"done"}}]}"#,
        br#"{"id":"chatcmpl-z","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        b"[DONE]",
    ];
    let mut m = OpenAiToAnthropicStream::new("g");
    let mut out = Vec::new();
    for c in chunks {
        m.on_event(None, c, &mut out).unwrap();
    }
    check_anthropic_stream(&out);
    let events: Vec<Value> = split_sse(std::str::from_utf8(&out).unwrap())
        .iter()
        .map(|e| js(&e.1))
        .collect();
    assert!(events[0]["message"]["id"]
        .as_str()
        .unwrap()
        .starts_with("msg_sluice"));
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| &e["content_block"])
        .collect();
    assert_eq!(starts[0]["id"], "call_a");
    assert_eq!(starts[1]["id"], "call_b");
    assert_eq!(starts[2]["type"], "text");
    assert!(!String::from_utf8_lossy(&out).contains("other choice"));
}

#[test]
fn json_strings_are_escaped_like_serde() {
    let mut all = String::new();
    for c in (0u8..0x80).map(char::from) {
        all.push(c);
    }
    all.push_str("é – 😀 \u{2028}");
    for s in [all.as_str(), "", "plain", "\"", "\\", "a\u{7f}b"] {
        let mut out = Vec::new();
        push_json_str(&mut out, s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(s).unwrap()
        );
    }
}
