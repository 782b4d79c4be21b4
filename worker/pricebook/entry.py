"""Which cost-map entry prices a model-list entry: ``model_info.base_model``, else the
model as given, then its bare name within the same provider, with ``model_info``'s price
keys merged over it (see the package docstring)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import litellm
import litellm.utils
from litellm.litellm_core_utils.litellm_logging import resolve_vertex_location_for_cost
from litellm.llms.openai.data_residency import infer_openai_data_residency
from litellm.llms.openai_like.json_loader import JSONProviderRegistry
from litellm.types.utils import (
    ABOVE_THRESHOLD_COST_KEY_PATTERN,
    CustomPricingLiteLLMParams,
)

from worker.errors import ConfigError
from worker.prices import to_price

_COST_MAP_SKIP: Final = frozenset({"sample_spec"})
_PRICE_KEYS: Final = frozenset(CustomPricingLiteLLMParams.model_fields) | {
    "provider_specific_entry",
    "off_peak_pricing",
}
_PRICE_LIKE = re.compile(r"cost|multiplier|pricing")
_PROVIDER_FAMILIES: Final = {"vertex_ai": ("vertex_ai-",), "bedrock": ("bedrock_converse",)}

# The four families of rates litellm tiers by prompt size (``<prefix>_above_<N>_tokens``).
INPUT: Final = "input_cost_per_token"
OUTPUT: Final = "output_cost_per_token"
CACHE_READ: Final = "cache_read_input_token_cost"
CACHE_WRITE: Final = "cache_creation_input_token_cost"
CACHE_WRITE_1H: Final = "cache_creation_input_token_cost_above_1hr"
CACHE_WRITE_12H: Final = "cache_creation_input_token_cost_above_12hr"
REASONING: Final = "output_cost_per_reasoning_token"
AUDIO_INPUT_ABOVE: Final = "input_cost_per_audio_token_above_"  # tiered like the four
TIERED_PREFIXES: Final = tuple(f"{key}_above_" for key in (INPUT, OUTPUT, CACHE_READ, CACHE_WRITE))
# Threshold keys of a service tier or of batch pricing: litellm's chat path ignores them.
NON_STANDARD_SUFFIXES: Final = (
    "_batches",
    "_flex",
    "_priority",
    "_balanced",
    "_fast",
    "_ultrafast",
)
PER_SECOND_KEYS: Final = ("cost_per_second", "input_cost_per_second", "output_cost_per_second")
WALL_CLOCK_MODES: Final = frozenset({"chat", "completion", "responses", "embedding"})
_DASHSCOPE: Final = frozenset({"dashscope", "qwencloud", "qwen_ai_platform"})
LIVE_PRICE_PROVIDERS: Final = frozenset({"ollama", "ollama_chat", "lemonade"})
INCLUSIVE_THRESHOLD_PROVIDERS: Final = frozenset({"xai"})


@dataclass(frozen=True, slots=True)
class Pricing:
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


def pricing_of(litellm_params: Mapping[str, Any], model_info: Mapping[str, Any]) -> Pricing | None:
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
    return Pricing(
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
    """The cost map's key and entry for ``model`` (see the package docstring); a name
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
    missing = [key for key in (INPUT, OUTPUT) if overrides.get(key) is None]
    if missing:
        raise ConfigError(
            f"litellm's cost map has no price for {litellm_model!r}; add "
            + " and ".join(f"model_info.{key}" for key in missing)
            + " (USD per token, e.g. 0.00000015) to this entry"
        )


def prices_tokens(table: Mapping[str, Any]) -> bool:
    """litellm's ``_has_token_or_tiered_pricing``: what keeps it from per-second pricing."""
    return (
        or_zero(cost_map_rate(table.get(INPUT))) > 0
        or or_zero(cost_map_rate(table.get(OUTPUT))) > 0
        or table.get("tiered_pricing") is not None
    )


def _merged(table: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with ``overrides`` over it, as LiteLLM builds a call's custom pricing: a
    flat input or output rate set over a ``tiered_pricing`` table is written into each of
    its tiers (the table would win over it otherwise)."""
    merged = {**table, **overrides}
    flat = {key: overrides[key] for key in (INPUT, OUTPUT) if overrides.get(key) is not None}
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


def cost_map_rate(value: object) -> Decimal | None:
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


def or_zero(value: Decimal | None) -> Decimal:
    return Decimal(0) if value is None else value
