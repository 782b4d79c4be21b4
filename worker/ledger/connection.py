"""Redis for the ledger: the client, the scripts, and every redis error translated once.

This is the only module that imports redis. Anything that means "Redis could not
answer" becomes :class:`LedgerUnavailable` (retryable: the step may or may not have
run, and running it again is safe because every script is idempotent); an answer the
protocol does not allow becomes :class:`LedgerError`.

Scripts run by EVALSHA, called directly rather than through redis-py's Script object
(whose per-call client type checks are overhead the ledger does not need); a NOSCRIPT
answer (a new, restarted or flushed server) loads the script and runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from worker.errors import ConfigError, LedgerError, LedgerUnavailable

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"

# Replies that mean "Redis cannot answer right now", though redis-py raises them as
# ResponseError: the caller should retry, exactly as for a dropped connection.
_UNAVAILABLE_PREFIXES = (
    "MISCONF",  # a failed snapshot stops writes until it succeeds again
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOREPLICAS",
    "READONLY",
    "OOM",
)


def translate(exc: BaseException) -> LedgerUnavailable | LedgerError:
    """The one place foreign exceptions become ledger exceptions."""
    if isinstance(
        exc,
        redis_errors.ConnectionError  # includes BusyLoading, MaxConnections, auth failures
        | redis_errors.TimeoutError
        | redis_errors.ClusterError  # ClusterDown, MasterDown
        | redis_errors.RedisClusterException  # no reachable node, slot not covered
        | redis_errors.TryAgainError
        | redis_errors.AskError  # also MovedError: the topology changed under us
        | redis_errors.ReadOnlyError
        | redis_errors.OutOfMemoryError
        | redis_errors.InvalidResponse
        | OSError,  # socket and TLS errors, builtin TimeoutError
    ):
        return LedgerUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_UNAVAILABLE_PREFIXES):
        return LedgerUnavailable(f"Redis unavailable: {exc}")
    return LedgerError(f"ledger script failed: {type(exc).__name__}: {exc}")


CAUGHT = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)

# Scripts that run without the prelude (they touch one or two keys and no lease; the
# park scripts touch only the park slot).
_STANDALONE = (
    "delete",
    "mark_indexed",
    "outbox_mark",
    "outbox_forget",
    "park",
    "park_claim",
    "park_again",
    "park_done",
    "park_extend",
)
_NAMES = (
    "reserve",
    "settle",
    "release",
    "finish",
    "extend",
    "set_budget",
    "set_team",
    "state",
    "reset",
    "grant",
    "adjust",
    "move_out",
    "move_in",
    "move_done",
    "run",
    *_STANDALONE,
)


def _lua(name: str) -> str:
    return resources.files("worker.ledger").joinpath("lua", name).read_text("utf-8")


_PRELUDE = _lua("common.lua")
SCRIPTS: dict[str, str] = {
    name: (_lua(f"{name}.lua") if name in _STANDALONE else _PRELUDE + "\n" + _lua(f"{name}.lua"))
    for name in _NAMES
}
_SHAS: dict[str, str] = {
    name: hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    for name, text in SCRIPTS.items()
}


def client_from_url(
    url: str, *, cluster: bool = False, max_connections: int = 256, timeout_s: float = 2.0
) -> RedisClient:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``; user and
    password from the URL). Every socket operation times out after ``timeout_s``; a
    broken pooled connection is retried once at once (a restarted Redis)."""
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=False,
            # A few quick retries ride out a failover's MOVED/reconnect dance.
            retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), 3),
        )
    pool = ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)


class Connection:
    """Scripts and commands over one client, at most ``max_in_flight`` at once.

    redis-py's pools raise instead of waiting when every connection is busy; a
    semaphore of the pool's size makes callers wait, at a fraction of the CPU of its
    BlockingConnectionPool (a Condition and a timeout per command).
    """

    def __init__(self, client: RedisClient, max_in_flight: int | None = None) -> None:
        if _decodes_responses(client):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        self.client = client
        self._gate = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    async def close(self) -> None:
        with contextlib.suppress(*CAUGHT):
            await self.client.aclose()

    async def run(self, name: str, keys_: Sequence[str], args: Sequence[str | bytes]) -> Any:
        """Script ``name`` by EVALSHA (loading it first where the server lacks it)."""
        try:
            if self._gate is None:
                return await self._evalsha(name, keys_, args)
            async with self._gate:
                return await self._evalsha(name, keys_, args)
        except CAUGHT as exc:
            raise translate(exc) from exc

    async def _evalsha(self, name: str, keys_: Sequence[str], args: Sequence[str | bytes]) -> Any:
        command = ("EVALSHA", _SHAS[name], len(keys_), *keys_, *args)
        try:
            return await self.client.execute_command(*command)
        except redis_errors.NoScriptError:
            await self.client.script_load(SCRIPTS[name])
            return await self.client.execute_command(*command)

    async def command(self, *args: str | bytes) -> Any:
        try:
            if self._gate is None:
                return await self.client.execute_command(*args)
            async with self._gate:
                return await self.client.execute_command(*args)
        except CAUGHT as exc:
            raise translate(exc) from exc

    async def pipeline(
        self, name: str, commands: Sequence[tuple[Sequence[str], Sequence[str | bytes]]]
    ) -> list[Any]:
        """Script ``name`` once per ``(keys, args)``, pipelined (on Redis Cluster, one
        pipeline per node); per-command answers, an exception object where that command
        failed."""
        sha = _SHAS[name]

        async def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for keys_, args in commands:
                pipe.execute_command("EVALSHA", sha, len(keys_), *keys_, *args)
            return list(await pipe.execute(raise_on_error=False))

        try:
            if self._gate is None:
                answers = await send()
            else:
                async with self._gate:
                    answers = await send()
            if any(isinstance(answer, redis_errors.NoScriptError) for answer in answers):
                await self.client.script_load(SCRIPTS[name])
                answers = await send()
        except CAUGHT as exc:
            raise translate(exc) from exc
        return answers

    async def check_access(self) -> None:
        """PING; a refusal of the URL's credentials (a wrong user or password, or an ACL
        without PING) is a :class:`ConfigError`: waiting does not cure it, unlike an
        outage. The message holds no password."""
        try:
            await self.client.execute_command("PING")
        except (
            redis_errors.AuthenticationError,
            redis_errors.AuthenticationWrongNumberOfArgsError,
            redis_errors.NoPermissionError,
        ) as exc:
            raise ConfigError(
                "Redis refused the worker's credentials (the user and password in "
                f"BW_REDIS_URL, and its ACL): {type(exc).__name__}: {exc}"
            ) from None
        except CAUGHT as exc:
            raise translate(exc) from exc


def _decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = client.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    return bool(kwargs.get("decode_responses", False))
