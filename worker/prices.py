"""Model prices and the arithmetic that turns token counts into nano-USD.

Prices are exact ``Decimal`` USD per token (litellm's cost map holds floats such as
``1.5e-07``; they are read through ``str`` so ``1.5e-07`` stays ``0.00000015``).
Costs are integers of nano-USD: estimates round up, actual costs round half up.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

NANOUSD_PER_USD = Decimal(1_000_000_000)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per prompt token and per completion token."""

    input_usd_per_token: Decimal
    output_usd_per_token: Decimal

    def cost_nanousd(self, prompt_tokens: int, completion_tokens: int, *, round_up: bool) -> int:
        """Cost of a call in nano-USD; ``round_up`` for estimates (an upper bound)."""
        usd = (
            self.input_usd_per_token * prompt_tokens + self.output_usd_per_token * completion_tokens
        )
        rounding = ROUND_CEILING if round_up else ROUND_HALF_UP
        return int((usd * NANOUSD_PER_USD).to_integral_value(rounding=rounding))


def to_price(value: float | str | Decimal) -> Decimal:
    """A price from litellm's map or a YAML file as an exact Decimal (floats via str)."""
    if isinstance(value, Decimal):
        return value
    price = Decimal(str(value))
    if price < 0 or not price.is_finite():
        raise ValueError(f"price must be a finite number >= 0, got {value!r}")
    return price
