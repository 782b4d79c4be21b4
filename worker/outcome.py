"""The terminal events a job can end in, built from the job and the ledger's answers.

One place builds every event, so each carries the contract's common fields (job id,
user id, model, metadata, worker id) the same way, and every event goes through the
schema: a stored event is parsed and rebuilt, never patched as JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from schemas.events import (
    BudgetSnapshot,
    CompletionFailed,
    CompletionRejected,
    CompletionSucceeded,
    RejectReason,
    TerminalEvent,
    Usage,
    parse_event,
    rejection_retryable,
)
from schemas.jobs import CompletionJob
from worker import ledger


def snapshot(state: ledger.PeriodSnapshot | None) -> BudgetSnapshot | None:
    if state is None:
        return None
    period_end = (
        datetime.fromtimestamp(state.period_end_ms / 1000, UTC)
        if state.period_end_ms is not None
        else None
    )
    return BudgetSnapshot(
        limit_nanousd=state.limit_nanousd,
        spent_nanousd=state.spent_nanousd,
        remaining_nanousd=state.remaining_nanousd,
        period_end=period_end,
    )


UNSETTLED = BudgetSnapshot(limit_nanousd=0, spent_nanousd=0, remaining_nanousd=0, period_end=None)
"""The budget of a success event before its settle has answered."""


class Outcomes:
    """Event builders for one worker process."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def rejected(
        self,
        job_id: str,
        user_id: str,
        model: str,
        metadata: dict[str, Any],
        reason: RejectReason,
        detail: str,
        *,
        retry_after_s: float | None = None,
        estimated_cost_nanousd: int | None = None,
        budget: ledger.PeriodSnapshot | None = None,
        refused: ledger.Refused | None = None,
    ) -> CompletionRejected:
        now = datetime.now(UTC)
        remaining = refused.remaining if refused is not None and refused.limit == "usd" else None
        return CompletionRejected(
            type="completion.rejected",
            occurred_at=now,
            job_id=job_id,
            user_id=user_id,
            model=model,
            metadata=metadata,
            worker_id=self.worker_id,
            reason=reason,
            detail=detail,
            retry_after_s=retry_after_s,
            estimated_cost_nanousd=estimated_cost_nanousd,
            budget=snapshot(budget),
            scope=refused.scope[:300] if refused is not None and refused.scope else None,
            limit=refused.limit if refused is not None else None,
            retryable=rejection_retryable(reason, retry_after_s),
            remaining_nanousd=remaining,
            resets_at=None if retry_after_s is None else now + timedelta(seconds=retry_after_s),
        )

    def reject_job(
        self, job: CompletionJob, reason: RejectReason, detail: str, **kwargs: Any
    ) -> CompletionRejected:
        return self.rejected(
            job.job_id, job.user_id, job.model, job.metadata, reason, detail, **kwargs
        )

    def failed(
        self,
        job: CompletionJob,
        *,
        error_type: str,
        error: str,
        retryable: bool,
        attempts: int,
        cost_nanousd: int = 0,
    ) -> CompletionFailed:
        return CompletionFailed(
            type="completion.failed",
            job_id=job.job_id,
            user_id=job.user_id,
            model=job.model,
            metadata=job.metadata,
            worker_id=self.worker_id,
            error_type=error_type,
            error=error,
            retryable=retryable,
            attempts=attempts,
            cost_nanousd=cost_nanousd,
        )

    def succeeded(
        self,
        job: CompletionJob,
        *,
        response: dict[str, Any],
        prompt_tokens: int,
        completion_tokens: int,
        cost_nanousd: int,
        attempts: int,
        cost_basis: Literal["usage", "reservation"] = "usage",
    ) -> CompletionSucceeded:
        """The success event, its ``budget`` still :data:`UNSETTLED`: the settle fills it."""
        return CompletionSucceeded(
            type="completion.succeeded",
            job_id=job.job_id,
            user_id=job.user_id,
            model=job.model,
            metadata=job.metadata,
            worker_id=self.worker_id,
            response=response,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            cost_nanousd=cost_nanousd,
            cost_basis=cost_basis,
            budget=UNSETTLED,
            attempts=attempts,
        )


def with_budget(event: TerminalEvent, budget: ledger.PeriodSnapshot | None) -> TerminalEvent:
    """A success event with the budget its settle left (other events as they are)."""
    view = snapshot(budget)
    if view is None or not isinstance(event, CompletionSucceeded):
        return event
    return event.model_copy(update={"budget": view})


def stored(outcome: bytes, budget: ledger.PeriodSnapshot | None) -> TerminalEvent:
    """An event the ledger stored, rebuilt through the schema, with the budget the
    ledger recorded at its settle (the stored one predates it)."""
    return with_budget(parse_event(outcome), budget)


def too_large(event: TerminalEvent, size_bytes: int, limit_bytes: int) -> CompletionFailed:
    """What a producer is told when a job's event is too large for the broker: the job
    ended, its response is lost, and what it was charged."""
    cost = event.cost_nanousd if isinstance(event, CompletionSucceeded | CompletionFailed) else 0
    attempts = event.attempts if isinstance(event, CompletionSucceeded | CompletionFailed) else 0
    return CompletionFailed(
        type="completion.failed",
        job_id=event.job_id,
        user_id=event.user_id,
        model=event.model,
        metadata=event.metadata,
        worker_id=event.worker_id,
        error_type="event_too_large",
        error=(
            f"the job's {event.type} event is {size_bytes} bytes, more than the "
            f"{limit_bytes} bytes the broker takes (BW_MAX_EVENT_BYTES), even compressed; "
            f"its response is not delivered. Charged: {cost} nano-USD"
        ),
        retryable=False,
        attempts=attempts,
        cost_nanousd=cost,
    )
