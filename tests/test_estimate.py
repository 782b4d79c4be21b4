"""The estimate is an upper bound: checked against the exact tokenizers (tiktoken's
cl100k_base and o200k_base, the Claude and DeepSeek tokenizers litellm ships) on the
corpus in tests/data/token_corpus and on generated text, and against the prompt tokens
the fake provider reports over real HTTP."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import unicodedata
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.jobs import CompletionJob
from schemas.money import NANOUSD_PER_USD
from worker.estimate import (
    ANTHROPIC_FRAMING,
    OPENAI_FRAMING,
    OTHER_FRAMING,
    estimate,
    framing_for,
    image_token_bound,
    prompt_token_bound,
    utf8_length,
)
from worker.models import ModelEntry, TokenizerFamily
from worker.prices import ModelPrice


def _bundled_tokenizers() -> Path:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"


TOKENIZERS = _bundled_tokenizers()
# tiktoken reads its BPE files from litellm's copies, never from the network.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TOKENIZERS))

import tiktoken  # noqa: E402

CORPUS = Path(__file__).parent / "data" / "token_corpus"
CORPUS_FILES = sorted(p for p in CORPUS.iterdir() if p.name != "README.md")
ENCODINGS = ("cl100k_base", "o200k_base")
PRICE = ModelPrice(Decimal("0.00000015"), Decimal("0.0000006"))  # gpt-4o-mini


def corpus_text(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as file:  # keep \r\n and lone \r
        return file.read()


def entry(
    family: TokenizerFamily = "openai",
    *,
    model: str = "openai/gpt-4o-mini",
    price: ModelPrice = PRICE,
    max_output_tokens: int | None = None,
) -> ModelEntry:
    return ModelEntry(
        name="m",
        litellm_params={"model": model},
        price=price,
        max_output_tokens=max_output_tokens,
        tokenizer_family=family,
    )


def make_job(messages: list[dict[str, Any]], **fields: Any) -> CompletionJob:
    return CompletionJob.model_validate(
        {"schema_version": 1, "job_id": "j-1", "user_id": "u", "model": "m", "messages": messages}
        | fields
    )


def openai_chat_tokens(encoding: tiktoken.Encoding, messages: list[dict[str, str]]) -> int:
    """OpenAI's count of a chat prompt: every field of every message, 3 per message, 1 more
    per name, and 3 priming the reply."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode_ordinary(value))
            if key == "name":
                total += 1
    return total


@pytest.fixture(scope="module", params=ENCODINGS)
def encoding(request: pytest.FixtureRequest) -> tiktoken.Encoding:
    return tiktoken.get_encoding(request.param)


def conversation(text: str) -> list[dict[str, str]]:
    """The text cut into a conversation of several messages, with roles and names."""
    lines = text.splitlines(keepends=True) or [text]
    roles = ("system", "user", "assistant", "user", "developer")
    messages: list[dict[str, str]] = []
    for i in range(0, len(lines), 7):
        message = {"role": roles[len(messages) % len(roles)], "content": "".join(lines[i : i + 7])}
        if len(messages) % 3 == 1:
            message["name"] = f"speaker_{len(messages)}"
        messages.append(message)
    return messages


# --- the bound against exact tokenizers -------------------------------------------------


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_bound_covers_openai_count_of_each_corpus_file(
    path: Path, encoding: tiktoken.Encoding
) -> None:
    text = corpus_text(path)
    for messages in ([{"role": "user", "content": text}], conversation(text)):
        exact = openai_chat_tokens(encoding, messages)
        bound = estimate(make_job(messages), entry(), 16).prompt_tokens_bound
        assert bound >= exact, (path.name, bound, exact)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_text_tokens_never_exceed_utf8_bytes(path: Path, encoding: tiktoken.Encoding) -> None:
    text = corpus_text(path)
    assert len(encoding.encode_ordinary(text)) <= utf8_length(text) == len(text.encode())


roles = st.sampled_from(["system", "user", "assistant", "developer"])
any_text = st.text(max_size=300)  # every code point but surrogates
emoji_text = st.text(
    st.one_of(
        st.characters(min_codepoint=0x1F000, max_codepoint=0x1FAFF),
        st.sampled_from(["\u200d", "\ufe0f", "\u20e3", " ", "\U000e0067", "\U0001f3fb"]),
    ),
    max_size=100,
)
mixed_text = st.lists(st.one_of(any_text, emoji_text), max_size=4).map("".join)
messages_strategy = st.lists(
    st.fixed_dictionaries(
        {"role": roles, "content": mixed_text},
        optional={"name": st.text(min_size=1, max_size=20)},
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=messages_strategy)
def test_bound_covers_openai_count_of_any_unicode_conversation(
    messages: list[dict[str, str]],
) -> None:
    bound = estimate(make_job(messages), entry(), 16).prompt_tokens_bound
    for name in ENCODINGS:
        assert bound >= openai_chat_tokens(tiktoken.get_encoding(name), messages)


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.one_of(st.integers(0xD800, 0xDFFF).map(chr), st.characters()), max_size=50
    ).map("".join)
)
def test_lone_surrogates_are_counted_like_their_replacement(text: str) -> None:
    # JSON may carry lone surrogates; tiktoken replaces them with U+FFFD (3 bytes).
    bound = prompt_token_bound(
        [text], 0, framing=dataclasses.replace(OPENAI_FRAMING, base_tokens=0)
    )
    for name in ENCODINGS:
        assert bound >= len(tiktoken.get_encoding(name).encode_ordinary(text))


# --- other tokenizer families -----------------------------------------------------------


@pytest.fixture(scope="module")
def claude_tokenizer() -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(TOKENIZERS / "anthropic_tokenizer.json"))


@pytest.fixture(scope="module")
def deepseek_tokenizer() -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(TOKENIZERS / "deepseek_tokenizer.json"))


def text_only(framing: Any) -> Any:
    """The framing's text bound alone: no allowance per message, text or request."""
    return dataclasses.replace(framing, base_tokens=0, per_message_tokens=0, per_text_tokens=0)


def test_nfkc_expansion_breaks_the_plain_byte_bound_for_claude(claude_tokenizer: Any) -> None:
    text = "\ufdfa" * 10  # 30 bytes; NFKC makes it 330
    tokens = len(claude_tokenizer.encode(text, add_special_tokens=False).ids)
    assert tokens > prompt_token_bound([text], 0, framing=text_only(OPENAI_FRAMING))
    assert tokens <= prompt_token_bound([text], 0, framing=text_only(ANTHROPIC_FRAMING))


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_nfkc_byte_bound_covers_claude_and_deepseek_tokenizers_on_corpus(
    path: Path, claude_tokenizer: Any, deepseek_tokenizer: Any
) -> None:
    text = corpus_text(path)
    claude = len(claude_tokenizer.encode(text, add_special_tokens=False).ids)
    deepseek = len(deepseek_tokenizer.encode(text, add_special_tokens=False).ids)
    assert claude <= prompt_token_bound([text], 0, framing=text_only(ANTHROPIC_FRAMING))
    assert deepseek <= prompt_token_bound([text], 0, framing=text_only(OTHER_FRAMING))


@settings(max_examples=200, deadline=None)
@given(text=mixed_text)
def test_nfkc_byte_bound_covers_claude_and_deepseek_tokenizers_on_any_text(
    text: str, claude_tokenizer: Any, deepseek_tokenizer: Any
) -> None:
    claude = len(claude_tokenizer.encode(text, add_special_tokens=False).ids)
    deepseek = len(deepseek_tokenizer.encode(text, add_special_tokens=False).ids)
    assert claude <= prompt_token_bound([text], 0, framing=text_only(ANTHROPIC_FRAMING))
    assert deepseek <= prompt_token_bound([text], 0, framing=text_only(OTHER_FRAMING))


def all_characters() -> Iterator[str]:
    for code in range(0x110000):
        if not 0xD800 <= code < 0xE000:
            yield chr(code)


def test_nfkd_growing_holds_exactly_the_characters_nfkd_lengthens() -> None:
    from worker.estimate import _nfkd_growing

    pattern = _nfkd_growing()
    for char in all_characters():
        grows = len(unicodedata.normalize("NFKD", char).encode()) > len(char.encode())
        assert bool(pattern.match(char)) == grows, hex(ord(char))


def test_canonical_composition_never_lengthens_utf8() -> None:
    # The shortcut's premise: NFKC is NFKD then composition, and every composition step
    # replaces a pair by a character no longer than the pair.
    for char in all_characters():
        mapping = unicodedata.decomposition(char)
        if not mapping or mapping.startswith("<"):
            continue
        parts = "".join(chr(int(code, 16)) for code in mapping.split())
        if len(parts) == 2 and unicodedata.normalize("NFC", parts) == char:  # a composite
            assert len(char.encode()) <= len(parts.encode()), hex(ord(char))
    # Hangul syllables compose algorithmically: L + V -> LV, LV + T -> LVT, 3 bytes each.
    assert len("\uac00".encode()) <= len("\u1100\u1161".encode())


composable = st.text(
    st.one_of(
        st.characters(max_codepoint=0x036F),  # Latin and combining diacritics
        st.sampled_from("\u1100\u1161\u11a8\uac00\u0323\u0301\u3099\u304b\uff0c\ufdfa\u337f\ufb01"),
        st.characters(min_codepoint=0x3000, max_codepoint=0x30FF),  # kana, with (semi-)voicing
        st.characters(min_codepoint=0xFF00, max_codepoint=0xFFEF),  # half- and full-width
        st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Hangul syllables
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(text=composable)
def test_nfkc_bound_covers_both_forms_of_any_text(text: str) -> None:
    bound = prompt_token_bound([text], 0, framing=text_only(ANTHROPIC_FRAMING))
    assert bound >= len(text.encode())
    assert bound >= len(unicodedata.normalize("NFKC", text).encode())


def test_families_get_their_framing_and_unknown_ones_the_most_generous() -> None:
    assert framing_for("openai") is OPENAI_FRAMING
    assert framing_for("anthropic") is ANTHROPIC_FRAMING
    assert framing_for("other") is OTHER_FRAMING
    assert framing_for("something-new") is OTHER_FRAMING


# --- the bound against the fake provider over HTTP --------------------------------------


def tool_conversation() -> list[dict[str, Any]]:
    arguments = json.dumps({"city": 'Zürich "centre"', "emoji": "🌦️", "ctl": "\u0001\t"})
    return [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "name": "alice", "content": [{"type": "text", "text": "Weather? ☔"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "☀"}'},
    ]


def fake_cases() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for path in CORPUS_FILES:
        text = corpus_text(path)
        yield path.name, [{"role": "user", "content": text}]
        yield f"{path.name}-conversation", conversation(text)
    yield "tool-calls", tool_conversation()


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", "gpt-4o-mini"])
async def test_bound_covers_fake_providers_prompt_tokens_over_http(
    fake_provider: Any, model: str
) -> None:
    async with aiohttp.ClientSession() as session:
        for case, messages in fake_cases():
            job = make_job(messages, max_tokens=4)
            body = {
                "model": model,
                "messages": [m.model_dump(exclude_none=True) for m in job.messages],
                "max_tokens": 4,
            }
            async with session.post(f"{fake_provider.url}/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                usage = (await response.json())["usage"]
            bound = estimate(job, entry(model=f"openai/{model}"), 16).prompt_tokens_bound
            assert bound >= usage["prompt_tokens"], (case, bound, usage)


async def test_bound_covers_prompt_tokens_of_a_litellm_call_through_the_provider(
    fake_provider: Any,
) -> None:
    from worker.provider import Provider

    model_entry = dataclasses.replace(
        entry(),
        litellm_params={
            "model": "openai/gpt-4o-mini",
            "api_base": fake_provider.url,
            "api_key": "sk-fake",
        },
    )
    job = make_job(conversation(corpus_text(CORPUS / "emoji.txt")) + tool_conversation())
    messages = [m.model_dump(exclude_none=True) for m in job.messages]
    provider = Provider(timeout_s=10, max_retries=0, backoff_s=0, backoff_max_s=0)
    completion = await provider.complete(model_entry, messages, {}, 8)
    wanted = estimate(job, model_entry, 8)
    assert 0 < completion.prompt_tokens <= wanted.prompt_tokens_bound
    assert completion.completion_tokens <= wanted.max_output_tokens * wanted.n


# --- the estimate's arithmetic ----------------------------------------------------------


def exact_cost_nanousd(price: ModelPrice, prompt: int, completion: int) -> Decimal:
    usd = price.input_usd_per_token * prompt + price.output_usd_per_token * completion
    return usd * NANOUSD_PER_USD


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.text(max_size=200),
    max_tokens=st.integers(1, 100_000),
    n=st.integers(1, 16),
    input_price=st.decimals("0", "0.0001", places=12),
    output_price=st.decimals("0", "0.0001", places=12),
)
def test_cost_is_the_exact_cost_rounded_up(
    prompt: str, max_tokens: int, n: int, input_price: Decimal, output_price: Decimal
) -> None:
    price = ModelPrice(input_price, output_price)
    job = make_job([{"role": "user", "content": prompt}], max_tokens=max_tokens, params={"n": n})
    wanted = estimate(job, entry(price=price), 16)
    exact = exact_cost_nanousd(price, wanted.prompt_tokens_bound, max_tokens * n)
    assert exact <= wanted.cost_nanousd < exact + 1
    assert wanted.tokens == wanted.prompt_tokens_bound + max_tokens * n


def test_a_fraction_of_a_nano_usd_is_reserved_as_a_whole_one() -> None:
    price = ModelPrice(Decimal("0.000000000075"), Decimal("0"))  # 0.075 nano-USD per token
    job = make_job([{"role": "user", "content": ""}], max_tokens=1)
    wanted = estimate(job, entry(price=price), 1)
    assert wanted.prompt_tokens_bound == len("user") + 4 + 8  # role, message, request
    assert wanted.cost_nanousd == 2  # 1.2 nano-USD, rounded up (half up would give 1)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(mixed_text, max_size=5), extra=mixed_text, count=st.integers(0, 50))
def test_bound_grows_with_text_and_messages(texts: list[str], extra: str, count: int) -> None:
    for framing in (OPENAI_FRAMING, ANTHROPIC_FRAMING, OTHER_FRAMING):
        base = prompt_token_bound(texts, count, framing=framing)
        assert prompt_token_bound([*texts, extra], count, framing=framing) >= base
        assert prompt_token_bound(texts, count + 1, framing=framing) > base


@settings(max_examples=100, deadline=None)
@given(prompt=mixed_text, more=mixed_text, max_tokens=st.integers(1, 10_000), n=st.integers(1, 15))
def test_cost_grows_with_prompt_max_tokens_and_n(
    prompt: str, more: str, max_tokens: int, n: int
) -> None:
    def cost(text: str, tokens: int, choices: int) -> int:
        job = make_job(
            [{"role": "user", "content": text}], max_tokens=tokens, params={"n": choices}
        )
        return estimate(job, entry(), 16).cost_nanousd

    base = cost(prompt, max_tokens, n)
    assert cost(prompt + more, max_tokens, n) >= base
    assert cost(prompt, max_tokens + 1, n) > base
    assert cost(prompt, max_tokens, n + 1) > base


def test_output_cap_is_the_jobs_else_the_default_capped_by_the_model() -> None:
    messages = [{"role": "user", "content": "hi"}]
    capped = entry(max_output_tokens=100)
    assert estimate(make_job(messages, max_tokens=500), capped, 1024).max_output_tokens == 500
    assert estimate(make_job(messages), capped, 1024).max_output_tokens == 100
    assert estimate(make_job(messages), capped, 64).max_output_tokens == 64
    assert estimate(make_job(messages), entry(), 1024).max_output_tokens == 1024


def test_every_choice_is_paid_for() -> None:
    one = estimate(make_job([{"role": "user", "content": "hi"}], max_tokens=10), entry(), 1)
    three = estimate(
        make_job([{"role": "user", "content": "hi"}], max_tokens=10, params={"n": 3}), entry(), 1
    )
    assert three.n == 3
    assert three.tokens - three.prompt_tokens_bound == 30
    assert three.cost_nanousd > one.cost_nanousd


def test_tools_and_response_format_count_as_json_plus_a_wrapper() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    plain = make_job([{"role": "user", "content": "hi"}])
    with_tools = make_job([{"role": "user", "content": "hi"}], params={"tools": tools})
    added = (
        estimate(with_tools, entry(), 1).prompt_tokens_bound
        - estimate(plain, entry(), 1).prompt_tokens_bound
    )
    assert added == len(json.dumps(tools, separators=(",", ":"))) + OPENAI_FRAMING.tools_tokens


def test_images_are_bounded_per_model_and_detail() -> None:
    def with_image(detail: str | None) -> CompletionJob:
        url: dict[str, str] = {"url": "https://example.com/a.png"}
        if detail is not None:
            url["detail"] = detail
        content = [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": url},
        ]
        return make_job([{"role": "user", "content": content}])

    text_only_job = make_job([{"role": "user", "content": "what is this?"}])
    for model, high, low in [
        ("openai/gpt-4o", 1445, 85),
        ("openai/gpt-4o-mini", 48_169, 2833),
        ("openai/gpt-4.1-mini", 3780, 3780),
    ]:
        base = estimate(text_only_job, entry(model=model), 1).prompt_tokens_bound
        assert estimate(with_image(None), entry(model=model), 1).prompt_tokens_bound == base + high
        assert estimate(with_image("low"), entry(model=model), 1).prompt_tokens_bound == base + low
    assert image_token_bound("anthropic", "anthropic/claude-3-5-sonnet", "low") == 5000
    assert image_token_bound("other", "gemini/gemini-2.0-flash", None) == 8192
