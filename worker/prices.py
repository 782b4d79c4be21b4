"""Model prices and the arithmetic that turns token usage into nano-USD.

A price is a set of ``Rates`` (USD per token of each kind: plain input, cached input,
cache writes by lifetime, audio, image and video input; plain output, reasoning, audio,
image and video output), the ``PriceTier`` rates that replace them above a prompt size,
and multipliers (a deployment's regional uplift, a provider's surcharge for the region
or speed a request was served at). That is the whole of what litellm's cost functions
apply to a chat call; ``worker.pricebook`` builds a ``ModelPrice`` from litellm's cost
map and checks it against litellm at start-up, and this module stays free of litellm.

Prices are exact ``Decimal`` USD per token (litellm's cost map holds floats such as
``1.5e-07``; they are read through ``str`` so ``1.5e-07`` stays ``0.00000015``). Costs
are integers of nano-USD: an actual cost rounds half up, an upper bound rounds up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Final

from schemas.money import to_nanousd

# Products and sums of finite decimals are exact at unbounded precision: nothing is
# rounded before the one rounding to nano-USD.
_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_ONE: Final = Decimal(1)
_NO_MULTIPLIER_GEOS: Final = frozenset({"global", "not_available"})


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The tokens of one call, as litellm prices them.

    ``prompt_tokens`` counts every input token, cached and cache-written ones included
    (OpenAI's convention; litellm turns Anthropic's ``input_tokens`` into it), and
    ``completion_tokens`` every output token, reasoning included. The other counts say
    what part of those totals is of a kind with its own rate; the rest is plain text.
    ``cache_creation_1h_tokens`` and ``cache_creation_12h_tokens`` are the parts of
    ``cache_creation_tokens`` written for one hour or twelve (the rest is written for the
    provider's short lifetime, 5 or 30 minutes). ``inference_geo`` and ``speed`` are what
    the provider reported serving the call at (Anthropic: ``"us"``, ``"fast"``).
    """

    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    cache_creation_12h_tokens: int = 0
    audio_prompt_tokens: int = 0
    """Uncached audio input."""
    image_prompt_tokens: int = 0
    video_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    audio_completion_tokens: int = 0
    image_completion_tokens: int = 0
    video_completion_tokens: int = 0
    inference_geo: str | None = None
    speed: str | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("inference_geo", "speed"):
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{item.name} must be a string or None, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{item.name} must be an integer >= 0, got {value!r}")
        prompt_parts = (
            self.cache_read_tokens
            + self.cache_creation_tokens
            + self.audio_prompt_tokens
            + self.image_prompt_tokens
            + self.video_prompt_tokens
        )
        if prompt_parts > self.prompt_tokens:
            raise ValueError(
                f"cached, cache-written, audio, image and video prompt tokens ({prompt_parts}) "
                f"exceed prompt_tokens ({self.prompt_tokens})"
            )
        if self.cache_creation_1h_tokens + self.cache_creation_12h_tokens > (
            self.cache_creation_tokens
        ):
            raise ValueError("1-hour and 12-hour cache writes exceed cache_creation_tokens")
        completion_parts = (
            self.reasoning_tokens
            + self.audio_completion_tokens
            + self.image_completion_tokens
            + self.video_completion_tokens
        )
        if completion_parts > self.completion_tokens:
            raise ValueError(
                f"reasoning, audio, image and video completion tokens ({completion_parts}) "
                f"exceed completion_tokens ({self.completion_tokens})"
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token of each kind. A rate left ``None`` is billed as litellm bills a rate
    its cost map leaves out: cached, cache-written and other input at the input rate (a
    1-hour or 12-hour write at the cache-write rate), other output at the output rate."""

    input_usd_per_token: Decimal
    output_usd_per_token: Decimal
    cache_read_usd_per_token: Decimal | None = None
    cache_creation_usd_per_token: Decimal | None = None
    cache_creation_1h_usd_per_token: Decimal | None = None
    cache_creation_12h_usd_per_token: Decimal | None = None
    audio_input_usd_per_token: Decimal | None = None
    image_input_usd_per_token: Decimal | None = None
    video_input_usd_per_token: Decimal | None = None
    reasoning_usd_per_token: Decimal | None = None
    audio_output_usd_per_token: Decimal | None = None
    image_output_usd_per_token: Decimal | None = None
    video_output_usd_per_token: Decimal | None = None

    def __post_init__(self) -> None:
        for item in fields(Rates):
            value = getattr(self, item.name)
            if value is None and item.name not in ("input_usd_per_token", "output_usd_per_token"):
                continue
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"{item.name} must be a finite Decimal >= 0, got {value!r}")

    def resolved(self) -> _Resolved:
        """Every rate, the fallbacks applied."""
        inp = self.input_usd_per_token
        out = self.output_usd_per_token
        write = _or(self.cache_creation_usd_per_token, inp)
        return _Resolved(
            prompt=(
                inp,
                _or(self.cache_read_usd_per_token, inp),
                write,
                _or(self.cache_creation_1h_usd_per_token, write),
                _or(self.cache_creation_12h_usd_per_token, write),
                _or(self.audio_input_usd_per_token, inp),
                _or(self.image_input_usd_per_token, inp),
                _or(self.video_input_usd_per_token, inp),
            ),
            completion=(
                out,
                _or(self.reasoning_usd_per_token, out),
                _or(self.audio_output_usd_per_token, out),
                _or(self.image_output_usd_per_token, out),
                _or(self.video_output_usd_per_token, out),
            ),
        )


@dataclass(frozen=True, slots=True)
class PriceTier:
    """The rates of every token of a call whose prompt has more than
    ``above_prompt_tokens`` tokens (litellm's ``*_above_200k_tokens`` keys and
    ``tiered_pricing`` tables: the tier is chosen by the prompt's size, and applies to
    the whole call, output included)."""

    above_prompt_tokens: int
    rates: Rates

    def __post_init__(self) -> None:
        if not isinstance(self.above_prompt_tokens, int) or self.above_prompt_tokens < 0:
            raise ValueError(f"above_prompt_tokens must be an integer >= 0, got {self!r}")


@dataclass(frozen=True, slots=True)
class _Resolved:
    prompt: tuple[Decimal, ...]
    """input, cache read, cache write (short), 1-hour write, 12-hour write, audio, image,
    video: in the order ``_prompt_counts`` returns the counts."""
    completion: tuple[Decimal, ...]
    """output, reasoning, audio, image, video (``_completion_counts``)."""
    dearest_prompt: Decimal = field(init=False)
    dearest_completion: Decimal = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dearest_prompt", max(self.prompt))
        object.__setattr__(self, "dearest_completion", max(self.completion))


@dataclass(frozen=True, slots=True)
class ModelPrice(Rates):
    """What a model charges: its base ``Rates``, the ``tiers`` that replace them above a
    prompt size (ascending), and multipliers of the whole cost: ``multiplier`` (the
    deployment's own: a regional endpoint's uplift), ``geo_multipliers`` (by the
    ``inference_geo`` a response reports) and ``fast_multiplier`` (for ``speed: fast``)."""

    tiers: tuple[PriceTier, ...] = ()
    multiplier: Decimal = _ONE
    geo_multipliers: tuple[tuple[str, Decimal], ...] = ()
    fast_multiplier: Decimal = _ONE
    _segments: tuple[tuple[int, _Resolved], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )
    _bound_multiplier: Decimal = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        Rates.__post_init__(self)
        multipliers = [self.multiplier, self.fast_multiplier]
        multipliers += [value for _, value in self.geo_multipliers]
        for value in multipliers:
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"a price multiplier must be a finite Decimal >= 0, got {value!r}")
        above = [tier.above_prompt_tokens for tier in self.tiers]
        if above != sorted(set(above)):
            raise ValueError(f"tiers must be in ascending order of above_prompt_tokens: {above}")
        segments = [(-1, self.resolved())]
        segments += [(tier.above_prompt_tokens, tier.rates.resolved()) for tier in self.tiers]
        object.__setattr__(self, "_segments", tuple(segments))
        largest_geo = max((value for _, value in self.geo_multipliers), default=_ONE)
        bound_multiplier = (
            self.multiplier * max(largest_geo, _ONE) * max(self.fast_multiplier, _ONE)
        )
        object.__setattr__(self, "_bound_multiplier", bound_multiplier)

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates a call with this many prompt tokens is billed at."""
        chosen: Rates = self
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                chosen = tier.rates
        return chosen

    def cost_usd(self, usage: TokenUsage) -> Decimal:
        """The exact cost of ``usage`` in USD, before any rounding."""
        rates = self._segment(usage.prompt_tokens)
        usd = _EXACT.add(
            _dot(rates.prompt, _prompt_counts(usage)),
            _dot(rates.completion, _completion_counts(usage)),
        )
        return _EXACT.multiply(usd, self._usage_multiplier(usage))

    def cost_nanousd(self, usage: TokenUsage) -> int:
        """The actual cost of ``usage``, exact, rounded half up to nano-USD."""
        return to_nanousd(self.cost_usd(usage), round_up=False)

    def bound_nanousd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """An upper bound, rounded up, of what any usage of at most ``prompt_tokens`` and
        ``completion_tokens`` can cost: every token of the most expensive kind, at the
        most expensive tier those prompt sizes reach, with the largest multipliers."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must be >= 0")
        worst = Decimal(0)
        segments = self._segments
        for index, (above, rates) in enumerate(segments):
            if above >= prompt_tokens and index > 0:
                break
            reach = prompt_tokens
            if index + 1 < len(segments):
                reach = min(reach, segments[index + 1][0])
            usd = _EXACT.add(
                _EXACT.multiply(rates.dearest_prompt, reach),
                _EXACT.multiply(rates.dearest_completion, completion_tokens),
            )
            worst = max(worst, usd)
        return to_nanousd(_EXACT.multiply(worst, self._bound_multiplier), round_up=True)

    def _segment(self, prompt_tokens: int) -> _Resolved:
        chosen = self._segments[0][1]
        for above, rates in self._segments[1:]:
            if prompt_tokens > above:
                chosen = rates
        return chosen

    def _usage_multiplier(self, usage: TokenUsage) -> Decimal:
        multiplier = self.multiplier
        if usage.speed == "fast":
            multiplier = _EXACT.multiply(multiplier, self.fast_multiplier)
        geo = usage.inference_geo.lower() if usage.inference_geo else None
        if geo is not None and geo not in _NO_MULTIPLIER_GEOS:
            for name, value in self.geo_multipliers:
                if name == geo:
                    multiplier = _EXACT.multiply(multiplier, value)
                    break
        return multiplier


def _or(rate: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if rate is None else rate


def _prompt_counts(usage: TokenUsage) -> tuple[int, ...]:
    written = usage.cache_creation_tokens
    long_writes = usage.cache_creation_1h_tokens + usage.cache_creation_12h_tokens
    text = (
        usage.prompt_tokens
        - usage.cache_read_tokens
        - written
        - usage.audio_prompt_tokens
        - usage.image_prompt_tokens
        - usage.video_prompt_tokens
    )
    return (
        text,
        usage.cache_read_tokens,
        written - long_writes,
        usage.cache_creation_1h_tokens,
        usage.cache_creation_12h_tokens,
        usage.audio_prompt_tokens,
        usage.image_prompt_tokens,
        usage.video_prompt_tokens,
    )


def _completion_counts(usage: TokenUsage) -> tuple[int, ...]:
    text = (
        usage.completion_tokens
        - usage.reasoning_tokens
        - usage.audio_completion_tokens
        - usage.image_completion_tokens
        - usage.video_completion_tokens
    )
    return (
        text,
        usage.reasoning_tokens,
        usage.audio_completion_tokens,
        usage.image_completion_tokens,
        usage.video_completion_tokens,
    )


def _dot(rates: tuple[Decimal, ...], counts: tuple[int, ...]) -> Decimal:
    total = Decimal(0)
    for rate, count in zip(rates, counts, strict=True):
        if count:
            total = _EXACT.add(total, _EXACT.multiply(rate, count))
    return total


def to_price(value: float | str | Decimal) -> Decimal:
    """A price from litellm's map or a YAML file as an exact Decimal (floats via str)."""
    price = value if isinstance(value, Decimal) else Decimal(str(value))
    if not price.is_finite() or price < 0:
        raise ValueError(f"price must be a finite number >= 0, got {value!r}")
    return price
