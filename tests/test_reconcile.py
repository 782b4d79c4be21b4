"""``budget-worker reconcile``: the ledger against the charged events. The real test
restores an older Redis snapshot under a running worker (what a failover that lost
acknowledged writes does), then finds the lost charges and writes them back, once."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from tests.support import (
    Topics,
    in_process_workers,
    job,
    produce,
    wait_for_events,
    worker_env,
    write_models_file,
)
from worker import reconcile
from worker.cli import app
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis
from worker.ledger import Budget, Ledger, Scope

pytestmark = pytest.mark.timeout(180)


def event(**fields: Any) -> bytes:
    base = {
        "type": "completion.succeeded",
        "event_id": "e1",
        "job_id": "j1",
        "user_id": "u",
        "cost_nanousd": 700,
        "occurred_at": "2026-03-01T10:00:00Z",
        "budget": {"period_end": "2026-03-02T00:00:00Z"},
    }
    return json.dumps({**base, **fields}).encode()


def test_only_events_that_charged_something_count() -> None:
    charge = reconcile.charge_of(event())
    assert charge is not None and (charge.cost_nanousd, charge.user_id) == (700, "u")
    assert charge.period_end_ms == 1772409600000
    failed = reconcile.charge_of(event(type="completion.failed", cost_nanousd=9, budget=None))
    assert failed is not None and failed.period_end_ms is None
    assert reconcile.charge_of(event(type="completion.failed", cost_nanousd=0)) is None
    assert reconcile.charge_of(event(type="completion.rejected")) is None
    assert reconcile.charge_of(b"not json") is None
    assert reconcile.charge_of(event(occurred_at="yesterday")) is None


def test_period_starts() -> None:
    march = 1772323200000  # 2026-03-01T00:00:00Z
    april = 1775001600000  # 2026-04-01T00:00:00Z
    assert reconcile.period_start_ms(Budget(1, "monthly"), april) == march
    assert reconcile.period_start_ms(Budget(1, "daily"), march) == march - 86_400_000
    rolling = Budget(1, "rolling", window_s=3600)
    assert reconcile.period_start_ms(rolling, march) == march - 3_600_000


def test_a_correction_id_is_the_comparison_it_corrects() -> None:
    drift = reconcile.Drift(Scope("user", "u"), "2026-03-01", 100, 40, 3)
    assert drift.drift_nanousd == -60
    assert (
        drift.correction_id()
        == reconcile.Drift(Scope("user", "u"), "2026-03-01", 100, 40, 0).correction_id()
    )
    assert (
        drift.correction_id()
        != reconcile.Drift(Scope("user", "u"), "2026-03-01", 100, 41, 3).correction_id()
    )


async def test_a_restored_older_snapshot_is_found_and_corrected_once(
    kafka: EmbeddedKafka, private_redis: EmbeddedRedis, fake_provider: Any, tmp_path: Path
) -> None:
    topics = Topics.fresh(kafka, partitions=3)
    models = write_models_file(tmp_path, fake_provider.url)
    env = worker_env(kafka, private_redis.url, models, topics, lease_ms=4000, model_timeout_s=2)
    book = Ledger.from_url(private_redis.url)
    users = ["rec-a", "rec-b"]
    for user in users:
        await book.set_budget(user, Budget(10**10, "daily"))
    dump = private_redis.workdir / f"dump-{private_redis.port}.rdb"
    snapshot = tmp_path / "older.rdb"
    try:
        async with in_process_workers(env):
            before = [job(f"rec-1-{u}-{n}", u) for u in users for n in range(3)]
            await produce(kafka, topics.jobs, before)
            await wait_for_events(kafka, topics.results, {j["job_id"] for j in before})
            client = aioredis.Redis.from_url(private_redis.url)
            await client.save()
            await client.aclose()
            shutil.copy(dump, snapshot)
            lost = [job(f"rec-2-{u}-{n}", u) for u in users for n in range(4)]
            await produce(kafka, topics.jobs, lost)
            await wait_for_events(kafka, topics.results, {j["job_id"] for j in lost})
            # The failover: the server comes back with the older data, under the worker.
            private_redis.stop()
            shutil.copy(snapshot, dump)
            private_redis.start()
            after = [job(f"rec-3-{u}", u) for u in users]
            await produce(kafka, topics.jobs, after)
            events = await wait_for_events(
                kafka, topics.results, {j["job_id"] for j in [*before, *lost, *after]}
            )
        charged = {
            u: sum(e[0]["cost_nanousd"] for e in events.values() if e[0]["user_id"] == u)
            for u in users
        }
        lost_cost = {
            u: sum(events[j["job_id"]][0]["cost_nanousd"] for j in lost if j["user_id"] == u)
            for u in users
        }
        for user in users:
            state = await book.state(user)
            assert state is not None
            assert state.snapshot.spent_nanousd == charged[user] - lost_cost[user] > 0

        cli_env = {**env, "BW_RESULTS_TOPIC": topics.results}
        args = ["reconcile", "--json", "--idle-s", "1"]
        found = await asyncio.to_thread(CliRunner().invoke, app, args, env=cli_env)
        assert found.exit_code == 1, found.output  # drift, not corrected
        rows = {row["scope"]: row for row in json.loads(found.output)}
        for user in users:
            assert rows[f"user:{user}"]["drift_nanousd"] == -lost_cost[user]
            assert rows[f"user:{user}"]["events_nanousd"] == charged[user]

        fixed = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--fix"], env=cli_env)
        assert fixed.exit_code == 0, fixed.output
        for user in users:
            state = await book.state(user)
            assert state is not None and state.snapshot.spent_nanousd == charged[user]
        again = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--fix"], env=cli_env)
        assert again.exit_code == 0, again.output
        assert all(row["drift_nanousd"] == 0 for row in json.loads(again.output))
        for user in users:
            state = await book.state(user)
            assert state is not None and state.snapshot.spent_nanousd == charged[user]
    finally:
        await book.close()


async def test_a_ledger_holding_more_than_the_events_is_credited_back_once(
    redis_url: str,
) -> None:
    book = Ledger.from_url(redis_url)
    try:
        await book.set_budget("rec-over", Budget(10**9, "daily"))
        await book.settle(
            "rec-over", "ghost", holder="h", cost_nanousd=5000, tokens=0, model="m", outcome=b"x"
        )
        [drift] = [d for d in await reconcile.compare(book, [], ["rec-over"])]
        assert drift.drift_nanousd == 5000
        assert await reconcile.correct(book, drift) == f"credited 5000 as {drift.correction_id()}"
        again = await reconcile.correct(book, drift)
        assert again is not None and again.endswith("(written before)")
        state = await book.state("rec-over")
        assert state is not None and state.credits_nanousd == 5000
        history = await book.history("rec-over")
        assert [(e.kind, e.amount_nanousd) for e in history] == [("adjust", 5000)]
    finally:
        await book.close()
