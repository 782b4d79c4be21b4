"""``budget-worker topics create`` and the start-up check, against the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from tests.support import Topics as Names
from tests.support import WorkerProcess, in_process_workers, worker_env, write_models_file
from worker.cli import app
from worker.dev.servers import EmbeddedKafka, free_port
from worker.errors import ConfigError, KafkaUnavailable
from worker.ledger import Budget, Ledger
from worker.settings import Settings
from worker.topics import Topic, TopicState, check_topics, create_topics, refusal
from worker.topics_cli import describe_state

pytestmark = pytest.mark.timeout(90)


def fresh_names() -> Names:
    """Topic names nobody has created yet."""
    suffix = uuid.uuid4().hex[:10]
    return Names(f"jobs.{suffix}", f"llm.results.{suffix}", f"dlq.{suffix}", f"budget.{suffix}")


def env_of(kafka: EmbeddedKafka, names: Names) -> dict[str, str]:
    return {
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_JOBS_TOPIC": names.jobs,
        "BW_RESULTS_TOPIC": names.results,
        "BW_DLQ_TOPIC": names.dlq,
        "BW_BUDGET_EVENTS_TOPIC": names.budget_events,
    }


def settings_of(kafka: EmbeddedKafka, names: Names) -> Settings:
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        jobs_topic=names.jobs,
        results_topic=names.results,
        dlq_topic=names.dlq,
        budget_events_topic=names.budget_events,
    )


async def partitions_of(kafka: EmbeddedKafka, names: Names) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    await consumer.start()
    try:
        await consumer.topics()
        return {
            name: len(consumer.partitions_for_topic(name) or ())
            for name in (names.jobs, names.results, names.dlq, names.budget_events)
        }
    finally:
        await consumer.stop()


async def test_topics_create_makes_the_four_topics_once(kafka: EmbeddedKafka) -> None:
    names = fresh_names()
    env = env_of(kafka, names)
    first = await asyncio.to_thread(
        CliRunner().invoke, app, ["topics", "create", "--partitions", "4"], env=env
    )
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [
        f"created '{names.jobs}' (BW_JOBS_TOPIC): 4 partitions, replication factor 1",
        f"created '{names.results}' (BW_RESULTS_TOPIC): 4 partitions, replication factor 1",
        f"created '{names.dlq}' (BW_DLQ_TOPIC): 1 partition, replication factor 1",
        f"created '{names.budget_events}' (BW_BUDGET_EVENTS_TOPIC): 4 partitions, "
        "replication factor 1",
    ]
    assert await partitions_of(kafka, names) == {
        names.jobs: 4,
        names.results: 4,
        names.dlq: 1,
        names.budget_events: 4,
    }

    again = await asyncio.to_thread(
        CliRunner().invoke, app, ["topics", "create", "--partitions", "6"], env=env
    )
    assert again.exit_code == 0, again.output
    lines = again.stdout.splitlines()
    assert lines[0].startswith(f"'{names.jobs}' (BW_JOBS_TOPIC) exists: 4 partitions")
    assert "fewer than the 6 asked for" in lines[0]
    assert (
        lines[1]
        == f"'{names.results}' (BW_RESULTS_TOPIC) exists: 4 partitions, replication factor 1"
    )
    assert lines[2] == f"'{names.dlq}' (BW_DLQ_TOPIC) exists: 1 partition, replication factor 1"
    assert lines[3].startswith(f"'{names.budget_events}' (BW_BUDGET_EVENTS_TOPIC) exists")
    assert await partitions_of(kafka, names) == {
        names.jobs: 4,
        names.results: 4,
        names.dlq: 1,
        names.budget_events: 4,
    }


async def test_check_topics_names_each_missing_topic_and_the_command(
    kafka: EmbeddedKafka,
) -> None:
    names = fresh_names()
    settings = settings_of(kafka, names)
    with pytest.raises(ConfigError) as caught:
        await check_topics(settings)
    message = str(caught.value)
    for name, setting in [
        (names.jobs, "BW_JOBS_TOPIC"),
        (names.results, "BW_RESULTS_TOPIC"),
        (names.dlq, "BW_DLQ_TOPIC"),
        (names.budget_events, "BW_BUDGET_EVENTS_TOPIC"),
    ]:
        assert f"'{name}' ({setting})" in message
    assert "`budget-worker topics create`" in message
    assert f"Kafka at {kafka.bootstrap}" in message
    # The check itself must not create them (a broker may auto-create named topics).
    assert await partitions_of(kafka, names) == {
        names.jobs: 0,
        names.results: 0,
        names.dlq: 0,
        names.budget_events: 0,
    }

    kafka.create_topic(names.jobs)
    kafka.create_topic(names.results)
    with pytest.raises(ConfigError) as caught:
        await check_topics(settings)
    assert names.dlq in str(caught.value)
    assert names.jobs not in str(caught.value)

    states = await create_topics(settings, partitions=2)
    assert [(s.topic.name, s.created) for s in states] == [
        (names.jobs, False),
        (names.results, False),
        (names.dlq, True),
        (names.budget_events, True),
    ]
    await check_topics(settings)


async def test_an_unreachable_broker_is_kafka_unavailable_and_one_line() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    with pytest.raises(KafkaUnavailable, match=f"cannot reach Kafka at {bootstrap} "):
        await check_topics(Settings(kafka_bootstrap=bootstrap))
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["topics", "create", "--kafka-bootstrap", bootstrap]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach Kafka at {bootstrap} ")
    assert result.stderr.count("\n") == 1


def test_a_refusal_that_retrying_cannot_cure_is_a_config_error() -> None:
    settings = Settings(kafka_bootstrap="kafka:9092")
    topic = Topic("llm.jobs", "BW_JOBS_TOPIC", 12)
    refused = refusal(
        settings, topic, 38, "Replication factor: 3 larger than available brokers: 1."
    )
    assert isinstance(refused, ConfigError)
    assert str(refused) == (
        "Kafka at kafka:9092 (BW_KAFKA_SECURITY_PROTOCOL=PLAINTEXT) refused to create "
        "'llm.jobs' (BW_JOBS_TOPIC): InvalidReplicationFactorError: Replication factor: 3 "
        "larger than available brokers: 1."
    )
    assert isinstance(refusal(settings, topic, 7, None), KafkaUnavailable)  # timed out


def test_an_existing_jobs_topic_with_fewer_partitions_says_how_to_add_them() -> None:
    jobs = Topic("llm.jobs", "BW_JOBS_TOPIC", 12)
    line = describe_state(TopicState(jobs, created=False, partitions=3, replication_factor=1), 12)
    assert line == (
        "'llm.jobs' (BW_JOBS_TOPIC) exists: 3 partitions, replication factor 1; fewer than "
        "the 12 asked for: partitions can be added (kafka-topics.sh --alter --partitions N), "
        "never removed"
    )


@pytest.mark.timeout(150)
async def test_a_worker_refuses_to_start_without_its_topics_and_submit_works_after_create(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> None:
    names = fresh_names()
    env = worker_env(kafka, redis_url, write_models_file(tmp_path, fake_provider.url), names)
    refused = WorkerProcess(env, tmp_path / "refused.log", "w-refused")
    refused.start()
    try:
        assert await refused.wait(timeout_s=60) == 2
    finally:
        refused.kill()  # a worker that did start must not outlive the test
    (error,) = refused.log().splitlines()
    assert error.startswith(f"error: Kafka at {kafka.bootstrap} ")
    assert f"'{names.jobs}' (BW_JOBS_TOPIC)" in error
    assert f"'{names.results}' (BW_RESULTS_TOPIC)" in error
    assert "`budget-worker topics create`" in error

    submit = ["submit", "--user", "ana", "--model", "gpt-4o-mini", "--prompt", "Hi", "--wait"]
    submit += ["--timeout", "60"]
    cli_env = {**env_of(kafka, names), "BW_MODEL_TIMEOUT_S": "10"}
    before = await asyncio.to_thread(CliRunner().invoke, app, submit, env=cli_env)
    assert before.exit_code == 1
    assert f"the results topic '{names.results}' does not exist" in before.stderr
    assert "budget-worker topics create" in before.stderr

    created = await asyncio.to_thread(
        CliRunner().invoke, app, ["topics", "create", "--partitions", "2"], env=cli_env
    )
    assert created.exit_code == 0, created.output
    ledger = Ledger.from_url(redis_url)
    try:
        await ledger.set_budget("ana", Budget(limit_nanousd=10**9))
    finally:
        await ledger.close()
    async with in_process_workers(env):
        after = await asyncio.to_thread(CliRunner().invoke, app, submit, env=cli_env)
    assert after.exit_code == 0, after.output
    event = json.loads(after.stdout.partition("\n")[2])
    assert event["type"] == "completion.succeeded"
