"""The path of one decoded job: check -> estimate -> spend -> its outcome.

``JobPath.run`` turns a valid :class:`CompletionJob` into an :class:`Outcome`: the one
terminal event that answers it, and the job's own topic when it may have one. It knows
no transport: the consumer decodes records, publishes outcomes and commits offsets.
Money moves only in the spend path (``worker.spend``).

Every outcome goes through the ledger, so a redelivered job is answered what it was
answered first: a job that ran and was charged, redelivered after its deadline passed
(or after the model list or the reply_to pattern changed), gets its stored success
event, not a refusal. Checks that refuse a job record the refusal with ``finish``,
which returns the job's first outcome when it already has one.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.events import (
    CompletionFailed,
    CompletionRejected,
    CompletionSucceeded,
    RejectReason,
    TerminalEvent,
    encode_event,
    parse_event,
)
from schemas.jobs import CompletionJob, JobRun
from worker import ledger, outcome, tracing
from worker.estimate import Estimate, estimate
from worker.metrics import Metrics
from worker.models import ModelEntry, ModelList
from worker.outcome import Outcomes
from worker.provider import Completion
from worker.settings import AdmissionPolicy, Settings
from worker.spend import (
    HOLDER_POLL_S,
    CallFailed,
    Charge,
    Charged,
    Ended,
    Failure,
    IdleHook,
    Refusal,
    Request,
    SpendPath,
    quietly,
)

log = logging.getLogger("budget_worker.job")

_KNOWN_MODELS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended: the event that answers it, and its own topic (``reply_to``)
    when the worker's allow-list admits it (else the results topic)."""

    event: TerminalEvent
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """How long a job may still wait for budget (``on_budget_exceeded: wait``)."""

    until_ms: int
    """When the wait runs out (Unix ms): the job's deadline or ``BW_PARK_MAX_WAIT_S``."""
    refusal: bytes = b""
    """A parked job's refusal at its latest check: its answer when its deadline passes
    while it waits (a job past its deadline is not run, so it is not checked again)."""


@dataclass(frozen=True, slots=True)
class Parked:
    """The budget cannot hold the job now, and the job may wait: no event yet. The
    caller parks it (nothing is recorded in the ledger: the job has no outcome)."""

    job: CompletionJob
    refusal: CompletionRejected
    """Its answer if the wait runs out now."""
    retry_after_s: float | None
    """When its refusing limit resets, if it does."""
    until_ms: int
    """When its wait runs out (Unix ms)."""


class JobPath:
    """Runs decoded jobs; shared by all of a process's concurrent job tasks."""

    def __init__(
        self, settings: Settings, spend: SpendPath, models: ModelList, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.spend = spend
        self.models = models
        self.metrics = metrics
        self.outcomes = Outcomes(settings.worker_id)
        self.reply_to = re.compile(settings.reply_to_pattern)

    async def run(
        self, job: CompletionJob, *, idle: IdleHook | None = None, wait: Wait | None = None
    ) -> Outcome | Parked:
        """The job's outcome, or :class:`Parked` when it waits for budget (a job with
        ``on_budget_exceeded: wait``; ``wait`` for one resumed from the park). Raises
        only CancelledError: a defect answers the job with ``internal_error`` rather
        than leave it unanswered."""
        if wait is None:
            wait = self.wait_of(job)
        try:
            decided, facts = await self._decide(job, idle, wait)
            if isinstance(decided, Parked):
                return decided
            event = decided
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": job.job_id})
            event = self.outcomes.failed(
                job,
                error_type="internal_error",
                error=type(exc).__name__,
                retryable=True,
                attempts=0,
            )
            encoded = encode_event(event)
            await quietly(self.spend.ledger.finish(job.user_id, job.job_id, outcome=encoded))
            facts = {}
        self._count(job, event, facts)
        return Outcome(event, self._reply_to(job))

    def wait_of(self, job: CompletionJob) -> Wait | None:
        """A fresh job's wait for budget: none unless it asks to wait; else until its
        deadline or ``BW_PARK_MAX_WAIT_S`` from now, whichever comes first."""
        if job.on_budget_exceeded != "wait":
            return None
        until_ms = int((time.time() + self.settings.park_max_wait_s) * 1000)
        if job.deadline is not None:
            until_ms = min(until_ms, int(job.deadline.timestamp() * 1000))
        return Wait(until_ms)

    async def decline(self, parked: Parked, *, idle: IdleHook | None = None) -> Outcome:
        """Answer a job that could wait with its refusal after all (no park to wait in)."""
        event = await self._record(parked.job, parked.refusal, idle)
        self._count(parked.job, event, {})
        return Outcome(event, self._reply_to(parked.job))

    # --- the path ---------------------------------------------------------------------

    async def _decide(
        self, job: CompletionJob, idle: IdleHook | None, wait: Wait | None
    ) -> tuple[TerminalEvent | Parked, dict[str, Any]]:
        if wait is not None and wait.refusal and _past(job):
            # Parked until its deadline: answered the refusal that kept it waiting.
            return await self._record(job, self._rewound(wait.refusal), idle), {}
        refusal = self._check(job)
        if refusal is not None:
            reason, detail = refusal
            return await self._refuse(job, reason, detail, idle=idle), {}
        entry = self.models.get(job.model)
        assert entry is not None  # _check refused unknown models
        request = Request(
            user_id=job.user_id,
            job_id=job.job_id,
            entry=entry,
            messages=[m.model_dump(exclude_none=True) for m in job.messages],
            params=job.params.model_dump(exclude_none=True) if job.params else {},
            estimate=estimate(job, entry, self.settings.default_max_tokens),
            max_wait_s=min(job.max_wait_s or 0.0, self.settings.rate_limit_max_wait_s),
            run=_run_of(job),
        )
        if self.settings.debug_log_prompts:
            log.warning("DEBUG prompt", extra={"job_id": job.job_id, "messages": request.messages})
        built = _JobEvents(self.outcomes, job)
        result = await self.spend.run(request, built, idle=idle)
        if isinstance(result, Charged):
            if self.settings.debug_log_prompts:
                response = result.completion.response
                log.warning("DEBUG response", extra={"job_id": job.job_id, "response": response})
            event, ours = self._charged(result, built)
            return event, _facts(result.charge, result.model_ms, republished=not ours)
        if isinstance(result, CallFailed):
            assert built.failure is not None
            return built.failure, {"model_ms": result.model_ms}
        if isinstance(result, Ended):
            return self._republished(job, result), {"republished": True}
        return await self._refused(job, entry, result, idle, wait), {}

    def _check(self, job: CompletionJob) -> tuple[RejectReason, str] | None:
        """The checks that need no money: reply_to, model, deadline."""
        if job.reply_to is not None and not self.reply_to.fullmatch(job.reply_to):
            return "invalid_job", "reply_to: topic is not allowed by the worker's reply_to pattern"
        if job.model not in self.models:
            return "unknown_model", self._unknown_model(job.model)
        if _past(job):
            return "expired", "deadline: passed before the job started"
        return None

    def _charged(self, result: Charged, built: _JobEvents) -> tuple[TerminalEvent, bool]:
        """The event that answers a charged job, and whether it is this call's own."""
        settled = result.settled
        assert built.success is not None
        if settled.outcome is None or settled.outcome == built.success_bytes:
            return outcome.with_budget(built.success, settled.snapshot), True
        # Another outcome was stored first (a retried settle, a stale delivery's answer).
        return outcome.stored(settled.outcome, settled.snapshot), False

    def _republished(self, job: CompletionJob, ended: Ended) -> TerminalEvent:
        if ended.outcome is None:
            # The job ended long ago and its stored event has expired: charge nothing.
            return self.outcomes.failed(
                job,
                error_type="outcome_expired",
                error="the job already ended; its stored outcome has expired",
                retryable=False,
                attempts=0,
            )
        return outcome.stored(ended.outcome, ended.snapshot)

    async def _refused(
        self,
        job: CompletionJob,
        entry: ModelEntry,
        refusal: Refusal,
        idle: IdleHook | None,
        wait: Wait | None,
    ) -> TerminalEvent | Parked:
        wanted, refused = refusal.estimate, refusal.refused
        if refusal.reason == "no_budget":
            detail = "user has no budget"
        elif refusal.reason == "rate_limited":
            detail = f"{refused.limit if refused else 'rate'}: rate limit reached"
            if refused is not None and refused.scope:
                detail += f" ({refused.scope})"
        else:
            assert refused is not None
            detail = _budget_detail(wanted, refused, self.settings.admission_policy, job.run)
            if wait is not None and not refused.run_closed:
                detail += "; it waited for budget (on_budget_exceeded: wait) until its wait ran out"
        fields: dict[str, Any] = {
            "retry_after_s": refusal.retry_after_s,
            "estimated_cost_nanousd": wanted.cost_nanousd,
            "budget": refused.snapshot if refused is not None else None,
            "refused": refused,
        }
        if wait is not None and _may_wait(refusal, wait):
            rejection = self.outcomes.reject_job(job, refusal.reason, detail, **fields)
            return Parked(job, rejection, refusal.retry_after_s, wait.until_ms)
        return await self._refuse(job, refusal.reason, detail, idle=idle, **fields)

    async def _refuse(
        self,
        job: CompletionJob,
        reason: RejectReason,
        detail: str,
        *,
        idle: IdleHook | None,
        **fields: Any,
    ) -> TerminalEvent:
        """Record a refusal as the job's outcome and answer the job's first outcome (this
        refusal, or what an earlier delivery stored). While another delivery runs the
        job, wait for its outcome instead."""
        return await self._record(
            job, self.outcomes.reject_job(job, reason, detail, **fields), idle
        )

    async def _record(
        self, job: CompletionJob, refusal: CompletionRejected, idle: IdleHook | None
    ) -> TerminalEvent:
        """Store ``refusal`` as the job's outcome unless it has one; the first outcome."""
        encoded = encode_event(refusal)
        gate, book = self.spend.gate, self.spend.ledger
        while True:
            answer = await gate.call(lambda: book.finish(job.user_id, job.job_id, outcome=encoded))
            if isinstance(answer, ledger.Finished):
                break
            await self.spend.pause(HOLDER_POLL_S, idle)
        if answer.outcome == encoded:
            return refusal
        return outcome.stored(answer.outcome or encoded, answer.snapshot)

    # --- small things -------------------------------------------------------------------

    def _rewound(self, stored: bytes) -> CompletionRejected:
        """A parked job's last refusal, as a new event of now: the same limit and
        ``resets_at``, ``retry_after_s`` counted from now."""
        event = parse_event(stored)
        assert isinstance(event, CompletionRejected)
        now = datetime.now(UTC)
        retry = None
        if event.resets_at is not None:
            retry = max(0.0, (event.resets_at - now).total_seconds())
        rebuilt = self.outcomes.rejected(
            event.job_id, event.user_id, event.model, event.metadata, event.reason, event.detail
        )
        return rebuilt.model_copy(
            update={
                "retry_after_s": retry,
                "estimated_cost_nanousd": event.estimated_cost_nanousd,
                "budget": event.budget,
                "scope": event.scope,
                "limit": event.limit,
                "retryable": event.retryable,
                "remaining_nanousd": event.remaining_nanousd,
                "resets_at": None if retry is None else now + timedelta(seconds=retry),
            }
        )

    def _unknown_model(self, model: str) -> str:
        names = self.models.names()
        shown = ", ".join(repr(name) for name in names[:_KNOWN_MODELS_SHOWN])
        extra = len(names) - _KNOWN_MODELS_SHOWN
        more = f" and {extra} more" if extra > 0 else ""
        return f"model: {model!r} is not in the worker's model list; it has {shown}{more}"

    def _reply_to(self, job: CompletionJob) -> str | None:
        if job.reply_to is not None and self.reply_to.fullmatch(job.reply_to):
            return job.reply_to
        return None

    def _count(self, job: CompletionJob, event: TerminalEvent, facts: dict[str, Any]) -> None:
        """Count the job's outcome and log its one line (no prompt text, ever)."""
        kind = event.type.removeprefix("completion.")
        reason = ""
        if isinstance(event, CompletionRejected):
            reason = event.reason
        elif isinstance(event, CompletionFailed):
            reason = event.error_type
        if facts.pop("republished", False):
            kind = "republished"
        self.metrics.jobs.labels(kind, reason).inc()
        tracing.annotate(
            outcome=kind, reason=reason or None, cost_nanousd=facts.get("cost_nanousd")
        )
        line: dict[str, Any] = {"job_id": job.job_id, "model": job.model, **facts}
        if reason:
            line["reason"] = reason
        log.info("job %s", kind, extra=line)


def _past(job: CompletionJob) -> bool:
    return job.deadline is not None and job.deadline <= datetime.now(UTC)


def _may_wait(refusal: Refusal, wait: Wait) -> bool:
    """Whether a refusal can end while the job waits: a budget that may yet hold it
    (a period reset, a grant, freed reservations), never a closed run; and time left."""
    if refusal.reason != "budget_exceeded" or refusal.refused is None:
        return False
    return not refusal.refused.run_closed and time.time() * 1000 < wait.until_ms


def _facts(charge: Charge, model_ms: float, *, republished: bool) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cost_nanousd": charge.cost_nanousd,
        "prompt_tokens": charge.prompt_tokens,
        "completion_tokens": charge.completion_tokens,
        "model_ms": model_ms,
    }
    if republished:
        facts["republished"] = True
    return facts


def _budget_detail(
    wanted: Estimate, refused: ledger.Refused, policy: AdmissionPolicy, run: JobRun | None
) -> str:
    limit = refused.snapshot.limit_nanousd
    scope = f" of {refused.scope}" if refused.scope else ""
    if refused.run_closed and run is not None:
        return f"budget: run {run.id!r} is closed (by hand or at its expiry): start another run"
    if run is not None and not refused.scope.startswith("run:"):
        return (
            f"budget: run {run.id!r} could not start: its cap {run.cap_nanousd} nano-USD is "
            f"more than the {refused.remaining} nano-USD remaining{scope}"
        )
    if 0 < limit < wanted.cost_nanousd and refused.retry_after_ms is None:
        fixes = "give the job a smaller max_tokens (or, for jobs without one, lower "
        fixes += "BW_DEFAULT_MAX_TOKENS) or raise the budget"
        if policy == "reject":
            fixes += ", or set BW_ADMISSION_POLICY=clamp"
        return (
            f"budget: the estimated cost {wanted.cost_nanousd} nano-USD (prompt bound "
            f"{wanted.prompt_tokens_bound} tokens plus up to {wanted.max_output_tokens} output "
            f"tokens x {wanted.n}) is more than the whole {limit} nano-USD limit{scope}, "
            f"so this job can never fit: {fixes}"
        )
    return (
        f"budget: estimated cost {wanted.cost_nanousd} nano-USD exceeds the "
        f"{refused.remaining} nano-USD remaining{scope}"
    )


class _JobEvents:
    """The events the spend path stores for one job; the built models are kept so the
    job path publishes them without parsing them back."""

    def __init__(self, outcomes: Outcomes, job: CompletionJob) -> None:
        self.outcomes = outcomes
        self.job = job
        self.success: CompletionSucceeded | None = None
        self.success_bytes = b""
        self.failure: CompletionFailed | None = None

    def succeeded(self, completion: Completion, charge: Charge) -> bytes:
        self.success = self.outcomes.succeeded(
            self.job,
            response=completion.response,
            prompt_tokens=charge.prompt_tokens,
            completion_tokens=charge.completion_tokens,
            cost_nanousd=charge.cost_nanousd,
            attempts=completion.attempts,
            cost_basis=charge.basis,
        )
        self.success_bytes = encode_event(self.success)
        return self.success_bytes

    def failed(self, failure: Failure) -> bytes:
        self.failure = self.outcomes.failed(
            self.job,
            error_type=failure.error_type,
            error=failure.message,
            retryable=failure.retryable,
            attempts=failure.attempts,
        )
        return encode_event(self.failure)


def _run_of(job: CompletionJob) -> ledger.RunRequest | None:
    if job.run is None:
        return None
    return ledger.RunRequest(id=job.run.id, cap_nanousd=job.run.cap_nanousd, ttl_s=job.run.ttl_s)
