"""Who belongs where: teams in organisations, users in teams. Membership is set here,
never by a job; a move between slots carries a user's limits, spend and credits, and
waits for its reservations to end (see ``worker.ledger.scopes``)."""

from __future__ import annotations

import json

from worker import keys
from worker.errors import BudgetWorkerError, LedgerError
from worker.ledger.scopes import (
    ScopeOps,
    text,
    utf8,
)
from worker.ledger.types import (
    Budget,
    Scope,
    check_id,
)


class JobsInFlight(BudgetWorkerError):
    """A user cannot move to another slot while it holds reservations; try again when
    its jobs have ended."""

    retryable = True


class MembershipOps(ScopeOps):
    """Teams, membership and moves between slots."""

    async def create_team(self, team_id: str, org_id: str) -> None:
        """Create ``team_id`` in organisation ``org_id`` (idempotent). A team's
        organisation is fixed: it is where its members' keys live."""
        check_id("team_id", team_id)
        check_id("org_id", org_id)
        org_token = keys.encode_id(org_id)
        field = "t:" + keys.encode_id(team_id)
        await self.conn.command("HSETNX", keys.DIRECTORY, field, org_token)
        placed = await self._team_org(team_id)
        if placed != org_token:
            raise ValueError(
                f"team {team_id!r} belongs to another organisation; a team cannot move"
            )
        await self._index(Scope("org", org_id))
        await self._index(Scope("team", team_id))
        for scope in (Scope("org", org_id), Scope("team", team_id)):
            if await self.state(scope) is None:
                await self.set_budget(scope, Budget(None, "none"))

    async def set_membership(
        self, user_id: str, *, team: str | None = None, org: str | None = None
    ) -> None:
        """Put a user in ``team`` (and so its organisation), directly in ``org``, or in
        neither. Within one organisation this is one step; between slots the user
        moves (refused with :class:`JobsInFlight` while it holds reservations)."""
        check_id("user_id", user_id)
        if team is not None:
            org_token = await self._team_org(team)
            if org_token is None:
                raise ValueError(f"team {team!r} does not exist: create_team first")
            target = keys.org_slot(org_token)
        elif org is not None:
            await self._index(Scope("org", org))
            target = keys.org_slot(keys.encode_id(org))
        else:
            target = keys.own_slot(user_id)
        team_token = keys.encode_id(team) if team is not None else ""
        await self._index(Scope("user", user_id))
        current = await self.slot_of(user_id)
        if current != target:
            current = await self._move(user_id, current, target)
        args = [*self._args(target, target.user(user_id)), utf8(user_id), team_token]
        if not await self.conn.run("set_team", [target.leases], args):
            raise LedgerError(f"team {team!r} has no record in its organisation's slot")
        await self._place(user_id, target)

    async def _place(self, user_id: str, slot: keys.Slot) -> None:
        token = keys.encode_id(user_id)
        if slot.is_org:
            await self.conn.command("HSET", keys.DIRECTORY, "u:" + token, slot.tag[2:])
        else:
            await self.conn.command("HDEL", keys.DIRECTORY, "u:" + token)
        self._remember(token, slot)

    async def _move(self, user_id: str, source: keys.Slot, target: keys.Slot) -> keys.Slot:
        """Move a user's limits, current spend, per-model limits and credits from
        ``source`` to ``target``; idempotent, so a move cut short is finished by the
        next."""
        out = await self.conn.run(
            "move_out", [source.leases], self._args(source, source.user(user_id))
        )
        kind = out[0]
        if kind == 0:
            raise JobsInFlight(
                f"user {user_id!r} holds {int(out[1])} reservation(s): it can move to another "
                "organisation once its jobs have ended"
            )
        if kind == 2:  # moved already (a stale directory): go on from where it is
            moved = keys.Slot(text(out[1]))
            await self._place(user_id, moved)
            return moved if moved == target else await self._move(user_id, moved, target)
        if kind == 1:
            data = text(out[1])
            json.loads(data)  # fail here, not inside a script, on a malformed answer
            args = [*self._args(target, target.user(user_id)), data.encode(), b"", source.tag]
            await self.conn.run("move_in", [target.leases], args)
            await self._place(user_id, target)
            done = [*self._args(source, source.user(user_id)), target.tag]
            await self.conn.run("move_done", [source.leases], done)
        return target
