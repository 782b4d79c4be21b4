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
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from schemas.events import BudgetSnapshot as EventBudget
from schemas.events import CompletionSucceeded, Usage, encode_event
from schemas.jobs import CompletionJob, InvalidJob, UndecodableJob, parse_job
from tests.support import Topics, in_process_workers, read_all, worker_env, write_models_file
from worker.cli import app
from worker.client import JobClient, ResultWaiter, SubmitFailed, SyncJobClient, build_job
from worker.dev.servers import EmbeddedKafka, free_port
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


def succeeded(job: CompletionJob, worker_id: str = "stand-in") -> CompletionSucceeded:
    return CompletionSucceeded(
        job_id=job.job_id,
        user_id=job.user_id,
        model=job.model,
        metadata=job.metadata,
        worker_id=worker_id,
        response={"id": "chatcmpl-1", "object": "chat.completion", "choices": []},
        usage=Usage(prompt_tokens=14, completion_tokens=40, total_tokens=54),
        cost_nanousd=26_100,
        budget=EventBudget(limit_nanousd=200_000, spent_nanousd=26_100, remaining_nanousd=173_900),
        attempts=1,
    )


async def publish(kafka: EmbeddedKafka, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)


async def jobs_on(kafka: EmbeddedKafka, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of the jobs topic, waiting for them."""
    deadline = time.monotonic() + 20
    while True:
        records = await read_all(kafka, topic, timeout_s=0.3)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.1)


async def answer(kafka: EmbeddedKafka, topics: Topics, count: int, copies: int = 1) -> None:
    """A stand-in worker: publish each job's event ``copies`` times (a redelivery)."""
    records = await jobs_on(kafka, topics.jobs, count)
    events = [succeeded(parse_job(record.value)) for record in records]
    await publish(
        kafka,
        topics.results,
        [(e.job_id.encode(), encode_event(e)) for e in events for _ in range(copies)],
    )


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


async def test_submit_command_prints_the_job_id_and_the_event(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    env = {
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
        "BW_MODEL_TIMEOUT_S": "30",
    }
    args = ["submit", "--user", "heidi", "--model", "gpt-4o-mini", "--prompt", "Hi", "--wait"]
    run = asyncio.create_task(
        asyncio.to_thread(CliRunner().invoke, app, [*args, "--timeout", "30"], env=env)
    )
    await answer(kafka, topics, 1)
    result = await run
    assert result.exit_code == 0, result.output
    job_id, _, event_json = result.output.partition("\n")
    event = json.loads(event_json)
    assert event["job_id"] == job_id
    assert event["type"] == "completion.succeeded"


def test_submit_command_refuses_an_invalid_job_naming_the_field() -> None:
    result = CliRunner().invoke(
        app,
        ["submit", "--user", "ivan", "--model", "m", "--prompt", "hi", "--max-tokens", "0"],
        env={"BW_MODEL_TIMEOUT_S": "30", "BW_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
    )
    assert result.exit_code == 2
    assert "max_tokens" in result.output


@pytest.mark.parametrize("source", ["file", "stdin"])
async def test_submit_command_takes_a_prompt_too_long_for_an_argument(
    kafka: EmbeddedKafka, topics: Topics, tmp_path: Path, source: str
) -> None:
    # 300 KiB: over Linux's 128 KiB limit for one argument, under BW_MAX_PROMPT_CHARS.
    prompt = ("Grüße, ünïcode and a line break\n" * 10_000)[:300_000]
    path = tmp_path / "prompt.txt"
    path.write_bytes(prompt.encode("utf-8"))
    args = ["submit", "--user", "lee", "--model", "gpt-4o-mini", "--max-tokens", "8"]
    args += ["--prompt-file", str(path) if source == "file" else "-"]
    env = {
        **os.environ,
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
    }
    with path.open("rb") as stdin:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "worker.cli", *args],
            stdin=stdin if source == "stdin" else subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    [record] = await jobs_on(kafka, topics.jobs, 1)
    job = parse_job(record.value)
    assert job.job_id == result.stdout.decode().strip()
    assert job.messages[-1].content == prompt


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "exactly one of --prompt and --prompt-file"),
        (["--prompt", "hi", "--prompt-file", "-"], "exactly one of --prompt and --prompt-file"),
        (["--prompt-file", "/nonexistent/prompt.txt"], "cannot read /nonexistent/prompt.txt"),
        (["--prompt-file", "-"], "standard input is not UTF-8 text (byte 1)"),
    ],
)
def test_submit_command_refuses_a_prompt_it_cannot_take(args: list[str], says: str) -> None:
    result = CliRunner().invoke(
        app,
        ["submit", "--user", "mo", "--model", "m", *args],
        input=b"h\xffi",
        env={"BW_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
    )
    assert result.exit_code == 2
    assert says in " ".join(result.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


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


def nowhere() -> str:
    """A loopback address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


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


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
def test_submit_command_with_an_unreachable_broker_prints_one_line(wait: bool) -> None:
    bootstrap = nowhere()
    args = ["submit", "--user", "kim", "--model", "gpt-4o-mini", "--prompt", "Hi"]
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args, *(["--wait"] if wait else [])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BW_KAFKA_BOOTSTRAP": bootstrap},
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach Kafka at {bootstrap} "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
