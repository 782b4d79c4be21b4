"""Spend thresholds, decided inside settle, against the real Redis and Redis Cluster:
each (scope, period, threshold) is decided by exactly one settle, however many race,
and its event waits in the slot's outbox until deleted; repeats decide nothing, a new
period decides again, and the slot is indexed before any record can exist."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support import Clock, ledger_on
from worker import keys
from worker.errors import LedgerUnavailable
from worker.ledger import Budget, Ledger, Reserved, Scope
from worker.ledger.outbox import OutboxRecord

DAY_MS = 86_400_000
T0 = 1_900_000_000_000 // DAY_MS * DAY_MS + DAY_MS // 2  # a fixed clock: 2030-03-17, noon
DAY, NEXT_DAY, MONTH = "2030-03-17", "2030-03-18", "2030-03"
LIMIT = 100_000


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(params=["redis", "cluster"])
async def ledger(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Ledger]:
    async with ledger_on(request, clock) as book:
        yield book


@pytest.fixture
def ids() -> str:
    return uuid.uuid4().hex[:8]


async def spend(ledger: Ledger, user: str, job: str, cost: int, holder: str = "w1") -> int:
    """Reserve and settle one job at ``cost``; the thresholds its settle crossed."""
    reserved = await ledger.reserve(
        user, job, cost_nanousd=cost, tokens=0, lease_ms=60_000, holder=holder, model="m"
    )
    assert isinstance(reserved, Reserved)
    settled = await ledger.settle(
        user, job, holder=holder, cost_nanousd=cost, tokens=0, model="m", outcome=b"ok"
    )
    return settled.thresholds_crossed


async def records(ledger: Ledger, user: str) -> list[OutboxRecord]:
    return await ledger.outbox(await ledger.slot_of(user))


def crossed(found: list[OutboxRecord]) -> list[tuple[str, str, str]]:
    return [(r.fields["scope"], r.fields["period_id"], r.fields["threshold_pct"]) for r in found]


async def test_racing_settles_decide_each_threshold_exactly_once(ledger: Ledger, ids: str) -> None:
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(LIMIT, "daily"))
    jobs = 40  # 40 x 2,500 = the whole limit: every default threshold is crossed
    decided = await asyncio.gather(*(spend(ledger, user, f"{ids}-{n}", 2_500) for n in range(jobs)))
    found = await records(ledger, user)
    assert sum(decided) == 4
    assert crossed(found) == [(f"user:{user}", DAY, pct) for pct in ("50", "80", "95", "100")]
    assert len({r.fields["id"] for r in found}) == 4
    first = found[1].fields
    assert first["limit"] == "usd" and first["cap"] == str(LIMIT)
    assert int(first["spent"]) >= 80_000 and first["at"] == str(T0)


async def test_a_repeated_settle_decides_nothing(ledger: Ledger, ids: str) -> None:
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(LIMIT, "daily"))
    assert await spend(ledger, user, f"{ids}-a", 85_000) == 2  # 50 and 80
    again = await ledger.settle(
        user, f"{ids}-a", holder="w1", cost_nanousd=85_000, tokens=0, model="m", outcome=b"ok"
    )
    assert not again.first and again.thresholds_crossed == 0
    assert await spend(ledger, user, f"{ids}-b", 1_000) == 0  # 86%: nothing new
    assert len(await records(ledger, user)) == 2


async def test_a_new_period_decides_again_with_new_ids(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(LIMIT, "daily"))
    await spend(ledger, user, f"{ids}-a", 50_000)
    clock.now_ms += DAY_MS
    await spend(ledger, user, f"{ids}-b", 50_000)
    found = await records(ledger, user)
    assert crossed(found) == [
        (f"user:{user}", DAY, "50"),
        (f"user:{user}", NEXT_DAY, "50"),
    ]
    assert found[0].fields["id"] != found[1].fields["id"]


async def test_a_reset_keeps_each_crossing_once_per_period(ledger: Ledger, ids: str) -> None:
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(LIMIT, "daily"))
    await spend(ledger, user, f"{ids}-a", 60_000)
    await ledger.reset(user)
    assert await spend(ledger, user, f"{ids}-b", 60_000) == 0


async def test_each_scope_has_its_own_thresholds(ledger: Ledger, ids: str) -> None:
    team, user, quiet = f"{ids}-t", f"{ids}-u", f"{ids}-q"
    await ledger.create_team(team, f"{ids}-o")
    await ledger.set_budget(Scope("team", team), Budget(10 * LIMIT, "monthly", thresholds=(10,)))
    await ledger.set_membership(user, team=team)
    await ledger.set_membership(quiet, team=team)
    await ledger.set_budget(user, Budget(LIMIT, "daily", thresholds=(25, 75)))
    await ledger.set_budget(quiet, Budget(LIMIT, "daily", thresholds=()))
    assert (await ledger.get_budget(user)) == Budget(LIMIT, "daily", thresholds=(25, 75))
    assert (await ledger.get_budget(quiet)) == Budget(LIMIT, "daily", thresholds=())
    assert await spend(ledger, user, f"{ids}-a", 80_000) == 2
    assert await spend(ledger, quiet, f"{ids}-b", 30_000) == 1  # the team's 10%
    assert crossed(await records(ledger, user)) == [
        (f"user:{user}", DAY, "25"),
        (f"user:{user}", DAY, "75"),
        (f"team:{team}", MONTH, "10"),
    ]


async def test_the_slot_is_indexed_before_its_first_record(ledger: Ledger, ids: str) -> None:
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(LIMIT, "daily"))
    await spend(ledger, user, f"{ids}-a", LIMIT)
    slot = await ledger.slot_of(user)
    listed = [i for i in await ledger.indexed_slots(100_000) if i.slot == slot]
    assert len(listed) == 1
    # Its mark is recent: a settle may still be writing, so the slot stays listed.
    assert not await ledger.forget_outbox(listed[0])
    found = await ledger.outbox(slot)
    await ledger.delete_outbox(slot, [r.entry_id for r in found])
    await ledger.delete_outbox(slot, [r.entry_id for r in found])
    assert await ledger.outbox(slot) == []
    assert slot.outbox == keys.own_slot(user).outbox


async def test_a_settle_does_not_wait_on_the_outbox_index(
    ledger: Ledger, ids: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index may live on another Cluster node: when it cannot be reached, the charge
    still lands and its crossing is still in the outbox (this process drains it)."""

    async def unreachable(slot: keys.Slot) -> None:
        raise LedgerUnavailable("the index's node is down")

    monkeypatch.setattr(ledger, "mark_outbox", unreachable)
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(LIMIT, "daily"))
    assert await spend(ledger, user, f"{ids}-j", LIMIT // 2) == 1
    state = await ledger.state(user)
    assert state is not None and state.snapshot.spent_nanousd == LIMIT // 2
    assert crossed(await records(ledger, user)) == [(f"user:{user}", DAY, "50")]
