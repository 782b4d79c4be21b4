"""The path of one job: decode -> check -> estimate -> reserve -> call -> settle or
release -> publish. ``JobRunner.run`` is that path; each step is a short method.

Every record ends in exactly one published outcome (an event, or a DLQ record for
bytes that cannot even be addressed). The money rules live in the ledger: a job is
reserved before its call (fail closed), charged at most once (settle is idempotent
by job id), and a redelivered job that already ended republishes its stored event
instead of calling the model again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from schemas.events import RejectReason, encode_event
from schemas.jobs import CompletionJob, InvalidJob, JobLimits, UndecodableJob, parse_job
from worker import admission, ledger
from worker.errors import LedgerUnavailable, PermanentProviderError, ProviderError
from worker.estimate import Estimate, estimate
from worker.metrics import Metrics
from worker.models import ModelEntry, ModelList
from worker.outcome import Outcomes, settled_event, with_budget
from worker.provider import Completion, Provider
from worker.publisher import Publisher
from worker.settings import Settings

log = logging.getLogger("budget_worker.job")
REPLY_TO_ATTEMPTS = 3
T = TypeVar("T")


class Record(Protocol):
    """What the runner needs of a Kafka record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    reservation: ledger.Reserved
    estimate: Estimate


class JobRunner:
    """Runs jobs; shared by all of a process's concurrent job tasks."""

    def __init__(
        self,
        settings: Settings,
        ledger_: ledger.Ledger,
        models: ModelList,
        provider: Provider,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.ledger = ledger_
        self.models = models
        self.provider = provider
        self.publisher = publisher
        self.metrics = metrics
        self.outcomes = Outcomes(settings.worker_id)
        self.limits = JobLimits(
            max_job_bytes=settings.max_job_bytes,
            max_messages=settings.max_messages,
            max_prompt_chars=settings.max_prompt_chars,
        )
        self.reply_to = re.compile(settings.reply_to_pattern)
        # Settings guarantee the lease outlives one call attempt; retries extend it.
        self.lease_ms = settings.lease_ms
        self.ledger_ok = asyncio.Event()
        self.ledger_ok.set()
        self.slots = Slots(settings.max_in_flight)

    # --- the path ---------------------------------------------------------------

    async def run(self, record: Record) -> None:
        """Turn one record into one published outcome. Raises only CancelledError."""
        job = await self._decode(record)
        if job is None:
            return
        try:
            outcome = await self._process(job)
        except Exception as exc:
            # A defect, not bad input: answer the job rather than stall its partition.
            log.exception("job failed unexpectedly", extra={"job_id": job.job_id})
            outcome = self.outcomes.failed(
                job,
                error_type="internal_error",
                error=type(exc).__name__,
                retryable=True,
                attempts=0,
            )
            await _quietly(self.ledger.release(job.user_id, job.job_id, outcome=outcome))
            self._count("failed", "internal_error", job.job_id)
        await self._publish(self._topic(job), job.job_id, outcome)

    async def _process(self, job: CompletionJob) -> bytes:
        entry, refusal = self._check(job)
        if refusal is not None:
            return refusal
        assert entry is not None
        admitted = await self._admit(
            job, entry, estimate(job, entry, self.settings.default_max_tokens)
        )
        if isinstance(admitted, bytes):
            return admitted
        return await self._call_and_settle(job, entry, admitted)

    # --- steps ------------------------------------------------------------------

    async def _decode(self, record: Record) -> CompletionJob | None:
        """A valid job, or None once the record's outcome (DLQ or rejection) is out."""
        raw = record.value or b""
        try:
            return parse_job(raw, self.limits)
        except UndecodableJob as exc:
            message = str(exc)
            await self._retrying(
                lambda: self.publisher.dead_letter(
                    record.key,
                    raw,
                    error_type="undecodable",
                    error_message=message,
                    source_topic=record.topic,
                    source_partition=record.partition,
                    source_offset=record.offset,
                ),
                f"dlq:{record.partition}:{record.offset}",
            )
            self.metrics.dlq.inc()
            log.warning(
                "job sent to the DLQ",
                extra={"partition": record.partition, "offset": record.offset, "error": message},
            )
        except InvalidJob as exc:
            outcome = self.outcomes.rejected(
                exc.job_id, exc.user_id, exc.model, exc.metadata, "invalid_job", str(exc)
            )
            await self._publish(self.settings.results_topic, exc.job_id, outcome)
            self._count("rejected", "invalid_job", exc.job_id)
        return None

    def _check(self, job: CompletionJob) -> tuple[ModelEntry | None, bytes | None]:
        """The checks that need no ledger: reply_to, model, deadline."""
        if job.reply_to is not None and not self.reply_to.fullmatch(job.reply_to):
            detail = "reply_to: topic is not allowed by the worker's reply_to pattern"
            return None, self._reject(job, "invalid_job", detail)
        entry = self.models.get(job.model)
        if entry is None:
            detail = f"model: {job.model!r} is not in the worker's model list"
            return None, self._reject(job, "unknown_model", detail)
        if job.deadline is not None and job.deadline <= datetime.now(UTC):
            return None, self._reject(job, "expired", "deadline: passed before the job started")
        return entry, None

    async def _admit(
        self, job: CompletionJob, entry: ModelEntry, wanted: Estimate
    ) -> Admitted | bytes:
        """Reserve the estimate, waiting out rate limits and other holders; or refuse."""
        holder = f"{self.settings.worker_id}:{uuid.uuid4().hex[:12]}"
        max_wait_s = min(job.max_wait_s or 0.0, self.settings.rate_limit_max_wait_s)
        waited_until = time.monotonic() + max_wait_s
        current = wanted
        while True:
            result = await self._reserve(job, current, holder)
            if isinstance(result, ledger.Reserved):
                if not result.existing or result.holder == holder:
                    return Admitted(result, current)
                # Another worker holds this job (a rebalance handed it over while the
                # old owner still runs it): wait until it ends or its lease runs out.
                await asyncio.sleep(min(1.0, self.lease_ms / 4000))
                continue
            if isinstance(result, ledger.Finished):
                self._count("republished", "redelivery", job.job_id)
                if result.outcome is None:
                    return self._lost_outcome(job)
                return with_budget(result.outcome, result.snapshot)
            if isinstance(result, ledger.NoBudget):
                return await self._finish(job, "no_budget", "user has no budget", wanted)
            if result.limit == "usd":
                clamped = self._clamp(current, result, entry)
                if clamped is not None and clamped != current:
                    current = clamped
                    continue
                detail = (
                    f"budget: estimated cost {current.cost_nanousd} nano-USD exceeds the "
                    f"{result.remaining} nano-USD remaining"
                )
                retry_s = _retry_s(result.retry_after_ms)
                return await self._finish(
                    job, "budget_exceeded", detail, current, result, retry_after_s=retry_s
                )
            # An RPM/TPM limit: wait (holding nothing) if the job allows, else refuse.
            delay_s = (result.retry_after_ms or 1000) / 1000
            if time.monotonic() + delay_s > waited_until:
                detail = f"{result.limit}: rate limit reached"
                return await self._finish(
                    job, "rate_limited", detail, current, result, retry_after_s=delay_s
                )
            await self._wait_for_rate(delay_s)

    def _clamp(
        self, current: Estimate, refused: ledger.Refused, entry: ModelEntry
    ) -> Estimate | None:
        if self.settings.admission_policy != "clamp" or refused.remaining <= 0:
            return None
        return admission.admit(
            current,
            refused.remaining,
            entry.price,
            self.settings.admission_policy,
            self.settings.clamp_min_tokens,
        )

    async def _call_and_settle(
        self, job: CompletionJob, entry: ModelEntry, admitted: Admitted
    ) -> bytes:
        reserved = admitted.reservation
        params = dict(job.params.model_dump(exclude_none=True)) if job.params else {}
        messages = [m.model_dump(exclude_none=True) for m in job.messages]
        if self.settings.debug_log_prompts:
            log.warning("DEBUG prompt", extra={"job_id": job.job_id, "messages": messages})
        started = time.perf_counter()
        try:
            completion = await self.provider.complete(
                entry,
                messages,
                params,
                admitted.estimate.max_output_tokens,
                before_retry=lambda attempt, delay_s: self._before_retry(job, reserved, entry),
            )
            if completion.usage is None:
                # An answer without usage has no known cost: it fails as it did before the
                # provider returned such answers (until the spend path charges the hold).
                missing = PermanentProviderError(
                    "no_usage",
                    "the provider's response carries no token usage; its cost is unknown",
                )
                missing.attempts = completion.attempts  # type: ignore[attr-defined]
                raise missing
        except ProviderError as exc:
            model_ms = self._model_call_ended(entry, started)
            attempts = int(getattr(exc, "attempts", 1))
            outcome = self.outcomes.failed(
                job,
                error_type=exc.error_type,
                error=str(exc),
                retryable=exc.retryable,
                attempts=attempts,
            )
            await self._ledger(
                lambda: self.ledger.release(job.user_id, job.job_id, outcome=outcome)
            )
            self._count("failed", exc.error_type, job.job_id, model_ms=model_ms)
            return outcome
        except BaseException:
            # Cancelled (shutdown past its grace) or broken: free the money now rather
            # than at lease expiry. The job is redelivered: its offset is not committed.
            self._model_call_ended(entry, started)
            await _quietly(self.ledger.release(job.user_id, job.job_id))
            raise
        model_ms = self._model_call_ended(entry, started)
        if self.settings.debug_log_prompts:
            log.warning(
                "DEBUG response", extra={"job_id": job.job_id, "response": completion.response}
            )
        return await self._settle(job, entry, completion, model_ms)

    def _model_call_ended(self, entry: ModelEntry, started: float) -> float:
        """Record the model call's time (retries included); its milliseconds, for the
        job's log line."""
        elapsed_s = time.perf_counter() - started
        self.metrics.model_seconds.labels(entry.name).observe(elapsed_s)
        return round(elapsed_s * 1000, 1)

    async def _settle(
        self, job: CompletionJob, entry: ModelEntry, completion: Completion, model_ms: float
    ) -> bytes:
        cost = entry.price.cost_nanousd(completion.usage) if completion.usage is not None else 0
        event = self.outcomes.succeeded(
            job,
            response=completion.response,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_nanousd=cost,
            attempts=completion.attempts,
        )
        provisional = encode_event(event)
        started = time.perf_counter()
        # Shielded: once the model has answered, the charge must land even if this
        # task is cancelled by a shutdown.
        settled = await _shielded(
            self._ledger(
                lambda: self.ledger.settle(
                    job.user_id,
                    job.job_id,
                    cost_nanousd=cost,
                    tokens=completion.prompt_tokens + completion.completion_tokens,
                    model=job.model,
                    outcome=provisional,
                )
            )
        )
        self.metrics.settle_seconds.observe(time.perf_counter() - started)
        if not settled.first:
            self._count("republished", "settled_before", job.job_id, model_ms=model_ms)
            return (
                with_budget(settled.outcome, settled.snapshot) if settled.outcome else provisional
            )
        self.metrics.spend.labels(job.model).inc(settled.charged_nanousd)
        self._count("succeeded", "", job.job_id, model_ms=model_ms)
        return settled_event(event, settled.snapshot)

    # --- ledger access ------------------------------------------------------------

    async def _reserve(
        self, job: CompletionJob, wanted: Estimate, holder: str
    ) -> ledger.ReserveResult:
        started = time.perf_counter()
        result = await self._ledger(
            lambda: self.ledger.reserve(
                job.user_id,
                job.job_id,
                cost_nanousd=wanted.cost_nanousd,
                tokens=wanted.tokens,
                lease_ms=self.lease_ms,
                holder=holder,
            )
        )
        self.metrics.reserve_seconds.observe(time.perf_counter() - started)
        return result

    async def _ledger(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a ledger call, waiting out a Redis outage: fail closed, lose nothing.

        While Redis is unreachable the consumer stops fetching (it watches
        ``ledger_ok``); jobs already in flight wait here and go on when it is back.
        """
        while True:
            try:
                result = await call()
            except LedgerUnavailable as exc:
                if self.ledger_ok.is_set():
                    log.error("ledger unavailable; pausing", extra={"error": str(exc)})
                self.ledger_ok.clear()
                self.metrics.redis_up.set(0)
                await asyncio.sleep(self.settings.redis_retry_s)
                continue
            if not self.ledger_ok.is_set():
                log.info("ledger reachable again; resuming")
                self.ledger_ok.set()
                self.metrics.redis_up.set(1)
            return result

    async def _before_retry(
        self, job: CompletionJob, reserved: ledger.Reserved, entry: ModelEntry
    ) -> None:
        self.metrics.model_retries.labels(entry.name).inc()
        await self._ledger(
            lambda: self.ledger.extend(
                job.user_id, job.job_id, lease_ms=self.lease_ms, holder=reserved.holder
            )
        )

    async def _finish(
        self,
        job: CompletionJob,
        reason: RejectReason,
        detail: str,
        wanted: Estimate,
        refused: ledger.Refused | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> bytes:
        """Record a refusal as the job's outcome; a redelivery republishes the same one."""
        outcome = self.outcomes.reject_job(
            job,
            reason,
            detail,
            retry_after_s=retry_after_s,
            estimated_cost_nanousd=wanted.cost_nanousd,
            budget=refused.snapshot if refused is not None else None,
        )
        stored = await self._ledger(
            lambda: self.ledger.finish(job.user_id, job.job_id, outcome=outcome)
        )
        self._count("rejected", reason, job.job_id)
        return stored

    async def _wait_for_rate(self, delay_s: float) -> None:
        """Sleep without holding an in-flight slot, so other users' jobs go on."""
        self.metrics.waiting.inc()
        self.slots.give()
        try:
            await asyncio.sleep(delay_s)
        finally:
            self.slots.take()
            self.metrics.waiting.dec()

    async def _publish(self, topic: str, job_id: str, outcome: bytes) -> None:
        """Publish; a reply_to topic that keeps failing (deleted, no ACL) must not stall
        the partition, so after a few tries the event goes to the results topic."""
        tries = 0

        def send() -> Awaitable[None]:
            nonlocal tries, topic
            tries += 1
            if tries > REPLY_TO_ATTEMPTS:
                topic = self.settings.results_topic
            return self.publisher.publish(topic, job_id.encode(), outcome)

        await self._retrying(send, job_id)

    async def _retrying(self, send: Callable[[], Awaitable[None]], what: str) -> None:
        """Retry a Kafka write until the broker takes it; the offset waits for it."""
        delay_s = 0.2
        while True:
            try:
                await send()
                return
            except Exception as exc:  # aiokafka's errors stay in the publisher's world
                log.warning("publish failed; retrying", extra={"job_id": what, "error": repr(exc)})
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    # --- small things ---------------------------------------------------------------

    def _reject(self, job: CompletionJob, reason: RejectReason, detail: str) -> bytes:
        self._count("rejected", reason, job.job_id)
        return self.outcomes.reject_job(job, reason, detail)

    def _lost_outcome(self, job: CompletionJob) -> bytes:
        """A job that ended long ago, whose stored event has expired: say so, charge nothing."""
        return self.outcomes.failed(
            job,
            error_type="outcome_expired",
            error="the job already ended; its stored outcome has expired",
            retryable=False,
            attempts=0,
        )

    def _topic(self, job: CompletionJob) -> str:
        """The job's reply_to when the allow-list admits it, else the results topic."""
        if job.reply_to is not None and self.reply_to.fullmatch(job.reply_to):
            return job.reply_to
        return self.settings.results_topic

    def _count(self, outcome: str, reason: str, job_id: str, **timings: float) -> None:
        """Count the job's outcome and log its one line (``timings``: e.g. ``model_ms``)."""
        self.metrics.jobs.labels(outcome, reason).inc()
        log.info("job %s", outcome, extra={"job_id": job_id, "reason": reason, **timings})


def _retry_s(retry_after_ms: int | None) -> float | None:
    return None if retry_after_ms is None else retry_after_ms / 1000


class Slots:
    """The in-flight cap. The consumer fetches only while ``free > 0``.

    A job waiting on a rate limit gives its slot back and takes it again after the
    wait, which may briefly push ``free`` below zero: the consumer then simply waits.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._changed = asyncio.Event()

    def take(self) -> None:
        self.free -= 1

    def give(self) -> None:
        self.free += 1
        self._changed.set()

    @property
    def in_use(self) -> int:
        return self.size - self.free

    async def wait_free(self, timeout_s: float) -> bool:
        """Wait until a slot is free (True) or the timeout passes (False)."""
        if self.free > 0:
            return True
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.free > 0


async def _quietly(awaitable: Awaitable[object]) -> None:
    """Best effort clean-up: never let it hide the error being handled."""
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(awaitable)), 2.0)
    except Exception as exc:
        log.warning("clean-up failed", extra={"error": type(exc).__name__})


async def _shielded(awaitable: Awaitable[T]) -> T:
    """Finish ``awaitable`` even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
