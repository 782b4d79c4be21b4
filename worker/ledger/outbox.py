"""The outbox of threshold events: decided inside settle, published by the worker.

A settle that brings a scope's spend to one of its thresholds appends an event record
to its slot's outbox (``bw:{tag}:outbox``, a stream), in the same atomic step as the
charge (common.lua, ``cross_thresholds``). Kafka is not Redis, so the publish cannot be
part of that step: the worker publishes each record and only then deletes it, and a
record whose worker died in between is still there for the next one (at least once;
every copy of a record carries the same id).

Finding the outboxes: the index ``{bw:outbox}`` (a sorted set of slot tags, scored by
when each was last marked on the index's own clock) is written *before* each settle of
a slot, never after, so no outbox can hold a record without being indexed. Marking
before rather than after settle costs one command per settle (at most one per slot
every ``MARK_REFRESH_S`` per process); marking after would lose the slot whenever a
worker died between the two, and scanning every key instead costs what the whole
keyspace costs. A slot leaves the index when a sweeper found its outbox empty and its
mark is older than ``FORGET_AFTER_MS``, so a settle that marked a moment ago and has
not written yet keeps it listed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker import keys
from worker.ledger.connection import Connection
from worker.ledger.scopes import pairs, text

MARK_REFRESH_S = 30.0
"""How long a process trusts its own last mark of a slot before it marks it again."""
FORGET_AFTER_MS = 300_000
"""How old a slot's mark must be before a sweeper may drop it (far longer than a settle
takes after its mark, and than ``MARK_REFRESH_S``)."""
_MAX_MARKS = 100_000


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One decided threshold crossing, as the settle script wrote it (``fields``: id,
    scope, limit, period_id, period_end, threshold_pct, spent, reserved, cap, at, all
    text). ``entry_id`` is its place in the stream, for deleting it."""

    entry_id: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class IndexedSlot:
    """A slot the outbox index lists, with the mark time it was read with."""

    slot: keys.Slot
    marked_ms: int


class OutboxOps:
    """The outbox steps of :class:`worker.ledger.Ledger`."""

    conn: Connection
    _outbox_marks: dict[str, float]

    async def mark_outbox(self, slot: keys.Slot) -> None:
        """List ``slot`` in the outbox index (skipped when this process did so within
        ``MARK_REFRESH_S``: its mark cannot be forgotten before ``FORGET_AFTER_MS``)."""
        now = time.monotonic()
        last = self._outbox_marks.get(slot.tag)
        if last is not None and now - last < MARK_REFRESH_S:
            return
        await self.conn.run("outbox_mark", [keys.OUTBOX_INDEX], [slot.tag])
        if len(self._outbox_marks) >= _MAX_MARKS:
            self._outbox_marks.clear()
        self._outbox_marks[slot.tag] = now

    async def indexed_slots(self, count: int = 1000) -> list[IndexedSlot]:
        """Up to ``count`` slots whose outbox may hold records, oldest mark first."""
        reply = await self.conn.command(
            "ZRANGE", keys.OUTBOX_INDEX, "0", str(count - 1), "WITHSCORES"
        )
        return [
            IndexedSlot(keys.Slot(text(tag)), int(float(score))) for tag, score in _scored(reply)
        ]

    async def outbox(self, slot: keys.Slot, count: int = 100) -> list[OutboxRecord]:
        """The oldest ``count`` records of the slot's outbox, in the order decided."""
        reply = await self.conn.command("XRANGE", slot.outbox, "-", "+", "COUNT", str(count))
        records = []
        for entry_id, raw in reply or []:
            event = dict(pairs(raw)).get(b"event", b"{}")
            fields = {str(k): str(v) for k, v in json.loads(event).items()}
            records.append(OutboxRecord(text(entry_id), fields))
        return records

    async def delete_outbox(self, slot: keys.Slot, entry_ids: Sequence[str]) -> None:
        """Remove published records (idempotent: a record deleted twice is gone once)."""
        if entry_ids:
            await self.conn.command("XDEL", slot.outbox, *entry_ids)

    async def forget_outbox(self, indexed: IndexedSlot) -> bool:
        """Drop a slot found with an empty outbox from the index; False when it was
        marked since, or too lately (see ``outbox_forget.lua``)."""
        args = [indexed.slot.tag, str(indexed.marked_ms), str(FORGET_AFTER_MS)]
        return bool(await self.conn.run("outbox_forget", [keys.OUTBOX_INDEX], args))

    async def claim_sweep(self, holder: str, ttl_ms: int) -> bool:
        """Whether this process sweeps now: one sweeper at a time over all workers, for
        ``ttl_ms`` (a sweeper that died holds it no longer than that)."""
        answer = await self.conn.command("SET", keys.OUTBOX_SWEEP, holder, "NX", "PX", str(ttl_ms))
        return bool(answer)


def _scored(reply: Any) -> list[tuple[Any, Any]]:
    """ZRANGE WITHSCORES as (member, score) pairs, whichever shape the client answers."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, score) for member, score in reply]
    return [(reply[i], reply[i + 1]) for i in range(0, len(reply or []), 2)]
