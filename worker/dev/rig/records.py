"""Records in and events out, always read from offset 0 (a tailing consumer of the
embedded broker was seen to miss a record that a rescan found).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.dev.rig.setup import MODEL, bootstrap_of
from worker.dev.servers import EmbeddedKafka

# --- jobs in, events out -----------------------------------------------------------------------


def job(
    job_id: str, user_id: str, prompt: str = "Hey, how's it going?", **fields: Any
) -> dict[str, Any]:
    """A job's JSON body for ``MODEL`` (``max_tokens`` 16 unless given)."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "job_id": job_id,
        "user_id": user_id,
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
    }
    body.update(fields)
    return body


async def produce(
    kafka: EmbeddedKafka | str,
    topic: str,
    records: Iterable[dict[str, Any] | tuple[bytes | None, bytes]],
) -> None:
    """Send job bodies (keyed by user id) or raw ``(key, value)`` records, and wait
    for the broker's acknowledgement of each."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_of(kafka), linger_ms=5, max_request_size=16_000_000
    )
    await producer.start()
    try:
        futures = []
        for record in records:
            if isinstance(record, dict):
                key, value = record["user_id"].encode(), json.dumps(record).encode()
            else:
                key, value = record
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(kafka: EmbeddedKafka | str, topic: str, *, timeout_s: float = 2.0) -> list[Any]:
    """Every record of ``topic`` from offset 0, once none arrived for ``timeout_s`` (a
    rescan: complete even where a live tailing consumer on this broker once missed a
    record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        idle_until = time.monotonic() + timeout_s
        while time.monotonic() < idle_until:
            batch = await consumer.getmany(timeout_ms=100)
            for items in batch.values():
                records.extend(items)
                idle_until = time.monotonic() + timeout_s
        return records
    finally:
        await consumer.stop()


async def wait_for_events(
    kafka: EmbeddedKafka | str,
    topic: str,
    job_ids: set[str],
    timeout_s: float = 60,
    *,
    each: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """Events by job id (in topic order), once every id in ``job_ids`` has at least
    ``each``."""
    deadline = time.monotonic() + timeout_s
    while True:
        events: dict[str, list[dict[str, Any]]] = {}
        for record in await read_all(kafka, topic, timeout_s=0.3):
            event = json.loads(record.value)
            events.setdefault(event["job_id"], []).append(event)
        missing = {job_id for job_id in job_ids if len(events.get(job_id, ())) < each}
        if not missing:
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} jobs without an event, e.g. {sorted(missing)[:5]}")
        await asyncio.sleep(0.2)
