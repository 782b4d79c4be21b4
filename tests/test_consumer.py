"""The consumer, in-process against the real broker and Redis with a scripted model:
what it publishes for every record, and what a shutdown waits for."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import (
    InProcess,
    Topics,
    in_process,
    job,
    produce,
    read_all,
    spent,
    until,
    wait_for_events,
)
from worker import tracing
from worker.consumer import JobConsumer
from worker.dev.doubles import Call, ScriptedProvider, answer
from worker.dev.servers import EmbeddedKafka
from worker.ledger import Budget
from worker.publisher import KafkaPublisher


@dataclass
class Running:
    rig: InProcess
    consumer: JobConsumer
    topics: Topics
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def consuming(
    kafka: EmbeddedKafka, redis_url: str, provider: ScriptedProvider, **settings: Any
) -> AsyncIterator[Running]:
    topics = Topics.fresh(kafka, partitions=1)
    rig = in_process(
        redis_url,
        provider,
        kafka_bootstrap=kafka.bootstrap,
        jobs_topic=topics.jobs,
        results_topic=topics.results,
        dlq_topic=topics.dlq,
        group_id=f"g-{topics.jobs}",
        kafka_session_timeout_ms=3_000,
        **settings,
    )
    await rig.ledger.set_budget("alice", Budget(10**12, "none"))
    publisher = KafkaPublisher(rig.settings)
    await publisher.start()
    rig.gate.opened()
    consumer = JobConsumer(rig.settings, rig.jobs, publisher, rig.gate, rig.metrics)
    task = asyncio.create_task(consumer.run())
    try:
        yield Running(rig, consumer, topics, task)
    finally:
        consumer.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await publisher.stop()
        await rig.close()


def incompressible(size: int) -> str:
    return base64.b64encode(os.urandom(size)).decode()


async def test_an_event_too_large_even_compressed_is_answered_failed_with_its_charge(
    kafka: EmbeddedKafka, redis_url: str
) -> None:
    """Today such an event is retried for ever and its partition never moves on."""
    huge = incompressible(20_000)
    provider = ScriptedProvider(lambda call: answer(100, 40, text=huge))
    async with consuming(kafka, redis_url, provider, max_event_bytes=8_000) as running:
        await produce(kafka, running.topics.jobs, [job("big", "alice"), job("after", "alice")])
        events = await wait_for_events(kafka, running.topics.results, {"big", "after"})
        charged = await spent(running.rig.ledger, "alice")
    (big,) = events["big"]
    assert (big["type"], big["error_type"], big["retryable"]) == (
        "completion.failed",
        "event_too_large",
        False,
    )
    assert big["cost_nanousd"] > 0 and "Charged" in big["error"]
    assert charged == big["cost_nanousd"] + events["after"][0]["cost_nanousd"]


async def test_a_shutdown_waits_for_jobs_of_partitions_revoked_while_they_ran(
    kafka: EmbeddedKafka, redis_url: str
) -> None:
    """Today a rebalance's drain forgets the jobs still running on revoked partitions,
    and the shutdown that follows does not wait for them: their calls are cut off."""
    release = asyncio.Event()

    async def slow(call: Call) -> Any:
        await release.wait()
        return answer()

    provider = ScriptedProvider(slow)
    async with consuming(kafka, redis_url, provider, drain_timeout_s=0.1) as running:
        await produce(kafka, running.topics.jobs, [job("long", "alice")])
        await provider.started.wait()
        await running.consumer.drain({TopicPartition(running.topics.jobs, 0)}, 0.1)
        running.consumer.stop()
        await asyncio.sleep(0.5)
        assert not running.task.done()  # still draining: the job is running
        release.set()
        await asyncio.wait_for(running.task, 30)
        assert provider.cancelled == 0
        await until(lambda: running.rig.metrics.jobs.labels("succeeded", "")._value.get() == 1)
    events = await wait_for_events(kafka, running.topics.results, {"long"})
    assert events["long"][0]["type"] == "completion.succeeded"


@pytest.mark.parametrize("bad", [b"not json", b'{"job_id": "x"}'])
async def test_a_record_that_is_not_a_job_goes_to_the_dlq_and_the_loop_goes_on(
    kafka: EmbeddedKafka, redis_url: str, bad: bytes
) -> None:
    provider = ScriptedProvider()
    async with consuming(kafka, redis_url, provider) as running:
        await produce(kafka, running.topics.jobs, [(b"k", bad), job("fine", "alice")])
        events = await wait_for_events(kafka, running.topics.results, {"fine"})
        await until(lambda: running.rig.metrics.dlq._value.get() == 1)
    assert events["fine"][0]["type"] == "completion.succeeded"


async def test_a_jobs_trace_continues_through_the_worker_to_its_event(
    kafka: EmbeddedKafka, redis_url: str
) -> None:
    """The job's W3C traceparent is the parent of the worker's spans, and the result
    event's record carries the trace on. No prompt text in any span."""
    exporter = InMemorySpanExporter()
    tracing.use(exporter, "budget-worker", "w-test")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    try:
        provider = ScriptedProvider()
        async with consuming(kafka, redis_url, provider) as running:
            body = json.dumps(job("traced", "alice", prompt="PROMPT-TEXT-55")).encode()
            await produce_with_headers(
                kafka, running.topics.jobs, body, [("traceparent", parent.encode())]
            )
            await wait_for_events(kafka, running.topics.results, {"traced"})
            (record,) = await read_all(kafka, running.topics.results)
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    names = {span.name for span in spans}
    assert {
        "bw.job",
        "bw.decode",
        "bw.reserve",
        "bw.model_call",
        "bw.settle",
        "bw.publish",
    } <= names
    assert {format(span.context.trace_id, "032x") for span in spans} == {trace_id}
    root = next(span for span in spans if span.name == "bw.job")
    assert root.attributes is not None and root.attributes["bw.outcome"] == "succeeded"
    assert "PROMPT-TEXT-55" not in repr([dict(span.attributes or {}) for span in spans])
    headers = dict(record.headers)
    assert headers["traceparent"].decode().split("-")[1] == trace_id


async def test_with_tracing_off_the_jobs_trace_headers_pass_on_to_its_event(
    kafka: EmbeddedKafka, redis_url: str
) -> None:
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert not tracing.enabled()
    async with consuming(kafka, redis_url, ScriptedProvider()) as running:
        body = json.dumps(job("plain", "alice")).encode()
        await produce_with_headers(kafka, running.topics.jobs, body, [("traceparent", parent)])
        await wait_for_events(kafka, running.topics.results, {"plain"})
        (record,) = await read_all(kafka, running.topics.results)
    assert dict(record.headers)["traceparent"] == parent


async def produce_with_headers(
    kafka: EmbeddedKafka, topic: str, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"alice", headers=headers)
    finally:
        await producer.stop()
