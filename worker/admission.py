"""What to do when a job's estimate does not fit what is left of a user's budget.

``reject`` (the default) refuses the job: its reservation is an upper bound, and the
budget cannot promise it. ``clamp`` lowers the job's ``max_tokens`` until the
reservation fits, as long as at least ``clamp_min_tokens`` still fit: the job runs, but
its answer may be cut short (``finish_reason: length``). The trade, measured, is in
``docs/estimation.md``.

The function is pure: the job path reserves the estimate, and when the ledger refuses it
on ``usd`` with money remaining, asks ``admit`` for a smaller one and reserves again.
The ledger stays the judge: ``remaining`` may have shrunk in between, and the second
reserve is checked atomically like the first.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, localcontext

from worker.estimate import Estimate, priced
from worker.prices import NANOUSD_PER_USD, ModelPrice
from worker.settings import AdmissionPolicy


def admit(
    estimate: Estimate,
    remaining_nanousd: int,
    price: ModelPrice,
    policy: AdmissionPolicy,
    clamp_min_tokens: int,
) -> Estimate | None:
    """The estimate to reserve, or None to refuse the job as ``budget_exceeded``.

    An estimate that fits ``remaining_nanousd`` comes back unchanged. Otherwise
    ``reject`` refuses, and ``clamp`` returns the estimate with the largest
    ``max_output_tokens`` whose cost fits, if that is at least ``clamp_min_tokens``.
    """
    if estimate.cost_nanousd <= remaining_nanousd:
        return estimate
    if policy != "clamp":
        return None
    max_tokens = min(
        estimate.max_output_tokens,
        fitting_output_tokens(estimate.prompt_tokens_bound, estimate.n, remaining_nanousd, price),
    )
    if max_tokens < max(clamp_min_tokens, 1):
        return None
    return priced(estimate.prompt_tokens_bound, max_tokens, estimate.n, price)


def fitting_output_tokens(
    prompt_tokens_bound: int, n: int, remaining_nanousd: int, price: ModelPrice
) -> int:
    """The largest ``max_tokens`` (per choice, ``n`` choices) whose rounded-up estimate
    is at most ``remaining_nanousd``; -1 when not even the prompt fits.

    A rounded-up cost ``ceil(x)`` is at most the integer ``R`` exactly when ``x <= R``, so
    the answer is ``floor((R - prompt cost) / (output price * n))``, computed exactly.
    """
    input_nano = price.input_usd_per_token * NANOUSD_PER_USD
    output_nano = price.output_usd_per_token * NANOUSD_PER_USD * n
    with localcontext() as context:
        # Prices have a few significant digits and token counts are small integers:
        # 60 digits hold every product and quotient here exactly or floor-safe.
        context.prec = 60
        left = Decimal(remaining_nanousd) - input_nano * prompt_tokens_bound
        if left < 0:
            return -1
        if output_nano == 0:
            return 2**62  # output is free: any max_tokens fits
        tokens = int((left / output_nano).to_integral_value(rounding=ROUND_FLOOR))
    # The division above was rounded to 60 digits; settle any doubt with the real
    # cost function, which is what the ledger will be told.
    while tokens > 0 and (
        price.cost_nanousd(prompt_tokens_bound, tokens * n, round_up=True) > remaining_nanousd
    ):
        tokens -= 1
    return tokens
