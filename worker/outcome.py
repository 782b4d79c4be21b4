"""The terminal events a job can end in, built from the job and the ledger's answers.

One place builds every event so each carries the contract's common fields (job id,
user id, model, metadata, worker id) the same way.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from schemas.events import (
    BudgetSnapshot,
    CompletionFailed,
    CompletionRejected,
    CompletionSucceeded,
    RejectReason,
    Usage,
    encode_event,
)
from schemas.jobs import CompletionJob
from worker import ledger


def snapshot(state: ledger.BudgetSnapshot | None) -> BudgetSnapshot | None:
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


_UNSETTLED = BudgetSnapshot(limit_nanousd=0, spent_nanousd=0, remaining_nanousd=0, period_end=None)


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
        budget: ledger.BudgetSnapshot | None = None,
    ) -> bytes:
        return encode_event(
            CompletionRejected(
                type="completion.rejected",
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
            )
        )

    def reject_job(
        self,
        job: CompletionJob,
        reason: RejectReason,
        detail: str,
        **kwargs: Any,
    ) -> bytes:
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
    ) -> bytes:
        return encode_event(
            CompletionFailed(
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
    ) -> CompletionSucceeded:
        """The success event, its ``budget`` still zero: the settle fills it in."""
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
            budget=_UNSETTLED,
            attempts=attempts,
        )


def settled_event(event: CompletionSucceeded, budget: ledger.BudgetSnapshot) -> bytes:
    """The success event as published, with the budget its settle left."""
    view = snapshot(budget)
    assert view is not None
    return encode_event(event.model_copy(update={"budget": view}))


def with_budget(outcome: bytes, budget: ledger.BudgetSnapshot | None) -> bytes:
    """A stored success event with the budget the ledger recorded at its settle.

    The event stored by ``settle`` is written before the settle's own result is
    known, so a republished success takes its ``budget`` from the ledger's record.
    """
    view = snapshot(budget)
    if view is None:
        return outcome
    event = json.loads(outcome)
    if event.get("type") != "completion.succeeded":
        return outcome
    event["budget"] = json.loads(view.model_dump_json())
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
