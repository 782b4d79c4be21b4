"""Leases: renewed in one batch while their calls run, fenced when they cannot be.

Against a real Redis; the outage cases stop a Redis of the test's own (SIGSTOP, a hang:
connections stay open and nothing answers).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from worker.dev.servers import EmbeddedRedis
from worker.errors import LeaseLost
from worker.leases import Lease, LeaseKeeper
from worker.ledger import Budget, LeaseRef, Ledger, Reserved

LEASE_MS = 900


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    book = Ledger.from_url(redis_url, timeout_s=0.3)
    await book.set_budget("alice", Budget(10_000, "none"))
    try:
        yield book
    finally:
        await book.close()


async def hold(keeper: LeaseKeeper, book: Ledger, job_id: str, holder: str = "w1") -> Lease:
    sent_at = asyncio.get_running_loop().time()
    reserved = await book.reserve(
        "alice", job_id, cost_nanousd=100, tokens=0, lease_ms=keeper.lease_ms, holder=holder
    )
    assert isinstance(reserved, Reserved) and not reserved.existing
    return keeper.hold(LeaseRef("alice", job_id, holder), sent_at)


async def reserved(book: Ledger) -> int:
    state = await book.state("alice")
    assert state is not None
    return state.snapshot.reserved_nanousd


async def test_one_renewal_keeps_every_lease_alive_past_its_first_deadline(
    ledger: Ledger,
) -> None:
    keeper = LeaseKeeper(ledger, LEASE_MS, renew_every_s=0.1)
    leases = [await hold(keeper, ledger, f"j{i}") for i in range(3)]
    try:
        await asyncio.sleep(3 * LEASE_MS / 1000)
        assert await reserved(ledger) == 300
        assert all(lease.alive for lease in leases)
    finally:
        await keeper.stop()


async def test_a_lease_nobody_renews_lapses_and_its_money_comes_back(ledger: Ledger) -> None:
    keeper = LeaseKeeper(ledger, LEASE_MS, renew_every_s=0.1)
    await hold(keeper, ledger, "j1")
    await keeper.stop()  # the process died: nothing renews
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    assert await reserved(ledger) == 0


async def test_a_lost_lease_stops_its_call_at_once(ledger: Ledger) -> None:
    keeper = LeaseKeeper(ledger, 60_000, renew_every_s=0.05)
    lease = await hold(keeper, ledger, "j1")
    # Its lease falls due and another delivery takes the job over.
    assert await ledger.extend("alice", "j1", lease_ms=0, holder="w1")
    other = await ledger.reserve(
        "alice", "j1", cost_nanousd=100, tokens=0, lease_ms=60_000, holder="w2"
    )
    assert isinstance(other, Reserved) and not other.existing
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(LeaseLost, match="lost"):
            async with lease.fenced():
                await asyncio.sleep(30)  # the model call
    finally:
        await keeper.stop()
    assert asyncio.get_running_loop().time() - started < 1.0
    assert lease.lost == "lost"
    with pytest.raises(LeaseLost):  # and no new attempt may start under it
        async with lease.fenced():
            pass


async def test_a_lease_that_cannot_be_renewed_stops_its_call_before_it_could_lapse(
    private_redis: EmbeddedRedis,
) -> None:
    book = Ledger.from_url(private_redis.url, timeout_s=0.2)
    await book.set_budget("alice", Budget(10_000, "none"))
    keeper = LeaseKeeper(book, LEASE_MS, renew_every_s=0.1)
    lease = await hold(keeper, book, "j1")
    loop = asyncio.get_running_loop()
    assert private_redis.server.process is not None
    pid = private_redis.server.process.pid
    os.kill(pid, signal.SIGSTOP)  # Redis hangs: renewals time out
    hung_at = loop.time()
    try:
        with pytest.raises(LeaseLost, match="expired"):
            async with lease.fenced():
                await asyncio.sleep(30)
        stopped_after_s = loop.time() - hung_at
    finally:
        os.kill(pid, signal.SIGCONT)
        await keeper.stop()
        await book.close()
    # Stopped before the lease could run out in Redis (it started before the hang).
    assert stopped_after_s < LEASE_MS / 1000


async def test_an_outage_shorter_than_the_lease_stops_nothing(
    private_redis: EmbeddedRedis,
) -> None:
    book = Ledger.from_url(private_redis.url, timeout_s=0.2)
    await book.set_budget("alice", Budget(10_000, "none"))
    keeper = LeaseKeeper(book, 3000, renew_every_s=0.2)
    lease = await hold(keeper, book, "j1")
    assert private_redis.server.process is not None
    pid = private_redis.server.process.pid

    async def outage() -> None:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(1.5)  # < lease - renewal interval - margin (3 - 0.2 - 0.3 s)
        os.kill(pid, signal.SIGCONT)

    try:
        async with lease.fenced():
            await asyncio.gather(outage(), asyncio.sleep(2.5))
        assert lease.alive and keeper.renewals_failed > 0
    finally:
        os.kill(pid, signal.SIGCONT)
        await keeper.stop()
        await book.close()
