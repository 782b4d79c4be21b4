"""The prices litellm computes from more than token counts (per second, live from a
server, per character, off-peak hours, routing fees): refused, with what to set instead,
since no estimate could bound them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from worker.pricebook.entry import (
    LIVE_PRICE_PROVIDERS,
    PER_SECOND_KEYS,
    WALL_CLOCK_MODES,
    Pricing,
    prices_tokens,
)

_SET_PRICES: Final = (
    "set model_info.input_cost_per_token and model_info.output_cost_per_token (USD per "
    "token) to price it by tokens, as litellm then does"
)


def refusal_of(pricing: Pricing) -> str | None:
    """Why litellm's price of this entry cannot be computed from token counts, and what
    to set instead; None when it can."""
    for rule in (_per_second, _provider_rule, _off_peak, _explicit_cache, _model_router):
        reason = rule(pricing)
        if reason is not None:
            return reason
    return None


def _per_second(pricing: Pricing) -> str | None:
    table = pricing.table
    per_second = any(table.get(key) is not None for key in PER_SECOND_KEYS)
    wall_clock = table.get("mode") is None or table.get("mode") in WALL_CLOCK_MODES
    if per_second and wall_clock and not prices_tokens(table):
        return (
            "litellm prices it per second of the call, which no estimate can bound; " + _SET_PRICES
        )
    return None


def _provider_rule(pricing: Pricing) -> str | None:
    """A provider's own way of pricing the cost map's entry (custom pricing is exempt)."""
    if pricing.overridden:
        return None
    table, provider = pricing.table, pricing.provider
    if provider in LIVE_PRICE_PROVIDERS:
        return f"litellm asks the running {provider} server for its price; {_SET_PRICES}"
    if provider == "perplexity":
        return (
            "litellm charges the cost Perplexity reports in each response (request and "
            f"search fees included), which is unknown before the call; {_SET_PRICES}"
        )
    if not provider.startswith("vertex_ai"):
        return None
    if (
        table.get("input_cost_per_token_above_128k_tokens") is not None
        or table.get("output_cost_per_token_above_128k_tokens") is not None
    ):
        return (
            "litellm prices vertex_ai's *_above_128k_tokens rates by a rule of its own "
            "(every prompt token at one rate, cached ones included; output tiered by the "
            f"output's size); {_SET_PRICES}"
        )
    if table.get("output_cost_per_character") is not None:
        return (
            "litellm prices its output per character of the answer; set model_info."
            "output_cost_per_character: null to price it per token"
        )
    return None


def _off_peak(pricing: Pricing) -> str | None:
    if pricing.table.get("off_peak_pricing") is None:
        return None
    return (
        "litellm prices it at off-peak rates during some hours of the day; set "
        "model_info.off_peak_pricing: null to price every call at the standard rates"
    )


def _explicit_cache(pricing: Pricing) -> str | None:
    table = pricing.table
    tiers = table.get("tiered_pricing")
    tier_list = tiers if isinstance(tiers, list) else []
    if table.get("explicit_cache_read_input_token_cost") is None and not any(
        isinstance(tier, Mapping) and tier.get("explicit_cache_read_input_token_cost") is not None
        for tier in tier_list
    ):
        return None
    return (
        "litellm prices explicitly cached tokens by the cache type a response reports; "
        "set model_info.explicit_cache_read_input_token_cost: null to price cached "
        "tokens at cache_read_input_token_cost"
    )


def _model_router(pricing: Pricing) -> str | None:
    model = pricing.pricing_model.lower()
    if pricing.provider != "azure_ai" or not re.search(r"model[-_]router", model):
        return None
    if model.removeprefix("azure_ai/") in ("model-router", "model_router"):
        return None
    return (
        "litellm adds Azure AI Model Router's routing fee to the routed model's "
        "price; set model_info.base_model to azure_ai/model_router or price it in "
        "model_info"
    )
