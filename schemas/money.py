"""Money on the wire: an ``int`` of nano-USD (1 USD = 1,000,000,000 nano-USD).

Integers add up exactly in Python, in Lua and in Redis (``INCRBY``), where floats drift:
litellm reports a spend of ``0.00015999999999999999`` for what is 160,000 nano-USD.
This module is the one place where a float (or decimal text) becomes money, and it does
so through ``Decimal`` and the float's shortest ``repr``, so ``0.00015999999999999999``
is read as the ``0.00016`` it was meant to be.

Amounts must fit a signed 64-bit integer, because Redis stores them as one; that caps
a single amount at about 9.2 billion USD.
"""

from __future__ import annotations

from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_CEILING,
    ROUND_HALF_UP,
    Context,
    Decimal,
    InvalidOperation,
)
from typing import Annotated, Final

from pydantic import Field

NANOUSD_PER_USD: Final = 1_000_000_000

MAX_NANOUSD: Final = 2**63 - 1
"""The largest amount Redis can hold (a signed 64-bit integer)."""

NanoUSD = Annotated[int, Field(ge=0)]
"""A non-negative amount of money in nano-USD."""

# Scaling by 10**9 only moves the exponent; with unbounded precision and exponent range
# it is exact, so no amount is ever rounded (down) before the rounding we choose.
_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
_MAX_USD: Final = Decimal(MAX_NANOUSD).scaleb(-9, _EXACT)


def usd_to_nanousd(usd: float | str | Decimal, *, round_up: bool) -> int:
    """Convert USD to nano-USD exactly, then round to an integer.

    ``round_up=True`` takes the ceiling, for estimates that must be upper bounds;
    ``round_up=False`` rounds half up, for actual costs. Floats are read through their
    shortest ``repr``, not their binary value. Raises ``ValueError`` for NaN, infinities,
    negative amounts, text that is not a number, and amounts too large for Redis.
    """
    amount = _to_decimal(usd)
    if not amount.is_finite():
        raise ValueError(f"an amount of money must be finite, got {usd!r}")
    if amount < 0:
        raise ValueError(f"an amount of money must be >= 0, got {usd!r}")
    if amount > _MAX_USD:
        raise ValueError(f"an amount of money must be at most {_MAX_USD} USD, got {usd!r}")
    return to_nanousd(amount, round_up=round_up)


def to_nanousd(usd: Decimal, *, round_up: bool) -> int:
    """The one conversion of an exact amount of USD to nano-USD: scaled exactly, then
    rounded once, up (``round_up=True``, for bounds) or half up (for actual costs).

    For amounts the caller computed exactly (prices times token counts); outside input
    goes through :func:`usd_to_nanousd`, which checks it first."""
    rounding = ROUND_CEILING if round_up else ROUND_HALF_UP
    nanousd = usd.scaleb(9, _EXACT).to_integral_value(rounding=rounding, context=_EXACT)
    return int(nanousd)


def nanousd_to_decimal(n: int) -> Decimal:
    """Nano-USD as the exact ``Decimal`` of USD, for text that must not round."""
    return Decimal(n).scaleb(-9, _EXACT)


def nanousd_to_usd(n: int) -> float:
    """The nearest float in USD, for display only; never compute money with it."""
    return n / NANOUSD_PER_USD


def _to_decimal(usd: float | str | Decimal) -> Decimal:
    if isinstance(usd, Decimal):
        return usd
    if isinstance(usd, bool):
        raise TypeError("an amount of money cannot be a bool")
    if isinstance(usd, int):
        return Decimal(usd)
    if isinstance(usd, float):
        return Decimal(repr(usd))
    if isinstance(usd, str):
        try:
            return Decimal(usd.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {usd[:64]!r}") from None
    raise TypeError(f"an amount of money must be a float, str or Decimal, not {type(usd).__name__}")
