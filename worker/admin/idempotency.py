"""``Idempotency-Key``: a write retried with the same key is answered, not done again.

The first request with a key claims it in Redis (``SET NX``) and runs; its successful
answer replaces the claim, is kept for ``BW_ADMIN_IDEMPOTENCY_TTL_S`` and is replayed
to every later request with that key, marked ``Idempotent-Replayed: true``. The key is
bound to what it was first sent with (the method, the path and the JSON body, keys
sorted): the same key with another request is refused 422, and a request whose first
try is still running is told 409 with ``Retry-After``.

A failed request (any error) gives the key up, so that a retry runs again: a refused
write changed nothing. A claim whose process died mid-request lapses after
``CLAIM_TTL_S``; had its write reached the ledger, the retry runs it again, which
lands on the same state for every write here but ``reset`` (it zeroes the spend
again).

Grants and adjustments do not need the header: their ids are idempotent in the ledger
itself, for as long as the scope lives, and a replay answers the stored grant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from worker.admin.problems import JSON, ApiError
from worker.errors import BudgetWorkerError
from worker.ledger.idempotency import IdempotencyRecords

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
_KEY = re.compile(f"[!-~]{{1,{MAX_KEY_CHARS}}}")
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FIELD = "header." + HEADER


@dataclass(frozen=True, slots=True)
class Answer:
    """A stored first answer: its status and JSON text ("" for no body)."""

    status: int
    body: str


CLAIM_TTL_S = 60
"""How long a claim outlives a request that never finished (its process died): longer
than any request runs (Redis timeouts, a user's move), short enough that the caller's
retry is not refused for long. The answer, once there, is kept for the full TTL."""


class IdempotencyStore:
    """First answers by key, kept in the ledger's Redis by
    :class:`worker.ledger.idempotency.IdempotencyRecords`."""

    def __init__(self, records: IdempotencyRecords, ttl_s: int) -> None:
        self.records = records
        self.ttl_s = ttl_s
        self.claim_ttl_s = min(ttl_s, CLAIM_TTL_S)

    async def claim(self, key: str, fingerprint: str) -> Answer | None:
        """None when this request now holds ``key`` and must run; else the answer to
        replay. Raises ``ApiError`` for a key in use by another request or still
        running."""
        claim = json.dumps({"fingerprint": fingerprint, "pending": True})
        for _ in range(3):
            # One atomic SET NX: of two concurrent first tries, exactly one runs.
            if await self.records.claim(key, claim, self.claim_ttl_s):
                return None
            raw = await self.records.read(key)
            if raw is None:
                continue  # expired between the two commands: claim it again
            record = json.loads(raw)
            if record["fingerprint"] != fingerprint:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request",
                    _FIELD,
                )
            if record.get("pending"):
                raise ApiError(
                    409,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still running",
                    _FIELD,
                    headers={"Retry-After": "1"},
                )
            return Answer(int(record["status"]), str(record["body"]))
        raise ApiError(409, "idempotency_in_progress", "the key keeps expiring", _FIELD)

    # keep and give_up write without checking that the claim is still this request's:
    # only a request running past CLAIM_TTL_S could find another's claim there, and
    # then the two ran the same write (see the module docstring).

    async def keep(self, key: str, fingerprint: str, answer: Answer) -> None:
        record = {"fingerprint": fingerprint, "status": answer.status, "body": answer.body}
        await self.records.store(key, json.dumps(record), self.ttl_s)

    async def give_up(self, key: str) -> None:
        await self.records.release(key)


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What a key is bound to. The body is compared as JSON (so a client that
    re-serialises it with other spacing or key order still matches), else as bytes."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def idempotent_writes(store: IdempotencyStore) -> Middleware:
    """Replay the first successful answer of a write that carries ``Idempotency-Key``."""

    @web.middleware
    async def replay(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get(HEADER)
        if key is None or request.method not in _WRITES:
            return await handler(request)
        if not _KEY.fullmatch(key):
            raise ApiError(
                422, "invalid", f"must be 1-{MAX_KEY_CHARS} printable ASCII characters", _FIELD
            )
        body = await request.read()  # 413 past the size limit, before any claim
        print_ = fingerprint(request.method, request.raw_path, body)
        stored = await store.claim(key, print_)
        if stored is not None:
            return _replayed(stored)
        try:
            response = await handler(request)
        except BaseException:
            # A failed write changed nothing; a failure to free the key only makes the
            # retry wait for the TTL, and must not hide the first error.
            with contextlib.suppress(BudgetWorkerError):
                await store.give_up(key)
            raise
        if not isinstance(response, web.Response) or response.status >= 300:
            await store.give_up(key)
            return response
        await store.keep(key, print_, Answer(response.status, response.text or ""))
        return response

    return replay


def _replayed(answer: Answer) -> web.Response:
    headers = {"Idempotent-Replayed": "true"}
    if not answer.body:
        return web.Response(status=answer.status, headers=headers)
    return web.Response(status=answer.status, text=answer.body, content_type=JSON, headers=headers)
