"""The ledger against a real Redis: reservations, settles, leases, periods, limits."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from importlib import resources

import pytest
import redis
import redis.asyncio as aioredis

from worker import keys
from worker.dev.servers import EmbeddedRedis
from worker.errors import LedgerError, LedgerUnavailable
from worker.ledger import (
    Budget,
    Busy,
    Finished,
    LeaseRef,
    Ledger,
    NoBudget,
    PeriodSnapshot,
    Refused,
    Reserved,
    ReserveResult,
    Settled,
)

USD = 1_000_000_000
DAY_MS = 86_400_000


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    ledger = Ledger.from_url(redis_url)
    try:
        yield ledger
    finally:
        await ledger.close()


async def reserve(
    ledger: Ledger,
    user: str,
    job: str,
    cost: int,
    *,
    tokens: int = 0,
    lease_ms: int = 60_000,
    holder: str = "w1",
) -> ReserveResult:
    return await ledger.reserve(
        user, job, cost_nanousd=cost, tokens=tokens, lease_ms=lease_ms, holder=holder
    )


async def settle(
    ledger: Ledger,
    user: str,
    job: str,
    cost: int,
    *,
    tokens: int = 0,
    outcome: bytes = b"ok",
    holder: str = "w1",
) -> Settled:
    return await ledger.settle(
        user, job, holder=holder, cost_nanousd=cost, tokens=tokens, model="gpt-x", outcome=outcome
    )


async def spent(ledger: Ledger, user: str) -> int:
    return (await snapshot(ledger, user)).spent_nanousd


async def snapshot(ledger: Ledger, user: str) -> PeriodSnapshot:
    state = await ledger.state(user)
    assert state is not None
    return state.snapshot


# -- reserve ------------------------------------------------------------------------


async def test_reserve_without_a_budget_answers_no_budget(ledger: Ledger) -> None:
    assert await reserve(ledger, "alice", "j1", 10) == NoBudget()


async def test_reserve_holds_the_cost_and_answers_the_new_snapshot(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily"))
    result = await reserve(ledger, "alice", "j1", 300, tokens=7)
    assert isinstance(result, Reserved)
    assert (result.job_id, result.cost_nanousd, result.tokens) == ("j1", 300, 7)
    assert (result.existing, result.holder) == (False, "w1")
    assert result.lease_deadline_ms > time.time() * 1000 + 50_000
    assert result.snapshot.reserved_nanousd == 300
    assert result.snapshot.remaining_nanousd == 700
    assert await snapshot(ledger, "alice") == result.snapshot


async def test_reserve_again_answers_the_existing_reservation_and_its_holder(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily"))
    first = await reserve(ledger, "alice", "j1", 300, holder="w1")
    again = await reserve(ledger, "alice", "j1", 500, holder="w2")
    assert isinstance(first, Reserved) and isinstance(again, Reserved)
    assert again.existing and again.holder == "w1"
    assert (again.cost_nanousd, again.lease_deadline_ms) == (300, first.lease_deadline_ms)
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 300


async def test_reserve_is_all_or_nothing_at_the_cap(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    assert isinstance(await reserve(ledger, "alice", "j1", 600), Reserved)
    assert isinstance(await reserve(ledger, "alice", "j2", 400), Reserved)
    assert isinstance(await reserve(ledger, "alice", "j3", 1), Refused)


async def test_a_refusal_names_the_usd_limit_what_remains_and_the_period_end(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily"))
    await reserve(ledger, "alice", "j1", 700)
    refused = await reserve(ledger, "alice", "j2", 400)
    assert isinstance(refused, Refused)
    assert (refused.limit, refused.remaining) == ("usd", 300)
    end = refused.snapshot.period_end_ms
    assert end is not None and end % DAY_MS == 0
    assert refused.retry_after_ms is not None
    assert abs(refused.retry_after_ms - (end - time.time() * 1000)) < 5_000


async def test_a_refusal_changes_nothing(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily", rpm=10, tpm=1000))
    await reserve(ledger, "alice", "j1", 700, tokens=10)
    before = await snapshot(ledger, "alice")
    assert isinstance(await reserve(ledger, "alice", "j2", 400, tokens=10), Refused)
    assert await snapshot(ledger, "alice") == before
    # The refused job holds nothing: it may be reserved once it fits.
    assert isinstance(await reserve(ledger, "alice", "j2", 300, tokens=10), Reserved)


async def test_a_cost_above_the_whole_limit_is_refused_with_no_retry_time(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily"))
    refused = await reserve(ledger, "alice", "j1", 1001)
    assert isinstance(refused, Refused)
    assert (refused.limit, refused.remaining, refused.retry_after_ms) == ("usd", 1000, None)


async def test_a_lifetime_budget_refuses_with_no_retry_time(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 900)
    refused = await reserve(ledger, "alice", "j2", 200)
    assert isinstance(refused, Refused)
    assert refused.retry_after_ms is None and refused.snapshot.period_end_ms is None


async def test_a_refusal_reports_the_limit_that_lifts_last(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily", rpm=1))
    await reserve(ledger, "alice", "j1", 900)
    refused = await reserve(ledger, "alice", "j2", 200)  # over both usd and rpm
    assert isinstance(refused, Refused) and refused.limit == "usd"


async def test_validation_rejects_bad_arguments_before_redis(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        await reserve(ledger, "", "j1", 1)
    with pytest.raises(ValueError):
        await reserve(ledger, "alice", "", 1)
    with pytest.raises(ValueError):
        await reserve(ledger, "alice", "j1", -1)
    with pytest.raises(ValueError):
        await reserve(ledger, "alice", "j1", 1, lease_ms=0)
    with pytest.raises(TypeError):
        await reserve(ledger, "alice", "j1", 1.5)  # type: ignore[arg-type]


def test_budget_rejects_a_window_on_a_calendar_period() -> None:
    with pytest.raises(ValueError):
        Budget(1, "daily", window_s=60)
    with pytest.raises(ValueError):
        Budget(1, "rolling")
    with pytest.raises(ValueError):
        Budget(-1)
    with pytest.raises(ValueError):
        Budget(1, rpm=0)


# -- leases ---------------------------------------------------------------------------


async def test_an_expired_lease_is_reclaimed_by_the_next_reserve_and_its_money_is_free(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    assert isinstance(await reserve(ledger, "alice", "dead", 1000, lease_ms=300), Reserved)
    assert isinstance(await reserve(ledger, "alice", "j2", 1000), Refused)
    await asyncio.sleep(0.35)
    assert isinstance(await reserve(ledger, "alice", "j2", 1000), Reserved)
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 1000


async def test_settle_after_the_lease_was_reclaimed_charges_exactly_once(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, lease_ms=20)
    await asyncio.sleep(0.05)
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 0  # reclaimed
    first = await settle(ledger, "alice", "j1", 350)
    second = await settle(ledger, "alice", "j1", 350)
    assert first.first and not second.first
    assert (await snapshot(ledger, "alice")) == PeriodSnapshot(1000, 350, 0, 650, None)


async def test_a_reclaimed_job_may_be_reserved_again(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, lease_ms=20, holder="dead")
    await asyncio.sleep(0.05)
    again = await reserve(ledger, "alice", "j1", 400, holder="w2")
    assert isinstance(again, Reserved) and not again.existing and again.holder == "w2"
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 400


async def test_extend_keeps_a_lease_alive_past_its_first_deadline(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, lease_ms=300)
    assert await ledger.extend("alice", "j1", lease_ms=60_000, holder="w1")
    await asyncio.sleep(0.4)
    again = await reserve(ledger, "alice", "j1", 400)
    assert isinstance(again, Reserved) and again.existing


async def test_extend_by_another_holder_answers_false(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, holder="w1")
    assert not await ledger.extend("alice", "j1", lease_ms=60_000, holder="w2")


async def test_extend_of_a_reclaimed_lease_answers_false(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, lease_ms=20)
    await asyncio.sleep(0.05)
    assert not await ledger.extend("alice", "j1", lease_ms=60_000, holder="w1")


async def test_a_stale_holders_release_never_drops_another_holders_reservation(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, holder="old")
    assert await ledger.extend("alice", "j1", lease_ms=0, holder="old")  # its lease lapses
    await reserve(ledger, "alice", "j1", 400, holder="new")
    assert not await ledger.release("alice", "j1", holder="old", outcome=b"old failed")
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 400
    settled = await settle(ledger, "alice", "j1", 300, holder="new", outcome=b"new done")
    assert settled.outcome == b"new done"  # the stale release stored nothing


async def test_a_stale_settle_is_charged_on_its_own_and_leaves_the_live_reservation(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, holder="old")
    assert await ledger.extend("alice", "j1", lease_ms=0, holder="old")
    await reserve(ledger, "alice", "j1", 400, holder="new")
    stale = await settle(ledger, "alice", "j1", 250, holder="old", outcome=b"old answer")
    assert stale.first and stale.charged_nanousd == 250
    assert await snapshot(ledger, "alice") == PeriodSnapshot(1000, 250, 400, 350, None)
    again = await settle(ledger, "alice", "j1", 250, holder="old", outcome=b"old answer")
    assert not again.first and again.charged_nanousd == 250  # once per call
    live = await settle(ledger, "alice", "j1", 300, holder="new", outcome=b"new answer")
    assert live.first and live.outcome == b"old answer"  # the first outcome stays
    assert await snapshot(ledger, "alice") == PeriodSnapshot(1000, 550, 0, 450, None)


async def test_renew_extends_every_live_lease_in_one_call_and_reports_the_lost(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await ledger.set_budget("bob", Budget(1000, "none"))
    await reserve(ledger, "alice", "a1", 100, lease_ms=300)
    await reserve(ledger, "bob", "b1", 100, lease_ms=300)
    await reserve(ledger, "bob", "b2", 100, lease_ms=300, holder="someone-else")
    answers = await ledger.renew(
        [
            LeaseRef("alice", "a1", "w1"),
            LeaseRef("bob", "b1", "w1"),
            LeaseRef("bob", "b2", "w1"),  # not its holder
            LeaseRef("bob", "never", "w1"),
        ],
        lease_ms=60_000,
    )
    assert answers == [True, True, False, False]
    await asyncio.sleep(0.35)
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 100
    assert (await snapshot(ledger, "bob")).reserved_nanousd == 100  # b2 lapsed, b1 renewed


async def test_extend_to_zero_makes_the_lease_due_at_once(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    assert await ledger.extend("alice", "j1", lease_ms=0, holder="w1")
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 0


async def test_reclaim_does_bounded_work_per_call(ledger: Ledger, redis_url: str) -> None:
    await ledger.set_budget("alice", Budget(10_000, "none"))
    for i in range(150):
        await reserve(ledger, "alice", f"j{i}", 1)
    leases = keys.user_keys("alice").leases
    client = redis.Redis.from_url(redis_url)
    try:
        client.zadd(leases, {f"j{i}": 1 for i in range(150)}, xx=True)  # all long due
        await reserve(ledger, "alice", "fresh", 1)
        assert client.zcard(leases) == 150 - 100 + 1
    finally:
        client.close()
    await ledger.state("alice")  # the next call reclaims the rest
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 1


# -- settle ---------------------------------------------------------------------------


async def test_settle_moves_the_reservation_to_spent_at_the_actual_cost(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    settled = await settle(ledger, "alice", "j1", 123, outcome=b'{"type":"ok"}')
    assert settled == Settled(123, True, b'{"type":"ok"}', PeriodSnapshot(1000, 123, 0, 877, None))
    state = await ledger.state("alice")
    assert state is not None and state.model_spend_nanousd == {"gpt-x": 123}


async def test_settle_records_the_actual_cost_even_past_the_cap(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 900)
    settled = await settle(ledger, "alice", "j1", 1500)
    assert settled.snapshot == PeriodSnapshot(1000, 1500, 0, 0, None)
    # Over the cap, even a free job is refused until the period ends.
    assert isinstance(await reserve(ledger, "alice", "j2", 0), Refused)


async def test_a_second_settle_returns_the_first_outcome_and_changes_nothing(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    first = await settle(ledger, "alice", "j1", 300, outcome=b"first")
    second = await settle(ledger, "alice", "j1", 999, outcome=b"second")
    assert second == Settled(300, False, b"first", first.snapshot)
    assert (await snapshot(ledger, "alice")).spent_nanousd == 300
    state = await ledger.state("alice")
    assert state is not None and state.model_spend_nanousd == {"gpt-x": 300}


async def test_reserve_of_a_settled_job_answers_finished_with_the_settle_snapshot(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    settled = await settle(ledger, "alice", "j1", 300, outcome=b"event")
    assert await reserve(ledger, "alice", "j1", 400) == Finished(b"event", settled.snapshot)


async def test_settle_without_a_reservation_charges_the_current_period(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    settled = await settle(ledger, "alice", "never-reserved", 250)
    assert settled.first and settled.snapshot.spent_nanousd == 250


async def test_settle_after_release_charges_once_and_keeps_the_first_outcome(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    await ledger.release("alice", "j1", holder="w1", outcome=b"failed")
    settled = await settle(ledger, "alice", "j1", 200, outcome=b"succeeded")
    assert (settled.first, settled.outcome, settled.charged_nanousd) == (True, b"failed", 200)
    assert await snapshot(ledger, "alice") == PeriodSnapshot(1000, 200, 0, 800, None)


# -- release and finish -------------------------------------------------------------------


async def test_release_drops_the_reservation_and_charges_nothing(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    assert await ledger.release("alice", "j1", holder="w1", outcome=b"failed")
    assert await snapshot(ledger, "alice") == PeriodSnapshot(1000, 0, 0, 1000, None)


async def test_release_is_idempotent(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    await reserve(ledger, "alice", "j2", 100)
    assert await ledger.release("alice", "j1", holder="w1", outcome=b"a")
    assert not await ledger.release("alice", "j1", holder="w1", outcome=b"b")
    assert not await ledger.release("alice", "j1", holder="w1")
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 100
    assert await reserve(ledger, "alice", "j1", 400) == Finished(b"a", None)


async def test_release_without_an_outcome_lets_a_redelivery_reserve_again(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    assert await ledger.release("alice", "j1", holder="w1")
    again = await reserve(ledger, "alice", "j1", 400, holder="w2")
    assert isinstance(again, Reserved) and not again.existing


async def test_release_of_a_settled_job_leaves_it_settled(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400)
    settled = await settle(ledger, "alice", "j1", 300, outcome=b"done")
    assert not await ledger.release("alice", "j1", holder="w1", outcome=b"failed")
    assert await reserve(ledger, "alice", "j1", 400) == Finished(b"done", settled.snapshot)
    assert (await snapshot(ledger, "alice")).spent_nanousd == 300


async def test_finish_keeps_the_first_outcome(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    assert await ledger.finish("alice", "j1", outcome=b"rejected-1") == Finished(
        b"rejected-1", None
    )
    assert await ledger.finish("alice", "j1", outcome=b"rejected-2") == Finished(
        b"rejected-1", None
    )
    assert await reserve(ledger, "alice", "j1", 10) == Finished(b"rejected-1", None)


async def test_finish_of_a_job_another_delivery_holds_changes_nothing(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "none"))
    await reserve(ledger, "alice", "j1", 400, holder="w2")
    assert await ledger.finish("alice", "j1", outcome=b"expired") == Busy("w2")
    assert (await snapshot(ledger, "alice")).reserved_nanousd == 400
    settled = await settle(ledger, "alice", "j1", 300, outcome=b"done", holder="w2")
    assert await ledger.finish("alice", "j1", outcome=b"expired") == Finished(
        b"done", settled.snapshot
    )


async def test_an_outcome_expires_after_its_ttl_but_the_job_stays_final(redis_url: str) -> None:
    ledger = Ledger.from_url(redis_url, outcome_ttl_s=1, charge_ttl_s=60)
    try:
        await ledger.set_budget("alice", Budget(1000, "none"))
        await ledger.finish("alice", "j1", outcome=b"x")
        await asyncio.sleep(1.1)
        assert await reserve(ledger, "alice", "j1", 10) == Finished(None, None)
    finally:
        await ledger.close()


# -- periods --------------------------------------------------------------------------


async def _wait_past(end_ms: int | None) -> None:
    assert end_ms is not None
    await asyncio.sleep(max(0.0, end_ms / 1000 - time.time()) + 0.05)


async def test_a_rolling_window_rolls_over_and_allows_spending_again(
    ledger: Ledger, redis_url: str
) -> None:
    await ledger.set_budget("alice", Budget(1000, "rolling", window_s=2))
    first = await reserve(ledger, "alice", "j1", 1000)
    assert isinstance(first, Reserved)
    await settle(ledger, "alice", "j1", 1000)
    assert isinstance(await reserve(ledger, "alice", "j2", 1), Refused)
    state1 = await ledger.state("alice")
    assert state1 is not None
    await _wait_past(first.snapshot.period_end_ms)
    assert isinstance(await reserve(ledger, "alice", "j2", 1000), Reserved)
    state2 = await ledger.state("alice")
    assert state2 is not None and state2.period_id != state1.period_id
    assert state2.snapshot.period_end_ms == (state1.snapshot.period_end_ms or 0) + 2000
    client = redis.Redis.from_url(redis_url)
    try:
        spend = client.hgetall(keys.user_keys("alice").spend(state1.period_id))
    finally:
        client.close()
    assert spend[b"spent"] == b"1000" and spend[b"reserved"] == b"0"


async def test_settle_charges_the_period_the_reservation_was_made_in(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "rolling", window_s=2))
    reserved = await reserve(ledger, "alice", "j1", 800)
    assert isinstance(reserved, Reserved)
    await _wait_past(reserved.snapshot.period_end_ms)
    settled = await settle(ledger, "alice", "j1", 700)
    assert settled.snapshot == PeriodSnapshot(1000, 700, 0, 300, reserved.snapshot.period_end_ms)
    now = await snapshot(ledger, "alice")
    assert (now.spent_nanousd, now.reserved_nanousd) == (0, 0)


async def test_a_calendar_budget_reports_its_period(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "monthly"))
    state = await ledger.state("alice")
    assert state is not None
    today = dt.datetime.now(dt.UTC)
    assert state.period_id == f"{today.year:04d}-{today.month:02d}"
    end = state.snapshot.period_end_ms
    assert end is not None
    end_day = dt.datetime.fromtimestamp(end / 1000, dt.UTC)
    assert (end_day.day, end_day.hour, end_day.minute) == (1, 0, 0)


def _expected_period(kind: str, instant_ms: int) -> tuple[str, int]:
    day = dt.datetime.fromtimestamp(instant_ms // 1000, dt.UTC).date()
    if kind == "daily":
        start, end = day, day + dt.timedelta(days=1)
        name = day.isoformat()
    elif kind == "weekly":
        iso = day.isocalendar()
        start = day - dt.timedelta(days=iso.weekday - 1)
        end = start + dt.timedelta(days=7)
        name = f"{iso.year:04d}-W{iso.week:02d}"
    elif kind == "monthly":
        end = (
            dt.date(day.year + 1, 1, 1) if day.month == 12 else dt.date(day.year, day.month + 1, 1)
        )
        name = f"{day.year:04d}-{day.month:02d}"
    else:
        end = dt.date(day.year + 1, 1, 1)
        name = f"{day.year:04d}"
    return name, calendar.timegm(end.timetuple()) * 1000


def _instants() -> list[int]:
    """Day boundaries around awkward dates, and random instants, 1970..2399."""
    rng = random.Random(20240229)
    found: list[int] = []
    for year in [1970, 1999, 2000, 2004, 2015, 2020, 2021, 2024, 2026, 2027, 2100, 2400]:
        for month, day in [(1, 1), (1, 4), (2, 28), (2, 29), (3, 1), (12, 28), (12, 31)]:
            try:
                midnight = calendar.timegm(dt.date(year, month, day).timetuple()) * 1000
            except ValueError:
                continue  # no Feb 29 that year
            found += [midnight - 1, midnight, midnight + 1] if midnight else [0, 1]
    found += [rng.randrange(0, 13_569_465_600_000) for _ in range(3000)]  # up to 2400
    return found


def test_calendar_periods_in_lua_match_pythons_calendar(redis_url: str) -> None:
    prelude = resources.files("worker.ledger").joinpath("lua", "common.lua").read_text("utf-8")
    body = """
local out = {}
for i = 5, #ARGV do
  local id, finish = period_of(ARGV[4], tonumber(ARGV[i]), 0, 0)
  out[#out + 1] = id
  out[#out + 1] = finish
end
return out
"""
    client = redis.Redis.from_url(redis_url)
    try:
        script = client.register_script(prelude + body)
        instants = _instants()
        for kind in ["daily", "weekly", "monthly", "yearly"]:
            reply = script(keys=["b", "l", "r", "t"], args=["s:", "j:", "1000", kind, *instants])
            got = [(reply[i].decode(), reply[i + 1]) for i in range(0, len(reply), 2)]
            want = [_expected_period(kind, instant) for instant in instants]
            mismatches = [(i, g, w) for i, g, w in zip(instants, got, want, strict=True) if g != w]
            assert not mismatches[:5], kind
    finally:
        client.close()


def test_rolling_windows_in_lua_count_from_the_start(redis_url: str) -> None:
    prelude = resources.files("worker.ledger").joinpath("lua", "common.lua").read_text("utf-8")
    body = "local id, finish = period_of('rolling', tonumber(ARGV[4]), 1000, 60)\n"
    body += "return {id, finish}"
    client = redis.Redis.from_url(redis_url)
    try:
        script = client.register_script(prelude + body)
        args = ["s:", "j:", "1000"]
        assert script(keys=["b", "l", "r", "t"], args=[*args, 1000]) == [b"r1000+60", 61_000]
        assert script(keys=["b", "l", "r", "t"], args=[*args, 60_999]) == [b"r1000+60", 61_000]
        assert script(keys=["b", "l", "r", "t"], args=[*args, 61_000]) == [b"r61000+60", 121_000]
    finally:
        client.close()


# -- rate limits ------------------------------------------------------------------------


async def test_rpm_admits_a_burst_up_to_the_limit_then_refuses_with_a_retry_time(
    ledger: Ledger,
) -> None:
    await ledger.set_budget("alice", Budget(USD, "daily", rpm=5))
    for i in range(5):
        assert isinstance(await reserve(ledger, "alice", f"j{i}", 1), Reserved)
    refused = await reserve(ledger, "alice", "j5", 1)
    assert isinstance(refused, Refused)
    assert (refused.limit, refused.remaining) == ("rpm", 0)
    assert refused.retry_after_ms is not None and 11_000 <= refused.retry_after_ms <= 12_000


async def test_rpm_after_a_burst_admits_only_the_refilled_share(ledger: Ledger) -> None:
    """No second full burst right after the first, as a fixed window would allow at
    its boundary: 60 per minute refills one request a second."""
    await ledger.set_budget("alice", Budget(USD, "daily", rpm=60))
    admitted = [await reserve(ledger, "alice", f"a{i}", 1) for i in range(61)]
    assert [isinstance(r, Reserved) for r in admitted] == [True] * 60 + [False]
    await asyncio.sleep(1.1)
    later = [await reserve(ledger, "alice", f"b{i}", 1) for i in range(3)]
    assert [isinstance(r, Reserved) for r in later] == [True, False, False]


async def test_tpm_refuses_tokens_beyond_the_allowance(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(USD, "daily", tpm=1000))
    assert isinstance(await reserve(ledger, "alice", "j1", 1, tokens=600), Reserved)
    refused = await reserve(ledger, "alice", "j2", 1, tokens=500)
    assert isinstance(refused, Refused)
    assert (refused.limit, refused.remaining) == ("tpm", 400)
    # 100 tokens short at 1000 per minute: 6 s.
    assert refused.retry_after_ms is not None and 5_500 <= refused.retry_after_ms <= 6_000


async def test_tpm_never_fits_a_request_above_the_limit(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(USD, "daily", tpm=1000))
    refused = await reserve(ledger, "alice", "j1", 1, tokens=1001)
    assert isinstance(refused, Refused)
    assert (refused.limit, refused.retry_after_ms) == ("tpm", None)


async def test_tpm_estimate_is_refunded_to_the_actual_at_settle(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(USD, "daily", tpm=1000))
    await reserve(ledger, "alice", "j1", 1, tokens=800)
    assert isinstance(await reserve(ledger, "alice", "j2", 1, tokens=800), Refused)
    await settle(ledger, "alice", "j1", 1, tokens=100)
    assert isinstance(await reserve(ledger, "alice", "j2", 1, tokens=800), Reserved)


async def test_release_gives_the_token_estimate_back(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(USD, "daily", tpm=1000))
    await reserve(ledger, "alice", "j1", 1, tokens=900)
    await ledger.release("alice", "j1", holder="w1")
    assert isinstance(await reserve(ledger, "alice", "j2", 1, tokens=900), Reserved)


# -- exact integers -------------------------------------------------------------------


async def test_multiples_of_100_million_are_applied_exactly(redis_url: str) -> None:
    """Redis 7.2 broke INCRBY for Lua numbers that are multiples of 100,000,000; every
    amount, lease and TTL here is such a multiple."""
    ledger = Ledger.from_url(redis_url, charge_ttl_s=100_000, outcome_ttl_s=100_000)
    try:
        await ledger.set_budget("alice", Budget(300_000_000, "daily", tpm=1_000_000_000))
        for i in range(3):
            r = await reserve(ledger, "alice", f"j{i}", 100_000_000, tokens=100_000_000)
            assert isinstance(r, Reserved)
        assert isinstance(await reserve(ledger, "alice", "j3", 100_000_000), Refused)
        await settle(ledger, "alice", "j0", 100_000_000, tokens=100_000_000)
        await settle(ledger, "alice", "j1", 1_000_000_000, tokens=300_000_000)
        await ledger.release("alice", "j2", holder="w1")
        assert await snapshot(ledger, "alice") == PeriodSnapshot(
            300_000_000, 1_100_000_000, 0, 0, (await snapshot(ledger, "alice")).period_end_ms
        )
        await ledger.set_budget("alice", Budget(3_000_000_000, "daily"))
        r = await reserve(ledger, "alice", "j4", 1_000_000_000, lease_ms=100_000_000)
        assert isinstance(r, Reserved) and r.snapshot.reserved_nanousd == 1_000_000_000
        assert (await snapshot(ledger, "alice")).remaining_nanousd == 900_000_000
    finally:
        await ledger.close()


# -- users ---------------------------------------------------------------------------------

HOSTILE_IDS = [
    "a:b",
    "a",
    "b",
    "ab",
    "{x}",
    "x",
    "a\nb",
    "a b",
    "bw:{u:0}",
    "\ud800",
    "é",
    "e\u0301",
    "u" * 256,
    "u" * 10_240,
]


async def test_hostile_user_ids_get_separate_budgets_and_spend(ledger: Ledger) -> None:
    for i, user in enumerate(HOSTILE_IDS):
        await ledger.set_budget(user, Budget(1000 + i, "daily"))
        assert isinstance(await reserve(ledger, user, "same-job", 10 + i), Reserved)
    for i, user in enumerate(HOSTILE_IDS):
        state = await ledger.state(user)
        assert state is not None and state.user_id == user
        assert state.budget.limit_nanousd == 1000 + i
        assert state.snapshot.reserved_nanousd == 10 + i
    assert await ledger.list_users() == sorted(HOSTILE_IDS)


async def test_an_empty_user_id_is_rejected(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        await ledger.set_budget("", Budget(1))


async def test_set_budget_keeps_the_current_spend(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily"))
    await reserve(ledger, "alice", "j1", 400)
    await settle(ledger, "alice", "j1", 400)
    await ledger.set_budget("alice", Budget(500, "daily", rpm=10))
    assert await ledger.get_budget("alice") == Budget(500, "daily", rpm=10)
    snap = await snapshot(ledger, "alice")
    assert (snap.limit_nanousd, snap.spent_nanousd, snap.remaining_nanousd) == (500, 400, 100)


async def test_a_changed_rolling_budget_keeps_its_window_start(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "rolling", window_s=3600))
    before = await ledger.state("alice")
    await asyncio.sleep(0.01)
    await ledger.set_budget("alice", Budget(2000, "rolling", window_s=3600))
    after = await ledger.state("alice")
    assert before is not None and after is not None
    assert after.period_id == before.period_id


async def test_default_budget_is_created_by_the_first_reserve(redis_url: str) -> None:
    default = Budget(1000, "weekly", rpm=100)
    ledger = Ledger.from_url(redis_url, default_budget=default)
    try:
        assert isinstance(await reserve(ledger, "newcomer", "j1", 10), Reserved)
        assert await ledger.get_budget("newcomer") == default
        assert await ledger.list_users() == ["newcomer"]
    finally:
        await ledger.close()


async def test_concurrent_first_reserves_share_one_default_budget(redis_url: str) -> None:
    ledger = Ledger.from_url(redis_url, default_budget=Budget(500, "none"))
    try:
        results = await asyncio.gather(*(reserve(ledger, "new", f"j{i}", 100) for i in range(20)))
        assert sum(isinstance(r, Reserved) for r in results) == 5
        assert (await snapshot(ledger, "new")).reserved_nanousd == 500
    finally:
        await ledger.close()


async def test_reset_zeroes_the_period_spend_and_keeps_reservations(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000, "daily"))
    await reserve(ledger, "alice", "j1", 300)
    await settle(ledger, "alice", "j1", 300)
    await reserve(ledger, "alice", "j2", 200)
    assert await ledger.reset("alice")
    state = await ledger.state("alice")
    assert state is not None and state.model_spend_nanousd == {}
    assert (state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd) == (0, 200)
    assert await spent(ledger, "alice") == 0


async def test_reset_without_a_budget_answers_false(ledger: Ledger) -> None:
    assert not await ledger.reset("nobody")


async def test_list_users_lists_every_user_with_a_budget(ledger: Ledger) -> None:
    for user in ["carol", "alice", "bob"]:
        await ledger.set_budget(user, Budget(1))
    assert await ledger.list_users() == ["alice", "bob", "carol"]


async def test_delete_removes_the_budget_and_the_listing(ledger: Ledger) -> None:
    await ledger.set_budget("alice", Budget(1000))
    await ledger.set_budget("bob", Budget(1000))
    assert await ledger.delete("alice")
    assert not await ledger.delete("alice")
    assert await ledger.get_budget("alice") is None
    assert await ledger.state("alice") is None
    assert await ledger.list_users() == ["bob"]
    assert await reserve(ledger, "alice", "j1", 1) == NoBudget()


# -- failures --------------------------------------------------------------------------


async def test_a_stopped_redis_raises_ledger_unavailable_quickly(
    private_redis: EmbeddedRedis,
) -> None:
    ledger = Ledger.from_url(private_redis.url, timeout_s=1.0)
    try:
        await ledger.set_budget("alice", Budget(1000))
        private_redis.stop()
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await reserve(ledger, "alice", "j1", 10)
        with pytest.raises(LedgerUnavailable):
            await ledger.ping()
        assert time.monotonic() - started < 1.0
        private_redis.start()  # empty again: no persistence
        await ledger.ping()
        assert await reserve(ledger, "alice", "j1", 10) == NoBudget()
    finally:
        await ledger.close()


async def test_a_hung_redis_raises_ledger_unavailable_after_the_timeout(
    private_redis: EmbeddedRedis,
) -> None:
    ledger = Ledger.from_url(private_redis.url, timeout_s=0.3)
    process = private_redis.server.process
    assert process is not None
    try:
        await ledger.set_budget("alice", Budget(1000))
        os.kill(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await reserve(ledger, "alice", "j1", 10)
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(process.pid, signal.SIGCONT)
        await ledger.close()


async def test_a_flushed_script_cache_is_reloaded_transparently(
    ledger: Ledger, redis_url: str
) -> None:
    await ledger.set_budget("alice", Budget(1000))
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()
    finally:
        client.close()
    assert isinstance(await reserve(ledger, "alice", "j1", 10), Reserved)


async def test_a_script_error_becomes_ledger_error(ledger: Ledger, redis_url: str) -> None:
    await ledger.set_budget("alice", Budget(1000))
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(keys.user_keys("alice").budget, "period", "fortnightly")
    finally:
        client.close()
    with pytest.raises(LedgerError):
        await reserve(ledger, "alice", "j1", 10)


async def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError):
            Ledger(client)
    finally:
        await client.aclose()


async def test_many_concurrent_callers_wait_for_a_connection(redis_url: str) -> None:
    ledger = Ledger.from_url(redis_url, max_connections=4)
    try:
        await ledger.set_budget("alice", Budget(USD, "none"))
        results = await asyncio.gather(*(reserve(ledger, "alice", f"j{i}", 1) for i in range(300)))
        assert all(isinstance(r, Reserved) for r in results)
    finally:
        await ledger.close()
