"""The reject/clamp policy, and the simulation behind the figures in docs/estimation.md.

Run as a script to print the table of the doc::

    .venv/bin/python tests/test_admission.py [runs]
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

if __name__ == "__main__":  # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.admission import admit, fitting_output_tokens
from worker.estimate import Estimate, priced
from worker.prices import ModelPrice, PriceTier, Rates, TokenUsage

PRICE = ModelPrice(Decimal("0.00000015"), Decimal("0.0000006"))  # gpt-4o-mini: 150 / 600 nano


def wanted(max_tokens: int = 1024, prompt: int = 500, n: int = 1) -> Estimate:
    return priced(prompt, max_tokens, n, PRICE)


# --- admit ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reject", "clamp"])
def test_an_estimate_that_fits_is_admitted_unchanged(policy: str) -> None:
    estimate = wanted()
    assert admit(estimate, estimate.cost_nanousd, PRICE, policy, 16) is estimate  # type: ignore[arg-type]


def test_reject_refuses_what_does_not_fit() -> None:
    estimate = wanted()
    assert admit(estimate, estimate.cost_nanousd - 1, PRICE, "reject", 16) is None


def test_clamp_lowers_max_tokens_to_the_most_that_fits() -> None:
    estimate = wanted(max_tokens=1024, prompt=500)  # 75,000 + 614,400 nano-USD
    clamped = admit(estimate, 200_000, PRICE, "clamp", 16)
    assert clamped is not None
    # (200,000 - 75,000) / 600 = 208.33: 208 tokens fit, 209 do not
    assert clamped == priced(500, 208, 1, PRICE)
    assert clamped.cost_nanousd == 75_000 + 208 * 600
    assert clamped.tokens == 500 + 208


def test_clamp_refuses_when_fewer_than_clamp_min_tokens_fit() -> None:
    estimate = wanted(prompt=500)
    at_min = 75_000 + 16 * 600
    assert admit(estimate, at_min, PRICE, "clamp", 16) == priced(500, 16, 1, PRICE)
    assert admit(estimate, at_min - 1, PRICE, "clamp", 16) is None
    assert admit(estimate, 74_999, PRICE, "clamp", 1) is None  # not even the prompt fits


def test_clamp_counts_every_choice() -> None:
    clamped = admit(wanted(max_tokens=1024, n=4), 200_000, PRICE, "clamp", 16)
    assert clamped is not None
    assert clamped.n == 4
    assert clamped.max_output_tokens == 52  # 125,000 / (600 * 4) = 52.08
    assert clamped.tokens == 500 + 52 * 4


def test_fitting_output_tokens_handles_free_output_and_unaffordable_prompts() -> None:
    free_output = ModelPrice(Decimal("0.000001"), Decimal("0"))
    assert fitting_output_tokens(10, 1, 10_000, free_output) >= 2**62
    assert fitting_output_tokens(11, 1, 10_000, free_output) == -1


def test_fitting_output_tokens_counts_the_tier_rate_above_a_tier_threshold() -> None:
    # Gemini 2.5 Pro's shape: 1.25 / 10 USD per 1M tokens, 2.5 / 15 above 200k prompt tokens.
    price = ModelPrice(
        Decimal("0.00000125"),
        Decimal("0.00001"),
        tiers=(PriceTier(200_000, Rates(Decimal("0.0000025"), Decimal("0.000015"))),),
    )
    remaining = 300_000 * 2_500 + 1_000 * 15_000  # 300k prompt and 1,000 output at the tier

    assert fitting_output_tokens(300_000, 1, remaining, price) == 1_000
    assert fitting_output_tokens(150_000, 1, remaining, price) > 1_000


_rates = st.decimals("0", "0.0001", places=12)
tiered_prices = st.builds(
    ModelPrice,
    _rates,
    _rates,
    cache_creation_usd_per_token=st.none() | _rates,
    reasoning_usd_per_token=st.none() | _rates,
    tiers=st.lists(
        st.tuples(st.integers(0, 300_000), _rates, _rates), max_size=2, unique_by=lambda t: t[0]
    ).map(lambda ts: tuple(PriceTier(a, Rates(i, o)) for a, i, o in sorted(ts))),
    multiplier=st.sampled_from([Decimal(1), Decimal("1.1")]),
    fast_multiplier=st.sampled_from([Decimal(1), Decimal(2)]),
)


@settings(max_examples=300, deadline=None)
@given(
    price=tiered_prices,
    prompt=st.integers(0, 400_000),
    n=st.integers(1, 8),
    remaining=st.integers(0, 10**11),
)
def test_fitting_output_tokens_is_the_largest_that_fits_for_any_price_model(
    price: ModelPrice, prompt: int, n: int, remaining: int
) -> None:
    tokens = fitting_output_tokens(prompt, n, remaining, price)

    if tokens == -1:
        assert price.bound_nanousd(prompt, 0) > remaining
    elif tokens < 2**62:
        assert price.bound_nanousd(prompt, tokens * n) <= remaining
        assert price.bound_nanousd(prompt, (tokens + 1) * n) > remaining


prices = st.builds(
    ModelPrice,
    st.decimals("0", "0.0001", places=12),
    st.decimals("0.000000000001", "0.0001", places=12),
)


@settings(max_examples=500, deadline=None)
@given(
    price=prices,
    prompt=st.integers(0, 200_000),
    max_tokens=st.integers(1, 100_000),
    n=st.integers(1, 16),
    remaining=st.integers(0, 10**12),
    clamp_min=st.integers(1, 512),
)
def test_a_clamped_estimate_fits_is_maximal_and_never_grows(
    price: ModelPrice, prompt: int, max_tokens: int, n: int, remaining: int, clamp_min: int
) -> None:
    estimate = priced(prompt, max_tokens, n, price)
    result = admit(estimate, remaining, price, "clamp", clamp_min)
    if estimate.cost_nanousd <= remaining:
        assert result is estimate
        return
    if result is None:  # refused: not even clamp_min tokens fit
        assert price.bound_nanousd(prompt, clamp_min * n) > remaining
        return
    assert result.cost_nanousd <= remaining
    assert clamp_min <= result.max_output_tokens < max_tokens
    assert result.prompt_tokens_bound == prompt and result.n == n
    one_more = price.bound_nanousd(prompt, (result.max_output_tokens + 1) * n)
    assert one_more > remaining


# --- the simulation -------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    spent_share: float  # of the budget, when the first job is refused
    served: int  # jobs run before that
    cut_short: int  # jobs whose answer was cut by max_tokens


def run_until_refused(
    policy: str,
    default_max_tokens: int,
    budget_nanousd: int,
    rng: random.Random,
    *,
    clamp_min_tokens: int = 16,
) -> Outcome:
    """One user's jobs, one after another, until the first refusal.

    Prompts are lognormal around 1,200 bytes (the estimate bounds their tokens by their
    bytes; their real tokens are about a quarter of that); wanted answers are lognormal
    around 150 tokens (sigma 0.8: a long tail past 1,000). A job's answer stops at its
    max_tokens, as a provider's does.
    """
    spent = served = cut_short = 0
    while True:
        prompt_bytes = max(1, round(rng.lognormvariate(math.log(1200), 0.6)))
        prompt_bound = prompt_bytes + 30  # roles and framing
        prompt_tokens = prompt_bytes // 4 + 7
        answer_tokens = max(1, round(rng.lognormvariate(math.log(150), 0.8)))
        estimate = priced(prompt_bound, default_max_tokens, 1, PRICE)
        admitted = admit(
            estimate,
            budget_nanousd - spent,
            PRICE,
            policy,  # type: ignore[arg-type]
            clamp_min_tokens,
        )
        if admitted is None:
            return Outcome(spent / budget_nanousd, served, cut_short)
        output = min(answer_tokens, admitted.max_output_tokens)
        cut_short += answer_tokens > admitted.max_output_tokens
        spent += PRICE.cost_nanousd(TokenUsage(prompt_tokens, output))
        served += 1


@dataclass(frozen=True)
class Cell:
    spent_mean: float
    spent_p10: float
    served_mean: float
    cut_short_share: float


def simulate(policy: str, default_max_tokens: int, budget_nanousd: int, runs: int) -> Cell:
    rng = random.Random(f"{policy}-{default_max_tokens}-{budget_nanousd}")
    outcomes = [
        run_until_refused(policy, default_max_tokens, budget_nanousd, rng) for _ in range(runs)
    ]
    shares = sorted(o.spent_share for o in outcomes)
    served = sum(o.served for o in outcomes)
    return Cell(
        spent_mean=statistics.fmean(shares),
        spent_p10=shares[len(shares) // 10],
        served_mean=served / runs,
        cut_short_share=sum(o.cut_short for o in outcomes) / served if served else 0.0,
    )


@pytest.mark.parametrize("default_max_tokens", [256, 1024, 4096])
def test_clamp_spends_more_of_a_tight_budget_than_reject(default_max_tokens: int) -> None:
    budget = 10_000_000  # USD 0.01: about 70 typical calls
    reject = simulate("reject", default_max_tokens, budget, runs=20)
    clamp = simulate("clamp", default_max_tokens, budget, runs=20)
    assert clamp.spent_mean >= reject.spent_mean
    assert clamp.served_mean >= reject.served_mean
    assert clamp.spent_mean > 0.97  # stops only when 16 tokens no longer fit
    assert reject.spent_mean <= 1 and clamp.spent_mean <= 1  # never over


def main(runs: int) -> None:
    budgets = [("$0.002", 2_000_000), ("$0.01", 10_000_000), ("$0.05", 50_000_000)]
    print(f"gpt-4o-mini prices, {runs} runs per cell, clamp_min_tokens 16\n")
    print(
        "| budget | default max_tokens | policy | spent at first refusal (mean / p10) "
        "| jobs served (mean) | answers cut short |"
    )
    print("|---|---|---|---|---|---|")
    for label, budget in budgets:
        for default_max_tokens in (256, 1024, 4096):
            for policy in ("reject", "clamp"):
                cell = simulate(policy, default_max_tokens, budget, runs)
                print(
                    f"| {label} | {default_max_tokens} | {policy} "
                    f"| {cell.spent_mean:.1%} / {cell.spent_p10:.1%} "
                    f"| {cell.served_mean:.1f} | {cell.cut_short_share:.1%} |"
                )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
