"""worker.ledger.idempotency against the real Redis: one claim wins, records are kept
for their TTL under names worker.keys builds, and a released key is free again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from worker import keys
from worker.ledger import Ledger
from worker.ledger.idempotency import IdempotencyRecords


@pytest.fixture
async def records(redis_url: str) -> AsyncIterator[IdempotencyRecords]:
    book = Ledger.from_url(redis_url)
    try:
        yield book.idempotency_records()
    finally:
        await book.close()


async def test_of_concurrent_claims_exactly_one_wins(records: IdempotencyRecords) -> None:
    won = await asyncio.gather(*(records.claim("k", f"claim-{i}", 60) for i in range(10)))
    assert won.count(True) == 1
    assert await records.read("k") == f"claim-{won.index(True)}"


async def test_a_stored_record_replaces_the_claim_with_its_ttl(
    records: IdempotencyRecords,
) -> None:
    assert await records.claim("k", "pending", 60)
    await records.store("k", "answer", 3600)
    assert await records.read("k") == "answer"
    (name,) = await records.conn.command("KEYS", "bw:{admin:idem:*")
    assert 60 < await records.conn.command("TTL", name) <= 3600
    assert not await records.claim("k", "again", 60)


async def test_a_released_key_can_be_claimed_again(records: IdempotencyRecords) -> None:
    assert await records.claim("k", "first", 60)
    await records.release("k")
    assert await records.read("k") is None
    assert await records.claim("k", "second", 60)


async def test_any_key_is_one_safe_name_in_a_slot_of_its_own(
    records: IdempotencyRecords,
) -> None:
    odd = "ünï {u:x}\n" + "x" * 300
    assert await records.claim(odd, "r", 60)
    (name,) = await records.conn.command("KEYS", "bw:{admin:idem:*")
    assert name.decode().startswith(keys.admin_idempotency("")[:-1])
    assert len(name) == len(keys.admin_idempotency("0" * 64))
