"""The ledger: hard per-user spend budgets and rate limits, kept in Redis.

Every step that changes the ledger is one Lua script (``worker/lua/*.lua``), so each
step is atomic and one round trip, and every step is idempotent by ``job_id``. The
design, its invariant and its key layout are in ``docs/ledger.md``.

This is the only module that imports redis. Every redis failure is translated here:
anything that means "Redis could not answer" becomes :class:`LedgerUnavailable`
(retryable: the step may or may not have run, and running it again is safe because
every script is idempotent by job id); an answer the protocol does not allow becomes
:class:`LedgerError`. Expected outcomes (a refusal, no budget, an already finished
job) are return values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeAlias, get_args

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from schemas.money import usd_to_nanousd
from worker import keys
from worker.errors import ConfigError, LedgerError, LedgerUnavailable
from worker.settings import Settings

__all__ = [
    "MAX_NANOUSD",
    "MAX_RATE",
    "MAX_TOKENS",
    "Budget",
    "BudgetSnapshot",
    "BudgetState",
    "Busy",
    "Finished",
    "LeaseRef",
    "Ledger",
    "NoBudget",
    "Period",
    "RedisClient",
    "Refused",
    "ReserveResult",
    "Reserved",
    "Settled",
]

Period = Literal["daily", "weekly", "monthly", "yearly", "rolling", "none"]
PERIODS: frozenset[str] = frozenset(get_args(Period))
RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"

# Lua numbers are doubles, exact below 2**53. These bounds keep every sum a script
# compares (spent + reserved + cost, a bucket level) exact.
MAX_NANOUSD = 10**15  # USD 1,000,000 per limit or per job
MAX_TOKENS = 10**9
MAX_RATE = 10**9  # per minute
MAX_LEASE_MS = 10**10
MAX_WINDOW_S = 10**9


@dataclass(frozen=True, slots=True)
class Budget:
    """A user's limits. ``window_s`` is required for ``rolling`` and ``None`` otherwise;
    ``rpm``/``tpm`` of ``None`` mean no such limit."""

    limit_nanousd: int
    period: Period = "daily"
    window_s: int | None = None
    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        _check_int("limit_nanousd", self.limit_nanousd, 0, MAX_NANOUSD)
        if self.period not in PERIODS:
            raise ValueError(f"period must be one of {sorted(PERIODS)}, not {self.period!r}")
        if self.period == "rolling":
            if self.window_s is None:
                raise ValueError("a rolling budget needs window_s")
            _check_int("window_s", self.window_s, 1, MAX_WINDOW_S)
        elif self.window_s is not None:
            raise ValueError(f"window_s applies to rolling budgets only, not {self.period!r}")
        if self.rpm is not None:
            _check_int("rpm", self.rpm, 1, MAX_RATE)
        if self.tpm is not None:
            _check_int("tpm", self.tpm, 1, MAX_RATE)


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """One period of a budget at one instant (what events carry)."""

    limit_nanousd: int
    spent_nanousd: int
    reserved_nanousd: int
    remaining_nanousd: int  # max(0, limit - spent - reserved)
    period_end_ms: int | None  # None for period "none"


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A user's budget and current period (what ``budget show`` prints)."""

    user_id: str
    budget: Budget
    snapshot: BudgetSnapshot
    period_id: str
    model_spend_nanousd: dict[str, int]


@dataclass(frozen=True, slots=True)
class Reserved:
    """The job holds a reservation. ``existing`` when it already held it before this
    call; ``holder`` then tells the caller's own retry from another worker's hold."""

    job_id: str
    cost_nanousd: int
    tokens: int
    lease_deadline_ms: int
    existing: bool
    holder: str
    snapshot: BudgetSnapshot


@dataclass(frozen=True, slots=True)
class Refused:
    """A limit would be exceeded; nothing changed. ``remaining`` is in the limit's unit
    (nano-USD, requests, tokens). ``retry_after_ms`` is when the limit lifts (the period
    end for ``usd``), ``None`` when it never does for this amount."""

    limit: Literal["usd", "rpm", "tpm"]
    remaining: int
    retry_after_ms: int | None
    snapshot: BudgetSnapshot


@dataclass(frozen=True, slots=True)
class NoBudget:
    """The user has no budget (and the ledger has no default)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The job is already final. ``outcome`` is its first stored outcome (``None`` once
    expired); ``snapshot`` is the one taken when it was settled (``None`` if it was not)."""

    outcome: bytes | None
    snapshot: BudgetSnapshot | None


@dataclass(frozen=True, slots=True)
class Settled:
    """The job is charged. ``first`` is False when an earlier settle had charged it: then
    ``charged_nanousd``, ``outcome`` and ``snapshot`` are that settle's, unchanged.
    ``outcome`` is the first stored outcome, which may predate this settle."""

    charged_nanousd: int
    first: bool
    outcome: bytes | None
    snapshot: BudgetSnapshot


@dataclass(frozen=True, slots=True)
class Busy:
    """Another delivery of the job holds a live reservation (it is being run)."""

    holder: str


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """A reservation's lease, as its holder renews it."""

    user_id: str
    job_id: str
    holder: str


ReserveResult = Reserved | Refused | NoBudget | Finished


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _opt_int(data: bytes | None) -> int | None:
    return int(data) if data else None


def _snapshot(limit: Any, spent: Any, reserved: Any, period_end: Any) -> BudgetSnapshot:
    limit_i, spent_i, reserved_i, end = int(limit), int(spent), int(reserved), int(period_end)
    return BudgetSnapshot(
        limit_nanousd=limit_i,
        spent_nanousd=spent_i,
        reserved_nanousd=reserved_i,
        remaining_nanousd=max(0, limit_i - spent_i - reserved_i),
        period_end_ms=None if end < 0 else end,
    )


def _budget(
    limit: bytes, period: bytes, window_s: bytes | None, rpm: bytes | None, tpm: bytes | None
) -> Budget:
    name = period.decode()
    if name not in PERIODS:
        raise LedgerError(f"stored budget has an unknown period {name!r}")
    return Budget(
        limit_nanousd=int(limit),
        period=name,  # type: ignore[arg-type]  # checked against PERIODS above
        window_s=_opt_int(window_s),
        rpm=_opt_int(rpm),
        tpm=_opt_int(tpm),
    )


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


def _translate(exc: BaseException) -> LedgerUnavailable | LedgerError:
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


_CAUGHT = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


def _lua(name: str) -> str:
    return resources.files("worker").joinpath("lua", name).read_text("utf-8")


_PRELUDE = _lua("common.lua")


def _script_text(name: str, *, prelude: bool = True) -> str:
    body = _lua(name)
    return _PRELUDE + "\n" + body if prelude else body


_SCRIPTS: dict[str, str] = {
    name: _script_text(f"{name}.lua", prelude=name not in ("delete", "mark_indexed"))
    for name in (
        "reserve",
        "settle",
        "release",
        "finish",
        "extend",
        "set_budget",
        "state",
        "reset",
        "delete",
        "mark_indexed",
    )
}


class Ledger:
    """Budgets, reservations and rate limits of every user, over one Redis client.

    The client must return bytes (``decode_responses=False``); :meth:`from_url` builds
    one. ``charge_ttl_s`` is how long a final job record (the charge marker that stops a
    second charge) is kept, and how long a spend hash outlives its period, for late
    settles; ``outcome_ttl_s`` how long a job's stored outcome is kept for redeliveries
    (a job record is kept at least as long as its outcome).
    ``default_budget`` is given to a user with no budget on their first reserve.
    ``max_in_flight`` bounds concurrent calls (the cluster client raises instead of
    waiting when a node's connections run out).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        charge_ttl_s: int = 7 * 86400,
        outcome_ttl_s: int = 86400,
        default_budget: Budget | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        _check_int("charge_ttl_s", charge_ttl_s, 1, 10 * 365 * 86400)
        _check_int("outcome_ttl_s", outcome_ttl_s, 1, 10 * 365 * 86400)
        if _decodes_responses(client):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        self._client = client
        # A job record (the charge marker) is kept at least as long as its outcome, so
        # the record alone tells whether a job is final.
        self._keep_ms = str(max(charge_ttl_s, outcome_ttl_s) * 1000)
        self._outcome_ttl_ms = str(outcome_ttl_s * 1000)
        self.default_budget = default_budget
        self._default_args: list[str | bytes] = (
            [""]
            if default_budget is None
            else [
                str(default_budget.limit_nanousd),
                default_budget.period,
                _opt(default_budget.window_s),
                _opt(default_budget.rpm),
                _opt(default_budget.tpm),
            ]
        )
        self._gate = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._shas: dict[str, str] = {name: _sha1(text) for name, text in _SCRIPTS.items()}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        max_connections: int = 256,
        timeout_s: float = 2.0,
        **kwargs: Any,
    ) -> Ledger:
        """A ledger over a client built from ``url`` (``redis://`` or, for TLS,
        ``rediss://``; user name and password are read from the URL).

        Callers past ``max_connections`` wait for a free connection instead of
        failing; every socket operation times out after ``timeout_s``. A broken pooled
        connection is retried once at once (a restarted Redis); anything longer is the
        caller's to retry on :class:`LedgerUnavailable`. Other keyword arguments go to
        :class:`Ledger`.
        """
        client: RedisClient
        if cluster:
            client = RedisCluster.from_url(
                url,
                max_connections=max_connections,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                decode_responses=False,
                # A few quick retries ride out a failover's MOVED/reconnect dance.
                retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), 3),
            )
        else:
            pool = ConnectionPool.from_url(
                url,
                max_connections=max_connections,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                decode_responses=False,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
            )
            client = aioredis.Redis.from_pool(pool)
        # Both pools raise instead of waiting when every connection is busy; a
        # semaphore of the same size makes callers wait, at a fraction of the CPU of
        # redis-py's BlockingConnectionPool (a Condition and a timeout per command).
        kwargs.setdefault("max_in_flight", max_connections)
        return cls(client, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings) -> Ledger:
        """The worker's ledger: ``BW_REDIS_*``, the default budget, the outcome TTL."""
        default = None
        if settings.default_budget_usd is not None:
            default = Budget(
                limit_nanousd=usd_to_nanousd(settings.default_budget_usd, round_up=False),
                period=settings.default_budget_period,
            )
        return cls.from_url(
            settings.redis_url,
            cluster=settings.redis_cluster,
            max_connections=settings.redis_max_connections,
            timeout_s=settings.redis_timeout_s,
            default_budget=default,
            outcome_ttl_s=settings.outcome_ttl_s,
        )

    async def close(self) -> None:
        with contextlib.suppress(*_CAUGHT):
            await self._client.aclose()

    # -- plumbing -----------------------------------------------------------------

    async def _run(self, name: str, keys_: Sequence[str], args: Sequence[str | bytes]) -> Any:
        """Script ``name`` by EVALSHA, loading it first where the server lacks it (a new
        or restarted Redis). Called directly rather than through redis-py's Script
        object, whose per-call client type checks are overhead the ledger does not need."""
        try:
            if self._gate is None:
                return await self._evalsha(name, keys_, args)
            async with self._gate:
                return await self._evalsha(name, keys_, args)
        except _CAUGHT as exc:
            raise _translate(exc) from exc

    async def _evalsha(self, name: str, keys_: Sequence[str], args: Sequence[str | bytes]) -> Any:
        command = ("EVALSHA", self._shas[name], len(keys_), *keys_, *args)
        try:
            return await self._client.execute_command(*command)
        except redis_errors.NoScriptError:
            await self._client.script_load(_SCRIPTS[name])
            return await self._client.execute_command(*command)

    async def _command(self, *args: str | bytes) -> Any:
        try:
            if self._gate is None:
                return await self._client.execute_command(*args)
            async with self._gate:
                return await self._client.execute_command(*args)
        except _CAUGHT as exc:
            raise _translate(exc) from exc

    def _user(self, user_id: str) -> tuple[keys.UserKeys, list[str], list[str | bytes]]:
        """The user's keys, the KEYS every per-user script starts with, and the ARGV
        prefix of common.lua."""
        _check_id("user_id", user_id)
        k = keys.user_keys(user_id)
        return (
            k,
            [k.budget, k.leases, k.rpm, k.tpm],
            [k.spend_prefix, k.job_prefix, self._keep_ms],
        )

    def _job(self, user_id: str, job_id: str) -> tuple[keys.UserKeys, list[str], list[str | bytes]]:
        _check_id("job_id", job_id)
        k, keys_, args = self._user(user_id)
        token = keys.job_token(job_id)
        keys_ += [k.job_prefix + token, k.outcome_prefix + token]
        args.append(token)
        return k, keys_, args

    async def _index(self, user_id: str, k: keys.UserKeys) -> None:
        await self._command("HSET", keys.USERS_INDEX, k.token, _utf8(user_id))

    async def _index_created(self, user_id: str, k: keys.UserKeys) -> None:
        """Index a budget that reserve created from the default. The index lives in
        another slot, so this is a second step; if it fails, the next reserve of the
        user tries again (the budget stays marked until it succeeds)."""
        with contextlib.suppress(LedgerUnavailable, LedgerError):
            await self._index(user_id, k)
            await self._run("mark_indexed", [k.budget], [_utf8(user_id)])

    # -- health -------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise :class:`LedgerUnavailable` unless Redis answers."""
        await self._command("PING")

    async def check_access(self) -> None:
        """Like :meth:`ping`, but a refusal of the URL's credentials (a wrong user or
        password, or an ACL without PING) is a :class:`ConfigError`: waiting does not
        cure it, unlike an outage. The message holds no password."""
        try:
            await self._client.execute_command("PING")
        except (
            redis_errors.AuthenticationError,
            redis_errors.AuthenticationWrongNumberOfArgsError,
            redis_errors.NoPermissionError,
        ) as exc:
            raise ConfigError(
                "Redis refused the worker's credentials (the user and password in "
                f"BW_REDIS_URL, and its ACL): {type(exc).__name__}: {exc}"
            ) from None
        except _CAUGHT as exc:
            raise _translate(exc) from exc

    # -- budgets --------------------------------------------------------------------

    async def set_budget(self, user_id: str, budget: Budget) -> None:
        """Create or change a user's budget. The current period's spend is kept (a
        changed period kind starts counting in that kind's current period)."""
        k, keys_, args = self._user(user_id)
        # Index first: a listed user may lack a budget for a moment, never the reverse.
        await self._index(user_id, k)
        args += [
            _utf8(user_id),
            str(budget.limit_nanousd),
            budget.period,
            _opt(budget.window_s),
            _opt(budget.rpm),
            _opt(budget.tpm),
        ]
        await self._run("set_budget", keys_, args)

    async def get_budget(self, user_id: str) -> Budget | None:
        _check_id("user_id", user_id)
        k = keys.user_keys(user_id)
        fields = await self._command(
            "HMGET", k.budget, "limit_nanousd", "period", "window_s", "rpm", "tpm"
        )
        if fields[0] is None:
            return None
        return _budget(*fields)

    async def state(self, user_id: str) -> BudgetState | None:
        """The budget and its current period, or None when the user has no budget."""
        _, keys_, args = self._user(user_id)
        reply = await self._run("state", keys_, args)
        if reply[0] == 0:
            return None
        limit, period, window_s, _start, rpm, tpm, period_id, period_end, spent, reserved = reply[
            1:11
        ]
        models = reply[11:]
        return BudgetState(
            user_id=user_id,
            budget=_budget(limit, period, window_s, rpm, tpm),
            snapshot=_snapshot(limit, spent, reserved, period_end),
            period_id=_text(period_id),
            model_spend_nanousd={
                _text(models[i]): int(models[i + 1]) for i in range(0, len(models), 2)
            },
        )

    async def list_users(self) -> list[str]:
        """Every user that has a budget, sorted."""
        names = await self._command("HVALS", keys.USERS_INDEX)
        return sorted(_text(name) for name in names)

    async def reset(self, user_id: str) -> bool:
        """Zero the current period's spend (live reservations stay). False if the user
        has no budget."""
        _, keys_, args = self._user(user_id)
        return bool(await self._run("reset", keys_, args))

    async def delete(self, user_id: str) -> bool:
        """Remove the user's budget and rate-limit state; False if there was none. Spend
        and live reservations are left to settle and expire."""
        k, _, _ = self._user(user_id)
        existed = bool(await self._run("delete", [k.budget, k.rpm, k.tpm], []))
        await self._command("HDEL", keys.USERS_INDEX, k.token)
        return existed

    # -- jobs -----------------------------------------------------------------------

    async def reserve(
        self,
        user_id: str,
        job_id: str,
        *,
        cost_nanousd: int,
        tokens: int,
        lease_ms: int,
        holder: str,
    ) -> ReserveResult:
        """Hold ``cost_nanousd`` (an upper bound) and ``tokens`` against every limit of
        the user until ``lease_ms`` from now, all or nothing. See reserve.lua."""
        _check_int("cost_nanousd", cost_nanousd, 0, MAX_NANOUSD)
        _check_int("tokens", tokens, 0, MAX_TOKENS)
        _check_int("lease_ms", lease_ms, 1, MAX_LEASE_MS)
        k, keys_, args = self._job(user_id, job_id)
        args += [_utf8(holder), str(cost_nanousd), str(tokens), str(lease_ms)]
        args += self._default_args
        reply = await self._run("reserve", keys_, args)
        kind = reply[0]
        if kind == 1:
            _, existing, cost, tokens_, deadline, holder_, limit, spent, reserved, end, ix = reply
            if ix:
                await self._index_created(user_id, k)
            return Reserved(
                job_id=job_id,
                cost_nanousd=int(cost),
                tokens=int(tokens_),
                lease_deadline_ms=int(deadline),
                existing=bool(existing),
                holder=_text(holder_),
                snapshot=_snapshot(limit, spent, reserved, end),
            )
        if kind == 2:
            _, name, remaining, retry, limit, spent, reserved, end, ix = reply
            if ix:
                await self._index_created(user_id, k)
            retry_ms = int(retry)
            return Refused(
                limit=name.decode(),
                remaining=int(remaining),
                retry_after_ms=None if retry_ms < 0 else retry_ms,
                snapshot=_snapshot(limit, spent, reserved, end),
            )
        if kind == 3:
            return NoBudget()
        if kind == 4:
            _, has_outcome, outcome, has_snapshot, limit, spent, reserved, end = reply
            return Finished(
                outcome=bytes(outcome) if has_outcome else None,
                snapshot=_snapshot(limit, spent, reserved, end) if has_snapshot else None,
            )
        raise LedgerError(f"reserve answered an unknown reply kind {kind!r}")

    async def extend(self, user_id: str, job_id: str, *, lease_ms: int, holder: str) -> bool:
        """Move the lease deadline to ``lease_ms`` from now (0: due at once). False when
        the job holds no live reservation of ``holder``."""
        _check_int("lease_ms", lease_ms, 0, MAX_LEASE_MS)
        _, keys_, args = self._job(user_id, job_id)
        args += [_utf8(holder), str(lease_ms)]
        return bool(await self._run("extend", keys_, args))

    async def renew(self, leases: Sequence[LeaseRef], *, lease_ms: int) -> list[bool | None]:
        """Move many leases' deadlines to ``lease_ms`` from now in one round trip (a
        pipeline of extend scripts; on Redis Cluster one per node). Each answer is True
        (renewed), False (the holder no longer holds a live reservation: its lease was
        reclaimed, or the job ended) or None (that lease's node did not answer). Raises
        :class:`LedgerUnavailable` when Redis did not answer at all."""
        _check_int("lease_ms", lease_ms, 0, MAX_LEASE_MS)
        if not leases:
            return []
        commands = []
        for lease in leases:
            _, keys_, args = self._job(lease.user_id, lease.job_id)
            args += [_utf8(lease.holder), str(lease_ms)]
            commands.append((keys_, args))
        answers = await self._pipeline("extend", commands)
        if answers and all(isinstance(answer, BaseException) for answer in answers):
            raise _translate(answers[0])
        return [None if isinstance(a, BaseException) else bool(a) for a in answers]

    async def _pipeline(
        self, name: str, commands: Sequence[tuple[Sequence[str], Sequence[str | bytes]]]
    ) -> list[Any]:
        """Script ``name`` once per ``(keys, args)``, pipelined; per-command answers, an
        exception object where that command failed."""
        sha = self._shas[name]

        async def send() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
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
                await self._client.script_load(_SCRIPTS[name])
                answers = await send()
        except _CAUGHT as exc:
            raise _translate(exc) from exc
        return answers

    async def settle(
        self,
        user_id: str,
        job_id: str,
        *,
        holder: str,
        cost_nanousd: int,
        tokens: int,
        model: str,
        outcome: bytes,
    ) -> Settled:
        """Charge the call made under ``holder``'s reservation its actual cost, once
        (even past the cap). The live holder's reservation becomes spend; any other
        holder's call is charged on its own. See settle.lua."""
        _check_int("cost_nanousd", cost_nanousd, 0, MAX_NANOUSD)
        _check_int("tokens", tokens, 0, MAX_TOKENS)
        _, keys_, args = self._job(user_id, job_id)
        args += [
            _utf8(holder),
            str(cost_nanousd),
            str(tokens),
            _utf8(model),
            outcome,
            self._outcome_ttl_ms,
        ]
        reply = await self._run("settle", keys_, args)
        first, charged, has_outcome, stored, limit, spent, reserved, end = reply
        return Settled(
            charged_nanousd=int(charged),
            first=bool(first),
            outcome=bytes(stored) if has_outcome else None,
            snapshot=_snapshot(limit, spent, reserved, end),
        )

    async def release(
        self, user_id: str, job_id: str, *, holder: str, outcome: bytes | None = None
    ) -> bool:
        """Drop ``holder``'s reservation, charging nothing; True if it was live. Another
        holder's live reservation is never touched. With ``outcome`` the job is final;
        without, a redelivery may reserve it again."""
        _, keys_, args = self._job(user_id, job_id)
        args.append(_utf8(holder))
        if outcome is None:
            args += ["0", b"", self._outcome_ttl_ms]
        else:
            args += ["1", outcome, self._outcome_ttl_ms]
        return bool(await self._run("release", keys_, args))

    async def finish(self, user_id: str, job_id: str, *, outcome: bytes) -> Finished | Busy:
        """Record the final outcome of a job that holds no reservation (a refusal); the
        first outcome stored wins and is returned (with its settle's snapshot, when the
        job was settled). :class:`Busy` when another delivery of the job holds a live
        reservation: its outcome will answer the job."""
        _, keys_, args = self._job(user_id, job_id)
        args += [outcome, self._outcome_ttl_ms]
        reply = await self._run("finish", keys_, args)
        if reply[0] == 2:
            return Busy(holder=_text(reply[1]))
        _, stored, has_snapshot, limit, spent, reserved, end = reply
        return Finished(
            outcome=bytes(stored),
            snapshot=_snapshot(limit, spent, reserved, end) if has_snapshot else None,
        )


def _decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = client.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    return bool(kwargs.get("decode_responses", False))
