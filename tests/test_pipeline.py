"""The whole pipeline end to end, through the real broker, Redis and the fake provider
over HTTP: jobs in, events out.

Most tests run the worker in-process (``serve()`` in a task: the same code as
``budget-worker run``, without seconds of interpreter start and litellm import). The
tests about processes (a SIGKILL and its redelivery, three processes in one group,
SIGTERM's exit code) start real ``budget-worker run`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support import (
    Topics,
    captured_logs,
    in_process_workers,
    job,
    produce,
    read_all,
    spent,
    until,
    until_assigned,
    until_metric,
    wait_for_events,
    worker_env,
    workers,
    write_models_file,
)
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis
from worker.keys import user_keys
from worker.ledger import Budget, Ledger

pytestmark = pytest.mark.timeout(180)


@dataclass
class Pipeline:
    kafka: EmbeddedKafka
    topics: Topics
    env: dict[str, str]
    ledger: Ledger
    fake: Any
    directory: Path
    redis_url: str

    async def set_budgets(self, users: list[str], limit_nanousd: int, **kwargs: Any) -> None:
        for user in users:
            await self.ledger.set_budget(user, Budget(limit_nanousd=limit_nanousd, **kwargs))


@pytest.fixture
async def pipeline(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    topics = Topics.fresh(kafka, partitions=3)
    models = write_models_file(tmp_path, fake_provider.url)
    env = worker_env(kafka, redis_url, models, topics, lease_ms=4000, model_timeout_s=2)
    ledger = Ledger.from_url(redis_url)
    try:
        yield Pipeline(kafka, topics, env, ledger, fake_provider, tmp_path, redis_url)
    finally:
        await ledger.close()


def by_type(events: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for items in events.values():
        grouped.setdefault(items[0]["type"], []).append(items[0])
    return grouped


def first_costs(events: dict[str, list[dict[str, Any]]], user: str) -> int:
    return sum(
        items[0]["cost_nanousd"]
        for items in events.values()
        if items[0]["user_id"] == user and items[0]["type"] == "completion.succeeded"
    )


async def test_budgets_run_out_and_the_ledger_equals_the_charged_events(
    pipeline: Pipeline,
) -> None:
    users = [f"user-{i}" for i in range(4)]
    await pipeline.set_budgets(users, limit_nanousd=60_000)
    jobs = [job(f"e2e-{u}-{n}", u) for u in users for n in range(10)]
    others = [
        job("e2e-no-budget", "stranger"),
        job("e2e-expired", users[0], deadline="2020-01-01T00:00:00Z"),
    ]
    async with in_process_workers(pipeline.env):
        await produce(pipeline.kafka, pipeline.topics.jobs, [*jobs, *others])
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in [*jobs, *others]}
        )
    assert events.pop("e2e-no-budget")[0]["reason"] == "no_budget"
    assert events.pop("e2e-expired")[0]["reason"] == "expired"
    kinds = by_type(events)
    assert kinds["completion.succeeded"], "some jobs fit the budget"
    refused = kinds["completion.rejected"]
    assert refused and {e["reason"] for e in refused} == {"budget_exceeded"}
    for event in refused:
        assert event["estimated_cost_nanousd"] > event["budget"]["remaining_nanousd"]
    for user in users:
        state = await pipeline.ledger.state(user)
        assert state is not None
        assert state.snapshot.spent_nanousd <= 60_000
        assert state.snapshot.reserved_nanousd == 0
        assert state.snapshot.spent_nanousd == first_costs(events, user)


async def test_a_runs_jobs_share_its_cap_and_the_rest_flows_back_on_close(
    pipeline: Pipeline,
) -> None:
    """Twenty concurrent jobs of one run with room for a few: the run's spend never passes
    its cap, the user is charged exactly what the run spent, a job after the run is
    closed is refused by the run, and the unused hold is back in the user's budget."""
    user, cap = "agent-user", 50_000
    await pipeline.set_budgets([user], limit_nanousd=10_000_000_000)
    the_run = {"id": "task-1", "cap_nanousd": cap}
    jobs = [job(f"run-{n}", user, run=the_run) for n in range(20)]
    async with in_process_workers(pipeline.env):
        await produce(pipeline.kafka, pipeline.topics.jobs, jobs)
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in jobs}
        )
        kinds = by_type(events)
        assert kinds["completion.succeeded"] and kinds["completion.rejected"]
        for event in kinds["completion.rejected"]:
            assert (event["reason"], event["scope"]) == ("budget_exceeded", f"run:{user}/task-1")
        for event in kinds["completion.succeeded"]:
            assert event["budget"]["limit_nanousd"] == cap  # the run's snapshot
        charged = first_costs(events, user)
        assert 0 < charged <= cap
        state = await pipeline.ledger.run_state(user, "task-1")
        assert state is not None and state.spent_nanousd == charged
        await pipeline.ledger.close_run(user, "task-1")
        late = job("run-late", user, run=the_run)
        await produce(pipeline.kafka, pipeline.topics.jobs, [late])
        answer = await wait_for_events(pipeline.kafka, pipeline.topics.results, {"run-late"})
    refused = answer["run-late"][0]
    assert (refused["reason"], refused["scope"]) == ("budget_exceeded", f"run:{user}/task-1")
    assert "closed" in refused["detail"]
    user_state = await pipeline.ledger.state(user)
    assert user_state is not None
    assert (user_state.snapshot.spent_nanousd, user_state.snapshot.reserved_nanousd) == (
        charged,
        0,
    )


async def test_rate_limited_jobs_wait_without_blocking_other_users(pipeline: Pipeline) -> None:
    """RPM 30: a burst of 30, then one request every 2 s. Jobs past the burst wait
    (holding no reservation and no in-flight slot) up to max_wait_s, or are refused."""
    await pipeline.set_budgets(["limited"], limit_nanousd=10_000_000_000, rpm=30)
    await pipeline.set_budgets(["free"], limit_nanousd=10_000_000_000)
    burst = [job(f"rate-{n}", "limited", max_wait_s=6) for n in range(32)]
    impatient = job("rate-impatient", "limited", max_wait_s=0)
    env = {**pipeline.env, "BW_MAX_IN_FLIGHT": "4"}
    async with in_process_workers(env) as (worker,):
        await produce(pipeline.kafka, pipeline.topics.jobs, burst)
        # The burst is admitted; the jobs past it wait.
        await until_metric(worker, "bw_jobs_waiting_rate_limit", lambda waiting: waiting >= 1)
        await produce(pipeline.kafka, pipeline.topics.jobs, [impatient, job("rate-free", "free")])
        events = await wait_for_events(
            pipeline.kafka,
            pipeline.topics.results,
            {j["job_id"] for j in burst} | {"rate-impatient", "rate-free"},
        )
    assert {events[j["job_id"]][0]["type"] for j in burst} == {"completion.succeeded"}
    refused = events["rate-impatient"][0]
    assert (refused["reason"], refused["retry_after_s"] > 0) == ("rate_limited", True)
    # The other user's job finished while the limited user's jobs were still waiting.
    last_waiter = max(events[j["job_id"]][0]["occurred_at"] for j in burst)
    assert events["rate-free"][0]["occurred_at"] < last_waiter


async def test_three_worker_processes_share_partitions_and_budgets(pipeline: Pipeline) -> None:
    users = [f"shared-{i}" for i in range(9)]
    await pipeline.set_budgets(users, limit_nanousd=50_000)
    pipeline.fake.update_config(latency_s=0.05)
    jobs = [job(f"three-{u}-{n}", u) for u in users for n in range(8)]
    async with workers(pipeline.env, pipeline.directory, count=3) as procs:
        await until_assigned(procs, partitions=3)
        await produce(pipeline.kafka, pipeline.topics.jobs, jobs)
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in jobs}
        )
    assert len({items[0]["worker_id"] for items in events.values()}) == 3
    for user in users:
        assert await spent(pipeline.ledger, user) <= 50_000
        assert await spent(pipeline.ledger, user) == first_costs(events, user)


async def test_a_killed_workers_jobs_are_answered_within_20_s_charged_once(
    pipeline: Pipeline,
) -> None:
    """Three workers under load with the default lease; one is SIGKILLed mid-call. Its
    calls are redelivered and made again elsewhere; every job is answered within 20 s of
    the kill (the lease brings its money back), charged once, nobody over budget."""
    users = [f"kill-{i}" for i in range(6)]
    budget = 2_000_000
    await pipeline.set_budgets(users, limit_nanousd=budget)
    pipeline.fake.update_config(latency_s=0.5)
    jobs = [job(f"kill-{u}-{n}", u) for u in users for n in range(12)]
    env = {k: v for k, v in pipeline.env.items() if k not in ("BW_LEASE_MS", "BW_MODEL_TIMEOUT_S")}
    async with workers(env, pipeline.directory, count=3) as procs:
        await until_assigned(procs, partitions=3)
        await produce(pipeline.kafka, pipeline.topics.jobs, jobs)
        await until_metric(procs[0], "bw_jobs_in_flight", lambda running: running >= 1)
        held = await until_held(pipeline.redis_url, "w0")
        procs[0].kill()
        killed_at = time.time()
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in jobs}, timeout_s=60
        )
    last = max(_at(items[0]) for items in events.values())
    assert last - killed_at <= 20, f"the last job was answered {last - killed_at:.1f} s after"
    assert {items[0]["type"] for items in events.values()} == {"completion.succeeded"}
    # The jobs the killed worker held were redelivered and answered by the others.
    assert held and {events[job_id][0]["worker_id"] for job_id in held} <= {"w1", "w2"}
    # The redelivery happened in the ledger too: each of those jobs was reserved again
    # by a second holder (a survivor), which settled it; w0 never settled any of them.
    holders = await job_holders(pipeline.redis_url, events, held)
    for job_id, (holder, charged) in holders.items():
        assert holder.split(":")[0] in {"w1", "w2"}, (job_id, holder)
        assert charged == [holder], (job_id, charged)
    for user in users:
        state = await pipeline.ledger.state(user)
        assert state is not None
        assert state.snapshot.spent_nanousd == first_costs(events, user) <= budget
        assert state.snapshot.reserved_nanousd == 0
    for items in events.values():
        assert len({e["cost_nanousd"] for e in items}) == 1


async def job_holders(
    redis_url: str, events: dict[str, list[dict[str, Any]]], job_ids: set[str]
) -> dict[str, tuple[str, list[str]]]:
    """For each job: the holder its ledger record names, and the holders it charged
    (its per-holder charge markers ``c:<holder>``)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = {}
        for job_id in job_ids:
            record = await client.hgetall(user_keys(events[job_id][0]["user_id"]).job(job_id))
            charged = sorted(field[2:] for field in record if field.startswith("c:"))
            found[job_id] = (record.get("holder", ""), charged)
        return found
    finally:
        await client.aclose()


async def until_held(redis_url: str, worker_id: str) -> set[str]:
    """The jobs whose live reservation ``worker_id`` holds, once there are some."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(600):
            held = set()
            async for key in client.scan_iter("bw:*:job:*"):
                state, holder = await client.hmget(key, "state", "holder")
                if state == b"reserved" and (holder or b"").startswith(worker_id.encode() + b":"):
                    held.add(key.decode().rsplit(":job:", 1)[1])
            if held:
                return held
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    raise AssertionError(f"{worker_id} never held a reservation")


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["occurred_at"]).timestamp()


async def test_redis_outage_pauses_without_model_calls_and_loses_nothing(
    kafka: EmbeddedKafka, private_redis: EmbeddedRedis, fake_provider: Any, tmp_path: Path
) -> None:
    topics = Topics.fresh(kafka)
    env = worker_env(
        kafka,
        private_redis.url,
        write_models_file(tmp_path, fake_provider.url),
        topics,
        default_budget_usd="1000",
        lease_ms=4000,
        model_timeout_s=2,
    )
    jobs = [job(f"outage-{n}", f"user-{n % 5}") for n in range(60)]
    async with in_process_workers(env) as (worker,):
        await produce(kafka, topics.jobs, jobs[:20])
        await wait_for_events(kafka, topics.results, {j["job_id"] for j in jobs[:20]})
        private_redis.stop()
        await until_metric(worker, "bw_redis_up", lambda up: up == 0)
        calls_at_stop = fake_provider.stats.requests_total
        await produce(kafka, topics.jobs, jobs[20:])
        # That nothing happens needs a window: ten of the gate's retries (0.2 s each)
        # while the jobs are on the topic and Redis is down.
        await asyncio.sleep(2)
        assert fake_provider.stats.requests_total == calls_at_stop, "a model call without Redis"
        private_redis.start()
        events = await wait_for_events(kafka, topics.results, {j["job_id"] for j in jobs})
    assert {items[0]["type"] for items in events.values()} == {"completion.succeeded"}


async def test_a_broker_restart_is_survived(pipeline: Pipeline) -> None:
    """Tansu keeps data in memory: a restart loses its topics and group state (the
    broker's own loss). The worker reconnects and serves the jobs sent afterwards."""
    users = ["restart-user"]
    await pipeline.set_budgets(users, limit_nanousd=10_000_000_000)
    before = [job(f"before-{n}", users[0]) for n in range(5)]
    after = [job(f"after-{n}", users[0]) for n in range(5)]
    async with in_process_workers(pipeline.env):
        await produce(pipeline.kafka, pipeline.topics.jobs, before)
        await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in before}
        )
        pipeline.kafka.restart()
        pipeline.topics.create(pipeline.kafka, 3)
        # The worker is back once it answers a probe sent after the restart (one at a
        # time: a batch sent before it rejoined could sit below its old position).
        for probe in range(120):
            body = job(f"probe-{probe}", users[0])
            await produce(pipeline.kafka, pipeline.topics.jobs, [body])
            with contextlib.suppress(TimeoutError):
                await wait_for_events(
                    pipeline.kafka, pipeline.topics.results, {body["job_id"]}, timeout_s=1
                )
                break
        await produce(pipeline.kafka, pipeline.topics.jobs, after)
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in after}, timeout_s=120
        )
    assert {events[j["job_id"]][0]["type"] for j in after} == {"completion.succeeded"}


async def test_a_provider_429_storm_ends_in_failed_events_holding_nothing(
    pipeline: Pipeline,
) -> None:
    await pipeline.set_budgets(["storm"], limit_nanousd=10_000_000_000)
    pipeline.fake.update_config(rate_429=1.0)
    jobs = [job(f"storm-{n}", "storm") for n in range(6)]
    env = {**pipeline.env, "BW_MODEL_MAX_RETRIES": "2"}
    async with in_process_workers(env):
        await produce(pipeline.kafka, pipeline.topics.jobs, jobs)
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in jobs}
        )
    for items in events.values():
        event = items[0]
        assert event["type"] == "completion.failed"
        assert event["retryable"] is True
        assert event["attempts"] == 3
        assert event["cost_nanousd"] == 0
    assert pipeline.fake.stats.requests_total == 3 * len(jobs)
    state = await pipeline.ledger.state("storm")
    assert state is not None
    assert (state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd) == (0, 0)


async def test_poison_and_hostile_input_never_stop_the_loop(pipeline: Pipeline) -> None:
    await pipeline.set_budgets(["good"], limit_nanousd=10_000_000_000)
    undecodable: list[tuple[bytes | None, bytes]] = [
        (b"k", b"not json at all"),
        (b"k", b"\xff\xfe\xfd invalid utf-8"),
        (b"k", b"[1, 2, 3]"),
        (b"k", json.dumps({"user_id": "x"}).encode()),  # no job_id: cannot be answered
        (b"k", b"{" * 5000),
        (b"k", b"x" * 10_000_000),  # 10 MB: over BW_MAX_JOB_BYTES
    ]
    invalid = [
        job("bad-types", "good", max_tokens="lots"),
        job("bad-field", "good", surprise=True),
        job("bad-reply", "good", reply_to="someone.elses.topic"),
        job("bad-param", "good", params={"api_base": "http://evil.example"}),
        job("bad-model", "good", model="no-such-model"),
    ]
    valid = job("after-poison", "good")
    async with in_process_workers(pipeline.env):
        await produce(pipeline.kafka, pipeline.topics.jobs, [*undecodable, *invalid, valid])
        events = await wait_for_events(
            pipeline.kafka,
            pipeline.topics.results,
            {j["job_id"] for j in invalid} | {"after-poison"},
        )
        dlq = await read_all(pipeline.kafka, pipeline.topics.dlq)
    reasons = {job_id: items[0].get("reason") for job_id, items in events.items()}
    assert reasons == {
        "bad-types": "invalid_job",
        "bad-field": "invalid_job",
        "bad-reply": "invalid_job",
        "bad-param": "invalid_job",
        "bad-model": "unknown_model",
        "after-poison": None,
    }
    assert events["after-poison"][0]["type"] == "completion.succeeded"
    assert len(dlq) == len(undecodable)
    for record in dlq:
        headers = dict(record.headers)
        assert set(headers) >= {
            "error.type",
            "error.message",
            "source.topic",
            "source.partition",
            "source.offset",
        }
        assert headers["source.topic"].decode() == pipeline.topics.jobs
    assert sorted(r.value for r in dlq) == sorted(v for _, v in undecodable)


async def test_a_redelivered_finished_job_republishes_without_a_model_call(
    pipeline: Pipeline,
) -> None:
    await pipeline.set_budgets(["again"], limit_nanousd=10_000_000_000)
    once = job("only-once", "again")
    async with in_process_workers(pipeline.env):
        await produce(pipeline.kafka, pipeline.topics.jobs, [once])
        await wait_for_events(pipeline.kafka, pipeline.topics.results, {"only-once"})
        calls = pipeline.fake.stats.requests_total
        await produce(pipeline.kafka, pipeline.topics.jobs, [once])
        events = await wait_for_events(
            pipeline.kafka, pipeline.topics.results, {"only-once"}, each=2
        )
    first, second = events["only-once"]
    assert pipeline.fake.stats.requests_total == calls
    assert first["type"] == second["type"] == "completion.succeeded"
    assert first["cost_nanousd"] == second["cost_nanousd"]
    assert first["response"] == second["response"]
    assert await spent(pipeline.ledger, "again") == first["cost_nanousd"]


async def test_sigterm_drains_and_exits_zero(pipeline: Pipeline) -> None:
    await pipeline.set_budgets(["term"], limit_nanousd=10_000_000_000)
    pipeline.fake.update_config(latency_s=1.5)
    jobs = [job(f"term-{n}", "term") for n in range(4)]
    async with workers(pipeline.env, pipeline.directory) as procs:
        await produce(pipeline.kafka, pipeline.topics.jobs, jobs)
        await until(lambda: pipeline.fake.stats.requests_received >= 1, 60)  # mid-call
        procs[0].send_signal(signal.SIGTERM)
        assert await procs[0].wait() == 0
    events = await wait_for_events(
        pipeline.kafka, pipeline.topics.results, {j["job_id"] for j in jobs}, timeout_s=5
    )
    assert len(events) == len(jobs)
    state = await pipeline.ledger.state("term")
    assert state is not None and state.snapshot.reserved_nanousd == 0


async def test_prompts_are_logged_only_when_the_debug_flag_is_on(
    pipeline: Pipeline, capfd: pytest.CaptureFixture[str]
) -> None:
    """What the worker writes (its log lines and anything printed), quiet and loud."""
    await pipeline.set_budgets(["debug"], limit_nanousd=10_000_000_000)
    quiet = {**pipeline.env, "BW_GROUP_ID": "quiet"}
    loud = {**pipeline.env, "BW_DEBUG_LOG_PROMPTS": "true", "BW_GROUP_ID": "loud"}
    logs = {}
    capfd.readouterr()
    for name, env, job_id in (("quiet", quiet, "debug-quiet"), ("loud", loud, "debug-loud")):
        with captured_logs() as lines:
            async with in_process_workers(env):
                await produce(
                    pipeline.kafka,
                    pipeline.topics.jobs,
                    [job(job_id, "debug", prompt="PROMPT-TEXT-7f3")],
                )
                await wait_for_events(pipeline.kafka, pipeline.topics.results, {job_id})
        printed = capfd.readouterr()
        logs[name] = "\n".join([*lines, printed.out, printed.err])
    assert '"job_id": "debug-quiet"' in logs["quiet"], "the log was captured"
    assert "PROMPT-TEXT-7f3" not in logs["quiet"]
    assert "PROMPT-TEXT-7f3" in logs["loud"]
    assert "BW_DEBUG_LOG_PROMPTS is on" in logs["loud"]
