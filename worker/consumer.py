"""The Kafka side of one worker process: fetch, decode, run jobs concurrently, publish
each outcome, commit safely.

- Many jobs run at once (model calls take seconds), up to ``BW_MAX_IN_FLIGHT``
  (:class:`Slots`). When every slot is taken, or the ledger is unreachable, the
  assigned partitions are paused (the client stops prefetching) rather than buffered
  without bound.
- Every record ends in exactly one published outcome: a dead-letter record for bytes
  that cannot even be addressed, a ``completion.rejected`` (``invalid_job``) for a job
  that breaks the contract, else the event the job path answers.
- An offset is committed only when every job below it has published its outcome and
  the broker acknowledged it (``OffsetTracker``): at-least-once, never a skipped job.
- On a rebalance the revoked partitions' jobs get ``BW_DRAIN_TIMEOUT_S`` to finish,
  then what finished is committed. Jobs still running then finish harmlessly: their
  new owner re-reads them and the ledger stops a second call or charge. They are
  still part of the process's drain at shutdown.
- ``stop()`` (SIGTERM/SIGINT): stop fetching, give in-flight jobs
  ``BW_SHUTDOWN_GRACE_S``, cancel the rest (their reservations are released), commit.

One module of about 400 lines on purpose: fetching, pausing, publishing and committing
share the assigned partitions' state, and the rebalance and shutdown rules read only
beside that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from schemas.events import TerminalEvent, encode_event
from schemas.jobs import CompletionJob, InvalidJob, JobLimits, UndecodableJob, parse_job
from worker import outcome, tracing
from worker.connections import kafka_options
from worker.gate import LedgerGate
from worker.job import JobPath, Outcome, Parked
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.publisher import EventTooLarge, Publisher
from worker.settings import Settings

log = logging.getLogger("budget_worker.consumer")

COMMIT_INTERVAL_S = 0.5
SLOT_WAIT_S = 0.5
REPLY_TO_ATTEMPTS = 3


class Record(Protocol):
    """What the consumer needs of a Kafka record (aiokafka's ConsumerRecord fits)."""

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
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Slots:
    """The in-flight cap. The consumer fetches only while ``free > 0``.

    A job waiting holding nothing (a rate limit, another delivery of it) lends its
    slot back (:meth:`lent`) and takes it again after the wait, which may briefly push
    ``free`` below zero: the consumer then simply waits.
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

    @contextlib.asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        """Give a slot back for the duration of a wait."""
        self.give()
        try:
            yield
        finally:
            self.take()

    async def wait_free(self, timeout_s: float) -> bool:
        """Wait until a slot is free (True) or the timeout passes (False)."""
        if self.free > 0:
            return True
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.free > 0


class JobConsumer:
    """Consumes ``BW_JOBS_TOPIC`` in the group ``BW_GROUP_ID`` and answers every record."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobPath,
        publisher: Publisher,
        gate: LedgerGate,
        metrics: Metrics,
        park: Callable[[bytes, Parked], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.park = park
        """Where a job that waits for budget goes (``worker.parking``); without it such a
        job is answered its refusal at once."""
        self.jobs = jobs
        self.publisher = publisher
        self.gate = gate
        self.metrics = metrics
        self.slots = Slots(settings.max_in_flight)
        self.limits = JobLimits(
            max_job_bytes=settings.max_job_bytes,
            max_messages=settings.max_messages,
            max_prompt_chars=settings.max_prompt_chars,
        )
        self.started = False
        self._consumer = AIOKafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=min(3_000, settings.kafka_session_timeout_ms // 3),
            max_partition_fetch_bytes=max(settings.max_job_bytes * 2, 1_048_576),
            fetch_max_bytes=max(settings.max_job_bytes * 4, 52_428_800),
            **kafka_options(settings),
        )
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._paused = False

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; then drain, commit and close."""
        self._consumer.subscribe([self.settings.jobs_topic], listener=_Rebalance(self))
        await self._consumer.start()
        self.started = True
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not self._stopping.is_set():
                ready = await self._wait_until_ready()
                # Polled even while paused, so the group does not evict a quiet member.
                batch = await self._consumer.getmany(
                    timeout_ms=200 if ready else 100, max_records=max(self.slots.free, 1)
                )
                # Anything returned is started, even past the cap: a record handed
                # over has advanced the position and must not be dropped.
                for partition, records in batch.items():
                    for record in records:
                        self._start(partition, record)
        finally:
            self.started = False
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stopped(self) -> None:
        """Return once ``stop()`` was called."""
        await self._stopping.wait()

    # --- fetching -------------------------------------------------------------------

    async def _wait_until_ready(self) -> bool:
        """True when a slot is free and the ledger is up; otherwise pause the partitions.

        A slot that frees within ``SLOT_WAIT_S`` is waited for without pausing: with
        short calls slots free all the time, and each pause drops the client's
        prefetched records (a fresh fetch on resume). Unpaused, the client buffers at
        most one fetch per partition, so waiting briefly is bounded too.
        """
        if self.slots.free <= 0 and self.gate.is_open:
            await self.slots.wait_free(SLOT_WAIT_S)
        ready = self.slots.free > 0 and self.gate.is_open
        if ready == self._paused:
            partitions = self._consumer.assignment()
            if ready:
                self._consumer.resume(*partitions)
            else:
                self._consumer.pause(*partitions)
            self._paused = not ready
        return ready

    def _start(self, partition: TopicPartition, record: Record) -> None:
        self.slots.take()
        self._tracker.start(partition, record.offset)
        task = asyncio.create_task(self._run_one(partition, record))
        self._tasks.setdefault(partition, set()).add(task)
        self._running.add(task)
        self.metrics.in_flight.set(self.slots.in_use)

    async def _run_one(self, partition: TopicPartition, record: Record) -> None:
        try:
            await self.answer(record)
            self._tracker.finish(partition, record.offset)
        finally:
            self.slots.give()
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
                self._tasks.get(partition, set()).discard(task)
            self.metrics.in_flight.set(self.slots.in_use)

    # --- one record -------------------------------------------------------------------

    async def answer(self, record: Record) -> None:
        """Decode, run and publish one record's outcome. Raises only CancelledError."""
        with tracing.job_span(record.headers, partition=record.partition, offset=record.offset):
            with tracing.span("bw.decode"):
                job = await self._decode(record)
            if job is None:
                return
            tracing.annotate(job_id=job.job_id, model=job.model)
            answer = await self.jobs.run(job, idle=self.slots.lent)
            if isinstance(answer, Parked):
                if self.park is not None:
                    # Parked: the record is done (its offset may be committed); the park
                    # answers the job later, holding no slot meanwhile.
                    await self.park(record.value or b"", answer)
                    return
                answer = await self.jobs.decline(answer, idle=self.slots.lent)
            await self.publish(answer, record.headers)

    async def _decode(self, record: Record) -> CompletionJob | None:
        """A valid job, or None once the record's outcome (DLQ or rejection) is out."""
        raw = record.value or b""
        try:
            return parse_job(raw, self.limits)
        except UndecodableJob as exc:
            message = str(exc)
            await _retrying(
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
            rejection = self.jobs.outcomes.rejected(
                exc.job_id, exc.user_id, exc.model, exc.metadata, "invalid_job", str(exc)
            )
            await self.publish(Outcome(rejection), record.headers)
            self.metrics.jobs.labels("rejected", "invalid_job").inc()
            log.info("job rejected", extra={"job_id": exc.job_id, "reason": "invalid_job"})
        return None

    async def publish(
        self, answer: Outcome, job_headers: Sequence[tuple[str, bytes]] | None
    ) -> None:
        """Publish until the broker takes it. A reply_to topic that keeps failing
        (deleted, no ACL) must not stall the partition: after a few tries the event goes
        to the results topic. An event too large for the broker is replaced by a small
        ``completion.failed`` that says what was charged."""
        event: TerminalEvent = answer.event
        value = encode_event(event)
        topic = answer.reply_to or self.settings.results_topic
        tries = 0
        headers = tracing.event_headers(job_headers)

        async def send() -> None:
            nonlocal tries, topic, value
            tries += 1
            if tries > REPLY_TO_ATTEMPTS:
                topic = self.settings.results_topic
            try:
                await self.publisher.publish(topic, event.job_id.encode(), value, headers)
            except EventTooLarge as exc:
                replacement = outcome.too_large(event, exc.size_bytes, exc.limit_bytes)
                log.error(
                    "event too large for the broker; publishing completion.failed instead",
                    extra={"job_id": event.job_id, "bytes": exc.size_bytes},
                )
                value = encode_event(replacement)
                await self.publisher.publish(topic, event.job_id.encode(), value, headers)

        with tracing.span("bw.publish", topic=topic):
            await _retrying(send, event.job_id)

    # --- commits ----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit()
            await self._observe_lag()

    async def _commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit what is contiguous and finished; keep what failed for the next try."""
        assigned = self._consumer.assignment()
        wanted = set(partitions) if partitions is not None else set(assigned)
        self._uncommitted.update(self._tracker.committable(wanted))
        offsets = {
            tp: OffsetAndMetadata(offset, "")
            for tp, offset in self._uncommitted.items()
            if tp in wanted and tp in assigned
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("commit failed; will retry", extra={"error": type(exc).__name__})
            return
        for tp in offsets:
            self._uncommitted.pop(tp, None)

    async def _observe_lag(self) -> None:
        """Records behind the last fetch's high watermark, plus those still running.

        A hint, not a measure: some brokers (Tansu) answer wrong watermarks.
        """
        assignment = self._consumer.assignment()
        self.metrics.assigned.set(len(assignment))
        for tp in assignment:
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(self._consumer.position(tp), 1.0)
            except (KafkaError, TimeoutError):
                continue
            lag = max(0, highwater - position) + self._tracker.pending(tp)
            self.metrics.kafka_lag.labels(str(tp.partition)).set(lag)

    # --- rebalance and shutdown ---------------------------------------------------------

    async def drain(self, partitions: set[TopicPartition], timeout_s: float) -> None:
        """Give the partitions' jobs ``timeout_s`` to finish, commit, then forget them."""
        running = set().union(*(self._tasks.get(tp, set()) for tp in partitions))
        if running and timeout_s > 0:
            await asyncio.wait(running, timeout=timeout_s)
        await self._commit(partitions)
        self._tracker.forget(partitions)
        for tp in partitions:
            self._tasks.pop(tp, None)
            self._uncommitted.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.kafka_lag.remove(str(tp.partition))
        still = sum(1 for task in running if not task.done())
        if still:
            log.info("partitions revoked with jobs still running", extra={"running": still})

    async def _shutdown(self) -> None:
        # Every job still running, revoked partitions' included: none is abandoned
        # mid-call while the grace lasts.
        running = set(self._running)
        if running:
            log.info("draining in-flight jobs", extra={"running": len(running)})
            _, pending = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self._commit()
        await self._consumer.stop()


async def _retrying(send: Callable[[], Awaitable[None]], what: str) -> None:
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


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: JobConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self._owner.drain(set(revoked), self._owner.settings.drain_timeout_s)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owner.metrics.assigned.set(len(assigned))
        # A fresh assignment is never paused by an earlier pause of ours.
        self._owner._paused = False
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )
