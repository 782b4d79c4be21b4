"""litellm's pricing, read once per model at start-up into ``worker.prices``, and litellm's
usage, read per call into ``TokenUsage``.

This module and ``worker.provider`` are the only ones that import litellm. Everything here
stays offline: prices come from litellm's bundled cost map (``worker.offline`` sees to
that before litellm's first import), and providers whose price litellm asks a running
server for (Ollama, Lemonade) are refused rather than asked.

**Which price.** A model-list entry is priced from the cost map's entry of
``model_info.base_model`` when it is set (LiteLLM's way of pricing an Azure deployment
with a name of its own), else of ``litellm_params.model``: ``provider/name`` as given,
then ``name`` when that entry belongs to the same provider, so an OpenAI-compatible server
under another prefix is never priced as OpenAI's model of the same name. ``model_info``
may set any of the cost map's price keys over that entry (``input_cost_per_token``,
``cache_read_input_token_cost``, ``output_cost_per_reasoning_token``,
``input_cost_per_token_above_200k_tokens``, ``tiered_pricing``, ...), or ``null`` to
drop one; litellm then prices the call from that merged entry (its per-deployment custom
pricing), and so does the worker.

**How it is priced.** litellm's chat pricing is ``generic_cost_per_token`` plus, per
provider, a few rules of its own; ``_rates_at`` restates them in ``Decimal`` for one prompt
size, and the price is those rates on every stretch of prompt sizes between the entry's
thresholds. Each price is then checked against ``litellm.cost_per_token`` on a handful
of usages (plain, cached, cache writes by lifetime, reasoning, audio, a mix, each side of
every threshold); a model the worker cannot price exactly is refused with a
``ConfigError`` that says why and what to set, never priced approximately.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Final

from schemas.money import to_nanousd
from worker import offline  # noqa: F401  (first: it keeps litellm offline)
from worker.errors import ConfigError
from worker.prices import ModelPrice, PriceTier, Rates, TokenUsage, to_price

# isort: split

import litellm
import litellm.utils
from litellm.constants import FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO
from litellm.litellm_core_utils.litellm_logging import resolve_vertex_location_for_cost
from litellm.litellm_core_utils.llm_cost_calc.tiered_pricing import select_tier_for_input
from litellm.litellm_core_utils.llm_cost_calc.utils import (
    get_modality_token_cost_key,
    parse_completion_tokens_details,
    parse_prompt_tokens_details,
)
from litellm.llms.openai.data_residency import infer_openai_data_residency
from litellm.llms.openai_like.json_loader import JSONProviderRegistry
from litellm.types.utils import (
    ABOVE_THRESHOLD_COST_KEY_PATTERN,
    CacheCreationTokenDetails,
    CompletionTokensDetailsWrapper,
    CustomPricingLiteLLMParams,
    PromptTokensDetailsWrapper,
    Usage,
)

__all__ = ["cost_map_price", "litellm_usage", "price_of", "usage_of"]

_COST_MAP_SKIP: Final = frozenset({"sample_spec"})
_PRICE_KEYS: Final = frozenset(CustomPricingLiteLLMParams.model_fields) | {
    "provider_specific_entry",
    "off_peak_pricing",
}
_PRICE_LIKE = re.compile(r"cost|multiplier|pricing")
_PROVIDER_FAMILIES: Final = {"vertex_ai": ("vertex_ai-",), "bedrock": ("bedrock_converse",)}

# The four families of rates litellm tiers by prompt size (``<prefix>_above_<N>_tokens``).
_INPUT: Final = "input_cost_per_token"
_OUTPUT: Final = "output_cost_per_token"
_CACHE_READ: Final = "cache_read_input_token_cost"
_CACHE_WRITE: Final = "cache_creation_input_token_cost"
_CACHE_WRITE_1H: Final = "cache_creation_input_token_cost_above_1hr"
_CACHE_WRITE_12H: Final = "cache_creation_input_token_cost_above_12hr"
_REASONING: Final = "output_cost_per_reasoning_token"
_AUDIO_INPUT_ABOVE: Final = "input_cost_per_audio_token_above_"  # tiered like the four
_TIERED_PREFIXES: Final = tuple(
    f"{key}_above_" for key in (_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE)
)
# Threshold keys of a service tier or of batch pricing: litellm's chat path ignores them.
_NON_STANDARD_SUFFIXES: Final = (
    "_batches",
    "_flex",
    "_priority",
    "_balanced",
    "_fast",
    "_ultrafast",
)
_PER_SECOND_KEYS: Final = ("cost_per_second", "input_cost_per_second", "output_cost_per_second")
_WALL_CLOCK_MODES: Final = frozenset({"chat", "completion", "responses", "embedding"})
_DASHSCOPE: Final = frozenset({"dashscope", "qwencloud", "qwen_ai_platform"})
_LIVE_PRICE_PROVIDERS: Final = frozenset({"ollama", "ollama_chat", "lemonade"})
_INCLUSIVE_THRESHOLD_PROVIDERS: Final = frozenset({"xai"})

# Usage shapes for the start-up check; each is scaled to a prompt size (see ``_shapes``).
_SHAPE_NAMES: Final = ("plain", "cache read", "cache write", "reasoning", "audio", "mix")


@dataclass(frozen=True, slots=True)
class _Pricing:
    """What prices one entry: the cost map's key and entry (model_info merged in), whose
    rules apply, and the arguments litellm's cost function is called with."""

    litellm_model: str
    pricing_model: str
    provider: str
    table: Mapping[str, Any]
    overridden: bool
    data_residency: str | None
    vertex_location: str | None

    @property
    def style(self) -> str:
        """The provider rules litellm applies: ``generic`` (``generic_cost_per_token``),
        ``xai`` (output billed at one rate, thresholds inclusive) or ``dashscope`` (its own
        all-or-nothing tier table). Custom pricing always goes through the generic path."""
        if self.overridden:
            return "generic"
        if self.provider == "xai":
            return "xai"
        if self.provider in _DASHSCOPE:
            return "dashscope"
        return "generic"


# --- public ---------------------------------------------------------------------------------


def price_of(litellm_params: Mapping[str, Any], model_info: Mapping[str, Any]) -> ModelPrice:
    """The price of a model-list entry, checked against litellm's own cost function.

    Raises ``ConfigError`` naming the model and what to set when the cost map has no price
    for it and ``model_info`` gives none, when it is priced in a way the worker does not
    model, or when the worker's price and litellm's disagree on any checked usage.
    """
    pricing = _pricing(litellm_params, model_info)
    if pricing is None:
        model = litellm_params.get("model")
        raise ConfigError(
            f"litellm's cost map has no price for {model!r}; add model_info."
            "input_cost_per_token and model_info.output_cost_per_token (USD per token, "
            "e.g. 0.00000015) to this entry, or model_info.base_model naming the model "
            "it is priced as (e.g. azure/gpt-4o)"
        )
    return _checked_price(pricing)


@functools.lru_cache(maxsize=1024)
def cost_map_price(litellm_model: str) -> ModelPrice | None:
    """The price of ``litellm_model`` from litellm's bundled cost map, or None when the map
    has no entry for it (see the module docstring for the lookup). Raises ``ConfigError``
    when it has one that the worker cannot price exactly. Remembered per model: the map
    does not change while the process runs, and callers outside a model list (``compat``)
    ask once per call."""
    try:
        pricing = _pricing({"model": litellm_model}, {})
    except ConfigError:  # litellm knows no provider of that name: no entry either
        return None
    return None if pricing is None else _checked_price(pricing)


def _checked_price(pricing: _Pricing) -> ModelPrice:
    refusal = _refusal(pricing)
    if refusal is not None:
        raise ConfigError(f"model {pricing.litellm_model!r}: {refusal}")
    price = _price(pricing)
    _verify(pricing, price)
    return price


def usage_of(response: Any) -> TokenUsage | None:
    """The usage of a litellm ``ModelResponse`` (or of a dict of one), as litellm's cost
    functions read it, or None when the response reports none.

    litellm has already turned each vendor's format into OpenAI's: Anthropic's
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` into
    ``prompt_tokens_details`` (with ``prompt_tokens`` counting them), Gemini's modality
    counts and thoughts, OpenAI's own details. They are read here with litellm's parsers,
    so nothing is counted twice, and a provider's overlapping counts are resolved the way
    litellm's ``generic_cost_per_token`` resolves them. litellm fills an absent usage with
    zeros, so zero prompt tokens is read as absent: no chat request has an empty prompt.
    """
    usage = _litellm_usage_of(response)
    if usage is None:
        return None
    prompt = usage.prompt_tokens
    completion = usage.completion_tokens
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if prompt <= 0 or completion < 0:
        return None
    return _token_usage(usage, prompt, completion)


def litellm_usage(usage: TokenUsage) -> Usage:
    """``usage`` as the litellm ``Usage`` its cost functions take (OpenAI's shape)."""
    prompt_details: dict[str, Any] = {}
    if usage.cache_read_tokens:
        prompt_details["cached_tokens"] = usage.cache_read_tokens
    if usage.cache_creation_tokens:
        prompt_details["cache_creation_tokens"] = usage.cache_creation_tokens
        if usage.cache_creation_1h_tokens or usage.cache_creation_12h_tokens:
            short = (
                usage.cache_creation_tokens
                - usage.cache_creation_1h_tokens
                - usage.cache_creation_12h_tokens
            )
            prompt_details["cache_creation_token_details"] = CacheCreationTokenDetails(
                ephemeral_5m_input_tokens=short,
                ephemeral_1h_input_tokens=usage.cache_creation_1h_tokens,
                ephemeral_12h_input_tokens=usage.cache_creation_12h_tokens,
            )
    for key, count in (
        ("audio_tokens", usage.audio_prompt_tokens),
        ("image_tokens", usage.image_prompt_tokens),
        ("video_tokens", usage.video_prompt_tokens),
    ):
        if count:
            prompt_details[key] = count
    completion_details = {
        key: count
        for key, count in (
            ("reasoning_tokens", usage.reasoning_tokens),
            ("audio_tokens", usage.audio_completion_tokens),
            ("image_tokens", usage.image_completion_tokens),
            ("video_tokens", usage.video_completion_tokens),
        )
        if count
    }
    extra: dict[str, Any] = {}
    if usage.inference_geo is not None:
        extra["inference_geo"] = usage.inference_geo
    if usage.speed is not None:
        extra["speed"] = usage.speed
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetailsWrapper(**prompt_details)
        if prompt_details
        else None,
        completion_tokens_details=CompletionTokensDetailsWrapper(**completion_details)
        if completion_details
        else None,
        **extra,
    )


# --- which entry ----------------------------------------------------------------------------


def _pricing(litellm_params: Mapping[str, Any], model_info: Mapping[str, Any]) -> _Pricing | None:
    litellm_model = str(litellm_params.get("model", ""))
    provider = _provider_of(litellm_model)
    overrides = _overrides(litellm_model, model_info)
    base_model = model_info.get("base_model")
    if base_model is not None and (not isinstance(base_model, str) or not base_model.strip()):
        raise ConfigError(
            f"model {litellm_model!r}: model_info.base_model must name a model of litellm's "
            f"cost map (e.g. azure/gpt-4o), got {base_model!r}"
        )
    pricing_model = litellm_model
    pricing_provider = provider
    chosen_provider = model_info.get("pricing_provider")
    if chosen_provider is not None:
        # LiteLLM's model_info.pricing_provider: the cost map is read under that provider.
        if not isinstance(chosen_provider, str) or not chosen_provider.strip():
            raise ConfigError(
                f"model {litellm_model!r}: model_info.pricing_provider must name a provider "
                f"of litellm (e.g. openai), got {chosen_provider!r}"
            )
        provider = pricing_provider = chosen_provider
    found = _cost_map_entry(base_model or litellm_model, provider)
    if found is None and base_model:
        # LiteLLM prices a base model under its own provider when the deployment's has no
        # entry for it (a chatgpt/ subscription deployment priced as openai/gpt-4o).
        pricing_provider = _provider_of(base_model, default=provider)
        found = _cost_map_entry(base_model, pricing_provider)
    if found is None:
        _check_own_prices(litellm_model, overrides)
        if not overrides:
            return None
        table: dict[str, Any] = {"litellm_provider": pricing_provider, "mode": "chat"}
    else:
        key, table = found
        if base_model:
            pricing_model = key if "/" in key else f"{pricing_provider}/{key}"
    table = _merged(table, overrides)
    api_base = litellm_params.get("api_base")
    return _Pricing(
        litellm_model=litellm_model,
        pricing_model=pricing_model,
        provider=pricing_provider,
        table=table,
        overridden=bool(overrides),
        data_residency=infer_openai_data_residency(
            pricing_provider, api_base if isinstance(api_base, str) else None
        ),
        vertex_location=_vertex_location(pricing_provider, litellm_params, pricing_model),
    )


def _provider_of(model: str, default: str | None = None) -> str:
    """litellm's provider of ``model``. A known ``provider/`` prefix is taken as it is:
    ``get_llm_provider`` also fetches credentials for some providers (ChatGPT and GitHub
    Copilot start a device login), which start-up must never do."""
    head, _, rest = model.partition("/")
    if rest and (head in litellm.provider_list or JSONProviderRegistry.exists(head)):
        return head
    try:
        _, provider, _, _ = litellm.get_llm_provider(model=model)
    except Exception:  # litellm raises bare exceptions for an unknown provider
        if default is not None:
            return default
        raise ConfigError(
            f"litellm does not know the provider of {model!r}; name the model as "
            "provider/model (e.g. openai/gpt-4o-mini)"
        ) from None
    return str(provider)


def _cost_map_entry(model: str, provider: str) -> tuple[str, dict[str, Any]] | None:
    """The cost map's key and entry for ``model`` (see the module docstring); a name
    without a provider prefix is looked up under ``provider`` first."""
    cost_map: Mapping[str, Any] = litellm.model_cost
    head, _, rest = model.partition("/")
    if rest and (head in litellm.provider_list or JSONProviderRegistry.exists(head)):
        exact, bare = model, (rest if head == provider else None)
    else:
        exact, bare = f"{provider}/{model}", model
    entry = None if exact in _COST_MAP_SKIP else cost_map.get(exact)
    if isinstance(entry, Mapping):
        return exact, _catalog(exact, provider, entry)
    if bare is not None and bare not in _COST_MAP_SKIP:
        entry = cost_map.get(bare)
        if isinstance(entry, Mapping) and _same_provider(entry.get("litellm_provider"), provider):
            return bare, _catalog(bare, provider, entry)
    return None


def _same_provider(entry_provider: object, provider: str) -> bool:
    if not isinstance(entry_provider, str):
        return False
    return entry_provider == provider or entry_provider.startswith(
        _PROVIDER_FAMILIES.get(provider, ())
    )


def _catalog(key: str, provider: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as litellm's cost functions see it (``get_model_info``: known keys and
    threshold keys, fill-in rules applied), without asking any server."""
    try:
        info = litellm.utils.get_model_info_helper(
            model=key, custom_llm_provider=provider, catalog_only=True
        )
    except Exception:  # an entry litellm cannot resolve by itself: read it as it is
        return dict(entry)
    if info.get("key") != key:
        return dict(entry)
    return {k: v for k, v in info.items() if v is not None}


def _overrides(litellm_model: str, model_info: Mapping[str, Any]) -> dict[str, Any]:
    """The price keys of ``model_info``; ``None`` values drop a key of the cost map."""
    overrides: dict[str, Any] = {}
    for raw_key, value in model_info.items():
        key = str(raw_key)
        known = key in _PRICE_KEYS or ABOVE_THRESHOLD_COST_KEY_PATTERN.search(key) is not None
        if not known:
            if _PRICE_LIKE.search(key) and key not in ("base_model", "pricing_provider"):
                raise ConfigError(
                    f"model {litellm_model!r}: model_info.{key} is not a price key of "
                    "litellm's cost map (e.g. input_cost_per_token, cache_read_input_token_"
                    "cost, output_cost_per_reasoning_token, input_cost_per_token_above_200k_"
                    "tokens)"
                )
            continue
        if value is None or key in (
            "tiered_pricing",
            "provider_specific_entry",
            "off_peak_pricing",
        ):
            overrides[key] = value
            continue
        overrides[key] = _price_value(litellm_model, key, value)
    return overrides


def _price_value(litellm_model: str, key: str, value: Any) -> Decimal:
    # YAML 1.1 reads 1e-07 (no dot) as a string, so numeric strings count as numbers.
    problem = (
        f"model {litellm_model!r}: model_info.{key} must be a number >= 0 (USD per token, "
        f"or a multiplier), got {value!r}"
    )
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(problem)
    try:
        return to_price(value.strip() if isinstance(value, str) else value)
    except (ValueError, ArithmeticError):
        raise ConfigError(problem) from None


def _check_own_prices(litellm_model: str, overrides: Mapping[str, Any]) -> None:
    """A model the cost map does not know needs both flat rates (or a tier table)."""
    if not overrides or overrides.get("tiered_pricing"):
        return
    missing = [key for key in (_INPUT, _OUTPUT) if overrides.get(key) is None]
    if missing:
        raise ConfigError(
            f"litellm's cost map has no price for {litellm_model!r}; add "
            + " and ".join(f"model_info.{key}" for key in missing)
            + " (USD per token, e.g. 0.00000015) to this entry"
        )


def _prices_tokens(table: Mapping[str, Any]) -> bool:
    """litellm's ``_has_token_or_tiered_pricing``: what keeps it from per-second pricing."""
    return (
        _zero(_rate(table.get(_INPUT))) > 0
        or _zero(_rate(table.get(_OUTPUT))) > 0
        or table.get("tiered_pricing") is not None
    )


def _merged(table: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with ``overrides`` over it, as LiteLLM builds a call's custom pricing: a
    flat input or output rate set over a ``tiered_pricing`` table is written into each of
    its tiers (the table would win over it otherwise)."""
    merged = {**table, **overrides}
    flat = {key: overrides[key] for key in (_INPUT, _OUTPUT) if overrides.get(key) is not None}
    tiers = merged.get("tiered_pricing")
    if flat and isinstance(tiers, list | tuple) and tiers:
        merged["tiered_pricing"] = [{**tier, **flat} for tier in tiers if isinstance(tier, Mapping)]
    return {key: value for key, value in merged.items() if value is not None}


def _vertex_location(provider: str, litellm_params: Mapping[str, Any], model: str) -> str | None:
    if not provider.startswith("vertex_ai"):
        return None
    location = resolve_vertex_location_for_cost(
        custom_llm_provider=provider,
        litellm_params=dict(litellm_params),
        optional_params=None,
        model=model,
    )
    return location if isinstance(location, str) else None


# --- what is refused ------------------------------------------------------------------------


def _refusal(pricing: _Pricing) -> str | None:
    """Why litellm's price of this entry cannot be computed from token counts, and what
    to set instead; None when it can."""
    table = pricing.table
    provider = pricing.provider
    set_prices = (
        "set model_info.input_cost_per_token and model_info.output_cost_per_token (USD per "
        "token) to price it by tokens, as litellm then does"
    )
    per_second = any(table.get(key) is not None for key in _PER_SECOND_KEYS)
    wall_clock = table.get("mode") is None or table.get("mode") in _WALL_CLOCK_MODES
    if per_second and wall_clock and not _prices_tokens(table):
        return (
            "litellm prices it per second of the call, which no estimate can bound; " + set_prices
        )
    if not pricing.overridden:
        if provider in _LIVE_PRICE_PROVIDERS:
            return f"litellm asks the running {provider} server for its price; {set_prices}"
        if provider == "perplexity":
            return (
                "litellm charges the cost Perplexity reports in each response (request and "
                f"search fees included), which is unknown before the call; {set_prices}"
            )
        if provider.startswith("vertex_ai") and (
            table.get("input_cost_per_token_above_128k_tokens") is not None
            or table.get("output_cost_per_token_above_128k_tokens") is not None
        ):
            return (
                "litellm prices vertex_ai's *_above_128k_tokens rates by a rule of its own "
                "(every prompt token at one rate, cached ones included; output tiered by the "
                f"output's size); {set_prices}"
            )
        if provider.startswith("vertex_ai") and table.get("output_cost_per_character") is not None:
            return (
                "litellm prices its output per character of the answer; set model_info."
                "output_cost_per_character: null to price it per token"
            )
    if table.get("off_peak_pricing") is not None:
        return (
            "litellm prices it at off-peak rates during some hours of the day; set "
            "model_info.off_peak_pricing: null to price every call at the standard rates"
        )
    tiers = table.get("tiered_pricing")
    tier_list = tiers if isinstance(tiers, list) else []
    if table.get("explicit_cache_read_input_token_cost") is not None or any(
        isinstance(tier, Mapping) and tier.get("explicit_cache_read_input_token_cost") is not None
        for tier in tier_list
    ):
        return (
            "litellm prices explicitly cached tokens by the cache type a response reports; "
            "set model_info.explicit_cache_read_input_token_cost: null to price cached "
            "tokens at cache_read_input_token_cost"
        )
    if provider == "azure_ai" and re.search(r"model[-_]router", pricing.pricing_model.lower()):
        name = pricing.pricing_model.lower().removeprefix("azure_ai/")
        if name not in ("model-router", "model_router"):
            return (
                "litellm adds Azure AI Model Router's routing fee to the routed model's "
                "price; set model_info.base_model to azure_ai/model_router or price it in "
                "model_info"
            )
    return None


# --- the rates ------------------------------------------------------------------------------


def _price(pricing: _Pricing) -> ModelPrice:
    breakpoints = _breakpoints(pricing)
    base = _plain(_rates_at(pricing, 0))
    tiers: list[PriceTier] = []
    previous = base
    for above in breakpoints:
        rates = _plain(_rates_at(pricing, above + 1))
        if rates != previous:
            tiers.append(PriceTier(above, rates))
            previous = rates
    geo: tuple[tuple[str, Decimal], ...] = ()
    fast = Decimal(1)
    entry = pricing.table.get("provider_specific_entry")
    # Anthropic's calculator applies both multipliers, Bedrock's the geo one (and only
    # from the cost map: custom pricing goes through the generic calculator).
    geo_applies = pricing.provider == "anthropic" or (
        pricing.provider == "bedrock" and not pricing.overridden
    )
    if isinstance(entry, Mapping) and geo_applies:
        geo = tuple(
            sorted(
                (str(name).lower(), to_price(value))
                for name, value in entry.items()
                if name != "fast" and _is_number(value)
            )
        )
        if pricing.provider == "anthropic" and _is_number(entry.get("fast")):
            fast = to_price(entry["fast"])
    return ModelPrice(
        base.input_usd_per_token,
        base.output_usd_per_token,
        **_optional_rates_of(base),
        tiers=tuple(tiers),
        multiplier=_uplift(pricing),
        geo_multipliers=geo,
        fast_multiplier=fast,
    )


def _plain(rates: Rates) -> Rates:
    """``rates`` with every rate that equals its fallback left out (``None``): the same
    price, written the way an operator would write it."""
    inp, out = rates.input_usd_per_token, rates.output_usd_per_token
    write = rates.cache_creation_usd_per_token
    resolved_write = inp if write is None else write

    def unless(value: Decimal | None, fallback: Decimal) -> Decimal | None:
        return None if value is None or value == fallback else value

    return Rates(
        input_usd_per_token=inp,
        output_usd_per_token=out,
        cache_read_usd_per_token=unless(rates.cache_read_usd_per_token, inp),
        cache_creation_usd_per_token=unless(write, inp),
        cache_creation_1h_usd_per_token=unless(
            rates.cache_creation_1h_usd_per_token, resolved_write
        ),
        cache_creation_12h_usd_per_token=unless(
            rates.cache_creation_12h_usd_per_token, resolved_write
        ),
        audio_input_usd_per_token=unless(rates.audio_input_usd_per_token, inp),
        image_input_usd_per_token=unless(rates.image_input_usd_per_token, inp),
        video_input_usd_per_token=unless(rates.video_input_usd_per_token, inp),
        reasoning_usd_per_token=unless(rates.reasoning_usd_per_token, out),
        audio_output_usd_per_token=unless(rates.audio_output_usd_per_token, out),
        image_output_usd_per_token=unless(rates.image_output_usd_per_token, out),
        video_output_usd_per_token=unless(rates.video_output_usd_per_token, out),
    )


def _optional_rates_of(rates: Rates) -> dict[str, Decimal | None]:
    required = ("input_usd_per_token", "output_usd_per_token")
    return {
        name: getattr(rates, name) for name in Rates.__dataclass_fields__ if name not in required
    }


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float | str)
        and not isinstance(value, bool)
        and _rate(value) is not None
    )


def _uplift(pricing: _Pricing) -> Decimal:
    """The deployment's multiplier: OpenAI's regional-processing or FedRAMP uplift (by
    ``api_base``), Vertex AI's regional-endpoint uplift (by ``vertex_location``)."""
    table = pricing.table
    multiplier = Decimal(1)
    residency = pricing.data_residency
    if residency is not None and pricing.style == "generic":
        regional = _rate(table.get(f"regional_processing_uplift_multiplier_{residency.lower()}"))
        if regional is not None:
            multiplier *= regional
        if residency.lower() == "fedramp":
            fedramp = _rate(table.get("fedramp_uplift_multiplier"))
            if fedramp is not None:
                multiplier *= fedramp
    location = pricing.vertex_location
    if location is not None and location.lower() != "global" and pricing.style == "generic":
        regional_endpoint = _rate(table.get("regional_endpoint_uplift_multiplier"))
        if regional_endpoint is not None:
            multiplier *= regional_endpoint
    return multiplier


def _breakpoints(pricing: _Pricing) -> list[int]:
    """The prompt sizes N where some rate changes: litellm tests every rate as ``p > N``
    (``p >= T``, that is ``p > ceil(T) - 1``, for providers with inclusive thresholds)."""
    table = pricing.table
    found: set[int] = set()
    if pricing.style != "dashscope":
        inclusive = pricing.provider in _INCLUSIVE_THRESHOLD_PROVIDERS
        thresholds = [value for value, _ in _thresholds(table)]
        thresholds += [
            value
            for key, rate in table.items()
            if rate is not None
            and key.startswith(_AUDIO_INPUT_ABOVE)
            and key.endswith("_tokens")
            and (value := _threshold_of(key)) is not None
        ]
        for threshold in thresholds:
            if inclusive:
                above = int(threshold.to_integral_value(ROUND_CEILING)) - 1
            else:
                above = int(threshold.to_integral_value(ROUND_FLOOR))
            if above >= 0:
                found.add(above)
    tiers = table.get("tiered_pricing")
    if isinstance(tiers, list) and tiers:
        found.add(0)  # litellm picks no tier for an empty prompt
        for tier in tiers:
            bounds = tier.get("range") if isinstance(tier, Mapping) else None
            if isinstance(bounds, list | tuple) and len(bounds) == 2:
                for bound in bounds:
                    value = _rate(bound)
                    if value is not None and value >= 0:
                        found.add(int(value.to_integral_value(ROUND_FLOOR)))
    return sorted(found)


def _threshold_of(key: str) -> Decimal | None:
    """N of a ``..._above_<N>[k]_tokens...`` key, read as litellm reads it (the text after
    the last ``_above_`` up to ``_tokens``); None when that is not a number."""
    tail = key.rsplit("_above_", 1)[1].split("_tokens")[0]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(k?)", tail)
    if match is None:
        return None
    value = Decimal(match.group(1))
    return value * 1000 if match.group(2) else value


def _rates_at(pricing: _Pricing, prompt_tokens: int) -> Rates:
    if pricing.style == "dashscope":
        return _dashscope_rates(pricing.table, prompt_tokens)
    rates = _generic_rates(
        pricing.table,
        prompt_tokens,
        fireworks=pricing.provider == "fireworks_ai",
        inclusive=pricing.provider in _INCLUSIVE_THRESHOLD_PROVIDERS,
    )
    if pricing.style == "xai":
        # xAI's calculator drops the output breakdown: every output token at one rate.
        rates = replace(
            rates,
            reasoning_usd_per_token=None,
            audio_output_usd_per_token=None,
            image_output_usd_per_token=None,
            video_output_usd_per_token=None,
        )
    return rates


def _generic_rates(
    table: Mapping[str, Any], prompt_tokens: int, *, fireworks: bool, inclusive: bool
) -> Rates:
    """litellm's ``generic_cost_per_token`` rates for a prompt of ``prompt_tokens``
    (``_get_token_base_cost``, ``_modality_token_cost``, ``_resolve_billed_reasoning_rate``;
    standard service tier, no off-peak window), in Decimal."""
    if fireworks and table.get(_CACHE_READ) is None and _rate(table.get(_INPUT)) is not None:
        ratio = Decimal(repr(FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO))
        table = {**table, _CACHE_READ: _rate(table.get(_INPUT)) * ratio}  # type: ignore[operator]
    tier = _priced_tier(table, prompt_tokens)
    if tier is not None:
        inp = _tier_rate(tier, _INPUT)
        out = _tier_rate(tier, _OUTPUT) if _OUTPUT in tier else _zero(_rate(table.get(_OUTPUT)))
        write = _tier_rate(tier, _CACHE_WRITE, _INPUT)
        read = _tier_rate(tier, _CACHE_READ, _INPUT)
        write_1h = write if tier.get(_CACHE_WRITE_1H) is None else _tier_rate(tier, _CACHE_WRITE_1H)
        write_12h = (
            write if tier.get(_CACHE_WRITE_12H) is None else _tier_rate(tier, _CACHE_WRITE_12H)
        )
        if _REASONING in tier or _OUTPUT in tier:
            reasoning = _tier_rate(tier, _REASONING, _OUTPUT)
        else:
            reasoning = _or(_rate(table.get(_REASONING)), out)
    else:
        inp = _zero(_rate(table.get(_INPUT)))
        out = _zero(_rate(table.get(_OUTPUT)))
        if out == 0 and _rate(table.get("output_cost_per_image_token")) is not None:
            out = _zero(_rate(table.get("output_cost_per_image_token")))
        write_or_none = _rate(table.get(_CACHE_WRITE))
        read_or_none = _rate(table.get(_CACHE_READ))
        key_1h, key_12h = _CACHE_WRITE_1H, _CACHE_WRITE_12H
        for threshold, text in _thresholds(table):
            if not (prompt_tokens > threshold or (inclusive and prompt_tokens == threshold)):
                continue
            inp = _or(_rate(table.get(f"{_INPUT}_above_{text}_tokens")), inp)
            out = _or(_rate(table.get(f"{_OUTPUT}_above_{text}_tokens")), out)
            write_or_none = _or_none(
                _rate(table.get(f"{_CACHE_WRITE}_above_{text}_tokens")), write_or_none
            )
            read_or_none = _or_none(
                _rate(table.get(f"{_CACHE_READ}_above_{text}_tokens")), read_or_none
            )
            if table.get(f"{_CACHE_WRITE_1H}_above_{text}_tokens") is not None:
                key_1h = f"{_CACHE_WRITE_1H}_above_{text}_tokens"
            if table.get(f"{_CACHE_WRITE_12H}_above_{text}_tokens") is not None:
                key_12h = f"{_CACHE_WRITE_12H}_above_{text}_tokens"
        write = _or(write_or_none, inp)
        read = _or(read_or_none, inp)
        write_1h = _or(_rate(table.get(key_1h)), write)
        write_12h = _or(_rate(table.get(key_12h)), write)
        reasoning = _or(_rate(table.get(_REASONING)), out)
    audio_key = get_modality_token_cost_key(
        table,  # type: ignore[arg-type]
        "input_cost_per_audio_token",
        prompt_tokens,
        threshold_is_inclusive=inclusive,
    )
    return Rates(
        input_usd_per_token=inp,
        output_usd_per_token=out,
        cache_read_usd_per_token=read,
        cache_creation_usd_per_token=write,
        cache_creation_1h_usd_per_token=write_1h,
        cache_creation_12h_usd_per_token=write_12h,
        audio_input_usd_per_token=_or(_rate(table.get(audio_key)), inp),
        image_input_usd_per_token=_or(_rate(table.get("input_cost_per_image_token")), inp),
        video_input_usd_per_token=_or(_rate(table.get("input_cost_per_video_token")), inp),
        reasoning_usd_per_token=reasoning,
        audio_output_usd_per_token=_or(_rate(table.get("output_cost_per_audio_token")), out),
        image_output_usd_per_token=_or(_rate(table.get("output_cost_per_image_token")), out),
        video_output_usd_per_token=_or(_rate(table.get("output_cost_per_video_token")), out),
    )


def _dashscope_rates(table: Mapping[str, Any], prompt_tokens: int) -> Rates:
    """litellm's Dashscope calculator: one tier of ``tiered_pricing`` (by the whole
    prompt) for every token of the call; audio, image and video input billed as text."""
    inp = _zero(_rate(table.get(_INPUT)))
    read = _or(_rate(table.get(_CACHE_READ)), inp)
    write = _or(_rate(table.get(_CACHE_WRITE)), inp)
    out = _zero(_rate(table.get(_OUTPUT)))
    reasoning = _rate(table.get(_REASONING))
    tiers = table.get("tiered_pricing")
    tier = (
        select_tier_for_input(tiered_pricing=tiers, input_tokens=prompt_tokens)
        if isinstance(tiers, list) and tiers
        else None
    )
    if tier is not None:
        flat_out, flat_reasoning = out, reasoning
        inp = _tier_rate(tier, _INPUT)
        read = _tier_rate(tier, _CACHE_READ, _INPUT)
        write = _tier_rate(tier, _CACHE_WRITE, _INPUT)
        out = _tier_rate(tier, _OUTPUT) if _OUTPUT in tier else flat_out
        if _REASONING in tier:
            reasoning = _tier_rate(tier, _REASONING)
        elif _OUTPUT in tier:
            reasoning = None
        else:
            reasoning = flat_reasoning
    return Rates(
        input_usd_per_token=inp,
        output_usd_per_token=out,
        cache_read_usd_per_token=read,
        cache_creation_usd_per_token=write,
        reasoning_usd_per_token=reasoning,
    )


def _priced_tier(table: Mapping[str, Any], prompt_tokens: int) -> Mapping[str, Any] | None:
    tiers = table.get("tiered_pricing")
    if not isinstance(tiers, list) or not tiers:
        return None
    tier = select_tier_for_input(tiered_pricing=tiers, input_tokens=prompt_tokens)
    if tier is None or _INPUT not in tier:
        return None
    return tier


def _thresholds(table: Mapping[str, Any]) -> list[tuple[Decimal, str]]:
    """The ``_above_<N>_tokens`` thresholds of the four tiered rate families, ascending:
    (N as a number, N as the key spells it)."""
    found: dict[str, Decimal] = {}
    for key, value in table.items():
        if value is None or not key.startswith(_TIERED_PREFIXES) or "_tokens" not in key:
            continue
        if key.endswith(_NON_STANDARD_SUFFIXES):
            continue
        text = key.rsplit("_above_", 1)[1].split("_tokens")[0]
        threshold = _threshold_of(key)
        if threshold is not None:
            found[text] = threshold
    return sorted(((value, text) for text, value in found.items()), key=lambda item: item[0])


def _tier_rate(tier: Mapping[str, Any], key: str, fallback: str | None = None) -> Decimal:
    """litellm's ``tier_rate``: the tier's rate, else its fallback rate, else 0."""
    value = tier.get(key)
    if value is None:
        value = tier.get(fallback, 0) if fallback is not None else 0
    return _zero(_rate(value))


def _rate(value: object) -> Decimal | None:
    """A rate of the cost map as an exact Decimal (floats through their repr); None when
    it is absent or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(repr(float(value)))
        except ValueError:
            return None
    return None


def _zero(value: Decimal | None) -> Decimal:
    return Decimal(0) if value is None else value


def _or(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


def _or_none(value: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if value is None else value


# --- the check ------------------------------------------------------------------------------


def _verify(pricing: _Pricing, price: ModelPrice) -> None:
    """Refuse ``price`` unless it equals litellm's own cost on every shape of ``_shapes``."""
    problems: list[str] = []
    for name, usage in _shapes(pricing, price):
        ours = price.cost_nanousd(usage)
        try:
            theirs_usd = _litellm_usd(pricing, usage)
        except Exception as exc:  # litellm raises bare exceptions for what it cannot price
            problems.append(f"{name}: litellm cannot price it ({type(exc).__name__})")
            break
        if not _agree(price, usage, ours, theirs_usd):
            problems.append(
                f"{name} ({usage.prompt_tokens} prompt, {usage.completion_tokens} completion "
                f"tokens): the worker's price is {ours} nano-USD, litellm's "
                f"{theirs_usd!r} USD"
            )
    if problems:
        raise ConfigError(
            f"model {pricing.litellm_model!r}: the worker cannot price it exactly as litellm "
            f"does ({'; '.join(problems[:3])}); set its prices in model_info (e.g. "
            "model_info.input_cost_per_token and model_info.output_cost_per_token)"
        )


def _litellm_usd(pricing: _Pricing, usage: TokenUsage) -> float:
    prompt_usd, completion_usd = litellm.cost_per_token(
        model=pricing.pricing_model,
        custom_llm_provider=pricing.provider,
        usage_object=litellm_usage(usage),
        data_residency=pricing.data_residency,
        vertex_location=pricing.vertex_location,
        requested_model_info_override=_as_floats(pricing.table) if pricing.overridden else None,
    )
    return float(prompt_usd) + float(completion_usd)


def _as_floats(table: Mapping[str, Any]) -> dict[str, Any]:
    """The table as litellm reads a model list: its rates are floats, not Decimals."""
    return {k: float(v) if isinstance(v, Decimal) else v for k, v in table.items()}


def _agree(price: ModelPrice, usage: TokenUsage, ours: int, theirs_usd: float) -> bool:
    """Whether litellm's float figure, rounded half up to nano-USD, is the worker's; or
    differs by the one nano-USD that float rounding can move across a half (the exact
    cost then lies within float error of ``n + 0.5``)."""
    if not math.isfinite(theirs_usd):
        return False
    theirs_exact = Decimal(repr(theirs_usd))
    theirs_nano = theirs_exact.scaleb(9)
    theirs = to_nanousd(theirs_exact, round_up=False)
    if theirs == ours:
        return True
    if abs(theirs - ours) != 1:
        return False
    half = Decimal(min(theirs, ours)) + Decimal("0.5")
    tolerance = max(abs(theirs_nano), Decimal(1)) * Decimal("1e-12")
    return abs(theirs_nano - half) <= tolerance


def _shapes(pricing: _Pricing, price: ModelPrice) -> list[tuple[str, TokenUsage]]:
    """The usages every price is checked on: each kind of token alone and all mixed, for a
    small prompt and on both sides of every prompt size where a rate changes."""
    sizes: list[tuple[str, int]] = [("", 1000)]
    for above in _breakpoints(pricing):
        if above > 0:
            sizes.append((f" at {above} prompt tokens", above))
        sizes.append((f" at {above + 1} prompt tokens", above + 1))
    shapes: list[tuple[str, TokenUsage]] = []
    multiplied = bool(price.geo_multipliers) or price.fast_multiplier != 1
    for where, prompt in sizes:
        for name in _SHAPE_NAMES:
            if where and name not in ("plain", "mix"):
                continue
            usage = _shape(name, prompt)
            if usage is not None:
                shapes.append((name + where, usage))
        if multiplied:
            mix = _shape("mix", prompt)
            if mix is not None:
                for geo, _ in price.geo_multipliers or (("us", Decimal(1)),):
                    shapes.append(
                        (
                            f"mix served at {geo}, fast{where}",
                            replace(mix, inference_geo=geo, speed="fast"),
                        )
                    )
    return shapes


def _shape(name: str, prompt: int) -> TokenUsage | None:
    completion = 577
    if name == "plain":
        return TokenUsage(prompt, completion)
    if name == "cache read":
        return TokenUsage(prompt, completion, cache_read_tokens=prompt * 3 // 5)
    if name == "cache write":
        written = prompt * 2 // 5
        return TokenUsage(
            prompt,
            completion,
            cache_creation_tokens=written,
            cache_creation_1h_tokens=written // 4,
            cache_creation_12h_tokens=written // 8,
        )
    if name == "reasoning":
        return TokenUsage(prompt, completion, reasoning_tokens=311)
    if name == "audio":
        return TokenUsage(
            prompt, completion, audio_prompt_tokens=prompt // 5, audio_completion_tokens=97
        )
    if prompt < 20:
        return None
    written = prompt * 3 // 20
    return TokenUsage(
        prompt,
        completion,
        cache_read_tokens=prompt // 4,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written // 3,
        cache_creation_12h_tokens=written // 7,
        audio_prompt_tokens=prompt // 13,
        image_prompt_tokens=prompt // 17,
        video_prompt_tokens=prompt // 19,
        reasoning_tokens=211,
        audio_completion_tokens=53,
        image_completion_tokens=31,
        video_completion_tokens=17,
    )


# --- usage ----------------------------------------------------------------------------------


def _litellm_usage_of(response: Any) -> Usage | None:
    raw = (
        response.get("usage") if isinstance(response, Mapping) else getattr(response, "usage", None)
    )
    if raw is None:
        return None
    if isinstance(raw, Usage):
        return raw
    if not isinstance(raw, Mapping):
        dump = getattr(raw, "model_dump", None)
        if not callable(dump):
            return None
        raw = dump()
        if not isinstance(raw, Mapping):
            return None
    if litellm.AnthropicConfig.is_anthropic_usage_object(dict(raw)):
        return litellm.AnthropicConfig().calculate_usage(usage_object=raw, reasoning_content=None)
    try:
        return Usage(**raw)
    except (TypeError, ValueError):
        return None


def _token_usage(usage: Usage, prompt: int, completion: int) -> TokenUsage:
    """The counts litellm bills (``generic_cost_per_token``'s reading of the details)."""
    cached = written = audio = image = video = 0
    written_1h = written_12h = 0
    if usage.prompt_tokens_details:
        details = parse_prompt_tokens_details(usage)
        cached = details["cache_hit_tokens"]
        written = details["cache_creation_tokens"]
        audio, image, video = (
            details["audio_tokens"],
            details["image_tokens"],
            details["video_tokens"],
        )
        by_ttl = details["cache_creation_token_details"]
        if by_ttl is not None:
            short = (by_ttl.ephemeral_5m_input_tokens or 0) + (
                by_ttl.ephemeral_30m_input_tokens or 0
            )
            written_1h = by_ttl.ephemeral_1h_input_tokens or 0
            written_12h = by_ttl.ephemeral_12h_input_tokens or 0
            written = max(written, short + written_1h + written_12h)
        text = details["text_tokens"]
        total = text + cached + audio + written + image + video
        if (cached > 0 or written > 0) and total > prompt:
            # Overlapping counts: litellm bills a modality only where the cache did not.
            budget = max(prompt - cached - written, 0)
            audio = min(audio, budget)
            image = min(image, budget - audio)
            video = min(video, budget - audio - image)
        elif text or details["image_count"]:
            # An explicit text count is billed as reported, whatever the total says.
            prompt = text + cached + audio + written + image + video
        prompt = max(prompt, cached + written + audio + image + video)
    reasoning = audio_out = image_out = video_out = 0
    if usage.completion_tokens_details is not None:
        out = parse_completion_tokens_details(usage)
        reasoning = out["reasoning_tokens"]
        audio_out, image_out, video_out = (
            out["audio_tokens"],
            out["image_tokens"],
            out["video_tokens"],
        )
        breakdown = reasoning + audio_out + image_out + video_out
        if out["text_tokens"]:
            completion = out["text_tokens"] + breakdown
        completion = max(completion, breakdown)
    geo = getattr(usage, "inference_geo", None)
    speed = getattr(usage, "speed", None)
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written_1h,
        cache_creation_12h_tokens=written_12h,
        audio_prompt_tokens=audio,
        image_prompt_tokens=image,
        video_prompt_tokens=video,
        reasoning_tokens=reasoning,
        audio_completion_tokens=audio_out,
        image_completion_tokens=image_out,
        video_completion_tokens=video_out,
        inference_geo=geo if isinstance(geo, str) else None,
        speed=speed if isinstance(speed, str) else None,
    )
