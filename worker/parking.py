"""Jobs that wait for budget (``on_budget_exceeded: wait``): parked, then resumed.

- **Parking** (:meth:`Parker.park`): a job the budget cannot hold now is written to
  the park in Redis (``worker.ledger.park``; one atomic step, idempotent by job), and
  then its record counts as done: its offset is committed and its in-flight slot is
  free. Nothing is reserved and no event is published while it waits.
- **Resuming** (:meth:`Parker.run`, in every worker): due jobs are claimed under a
  lease (renewed while they run, lapsing when their worker dies), taken through the
  same job path as a consumed record, within the same in-flight cap, and their event
  published; only then does the job leave the park. A job still refused goes back
  with its next check: when its limit resets, or sooner (1 s, doubling up to
  ``BW_PARK_POLL_MAX_S``) so that a grant or freed reservations are noticed. A job
  whose wait runs out is answered ``completion.rejected`` ``budget_exceeded`` with
  ``resets_at``.

A job handed out twice (a lapsed claim, a redelivered record) is harmless: the
ledger charges it at most once and answers its first outcome (``worker.job``).
Why a park in Redis and not a deferred topic: ``docs/design.md``, "Parked jobs".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING

from schemas.events import CompletionRejected, encode_event
from schemas.jobs import JobError, parse_job
from worker.errors import LedgerUnavailable
from worker.gate import LedgerGate
from worker.job import Parked, Wait
from worker.ledger import ParkedJob, ParkList
from worker.metrics import Metrics
from worker.settings import Settings
from worker.spend import quietly

if TYPE_CHECKING:
    from worker.consumer import JobConsumer

log = logging.getLogger("budget_worker.parking")

CLAIM_LEASE_MS = 30_000
"""How long a claim outlives its worker; renewed every third of it while the job runs."""
CLAIM_BATCH = 16
"""Due jobs claimed at once at most (and never more than free in-flight slots)."""
LOOK_S = 0.25
"""How often the park is looked at for due jobs (one ZRANGEBYSCORE when none is)."""
FIRST_POLL_MS = 1_000
RESET_MARGIN_MS = 50
"""A job waiting for a reset is checked this long after it, not on the edge."""


def next_check(
    retry_after_s: float | None, poll_ms: int, until_ms: int, now_ms: int, poll_max_ms: int
) -> tuple[int, int]:
    """When to check a refused job again (ms from now), and the poll after that: the
    poll (doubling up to ``poll_max_ms``), its limit's reset if sooner, and never past
    the end of its wait (where it is checked one last time)."""
    delay_ms = min(poll_ms, poll_max_ms)
    if retry_after_s is not None:
        delay_ms = min(delay_ms, math.ceil(retry_after_s * 1000) + RESET_MARGIN_MS)
    delay_ms = max(0, min(delay_ms, until_ms - now_ms))
    return delay_ms, min(poll_ms * 2, poll_max_ms)


class Parker:
    """Writes waiting jobs into the park and runs them when they are due."""

    def __init__(
        self, settings: Settings, park: ParkList, gate: LedgerGate, metrics: Metrics
    ) -> None:
        self.park_list = park
        self.gate = gate
        self.metrics = metrics
        self.poll_max_ms = int(settings.park_poll_max_s * 1000)
        self.grace_s = settings.shutdown_grace_s
        self.token = f"{settings.worker_id}:{uuid.uuid4().hex[:12]}"
        self._held: dict[str, asyncio.Task[None]] = {}

    async def park(self, raw: bytes, parked: Parked) -> None:
        """Park a freshly consumed job; once this returns its record may be committed."""
        job, until_ms = parked.job, parked.until_ms
        delay_ms, poll_ms = next_check(
            parked.retry_after_s, FIRST_POLL_MS, until_ms, _now_ms(), self.poll_max_ms
        )
        refusal = encode_event(parked.refusal)
        new, _ = await self.gate.call(
            lambda: self.park_list.park(
                job.user_id,
                job.job_id,
                job=raw,
                delay_ms=delay_ms,
                until_ms=until_ms,
                refusal=refusal,
                poll_ms=poll_ms,
            )
        )
        if new:
            self.metrics.park_moves.labels("parked").inc()
        log.info("job parked", extra={"job_id": job.job_id, "check_in_ms": delay_ms, "new": new})

    # --- resuming ---------------------------------------------------------------------

    async def run(self, consumer: JobConsumer) -> None:
        """Resume due jobs until the consumer stops; then drain, as the consumer does."""
        renewed = time.monotonic()
        try:
            while not consumer.stopping:
                with contextlib.suppress(LedgerUnavailable):
                    if time.monotonic() - renewed > CLAIM_LEASE_MS / 3000:
                        renewed = time.monotonic()
                        await self._renew()
                    await self._look(consumer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(consumer.stopped(), LOOK_S)
        finally:
            await self._drain()

    async def _look(self, consumer: JobConsumer) -> None:
        self.metrics.parked.set(await self.park_list.count())
        free = min(consumer.slots.free, CLAIM_BATCH)
        if free <= 0 or not self.gate.is_open:
            return
        claimed = await self.park_list.claim(free, lease_ms=CLAIM_LEASE_MS, token=self.token)
        for entry in claimed:
            consumer.slots.take()
            task = asyncio.create_task(self._resume(consumer, entry))
            self._held[entry.member] = task
            task.add_done_callback(functools.partial(self._ended, consumer, entry.member))

    def _ended(self, consumer: JobConsumer, member: str, _: asyncio.Task[None]) -> None:
        self._held.pop(member, None)
        consumer.slots.give()

    async def _renew(self) -> None:
        await self.park_list.extend(list(self._held), token=self.token, lease_ms=CLAIM_LEASE_MS)

    async def _resume(self, consumer: JobConsumer, entry: ParkedJob) -> None:
        try:
            job = parse_job(entry.job, consumer.limits)
        except JobError as exc:
            # Parsed once before it was parked; only shrunk limits make it fail now.
            log.error("parked job no longer parses; dropped", extra={"error": str(exc)})
            await self.gate.call(lambda: self.park_list.done(entry.member, token=self.token))
            return
        try:
            wait = Wait(entry.until_ms, entry.refusal)
            answer = await consumer.jobs.run(job, idle=consumer.slots.lent, wait=wait)
        except asyncio.CancelledError:
            # Shut down mid-job: due again at once, for whichever worker is up.
            await quietly(
                self.park_list.again(
                    entry.member, token=self.token, delay_ms=0, refusal=b"", poll_ms=entry.poll_ms
                )
            )
            raise
        if isinstance(answer, Parked):
            await self._again(entry, answer)
            return
        await consumer.publish(answer, None)
        await self.gate.call(lambda: self.park_list.done(entry.member, token=self.token))
        event = answer.event
        expired = isinstance(event, CompletionRejected) and event.reason == "budget_exceeded"
        self.metrics.park_moves.labels("expired" if expired else "resumed").inc()
        self.metrics.park_wait_seconds.observe(max(0.0, (_now_ms() - entry.parked_ms) / 1000))

    async def _again(self, entry: ParkedJob, parked: Parked) -> None:
        delay_ms, poll_ms = next_check(
            parked.retry_after_s, entry.poll_ms, entry.until_ms, _now_ms(), self.poll_max_ms
        )
        refusal = encode_event(parked.refusal)
        await self.gate.call(
            lambda: self.park_list.again(
                entry.member,
                token=self.token,
                delay_ms=delay_ms,
                refusal=refusal,
                poll_ms=poll_ms,
            )
        )

    async def _drain(self) -> None:
        running = set(self._held.values())
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self.grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


def _now_ms() -> int:
    return int(time.time() * 1000)
