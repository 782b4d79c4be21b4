"""The Kafka loop of one worker process: fetch, run jobs concurrently, commit safely.

- Many jobs run at once (model calls take seconds), up to ``BW_MAX_IN_FLIGHT``. When
  every slot is taken, or Redis is unreachable, the assigned partitions are paused
  (the client stops prefetching) rather than buffered without bound.
- An offset is committed only when every job below it has published its outcome and
  the broker acknowledged it (``OffsetTracker``): at-least-once, never a skipped job.
- On a rebalance the revoked partitions' jobs get ``BW_DRAIN_TIMEOUT_S`` to finish,
  then what finished is committed. Jobs still running then finish harmlessly: their
  new owner re-reads them and the ledger (job id) stops a second call or charge.
- ``stop()`` (SIGTERM/SIGINT): stop fetching, give in-flight jobs
  ``BW_SHUTDOWN_GRACE_S``, cancel the rest (their reservations are released), commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker.connections import kafka_options
from worker.job import JobRunner, Record
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.settings import Settings

log = logging.getLogger("budget_worker.consumer")

COMMIT_INTERVAL_S = 0.5
SLOT_WAIT_S = 0.5


class JobConsumer:
    """Consumes ``BW_JOBS_TOPIC`` in the group ``BW_GROUP_ID`` and runs every record."""

    def __init__(self, settings: Settings, runner: JobRunner, metrics: Metrics) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.started = False
        self._consumer = AIOKafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=max(settings.max_job_bytes * 2, 1_048_576),
            fetch_max_bytes=max(settings.max_job_bytes * 4, 52_428_800),
            **kafka_options(settings),
        )
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
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
                    timeout_ms=200 if ready else 100, max_records=max(self.runner.slots.free, 1)
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
    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in self._tasks.values())

    # --- fetching -------------------------------------------------------------------

    async def _wait_until_ready(self) -> bool:
        """True when a slot is free and Redis is up; otherwise pause the partitions.

        A slot that frees within ``SLOT_WAIT_S`` is waited for without pausing: with
        short calls slots free all the time, and each pause drops the client's
        prefetched records (a fresh fetch on resume). Unpaused, the client buffers at
        most one fetch per partition, so waiting briefly is bounded too.
        """
        if self.runner.slots.free <= 0 and self.runner.ledger_ok.is_set():
            await self.runner.slots.wait_free(SLOT_WAIT_S)
        ready = self.runner.slots.free > 0 and self.runner.ledger_ok.is_set()
        if ready == self._paused:
            partitions = self._consumer.assignment()
            if ready:
                self._consumer.resume(*partitions)
            else:
                self._consumer.pause(*partitions)
            self._paused = not ready
        return ready

    def _start(self, partition: TopicPartition, record: Record) -> None:
        self.runner.slots.take()
        self._tracker.start(partition, record.offset)
        task = asyncio.create_task(self._run_one(partition, record))
        self._tasks.setdefault(partition, set()).add(task)
        self.metrics.in_flight.set(self.runner.slots.in_use)

    async def _run_one(self, partition: TopicPartition, record: Record) -> None:
        try:
            await self.runner.run(record)
            self._tracker.finish(partition, record.offset)
        finally:
            self.runner.slots.give()
            tasks, task = self._tasks.get(partition), asyncio.current_task()
            if tasks is not None and task is not None:
                tasks.discard(task)
            self.metrics.in_flight.set(self.runner.slots.in_use)

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
        running = set().union(*self._tasks.values())
        if running:
            log.info("draining in-flight jobs", extra={"running": len(running)})
            _, pending = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self._commit()
        await self._consumer.stop()


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
