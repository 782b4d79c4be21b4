"""The ledger's job steps (reserve, renew, settle, release, finish) and where each
user's keys live.

Every step is one Lua script in the slot of the job's user (``worker/keys.py``): a
user outside any organisation has a slot of its own, a member of an organisation
lives in the organisation's slot with every scope above it, so one script checks and
moves them all at once. Which organisation a user belongs to is in the directory
``{bw:dir}``; each process caches it for ``directory_ttl_s``. A stale entry is safe:
a user who moved leaves a tombstone in the old slot, and a script that reaches it
answers where the user went (and the step runs there), or, while the move is under
way, asks to try again in a moment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from schemas.money import usd_to_nanousd
from worker import keys
from worker.errors import LedgerError, LedgerUnavailable
from worker.ledger.connection import Connection, RedisClient, client_from_url, translate
from worker.ledger.credits import CreditOps
from worker.ledger.idempotency import IdempotencyRecords
from worker.ledger.membership import MembershipOps
from worker.ledger.outbox import OutboxOps
from worker.ledger.park import ParkList
from worker.ledger.runs import RunOps
from worker.ledger.scopes import opt, snapshot, text, utf8
from worker.ledger.types import (
    MAX_AMOUNT_NANOUSD,
    MAX_LEASE_MS,
    MAX_TOKENS,
    Budget,
    Busy,
    Finished,
    LeaseRef,
    NoBudget,
    Refused,
    Reserved,
    ReserveResult,
    RunRequest,
    Settled,
    check_id,
    check_int,
)
from worker.settings import Settings


class Ledger(MembershipOps, CreditOps, RunOps, OutboxOps):
    """Budgets, reservations, rate limits and credits of every scope, over one Redis.

    ``charge_ttl_s`` is how long a final job record (the charge marker that stops a
    second charge) is kept, and how long a spend hash outlives its period, for late
    settles; ``outcome_ttl_s`` how long a job's stored outcome is kept for redeliveries
    (a job record is kept at least as long as its outcome). ``default_budget`` is given
    to a user with no budget on their first reserve. ``max_in_flight`` bounds
    concurrent calls (the cluster client raises instead of waiting when a node's
    connections run out). ``clock_ms`` replaces Redis's clock with the caller's, for
    tests that move time (grant expiry); the worker never sets it.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        charge_ttl_s: int = 7 * 86400,
        outcome_ttl_s: int = 86400,
        default_budget: Budget | None = None,
        max_in_flight: int | None = None,
        directory_ttl_s: float = 60.0,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        check_int("charge_ttl_s", charge_ttl_s, 1, 10 * 365 * 86400)
        check_int("outcome_ttl_s", outcome_ttl_s, 1, 10 * 365 * 86400)
        self.conn = Connection(client, max_in_flight)
        # A job record (the charge marker) is kept at least as long as its outcome, so
        # the record alone tells whether a job is final.
        self._keep_ms = str(max(charge_ttl_s, outcome_ttl_s) * 1000)
        self._outcome_ttl_ms = str(outcome_ttl_s * 1000)
        self.default_budget = default_budget
        if default_budget is not None and default_budget.limit_nanousd is None:
            raise ValueError("a default budget needs a USD limit")
        self._default_args: list[str | bytes] = (
            ["", "", "", "", ""]
            if default_budget is None
            else [
                str(default_budget.limit_nanousd),
                default_budget.period,
                opt(default_budget.window_s),
                opt(default_budget.rpm),
                opt(default_budget.tpm),
            ]
        )
        self._directory_ttl_s = directory_ttl_s
        self._clock_ms = clock_ms
        self._slots: dict[str, tuple[float, keys.Slot]] = {}
        self._outbox_marks: dict[str, float] = {}

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
        """A ledger over a client built from ``url`` (see ``client_from_url``). Callers
        past ``max_connections`` wait for a free connection instead of failing. Other
        keyword arguments go to :class:`Ledger`."""
        client = client_from_url(
            url, cluster=cluster, max_connections=max_connections, timeout_s=timeout_s
        )
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
        await self.conn.close()

    def idempotency_records(self) -> IdempotencyRecords:
        """The admin API's records of first answers, over this ledger's connection."""
        return IdempotencyRecords(self.conn)

    def park_list(self) -> ParkList:
        """The jobs waiting for budget, over this ledger's connection."""
        return ParkList(self.conn)

    async def ping(self) -> None:
        """Raise :class:`LedgerUnavailable` unless Redis answers."""
        await self.conn.command("PING")

    async def check_access(self) -> None:
        """Like :meth:`ping`, but refused credentials are a ``ConfigError``."""
        await self.conn.check_access()

    def _job_keys(self, slot: keys.Slot, job_id: str) -> list[str]:
        check_id("job_id", job_id)
        return [slot.leases, slot.job(job_id), slot.outcome(job_id)]

    def _head(self, slot: keys.Slot, job_id: str) -> list[str | bytes]:
        return [slot.prefix, self._keep(), keys.job_token(job_id)]

    # -- jobs --------------------------------------------------------------------------

    async def reserve(
        self,
        user_id: str,
        job_id: str,
        *,
        cost_nanousd: int,
        tokens: int,
        lease_ms: int,
        holder: str,
        model: str = "",
        run: RunRequest | None = None,
    ) -> ReserveResult:
        """Hold ``cost_nanousd`` (an upper bound) and ``tokens`` against every limit of
        every scope on the job's path (the user, its limit on ``model``, its team, its
        organisation) until ``lease_ms`` from now, all or nothing. A job of a ``run``
        holds its cost against the run instead of the scopes the run is carved from
        (their rate limits still apply); the run's first job carves it. See reserve.lua."""
        check_int("cost_nanousd", cost_nanousd, 0, MAX_AMOUNT_NANOUSD)
        check_int("tokens", tokens, 0, MAX_TOKENS)
        check_int("lease_ms", lease_ms, 1, MAX_LEASE_MS)
        model_token = keys.encode_id(model) if model else ""
        run_args = _run_args(run)
        checked = "0"

        async def step(slot: keys.Slot) -> Any:
            args = [
                *self._head(slot, job_id),
                utf8(holder),
                str(cost_nanousd),
                str(tokens),
                str(lease_ms),
                slot.user(user_id),
                model_token,
                "1" if slot.is_org else "0",
                utf8(user_id),
                *self._default_args,
                checked,
                *run_args,
            ]
            return await self.conn.run("reserve", self._job_keys(slot, job_id), args)

        reply = await self._in_slot(user_id, step)
        if reply[0] == 7:
            # The user moved here lately: a job that ended in its previous slot is final.
            ended = await self._ended_in(keys.Slot(text(reply[1])), job_id)
            if ended is not None:
                return ended
            checked = "1"
            reply = await self._in_slot(user_id, step)
        kind = reply[0]
        if kind == 1:
            _, existing, cost, tokens_, deadline, holder_, limit, spent, reserved, end, ix, rem = (
                reply
            )
            if ix:
                await self._index_created(user_id)
            return Reserved(
                job_id=job_id,
                cost_nanousd=int(cost),
                tokens=int(tokens_),
                lease_deadline_ms=int(deadline),
                existing=bool(existing),
                holder=text(holder_),
                snapshot=snapshot(limit, spent, reserved, end, rem),
            )
        if kind == 2:
            _, name, remaining, retry, limit, spent, reserved, end, ix, label, rem = reply[:11]
            if ix:
                await self._index_created(user_id)
            retry_ms = int(retry)
            return Refused(
                limit=name.decode(),
                remaining=int(remaining),
                retry_after_ms=None if retry_ms < 0 else retry_ms,
                snapshot=snapshot(limit, spent, reserved, end, rem),
                scope=text(label),
                run_closed=len(reply) > 11,
            )
        if kind == 3:
            return NoBudget()
        if kind == 4:
            _, has_outcome, outcome, has_snapshot, limit, spent, reserved, end, rem = reply
            return Finished(
                outcome=bytes(outcome) if has_outcome else None,
                snapshot=snapshot(limit, spent, reserved, end, rem) if has_snapshot else None,
            )
        raise LedgerError(f"reserve answered an unknown reply kind {kind!r}")

    async def _ended_in(self, slot: keys.Slot, job_id: str) -> Finished | None:
        """The job's final answer in ``slot`` (a user's previous one), if it ended there.
        Plain reads: a final job record no longer changes."""
        job = await self.conn.command(
            "HMGET",
            slot.job(job_id),
            "state",
            "snap_limit",
            "snap_spent",
            "snap_reserved",
            "period_end",
            "snap_remaining",
        )
        state = job[0]
        if state not in (b"settled", b"released"):
            return None
        outcome = await self.conn.command("GET", slot.outcome(job_id))
        view = None
        if state == b"settled":
            limit, spent, reserved, end, rem = (v or b"0" for v in job[1:])
            view = snapshot(limit, spent, reserved, end or b"-1", rem)
        return Finished(outcome=bytes(outcome) if outcome else None, snapshot=view)

    async def extend(self, user_id: str, job_id: str, *, lease_ms: int, holder: str) -> bool:
        """Move the lease deadline to ``lease_ms`` from now (0: due at once). False when
        the job holds no live reservation of ``holder``."""
        check_int("lease_ms", lease_ms, 0, MAX_LEASE_MS)
        slot = await self.slot_of(user_id)
        args = [*self._head(slot, job_id), utf8(holder), str(lease_ms)]
        return bool(await self.conn.run("extend", self._job_keys(slot, job_id), args))

    async def renew(self, leases: Sequence[LeaseRef], *, lease_ms: int) -> list[bool | None]:
        """Move many leases' deadlines to ``lease_ms`` from now in one round trip (a
        pipeline of extend scripts; on Redis Cluster one per node). Each answer is True
        (renewed), False (the holder no longer holds a live reservation: its lease was
        reclaimed, or the job ended) or None (that lease's node did not answer). Raises
        :class:`LedgerUnavailable` when Redis did not answer at all."""
        check_int("lease_ms", lease_ms, 0, MAX_LEASE_MS)
        if not leases:
            return []
        commands = []
        for lease in leases:
            slot = await self.slot_of(lease.user_id)
            args = [*self._head(slot, lease.job_id), utf8(lease.holder), str(lease_ms)]
            commands.append((self._job_keys(slot, lease.job_id), args))
        answers = await self.conn.pipeline("extend", commands)
        if answers and all(isinstance(answer, BaseException) for answer in answers):
            raise translate(answers[0])
        return [None if isinstance(a, BaseException) else bool(a) for a in answers]

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
        """Charge the call made under ``holder``'s reservation its actual cost, once,
        to every scope the reservation was made against (even past the caps). The live
        holder's reservation becomes spend; any other holder's call is charged on its
        own. See settle.lua."""
        check_int("cost_nanousd", cost_nanousd, 0, MAX_AMOUNT_NANOUSD)
        check_int("tokens", tokens, 0, MAX_TOKENS)

        async def step(slot: keys.Slot) -> Any:
            args = [
                *self._head(slot, job_id),
                utf8(holder),
                str(cost_nanousd),
                str(tokens),
                utf8(model),
                outcome,
                self._outcome_ttl_ms,
                slot.user(user_id),
                keys.encode_id(model),
                "1" if slot.is_org else "0",
            ]
            # Before the script: a threshold it decides is then always findable by the
            # sweepers, even if this process dies right after (worker.ledger.outbox).
            # Best effort: a charge never waits on the index (on Cluster, another node);
            # without the mark, this process's own drain after the settle publishes it.
            with contextlib.suppress(LedgerUnavailable):
                await self.mark_outbox(slot)
            return await self.conn.run("settle", self._job_keys(slot, job_id), args)

        reply = await self._in_slot(user_id, step)
        first, charged, has_outcome, stored, limit, spent, reserved, end, rem, crossed = reply
        return Settled(
            charged_nanousd=int(charged),
            first=bool(first),
            outcome=bytes(stored) if has_outcome else None,
            snapshot=snapshot(limit, spent, reserved, end, rem),
            thresholds_crossed=int(crossed),
        )

    async def release(
        self, user_id: str, job_id: str, *, holder: str, outcome: bytes | None = None
    ) -> bool:
        """Drop ``holder``'s reservation, charging nothing; True if it was live. Another
        holder's live reservation is never touched. With ``outcome`` the job is final;
        without, a redelivery may reserve it again."""

        async def step(slot: keys.Slot) -> Any:
            args = [*self._head(slot, job_id), utf8(holder)]
            if outcome is None:
                args += ["0", b"", self._outcome_ttl_ms]
            else:
                args += ["1", outcome, self._outcome_ttl_ms]
            args.append(slot.user(user_id))
            return await self.conn.run("release", self._job_keys(slot, job_id), args)

        return bool(await self._in_slot(user_id, step))

    async def finish(self, user_id: str, job_id: str, *, outcome: bytes) -> Finished | Busy:
        """Record the final outcome of a job that holds no reservation (a refusal); the
        first outcome stored wins and is returned (with its settle's snapshot, when the
        job was settled). :class:`Busy` when another delivery of the job holds a live
        reservation: its outcome will answer the job."""

        async def step(slot: keys.Slot) -> Any:
            args = [*self._head(slot, job_id), outcome, self._outcome_ttl_ms, slot.user(user_id)]
            return await self.conn.run("finish", self._job_keys(slot, job_id), args)

        reply = await self._in_slot(user_id, step)
        if reply[0] == 2:
            return Busy(holder=text(reply[1]))
        _, stored, has_snapshot, limit, spent, reserved, end, rem = reply
        return Finished(
            outcome=bytes(stored),
            snapshot=snapshot(limit, spent, reserved, end, rem) if has_snapshot else None,
        )


def _run_args(run: RunRequest | None) -> list[str | bytes]:
    """reserve.lua's ARGV[18..21]: the run, its cap, its ttl and its raw id."""
    if run is None:
        return ["", "", "", ""]
    return [keys.encode_id(run.id), str(run.cap_nanousd), str(run.ttl_s * 1000), utf8(run.id)]
