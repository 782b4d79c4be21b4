"""The pricebook: every chat model of litellm's bundled cost map priced as litellm prices
it (the conformance sweep), what is refused and why, model_info over the map, and usage
read from each vendor's real response format over HTTP."""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import run_without_network
from worker.dev.fake_provider import FakeProviderConfig, FakeProviderServer, start_fake_provider
from worker.errors import ConfigError
from worker.models import load_models
from worker.pricebook import cost_map_price, litellm_usage, price_of, usage_of
from worker.prices import ModelPrice, TokenUsage
from worker.provider import Provider, litellm

# isort: split

from litellm._internal_context import pinned_billing_time
from litellm.litellm_core_utils.litellm_logging import resolve_vertex_location_for_cost
from litellm.llms.openai_like.json_loader import JSONProviderRegistry
from litellm.types.utils import LlmProviders
from litellm.utils import ProviderConfigManager

CHAT_MODES = ("chat", "responses")
_THRESHOLD_KEY = re.compile(r"_above_(\d+)(k?)_tokens")


# --- the sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostMapModel:
    """A chat entry of the cost map, named the way a model list names it."""

    key: str
    model: str
    provider: str
    entry: Mapping[str, Any]


def _model_name(key: str, entry: Mapping[str, Any]) -> str | None:
    """``litellm_params.model`` for a cost-map entry; None when litellm cannot route it."""
    provider = str(entry.get("litellm_provider", ""))
    prefix = provider.split("-", 1)[0]  # vertex_ai-language-models -> vertex_ai
    if prefix == "bedrock_converse":
        prefix = "bedrock"
    head = key.split("/", 1)[0]
    model = key if "/" in key and head in (prefix, *litellm.provider_list) else f"{prefix}/{key}"
    head = model.split("/", 1)[0]
    if head not in litellm.provider_list and not JSONProviderRegistry.exists(head):
        return None
    return model


@cache
def cost_map_models() -> tuple[list[CostMapModel], list[str]]:
    """Every chat entry under the model name a model list gives it (``gpt-4o`` and
    ``openai/gpt-4o`` are one model), and the keys litellm cannot route (no provider)."""
    found: dict[str, CostMapModel] = {}
    unroutable = []
    for key, entry in litellm.model_cost.items():
        if not isinstance(entry, Mapping) or entry.get("mode") not in CHAT_MODES:
            continue
        model = _model_name(key, entry)
        if model is None:
            unroutable.append(key)
        elif model not in found or key == model:
            found[model] = CostMapModel(key, model, model.split("/", 1)[0], entry)
    return list(found.values()), unroutable


def _shapes(model: CostMapModel) -> Iterator[tuple[str, TokenUsage]]:
    """Usage shapes unlike the pricebook's own start-up ones (other sizes and splits)."""
    yield "plain", TokenUsage(1234, 321)
    yield "cache read", TokenUsage(1234, 321, cache_read_tokens=800)
    yield (
        "cache write",
        TokenUsage(
            1234,
            321,
            cache_creation_tokens=500,
            cache_creation_1h_tokens=200,
            cache_creation_12h_tokens=50,
        ),
    )
    yield "reasoning", TokenUsage(1234, 321, reasoning_tokens=200)
    entry = model.entry
    if any("audio" in key and "cost" in key for key in entry):
        yield "audio", TokenUsage(1234, 321, audio_prompt_tokens=300, audio_completion_tokens=100)
    mix = TokenUsage(
        1234,
        321,
        cache_read_tokens=300,
        cache_creation_tokens=200,
        cache_creation_1h_tokens=50,
        audio_prompt_tokens=100,
        image_prompt_tokens=40,
        reasoning_tokens=100,
        audio_completion_tokens=30,
        inference_geo="us" if entry.get("provider_specific_entry") else None,
        speed="fast" if entry.get("provider_specific_entry") else None,
    )
    yield "mix", mix
    thresholds = {
        int(match.group(1)) * (1000 if match.group(2) else 1)
        for key, value in entry.items()
        if value is not None and (match := _THRESHOLD_KEY.search(key))
    }
    for tier in entry.get("tiered_pricing") or ():
        thresholds.update(int(bound) for bound in tier.get("range", ()) if bound < 10**7)
    if thresholds:
        yield "300k prompt", replace(mix, prompt_tokens=300_000, cache_read_tokens=20_000)
    for threshold in sorted(thresholds):
        yield f"mix above {threshold}", replace(mix, prompt_tokens=max(threshold + 1, 1000))


def litellm_nanousd(model: CostMapModel, usage: TokenUsage) -> Decimal:
    """litellm's ``cost_per_token`` for ``usage``, prompt plus completion, in nano-USD, at
    the Vertex AI location litellm's logging bills a deployment without one at."""
    prompt_usd, completion_usd = litellm.cost_per_token(
        model=model.model,
        custom_llm_provider=model.provider,
        usage_object=litellm_usage(usage),
        vertex_location=resolve_vertex_location_for_cost(model.provider, {}, None, model.model),
    )
    return Decimal(repr(prompt_usd + completion_usd)).scaleb(9)


def half_up(nanousd: Decimal) -> int:
    return int(nanousd.to_integral_value(rounding=ROUND_HALF_UP))


@dataclass
class Sweep:
    priced: dict[str, ModelPrice]
    refused: dict[str, str]
    mismatches: list[str]
    boundaries: list[str]
    bound_failures: list[str]
    shapes: int
    cpu_s: float


@cache
def sweep() -> Sweep:
    started = time.process_time()
    models, _ = cost_map_models()
    priced: dict[str, ModelPrice] = {}
    refused: dict[str, str] = {}
    mismatches: list[str] = []
    boundaries: list[str] = []
    bound_failures: list[str] = []
    shapes = 0
    for model in models:
        try:
            price = price_of({"model": model.model}, {})
        except ConfigError as exc:
            refused[model.model] = str(exc)
            continue
        priced[model.model] = price
        for name, usage in _shapes(model):
            shapes += 1
            ours = price.cost_nanousd(usage)
            theirs = litellm_nanousd(model, usage)
            if ours != half_up(theirs):
                # Allowed only where the exact cost is a whole nano-USD and a half (which
                # rounds up) and litellm's float sum lands within float error below it.
                exact = price.cost_usd(usage).scaleb(9)
                where = f"{model.model}: {name}: worker {ours} (exact {exact}), litellm {theirs}"
                tie = exact % 1 == Decimal("0.5") and abs(theirs - exact) < Decimal("1e-6")
                (boundaries if tie else mismatches).append(where)
            bound = price.bound_nanousd(usage.prompt_tokens, usage.completion_tokens)
            if bound < ours:
                bound_failures.append(f"{model.model}: {name}: bound {bound} < cost {ours}")
    cpu_s = time.process_time() - started
    return Sweep(priced, refused, mismatches, boundaries, bound_failures, shapes, cpu_s)


def test_every_chat_model_of_the_cost_map_costs_what_litellm_charges() -> None:
    result = sweep()
    models, unroutable = cost_map_models()

    assert len(models) > 3000  # the bundled map's chat models, all of them
    assert not result.mismatches, (
        f"{len(result.mismatches)} usages priced unlike litellm:\n" + "\n".join(result.mismatches)
    )
    assert len(result.priced) + len(result.refused) == len(models)
    print(
        f"\nsweep: {len(models)} chat models ({len(unroutable)} more litellm cannot route), "
        f"{len(result.priced)} priced on {result.shapes} usages, {len(result.refused)} refused, "
        f"{len(result.boundaries)} one-nano-USD float ties at a half, {result.cpu_s:.1f} s CPU"
        + "".join(f"\n  tie: {tie}" for tie in result.boundaries)
    )


def test_every_reservation_of_the_sweep_holds_its_usages_cost() -> None:
    result = sweep()

    assert not result.bound_failures, "\n".join(result.bound_failures)


# --- refusals ------------------------------------------------------------------------------

_USAGE = TokenUsage(2000, 300, cache_read_tokens=500)


def _their_usd(model: CostMapModel, usage: Any, **kwargs: Any) -> float:
    prompt_usd, completion_usd = litellm.cost_per_token(
        model=model.model, custom_llm_provider=model.provider, usage_object=usage, **kwargs
    )
    return float(prompt_usd + completion_usd)


def _time_dependent(model: CostMapModel) -> str | None:
    """Evidence that the same tokens cost otherwise for a longer call or on another day."""
    entry = model.entry
    usage = litellm_usage(_USAGE)
    if any(entry.get(k) is not None for k in ("cost_per_second", "input_cost_per_second")):
        one = _their_usd(model, usage, response_time_ms=1000)
        two = _their_usd(model, usage, response_time_ms=2000)
        if one != two:
            return f"the same tokens cost {one} in 1 s and {two} in 2 s"
    if entry.get("off_peak_pricing") is not None:
        with pinned_billing_time(datetime(2026, 1, 6, 3, 0, tzinfo=UTC)):  # a Tuesday
            weekday = _their_usd(model, usage)
        with pinned_billing_time(datetime(2026, 1, 10, 3, 0, tzinfo=UTC)):  # a Saturday
            weekend = _their_usd(model, usage)
        if weekday != weekend:
            return f"the same tokens cost {weekday} on a Tuesday and {weekend} on a Saturday"
    return None


def _unpriceable_by_tokens(model: CostMapModel) -> str | None:
    """Evidence, from litellm itself, that its price of ``model`` is not a function of the
    token counts a response reports; None when there is none."""
    if model.provider in LlmProviders._value2member_map_:
        config = ProviderConfigManager.get_provider_model_info(
            model=model.model, provider=LlmProviders(model.provider)
        )
        if hasattr(config, "get_model_info"):
            return "litellm asks a running server for the price"
    by_time = _time_dependent(model)
    if by_time is not None:
        return by_time
    usage = litellm_usage(_USAGE)
    reported = litellm_usage(_USAGE)
    reported.cost = 0.123456
    if _their_usd(model, reported) == 0.123456:
        return "litellm charges the cost the response reports"
    explicit = litellm_usage(_USAGE)
    assert explicit.prompt_tokens_details is not None
    explicit.prompt_tokens_details.cache_type = "ephemeral"
    if _their_usd(model, explicit) != _their_usd(model, usage):
        return "cached tokens cost what the cache type a response reports says"
    if model.provider == "vertex_ai":
        by_characters = _their_usd(model, usage, completion_characters=5000)
        if by_characters != _their_usd(model, usage):
            return "the answer is priced per character"
    return None


def test_the_models_refused_at_start_up_are_exactly_those_litellm_prices_by_more_than_tokens() -> (
    None
):
    result = sweep()
    models, _ = cost_map_models()
    evidence = {m.model: _unpriceable_by_tokens(m) for m in models if m.model in result.refused}
    unexplained = [
        f"{name}: {result.refused[name]}" for name, why in evidence.items() if why is None
    ]

    assert not unexplained, (
        "refused with no evidence litellm prices them by more than tokens:\n"
        + ("\n".join(unexplained))
    )
    for name, message in result.refused.items():
        assert name in message  # the refusal names the model
        assert "model_info." in message  # and says what to set
    print(f"\nrefused ({len(result.refused)}):\n" + "\n".join(sorted(result.refused)))


def test_a_refused_model_names_itself_and_the_fix_when_the_model_list_loads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: commitment\n"
        "    litellm_params: {model: bedrock/*/1-month-commitment/cohere.command-text-v14}\n",
        encoding="utf-8",
    )

    with pytest.raises(ConfigError) as caught:
        load_models(path, {}, price_of)

    message = str(caught.value)
    assert "'commitment'" in message and "cohere.command-text-v14" in message
    assert "per second" in message
    assert "model_info.input_cost_per_token and model_info.output_cost_per_token" in message


def test_the_fix_a_refusal_names_makes_the_model_priceable() -> None:
    with pytest.raises(ConfigError, match="off_peak_pricing: null"):
        price_of({"model": "deepseek/deepseek-v4-pro"}, {})

    price = price_of({"model": "deepseek/deepseek-v4-pro"}, {"off_peak_pricing": None})

    entry = litellm.model_cost["deepseek/deepseek-v4-pro"]
    assert price.input_usd_per_token == Decimal(repr(entry["input_cost_per_token"]))
    per_second = price_of(
        {"model": "bedrock/*/1-month-commitment/cohere.command-text-v14"},
        {"input_cost_per_token": 0.0000015, "output_cost_per_token": 0.000002},
    )
    assert per_second.cost_nanousd(TokenUsage(1000, 100)) == 1000 * 1500 + 100 * 2000


def test_a_model_no_price_covers_is_refused_with_the_keys_to_set() -> None:
    with pytest.raises(ConfigError) as caught:
        price_of({"model": "openai/my-own-llama"}, {})

    assert "model_info.input_cost_per_token" in str(caught.value)
    assert "model_info.base_model" in str(caught.value)


def test_an_unknown_price_key_in_model_info_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model_info\.input_cost_per_tokens is not a price key"):
        price_of({"model": "openai/gpt-4o-mini"}, {"input_cost_per_tokens": 0.000001})


def test_a_model_named_by_a_login_provider_is_priced_without_any_network(tmp_path: Path) -> None:
    """litellm's provider lookup starts a device login for chatgpt/ and github_copilot/;
    pricing must not, in a fresh interpreter whose every socket is refused."""
    result = run_without_network(
        """
        from worker import startup
        startup.prepare()
        from worker.pricebook import price_of
        from worker.errors import ConfigError
        for model in ("chatgpt/gpt-5.2", "github_copilot/gpt-4o", "openai/gpt-4o-mini"):
            try:
                price_of({"model": model}, {})
            except ConfigError:
                pass
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "attempts []" in result.stdout


# --- random usages on a sample --------------------------------------------------------------


@cache
def sample() -> list[CostMapModel]:
    """Models whose prices exercise every rule: tiers, tier tables, multipliers, reasoning,
    audio and cache rates, xAI, Dashscope, Fireworks, Bedrock; then every 97th model."""
    models, _ = cost_map_models()
    priced = sweep().priced
    wanted = [
        "openai/gpt-5.4",
        "gemini/gemini-2.5-pro",
        "anthropic/claude-opus-4-6",
        "anthropic/claude-sonnet-4-5",
        "xai/grok-4-fast-reasoning",
        "dashscope/qwen-plus-2025-07-28",
        "dashscope/qwen-turbo",
        "openai/gpt-4o-mini",
    ]
    chosen = [m for m in models if m.model in wanted and m.model in priced]
    chosen += [
        m
        for m in models
        if m.model in priced
        and (
            m.entry.get("tiered_pricing")
            or m.entry.get("provider_specific_entry")
            or m.provider in ("fireworks_ai", "bedrock", "xai")
        )
    ][::23]
    chosen += [m for m in models if m.model in priced][::97]
    return chosen


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    prompt = draw(st.integers(1, 400_000))
    cached = draw(st.integers(0, prompt))
    written = draw(st.integers(0, prompt - cached))
    one_hour = draw(st.integers(0, written))
    audio = draw(st.integers(0, prompt - cached - written))
    completion = draw(st.integers(0, 50_000))
    reasoning = draw(st.integers(0, completion))
    return TokenUsage(
        prompt,
        completion,
        cache_read_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=one_hour,
        audio_prompt_tokens=audio,
        reasoning_tokens=reasoning,
        audio_completion_tokens=draw(st.integers(0, completion - reasoning)),
        inference_geo=draw(st.sampled_from([None, "us", "global"])),
        speed=draw(st.sampled_from([None, "fast"])),
    )


@settings(max_examples=250, deadline=None)
@given(index=st.integers(0, 10**6), usage=usages())
def test_random_usages_on_a_sample_of_models_cost_what_litellm_charges(
    index: int, usage: TokenUsage
) -> None:
    models = sample()
    model = models[index % len(models)]
    price = sweep().priced[model.model]

    ours = price.cost_nanousd(usage)
    theirs = litellm_nanousd(model, usage)

    exact = price.cost_usd(usage).scaleb(9)
    tie = exact % 1 == Decimal("0.5") and abs(theirs - exact) < Decimal("1e-6")
    assert ours == half_up(theirs) or tie, (model.model, ours, theirs)
    assert price.bound_nanousd(usage.prompt_tokens, usage.completion_tokens) >= ours


# --- model_info over the cost map -----------------------------------------------------------


def test_model_info_takes_any_price_key_of_the_cost_map() -> None:
    price = price_of(
        {"model": "openai/gpt-4o-mini"},
        {
            "cache_read_input_token_cost": "0.00000001",  # YAML may read 1e-8 as text
            "output_cost_per_reasoning_token": 0.000002,
            "input_cost_per_token_above_100k_tokens": 0.0000003,
        },
    )
    usage = TokenUsage(150_000, 100, cache_read_tokens=50_000, reasoning_tokens=40)

    assert price.cost_nanousd(usage) == 100_000 * 300 + 50_000 * 10 + 60 * 600 + 40 * 2000


def test_a_null_in_model_info_drops_that_price_of_the_cost_map() -> None:
    price = price_of({"model": "openai/gpt-4o-mini"}, {"cache_read_input_token_cost": None})

    assert price.cost_nanousd(TokenUsage(100, 0, cache_read_tokens=100)) == 100 * 150


def test_a_model_the_map_lacks_is_priced_from_model_info_alone() -> None:
    price = price_of(
        {"model": "openai/fake-model"},
        {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002},
    )

    assert price == ModelPrice(Decimal("0.000001"), Decimal("0.000002"))


# --- cost_map_price ---------------------------------------------------------------------


def test_cost_map_price_reads_litellms_bundled_map_exactly() -> None:
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    mini = cost_map_price("openai/gpt-4o-mini")

    assert mini is not None and mini == cost_map_price("gpt-4o-mini")
    assert mini.input_usd_per_token == Decimal("0.00000015")
    assert mini.output_usd_per_token == Decimal("0.0000006")
    assert mini.cache_read_usd_per_token == Decimal("0.000000075")


def test_cost_map_price_is_none_for_unknown_or_foreign_models() -> None:
    assert cost_map_price("openai/no-such-model") is None
    assert cost_map_price("hosted_vllm/gpt-4o-mini") is None  # same name, other server
    assert cost_map_price("sample_spec") is None


# --- usage ----------------------------------------------------------------------------------


def test_a_response_without_usage_has_none() -> None:
    assert usage_of({"id": "x", "choices": []}) is None
    assert usage_of({"usage": None}) is None
    # litellm fills an absent usage with zeros: zero prompt tokens is read as absent.
    assert usage_of(litellm.ModelResponse(model="gpt-4o-mini")) is None


def test_a_usage_dict_and_the_response_it_came_from_read_alike() -> None:
    response = litellm.ModelResponse(
        model="gpt-4o-mini",
        usage=litellm.Usage(
            prompt_tokens=1000,
            completion_tokens=300,
            total_tokens=1300,
            prompt_tokens_details={"cached_tokens": 400, "audio_tokens": 50},
            completion_tokens_details={"reasoning_tokens": 100},
        ),
    )

    usage = usage_of(response)

    assert usage == TokenUsage(
        1000, 300, cache_read_tokens=400, audio_prompt_tokens=50, reasoning_tokens=100
    )
    assert usage_of(response.model_dump()) == usage


def test_anthropic_cache_tokens_are_counted_once_in_the_prompt() -> None:
    raw = {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
    }

    usage = usage_of({"usage": raw})

    assert usage == TokenUsage(
        1400,
        20,
        cache_read_tokens=1000,
        cache_creation_tokens=300,
        cache_creation_1h_tokens=100,
    )


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    server = await start_fake_provider(FakeProviderConfig(output_tokens=40))
    try:
        yield server
    finally:
        await server.stop()


MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What does a prompt cache save, and when?"},
]


async def _call(model: str, api_base: str, **kwargs: Any) -> Any:
    return await litellm.acompletion(
        model=model,
        api_base=api_base,
        api_key="sk-fake",
        messages=MESSAGES,
        max_tokens=100,
        num_retries=0,
        **kwargs,
    )


def _litellm_nano(response: Any, **kwargs: Any) -> int:
    return half_up(Decimal(repr(litellm.completion_cost(response, **kwargs))).scaleb(9))


async def test_openai_cached_and_reasoning_tokens_cost_what_litellm_charges(
    fake: FakeProviderServer,
) -> None:
    fake.update_config(usage_breakdown={"cache_read_tokens": 16, "reasoning_tokens": 30})
    response = await _call("openai/o3", fake.url)

    usage = usage_of(response)

    assert usage is not None and usage.cache_read_tokens == 16 and usage.reasoning_tokens == 30
    price = price_of({"model": "openai/o3"}, {})
    assert price.cost_nanousd(usage) == _litellm_nano(response)
    flat = usage.prompt_tokens * price.input_usd_per_token + (
        usage.completion_tokens * price.output_usd_per_token
    )
    assert price.cost_nanousd(usage) < flat * 10**9  # cached input is cheaper


async def test_anthropic_cache_reads_and_writes_cost_what_litellm_charges(
    fake: FakeProviderServer,
) -> None:
    fake.update_config(
        usage_breakdown={
            "cache_read_tokens": 12,
            "cache_creation_tokens": 9,
            "cache_creation_1h_tokens": 4,
        }
    )
    response = await _call("anthropic/claude-sonnet-4-5", fake.root_url)

    usage = usage_of(response)

    assert usage is not None
    assert (usage.cache_read_tokens, usage.cache_creation_tokens) == (12, 9)
    assert usage.cache_creation_1h_tokens == 4
    price = price_of({"model": "anthropic/claude-sonnet-4-5"}, {})
    assert price.cost_nanousd(usage) == _litellm_nano(response)


async def test_gemini_thoughts_cache_and_audio_cost_what_litellm_charges(
    fake: FakeProviderServer,
) -> None:
    fake.update_config(
        usage_breakdown={"cache_read_tokens": 10, "reasoning_tokens": 25, "audio_prompt_tokens": 5}
    )
    response = await _call("gemini/gemini-2.5-flash", fake.root_url)

    usage = usage_of(response)

    assert usage is not None and usage.reasoning_tokens == 25 and usage.cache_read_tokens == 10
    price = price_of({"model": "gemini/gemini-2.5-flash"}, {})
    assert price.cost_nanousd(usage) == _litellm_nano(response)


@pytest.mark.parametrize(
    ("model", "vendor", "threshold"),
    [("gemini/gemini-2.5-pro", "gemini", 200_000), ("openai/gpt-5.4", "openai", 272_000)],
)
async def test_a_prompt_above_a_tier_threshold_is_charged_the_tier_rate(
    fake: FakeProviderServer, model: str, vendor: str, threshold: int
) -> None:
    fake.update_config(report_prompt_tokens=300_000, usage_breakdown={"cache_read_tokens": 20_000})
    response = await _call(model, fake.root_url if vendor == "gemini" else fake.url)

    usage = usage_of(response)

    assert usage is not None and usage.prompt_tokens == 300_000
    price = price_of({"model": model}, {})
    tier = price.rates_for(300_000)
    assert tier is not price and price.tiers[0].above_prompt_tokens == threshold
    assert price.cost_nanousd(usage) == _litellm_nano(response)
    expected = (
        280_000 * tier.input_usd_per_token
        + 20_000 * (tier.cache_read_usd_per_token or tier.input_usd_per_token)
        + usage.completion_tokens * tier.output_usd_per_token
    )
    assert price.cost_nanousd(usage) == half_up(expected.scaleb(9))


async def test_an_azure_deployment_is_priced_as_its_base_model(fake: FakeProviderServer) -> None:
    params = {
        "model": "azure/our-gpt4o-eastus",
        "api_base": fake.root_url,
        "api_version": "2024-10-21",
        "api_key": "sk-fake",
    }
    with pytest.raises(ConfigError, match=r"model_info\.base_model"):
        price_of(params, {})
    price = price_of(params, {"base_model": "azure/gpt-4o"})
    fake.update_config(usage_breakdown={"cache_read_tokens": 8})

    response = await litellm.acompletion(messages=MESSAGES, max_tokens=50, num_retries=0, **params)

    usage = usage_of(response)
    assert usage is not None and usage.cache_read_tokens == 8
    assert price == cost_map_price("azure/gpt-4o")
    assert price.cost_nanousd(usage) == _litellm_nano(response, base_model="azure/gpt-4o")


async def test_the_worker_reads_the_usage_of_its_own_calls_through_the_provider(
    fake: FakeProviderServer, tmp_path: Path
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: sonnet\n"
        f"    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: '{fake.root_url}',"
        " api_key: sk-fake}\n",
        encoding="utf-8",
    )
    entry = load_models(path, {}, price_of).get("sonnet")
    assert entry is not None
    fake.update_config(usage_breakdown={"cache_read_tokens": 7, "cache_creation_tokens": 5})
    provider = Provider(timeout_s=10, max_retries=0, backoff_s=0, backoff_max_s=0)

    completion = await provider.complete(entry, MESSAGES, {}, 60)

    assert completion.usage is not None
    assert completion.usage.cache_read_tokens == 7
    assert completion.usage.cache_creation_tokens == 5
    assert completion.prompt_tokens == completion.usage.prompt_tokens
