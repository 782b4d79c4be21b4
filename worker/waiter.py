""":class:`ResultWaiter`: a job's terminal event read back from a results topic.

A Kafka boundary, as ``worker.client`` is (whose ``SyncJobClient`` runs a waiter): a
broker that cannot be reached is ``KafkaUnavailable``, naming the bootstrap.

**Where a waiter starts reading.** A waiter is *assigned* every partition of the
results topic; it is not a consumer group member. Each waiter therefore sees every
event (one service instance never steals another's), nothing is committed, and no
rebalance ever pauses it. By default it starts at the end of each partition, and
:meth:`ResultWaiter.start` returns only once those positions are fixed, so an event
published after ``start()`` returned is never missed: start the waiter, then submit.
A waiter started after its events were published (a restarted service) needs
``start_at="beginning"``, which re-reads the whole topic (as far as the broker's
retention keeps it). Every instance reads the whole topic; when that is too much,
give each instance its own topic with the job's ``reply_to`` (the worker honours
names matching ``BW_REPLY_TO_PATTERN``, ``llm.results.<suffix>`` by default) and wait
on that topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.events import TerminalEvent, parse_event
from worker.connections import describe, kafka_options, unreachable
from worker.errors import ConfigError
from worker.settings import Settings

__all__ = ["ResultWaiter", "StartAt", "WaiterStats"]

log = logging.getLogger("budget_worker.client")  # the client's, as it always was
StartAt = Literal["end", "beginning"]


@dataclass(slots=True)
class WaiterStats:
    """What a waiter has read. ``duplicates``: events for a job id already seen (dropped);
    ``skipped``: records that are not events this code can read (a newer ``type``, bad
    JSON), logged and dropped."""

    events: int = 0
    duplicates: int = 0
    skipped: int = 0


class ResultWaiter:
    """Reads one results topic and hands each job's first event to whoever waits for it.

    Events that arrive before anyone waits are kept (the last ``remember`` job ids), so
    ``wait`` may be called after the event came; waiting again for a job returns the
    same first event. See the module docstring for where reading starts.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        start_at: StartAt = "end",
        remember: int = 10_000,
        **consumer_options: Any,
    ) -> None:
        if remember < 1:
            raise ValueError("remember must be >= 1")
        self.settings = settings
        self.topic = topic or settings.results_topic
        self.start_at = start_at
        self.stats = WaiterStats()
        self._remember = remember
        self._first: OrderedDict[str, TerminalEvent] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        options = kafka_options(settings)
        options.update(
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        options.update(consumer_options)
        self._options = options
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def duplicates(self) -> int:
        return self.stats.duplicates

    async def start(self) -> None:
        """Assign every partition and fix the start positions; returns once an event
        published from now on is sure to be read. Raises :class:`KafkaUnavailable`
        naming the bootstrap when the broker cannot be reached, ``ConfigError`` when the
        topic does not exist; the consumer is closed either way."""
        consumer = AIOKafkaConsumer(**self._options)
        try:
            try:
                await self._assign(consumer)
            except KafkaError as exc:
                raise unreachable(self.settings, exc) from exc
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(consumer), name=f"waiter:{self.topic}")

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        await consumer.start()
        await consumer.topics()  # fetches metadata for every topic
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            how = (
                "create it with `budget-worker topics create`"
                if self.topic == self.settings.results_topic
                else "create it first (a reply_to topic is the producing service's own)"
            )
            raise ConfigError(
                f"the results topic {self.topic!r} does not exist on "
                f"{describe(self.settings)}: {how}"
            )
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if self.start_at == "beginning":
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        for tp in assigned:
            # Resolves the seek now; a lazy seek would start wherever the end is
            # at the first fetch, after events that were already published.
            await consumer.position(tp)

    async def stop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_pending(RuntimeError("the ResultWaiter was stopped"))
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> ResultWaiter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait(self, job_id: str, timeout_s: float) -> TerminalEvent:
        """The job's first terminal event; ``TimeoutError`` if none comes in time.
        Several callers may wait for the same job; each has its own timeout."""
        event = self._first.get(job_id)
        if event is not None:
            return event
        if self._failure is not None:
            raise RuntimeError("the ResultWaiter stopped reading") from self._failure
        if self._reader is None:
            raise RuntimeError("the ResultWaiter is not running (start() it first)")
        pending = self._pending.get(job_id)
        if pending is None:
            pending = self._pending[job_id] = _Pending(asyncio.get_running_loop().create_future())
        pending.waiters += 1
        try:
            async with asyncio.timeout(timeout_s):
                # Shielded: one caller's timeout must not cancel another's wait.
                return await asyncio.shield(pending.future)
        except TimeoutError:
            raise TimeoutError(f"no event for job {job_id!r} within {timeout_s} s") from None
        finally:
            pending.waiters -= 1
            if pending.waiters == 0 and self._pending.get(job_id) is pending:
                del self._pending[job_id]
                pending.future.cancel()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        self._accept(record.value)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # aiokafka retries broker errors itself; anything reaching here is fatal.
            log.exception("result waiter stopped reading", extra={"topic": self.topic})
            self._failure = exc
            self._fail_pending(exc)

    def _accept(self, value: bytes | None) -> None:
        try:
            event = parse_event(value or b"")
        except ValueError as exc:  # UnknownEventType, pydantic's ValidationError
            self.stats.skipped += 1
            log.warning(
                "skipped a record that is not a known event",
                extra={"topic": self.topic, "error": str(exc)[:200]},
            )
            return
        if event.job_id in self._first:
            self.stats.duplicates += 1
            return
        self.stats.events += 1
        self._first[event.job_id] = event
        if len(self._first) > self._remember:
            self._first.popitem(last=False)
        pending = self._pending.pop(event.job_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(event)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(exc)
                # Marked retrieved, so a future whose waiters all gave up does not log.
                entry.future.exception()


@dataclass(slots=True)
class _Pending:
    """The future of one job id and how many ``wait`` calls are on it."""

    future: asyncio.Future[TerminalEvent]
    waiters: int = 0
