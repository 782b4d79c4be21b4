"""What the fake provider is told (``FakeProviderConfig``, changeable while it runs) and
what it counts (``FakeProviderStats``)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_TOKENS_LIMIT = 1_000_000
"""Requests asking for more output tokens than this are answered 400, like a real provider."""

CountTokens = Literal["exact", "fast"]
Vendor = Literal["openai", "anthropic", "gemini"]


@dataclass(slots=True)
class FakeProviderConfig:
    """How the fake answers.

    Rates are fractions of requests in [0, 1]; a valid request draws one random number:
    below ``rate_429`` it gets a 429 (with Retry-After ``retry_after_s``), below
    ``rate_429 + error_rate`` a 500. Latency applies to every valid request, errors included.
    ``output_tokens`` is the natural length of a reply; a smaller ``max_tokens`` caps it.
    ``omit_usage`` leaves ``usage`` out of replies. When ``api_key`` is set, requests must
    send it (as a Bearer token, or in the header the vendor uses); others get a 401 that
    echoes the key they sent, unmasked, the way a careless provider might, so tests can
    check that error messages are redacted.

    ``usage_breakdown`` sets the parts of each reply's usage with rates of their own,
    in tokens (``cache_read_tokens``, ``cache_creation_tokens``, ``cache_creation_1h_tokens``
    and ``audio_prompt_tokens`` of the prompt; ``reasoning_tokens``, added to the output
    within ``max_tokens``, and ``audio_completion_tokens`` of it), each capped by what is
    left; ``report_prompt_tokens`` replaces the counted prompt tokens (a 300k-token prompt
    without sending one).
    """

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    output_tokens: int = 16
    seed: int | None = None
    count_tokens: CountTokens = "exact"
    omit_usage: bool = False
    api_key: str | None = None
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-3.5-turbo", "fake-model")
    usage_breakdown: dict[str, int] = field(default_factory=dict)
    report_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        self._check_numbers()
        if self.count_tokens not in ("exact", "fast"):
            raise ValueError(f"count_tokens must be 'exact' or 'fast', got {self.count_tokens!r}")
        if not isinstance(self.omit_usage, bool):
            raise ValueError(f"omit_usage must be a boolean, got {self.omit_usage!r}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError("api_key must be a string or null")
        self.models = tuple(self.models)
        self.usage_breakdown = _checked_breakdown(self.usage_breakdown)

    def _check_numbers(self) -> None:
        for name in ("latency_s", "latency_jitter_s", "retry_after_s"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("error_rate", "rate_429"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if not _is_int(self.output_tokens) or self.output_tokens < 0:
            raise ValueError(f"output_tokens must be an integer >= 0, got {self.output_tokens!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or null, got {self.seed!r}")
        report = self.report_prompt_tokens
        if report is not None and (not _is_int(report) or report < 1):
            raise ValueError(
                f"report_prompt_tokens must be an integer >= 1 or null, got {report!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        return data


USAGE_BREAKDOWN_KEYS: tuple[str, ...] = (
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "audio_prompt_tokens",
    "reasoning_tokens",
    "audio_completion_tokens",
)


@dataclass(slots=True)
class FakeProviderStats:
    """Counters of chat completion requests (other endpoints are not counted). In JSON
    (GET /stats) the status codes of ``by_status`` are strings. ``requests_total`` counts
    requests answered; ``requests_received`` every request that arrived, including those
    whose client went away before the answer (a killed worker's calls in flight)."""

    requests_received: int = 0
    requests_total: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    completions_succeeded: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0

    def reset(self) -> None:
        self.requests_received = 0
        self.requests_total = 0
        self.by_status.clear()
        self.by_model.clear()
        self.completions_succeeded = 0
        self.prompt_tokens_total = 0
        self.completion_tokens_total = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_received": self.requests_received,
            "requests_total": self.requests_total,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "by_model": dict(sorted(self.by_model.items())),
            "completions_succeeded": self.completions_succeeded,
            "prompt_tokens_total": self.prompt_tokens_total,
            "completion_tokens_total": self.completion_tokens_total,
        }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_breakdown(breakdown: object) -> dict[str, int]:
    """``usage_breakdown`` checked: known keys, each an integer >= 0."""
    if not isinstance(breakdown, dict):
        raise ValueError("usage_breakdown must be an object of token counts")
    for key, value in breakdown.items():
        if key not in USAGE_BREAKDOWN_KEYS:
            raise ValueError(
                f"usage_breakdown.{key} is unknown; use {', '.join(USAGE_BREAKDOWN_KEYS)}"
            )
        if not _is_int(value) or value < 0:
            raise ValueError(f"usage_breakdown.{key} must be an integer >= 0, got {value!r}")
    return dict(breakdown)
