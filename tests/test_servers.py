"""The harness itself: real servers, reachable over TCP, restartable, cleaned up."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.dev.servers import EmbeddedKafka, EmbeddedRedis


async def test_job_json_round_trips_through_tansu_in_a_consumer_group(
    kafka: EmbeddedKafka, topic_name: str
) -> None:
    kafka.create_topic(topic_name, partitions=3)
    jobs = [{"job_id": f"j{i}", "user_id": f"u{i % 4}"} for i in range(12)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for job in jobs:
            await producer.send_and_wait(
                topic_name, json.dumps(job).encode(), key=job["user_id"].encode()
            )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic_name,
        bootstrap_servers=kafka.bootstrap,
        group_id=f"g-{topic_name}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(30):
            while len(seen) < len(jobs):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    seen.extend(json.loads(r.value) for r in records)
        await consumer.commit()
        committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        await consumer.stop()
    assert sorted(j["job_id"] for j in seen) == sorted(j["job_id"] for j in jobs)
    assert sum(offset or 0 for offset in committed.values()) == len(jobs)


async def test_lua_script_round_trips_on_the_test_redis(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        # 300,000,000 is a multiple of 100,000,000: the Redis 7.2 INCRBY edge.
        assert await script(keys=["n"], args=["300000000"]) == 300_000_000
        assert await script(keys=["n"], args=["1"]) == 300_000_001
    finally:
        await client.aclose()


def test_private_redis_stops_and_restarts_on_the_same_port(private_redis: EmbeddedRedis) -> None:
    assert private_redis.port != 6379
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1)
    try:
        assert client.ping()
        private_redis.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        private_redis.start()
        assert client.ping()
    finally:
        client.close()
