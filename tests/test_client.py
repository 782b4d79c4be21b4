"""JobClient, ResultWaiter and SyncJobClient through the real broker: a stand-in worker
(or a real one) answers the jobs on the results topic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.events import CompletionSucceeded, encode_event, parse_event
from schemas.jobs import InvalidJob, UndecodableJob, parse_job
from tests.support import (
    Topics,
    answer,
    in_process_workers,
    jobs_on,
    nowhere,
    publish,
    read_all,
    succeeded,
    worker_env,
    write_models_file,
)
from worker.client import (
    JobClient,
    ResultWaiter,
    SubmitFailed,
    SyncJobClient,
    build_job,
    retry_delay_s,
)
from worker.dev.servers import EmbeddedKafka
from worker.errors import ConfigError, KafkaUnavailable
from worker.ledger import Budget, Ledger
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


def client_settings(kafka: EmbeddedKafka, topics: Topics) -> Settings:
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        jobs_topic=topics.jobs,
        results_topic=topics.results,
        model_timeout_s=30,
        lease_ms=60_000,
    )


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


@pytest.fixture
def topics(kafka: EmbeddedKafka) -> Topics:
    return Topics.fresh(kafka)


@pytest.fixture
async def waiter(kafka: EmbeddedKafka, topics: Topics) -> AsyncIterator[ResultWaiter]:
    async with ResultWaiter(client_settings(kafka, topics)) as waiter:
        yield waiter


async def test_a_job_goes_out_keyed_by_user_and_its_first_event_wins_over_a_duplicate(
    kafka: EmbeddedKafka, topics: Topics, waiter: ResultWaiter
) -> None:
    job = build_job("alice:{x}", "gpt-4o-mini", "Hey, how's it going?", max_tokens=64)
    async with JobClient(client_settings(kafka, topics)) as client:
        assert await client.submit(job) == job.job_id

    [record] = await jobs_on(kafka, topics.jobs, 1)
    assert record.key == b"alice:{x}"
    assert parse_job(record.value) == job

    first, redelivered = succeeded(job, "w1"), succeeded(job, "w2")
    await publish(
        kafka,
        topics.results,
        [
            (b"x", b"not an event"),
            (job.job_id.encode(), encode_event(first)),
            (job.job_id.encode(), encode_event(redelivered)),
        ],
    )
    event = await waiter.wait(job.job_id, timeout_s=20)
    assert event.event_id == first.event_id
    assert event.worker_id == "w1"

    await until(lambda: waiter.duplicates >= 1)
    assert waiter.stats.duplicates == 1
    assert waiter.stats.events == 1
    assert waiter.stats.skipped == 1
    # Waiting again for a job answers its first event again, at once.
    assert (await waiter.wait(job.job_id, timeout_s=0.01)).event_id == first.event_id


async def test_many_jobs_resolve_each_to_its_own_event(
    kafka: EmbeddedKafka, topics: Topics, waiter: ResultWaiter
) -> None:
    async with JobClient(client_settings(kafka, topics)) as client:
        jobs = [build_job(f"user-{n % 3}", "gpt-4o-mini", f"question {n}") for n in range(30)]
        for job in jobs:
            await client.submit(job)
    waits = [asyncio.create_task(waiter.wait(job.job_id, timeout_s=30)) for job in jobs]
    await answer(kafka, topics, len(jobs), copies=2)
    events = await asyncio.gather(*waits)
    assert [event.job_id for event in events] == [job.job_id for job in jobs]
    await until(lambda: waiter.duplicates >= len(jobs))
    assert waiter.duplicates == len(jobs)


async def test_a_wait_without_an_event_times_out(waiter: ResultWaiter) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no-such-job"):
        await waiter.wait("no-such-job", timeout_s=0.5)
    assert time.monotonic() - started < 5


async def test_one_waiters_timeout_does_not_end_anothers_wait(
    kafka: EmbeddedKafka, topics: Topics, waiter: ResultWaiter
) -> None:
    job = build_job("bob", "gpt-4o-mini", "hello")
    patient = asyncio.create_task(waiter.wait(job.job_id, timeout_s=30))
    with pytest.raises(TimeoutError):
        await waiter.wait(job.job_id, timeout_s=0.2)
    await publish(kafka, topics.results, [(job.job_id.encode(), encode_event(succeeded(job)))])
    assert (await patient).job_id == job.job_id


async def test_a_waiter_started_after_the_event_finds_it_from_the_beginning(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    job = build_job("carol", "gpt-4o-mini", "hello")
    await publish(kafka, topics.results, [(job.job_id.encode(), encode_event(succeeded(job)))])
    settings = client_settings(kafka, topics)
    async with ResultWaiter(settings, start_at="beginning") as late:
        assert (await late.wait(job.job_id, timeout_s=20)).job_id == job.job_id
    async with ResultWaiter(settings) as from_end:
        with pytest.raises(TimeoutError):
            await from_end.wait(job.job_id, timeout_s=1)


async def test_an_invalid_job_is_refused_locally_with_the_workers_message(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    body = {
        "schema_version": 1,
        "job_id": "bad-1",
        "user_id": "dave",
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 0,
        "params": {"api_base": "https://evil.example"},
    }
    async with JobClient(client_settings(kafka, topics)) as client:
        with pytest.raises(InvalidJob) as refused:
            await client.submit(body)
        with pytest.raises(UndecodableJob, match="user_id"):
            await client.submit({**body, "user_id": "line\nbreak"})
    message = str(refused.value)
    assert "max_tokens" in message
    assert "params.api_base: not an allowed parameter" in message
    with pytest.raises(InvalidJob) as at_worker:
        parse_job(json.dumps(body).encode())
    assert message == str(at_worker.value)
    assert await read_all(kafka, topics.jobs, timeout_s=0.5) == []


def test_build_job_names_the_broken_field() -> None:
    with pytest.raises(InvalidJob, match=r"^max_tokens: "):
        build_job("erin", "gpt-4o-mini", "hi", max_tokens=0)
    with pytest.raises(InvalidJob, match="reply_to"):
        build_job("erin", "gpt-4o-mini", "hi", reply_to="not a topic!")
    with pytest.raises(InvalidJob, match=r"^params\.temperature: "):
        build_job("erin", "gpt-4o-mini", "hi", params={"temperature": float("nan")})
    with pytest.raises(UndecodableJob, match="UTF-8"):
        build_job("erin\ud800", "gpt-4o-mini", "hi")


async def test_submit_before_start_is_an_error(kafka: EmbeddedKafka, topics: Topics) -> None:
    client = JobClient(client_settings(kafka, topics))
    with pytest.raises(RuntimeError, match="start"):
        await client.submit(build_job("frank", "gpt-4o-mini", "hi"))


async def test_the_sync_client_submits_and_waits(kafka: EmbeddedKafka, topics: Topics) -> None:
    settings = client_settings(kafka, topics)
    sync = await asyncio.to_thread(SyncJobClient, settings)
    try:
        job = build_job("grace", "gpt-4o-mini", "hello")
        pending = asyncio.create_task(asyncio.to_thread(sync.submit_and_wait, job, 30))
        await answer(kafka, topics, 1, copies=2)
        event = await pending
        assert isinstance(event, CompletionSucceeded)
        assert event.job_id == job.job_id
        second = build_job("grace", "gpt-4o-mini", "again")
        assert await asyncio.to_thread(sync.submit, second) == second.job_id
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(sync.wait, second.job_id, 0.3)
    finally:
        await asyncio.to_thread(sync.close)
    with pytest.raises(RuntimeError, match="closed"):
        sync.submit(build_job("grace", "gpt-4o-mini", "late"))


@pytest.mark.timeout(90)
async def test_a_real_worker_answers_a_submitted_job(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> None:
    topics = Topics.fresh(kafka)
    env = worker_env(kafka, redis_url, write_models_file(tmp_path, fake_provider.url), topics)
    ledger = Ledger.from_url(redis_url)
    try:
        await ledger.set_budget("judy", Budget(limit_nanousd=50_000))
        settings = client_settings(kafka, topics)
        async with (
            in_process_workers(env),
            ResultWaiter(settings) as waiter,
            JobClient(settings) as client,
        ):
            jobs = [build_job("judy", "gpt-4o-mini", "Hey", max_tokens=16) for _ in range(8)]
            for job in jobs:
                await client.submit(job)
            events = [await waiter.wait(job.job_id, timeout_s=60) for job in jobs]
        spent = sum(e.cost_nanousd for e in events if isinstance(e, CompletionSucceeded))
        state = await ledger.state("judy")
        assert state is not None
        assert state.snapshot.spent_nanousd == spent <= 50_000
        assert {e.type for e in events} == {"completion.succeeded", "completion.rejected"}
    finally:
        await ledger.close()


# --- an unreachable broker ------------------------------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


async def test_a_waiter_or_a_client_for_an_unreachable_broker_says_which_broker() -> None:
    bootstrap = nowhere()
    settings = Settings(kafka_bootstrap=bootstrap, model_timeout_s=30, lease_ms=60_000)
    with pytest.raises(KafkaUnavailable, match=f"cannot reach Kafka at {bootstrap} ") as caught:
        await ResultWaiter(settings).start()
    assert caught.value.retryable
    with pytest.raises(SubmitFailed, match=f"cannot reach Kafka at {bootstrap} "):
        await JobClient(settings).start()


async def test_a_waiter_for_a_missing_topic_says_how_to_create_it(
    kafka: EmbeddedKafka,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap,
        results_topic=f"llm.results.{suffix}",
        model_timeout_s=30,
        lease_ms=60_000,
    )
    with pytest.raises(ConfigError, match="create it with `budget-worker topics create`"):
        await ResultWaiter(settings).start()
    with pytest.raises(ConfigError, match="reply_to topic is the producing service's own"):
        await ResultWaiter(settings, topic=f"llm.results.{suffix}.mine").start()


def test_the_sync_client_for_an_unreachable_broker_raises_and_leaves_nothing_open() -> None:
    result = run_python(
        "from worker.client import SyncJobClient\n"
        "from worker.errors import ConfigError, KafkaUnavailable\n"
        "from worker.settings import Settings\n"
        "try:\n"
        "    SyncJobClient(Settings())\n"
        "except KafkaUnavailable as exc:\n"
        "    print(exc)\n"
        "import gc; gc.collect()\n",
        BW_KAFKA_BOOTSTRAP=(bootstrap := nowhere()),
    )
    assert result.stdout.startswith(f"cannot reach Kafka at {bootstrap} "), result
    # aiokafka logs its attempts (the caller's logging decides where); nothing unclosed.
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_retry_delay_says_when_sending_a_job_again_can_help() -> None:
    examples = Path(__file__).parent.parent / "schemas" / "examples"
    rejected = json.loads((examples / "completion_rejected.json").read_text())
    assert retry_delay_s(parse_event(json.dumps(rejected))) == 51530.0
    rejected.update(retry_after_s=None, retryable=False)
    assert retry_delay_s(parse_event(json.dumps(rejected))) is None
    failed = json.loads((examples / "completion_failed.json").read_text())
    failed["retryable"] = True
    assert retry_delay_s(parse_event(json.dumps(failed))) == 0.0
    failed["retryable"] = False
    assert retry_delay_s(parse_event(json.dumps(failed))) is None
    succeeded = (examples / "completion_succeeded.json").read_text()
    assert retry_delay_s(parse_event(succeeded)) is None
