"""Each price checked against ``litellm.cost_per_token`` at start-up, on usages of
every kind of token and on both sides of every threshold: a model the worker would price
otherwise than litellm is refused, never priced approximately."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any, Final

import litellm
import litellm.utils

from schemas.money import to_nanousd
from worker.errors import ConfigError
from worker.pricebook.entry import Pricing
from worker.pricebook.rates import breakpoints_of
from worker.pricebook.usage import litellm_usage
from worker.prices import ModelPrice, TokenUsage

# Usage shapes for the start-up check; each is scaled to a prompt size (see ``_shapes``).
_SHAPE_NAMES: Final = ("plain", "cache read", "cache write", "reasoning", "audio", "mix")


def verify(pricing: Pricing, price: ModelPrice) -> None:
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


def _litellm_usd(pricing: Pricing, usage: TokenUsage) -> float:
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


def _shapes(pricing: Pricing, price: ModelPrice) -> list[tuple[str, TokenUsage]]:
    """The usages every price is checked on: each kind of token alone and all mixed, for a
    small prompt and on both sides of every prompt size where a rate changes."""
    sizes: list[tuple[str, int]] = [("", 1000)]
    for above in breakpoints_of(pricing):
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
