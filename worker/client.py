"""What a producing service needs: put jobs on ``llm.jobs``, read their events back.

- :class:`JobClient` validates a job with the contract's own models (``parse_job``), so
  a job the worker would reject as ``invalid_job`` or send to the DLQ is refused here,
  with the message the worker would have put in the event, and never sent. A valid job
  goes to ``BW_JOBS_TOPIC`` keyed by its ``user_id`` (one user's jobs keep their order)
  and :meth:`JobClient.submit` returns once the broker has acknowledged it.
- :class:`ResultWaiter` reads ``BW_RESULTS_TOPIC`` and resolves ``await wait(job_id)``
  with the job's terminal event. Events are delivered at least once; the first event
  for a job id wins and later copies are dropped and counted (``duplicates``).
- :class:`SyncJobClient` is both for code without an event loop: it runs them on a
  loop of its own in a background thread.

Every Kafka client here takes its bootstrap, TLS and SASL options from
``worker.connections.kafka_options``, as the worker's own clients do. This module is a
Kafka boundary: a broker that cannot be reached is :class:`KafkaUnavailable` (naming
the bootstrap), whichever client found out, and a client that failed to start is
closed before the error leaves.

Where a waiter starts reading, and why, is in ``worker.waiter``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas.events import CompletionFailed, CompletionRejected, TerminalEvent
from schemas.jobs import CompletionJob, JobLimits, parse_job
from worker.connections import kafka_options, unreachable
from worker.errors import KafkaUnavailable
from worker.loop_thread import LoopThread
from worker.settings import Settings
from worker.waiter import ResultWaiter, StartAt, WaiterStats

__all__ = [
    "JobClient",
    "KafkaUnavailable",
    "ResultWaiter",
    "SubmitFailed",
    "SyncJobClient",
    "WaiterStats",
    "build_job",
    "limits_of",
    "retry_delay_s",
]


# A record carries the job plus Kafka's framing; a job of exactly BW_MAX_JOB_BYTES must fit.
_RECORD_OVERHEAD_BYTES = 64 * 1024


class SubmitFailed(KafkaUnavailable):
    """The broker did not acknowledge the job. It may or may not have been written:
    submitting it again with the same ``job_id`` is safe (one charge, one outcome)."""


def limits_of(settings: Settings) -> JobLimits:
    """The size limits the worker applies, from the same settings."""
    return JobLimits(
        max_job_bytes=settings.max_job_bytes,
        max_messages=settings.max_messages,
        max_prompt_chars=settings.max_prompt_chars,
    )


def build_job(
    user_id: str,
    model: str,
    prompt: str,
    *,
    max_tokens: int | None = None,
    job_id: str | None = None,
    system: str | None = None,
    limits: JobLimits | None = None,
    **fields: Any,
) -> CompletionJob:
    """A one-prompt job (a fresh ``job_id`` unless given, ``created_at`` now), validated
    as the worker will validate it: raises ``schemas.jobs.InvalidJob`` (or, for a bad
    ``job_id`` or ``user_id``, ``UndecodableJob``) naming the field. ``fields`` are any
    other job fields (``params``, ``metadata``, ``reply_to``, ...)."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {
        "schema_version": 1,
        "job_id": job_id if job_id is not None else uuid.uuid4().hex,
        "user_id": user_id,
        "model": model,
        "messages": messages,
        "created_at": datetime.now(UTC),
        **fields,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return parse_job(_encode(body), limits or JobLimits())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _encode(body: Mapping[str, Any]) -> bytes:
    # NaN and lone surrogates are let through, as the bytes a worker would receive,
    # so that parse_job, not json.dumps or the codec, words the refusal.
    text = json.dumps(body, ensure_ascii=False, default=_json_default)
    return text.encode("utf-8", "surrogatepass")


class JobClient:
    """Submits jobs to ``settings.jobs_topic``. Use ``async with`` or start/stop."""

    def __init__(self, settings: Settings, **producer_options: Any) -> None:
        self.settings = settings
        self.limits = limits_of(settings)
        options = kafka_options(settings)
        options.update(
            acks="all",
            # Brokers without idempotent producers (Tansu) must work too; a duplicate
            # job is harmless (same job_id: one charge, one outcome).
            enable_idempotence=False,
            linger_ms=settings.kafka_linger_ms,
            max_request_size=settings.max_job_bytes + _RECORD_OVERHEAD_BYTES,
        )
        options.update(producer_options)
        self._options = options
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect to the broker; raises :class:`SubmitFailed` (a
        :class:`KafkaUnavailable`) naming the bootstrap when it cannot be reached. (The
        Kafka client is built here, inside the event loop that will use it.)"""
        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise SubmitFailed(str(unreachable(self.settings, exc))) from exc
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> JobClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def validate(self, job: CompletionJob | Mapping[str, Any]) -> tuple[CompletionJob, bytes]:
        """The job as the worker will read it, and its bytes; raises ``InvalidJob`` or
        ``UndecodableJob`` (``schemas.jobs.JobError``) with the worker's own message."""
        if isinstance(job, CompletionJob):
            raw = job.model_dump_json(exclude_none=True).encode("utf-8")
        else:
            raw = _encode(job)
        # Parsed again even when given a model: one built with model_construct, or
        # over the size limits, must fail here rather than at the worker.
        return parse_job(raw, self.limits), raw

    async def submit(self, job: CompletionJob | Mapping[str, Any]) -> str:
        """Validate ``job``, send it keyed by its user id and wait for the broker's
        acknowledgement; the job id. Raises ``schemas.jobs.JobError`` for a job the worker
        would not run (nothing is sent) and :class:`SubmitFailed` when the broker did not
        take it."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("JobClient.start() was not called")
        parsed, raw = self.validate(job)
        try:
            await producer.send_and_wait(
                self.settings.jobs_topic, raw, key=parsed.user_id.encode("utf-8")
            )
        except KafkaError as exc:
            raise SubmitFailed(
                f"job {parsed.job_id!r} was not acknowledged: {type(exc).__name__}"
            ) from exc
        return parsed.job_id


class SyncJobClient:
    """:class:`JobClient` and (with ``wait_for_results``) a :class:`ResultWaiter` for
    synchronous code; thread-safe. The waiter starts with the client, so an event of any
    job submitted after construction is caught. ``close()`` (or ``with``) stops both."""

    def __init__(
        self,
        settings: Settings,
        *,
        wait_for_results: bool = True,
        start_at: StartAt = "end",
        results_topic: str | None = None,
    ) -> None:
        self._loop = LoopThread("budget-worker-client", "SyncJobClient")
        self._client: JobClient | None = None
        self._waiter: ResultWaiter | None = None

        async def start() -> tuple[JobClient, ResultWaiter | None]:
            waiter = None
            if wait_for_results:
                waiter = ResultWaiter(settings, topic=results_topic, start_at=start_at)
                await waiter.start()
            client = JobClient(settings)
            try:
                await client.start()
            except BaseException:
                if waiter is not None:
                    await waiter.stop()
                raise
            return client, waiter

        try:
            self._client, self._waiter = self._loop.run(start())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def waiter(self) -> ResultWaiter:
        if self._waiter is None:
            raise RuntimeError("this SyncJobClient was made with wait_for_results=False")
        return self._waiter

    def submit(self, job: CompletionJob | Mapping[str, Any]) -> str:
        """See :meth:`JobClient.submit`."""
        if self._client is None:
            raise RuntimeError("this SyncJobClient is closed")
        return self._loop.run(self._client.submit(job))

    def wait(self, job_id: str, timeout_s: float = 60.0) -> TerminalEvent:
        """See :meth:`ResultWaiter.wait`."""
        return self._loop.run(self.waiter.wait(job_id, timeout_s))

    def submit_and_wait(
        self, job: CompletionJob | Mapping[str, Any], timeout_s: float = 60.0
    ) -> TerminalEvent:
        """Submit, then wait up to ``timeout_s`` for the job's first event."""
        waiter = self.waiter  # raises before anything is sent when there is none
        job_id = self.submit(job)
        return self._loop.run(waiter.wait(job_id, timeout_s))

    def close(self) -> None:
        """Stop the clients and the background loop; idempotent."""
        client, waiter = self._client, self._waiter
        self._client = self._waiter = None

        async def stop() -> None:
            if client is not None:
                await client.stop()
            if waiter is not None:
                await waiter.stop()

        if client is not None or waiter is not None:
            with contextlib.suppress(Exception):
                self._loop.run(stop(), timeout_s=30)
        self._loop.stop()

    def __enter__(self) -> SyncJobClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def retry_delay_s(event: TerminalEvent) -> float | None:
    """How long to wait before sending a job again, or None when sending it again cannot
    help (it succeeded, or its refusal or failure is terminal). Send it with a new
    ``job_id``: the old one is answered with its first outcome for as long as that is
    stored (``BW_OUTCOME_TTL_S``). A failed job may go again at once: the worker has
    already retried the provider."""
    if isinstance(event, CompletionRejected):
        return event.retry_after_s if event.retryable else None
    if isinstance(event, CompletionFailed):
        return 0.0 if event.retryable else None
    return None
