"""The price model and its arithmetic: each kind of token at its rate, tiers by prompt
size, multipliers, rounding, and the upper bound that reservations hold."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.prices import ModelPrice, PriceTier, Rates, TokenUsage, to_price

D = Decimal
# Claude Sonnet 4.5's shape, in nano-USD per token: 3 in, 15 out, 0.3 cached, 3.75 written
# (6 for one hour).
SONNET = ModelPrice(
    D("0.000003"),
    D("0.000015"),
    cache_read_usd_per_token=D("0.0000003"),
    cache_creation_usd_per_token=D("0.00000375"),
    cache_creation_1h_usd_per_token=D("0.000006"),
)
# Gemini 2.5 Pro's shape: 1.25 / 10, and 2.5 / 15 (cached 0.25) above 200k prompt tokens.
GEMINI_PRO = ModelPrice(
    D("0.00000125"),
    D("0.00001"),
    cache_read_usd_per_token=D("0.000000125"),
    tiers=(
        PriceTier(
            200_000, Rates(D("0.0000025"), D("0.000015"), cache_read_usd_per_token=D("2.5E-7"))
        ),
    ),
)


def test_plain_usage_costs_prompt_times_input_plus_completion_times_output() -> None:
    assert SONNET.cost_nanousd(TokenUsage(1000, 500)) == 1000 * 3000 + 500 * 15000


def test_cached_prompt_tokens_are_billed_at_the_cache_read_rate() -> None:
    usage = TokenUsage(1000, 0, cache_read_tokens=600)

    assert SONNET.cost_nanousd(usage) == 400 * 3000 + 600 * 300


def test_cache_writes_are_billed_by_their_lifetime() -> None:
    usage = TokenUsage(1000, 0, cache_creation_tokens=300, cache_creation_1h_tokens=100)

    assert SONNET.cost_nanousd(usage) == 700 * 3000 + 200 * 3750 + 100 * 6000


def test_a_12_hour_write_without_its_own_rate_is_billed_as_a_cache_write() -> None:
    usage = TokenUsage(1000, 0, cache_creation_tokens=300, cache_creation_12h_tokens=300)

    assert SONNET.cost_nanousd(usage) == 700 * 3000 + 300 * 3750


def test_reasoning_tokens_are_billed_at_their_own_rate_when_the_model_has_one() -> None:
    price = ModelPrice(D("0.0000004"), D("0.0000012"), reasoning_usd_per_token=D("0.000004"))
    usage = TokenUsage(100, 500, reasoning_tokens=300)

    assert price.cost_nanousd(usage) == 100 * 400 + 200 * 1200 + 300 * 4000
    assert SONNET.cost_nanousd(usage) == SONNET.cost_nanousd(TokenUsage(100, 500))


def test_audio_image_and_video_tokens_fall_back_to_text_rates_unless_priced() -> None:
    price = ModelPrice(
        D("0.0000025"),
        D("0.00001"),
        audio_input_usd_per_token=D("0.00004"),
        audio_output_usd_per_token=D("0.00008"),
    )
    usage = TokenUsage(
        1000,
        500,
        audio_prompt_tokens=200,
        image_prompt_tokens=50,
        video_prompt_tokens=10,
        audio_completion_tokens=100,
        image_completion_tokens=20,
    )

    prompt = 740 * 2500 + 200 * 40000 + 60 * 2500
    completion = 380 * 10000 + 100 * 80000 + 20 * 10000
    assert price.cost_nanousd(usage) == prompt + completion


def test_the_tier_above_a_prompt_size_prices_every_token_of_the_call() -> None:
    at_threshold = TokenUsage(200_000, 1000, cache_read_tokens=10_000)
    above = TokenUsage(300_000, 1000, cache_read_tokens=10_000)

    assert GEMINI_PRO.cost_nanousd(at_threshold) == 190_000 * 1250 + 10_000 * 125 + 1000 * 10000
    assert GEMINI_PRO.cost_nanousd(above) == 290_000 * 2500 + 10_000 * 250 + 1000 * 15000
    assert GEMINI_PRO.rates_for(300_000) == GEMINI_PRO.tiers[0].rates
    assert GEMINI_PRO.rates_for(200_000) is GEMINI_PRO


def test_multipliers_apply_to_the_whole_cost_by_what_the_response_reports() -> None:
    price = ModelPrice(
        D("0.000005"),
        D("0.000025"),
        multiplier=D("1.1"),
        geo_multipliers=(("us", D("1.1")),),
        fast_multiplier=D("2"),
    )
    base = 100 * 5000 + 10 * 25000

    assert price.cost_nanousd(TokenUsage(100, 10)) == base * 11 // 10
    assert price.cost_nanousd(TokenUsage(100, 10, inference_geo="US")) == base * 121 // 100
    assert price.cost_nanousd(TokenUsage(100, 10, inference_geo="global")) == base * 11 // 10
    assert price.cost_nanousd(TokenUsage(100, 10, speed="fast")) == base * 22 // 10


def test_actual_costs_round_half_up_to_a_nanousd() -> None:
    price = ModelPrice(D("0.0000000005"), D("0.00000000025"))  # 0.5 and 0.25 nano-USD

    assert price.cost_nanousd(TokenUsage(1, 0)) == 1
    assert price.cost_nanousd(TokenUsage(1, 1)) == 1  # 0.75
    assert price.cost_nanousd(TokenUsage(0, 1)) == 0  # 0.25
    assert price.cost_nanousd(TokenUsage(3, 0)) == 2  # 1.5


def test_arithmetic_is_exact_for_long_float_reprs_and_large_counts() -> None:
    price = ModelPrice(to_price(3.3333333333333335e-07), to_price(1.0000000000000001e-05))
    usage = TokenUsage(123_456_789, 98_765_432, cache_read_tokens=1)

    exact = D("3.3333333333333335e-07") * 123_456_789 + D("1.0000000000000001e-05") * 98_765_432
    assert price.cost_nanousd(usage) == int((exact * 10**9).to_integral_value("ROUND_HALF_UP"))


def test_the_bound_is_every_token_at_the_most_expensive_kind_rounded_up() -> None:
    # 1.25 nano-USD cached (the most expensive input), 15 nano-USD output
    price = ModelPrice(D("0.000001"), D("0.000015"), cache_creation_usd_per_token=D("0.00000125"))

    assert price.bound_nanousd(1000, 100) == 1000 * 1250 + 100 * 15000
    assert SONNET.bound_nanousd(10, 10) == 10 * 6000 + 10 * 15000
    assert ModelPrice(D("1e-10"), D("0")).bound_nanousd(1, 0) == 1  # 0.1 rounds up


def test_the_bound_reaches_the_tier_a_prompt_of_that_size_reaches() -> None:
    assert GEMINI_PRO.bound_nanousd(200_000, 0) == 200_000 * 1250
    assert GEMINI_PRO.bound_nanousd(300_000, 1000) == 300_000 * 2500 + 1000 * 15000


def test_the_bound_of_a_prompt_above_a_cheaper_tier_is_the_dearer_smaller_prompt() -> None:
    # A tier cheaper than the base (a volume discount): a prompt just at the threshold,
    # at the base rate, costs more than a larger one at the tier rate.
    price = ModelPrice(
        D("0.000002"), D("0.00001"), tiers=(PriceTier(1000, Rates(D("0.000001"), D("0.000001"))),)
    )

    assert price.bound_nanousd(1500, 100) == 1000 * 2000 + 100 * 10000


def test_the_bound_holds_the_largest_multipliers() -> None:
    price = ModelPrice(
        D("0.000001"),
        D("0.000001"),
        geo_multipliers=(("us", D("1.1")), ("eu", D("0.9"))),
        fast_multiplier=D("2"),
    )

    assert price.bound_nanousd(10, 0) == 10 * 1000 * 22 // 10


_rates = st.decimals("0", "0.0001", places=12)
_optional = st.none() | _rates


def _rates_strategy() -> st.SearchStrategy[Rates]:
    return st.builds(
        Rates,
        _rates,
        _rates,
        cache_read_usd_per_token=_optional,
        cache_creation_usd_per_token=_optional,
        cache_creation_1h_usd_per_token=_optional,
        cache_creation_12h_usd_per_token=_optional,
        audio_input_usd_per_token=_optional,
        image_input_usd_per_token=_optional,
        video_input_usd_per_token=_optional,
        reasoning_usd_per_token=_optional,
        audio_output_usd_per_token=_optional,
        image_output_usd_per_token=_optional,
        video_output_usd_per_token=_optional,
    )


@st.composite
def prices(draw: st.DrawFn) -> ModelPrice:
    base = draw(_rates_strategy())
    thresholds = sorted(draw(st.sets(st.integers(0, 5000), max_size=3)))
    tiers = tuple(PriceTier(above, draw(_rates_strategy())) for above in thresholds)
    return ModelPrice(
        **{name: getattr(base, name) for name in Rates.__dataclass_fields__},
        tiers=tiers,
        multiplier=draw(st.sampled_from([D(1), D("1.1"), D("0.9")])),
        geo_multipliers=draw(st.sampled_from([(), (("us", D("1.1")),), (("us", D("0.8")),)])),
        fast_multiplier=draw(st.sampled_from([D(1), D(2)])),
    )


@st.composite
def usages(draw: st.DrawFn, max_prompt: int, max_completion: int) -> TokenUsage:
    prompt = draw(st.integers(0, max_prompt))
    parts = [draw(st.integers(0, prompt)) for _ in range(5)]
    left = prompt
    counts = []
    for part in parts:
        take = min(part, left)
        counts.append(take)
        left -= take
    cached, written, audio, image, video = counts
    long_writes = draw(st.integers(0, written))
    one_hour = draw(st.integers(0, long_writes))
    completion = draw(st.integers(0, max_completion))
    out_parts = []
    out_left = completion
    for _ in range(4):
        take = draw(st.integers(0, out_left))
        out_parts.append(take)
        out_left -= take
    return TokenUsage(
        prompt,
        completion,
        cache_read_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=one_hour,
        cache_creation_12h_tokens=long_writes - one_hour,
        audio_prompt_tokens=audio,
        image_prompt_tokens=image,
        video_prompt_tokens=video,
        reasoning_tokens=out_parts[0],
        audio_completion_tokens=out_parts[1],
        image_completion_tokens=out_parts[2],
        video_completion_tokens=out_parts[3],
        inference_geo=draw(st.sampled_from([None, "us", "global", "eu"])),
        speed=draw(st.sampled_from([None, "fast", "standard"])),
    )


@settings(max_examples=400, deadline=None)
@given(
    price=prices(),
    max_prompt=st.integers(0, 6000),
    max_completion=st.integers(0, 3000),
    data=st.data(),
)
def test_the_bound_is_at_least_the_cost_of_any_usage_within_it(
    price: ModelPrice, max_prompt: int, max_completion: int, data: st.DataObject
) -> None:
    usage = data.draw(usages(max_prompt, max_completion))

    assert price.bound_nanousd(max_prompt, max_completion) >= price.cost_nanousd(usage)


@settings(max_examples=300, deadline=None)
@given(
    price=prices(),
    prompt=st.integers(0, 6000),
    completion=st.integers(0, 3000),
    more_prompt=st.integers(0, 3000),
    more_completion=st.integers(0, 3000),
)
def test_the_bound_never_falls_when_either_count_grows(
    price: ModelPrice, prompt: int, completion: int, more_prompt: int, more_completion: int
) -> None:
    bound = price.bound_nanousd(prompt, completion)

    assert price.bound_nanousd(prompt + more_prompt, completion) >= bound
    assert price.bound_nanousd(prompt, completion + more_completion) >= bound


@settings(max_examples=200, deadline=None)
@given(price=prices(), prompt=st.integers(0, 6000), completion=st.integers(0, 3000))
def test_the_bound_is_reached_by_some_usage_on_a_flat_price(
    price: ModelPrice, prompt: int, completion: int
) -> None:
    flat = ModelPrice(price.input_usd_per_token, price.output_usd_per_token)
    usage = TokenUsage(prompt, completion)

    # Within a rounding of the bound (ceiling) and the cost (half up).
    assert 0 <= flat.bound_nanousd(prompt, completion) - flat.cost_nanousd(usage) <= 1


def test_a_price_is_built_from_two_rates_alone() -> None:
    price = ModelPrice(D("0.00000015"), D("0.0000006"))

    assert price == ModelPrice(D("1.5E-7"), D("6E-7"))
    assert price.tiers == () and price.multiplier == 1
    assert price.cost_nanousd(TokenUsage(1000, 100, cache_read_tokens=500)) == 150_000 + 60_000


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": 1.5, "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": True, "completion_tokens": 0}, "prompt_tokens"),
        ({"prompt_tokens": 10, "completion_tokens": 0, "cache_read_tokens": 11}, "exceed"),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 0,
                "cache_read_tokens": 6,
                "audio_prompt_tokens": 5,
            },
            "exceed prompt_tokens",
        ),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 0,
                "cache_creation_tokens": 2,
                "cache_creation_1h_tokens": 3,
            },
            "1-hour",
        ),
        ({"prompt_tokens": 1, "completion_tokens": 5, "reasoning_tokens": 6}, "completion"),
        ({"prompt_tokens": 1, "completion_tokens": 0, "speed": 1}, "speed"),
    ],
)
def test_token_usage_refuses_impossible_counts(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TokenUsage(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cache_read_usd_per_token": D("-1e-9")},
        {"reasoning_usd_per_token": D("NaN")},
        {"multiplier": D("-1")},
        {"tiers": (PriceTier(10, Rates(D(1), D(1))), PriceTier(5, Rates(D(1), D(1))))},
        {"tiers": (PriceTier(10, Rates(D(1), D(1))), PriceTier(10, Rates(D(1), D(1))))},
    ],
)
def test_a_price_refuses_negative_rates_and_unordered_tiers(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelPrice(D("0.000001"), D("0.000001"), **kwargs)  # type: ignore[arg-type]


def test_to_price_reads_a_float_through_its_repr() -> None:
    assert to_price(1.5e-07) == D("0.00000015")
    assert to_price("3e-7") == D("3e-7")
    with pytest.raises(ValueError):
        to_price(float("inf"))
