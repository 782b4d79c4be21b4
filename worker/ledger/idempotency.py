"""The records the admin API keeps per ``Idempotency-Key``: a claim while the first
request runs, then its answer. They are not ledger money, but they live in the same
Redis, so their commands go through the ledger's connection (its error translation,
its bound on calls in flight) and their key names through ``worker.keys``.

Each record is opaque text to this module (the admin API writes JSON); each key is a
slot of its own that no script reads, so every command here is one plain command, and
the atomicity the API relies on is that of ``SET NX``.
"""

from __future__ import annotations

import hashlib

from worker import keys
from worker.ledger.connection import Connection


class IdempotencyRecords:
    """Claim, store, read and release the record of one ``Idempotency-Key``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def claim(self, key: str, record: str, ttl_s: int) -> bool:
        """Write ``record`` for ``key`` unless one exists (one atomic ``SET NX``: of two
        concurrent claims exactly one wins); True when this claim won."""
        return bool(await self.conn.command("SET", _name(key), record, "NX", "EX", str(ttl_s)))

    async def read(self, key: str) -> str | None:
        """The record of ``key``; None when there is none (never claimed, or lapsed)."""
        raw = await self.conn.command("GET", _name(key))
        return None if raw is None else bytes(raw).decode("utf-8")

    async def store(self, key: str, record: str, ttl_s: int) -> None:
        """Replace the record of ``key``, claimed or not, kept ``ttl_s``."""
        await self.conn.command("SET", _name(key), record, "EX", str(ttl_s))

    async def release(self, key: str) -> None:
        """Drop the record of ``key``, so that the next request with it runs."""
        await self.conn.command("DEL", _name(key))


def _name(key: str) -> str:
    """One safe key name for a key of any length or alphabet."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return keys.admin_idempotency(digest)
