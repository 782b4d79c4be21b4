"""Session fixtures: real servers on free loopback ports, always cleaned up.

- ``kafka``: a Tansu broker (memory only) shared by the session; tests use fresh topic
  names (``topic_name``) so they never see each other's records.
- ``redis_server``: a Redis shared by the session, flushed before each test that asks
  for ``redis_url`` (it is ours, on a free port; the machine's Redis on 6379 is never
  touched).
- ``private_redis``: a Redis of the test's own, for tests that stop and restart it.
- ``fake_provider``: the project's OpenAI-compatible fake, reset before each test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.dev.servers import EmbeddedKafka, EmbeddedRedis, EmbeddedRedisCluster, scratch_dir

# No test may reach the internet: litellm and tiktoken read these before import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def server_dir() -> Path:
    return scratch_dir("budget-worker-tests-")


@pytest.fixture(scope="session")
def kafka(server_dir: Path) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(server_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_name() -> str:
    return f"t.{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_server(server_dir: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(server_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The shared test Redis, empty at the start of the test."""
    if not redis_server.server.running:
        redis_server.start()
    assert redis_server.port != 6379
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, which the test may stop and restart."""
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(server_dir: Path) -> Iterator[EmbeddedRedisCluster]:
    cluster = EmbeddedRedisCluster(server_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def fake_provider() -> AsyncIterator[Any]:
    """The OpenAI-compatible fake on a free port, default settings, no latency."""
    from worker.dev.fake_provider import FakeProviderConfig, start_fake_provider

    server = await start_fake_provider(FakeProviderConfig())
    try:
        yield server
    finally:
        await server.stop()
