"""The official ``openai`` SDK against a real sluice over TLS.

Each test calls sluice exactly as an application would (only ``base_url``,
the key and the trusted CA differ from talking to OpenAI) and checks the
answer against what the mock upstream says when asked directly with the
provider's key: sluice must relay content and usage unchanged, account
tokens in the audit log even when the client did not ask for usage, and map
its own rejections and upstream errors onto the statuses the SDK turns into
its typed exceptions.
"""

from __future__ import annotations

import base64
import struct

import openai
import pytest

from conftest import CONSUMER, MODELS, MOCK_KEY, CONSUMER_KEY, Gateway

CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say something deterministic, please."},
]
EMBED_INPUT = ["the quick brown fox", "jumps over the lazy dog", "sluice"]
EMBED_DIMENSIONS = 64


def usage_numbers(usage) -> dict:
    """prompt/completion/total tokens of an SDK usage object or a JSON dict."""
    get = (lambda k: usage[k]) if isinstance(usage, dict) else (lambda k: getattr(usage, k))
    return {k: get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


@pytest.fixture(scope="module")
def expected_chat(mock_direct) -> dict:
    """The mock's own non-streaming answer to MESSAGES."""
    answer = mock_direct("/v1/chat/completions", {"model": CHAT_MODEL, "messages": MESSAGES})
    assert answer["choices"][0]["message"]["content"], answer
    return answer


def expected_content(expected_chat: dict) -> str:
    return expected_chat["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------
# Chat completions.


def test_chat_non_streaming(client: openai.OpenAI, gateway: Gateway, expected_chat: dict):
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES)
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.model == expected_chat["model"]
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_content(expected_chat)
    assert choice.finish_reason == expected_chat["choices"][0]["finish_reason"]
    assert usage_numbers(completion.usage) == usage_numbers(expected_chat["usage"])

    request_id = raw.headers.get("x-request-id")
    assert request_id, f"no x-request-id on the response: {dict(raw.headers)}"
    record = gateway.audit_record(request_id)
    assert record["consumer"] == CONSUMER
    assert record["model"] == CHAT_MODEL
    assert record["provider"] == "mock"
    assert record["upstream_model"] == CHAT_MODEL
    assert record["stream"] is False
    assert record["status"] == 200
    assert record["usage_source"] == "provider"
    assert record["prompt_tokens"] == expected_chat["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == expected_chat["usage"]["completion_tokens"]


def test_chat_streaming_with_include_usage(client: openai.OpenAI, expected_chat: dict):
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 2, chunks

    *content_chunks, last = chunks
    assert last.choices == [], f"the usage chunk must have no choices: {last}"
    assert last.usage is not None, f"the last chunk carries no usage: {last}"
    assert usage_numbers(last.usage) == usage_numbers(expected_chat["usage"])

    assert all(c.usage is None for c in content_chunks), [c for c in content_chunks if c.usage]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks if c.choices)
    assert text == expected_content(expected_chat)
    finish = [c.choices[0].finish_reason for c in content_chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [expected_chat["choices"][0]["finish_reason"]]


def test_chat_streaming_without_usage_is_still_accounted(
    client: openai.OpenAI, gateway: Gateway, expected_chat: dict
):
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, stream=True
    )
    request_id = raw.headers.get("x-request-id")
    assert request_id, f"no x-request-id on the response: {dict(raw.headers)}"
    chunks = list(raw.parse())

    # The client did not ask for usage, so it must not get any ...
    assert chunks, "empty stream"
    assert [c for c in chunks if c.usage is not None] == []
    assert all(c.choices for c in chunks), "a chunk without choices reached the client"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected_content(expected_chat)

    # ... yet the provider's numbers are in the audit log.
    record = gateway.audit_record(request_id)
    assert record["stream"] is True
    assert record["status"] == 200
    assert record["consumer"] == CONSUMER
    assert record["usage_source"] == "provider", record
    assert record["prompt_tokens"] == expected_chat["usage"]["prompt_tokens"], record
    assert record["completion_tokens"] == expected_chat["usage"]["completion_tokens"], record
    assert record["ttft_ms"] is not None, record


def test_upstream_gets_provider_key_not_consumer_key(client: openai.OpenAI, gateway: Gateway, http_client):
    client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, extra_headers={"x-mock-tag": "key-check"}
    )
    stats = http_client.get(f"{gateway.mock_url}/mock/stats").json()
    last = stats["last_request"]
    assert last is not None, stats
    headers = {name.lower(): value for name, value in last["headers"]}
    assert headers.get("x-mock-tag") == "key-check", last  # it is our request
    assert headers.get("authorization") == f"Bearer {MOCK_KEY}", last
    assert CONSUMER_KEY not in repr(last), f"the consumer key leaked upstream: {last}"


# --------------------------------------------------------------------------
# Embeddings.


@pytest.fixture(scope="module")
def expected_embeddings(mock_direct) -> dict:
    return mock_direct(
        "/v1/embeddings",
        {
            "model": EMBED_MODEL,
            "input": EMBED_INPUT,
            "encoding_format": "float",
            "dimensions": EMBED_DIMENSIONS,
        },
    )


def test_embeddings_float(client: openai.OpenAI, expected_embeddings: dict):
    result = client.embeddings.create(
        model=EMBED_MODEL,
        input=EMBED_INPUT,
        encoding_format="float",
        dimensions=EMBED_DIMENSIONS,
    )
    assert result.object == "list"
    assert [d.index for d in result.data] == list(range(len(EMBED_INPUT)))
    for got, want in zip(result.data, expected_embeddings["data"]):
        assert isinstance(got.embedding, list)
        assert len(got.embedding) == EMBED_DIMENSIONS
        assert all(isinstance(x, float) for x in got.embedding)
        assert got.embedding == want["embedding"]
    assert result.usage.prompt_tokens == expected_embeddings["usage"]["prompt_tokens"]
    assert result.usage.total_tokens == expected_embeddings["usage"]["total_tokens"]


def test_embeddings_base64(client: openai.OpenAI, expected_embeddings: dict):
    result = client.embeddings.create(
        model=EMBED_MODEL,
        input=EMBED_INPUT,
        encoding_format="base64",
        dimensions=EMBED_DIMENSIONS,
    )
    assert len(result.data) == len(EMBED_INPUT)
    for got, want in zip(result.data, expected_embeddings["data"]):
        packed = got.embedding
        assert isinstance(packed, str), f"expected a base64 string, got {type(packed)}"
        raw = base64.b64decode(packed, validate=True)
        assert len(raw) == 4 * EMBED_DIMENSIONS  # little-endian float32 each
        floats = struct.unpack(f"<{EMBED_DIMENSIONS}f", raw)
        # JSON floats are the shortest text for a float32; base64 is its bits.
        assert list(floats) == pytest.approx(want["embedding"], rel=1e-6, abs=1e-7)
    assert result.usage.prompt_tokens == expected_embeddings["usage"]["prompt_tokens"]


# --------------------------------------------------------------------------
# Models.


def test_models_list(client: openai.OpenAI):
    ids = [m.id for m in client.models.list()]
    assert set(MODELS) <= set(ids), ids
    assert len(ids) == len(set(ids)), f"duplicates: {ids}"


# --------------------------------------------------------------------------
# Errors, as the SDK sees them.


def test_wrong_key_is_authentication_error(gateway: Gateway, http_client):
    bad = openai.OpenAI(
        base_url=gateway.base_url, api_key="sk-not-a-key", http_client=http_client, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert err.value.status_code == 401
    assert isinstance(err.value.body, dict) and err.value.body.get("message"), err.value.body


def test_unknown_model_is_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert err.value.status_code == 404
    assert isinstance(err.value.body, dict) and err.value.body.get("message"), err.value.body


def test_upstream_429_is_rate_limit_error(client: openai.OpenAI):
    with pytest.raises(openai.RateLimitError) as err:
        client.with_options(max_retries=0).chat.completions.create(
            model=CHAT_MODEL,
            messages=MESSAGES,
            extra_headers={"x-mock-status": "429", "x-mock-retry-after": "1"},
        )
    assert err.value.status_code == 429
    assert err.value.response.headers.get("retry-after") == "1", dict(err.value.response.headers)
