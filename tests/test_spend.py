"""The spend path, in-process over a real Redis: no call outside a live reservation,
every call that answered charged once, Redis that refuses writes waited out.

Each test names the class of fault it closes; the model is scripted (or, where the
retry path matters, the real provider over HTTP to the fake)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas.events import CompletionRejected, CompletionSucceeded
from schemas.jobs import CompletionJob, parse_job
from tests.support import InProcess, in_process, job, model_entry, spent, until
from worker.dev.doubles import Call, ScriptedProvider, answer
from worker.dev.fake_provider import FakeProviderConfig, start_fake_provider
from worker.dev.servers import EmbeddedRedis
from worker.estimate import estimate
from worker.ledger import Budget
from worker.provider import Provider


def decoded(job_id: str, user: str = "alice", **fields: Any) -> CompletionJob:
    return parse_job(json.dumps(job(job_id, user, **fields)).encode())


async def one_job_budget(rig: InProcess, user: str = "alice") -> None:
    """A budget that holds exactly one job's reservation."""
    entry = rig.jobs.models.get(decoded("x").model)
    assert entry is not None
    cost = estimate(decoded("x", user), entry, rig.settings.default_max_tokens).cost_nanousd
    await rig.ledger.set_budget(user, Budget(cost + cost // 2, "none"))


@contextlib.asynccontextmanager
async def rigged(redis_url: str, provider: Any, **settings: Any) -> AsyncIterator[InProcess]:
    path = in_process(redis_url, provider, **settings)
    try:
        yield path
    finally:
        await path.close()


async def test_a_call_longer_than_its_lease_keeps_its_reservation(redis_url: str) -> None:
    """Today a lease shorter than the call lapses under it, and its money admits
    another job: spend ends above the cap."""
    release = asyncio.Event()

    async def slow(call: Call) -> Any:
        await release.wait()
        return answer()

    async with rigged(redis_url, ScriptedProvider(slow), lease_ms=3000) as rig:
        await one_job_budget(rig)
        first = asyncio.create_task(rig.jobs.run(decoded("long")))
        await rig.provider.started.wait()
        await asyncio.sleep(4.0)  # past the first lease's deadline
        second = await rig.jobs.run(decoded("meanwhile"))
        assert isinstance(second.event, CompletionRejected)
        assert second.event.reason == "budget_exceeded"
        release.set()
        assert isinstance((await first).event, CompletionSucceeded)
        state = await rig.ledger.state("alice")
        assert state is not None and state.snapshot.spent_nanousd <= state.snapshot.limit_nanousd


async def test_a_retry_backoff_longer_than_the_lease_keeps_the_reservation(
    redis_url: str,
) -> None:
    """A 429 whose Retry-After outlasts the lease: the reservation stays held while the
    worker waits to retry, so no other job takes its money."""
    fake = await start_fake_provider(FakeProviderConfig(rate_429=1.0, retry_after_s=4.0))
    provider = Provider(timeout_s=10, max_retries=2, backoff_s=0.05, backoff_max_s=10)
    entry = model_entry(api_base=fake.url)
    try:
        async with rigged(redis_url, provider, entry=entry, lease_ms=3000) as rig:
            await one_job_budget(rig)
            first = asyncio.create_task(rig.jobs.run(decoded("retried")))
            await until(lambda: fake.stats.requests_total > 0)
            fake.update_config(rate_429=0.0)  # the retry will succeed
            await asyncio.sleep(3.5)  # inside the backoff, past the first lease's deadline
            second = await rig.jobs.run(decoded("meanwhile"))
            assert isinstance(second.event, CompletionRejected)
            done = (await first).event
            assert isinstance(done, CompletionSucceeded) and done.attempts == 2
            state = await rig.ledger.state("alice")
            assert state is not None
            assert state.snapshot.spent_nanousd == done.cost_nanousd <= state.snapshot.limit_nanousd
    finally:
        await fake.stop()


async def test_a_lease_lost_mid_call_stops_the_call_and_admits_the_job_again(
    redis_url: str,
) -> None:
    """Today an extend that answers 'lost' is ignored and the call goes on outside any
    reservation. Now the call is cut off, counted, and the job runs again under a fresh
    reservation, charged once."""
    calls = 0

    async def first_hangs(call: Call) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(60)
        return answer()

    async with rigged(redis_url, ScriptedProvider(first_hangs), lease_ms=3000) as rig:
        rig.leases.renew_every_s = 0.05
        await rig.ledger.set_budget("alice", Budget(10**9, "none"))
        task = asyncio.create_task(rig.jobs.run(decoded("j1")))
        await rig.provider.started.wait()
        (lease,) = rig.leases._leases
        # The ledger drops the reservation under its holder (as a reclaim would).
        assert await rig.ledger.extend("alice", "j1", lease_ms=0, holder=lease.ref.holder)
        event = (await task).event
        assert isinstance(event, CompletionSucceeded)
        assert rig.provider.cancelled == 1 and len(rig.provider.calls) == 2
        assert await spent(rig.ledger, "alice") == event.cost_nanousd
        cut = rig.metrics.registry.get_sample_value(
            "bw_model_calls_cut_off_total", {"reason": "lease_lost"}
        )
        assert cut == 1


async def test_a_cancelled_call_gives_its_money_back_at_once(redis_url: str) -> None:
    async def hangs(call: Call) -> Any:
        await asyncio.sleep(60)

    async with rigged(redis_url, ScriptedProvider(hangs)) as rig:
        await rig.ledger.set_budget("alice", Budget(10**9, "none"))
        task = asyncio.create_task(rig.jobs.run(decoded("j1")))
        await rig.provider.started.wait()
        state = await rig.ledger.state("alice")
        assert state is not None and state.snapshot.reserved_nanousd > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = await rig.ledger.state("alice")
        assert state is not None and state.snapshot.reserved_nanousd == 0


# --- Redis refusing writes ----------------------------------------------------------------


def _misconf(client: redis.Redis, data: Path) -> Callable[[], None]:
    data.rmdir()  # the snapshot cannot be written: writes are refused until save is off
    client.bgsave()
    _until_writes_fail(client, "MISCONF")
    return lambda: client.config_set("save", "")


def _readonly(client: redis.Redis, data: Path) -> Callable[[], None]:
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # as after a failover
    _until_writes_fail(client, "You can't write against a read only replica")
    return lambda: client.execute_command("REPLICAOF", "NO", "ONE")


def _until_writes_fail(client: redis.Redis, reply: str) -> None:
    while True:
        try:
            client.set("probe", "1")
        except redis.ResponseError as exc:
            assert reply in str(exc)
            return


def _busy(client: redis.Redis, data: Path) -> Callable[[], None]:
    client.config_set("busy-reply-threshold", "50")
    blocker = redis.Redis(port=client.connection_pool.connection_kwargs["port"])
    runner = threading.Thread(
        target=_ignore, args=(lambda: blocker.eval("while true do end", 0),), daemon=True
    )
    runner.start()
    _until_writes_fail(client, "BUSY")

    def recover() -> None:
        client.script_kill()
        runner.join(10)
        blocker.close()

    return recover


def _ignore(call: Callable[[], object]) -> None:
    with contextlib.suppress(redis.RedisError):
        call()


REFUSALS = {"MISCONF": _misconf, "READONLY": _readonly, "BUSY": _busy}


@pytest.mark.parametrize("reply", sorted(REFUSALS))
async def test_a_redis_that_refuses_writes_at_settle_is_waited_out_and_the_call_charged(
    tmp_path: Path, reply: str
) -> None:
    """Today MISCONF during settle answers internal_error and the call is never charged."""
    data = tmp_path / "data"
    data.mkdir()
    server = EmbeddedRedis(
        tmp_path, extra_args=["--dir", str(data), "--save", "3600 1", "--dbfilename", "d.rdb"]
    )
    server.start()
    admin = redis.Redis(port=server.port)
    go = asyncio.Event()

    async def waits(call: Call) -> Any:
        await go.wait()
        return answer(prompt_tokens=40, completion_tokens=8)

    try:
        async with rigged(server.url, ScriptedProvider(waits)) as rig:
            await rig.ledger.set_budget("alice", Budget(10**9, "none"))
            task = asyncio.create_task(rig.jobs.run(decoded("j1")))
            await rig.provider.started.wait()
            recover = REFUSALS[reply](admin, data)
            go.set()
            await until(lambda: not rig.gate.is_open)  # the settle met the refusal: waits
            assert not task.done()
            recover()
            event = (await asyncio.wait_for(task, 30)).event
            assert isinstance(event, CompletionSucceeded)
            assert await spent(rig.ledger, "alice") == event.cost_nanousd > 0
    finally:
        admin.close()
        server.stop()


async def test_a_redis_hang_longer_than_the_lease_cuts_the_call_off_and_runs_it_again(
    private_redis: EmbeddedRedis,
) -> None:
    """No call runs outside a live reservation: when the lease cannot be renewed in time
    the call is stopped; the job runs again once Redis answers, charged once."""
    calls = 0

    async def first_is_slow(call: Call) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(60)
        return answer()

    assert private_redis.server.process is not None
    pid = private_redis.server.process.pid
    async with rigged(
        private_redis.url, ScriptedProvider(first_is_slow), lease_ms=3000, redis_timeout_s=0.2
    ) as rig:
        await rig.ledger.set_budget("alice", Budget(10**9, "none"))
        task = asyncio.create_task(rig.jobs.run(decoded("j1")))
        await rig.provider.started.wait()
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(lambda: rig.provider.cancelled > 0)  # fenced before it could lapse
        finally:
            os.kill(pid, signal.SIGCONT)
        event = (await asyncio.wait_for(task, 30)).event
        assert isinstance(event, CompletionSucceeded)
        assert len(rig.provider.calls) == 2
        assert await spent(rig.ledger, "alice") == event.cost_nanousd
        cut = rig.metrics.registry.get_sample_value(
            "bw_model_calls_cut_off_total", {"reason": "lease_expired"}
        )
        assert cut == 1


# --- the default lease rides out an outage of 10 s ------------------------------------


def _hang(server: EmbeddedRedis) -> tuple[Callable[[], None], Callable[[], None]]:
    assert server.server.process is not None
    pid = server.server.process.pid
    return (lambda: os.kill(pid, signal.SIGSTOP)), (lambda: os.kill(pid, signal.SIGCONT))


def _restart(server: EmbeddedRedis) -> tuple[Callable[[], None], Callable[[], None]]:
    return server.stop, server.start  # SIGKILL, then start again: a crash and a restart


OUTAGES = {"hang": _hang, "restart": _restart}


@pytest.mark.parametrize("kind", sorted(OUTAGES))
async def test_the_default_lease_rides_out_a_10_s_outage_with_nothing_cut_or_uncharged(
    tmp_path: Path, kind: str
) -> None:
    """Calls in flight while Redis hangs, or is down and restarted (with its append-only
    file, as a production Redis runs), for 10 s: none is cut off, all are charged."""
    server = EmbeddedRedis(tmp_path, extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    back = asyncio.Event()

    async def answers_after_the_outage(call: Call) -> Any:
        await back.wait()
        return answer(prompt_tokens=30, completion_tokens=6)

    begin, end = OUTAGES[kind](server)
    try:
        async with rigged(server.url, ScriptedProvider(answers_after_the_outage)) as rig:
            assert rig.settings.lease_ms == 15_000  # the default
            await rig.ledger.set_budget("alice", Budget(10**9, "none"))
            tasks = [asyncio.create_task(rig.jobs.run(decoded(f"j{n}"))) for n in range(20)]
            await until(lambda: rig.provider.running == 20)
            begin()
            await asyncio.sleep(10)
            end()
            back.set()
            events = [(await asyncio.wait_for(task, 30)).event for task in tasks]
            assert all(isinstance(event, CompletionSucceeded) for event in events)
            assert rig.provider.cancelled == 0 and len(rig.provider.calls) == 20
            charged = sum(e.cost_nanousd for e in events if isinstance(e, CompletionSucceeded))
            assert await spent(rig.ledger, "alice") == charged
    finally:
        server.stop()
