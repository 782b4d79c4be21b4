"""The worker's four topics: created once (``budget-worker topics create``), checked at
every start (:func:`check_topics`).

A worker that starts without its topics does nothing useful and says nothing: the jobs
topic missing leaves it idle in its group, the results topic missing makes every
waiting producer fail, a missing dead-letter topic blocks the partition of the first
undecodable record, a missing budget events topic leaves threshold events waiting in
Redis. So the worker refuses to start until all four exist, with a
message naming each missing one and the command that creates it.

Both go through Kafka's admin protocol (aiokafka's admin client, with the options of
every other client: TLS and SASL included), so the same command works against Tansu
and Apache Kafka, or any Kafka-protocol broker, by ``BW_KAFKA_BOOTSTRAP`` alone.
Existence is checked with a metadata request for all topics: a request naming the
topics would make a broker with auto-creation on create them with its defaults.

Partitions bound how many workers share the jobs (one consumer group: one busy worker
per partition at most) and can only be added later, never removed. The dead-letter
topic gets one partition and 14 days of retention, as in ``deploy/``. This module is a
Kafka boundary: aiokafka's errors are translated here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from worker.connections import describe, kafka_options, unreachable
from worker.errors import ConfigError, KafkaUnavailable
from worker.settings import Settings

DEFAULT_PARTITIONS = 12
MAX_REPLICATION_FACTOR = 3
DLQ_RETENTION_MS = 14 * 86_400 * 1000
CREATE_COMMAND = "budget-worker topics create"


@dataclass(frozen=True, slots=True)
class Topic:
    """One of the worker's topics: its name, the setting that names it, and how it is
    created."""

    name: str
    setting: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic after ``create_topics``: whether this call created it, and what it has."""

    topic: Topic
    created: bool
    partitions: int
    replication_factor: int


def worker_topics(settings: Settings, partitions: int = DEFAULT_PARTITIONS) -> list[Topic]:
    """Jobs, results and budget events with ``partitions`` each; the dead-letter topic
    with one."""
    return [
        Topic(settings.jobs_topic, "BW_JOBS_TOPIC", partitions),
        Topic(settings.results_topic, "BW_RESULTS_TOPIC", partitions),
        Topic(settings.dlq_topic, "BW_DLQ_TOPIC", 1, {"retention.ms": str(DLQ_RETENTION_MS)}),
        Topic(settings.budget_events_topic, "BW_BUDGET_EVENTS_TOPIC", partitions),
    ]


async def check_topics(settings: Settings) -> None:
    """Raise ``ConfigError`` naming each of the worker's topics that the broker does not
    have, and the command that creates them; ``KafkaUnavailable`` when the broker cannot
    be asked."""
    async with _admin(settings) as admin:
        try:
            existing = set(await admin.list_topics())
        except KafkaError as exc:
            raise unreachable(settings, exc) from exc
    missing = [topic for topic in worker_topics(settings) if topic.name not in existing]
    if missing:
        names = ", ".join(f"{topic.name!r} ({topic.setting})" for topic in missing)
        raise ConfigError(
            f"{describe(settings)} has no topic {names}: create the worker's topics with "
            f"`{CREATE_COMMAND}` (same BW_ settings), or check that the worker may "
            "describe them"
        )


async def create_topics(
    settings: Settings,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int | None = None,
) -> list[TopicState]:
    """Create whichever of the worker's topics do not exist; an existing one is left as
    it is and reported with what it has. ``replication_factor`` defaults to 3, or the
    number of brokers when there are fewer. Raises ``ConfigError`` when the broker
    refuses (a replication factor above the broker count, no permission),
    ``KafkaUnavailable`` when it cannot be reached or answers with a retryable error."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    topics = worker_topics(settings, partitions)
    async with _admin(settings) as admin:
        factor = replication_factor or await _default_replication(admin, settings)
        try:
            response = await admin.create_topics(
                [NewTopic(t.name, t.partitions, factor, topic_configs=t.configs) for t in topics]
            )
            errors = {name: (code, message) for name, code, message in _topic_errors(response)}
            created = {name for name, (code, _) in errors.items() if code == 0}
            for topic in topics:
                code, message = errors.get(topic.name, (0, None))
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise refusal(settings, topic, code, message)
            described = {
                t["topic"]: t for t in await admin.describe_topics([t.name for t in topics])
            }
        except KafkaError as exc:
            raise unreachable(settings, exc) from exc
    states = []
    for topic in topics:
        found = described.get(topic.name, {}).get("partitions") or []
        replicas = len(found[0]["replicas"]) if found else factor
        states.append(TopicState(topic, topic.name in created, len(found), replicas))
    return states


@contextlib.asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, always closed; a broker that cannot be reached is
    ``KafkaUnavailable``."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    try:
        try:
            await admin.start()
        except KafkaError as exc:
            raise unreachable(settings, exc) from exc
        yield admin
    finally:
        await admin.close()


async def _default_replication(admin: AIOKafkaAdminClient, settings: Settings) -> int:
    """3, or the number of brokers when there are fewer (a one-node development broker
    gets 1; a production cluster gets the usual 3 without being told)."""
    try:
        cluster = await admin.describe_cluster()
    except KafkaError as exc:
        raise ConfigError(
            f"cannot count the brokers of {describe(settings)} ({type(exc).__name__}): "
            "give --replication-factor"
        ) from None
    return max(1, min(MAX_REPLICATION_FACTOR, len(cluster.get("brokers") or [])))


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(topic, error code, message) from any version of a CreateTopics response."""
    result = []
    for entry in response.to_object()["topic_errors"]:
        result.append((entry["topic"], entry["error_code"], entry.get("error_message")))
    return result


def refusal(settings: Settings, topic: Topic, code: int, message: str | None) -> BaseException:
    error = for_code(code)
    detail = f"{error.__name__}" + (f": {message}" if message else "")
    text = f"{describe(settings)} refused to create {topic.name!r} ({topic.setting}): {detail}"
    if getattr(error, "retriable", False):
        return KafkaUnavailable(text)
    return ConfigError(text)
