"""litellm's chat rates restated in ``Decimal``: the rates at one prompt size under each
provider's rules, and a ``ModelPrice`` made of them on every stretch of prompt sizes
between the entry's thresholds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from litellm.constants import FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO
from litellm.litellm_core_utils.llm_cost_calc.tiered_pricing import select_tier_for_input
from litellm.litellm_core_utils.llm_cost_calc.utils import (
    get_modality_token_cost_key,
)

from worker.pricebook.entry import (
    AUDIO_INPUT_ABOVE,
    CACHE_READ,
    CACHE_WRITE,
    CACHE_WRITE_1H,
    CACHE_WRITE_12H,
    INCLUSIVE_THRESHOLD_PROVIDERS,
    INPUT,
    NON_STANDARD_SUFFIXES,
    OUTPUT,
    REASONING,
    TIERED_PREFIXES,
    Pricing,
    cost_map_rate,
    or_zero,
)
from worker.prices import ModelPrice, PriceTier, Rates, to_price


def rated_price(pricing: Pricing) -> ModelPrice:
    breakpoints = breakpoints_of(pricing)
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
        and cost_map_rate(value) is not None
    )


def _uplift(pricing: Pricing) -> Decimal:
    """The deployment's multiplier: OpenAI's regional-processing or FedRAMP uplift (by
    ``api_base``), Vertex AI's regional-endpoint uplift (by ``vertex_location``)."""
    table = pricing.table
    multiplier = Decimal(1)
    residency = pricing.data_residency
    if residency is not None and pricing.style == "generic":
        regional = cost_map_rate(
            table.get(f"regional_processing_uplift_multiplier_{residency.lower()}")
        )
        if regional is not None:
            multiplier *= regional
        if residency.lower() == "fedramp":
            fedramp = cost_map_rate(table.get("fedramp_uplift_multiplier"))
            if fedramp is not None:
                multiplier *= fedramp
    location = pricing.vertex_location
    if location is not None and location.lower() != "global" and pricing.style == "generic":
        regional_endpoint = cost_map_rate(table.get("regional_endpoint_uplift_multiplier"))
        if regional_endpoint is not None:
            multiplier *= regional_endpoint
    return multiplier


def breakpoints_of(pricing: Pricing) -> list[int]:
    """The prompt sizes N where some rate changes: litellm tests every rate as ``p > N``
    (``p >= T``, that is ``p > ceil(T) - 1``, for providers with inclusive thresholds)."""
    table = pricing.table
    found: set[int] = set()
    if pricing.style != "dashscope":
        inclusive = pricing.provider in INCLUSIVE_THRESHOLD_PROVIDERS
        thresholds = [value for value, _ in _thresholds(table)]
        thresholds += [
            value
            for key, rate in table.items()
            if rate is not None
            and key.startswith(AUDIO_INPUT_ABOVE)
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
                    value = cost_map_rate(bound)
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


def _rates_at(pricing: Pricing, prompt_tokens: int) -> Rates:
    if pricing.style == "dashscope":
        return _dashscope_rates(pricing.table, prompt_tokens)
    rates = _generic_rates(
        pricing.table,
        prompt_tokens,
        fireworks=pricing.provider == "fireworks_ai",
        inclusive=pricing.provider in INCLUSIVE_THRESHOLD_PROVIDERS,
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
    if fireworks and table.get(CACHE_READ) is None and cost_map_rate(table.get(INPUT)) is not None:
        ratio = Decimal(repr(FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO))
        table = {**table, CACHE_READ: cost_map_rate(table.get(INPUT)) * ratio}  # type: ignore[operator]
    tier = _priced_tier(table, prompt_tokens)
    if tier is not None:
        inp = _tier_rate(tier, INPUT)
        out = (
            _tier_rate(tier, OUTPUT)
            if OUTPUT in tier
            else or_zero(cost_map_rate(table.get(OUTPUT)))
        )
        write = _tier_rate(tier, CACHE_WRITE, INPUT)
        read = _tier_rate(tier, CACHE_READ, INPUT)
        write_1h = write if tier.get(CACHE_WRITE_1H) is None else _tier_rate(tier, CACHE_WRITE_1H)
        write_12h = (
            write if tier.get(CACHE_WRITE_12H) is None else _tier_rate(tier, CACHE_WRITE_12H)
        )
        if REASONING in tier or OUTPUT in tier:
            reasoning = _tier_rate(tier, REASONING, OUTPUT)
        else:
            reasoning = _or(cost_map_rate(table.get(REASONING)), out)
    else:
        inp = or_zero(cost_map_rate(table.get(INPUT)))
        out = or_zero(cost_map_rate(table.get(OUTPUT)))
        if out == 0 and cost_map_rate(table.get("output_cost_per_image_token")) is not None:
            out = or_zero(cost_map_rate(table.get("output_cost_per_image_token")))
        write_or_none = cost_map_rate(table.get(CACHE_WRITE))
        read_or_none = cost_map_rate(table.get(CACHE_READ))
        key_1h, key_12h = CACHE_WRITE_1H, CACHE_WRITE_12H
        for threshold, text in _thresholds(table):
            if not (prompt_tokens > threshold or (inclusive and prompt_tokens == threshold)):
                continue
            inp = _or(cost_map_rate(table.get(f"{INPUT}_above_{text}_tokens")), inp)
            out = _or(cost_map_rate(table.get(f"{OUTPUT}_above_{text}_tokens")), out)
            write_or_none = _or_none(
                cost_map_rate(table.get(f"{CACHE_WRITE}_above_{text}_tokens")), write_or_none
            )
            read_or_none = _or_none(
                cost_map_rate(table.get(f"{CACHE_READ}_above_{text}_tokens")), read_or_none
            )
            if table.get(f"{CACHE_WRITE_1H}_above_{text}_tokens") is not None:
                key_1h = f"{CACHE_WRITE_1H}_above_{text}_tokens"
            if table.get(f"{CACHE_WRITE_12H}_above_{text}_tokens") is not None:
                key_12h = f"{CACHE_WRITE_12H}_above_{text}_tokens"
        write = _or(write_or_none, inp)
        read = _or(read_or_none, inp)
        write_1h = _or(cost_map_rate(table.get(key_1h)), write)
        write_12h = _or(cost_map_rate(table.get(key_12h)), write)
        reasoning = _or(cost_map_rate(table.get(REASONING)), out)
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
        audio_input_usd_per_token=_or(cost_map_rate(table.get(audio_key)), inp),
        image_input_usd_per_token=_or(cost_map_rate(table.get("input_cost_per_image_token")), inp),
        video_input_usd_per_token=_or(cost_map_rate(table.get("input_cost_per_video_token")), inp),
        reasoning_usd_per_token=reasoning,
        audio_output_usd_per_token=_or(
            cost_map_rate(table.get("output_cost_per_audio_token")), out
        ),
        image_output_usd_per_token=_or(
            cost_map_rate(table.get("output_cost_per_image_token")), out
        ),
        video_output_usd_per_token=_or(
            cost_map_rate(table.get("output_cost_per_video_token")), out
        ),
    )


def _dashscope_rates(table: Mapping[str, Any], prompt_tokens: int) -> Rates:
    """litellm's Dashscope calculator: one tier of ``tiered_pricing`` (by the whole
    prompt) for every token of the call; audio, image and video input billed as text."""
    inp = or_zero(cost_map_rate(table.get(INPUT)))
    read = _or(cost_map_rate(table.get(CACHE_READ)), inp)
    write = _or(cost_map_rate(table.get(CACHE_WRITE)), inp)
    out = or_zero(cost_map_rate(table.get(OUTPUT)))
    reasoning = cost_map_rate(table.get(REASONING))
    tiers = table.get("tiered_pricing")
    tier = (
        select_tier_for_input(tiered_pricing=tiers, input_tokens=prompt_tokens)
        if isinstance(tiers, list) and tiers
        else None
    )
    if tier is not None:
        flat_out, flat_reasoning = out, reasoning
        inp = _tier_rate(tier, INPUT)
        read = _tier_rate(tier, CACHE_READ, INPUT)
        write = _tier_rate(tier, CACHE_WRITE, INPUT)
        out = _tier_rate(tier, OUTPUT) if OUTPUT in tier else flat_out
        if REASONING in tier:
            reasoning = _tier_rate(tier, REASONING)
        elif OUTPUT in tier:
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
    if tier is None or INPUT not in tier:
        return None
    return tier


def _thresholds(table: Mapping[str, Any]) -> list[tuple[Decimal, str]]:
    """The ``_above_<N>_tokens`` thresholds of the four tiered rate families, ascending:
    (N as a number, N as the key spells it)."""
    found: dict[str, Decimal] = {}
    for key, value in table.items():
        if value is None or not key.startswith(TIERED_PREFIXES) or "_tokens" not in key:
            continue
        if key.endswith(NON_STANDARD_SUFFIXES):
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
    return or_zero(cost_map_rate(value))


def _or(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


def _or_none(value: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if value is None else value
