"""The publisher against the real broker: an event past ``BW_MAX_EVENT_BYTES`` goes out
compressed, one too large even so is refused before it is sent, and a dead letter the
producer cannot take is written truncated, saying its size. (The consumer's answer to a
refused event, a small ``completion.failed``, is in test_consumer.py.)"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from tests.support import Topics, read_all
from worker.dev.servers import EmbeddedKafka
from worker.publisher import EventTooLarge, KafkaPublisher
from worker.settings import Settings


@pytest.fixture
def topics(kafka: EmbeddedKafka) -> Topics:
    return Topics.fresh(kafka, partitions=1)


async def started(
    kafka: EmbeddedKafka, topics: Topics, overrides: dict[str, Any] | None = None, **values: Any
) -> KafkaPublisher:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap=kafka.bootstrap,
        dlq_topic=topics.dlq,
        **values,
    )
    publisher = KafkaPublisher(settings, **(overrides or {}))
    await publisher.start()
    return publisher


async def test_a_large_event_goes_out_compressed_and_whole(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    text = ("all work and no play " * 5_000).encode()  # ~100 KB, compresses well
    publisher = await started(kafka, topics, max_event_bytes=20_000)
    try:
        await publisher.publish(topics.results, b"alice", text)
    finally:
        await publisher.stop()
    (record,) = await read_all(kafka, topics.results)
    assert record.value == text


async def test_an_event_too_large_even_compressed_is_refused_before_it_is_sent(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    value = base64.b64encode(os.urandom(20_000))  # incompressible
    publisher = await started(kafka, topics, max_event_bytes=8_000)
    try:
        with pytest.raises(EventTooLarge) as caught:
            await publisher.publish(topics.results, b"alice", value)
    finally:
        await publisher.stop()
    assert (caught.value.size_bytes, caught.value.limit_bytes) == (len(value), 8_000)
    assert await read_all(kafka, topics.results, timeout_s=0.5) == []


async def test_a_dead_letter_too_large_for_the_producer_is_written_truncated_with_its_size(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    value = b"x" * 200_000
    publisher = await started(
        kafka, topics, overrides={"max_request_size": 100_000}, max_job_bytes=4_096
    )
    try:
        await publisher.dead_letter(
            b"k",
            value,
            error_type="undecodable",
            error_message="the job is 200000 bytes",
            source_topic="jobs",
            source_partition=0,
            source_offset=7,
        )
    finally:
        await publisher.stop()
    (record,) = await read_all(kafka, topics.dlq)
    assert record.value == value[:4_096]
    headers = dict(record.headers)
    assert headers["value.truncated_from"] == b"200000"
    assert (headers["error.type"], headers["source.offset"]) == (b"undecodable", b"7")
