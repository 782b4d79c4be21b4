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

from typing import Final

from worker.estimate import Estimate, priced
from worker.prices import ModelPrice
from worker.settings import AdmissionPolicy

UNBOUNDED_TOKENS: Final = 2**62
"""What ``fitting_output_tokens`` answers when output costs nothing."""


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
    """The largest ``max_tokens`` (per choice, ``n`` choices) whose estimate (the price's
    ``bound_nanousd``) is at most ``remaining_nanousd``; -1 when not even the prompt fits;
    ``UNBOUNDED_TOKENS`` when output is free.

    The bound only grows with output tokens, so the answer is found by doubling, then
    bisecting, on the bound itself: exact for any price, tiers and multipliers included,
    in about a hundred evaluations (it runs only when a reservation was refused).
    """
    if price.bound_nanousd(prompt_tokens_bound, 0) > remaining_nanousd:
        return -1

    def fits(tokens: int) -> bool:
        return price.bound_nanousd(prompt_tokens_bound, tokens * n) <= remaining_nanousd

    low, high = 0, 1  # fits(low); find a high that does not fit
    while fits(high):
        if high >= UNBOUNDED_TOKENS:
            return UNBOUNDED_TOKENS  # output is free: any max_tokens fits
        low, high = high, min(high * 2, UNBOUNDED_TOKENS)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
