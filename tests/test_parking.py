"""Parked jobs (``on_budget_exceeded: wait``) through the real broker, Redis and the
fake provider: parked jobs hold no slot and no offset, survive a worker restart, and
run once when the period resets or a grant arrives; a wait that runs out is answered
``budget_exceeded`` with when the budget resets; ``reject`` jobs are refused at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support import (
    MODEL,
    InProcessWorker,
    Topics,
    in_process_workers,
    job,
    produce,
    read_all,
    settings_from,
    spent,
    until_metric,
    wait_for_events,
    worker_env,
    write_models_file,
)
from worker.dev.servers import EmbeddedKafka
from worker.ledger import Budget, Grant, Ledger
from worker.parking import next_check

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 3
ONE_JOB_FITS = 20_000  # nano-USD: a test job's estimate is 15,000


@dataclass
class Park:
    kafka: EmbeddedKafka
    topics: Topics
    env: dict[str, str]
    ledger: Ledger

    async def spend_all(self, user: str, amount: int) -> None:
        """Spend ``amount`` for ``user`` outside the worker (another service's call)."""
        book = self.ledger
        await book.reserve(
            user, f"filler-{user}", cost_nanousd=amount, tokens=1, lease_ms=60_000, holder="h"
        )
        await book.settle(
            user,
            f"filler-{user}",
            holder="h",
            cost_nanousd=amount,
            tokens=1,
            model=MODEL,
            outcome=b"{}",
        )

    async def committed(self) -> int:
        """Records of the jobs topic the group has committed, over all partitions."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap,
            group_id=self.env["BW_GROUP_ID"],
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            total = 0
            for p in range(PARTITIONS):
                total += await consumer.committed(TopicPartition(self.topics.jobs, p)) or 0
            return total
        finally:
            await consumer.stop()

    async def until_committed(self, count: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while (done := await self.committed()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{done} records committed, wanted {count}")

    async def parked(self) -> int:
        return await self.ledger.park_list().count()


@pytest.fixture
async def park(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> AsyncIterator[Park]:
    topics = Topics.fresh(kafka, partitions=PARTITIONS)
    models = write_models_file(tmp_path, fake_provider.url)
    env = worker_env(kafka, redis_url, models, topics, lease_ms=4000, park_poll_max_s=0.5)
    ledger = Ledger.from_url(redis_url)
    try:
        yield Park(kafka, topics, env, ledger)
    finally:
        await ledger.close()


def waiting(job_id: str, user: str, **fields: Any) -> dict[str, Any]:
    return job(job_id, user, on_budget_exceeded="wait", **fields)


async def test_parked_jobs_survive_a_restart_and_run_once_after_a_reset_and_a_grant(
    park: Park,
) -> None:
    """A rolling budget spent to its cap and a prepaid user out of credit: their waiting
    jobs are parked, their records committed, and they hold no slot (another user's job
    runs with one slot in all). A new worker takes over the park; a grant runs one job,
    the window's reset the other, each once, charged once."""
    await park.ledger.set_budget("rolling", Budget(ONE_JOB_FITS, "rolling", window_s=10))
    window_start = datetime.now(UTC)
    await park.spend_all("rolling", ONE_JOB_FITS)
    await park.ledger.set_budget("prepaid", Budget(None, "none"))
    await park.ledger.grant("prepaid", Grant("first", ONE_JOB_FITS))
    await park.spend_all("prepaid", ONE_JOB_FITS)
    await park.ledger.set_budget("other", Budget(10**9))
    env = {**park.env, "BW_MAX_IN_FLIGHT": "1"}
    jobs = [waiting("wait-reset", "rolling"), waiting("wait-grant", "prepaid")]
    async with in_process_workers(env) as (first,):
        await produce(park.kafka, park.topics.jobs, jobs)
        await until_metric(first, "bw_park_jobs_total", lambda n: n == 2, {"event": "parked"})
        await park.until_committed(2)
        await produce(park.kafka, park.topics.jobs, [job("not-waiting", "other")])
        other = await wait_for_events(park.kafka, park.topics.results, {"not-waiting"})
        assert other["not-waiting"][0]["type"] == "completion.succeeded"
        assert await park.parked() == 2
    # Nothing answered the parked jobs meanwhile.
    assert {r.key for r in await read_all(park.kafka, park.topics.results)} == {b"not-waiting"}
    second = InProcessWorker(
        settings_from({**env, "BW_WORKER_ID": "w-next", "BW_METRICS_PORT": "0"})
    )
    await second.start()
    try:
        await second.wait_ready()
        await until_metric(second, "bw_jobs_parked", lambda n: n == 2)
        await park.ledger.grant("prepaid", Grant("top-up", 10**6))
        ids = {"wait-reset", "wait-grant"}
        events = await wait_for_events(park.kafka, park.topics.results, ids, timeout_s=30)
        await until_metric(second, "bw_park_jobs_total", lambda n: n == 2, {"event": "resumed"})
        assert await park.parked() == 0
        assert await second.metric("bw_park_wait_seconds_count") == 2
    finally:
        await second.stop()
    events = await wait_for_events(park.kafka, park.topics.results, ids | {"not-waiting"})
    for job_id, user in (("wait-reset", "rolling"), ("wait-grant", "prepaid")):
        (event,) = events[job_id]  # one event, rescanned from offset 0
        assert event["type"] == "completion.succeeded"
        assert event["worker_id"] == "w-next"
        assert await spent(park.ledger, user) == event["cost_nanousd"] + (
            0 if user == "rolling" else ONE_JOB_FITS
        )
    reset_at = window_start + timedelta(seconds=10)
    assert datetime.fromisoformat(events["wait-reset"][0]["occurred_at"]) >= reset_at


async def test_a_wait_that_runs_out_is_rejected_with_when_the_budget_resets(park: Park) -> None:
    """A daily budget spent: a job waiting past BW_PARK_MAX_WAIT_S and one past its own
    deadline are rejected budget_exceeded with resets_at; a job that did not ask to
    wait is rejected at once, never parked."""
    await park.ledger.set_budget("spent", Budget(ONE_JOB_FITS, "daily"))
    await park.spend_all("spent", ONE_JOB_FITS)
    env = {**park.env, "BW_PARK_MAX_WAIT_S": "2.5"}
    async with in_process_workers(env) as (worker,):
        deadline = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        jobs = [
            waiting("wait-max", "spent"),
            waiting("wait-deadline", "spent", deadline=deadline),
            job("no-wait", "spent"),
        ]
        await produce(park.kafka, park.topics.jobs, jobs)
        at_once = await wait_for_events(park.kafka, park.topics.results, {"no-wait"})
        assert at_once["no-wait"][0]["reason"] == "budget_exceeded"
        await until_metric(worker, "bw_park_jobs_total", lambda n: n == 2, {"event": "parked"})
        events = await wait_for_events(park.kafka, park.topics.results, {j["job_id"] for j in jobs})
        await until_metric(worker, "bw_park_jobs_total", lambda n: n == 2, {"event": "expired"})
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    for job_id in ("wait-max", "wait-deadline"):
        (event,) = events[job_id]
        assert (event["type"], event["reason"], event["retryable"]) == (
            "completion.rejected",
            "budget_exceeded",
            True,
        )
        assert datetime.fromisoformat(event["resets_at"]).date() == tomorrow
        assert event["retry_after_s"] > 0
        assert "waited for budget" in event["detail"]
    assert await park.parked() == 0
    assert await spent(park.ledger, "spent") == ONE_JOB_FITS


def test_a_refused_job_is_checked_at_its_reset_or_its_poll_whichever_is_first() -> None:
    now = 1_000_000
    assert next_check(None, 1000, now + 60_000, now, 30_000) == (1000, 2000)
    assert next_check(0.2, 1000, now + 60_000, now, 30_000) == (250, 2000)
    assert next_check(None, 32_000, now + 60_000, now, 30_000) == (30_000, 30_000)
    assert next_check(None, 8000, now + 3000, now, 30_000) == (3000, 16_000)  # the wait's end
    assert next_check(None, 8000, now - 1, now, 30_000)[0] == 0
