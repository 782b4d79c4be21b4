"""The two errors of the BudgetManager-compatible API, in the worker's error tree."""

from __future__ import annotations

from typing import Literal

from worker.errors import BudgetWorkerError

__all__ = ["BudgetExceeded", "UnknownUser"]


class BudgetExceeded(BudgetWorkerError):
    """The safe path refused a call: nothing was spent and the model was not called.

    ``reason`` is the contract's rejection reason: ``budget_exceeded`` (the estimate does
    not fit what remains), ``rate_limited`` (RPM/TPM; ``retryable``, after
    ``retry_after_s``) or ``no_budget`` (the user has none).
    """

    def __init__(
        self,
        user: str,
        reason: Literal["budget_exceeded", "rate_limited", "no_budget"],
        *,
        estimated_cost_nanousd: int,
        remaining: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        if reason == "budget_exceeded":
            message = (
                f"budget exceeded for user {user!r}: the call may cost up to "
                f"{estimated_cost_nanousd} nano-USD and {remaining} nano-USD remain"
            )
        elif reason == "rate_limited":
            message = f"rate limit reached for user {user!r}; retry after {retry_after_s} s"
        else:
            message = f"user {user!r} has no budget"
        super().__init__(message)
        self.user = user
        self.reason = reason
        self.estimated_cost_nanousd = estimated_cost_nanousd
        self.remaining = remaining
        self.retry_after_s = retry_after_s
        self.retryable = reason == "rate_limited"


class UnknownUser(BudgetWorkerError, KeyError):
    """The user has no budget. A ``KeyError``, as ``BudgetManager``'s dict lookups raise."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user

    def __str__(self) -> str:
        return f"user {self.user!r} has no budget (create_budget first)"
