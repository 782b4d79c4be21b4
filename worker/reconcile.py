"""Reconcile the ledger with the events: the charged events on the results topic are the
better record after a Redis failover lost acknowledged writes (replication is
asynchronous), so compare, per scope, what the events charged in the current period
with what the ledger holds as spent, and optionally write the difference back.

Events are read from offset 0 of every partition until none arrived for ``idle_s``
(a rescan, not a tail: end offsets are not trusted on every broker). Each distinct
``event_id`` counts once: a republished copy repeats its id, while a job that ran twice
(its charge marker lost with the data) has two ids and was charged twice by the
provider. An event belongs to a user's current period when its ``budget.period_end``
is that period's end; an event whose snapshot has no period end (a run's job, a
lifetime budget) belongs to it when it occurred within the period.

Corrections (``--fix``) are per user, for the current period, and idempotent by an id
made of the period and the two totals compared, so a rerun writes nothing new:

- the ledger holds **less** than the events (lost writes): a correction is charged
  like a call, ``settle`` of the job ``reconcile:<id>`` with the missing amount, to the
  user and every scope above it (drawing credits as a call would);
- the ledger holds **more** (a charge the events do not show): the excess is credited
  back as an adjustment entry ``reconcile:<id>`` (``budget history`` shows it).

Teams and organisations are reported by their members' events (current membership);
they are corrected through their members.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker import ledger
from worker.connections import kafka_options
from worker.settings import Settings
from worker.timestamps import epoch_ms

CORRECTION_HOLDER = "reconcile"


@dataclass(frozen=True, slots=True)
class Charge:
    """One charged event: who, how much, and which period its snapshot names."""

    event_id: str
    job_id: str
    user_id: str
    cost_nanousd: int
    occurred_ms: int
    period_end_ms: int | None


@dataclass(frozen=True, slots=True)
class Drift:
    """A scope's current period: what its events charged and what the ledger holds."""

    scope: ledger.Scope
    period_id: str
    events_nanousd: int
    ledger_nanousd: int
    events: int

    @property
    def drift_nanousd(self) -> int:
        """Ledger minus events: negative when the ledger lost charges."""
        return self.ledger_nanousd - self.events_nanousd

    def correction_id(self) -> str:
        """Stable for the same comparison, so a rerun of ``--fix`` is a retry."""
        text = f"{self.scope}|{self.period_id}|{self.events_nanousd}|{self.ledger_nanousd}"
        return "reconcile:" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def charge_of(value: bytes) -> Charge | None:
    """The charge an event on the results topic records, or None (a rejection, a
    charge of nothing, or a record that is not an event)."""
    try:
        event = json.loads(value)
        cost = int(event.get("cost_nanousd") or 0)
        if event.get("type") not in ("completion.succeeded", "completion.failed") or cost <= 0:
            return None
        budget = event.get("budget") or {}
        end = budget.get("period_end")
        return Charge(
            event_id=str(event["event_id"]),
            job_id=str(event["job_id"]),
            user_id=str(event["user_id"]),
            cost_nanousd=cost,
            occurred_ms=epoch_ms(datetime.fromisoformat(event["occurred_at"])),
            period_end_ms=epoch_ms(datetime.fromisoformat(end)) if end else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def read_charges(settings: Settings, topics: Sequence[str], idle_s: float) -> list[Charge]:
    """Every charged event of ``topics``, one per ``event_id``."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
        if not assigned:
            return []
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        found: dict[str, Charge] = {}
        idle_until = time.monotonic() + idle_s
        while time.monotonic() < idle_until:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                idle_until = time.monotonic() + idle_s
                for record in records:
                    charge = charge_of(record.value) if record.value else None
                    if charge is not None:
                        found.setdefault(charge.event_id, charge)
        return list(found.values())
    finally:
        await consumer.stop()


def period_start_ms(budget: ledger.Budget, period_end_ms: int) -> int:
    """Where the period that ends at ``period_end_ms`` began."""
    end = datetime.fromtimestamp(period_end_ms / 1000, UTC)
    if budget.period == "daily":
        start = end - timedelta(days=1)
    elif budget.period == "weekly":
        start = end - timedelta(days=7)
    elif budget.period == "monthly":
        last = end - timedelta(days=1)
        start = last.replace(day=1)
    elif budget.period == "yearly":
        start = end.replace(year=end.year - 1)
    else:  # rolling
        start = end - timedelta(seconds=budget.window_s or 0)
    return epoch_ms(start)


def in_period(charge: Charge, state: ledger.BudgetState) -> bool:
    end = state.snapshot.period_end_ms
    if end is None:
        return True  # a lifetime budget: every charge is in its one period
    if charge.period_end_ms is not None:
        return charge.period_end_ms == end
    return period_start_ms(state.budget, end) <= charge.occurred_ms < end


async def compare(
    book: ledger.Ledger, charges: Iterable[Charge], users: Sequence[str] = ()
) -> list[Drift]:
    """Per user (every user with a budget or a charge, or ``users``), then per team and
    organisation of those users: the current period's events against the ledger."""
    by_user: dict[str, list[Charge]] = {}
    for charge in charges:
        by_user.setdefault(charge.user_id, []).append(charge)
    names = sorted(users) if users else sorted(set(by_user) | set(await book.list_users()))
    found: list[Drift] = []
    groups: dict[ledger.Scope, int] = {}
    for user in names:
        state = await book.state(user)
        if state is None:
            continue
        mine = [c for c in by_user.get(user, []) if in_period(c, state)]
        total = sum(c.cost_nanousd for c in mine)
        scope = ledger.Scope("user", user)
        found.append(Drift(scope, state.period_id, total, state.snapshot.spent_nanousd, len(mine)))
        for kind, name in (("team", state.team), ("org", state.org)):
            if name is not None:
                group = ledger.Scope(kind, name)  # type: ignore[arg-type]  # team or org
                groups[group] = groups.get(group, 0) + total
    for group, total in sorted(groups.items(), key=lambda item: str(item[0])):
        state = await book.state(group)
        if state is not None:
            found.append(Drift(group, state.period_id, total, state.snapshot.spent_nanousd, 0))
    return found


async def correct(book: ledger.Ledger, drift: Drift) -> str | None:
    """Write one user's correction (see the module docstring); what was done, or None
    when there is nothing to correct (no drift, or not a user)."""
    amount = drift.drift_nanousd
    if amount == 0 or drift.scope.kind != "user":
        return None
    correction = drift.correction_id()
    if amount < 0:
        settled = await book.settle(
            drift.scope.id,
            correction,
            holder=CORRECTION_HOLDER,
            cost_nanousd=-amount,
            tokens=0,
            model="",
            outcome=json.dumps({"type": "reconcile", "id": correction}).encode(),
        )
        already = "" if settled.first else " (written before)"
        return f"charged {settled.charged_nanousd} as {correction}{already}"
    note = f"reconcile {drift.period_id}: the ledger held {amount} nano-USD the events do not show"
    adjusted = await book.adjust(drift.scope, correction, amount, note)
    already = "" if adjusted.created else " (written before)"
    return f"credited {adjusted.applied_nanousd} as {correction}{already}"


def report_json(drifts: Sequence[Drift], fixes: dict[str, str | None]) -> list[dict[str, Any]]:
    return [
        {
            "scope": str(d.scope),
            "period_id": d.period_id,
            "events_nanousd": d.events_nanousd,
            "ledger_nanousd": d.ledger_nanousd,
            "drift_nanousd": d.drift_nanousd,
            "events": d.events,
            "correction": fixes.get(str(d.scope)),
        }
        for d in drifts
    ]
