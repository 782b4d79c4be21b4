"""Rollover against the real Redis and Cluster: a period's unused allowance carries into
the next one, up to the scope's cap, fixed when the new period is first touched, shown
apart from the fresh limit, and spent before credits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support import Clock, ledger_on
from worker.ledger import Budget, Grant, Ledger, Refused, Reserved

DAY = 86_400_000
T0 = 1_900_000_000_000 // DAY * DAY + 12 * 3_600_000  # mid-day, 2030-03-17


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(params=["redis", "cluster"])
async def ledger(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Ledger]:
    async with ledger_on(request, clock) as book:
        yield book


@pytest.fixture
def user() -> str:
    return "roll-" + uuid.uuid4().hex[:8]


async def spend(ledger: Ledger, user: str, job: str, cost: int) -> None:
    reply = await ledger.reserve(
        user, job, cost_nanousd=cost, tokens=0, lease_ms=60_000, holder="w"
    )
    assert isinstance(reply, Reserved), reply
    await ledger.settle(user, job, holder="w", cost_nanousd=cost, tokens=0, model="m", outcome=b"")


async def test_unused_allowance_carries_up_to_the_cap(
    ledger: Ledger, user: str, clock: Clock
) -> None:
    await ledger.set_budget(user, Budget(1000, "daily", rollover_cap_nanousd=300))
    clock.now_ms += DAY  # the first whole day with rollover: nothing carries into it
    state = await ledger.state(user)
    assert state is not None and state.carried_nanousd == 0
    await spend(ledger, user, "d1", 900)  # 100 unused
    clock.now_ms += DAY
    state = await ledger.state(user)
    assert state is not None
    assert (state.carried_nanousd, state.budget.limit_nanousd) == (100, 1000)
    assert state.snapshot.remaining_nanousd == 1100
    await spend(ledger, user, "d2", 1100)  # limit and carry, all of it
    refused = await ledger.reserve(
        user, "d2b", cost_nanousd=1, tokens=0, lease_ms=60_000, holder="w"
    )
    assert isinstance(refused, Refused)
    clock.now_ms += DAY  # nothing left over yesterday: nothing carries
    state = await ledger.state(user)
    assert state is not None and state.carried_nanousd == 0
    clock.now_ms += DAY  # a day with no spend at all: its whole limit, capped at 300
    clock.now_ms += DAY
    state = await ledger.state(user)
    assert state is not None and state.carried_nanousd == 300


async def test_a_carry_is_fixed_once_the_period_is_touched(
    ledger: Ledger, user: str, clock: Clock
) -> None:
    await ledger.set_budget(user, Budget(1000, "daily", rollover_cap_nanousd=5000))
    clock.now_ms += DAY
    await spend(ledger, user, "a", 400)
    clock.now_ms += DAY
    await spend(ledger, user, "b", 100)
    state = await ledger.state(user)
    assert state is not None and state.carried_nanousd == 600
    # Changing the limit now does not recompute what this period carried in.
    await ledger.set_budget(user, Budget(2000, "daily", rollover_cap_nanousd=5000))
    state = await ledger.state(user)
    assert state is not None and state.carried_nanousd == 600
    assert state.snapshot.remaining_nanousd == 2000 + 600 - 100


async def test_carry_is_spent_before_credits(ledger: Ledger, user: str, clock: Clock) -> None:
    await ledger.set_budget(user, Budget(1000, "daily", rollover_cap_nanousd=500))
    await ledger.grant(user, Grant(id="g1", amount_nanousd=1000))
    clock.now_ms += DAY
    await spend(ledger, user, "a", 800)
    clock.now_ms += DAY  # carried 200
    await spend(ledger, user, "b", 1100)  # 1000 limit + 100 of the carry: no credit drawn
    state = await ledger.state(user)
    assert state is not None
    assert (state.carried_nanousd, state.drawn_nanousd, state.credits_nanousd) == (200, 0, 1000)
    await spend(ledger, user, "c", 300)  # 100 of carry left, then 200 from the grant
    state = await ledger.state(user)
    assert state is not None
    assert (state.drawn_nanousd, state.credits_nanousd) == (200, 800)


async def test_without_rollover_nothing_carries(ledger: Ledger, user: str, clock: Clock) -> None:
    await ledger.set_budget(user, Budget(1000, "daily"))
    clock.now_ms += 2 * DAY
    state = await ledger.state(user)
    assert state is not None and state.carried_nanousd == 0
    assert state.snapshot.remaining_nanousd == 1000
    assert state.budget.rollover_cap_nanousd is None


def test_rollover_needs_a_limit_and_a_period() -> None:
    with pytest.raises(ValueError, match="rollover needs"):
        Budget(None, "daily", rollover_cap_nanousd=5)
    with pytest.raises(ValueError, match="rollover needs"):
        Budget(5, "none", rollover_cap_nanousd=5)
