from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.money import (
    MAX_NANOUSD,
    NANOUSD_PER_USD,
    nanousd_to_decimal,
    nanousd_to_usd,
    to_nanousd,
    usd_to_nanousd,
)

# What litellm's float arithmetic reports for a spend of 0.00016 USD.
LITELLM_SPEND = 0.00015999999999999999

finite_usd_floats = st.floats(min_value=0, max_value=9e9, allow_nan=False, allow_infinity=False)
usd_decimals = st.decimals(min_value=0, max_value=Decimal("9e9"), allow_nan=False, places=12)


def test_one_usd_is_a_billion_nanousd() -> None:
    assert NANOUSD_PER_USD == 1_000_000_000
    assert usd_to_nanousd(1.0, round_up=False) == 1_000_000_000


def test_litellm_float_spend_is_read_through_its_shortest_repr() -> None:
    assert usd_to_nanousd(LITELLM_SPEND, round_up=False) == 160_000
    assert usd_to_nanousd(LITELLM_SPEND, round_up=True) == 160_000


def test_round_up_takes_the_ceiling_of_a_fraction_of_a_nanousd() -> None:
    assert usd_to_nanousd("0.0000000011", round_up=True) == 2
    assert usd_to_nanousd("0.0000000010000000001", round_up=True) == 2


def test_round_to_nearest_goes_half_up() -> None:
    assert usd_to_nanousd("0.0000000015", round_up=False) == 2
    assert usd_to_nanousd("0.0000000025", round_up=False) == 3
    assert usd_to_nanousd("0.0000000014999", round_up=False) == 1


def test_decimal_text_and_decimal_give_the_same_amount() -> None:
    assert usd_to_nanousd("1.5e-07", round_up=True) == 150
    assert usd_to_nanousd(Decimal("1.5e-07"), round_up=True) == 150
    assert usd_to_nanousd(1.5e-07, round_up=True) == 150


def test_a_tiny_positive_amount_rounds_up_to_one_nanousd() -> None:
    assert usd_to_nanousd(Decimal("1e-999999999"), round_up=True) == 1
    assert usd_to_nanousd(Decimal("1e-999999999"), round_up=False) == 0


def test_amount_that_fills_a_redis_integer_is_accepted() -> None:
    assert usd_to_nanousd("9223372036.854775807", round_up=True) == MAX_NANOUSD


@pytest.mark.parametrize(
    "usd",
    [float("nan"), float("inf"), float("-inf"), "NaN", "sNaN", "Infinity", Decimal("NaN")],
)
def test_non_finite_amounts_are_rejected(usd: float | str | Decimal) -> None:
    with pytest.raises(ValueError, match="finite"):
        usd_to_nanousd(usd, round_up=True)


@pytest.mark.parametrize("usd", [-0.01, "-1", Decimal("-1e-30")])
def test_negative_amounts_are_rejected(usd: float | str | Decimal) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        usd_to_nanousd(usd, round_up=True)


def test_amount_too_large_for_redis_is_rejected() -> None:
    with pytest.raises(ValueError, match="at most"):
        usd_to_nanousd("9223372036.854775808", round_up=True)


def test_text_that_is_not_a_number_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a decimal number"):
        usd_to_nanousd("0.1 USD", round_up=True)


def test_bool_is_not_an_amount() -> None:
    with pytest.raises(TypeError):
        usd_to_nanousd(True, round_up=True)


def test_nanousd_to_usd_gives_the_nearest_float() -> None:
    assert nanousd_to_usd(160_000) == 0.00016
    assert nanousd_to_usd(0) == 0.0


@given(st.integers(min_value=0, max_value=2 * 10**15))
def test_nanousd_round_trips_through_the_display_float(nanousd: int) -> None:
    assert usd_to_nanousd(nanousd_to_usd(nanousd), round_up=False) == nanousd
    assert usd_to_nanousd(nanousd_to_usd(nanousd), round_up=True) == nanousd


@given(st.integers(min_value=0, max_value=MAX_NANOUSD))
def test_nanousd_round_trips_through_decimal_text(nanousd: int) -> None:
    text = str(Decimal(nanousd).scaleb(-9))
    assert usd_to_nanousd(text, round_up=True) == nanousd
    assert usd_to_nanousd(text, round_up=False) == nanousd


@given(usd_decimals)
def test_round_up_never_underestimates_a_decimal(usd: Decimal) -> None:
    nanousd = usd_to_nanousd(usd, round_up=True)
    exact = usd * NANOUSD_PER_USD
    assert nanousd >= exact
    assert nanousd - 1 < exact


@given(finite_usd_floats)
def test_round_up_never_underestimates_a_float_as_written(usd: float) -> None:
    nanousd = usd_to_nanousd(usd, round_up=True)
    assert nanousd >= Decimal(repr(usd)) * NANOUSD_PER_USD


@given(finite_usd_floats)
def test_round_up_is_at_least_round_to_nearest_and_at_most_one_more(usd: float) -> None:
    up = usd_to_nanousd(usd, round_up=True)
    nearest = usd_to_nanousd(usd, round_up=False)
    assert nearest <= up <= nearest + 1


def test_to_nanousd_rounds_an_exact_amount_once() -> None:
    assert to_nanousd(Decimal("0.0000000014"), round_up=True) == 2
    assert to_nanousd(Decimal("0.0000000015"), round_up=False) == 2
    assert to_nanousd(Decimal("0.0000000014999"), round_up=False) == 1
    # Beyond a float's 17 digits: a product of prices and counts is not truncated.
    assert to_nanousd(Decimal("12345678.9012345678905"), round_up=False) == 12345678901234568
    assert to_nanousd(Decimal("12345678.9012345678901"), round_up=True) == 12345678901234568


@given(usd_decimals)
def test_usd_to_nanousd_is_to_nanousd_of_checked_input(usd: Decimal) -> None:
    assert usd_to_nanousd(usd, round_up=True) == to_nanousd(usd, round_up=True)
    assert usd_to_nanousd(usd, round_up=False) == to_nanousd(usd, round_up=False)


@given(st.integers(min_value=0, max_value=MAX_NANOUSD))
def test_nanousd_to_decimal_is_exact_and_round_trips(nanousd: int) -> None:
    usd = nanousd_to_decimal(nanousd)
    assert usd * NANOUSD_PER_USD == nanousd
    assert to_nanousd(usd, round_up=True) == to_nanousd(usd, round_up=False) == nanousd


def test_nanousd_to_decimal_keeps_every_digit() -> None:
    assert str(nanousd_to_decimal(MAX_NANOUSD)) == "9223372036.854775807"
    assert nanousd_to_decimal(1) == Decimal("1E-9")
