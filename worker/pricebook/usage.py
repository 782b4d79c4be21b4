"""litellm's usage of a response read into ``TokenUsage`` (as its cost functions read
it), and back into litellm's ``Usage``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import litellm
import litellm.utils
from litellm.litellm_core_utils.llm_cost_calc.utils import (
    parse_completion_tokens_details,
    parse_prompt_tokens_details,
)
from litellm.types.utils import (
    CacheCreationTokenDetails,
    CompletionTokensDetailsWrapper,
    PromptTokensDetailsWrapper,
    Usage,
)

from worker.prices import TokenUsage


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
