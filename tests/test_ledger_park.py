"""worker.ledger.park against the real Redis: parking is idempotent, a due job is
claimed by one worker at a time, a dead worker's claim lapses to another, and a
worker whose claim lapsed changes nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from worker import keys
from worker.ledger import Ledger, ParkList


@pytest.fixture
async def park(redis_url: str) -> AsyncIterator[ParkList]:
    book = Ledger.from_url(redis_url)
    try:
        yield book.park_list()
    finally:
        await book.close()


async def put(park: ParkList, job_id: str = "j1", delay_ms: int = 0, **kwargs: object) -> bool:
    new, _ = await park.park(
        "user:{a}\n",
        job_id,
        job=b'{"job": 1}',
        delay_ms=delay_ms,
        until_ms=int(time.time() * 1000) + 60_000,
        refusal=b'{"refusal": 1}',
        poll_ms=2000,
    )
    return new


async def claim_until(park: ParkList, token: str, timeout_s: float = 5.0) -> list[str]:
    """Claim as ``token`` until something is claimed (the members)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        claimed = await park.claim(10, lease_ms=10_000, token=token)
        if claimed:
            return [entry.member for entry in claimed]
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing claimed by {token} within {timeout_s} s")


async def test_parking_a_job_twice_keeps_the_first_entry(park: ParkList) -> None:
    assert await put(park)
    assert not await put(park)
    assert await park.count() == 1
    (entry,) = await park.claim(10, lease_ms=1000, token="a")
    assert (entry.job, entry.refusal, entry.poll_ms) == (b'{"job": 1}', b'{"refusal": 1}', 2000)
    assert entry.member == keys.park_member("user:{a}\n", "j1")
    assert "user" not in entry.member  # user ids never raw in key names


async def test_a_job_not_yet_due_is_not_claimed(park: ParkList) -> None:
    await put(park, delay_ms=60_000)
    assert await park.claim(10, lease_ms=1000, token="a") == []


async def test_of_concurrent_claimers_exactly_one_holds_each_job(park: ParkList) -> None:
    for n in range(5):
        await put(park, f"j{n}")
    claims = await asyncio.gather(
        *(park.claim(10, lease_ms=10_000, token=f"w{i}") for i in range(4))
    )
    members = [entry.member for claimed in claims for entry in claimed]
    assert len(members) == len(set(members)) == 5


async def test_a_dead_workers_claim_lapses_and_another_worker_takes_the_job(
    park: ParkList,
) -> None:
    await put(park)
    (entry,) = await park.claim(10, lease_ms=200, token="dead")
    assert await park.claim(10, lease_ms=10_000, token="alive") == []  # held
    assert await claim_until(park, "alive") == [entry.member]
    # The lapsed holder can neither put it back, remove it, nor renew it.
    assert not await park.again(entry.member, token="dead", delay_ms=0, refusal=b"", poll_ms=1)
    assert not await park.done(entry.member, token="dead")
    assert await park.extend([entry.member], token="dead", lease_ms=10_000) == 0
    assert await park.count() == 1
    assert await park.done(entry.member, token="alive")
    assert await park.count() == 0


async def test_a_renewed_claim_does_not_lapse(park: ParkList) -> None:
    await put(park)
    (entry,) = await park.claim(10, lease_ms=300, token="a")
    assert await park.extend([entry.member], token="a", lease_ms=60_000) == 1
    score = await park.conn.command("ZSCORE", keys.PARK_DUE, entry.member)
    assert float(score) > time.time() * 1000 + 50_000


async def test_a_job_given_back_is_due_again_with_its_new_refusal(park: ParkList) -> None:
    await put(park)
    (entry,) = await park.claim(10, lease_ms=10_000, token="a")
    assert await park.again(entry.member, token="a", delay_ms=0, refusal=b"new", poll_ms=4000)
    (again,) = await park.claim(10, lease_ms=10_000, token="b")
    assert (again.refusal, again.poll_ms, again.parked_ms) == (b"new", 4000, entry.parked_ms)
