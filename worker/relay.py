"""Threshold events from the ledger's outboxes to the budget events topic.

The ledger decides each crossing inside its settle script and leaves the event in the
slot's outbox (``worker/ledger/outbox.py``); this module publishes it, waits for the
broker's acknowledgement and only then deletes it, so a worker killed at any point
loses nothing: what it had not deleted is published again, by itself after a settle of
the same slot or by whichever worker sweeps next. Copies share the event's id, which
consumers de-duplicate on.

Two triggers: :meth:`OutboxRelay.kick` right after a settle that crossed a threshold
(the event goes out within one round trip of the charge), and the sweep every
``BW_OUTBOX_SWEEP_S`` (one worker at a time, by a short claim in Redis) over every slot
the outbox index lists, for outboxes nobody drained: their worker died, or the settle
ran outside any worker (``worker.compat``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from schemas.budget_events import BudgetThresholdCrossed, encode_budget_event
from worker import keys, ledger
from worker.errors import LedgerUnavailable
from worker.ledger.outbox import OutboxRecord
from worker.metrics import Metrics
from worker.publisher import Publisher
from worker.timestamps import EPOCH

log = logging.getLogger("budget_worker.relay")

BATCH = 100


def threshold_event(record: OutboxRecord) -> BudgetThresholdCrossed:
    """The contract's event for one outbox record (integers stay integers)."""
    f = record.fields
    end_ms = int(f.get("period_end", "-1"))
    return BudgetThresholdCrossed(
        event_id=f["id"],
        scope=f["scope"],
        period_id=f["period_id"],
        period_end=None if end_ms < 0 else EPOCH + timedelta(milliseconds=end_ms),
        threshold_pct=int(f["threshold_pct"]),
        spent_nanousd=int(f["spent"]),
        reserved_nanousd=max(0, int(f["reserved"])),
        cap_nanousd=int(f["cap"]),
        occurred_at=EPOCH + timedelta(milliseconds=int(f["at"])),
    )


class OutboxRelay:
    """Publishes what the outboxes hold; one per worker process."""

    def __init__(
        self,
        ledger_: ledger.Ledger,
        publisher: Publisher,
        topic: str,
        metrics: Metrics,
        *,
        sweep_s: float,
    ) -> None:
        self.ledger = ledger_
        self.publisher = publisher
        self.topic = topic
        self.metrics = metrics
        self.sweep_s = sweep_s
        self._holder = uuid.uuid4().hex
        self._draining: dict[str, asyncio.Task[bool]] = {}
        self._kicks: set[asyncio.Task[None]] = set()

    def kick(self, user_id: str) -> None:
        """Publish the user's slot's outbox soon (a settle there crossed a threshold)."""
        task = asyncio.get_running_loop().create_task(self._kick(user_id))
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def _kick(self, user_id: str) -> None:
        try:
            await self.drain(await self.ledger.slot_of(user_id))
        except Exception as exc:  # the sweep publishes it later
            log.warning("threshold events not published yet", extra={"error": repr(exc)})

    async def drain(self, slot: keys.Slot) -> bool:
        """Publish and delete every record of the slot's outbox; True when it was found
        empty at the end. One drain per slot at a time in this process."""
        running = self._draining.get(slot.tag)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.get_running_loop().create_task(self._drain(slot))
        self._draining[slot.tag] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._draining.pop(slot.tag, None)

    async def _drain(self, slot: keys.Slot) -> bool:
        while True:
            records = await self.ledger.outbox(slot, BATCH)
            if not records:
                return True
            for record in records:
                event = threshold_event(record)
                # Acknowledged before deleted: a crash in between publishes it again.
                await self.publisher.publish(
                    self.topic, event.scope.encode(), encode_budget_event(event)
                )
                self.metrics.budget_events.inc()
            await self.ledger.delete_outbox(slot, [r.entry_id for r in records])

    async def sweep(self) -> None:
        """Drain every indexed outbox, unless another worker sweeps now; forget the
        slots found empty long enough."""
        claim_ms = max(1, int(self.sweep_s * 1000) - 100)
        if not await self.ledger.claim_sweep(self._holder, claim_ms):
            return
        listed = await self.ledger.indexed_slots()
        self.metrics.outbox_backlog.set(len(listed))
        for indexed in listed:
            try:
                if await self.drain(indexed.slot):
                    await self.ledger.forget_outbox(indexed)
            except LedgerUnavailable:
                raise
            except Exception as exc:  # one slot's trouble must not starve the others
                log.warning(
                    "outbox not published",
                    extra={"slot": indexed.slot.tag, "error": repr(exc)},
                )

    async def stop(self) -> None:
        """Wait briefly for kicked drains (what they leave, a sweep publishes later)."""
        pending = [*self._kicks, *self._draining.values()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    async def run(self) -> None:
        """Sweep at start and every ``sweep_s`` until cancelled."""
        while True:
            try:
                await self.sweep()
            except LedgerUnavailable:
                pass  # the gate reports Redis; the next sweep tries again
            except Exception as exc:  # a broker error: the records stay for the next sweep
                log.warning("outbox sweep failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.sweep_s)
