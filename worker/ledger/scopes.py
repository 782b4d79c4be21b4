"""The ledger's administrative steps: where each user lives, and the limits of every
scope. Mixed into :class:`worker.ledger.Ledger`, with membership
(``worker.ledger.membership``) and credits (``worker.ledger.credits``).

Membership is ledger data set here, never by a job: a user's team is a field of its
record, a team's organisation an entry of the directory, fixed when the team is
created (an organisation is the unit of placement on Redis Cluster: moving a team
would move every member). A user moves between slots only by :meth:`set_membership`
(joining an organisation, leaving one, or changing to a team of another), and only
while it holds no reservation: jobs in flight keep the scopes they were reserved
against in any case, and a move must not strand their money (``JobsInFlight``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from worker import keys
from worker.errors import LedgerError, LedgerUnavailable, UnknownScope
from worker.ledger.connection import Connection
from worker.ledger.types import (
    PERIODS,
    Budget,
    BudgetState,
    Page,
    PeriodSnapshot,
    Scope,
    check_id,
    check_int,
)

MOVING_RETRY_S = 0.05
MOVING_WAIT_S = 15.0
_INDEX = {"user": keys.USERS_INDEX, "team": keys.TEAMS_INDEX, "org": keys.ORGS_INDEX}


def utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _opt_int(data: bytes | None) -> int | None:
    return int(data) if data else None


def snapshot(
    limit: Any, spent: Any, reserved: Any, period_end: Any, remaining: Any
) -> PeriodSnapshot:
    end = int(period_end)
    return PeriodSnapshot(
        limit_nanousd=int(limit or 0),
        spent_nanousd=int(spent),
        reserved_nanousd=int(reserved),
        remaining_nanousd=max(0, int(remaining)),
        period_end_ms=None if end < 0 else end,
    )


def as_scope(scope: Scope | str) -> Scope:
    """A ``Scope``; a plain string is a user id (never parsed: it may hold ':')."""
    return scope if isinstance(scope, Scope) else Scope("user", scope)


def pairs(reply: Any) -> list[tuple[bytes, bytes]]:
    """A hash reply as (field, value) pairs: redis-py answers HGETALL and HSCAN with a
    dict on some clients and protocol versions and a flat list on others."""
    if isinstance(reply, dict):
        return list(reply.items())
    return [(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]


def thresholds_arg(thresholds: tuple[int, ...] | None) -> str:
    """set_budget.lua's ARGV[14]: '' for the default, else the percents, and '-' for
    none at all."""
    if thresholds is None:
        return ""
    return " ".join(str(pct) for pct in thresholds) or "-"


def _thresholds(raw: bytes | None) -> tuple[int, ...] | None:
    if not raw:
        return None
    return tuple(int(part) for part in text(raw).split() if part.isdigit())


def _budget(fields: list[Any], thresholds: bytes | None = None) -> Budget:
    limit, period, window_s, _start, rpm, tpm, rollover = fields
    name = text(period) if period else "none"
    if name not in PERIODS:
        raise LedgerError(f"stored budget has an unknown period {name!r}")
    return Budget(
        limit_nanousd=_opt_int(limit),
        period=name,  # type: ignore[arg-type]  # checked against PERIODS above
        window_s=_opt_int(window_s),
        rpm=_opt_int(rpm),
        tpm=_opt_int(tpm),
        rollover_cap_nanousd=_opt_int(rollover),
        thresholds=_thresholds(thresholds),
    )


class ScopeOps:
    """Placement and the administrative steps (see the module docstring)."""

    conn: Connection
    _keep_ms: str
    _clock_ms: Callable[[], int] | None
    _directory_ttl_s: float
    _slots: dict[str, tuple[float, keys.Slot]]

    def _keep(self) -> str:
        """ARGV[2] of every script: the keep time, and a fixed clock when one is set."""
        if self._clock_ms is None:
            return self._keep_ms
        return f"{self._keep_ms}:{self._clock_ms()}"

    # -- where a user, team or org lives ----------------------------------------------

    async def slot_of(self, user_id: str) -> keys.Slot:
        """The slot of ``user_id``'s keys (cached for ``directory_ttl_s``)."""
        check_id("user_id", user_id)
        token = keys.encode_id(user_id)
        cached = self._slots.get(token)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        org = await self.conn.command("HGET", keys.DIRECTORY, "u:" + token)
        slot = keys.org_slot(text(org)) if org else keys.own_slot(user_id)
        self._remember(token, slot)
        return slot

    def _remember(self, token: str, slot: keys.Slot) -> None:
        if len(self._slots) > 100_000:
            self._slots.clear()
        self._slots[token] = (time.monotonic() + self._directory_ttl_s, slot)

    async def _in_slot(self, user_id: str, step: Callable[[keys.Slot], Awaitable[Any]]) -> Any:
        """Run ``step`` in the user's slot, following a move it ran into: a ``{5, tag}``
        answer sends it to that slot, a ``{6}`` answer (moving) tries again shortly."""
        slot = await self.slot_of(user_id)
        deadline = time.monotonic() + MOVING_WAIT_S
        for _ in range(1000):
            reply = await step(slot)
            if isinstance(reply, list) and reply and reply[0] == 5:
                slot = keys.Slot(text(reply[1]))
                self._remember(keys.encode_id(user_id), slot)
                continue
            if isinstance(reply, list) and reply and reply[0] == 6:
                if time.monotonic() > deadline:
                    raise LedgerUnavailable(f"user {user_id!r} is still moving between slots")
                await asyncio.sleep(MOVING_RETRY_S)
                continue
            return reply
        raise LedgerError(f"user {user_id!r} kept moving during one step")

    async def _team_org(self, team_id: str) -> str | None:
        org = await self.conn.command("HGET", keys.DIRECTORY, "t:" + keys.encode_id(team_id))
        return text(org) if org else None

    async def _locate(self, scope: Scope) -> tuple[keys.Slot, str]:
        """The slot and the key prefix of ``scope``."""
        if scope.kind == "user":
            slot = await self.slot_of(scope.id)
            return slot, slot.user(scope.id)
        if scope.kind == "team":
            org = await self._team_org(scope.id)
            if org is None:
                raise UnknownScope(
                    f"team {scope.id!r} belongs to no organisation: create it first "
                    "(create_team, or `budget-worker budget team TEAM --org ORG`)",
                    kind="team",
                    name=scope.id,
                )
            slot = keys.org_slot(org)
            return slot, slot.team(scope.id)
        slot = keys.org_slot(keys.encode_id(scope.id))
        return slot, slot.org

    def _args(self, slot: keys.Slot, prefix: str) -> list[str | bytes]:
        return [slot.prefix, self._keep(), prefix]

    async def _index(self, scope: Scope) -> None:
        await self.conn.command(
            "HSET", _INDEX[scope.kind], keys.encode_id(scope.id), utf8(scope.id)
        )

    async def _index_created(self, user_id: str) -> None:
        """Index a budget that reserve created from the default. The index lives in
        another slot, so this is a second step; if it fails, the next reserve of the
        user tries again (the budget stays marked until it succeeds)."""
        try:
            await self._index(Scope("user", user_id))
            slot = await self.slot_of(user_id)
            await self.conn.run("mark_indexed", [slot.user(user_id) + "budget"], [utf8(user_id)])
        except (LedgerUnavailable, LedgerError):
            pass

    # -- limits ------------------------------------------------------------------------

    async def set_budget(self, scope: Scope | str, budget: Budget) -> None:
        """Create or change a scope's limits. The current period's spend is kept (a
        changed period kind starts counting in that kind's current period); a user's
        membership and every scope's credits are kept."""
        scope = as_scope(scope)
        slot, prefix = await self._locate(scope)
        # Index first: a listed scope may lack limits for a moment, never the reverse.
        await self._index(scope)
        if scope.kind == "org":
            await self.conn.command(
                "HSET", keys.DIRECTORY, "o:" + keys.encode_id(scope.id), slot.tag
            )
        await self._write_budget(slot, prefix, str(scope), scope, budget)

    async def _write_budget(
        self,
        slot: keys.Slot,
        prefix: str,
        label: str,
        scope: Scope,
        budget: Budget,
        parent: str = "",
        model_token: str = "",
    ) -> None:
        args = [
            *self._args(slot, prefix),
            utf8(label),
            utf8(scope.id) if scope.kind == "user" and not parent else b"",
            opt(budget.limit_nanousd),
            budget.period,
            opt(budget.window_s),
            opt(budget.rpm),
            opt(budget.tpm),
            parent,
            model_token,
            opt(budget.rollover_cap_nanousd),
            thresholds_arg(budget.thresholds),
        ]
        await self.conn.run("set_budget", [slot.leases], args)

    async def set_model_budget(self, user_id: str, model: str, budget: Budget) -> None:
        """A user's own limit on one model (checked with the user's, in the same step)."""
        check_id("model", model)
        slot = await self.slot_of(user_id)
        user_prefix = slot.user(user_id)
        prefix = keys.model_scope(user_prefix, model)
        await self._write_budget(
            slot,
            prefix,
            f"model:{user_id}/{model}",
            Scope("user", user_id),
            budget,
            parent=user_prefix,
            model_token=keys.encode_id(model),
        )

    async def get_budget(self, scope: Scope | str) -> Budget | None:
        state = await self.state(scope)
        return None if state is None else state.budget

    async def state(self, scope: Scope | str) -> BudgetState | None:
        """The scope's limits and current period; None when it has none (a user without
        a USD limit or credits has no budget, whatever its membership)."""
        scope = as_scope(scope)
        try:
            slot, prefix = await self._locate(scope)
        except UnknownScope:
            return None
        reply = await self.conn.run("state", [slot.leases], self._args(slot, prefix))
        if reply[0] == 0 or reply[15]:  # none, or a tombstone of a user that moved
            return None
        limit, period, window_s, start, rpm, tpm = reply[1:7]
        period_id, period_end, spent, reserved, drawn, credits, team, _label, _moved = reply[7:16]
        if scope.kind == "user" and not limit and int(credits) == 0:
            grants = await self.conn.command("HLEN", prefix + "grants")
            if not grants:
                return None
        rollover, carried, thresholds = reply[16:19]
        models = reply[19:]
        budget = _budget([limit, period, window_s, start, rpm, tpm, rollover], thresholds)
        room = (budget.limit_nanousd or 0) + int(carried) - (int(spent) - int(drawn)) + int(credits)
        return BudgetState(
            scope=scope,
            budget=budget,
            snapshot=snapshot(limit, spent, reserved, period_end, room - int(reserved)),
            period_id=text(period_id),
            model_spend_nanousd={
                text(models[i]): int(models[i + 1]) for i in range(0, len(models), 2)
            },
            drawn_nanousd=int(drawn),
            carried_nanousd=int(carried),
            credits_nanousd=int(credits),
            team=await self._name("team", team),
            org=await self._org_name(slot) if slot.is_org else None,
        )

    async def _name(self, kind: str, token: bytes) -> str | None:
        if not token:
            return None
        raw = await self.conn.command("HGET", _INDEX[kind], token)
        return text(raw) if raw else text(token)

    async def _org_name(self, slot: keys.Slot) -> str | None:
        return await self._name("org", slot.tag[2:].encode())

    async def list_users(self) -> list[str]:
        """Every user that has a budget (or had one), sorted."""
        names = await self.conn.command("HVALS", keys.USERS_INDEX)
        return sorted(text(name) for name in names)

    async def list_scopes(self, kind: str, cursor: str | None = None, count: int = 100) -> Page:
        """One page of the ids of every scope of ``kind`` (``user``, ``team``, ``org``)."""
        index = _INDEX.get(kind)
        if index is None:
            raise ValueError(f"kind must be one of {sorted(_INDEX)}, not {kind!r}")
        check_int("count", count, 1, 1000)
        next_cursor, flat = await self.conn.command(
            "HSCAN", index, cursor or "0", "COUNT", str(count)
        )
        names = sorted(text(name) for _, name in pairs(flat))
        following = text(next_cursor) if isinstance(next_cursor, bytes) else str(next_cursor)
        return Page(items=names, cursor=None if following == "0" else following)

    async def reset(self, scope: Scope | str) -> bool:
        """Zero the current period's spend (live reservations stay). False if the scope
        has no record."""
        scope = as_scope(scope)
        slot, prefix = await self._locate(scope)
        return bool(await self.conn.run("reset", [slot.leases], self._args(slot, prefix)))

    async def delete(self, scope: Scope | str) -> bool:
        """Remove the scope's limits and rate-limit state; False if it had none. Spend,
        credits, membership and live reservations are left to settle and expire."""
        scope = as_scope(scope)
        _slot, prefix = await self._locate(scope)
        existed = bool(
            await self.conn.run("delete", [prefix + "budget", prefix + "rpm", prefix + "tpm"], [])
        )
        await self.conn.command("HDEL", _INDEX[scope.kind], keys.encode_id(scope.id))
        return existed
