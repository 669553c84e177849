"""Protocol translation through sluice, driven by the official SDKs over TLS.

Two crossings, both against the one mock upstream:

- the ``anthropic`` SDK calls sluice's ``/v1/messages`` for ``gpt-4o-mini``,
  which lives on the OpenAI-shaped provider ``mock``: sluice translates the
  request to Chat Completions and the answer (whole or streamed) back to
  Anthropic's Messages shape;
- the ``openai`` SDK calls ``/v1/chat/completions`` for ``claude-test``,
  which lives on the Anthropic provider ``anth`` (upstream name
  ``claude-sonnet-4-5``): the other way round.

The expected content and token numbers are what the mock answers when asked
directly, in its own wire format, for the conversation sluice sends it. Each
successful request is also looked up in the audit log by its
``x-request-id``: the provider that served it, and the provider's own
token counts (``usage_source: provider``), streams included.
"""

from __future__ import annotations

import json
from typing import Callable

import anthropic
import httpx
import httpx2
import openai
import pytest

from conftest import (
    ANTHROPIC_MODEL,
    ANTHROPIC_PROVIDER,
    ANTHROPIC_UPSTREAM_MODEL,
    CONSUMER,
    CONSUMER_KEY,
    MOCK_KEY,
    RATE_LIMITED_MODELS,
    Gateway,
)

#: Served by the OpenAI-shaped provider.
OPENAI_MODEL = "gpt-4o-mini"
OPENAI_PROVIDER = "mock"

SYSTEM = "You are a terse assistant."
USER = "Say something deterministic, please."
#: Far above the mock's default answer length, so it does not cut the answer.
MAX_TOKENS = 1024
#: Below it, so the answer is cut: stop_reason max_tokens / finish_reason length.
SHORT_MAX_TOKENS = 5

ANTHROPIC_MESSAGES = [{"role": "user", "content": USER}]
OPENAI_MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
]

TOOL_NAME = "get_weather"
TOOL_DESCRIPTION = "The current weather in a city."
TOOL_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}
ANTHROPIC_TOOLS = [
    {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}
]
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA},
    }
]
#: Makes the mock answer with a call of TOOL_NAME, input {"city": "Paris"}.
TOOL_HEADERS = {"x-mock-tool-call": TOOL_NAME}
TOOL_INPUT = {"city": "Paris"}

#: For scripted 429s: sluice rests a provider key that got 429, so these go
#: to spare providers of the same wire formats (see conftest).
LIMITED_OPENAI_MODEL = "gpt-limited"
LIMITED_ANTHROPIC_MODEL = "claude-limited"
assert RATE_LIMITED_MODELS[LIMITED_OPENAI_MODEL][1] == "openai"
assert RATE_LIMITED_MODELS[LIMITED_ANTHROPIC_MODEL][1] == "anthropic"


# --------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def anthropic_http(gateway: Gateway):
    # The anthropic SDK takes only an httpx2 client; it trusts the test CA.
    with httpx2.Client(verify=gateway.ssl_context, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def claude(gateway: Gateway, anthropic_http) -> anthropic.Anthropic:
    """The official anthropic SDK, unchanged except for base URL, key and CA."""
    return anthropic.Anthropic(
        base_url=gateway.origin,
        api_key=CONSUMER_KEY,
        http_client=anthropic_http,
        max_retries=0,
        timeout=30,
    )


@pytest.fixture(scope="module")
def upstream(gateway: Gateway) -> Callable[..., dict]:
    """POSTs straight to the mock with the provider key, in the wire format
    of ``path``: the answer sluice is expected to translate."""
    c = httpx.Client(base_url=gateway.mock_url, timeout=30)

    def post(path: str, body: dict, headers: dict | None = None) -> dict:
        if path == "/v1/messages":
            auth = {"x-api-key": MOCK_KEY, "anthropic-version": "2023-06-01"}
        else:
            auth = {"Authorization": f"Bearer {MOCK_KEY}"}
        r = c.post(path, json=body, headers={**auth, **(headers or {})})
        assert r.status_code == 200, f"mock {path}: {r.status_code} {r.text}"
        return r.json()

    yield post
    c.close()


def _openai_upstream(upstream, max_tokens: int, tools: bool = False) -> dict:
    body = {
        "model": OPENAI_MODEL,
        "messages": OPENAI_MESSAGES,
        "max_completion_tokens": max_tokens,
    }
    if tools:
        body["tools"] = OPENAI_TOOLS
    answer = upstream("/v1/chat/completions", body, TOOL_HEADERS if tools else None)
    assert answer["usage"]["prompt_tokens"] > 0, answer
    return answer


def _anthropic_upstream(upstream, max_tokens: int, tools: bool = False) -> dict:
    body = {
        "model": ANTHROPIC_UPSTREAM_MODEL,
        "max_tokens": max_tokens,
        "system": SYSTEM,
        "messages": ANTHROPIC_MESSAGES,
    }
    if tools:
        body["tools"] = ANTHROPIC_TOOLS
    answer = upstream("/v1/messages", body, TOOL_HEADERS if tools else None)
    assert answer["usage"]["input_tokens"] > 0, answer
    return answer


@pytest.fixture(scope="module")
def openai_text(upstream) -> dict:
    """The OpenAI-shaped provider's own answer to the conversation."""
    answer = _openai_upstream(upstream, MAX_TOKENS)
    assert answer["choices"][0]["message"]["content"], answer
    assert answer["choices"][0]["finish_reason"] == "stop", answer
    return answer


@pytest.fixture(scope="module")
def openai_short(upstream) -> dict:
    answer = _openai_upstream(upstream, SHORT_MAX_TOKENS)
    assert answer["choices"][0]["finish_reason"] == "length", answer
    return answer


@pytest.fixture(scope="module")
def openai_tool(upstream) -> dict:
    answer = _openai_upstream(upstream, MAX_TOKENS, tools=True)
    assert answer["choices"][0]["finish_reason"] == "tool_calls", answer
    return answer


@pytest.fixture(scope="module")
def anthropic_text(upstream) -> dict:
    """The Anthropic provider's own answer to the conversation."""
    answer = _anthropic_upstream(upstream, MAX_TOKENS)
    assert answer["stop_reason"] == "end_turn", answer
    return answer


@pytest.fixture(scope="module")
def anthropic_short(upstream) -> dict:
    answer = _anthropic_upstream(upstream, SHORT_MAX_TOKENS)
    assert answer["stop_reason"] == "max_tokens", answer
    return answer


@pytest.fixture(scope="module")
def anthropic_tool(upstream) -> dict:
    answer = _anthropic_upstream(upstream, MAX_TOKENS, tools=True)
    assert answer["stop_reason"] == "tool_use", answer
    return answer


def openai_content(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def anthropic_content(answer: dict) -> str:
    blocks = answer["content"]
    assert [b["type"] for b in blocks] == ["text"], blocks
    return blocks[0]["text"]


def anthropic_prompt_tokens(answer: dict) -> int:
    """Every prompt token, as OpenAI counts them: uncached + cache reads + writes."""
    u = answer["usage"]
    return (
        u["input_tokens"]
        + (u.get("cache_read_input_tokens") or 0)
        + (u.get("cache_creation_input_tokens") or 0)
    )


def check_audit(
    gateway: Gateway,
    request_id: str | None,
    *,
    model: str,
    provider: str,
    upstream_model: str,
    stream: bool,
    prompt: int,
    completion: int,
    endpoint: str,
) -> dict:
    assert request_id, "no x-request-id on the response"
    record = gateway.audit_record(request_id)
    want = {
        "consumer": CONSUMER,
        "endpoint": endpoint,
        "model": model,
        "provider": provider,
        "upstream_model": upstream_model,
        "stream": stream,
        "status": 200,
        "upstream_status": 200,
        "usage_source": "provider",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "error": None,
    }
    got = {k: record.get(k) for k in want}
    assert got == want, record
    return record


# --------------------------------------------------------------------------
# 1. anthropic SDK → /v1/messages → OpenAI-shaped provider.


def _messages_kwargs(max_tokens: int = MAX_TOKENS, **extra) -> dict:
    return {
        "model": OPENAI_MODEL,
        "max_tokens": max_tokens,
        "system": SYSTEM,
        "messages": ANTHROPIC_MESSAGES,
        **extra,
    }


def check_usage_from_openai(usage, expected: dict) -> None:
    want = expected["usage"]
    cached = (want.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    assert usage.input_tokens == want["prompt_tokens"] - cached, (usage, want)
    assert (usage.cache_read_input_tokens or 0) == cached, (usage, want)
    assert usage.output_tokens == want["completion_tokens"], (usage, want)


def test_messages_non_streaming(claude: anthropic.Anthropic, gateway: Gateway, openai_text: dict):
    raw = claude.messages.with_raw_response.create(**_messages_kwargs())
    message = raw.parse()

    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_"), message.id
    assert message.model == OPENAI_MODEL
    assert [b.type for b in message.content] == ["text"], message.content
    assert message.content[0].text == openai_content(openai_text)
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    check_usage_from_openai(message.usage, openai_text)

    check_audit(
        gateway,
        raw.headers.get("x-request-id"),
        model=OPENAI_MODEL,
        provider=OPENAI_PROVIDER,
        upstream_model=OPENAI_MODEL,
        stream=False,
        prompt=openai_text["usage"]["prompt_tokens"],
        completion=openai_text["usage"]["completion_tokens"],
        endpoint="/v1/messages",
    )


def test_messages_max_tokens_is_stop_reason_max_tokens(
    claude: anthropic.Anthropic, openai_short: dict
):
    message = claude.messages.create(**_messages_kwargs(SHORT_MAX_TOKENS))
    assert message.content[0].text == openai_content(openai_short)
    assert message.stop_reason == "max_tokens"
    check_usage_from_openai(message.usage, openai_short)
    assert message.usage.output_tokens == SHORT_MAX_TOKENS


def test_messages_stream_helper(claude: anthropic.Anthropic, gateway: Gateway, openai_text: dict):
    with claude.messages.stream(**_messages_kwargs()) as stream:
        request_id = stream.response.headers.get("x-request-id")
        assert stream.response.headers.get("content-type", "").startswith("text/event-stream")
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == openai_content(openai_text)
    assert final.id.startswith("msg_"), final.id
    assert final.model == OPENAI_MODEL
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    check_usage_from_openai(final.usage, openai_text)

    record = check_audit(
        gateway,
        request_id,
        model=OPENAI_MODEL,
        provider=OPENAI_PROVIDER,
        upstream_model=OPENAI_MODEL,
        stream=True,
        prompt=openai_text["usage"]["prompt_tokens"],
        completion=openai_text["usage"]["completion_tokens"],
        endpoint="/v1/messages",
    )
    assert record["ttft_ms"] is not None, record


def test_messages_stream_event_sequence(claude: anthropic.Anthropic, openai_text: dict):
    """The raw events, in Anthropic's grammar: message_start, one text block
    (start, deltas, stop), message_delta with the stop reason and usage,
    message_stop, and nothing after it."""
    events = [e for e in claude.messages.create(**_messages_kwargs(), stream=True) if e.type != "ping"]
    types = [e.type for e in events]

    assert types[0] == "message_start", types
    assert types[1] == "content_block_start", types
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"], types
    deltas = events[2:-3]
    assert deltas and all(t == "content_block_delta" for t in types[2:-3]), types

    start = events[0].message
    assert start.id.startswith("msg_") and start.role == "assistant", start
    assert start.content == [] and start.model == OPENAI_MODEL, start
    assert events[1].index == 0 and events[1].content_block.type == "text", events[1]
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas), deltas
    assert "".join(d.delta.text for d in deltas) == openai_content(openai_text)
    assert events[-3].index == 0

    message_delta = events[-2]
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == openai_text["usage"]["completion_tokens"]
    # The OpenAI provider reports the prompt only at its end, so the input
    # tokens must come with message_delta for the SDK's final message.
    assert message_delta.usage.input_tokens == openai_text["usage"]["prompt_tokens"]


def _tool_use_block(content) -> object:
    assert [b.type for b in content] == ["tool_use"], content
    return content[0]


def test_messages_tool_use(claude: anthropic.Anthropic, gateway: Gateway, openai_tool: dict):
    raw = claude.messages.with_raw_response.create(
        **_messages_kwargs(tools=ANTHROPIC_TOOLS), extra_headers=TOOL_HEADERS
    )
    message = raw.parse()

    block = _tool_use_block(message.content)
    assert block.name == TOOL_NAME
    assert block.input == TOOL_INPUT
    assert block.id, block
    assert message.stop_reason == "tool_use"
    assert message.id.startswith("msg_"), message.id
    check_usage_from_openai(message.usage, openai_tool)

    check_audit(
        gateway,
        raw.headers.get("x-request-id"),
        model=OPENAI_MODEL,
        provider=OPENAI_PROVIDER,
        upstream_model=OPENAI_MODEL,
        stream=False,
        prompt=openai_tool["usage"]["prompt_tokens"],
        completion=openai_tool["usage"]["completion_tokens"],
        endpoint="/v1/messages",
    )


def test_messages_tool_use_streaming(claude: anthropic.Anthropic, gateway: Gateway, openai_tool: dict):
    partials: list[str] = []
    raw_types: list[str] = []
    with claude.messages.stream(
        **_messages_kwargs(tools=ANTHROPIC_TOOLS), extra_headers=TOOL_HEADERS
    ) as stream:
        request_id = stream.response.headers.get("x-request-id")
        for event in stream:
            if event.type == "input_json":
                partials.append(event.partial_json)
            elif event.type in (
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ):
                raw_types.append(event.type)
                if event.type == "content_block_start":
                    assert event.content_block.type == "tool_use", event
                    assert event.content_block.name == TOOL_NAME, event
                if event.type == "content_block_delta":
                    assert event.delta.type == "input_json_delta", event
        final = stream.get_final_message()

    assert raw_types[:2] == ["message_start", "content_block_start"], raw_types
    assert raw_types[-3:] == ["content_block_stop", "message_delta", "message_stop"], raw_types
    # The mock streams the arguments in more than one fragment; the SDK
    # accumulates them into the block's input.
    assert len(partials) >= 2, partials
    assert json.loads("".join(partials)) == TOOL_INPUT, partials
    block = _tool_use_block(final.content)
    assert block.name == TOOL_NAME
    assert block.input == TOOL_INPUT
    assert block.id, block
    assert final.stop_reason == "tool_use"
    check_usage_from_openai(final.usage, openai_tool)

    check_audit(
        gateway,
        request_id,
        model=OPENAI_MODEL,
        provider=OPENAI_PROVIDER,
        upstream_model=OPENAI_MODEL,
        stream=True,
        prompt=openai_tool["usage"]["prompt_tokens"],
        completion=openai_tool["usage"]["completion_tokens"],
        endpoint="/v1/messages",
    )


def _anthropic_error_body(err: anthropic.APIStatusError, error_type: str) -> None:
    body = err.body
    assert isinstance(body, dict), body
    assert body.get("type") == "error", body
    assert body["error"]["type"] == error_type, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def test_messages_wrong_key_is_authentication_error(gateway: Gateway, anthropic_http):
    bad = anthropic.Anthropic(
        base_url=gateway.origin, api_key="sk-not-a-key", http_client=anthropic_http, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.create(**_messages_kwargs())
    assert err.value.status_code == 401
    _anthropic_error_body(err.value, "authentication_error")


def test_messages_unknown_model_is_not_found(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(**{**_messages_kwargs(), "model": "no-such-model"})
    assert err.value.status_code == 404
    _anthropic_error_body(err.value, "not_found_error")


@pytest.mark.parametrize(
    "status, exception, error_type",
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
def test_messages_upstream_error_status(
    claude: anthropic.Anthropic, gateway: Gateway, status, exception, error_type
):
    """An OpenAI-shaped error from the provider reaches the Anthropic client
    with its status and in Anthropic's error shape."""
    model = LIMITED_OPENAI_MODEL if status == 429 else OPENAI_MODEL
    with pytest.raises(exception) as err:
        claude.with_options(max_retries=0).messages.create(
            **{**_messages_kwargs(), "model": model},
            extra_headers={"x-mock-status": str(status), "x-mock-retry-after": "1"},
        )
    assert err.value.status_code == status
    _anthropic_error_body(err.value, error_type)
    if status == 429:
        assert err.value.response.headers.get("retry-after") == "1", dict(err.value.response.headers)

    record = gateway.audit_record(err.value.response.headers.get("x-request-id"))
    provider = RATE_LIMITED_MODELS[model][0] if status == 429 else OPENAI_PROVIDER
    assert record["provider"] == provider, record
    assert record["status"] == status and record["upstream_status"] == status, record
    assert record["usage_source"] == "none", record


# --------------------------------------------------------------------------
# 2. openai SDK → /v1/chat/completions → Anthropic provider.


def usage_numbers(usage) -> dict:
    get = (lambda k: usage[k]) if isinstance(usage, dict) else (lambda k: getattr(usage, k))
    return {k: get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def openai_usage_of(answer: dict) -> dict:
    prompt = anthropic_prompt_tokens(answer)
    completion = answer["usage"]["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _audit_anth(gateway: Gateway, request_id, answer: dict, stream: bool) -> dict:
    usage = openai_usage_of(answer)
    return check_audit(
        gateway,
        request_id,
        model=ANTHROPIC_MODEL,
        provider=ANTHROPIC_PROVIDER,
        upstream_model=ANTHROPIC_UPSTREAM_MODEL,
        stream=stream,
        prompt=usage["prompt_tokens"],
        completion=usage["completion_tokens"],
        endpoint="/v1/chat/completions",
    )


def test_chat_via_anthropic_non_streaming(client: openai.OpenAI, gateway: Gateway, anthropic_text: dict):
    # No max_tokens: sluice supplies Anthropic's required one.
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL, messages=OPENAI_MESSAGES
    )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-"), completion.id
    assert completion.model == ANTHROPIC_MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == anthropic_content(anthropic_text)
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert usage_numbers(completion.usage) == openai_usage_of(anthropic_text)

    _audit_anth(gateway, raw.headers.get("x-request-id"), anthropic_text, stream=False)


def test_chat_via_anthropic_max_tokens_is_length(client: openai.OpenAI, anthropic_short: dict):
    completion = client.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=OPENAI_MESSAGES, max_tokens=SHORT_MAX_TOKENS
    )
    assert completion.choices[0].message.content == anthropic_content(anthropic_short)
    assert completion.choices[0].finish_reason == "length"
    assert usage_numbers(completion.usage) == openai_usage_of(anthropic_short)
    assert completion.usage.completion_tokens == SHORT_MAX_TOKENS


def test_chat_via_anthropic_max_completion_tokens_is_length(client: openai.OpenAI, anthropic_short: dict):
    completion = client.chat.completions.create(
        model=ANTHROPIC_MODEL, messages=OPENAI_MESSAGES, max_completion_tokens=SHORT_MAX_TOKENS
    )
    assert completion.choices[0].message.content == anthropic_content(anthropic_short)
    assert completion.choices[0].finish_reason == "length"


def test_chat_via_anthropic_streaming_with_usage(
    client: openai.OpenAI, gateway: Gateway, anthropic_text: dict
):
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=OPENAI_MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert len(chunks) >= 2, chunks

    *content_chunks, last = chunks
    assert last.choices == [], f"the usage chunk must have no choices: {last}"
    assert last.usage is not None, f"the last chunk carries no usage: {last}"
    assert usage_numbers(last.usage) == openai_usage_of(anthropic_text)
    assert all(c.usage is None for c in content_chunks), [c for c in content_chunks if c.usage]
    assert all(c.choices for c in content_chunks), content_chunks

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == ANTHROPIC_MODEL for c in chunks)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-"), chunks
    assert content_chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == anthropic_content(anthropic_text)
    finish = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert finish == ["stop"], finish

    _audit_anth(gateway, raw.headers.get("x-request-id"), anthropic_text, stream=True)


def test_chat_via_anthropic_streaming_without_usage(
    client: openai.OpenAI, gateway: Gateway, anthropic_text: dict
):
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL, messages=OPENAI_MESSAGES, stream=True
    )
    request_id = raw.headers.get("x-request-id")
    chunks = list(raw.parse())

    assert chunks, "empty stream"
    assert [c for c in chunks if c.usage is not None] == []
    assert all(c.choices for c in chunks), "a chunk without choices reached the client"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == anthropic_content(anthropic_text)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finish == ["stop"], finish

    # Not asked for by the client, yet accounted from the provider's numbers.
    record = _audit_anth(gateway, request_id, anthropic_text, stream=True)
    assert record["ttft_ms"] is not None, record


def test_chat_via_anthropic_tool_calls(client: openai.OpenAI, gateway: Gateway, anthropic_tool: dict):
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=OPENAI_MESSAGES,
        tools=OPENAI_TOOLS,
        extra_headers=TOOL_HEADERS,
    )
    completion = raw.parse()
    choice = completion.choices[0]

    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1, choice.message
    call = calls[0]
    assert call.type == "function"
    # Tool call ids travel unchanged: the provider's toolu_… id.
    assert call.id.startswith("toolu_"), call.id
    assert call.function.name == TOOL_NAME
    assert json.loads(call.function.arguments) == TOOL_INPUT
    assert usage_numbers(completion.usage) == openai_usage_of(anthropic_tool)

    _audit_anth(gateway, raw.headers.get("x-request-id"), anthropic_tool, stream=False)


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "include-usage"])
def test_chat_via_anthropic_tool_calls_streaming(
    client: openai.OpenAI, gateway: Gateway, anthropic_tool: dict, include_usage: bool
):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=OPENAI_MESSAGES,
        tools=OPENAI_TOOLS,
        extra_headers=TOOL_HEADERS,
        stream=True,
        **extra,
    )
    request_id = raw.headers.get("x-request-id")
    chunks = list(raw.parse())

    calls: dict[int, dict] = {}
    fragments = 0
    finish = []
    for c in chunks:
        if not c.choices:
            continue
        choice = c.choices[0]
        if choice.finish_reason:
            finish.append(choice.finish_reason)
        for tc in choice.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                assert slot["id"] is None, f"call {tc.index} got a second id"
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                fragments += 1

    assert list(calls) == [0], calls
    assert calls[0]["id"], calls
    assert calls[0]["name"] == TOOL_NAME
    assert json.loads(calls[0]["arguments"]) == TOOL_INPUT, calls
    assert fragments >= 2, "the arguments should arrive as the provider streamed them"
    assert finish == ["tool_calls"], finish

    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1], usage_chunks
        assert chunks[-1].choices == []
        assert usage_numbers(chunks[-1].usage) == openai_usage_of(anthropic_tool)
    else:
        assert usage_chunks == []

    _audit_anth(gateway, request_id, anthropic_tool, stream=True)


@pytest.mark.parametrize(
    "upstream_status, status, exception",
    [
        (429, 429, openai.RateLimitError),
        # 529 (overloaded) is Anthropic's own; OpenAI clients get 503.
        (529, 503, openai.InternalServerError),
        (500, 500, openai.InternalServerError),
    ],
)
def test_chat_via_anthropic_upstream_error(
    client: openai.OpenAI, gateway: Gateway, upstream_status, status, exception
):
    model = LIMITED_ANTHROPIC_MODEL if upstream_status == 429 else ANTHROPIC_MODEL
    with pytest.raises(exception) as err:
        client.with_options(max_retries=0).chat.completions.create(
            model=model,
            messages=OPENAI_MESSAGES,
            extra_headers={"x-mock-status": str(upstream_status), "x-mock-retry-after": "1"},
        )
    assert err.value.status_code == status
    body = err.value.body
    # The SDK hands over the body's "error" object.
    assert isinstance(body, dict) and body.get("message"), body
    assert "type" in body and "code" in body, body
    if upstream_status == 429:
        assert body["type"] == "rate_limit_exceeded", body
        assert err.value.response.headers.get("retry-after") == "1", dict(err.value.response.headers)
    else:
        assert body["type"] == "server_error", body

    record = gateway.audit_record(err.value.response.headers.get("x-request-id"))
    provider = RATE_LIMITED_MODELS[model][0] if upstream_status == 429 else ANTHROPIC_PROVIDER
    assert record["provider"] == provider, record
    assert record["model"] == model, record
    assert record["upstream_status"] == upstream_status, record
    assert record["status"] == status, record
    assert record["usage_source"] == "none", record


# --------------------------------------------------------------------------
# What the provider is sent, and what comes back beyond the happy path.


def _last_upstream_request(http_client, gateway: Gateway, tag: str) -> tuple[dict, dict, dict]:
    """(request line, headers, JSON body) of the mock's last request, which
    must be the one tagged ``tag``."""
    stats = http_client.get(f"{gateway.mock_url}/mock/stats").json()
    last = stats["last_request"]
    assert last is not None, stats
    headers = {name.lower(): value for name, value in last["headers"]}
    assert headers.get("x-mock-tag") == tag, last
    assert CONSUMER_KEY not in repr(last), f"the consumer key leaked upstream: {last}"
    return last, headers, json.loads(last["body"])


def _text_of(content) -> str:
    """A string content, or the text of text blocks/parts joined."""
    if isinstance(content, str):
        return content
    assert isinstance(content, list), content
    assert all(b.get("type") == "text" for b in content), content
    return "".join(b["text"] for b in content)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_client_upstream_request_is_chat_completions(
    claude: anthropic.Anthropic, gateway: Gateway, http_client, stream: bool
):
    tag = f"anth-to-openai-{stream}"
    if stream:
        with claude.messages.stream(**_messages_kwargs(), extra_headers={"x-mock-tag": tag}) as s:
            s.until_done()
    else:
        claude.messages.create(**_messages_kwargs(), extra_headers={"x-mock-tag": tag})
    last, headers, body = _last_upstream_request(http_client, gateway, tag)

    assert last["method"] == "POST" and last["path"] == "/v1/chat/completions", last
    assert headers.get("authorization") == f"Bearer {MOCK_KEY}", headers
    assert "x-api-key" not in headers and "anthropic-version" not in headers, headers
    assert body["model"] == OPENAI_MODEL, body
    assert [m["role"] for m in body["messages"]] == ["system", "user"], body
    assert [_text_of(m["content"]) for m in body["messages"]] == [SYSTEM, USER], body
    assert body.get("max_completion_tokens", body.get("max_tokens")) == MAX_TOKENS, body
    assert bool(body.get("stream")) is stream, body
    if stream:
        # Only the usage chunk tells the numbers message_delta must carry.
        assert body.get("stream_options", {}).get("include_usage") is True, body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_client_upstream_request_is_messages(
    client: openai.OpenAI, gateway: Gateway, http_client, stream: bool
):
    tag = f"openai-to-anth-{stream}"
    result = client.chat.completions.create(
        model=ANTHROPIC_MODEL,
        messages=OPENAI_MESSAGES,
        stream=stream,
        extra_headers={"x-mock-tag": tag},
    )
    if stream:
        list(result)
    last, headers, body = _last_upstream_request(http_client, gateway, tag)

    assert last["method"] == "POST" and last["path"] == "/v1/messages", last
    assert headers.get("x-api-key") == MOCK_KEY, headers
    assert headers.get("anthropic-version"), headers
    assert "authorization" not in headers, headers
    assert body["model"] == ANTHROPIC_UPSTREAM_MODEL, body
    assert _text_of(body["system"]) == SYSTEM, body
    assert [m["role"] for m in body["messages"]] == ["user"], body
    assert _text_of(body["messages"][0]["content"]) == USER, body
    # Anthropic requires max_tokens; the client sent none, sluice supplies
    # quota.default_max_tokens (4096 unless configured).
    assert body["max_tokens"] == 4096, body
    assert bool(body.get("stream")) is stream, body
    assert "stream_options" not in body, body


def test_messages_cached_tokens(claude: anthropic.Anthropic, gateway: Gateway, openai_text: dict):
    """OpenAI's cached_tokens are Anthropic's cache_read_input_tokens, and
    are not in input_tokens."""
    cached = 4
    raw = claude.messages.with_raw_response.create(
        **_messages_kwargs(), extra_headers={"x-mock-cached-tokens": str(cached)}
    )
    usage = raw.parse().usage
    prompt = openai_text["usage"]["prompt_tokens"]
    assert usage.cache_read_input_tokens == cached, usage
    assert usage.input_tokens == prompt - cached, usage
    assert usage.output_tokens == openai_text["usage"]["completion_tokens"], usage
    record = gateway.audit_record(raw.headers.get("x-request-id"))
    assert (record["prompt_tokens"], record["cached_tokens"]) == (prompt, cached), record


def test_chat_via_anthropic_cached_tokens(client: openai.OpenAI, gateway: Gateway, anthropic_text: dict):
    """Anthropic's cache_read_input_tokens come back inside prompt_tokens
    and as prompt_tokens_details.cached_tokens."""
    cached = 4
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=OPENAI_MESSAGES,
        extra_headers={"x-mock-cached-tokens": str(cached)},
    )
    usage = raw.parse().usage
    prompt = anthropic_prompt_tokens(anthropic_text)
    assert usage.prompt_tokens == prompt, usage
    assert usage.prompt_tokens_details.cached_tokens == cached, usage
    record = gateway.audit_record(raw.headers.get("x-request-id"))
    assert (record["prompt_tokens"], record["cached_tokens"]) == (prompt, cached), record


def test_messages_tool_result_round_trip(claude: anthropic.Anthropic, upstream, openai_text: dict):
    """The second turn of a tool call: the assistant's tool_use and the
    user's tool_result become an assistant tool_calls message and a tool
    message; the answer is text again, counted as the mock counts the
    equivalent OpenAI conversation."""
    result_text = "18 degrees and sunny"
    message = claude.messages.create(
        model=OPENAI_MODEL,
        max_tokens=MAX_TOKENS,
        system=SYSTEM,
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": USER},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_01", "name": TOOL_NAME, "input": TOOL_INPUT}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": result_text}],
            },
        ],
    )
    equivalent = upstream(
        "/v1/chat/completions",
        {
            "model": OPENAI_MODEL,
            "tools": OPENAI_TOOLS,
            "messages": [
                *OPENAI_MESSAGES,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "toolu_01",
                            "type": "function",
                            "function": {"name": TOOL_NAME, "arguments": json.dumps(TOOL_INPUT)},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_01", "content": result_text},
            ],
        },
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == openai_content(openai_text)
    assert message.usage.input_tokens == equivalent["usage"]["prompt_tokens"], (message.usage, equivalent)


def test_chat_via_anthropic_tool_result_round_trip(client: openai.OpenAI, upstream, anthropic_text: dict):
    result_text = "18 degrees and sunny"
    completion = client.chat.completions.create(
        model=ANTHROPIC_MODEL,
        tools=OPENAI_TOOLS,
        messages=[
            *OPENAI_MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_01",
                        "type": "function",
                        "function": {"name": TOOL_NAME, "arguments": json.dumps(TOOL_INPUT)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_01", "content": result_text},
        ],
    )
    equivalent = upstream(
        "/v1/messages",
        {
            "model": ANTHROPIC_UPSTREAM_MODEL,
            "max_tokens": MAX_TOKENS,
            "system": SYSTEM,
            "tools": ANTHROPIC_TOOLS,
            "messages": [
                {"role": "user", "content": USER},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "call_01", "name": TOOL_NAME, "input": TOOL_INPUT}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "call_01", "content": result_text}],
                },
            ],
        },
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == anthropic_content(anthropic_text)
    assert completion.usage.prompt_tokens == anthropic_prompt_tokens(equivalent), (completion.usage, equivalent)


def test_messages_stream_upstream_error_status(claude: anthropic.Anthropic, gateway: Gateway):
    """A streamed request the provider refuses before streaming: the error
    status and Anthropic's error shape, raised at the call."""
    with pytest.raises(anthropic.OverloadedError) as err:
        claude.messages.create(**_messages_kwargs(), stream=True, extra_headers={"x-mock-status": "529"})
    assert err.value.status_code == 529
    _anthropic_error_body(err.value, "overloaded_error")
    record = gateway.audit_record(err.value.response.headers.get("x-request-id"))
    assert (record["stream"], record["upstream_status"], record["status"]) == (True, 529, 529), record


def test_chat_via_anthropic_stream_upstream_error_status(client: openai.OpenAI, gateway: Gateway):
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(
            model=ANTHROPIC_MODEL,
            messages=OPENAI_MESSAGES,
            stream=True,
            extra_headers={"x-mock-status": "529"},
        )
    assert err.value.status_code == 503
    assert isinstance(err.value.body, dict) and err.value.body.get("message"), err.value.body
    record = gateway.audit_record(err.value.response.headers.get("x-request-id"))
    assert (record["stream"], record["upstream_status"], record["status"]) == (True, 529, 503), record


def test_messages_stream_cut_by_provider_raises(claude: anthropic.Anthropic, gateway: Gateway):
    """The provider closes mid-stream: the Anthropic client gets an error
    event (the SDK raises) and never a message_stop, so a cut answer cannot
    pass for a whole one."""
    seen: list[str] = []
    with claude.messages.stream(
        **_messages_kwargs(), extra_headers={"x-mock-disconnect-after": "3"}
    ) as stream:
        assert stream.response.status_code == 200
        request_id = stream.response.headers.get("x-request-id")
        with pytest.raises(anthropic.APIStatusError) as err:
            for event in stream:
                seen.append(event.type)
    assert "message_stop" not in seen, seen
    assert "message_start" in seen, seen
    body = err.value.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert body["error"]["type"] in ("api_error", "overloaded_error"), body

    record = gateway.audit_record(request_id)
    assert record["provider"] == OPENAI_PROVIDER, record
    assert record["error"] is not None, record


def test_chat_via_anthropic_stream_cut_by_provider_raises(client: openai.OpenAI, gateway: Gateway):
    raw = client.chat.completions.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        messages=OPENAI_MESSAGES,
        stream=True,
        extra_headers={"x-mock-disconnect-after": "3"},
    )
    assert raw.status_code == 200
    request_id = raw.headers.get("x-request-id")
    chunks = []
    with pytest.raises(openai.APIError) as err:
        for chunk in raw.parse():
            chunks.append(chunk)
    assert chunks, "nothing arrived before the cut"
    assert not any(c.choices and c.choices[0].finish_reason for c in chunks), chunks
    assert err.value.message, err.value

    record = gateway.audit_record(request_id)
    assert record["provider"] == ANTHROPIC_PROVIDER, record
    assert record["error"] is not None, record


def test_messages_passthrough_to_anthropic_provider(
    claude: anthropic.Anthropic, gateway: Gateway, anthropic_text: dict
):
    """Same wire on both sides: no translation, the provider's own answer."""
    raw = claude.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS, system=SYSTEM, messages=ANTHROPIC_MESSAGES
    )
    message = raw.parse()
    assert message.content[0].text == anthropic_content(anthropic_text)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == anthropic_text["usage"]["input_tokens"]
    assert message.usage.output_tokens == anthropic_text["usage"]["output_tokens"]
    record = gateway.audit_record(raw.headers.get("x-request-id"))
    assert record["endpoint"] == "/v1/messages" and record["provider"] == ANTHROPIC_PROVIDER, record
    assert record["upstream_model"] == ANTHROPIC_UPSTREAM_MODEL and record["usage_source"] == "provider", record
    assert record["prompt_tokens"] == anthropic_prompt_tokens(anthropic_text), record

    with claude.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS, system=SYSTEM, messages=ANTHROPIC_MESSAGES
    ) as stream:
        request_id = stream.response.headers.get("x-request-id")
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == anthropic_content(anthropic_text)
    assert final.usage.input_tokens == anthropic_text["usage"]["input_tokens"]
    assert final.usage.output_tokens == anthropic_text["usage"]["output_tokens"]
    record = gateway.audit_record(request_id)
    assert record["endpoint"] == "/v1/messages" and record["provider"] == ANTHROPIC_PROVIDER, record
    assert record["usage_source"] == "provider", record
    assert record["prompt_tokens"] == anthropic_prompt_tokens(anthropic_text), record
    assert record["completion_tokens"] == anthropic_text["usage"]["output_tokens"], record


@pytest.mark.parametrize(
    "body, headers, status, error_type",
    [
        (b"{not json", {"x-api-key": CONSUMER_KEY}, 400, "invalid_request_error"),
        (b'{"max_tokens": 5, "messages": []}', {"x-api-key": CONSUMER_KEY}, 400, "invalid_request_error"),
        (b'{"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}', {}, 401, "authentication_error"),
    ],
    ids=["bad-json", "no-model", "no-key"],
)
def test_messages_rejections_are_anthropic_shaped(
    gateway: Gateway, anthropic_http, body: bytes, headers: dict, status: int, error_type: str
):
    """sluice's own refusals of a /v1/messages request, before any provider
    is chosen, still answer in the Anthropic error shape."""
    r = anthropic_http.post(
        f"{gateway.origin}/v1/messages",
        content=body,
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01", **headers},
    )
    assert r.status_code == status, r.text
    got = r.json()
    assert got.get("type") == "error" and got.get("error", {}).get("type") == error_type, got
