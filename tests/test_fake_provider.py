"""The fake provider over real HTTP: OpenAI's response shape and usage rules, settable
errors, run-time configuration and counters."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tiktoken

from worker.dev.fake_provider import (
    FakeProviderConfig,
    FakeProviderServer,
    count_prompt_tokens,
    start_fake_provider,
)

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "name": "alice", "content": "Hello, world! How many tokens is this?"},
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    server = await start_fake_provider(FakeProviderConfig(output_tokens=10, seed=7))
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(
    http: aiohttp.ClientSession, server: FakeProviderServer, **body: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    async with http.post(f"{server.url}/chat/completions", json=payload) as response:
        return response.status, await response.json(), response


def official_encoding(name: str, monkeypatch: pytest.MonkeyPatch) -> tiktoken.Encoding:
    """tiktoken's own encoding, read from litellm's bundled BPE files (never fetched)."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(root / "litellm_core_utils" / "tokenizers"))
    return tiktoken.get_encoding(name)


def openai_chat_tokens(encoding: tiktoken.Encoding, messages: list[dict[str, str]]) -> int:
    """OpenAI's published recipe (openai-cookbook, How to count tokens with tiktoken)."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value))
            if key == "name":
                total += 1
    return total


@pytest.mark.parametrize(
    ("model", "encoding_name", "expected"),
    [("gpt-4o-mini", "o200k_base", 29), ("gpt-3.5-turbo", "cl100k_base", 29)],
)
async def test_prompt_tokens_follow_openai_chat_counting(
    fake: FakeProviderServer,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    encoding_name: str,
    expected: int,
) -> None:
    # By hand: system 3 + "system" 1 + "You are a helpful assistant." 6 = 10; user 3 + "user" 1
    # + "alice" 1 + name 1 + "Hello, world! How many tokens is this?" 10 = 16; priming 3.
    status, body, _ = await chat(http, fake, model=model)

    assert status == 200
    assert body["usage"]["prompt_tokens"] == expected
    encoding = official_encoding(encoding_name, monkeypatch)
    assert openai_chat_tokens(encoding, MESSAGES) == expected


def test_o200k_and_cl100k_match_tiktoken_on_varied_text(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [
        "Plain English, with punctuation!",
        "naïve café — 東京 ü 😀 \n\n  indented\tcode() {return 42;}",
        "<|endoftext|> is just text here",
        "1234567890 3.14159 don't I'll WE'RE",
    ]
    counts: dict[str, list[int]] = {}
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        encoding = official_encoding(name, monkeypatch)
        for text in texts:
            messages = [{"role": "user", "content": text}]
            expected = 3 + 3 + len(encoding.encode("user")) + len(encoding.encode_ordinary(text))
            counts.setdefault(model, []).append(count_prompt_tokens(messages, model))
            assert counts[model][-1] == expected

    assert counts["gpt-4o"] != counts["gpt-4"]  # the model picks the encoding


def test_content_parts_count_their_text() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello, world!"}]}]
    plain = [{"role": "user", "content": "Hello, world!"}]
    assert count_prompt_tokens(parts, "gpt-4o") == count_prompt_tokens(plain, "gpt-4o")


def test_fast_counting_estimates_by_characters() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert count_prompt_tokens(messages, "gpt-4o", "fast") == 3 + 3 + 1 + 100


async def test_response_has_the_openai_chat_completion_shape(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await chat(http, fake)

    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": " hello" * 10}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_max_tokens_caps_the_reply_and_sets_finish_reason_length(
    fake: FakeProviderServer, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, body, _ = await chat(http, fake, max_tokens=3)

    assert status == 200
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"
    content = body["choices"][0]["message"]["content"]
    assert len(official_encoding("o200k_base", monkeypatch).encode(content)) == 3


async def test_max_tokens_above_the_default_length_changes_nothing(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await chat(http, fake, max_tokens=500)

    assert body["usage"]["completion_tokens"] == 10
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_max_completion_tokens_is_honoured_like_max_tokens(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await chat(http, fake, max_completion_tokens=4)

    assert body["usage"]["completion_tokens"] == 4


async def test_n_choices_sum_their_completion_tokens(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await chat(http, fake, n=3, max_tokens=4)

    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12


async def test_stream_is_refused_with_an_openai_error_body(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await chat(http, fake, stream=True)

    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "stream"


async def test_huge_max_tokens_is_refused(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await chat(http, fake, max_tokens=1_000_001)

    assert status == 400
    assert body["error"]["param"] == "max_tokens"


async def test_malformed_json_is_refused(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{fake.url}/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert "error" in await response.json()


async def test_requests_without_messages_are_refused(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await chat(http, fake, messages=[])

    assert status == 400
    assert body["error"]["param"] == "messages"


async def test_path_without_v1_prefix_is_served(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    base = fake.url.removesuffix("/v1")
    payload = {"model": "gpt-4o-mini", "messages": MESSAGES}
    async with http.post(f"{base}/chat/completions", json=payload) as response:
        assert response.status == 200


async def test_models_endpoint_lists_the_configured_models(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{fake.url}/models") as response:
        body = await response.json()

    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == list(fake.config.models)


async def test_rate_429_of_one_answers_every_request_429_with_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    server = await start_fake_provider(FakeProviderConfig(rate_429=1.0, retry_after_s=2))
    try:
        for _ in range(5):
            status, body, response = await chat(http, server)
            assert status == 429
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert response.headers["Retry-After"] == "2"
            assert response.headers["retry-after-ms"] == "2000"
    finally:
        await server.stop()


async def test_error_rate_of_one_answers_every_request_500(
    http: aiohttp.ClientSession,
) -> None:
    server = await start_fake_provider(FakeProviderConfig(error_rate=1.0))
    try:
        statuses = [(await chat(http, server))[0] for _ in range(5)]
    finally:
        await server.stop()

    assert statuses == [500] * 5


async def test_rates_of_zero_answer_every_request_200(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    statuses = [(await chat(http, fake))[0] for _ in range(20)]

    assert statuses == [200] * 20


async def test_a_seed_makes_the_error_sequence_repeatable(http: aiohttp.ClientSession) -> None:
    sequences = []
    for _ in range(2):
        server = await start_fake_provider(FakeProviderConfig(rate_429=0.3, error_rate=0.3, seed=1))
        try:
            sequences.append([(await chat(http, server))[0] for _ in range(30)])
        finally:
            await server.stop()

    assert sequences[0] == sequences[1]
    assert {200, 429, 500} == set(sequences[0])


async def test_config_endpoint_starts_and_stops_a_429_storm(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    assert (await chat(http, fake))[0] == 200

    async with http.post(f"{fake.url.removesuffix('/v1')}/config", json={"rate_429": 1.0}) as r:
        assert r.status == 200
        assert (await r.json())["rate_429"] == 1.0
    assert (await chat(http, fake))[0] == 429

    async with http.post(f"{fake.url.removesuffix('/v1')}/config", json={"rate_429": 0}) as r:
        assert r.status == 200
    assert (await chat(http, fake))[0] == 200


async def test_config_endpoint_changes_output_tokens(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fake.url.removesuffix('/v1')}/config", json={"output_tokens": 2}):
        pass

    _, body, _ = await chat(http, fake)
    assert body["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    "change", [{"error_rate": 2}, {"latency_s": -1}, {"no_such_setting": 1}, {"seed": "x"}]
)
async def test_config_endpoint_refuses_invalid_settings_and_keeps_the_old_ones(
    fake: FakeProviderServer, http: aiohttp.ClientSession, change: dict[str, Any]
) -> None:
    before = fake.config.to_dict()

    async with http.post(f"{fake.url.removesuffix('/v1')}/config", json=change) as response:
        assert response.status == 400
        assert "error" in await response.json()

    assert fake.config.to_dict() == before


async def test_stats_count_requests_by_status_and_model_and_reset(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    base = fake.url.removesuffix("/v1")
    await chat(http, fake)
    await chat(http, fake, model="gpt-3.5-turbo", max_tokens=2)
    await chat(http, fake, stream=True)
    fake.update_config(error_rate=1.0)
    await chat(http, fake)

    async with http.get(f"{base}/stats") as response:
        stats = await response.json()
    assert stats["requests_total"] == 4
    assert stats["by_status"] == {"200": 2, "400": 1, "500": 1}
    assert stats["by_model"] == {"gpt-3.5-turbo": 1, "gpt-4o-mini": 3}
    assert stats["completions_succeeded"] == 2
    assert stats["completion_tokens_total"] == 12

    async with http.post(f"{base}/stats/reset") as response:
        assert (await response.json())["requests_total"] == 0
    assert fake.stats.to_dict()["by_status"] == {}


async def test_omit_usage_leaves_usage_out(http: aiohttp.ClientSession) -> None:
    server = await start_fake_provider(FakeProviderConfig(omit_usage=True))
    try:
        status, body, _ = await chat(http, server)
    finally:
        await server.stop()

    assert status == 200
    assert "usage" not in body


async def test_api_key_is_checked_when_configured(http: aiohttp.ClientSession) -> None:
    server = await start_fake_provider(FakeProviderConfig(api_key="sk-right"))
    try:
        payload = {"model": "gpt-4o-mini", "messages": MESSAGES}
        url = f"{server.url}/chat/completions"
        async with http.post(url, json=payload, headers={"Authorization": "Bearer sk-x"}) as r:
            assert r.status == 401
            assert "sk-x" in (await r.json())["error"]["message"]
        async with http.post(url, json=payload, headers={"Authorization": "Bearer sk-right"}) as r:
            assert r.status == 200
    finally:
        await server.stop()


async def test_latency_delays_the_reply(http: aiohttp.ClientSession) -> None:
    server = await start_fake_provider(FakeProviderConfig(latency_s=0.2))
    try:
        started = time.monotonic()
        status, _, _ = await chat(http, server)
        elapsed_s = time.monotonic() - started
    finally:
        await server.stop()

    assert status == 200
    assert elapsed_s >= 0.2


def test_invalid_config_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="rate_429"):
        FakeProviderConfig(rate_429=1.5)
    with pytest.raises(ValueError, match="output_tokens"):
        FakeProviderConfig(output_tokens=-1)


# --- vendor formats and the usage breakdown ---------------------------------------------


async def test_usage_breakdown_appears_in_openais_usage_details(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    fake.update_config(
        usage_breakdown={"cache_read_tokens": 10, "reasoning_tokens": 4, "audio_prompt_tokens": 3}
    )

    status, body, _ = await chat(http, fake, max_tokens=20)

    assert status == 200
    usage = body["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 10, "audio_tokens": 3}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 4}
    assert usage["completion_tokens"] == 10 + 4  # the reply's 10 tokens, reasoning on top
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_reasoning_stays_within_max_tokens(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    fake.update_config(usage_breakdown={"reasoning_tokens": 50})

    _, body, _ = await chat(http, fake, max_tokens=12)

    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}


async def test_breakdown_counts_are_capped_by_the_prompt(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    fake.update_config(usage_breakdown={"cache_read_tokens": 10**6})

    _, body, _ = await chat(http, fake)

    usage = body["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]


async def test_report_prompt_tokens_replaces_the_count(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    fake.update_config(report_prompt_tokens=300_000)

    _, body, _ = await chat(http, fake)

    assert body["usage"]["prompt_tokens"] == 300_000
    assert fake.stats.prompt_tokens_total == 300_000


async def test_anthropic_messages_are_answered_in_anthropics_format(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    fake.update_config(
        usage_breakdown={
            "cache_read_tokens": 6,
            "cache_creation_tokens": 5,
            "cache_creation_1h_tokens": 2,
        }
    )
    payload = {
        "model": "claude-sonnet-4-5",
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, world!"}]}],
        "max_tokens": 8,
    }

    async with http.post(f"{fake.root_url}/v1/messages", json=payload) as response:
        status, body = response.status, await response.json()

    assert status == 200
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0]["type"] == "text"
    assert body["stop_reason"] == "max_tokens"  # 8 < the 10 it would say
    usage = body["usage"]
    assert usage["output_tokens"] == 8
    assert usage["cache_read_input_tokens"] == 6 and usage["cache_creation_input_tokens"] == 5
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 3,
        "ephemeral_1h_input_tokens": 2,
    }
    assert fake.stats.prompt_tokens_total == usage["input_tokens"] + 6 + 5  # input excludes cache


async def test_anthropic_requests_without_max_tokens_are_refused(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    payload = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}

    async with http.post(f"{fake.root_url}/v1/messages", json=payload) as response:
        assert response.status == 400
        assert "max_tokens" in (await response.json())["error"]["message"]


async def test_gemini_generate_content_is_answered_in_geminis_format(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    fake.update_config(usage_breakdown={"cache_read_tokens": 3, "reasoning_tokens": 4})
    payload = {
        "contents": [{"role": "user", "parts": [{"text": "Hello, world!"}]}],
        "generationConfig": {"maxOutputTokens": 20},
    }
    url = f"{fake.root_url}/v1beta/models/gemini-2.5-pro:generateContent"

    async with http.post(url, json=payload) as response:
        status, body = response.status, await response.json()

    assert status == 200
    assert body["candidates"][0]["content"]["parts"][0]["text"]
    assert body["candidates"][0]["finishReason"] == "STOP"
    metadata = body["usageMetadata"]
    assert metadata["candidatesTokenCount"] == 10 and metadata["thoughtsTokenCount"] == 4
    assert metadata["cachedContentTokenCount"] == 3
    assert fake.stats.by_model["gemini-2.5-pro"] == 1


async def test_azure_deployments_are_answered_in_openais_format(
    fake: FakeProviderServer, http: aiohttp.ClientSession
) -> None:
    url = f"{fake.root_url}/openai/deployments/our-gpt4o/chat/completions?api-version=2024-10-21"

    async with http.post(url, json={"messages": MESSAGES}) as response:
        status, body = response.status, await response.json()

    assert status == 200
    assert body["model"] == "our-gpt4o"
    assert body["object"] == "chat.completion"


async def test_each_vendor_sends_the_api_key_in_its_own_header(http: aiohttp.ClientSession) -> None:
    server = await start_fake_provider(FakeProviderConfig(api_key="sk-right"))
    anthropic = {
        "model": "claude",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    }
    gemini = {"contents": [{"parts": [{"text": "hi"}]}]}
    try:
        base = server.root_url
        for url, payload, header in [
            (f"{base}/v1/messages", anthropic, "x-api-key"),
            (f"{base}/models/gemini-2.5-pro:generateContent", gemini, "x-goog-api-key"),
            (f"{base}/openai/deployments/d/chat/completions", {"messages": MESSAGES}, "api-key"),
        ]:
            async with http.post(url, json=payload, headers={header: "sk-x"}) as wrong:
                assert wrong.status == 401
            async with http.post(url, json=payload, headers={header: "sk-right"}) as right:
                assert right.status == 200, url
    finally:
        await server.stop()


def test_an_unknown_or_negative_breakdown_is_refused() -> None:
    with pytest.raises(ValueError, match=r"usage_breakdown\.cached is unknown"):
        FakeProviderConfig(usage_breakdown={"cached": 1})
    with pytest.raises(ValueError, match="reasoning_tokens must be an integer"):
        FakeProviderConfig(usage_breakdown={"reasoning_tokens": -1})
    with pytest.raises(ValueError, match="report_prompt_tokens"):
        FakeProviderConfig(report_prompt_tokens=0)
