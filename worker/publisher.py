"""Terminal events and dead-letter records to Kafka, each acknowledged before the job
counts as done (the consumer commits an offset only after its event is acked).

No idempotent producer: some brokers (Tansu) lack it, and the design does not need
it: a duplicate event is harmless because consumers de-duplicate on ``job_id``.

An event larger than ``BW_MAX_EVENT_BYTES`` (default 1 MiB, Apache Kafka's default
``max.message.bytes``) is sent gzip-compressed, which the broker's limit applies to
and every Kafka client reads transparently; one that is too large even so raises
:class:`EventTooLarge`, and the consumer publishes a small event in its place.
"""

from __future__ import annotations

import gzip
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError

from worker.connections import kafka_options
from worker.settings import Settings

MAX_HEADER_CHARS = 1000
MAX_RECORD_BYTES = 16 * 1024 * 1024


class EventTooLarge(Exception):
    """The event cannot be written: too large for the broker even compressed."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(f"event of {size_bytes} bytes over the {limit_bytes}-byte limit")
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


Headers = list[tuple[str, bytes]]


class Publisher(Protocol):
    async def publish(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None
    ) -> None: ...

    async def dead_letter(
        self,
        key: bytes | None,
        value: bytes,
        *,
        error_type: str,
        error_message: str,
        source_topic: str,
        source_partition: int,
        source_offset: int,
    ) -> None: ...


class KafkaPublisher:
    """Publishes with acks=all and waits for the broker's acknowledgement."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self._dlq_topic = settings.dlq_topic
        self._truncate_to = settings.max_job_bytes
        self.max_event_bytes = settings.max_event_bytes
        options = kafka_options(settings)
        options.update(
            acks="all",
            linger_ms=settings.kafka_linger_ms,
            enable_idempotence=False,
            # Dead letters carry the original record, which may be far over our own
            # job limit; the broker's limit is the real one.
            max_request_size=MAX_RECORD_BYTES,
        )
        options.update(overrides)
        self._producer = AIOKafkaProducer(**options)
        self._compressed = AIOKafkaProducer(**options, compression_type="gzip")

    async def start(self) -> None:
        await self._producer.start()
        await self._compressed.start()

    async def stop(self) -> None:
        await self._producer.stop()
        await self._compressed.stop()

    async def publish(
        self, topic: str, key: bytes, value: bytes, headers: Headers | None = None
    ) -> None:
        """Raises :class:`EventTooLarge` for an event the broker cannot take."""
        producer = self._producer
        if len(value) > self.max_event_bytes:
            compressed = len(gzip.compress(value, compresslevel=6))
            if compressed > self.max_event_bytes:
                raise EventTooLarge(len(value), self.max_event_bytes)
            producer = self._compressed
        try:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
        except (MessageSizeTooLargeError, RecordTooLargeError):
            raise EventTooLarge(len(value), self.max_event_bytes) from None

    async def dead_letter(
        self,
        key: bytes | None,
        value: bytes,
        *,
        error_type: str,
        error_message: str,
        source_topic: str,
        source_partition: int,
        source_offset: int,
    ) -> None:
        """The original bytes, untouched, with the contract's error headers."""
        headers = [
            ("error.type", error_type.encode()),
            ("error.message", error_message[:MAX_HEADER_CHARS].encode("utf-8", "replace")),
            ("source.topic", source_topic.encode()),
            ("source.partition", str(source_partition).encode()),
            ("source.offset", str(source_offset).encode()),
        ]
        try:
            await self._producer.send_and_wait(self._dlq_topic, value, key=key, headers=headers)
        except (MessageSizeTooLargeError, RecordTooLargeError):
            # Too large for the producer or the broker: keep the evidence we can.
            headers.append(("value.truncated_from", str(len(value)).encode()))
            head = value[: self._truncate_to]
            await self._producer.send_and_wait(self._dlq_topic, head, key=key, headers=headers)
