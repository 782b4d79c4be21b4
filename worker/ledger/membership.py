"""Who belongs where: teams in organisations, users in teams. Membership is set here,
never by a job; a move between slots carries a user's limits, spend and credits, and
waits for its reservations to end (see ``worker.ledger.scopes``)."""

from __future__ import annotations

import json

from worker import keys
from worker.errors import BudgetWorkerError, LedgerError, ScopeConflict, UnknownScope
from worker.ledger.scopes import (
    ScopeOps,
    pairs,
    text,
    utf8,
)
from worker.ledger.types import (
    Budget,
    Membership,
    Page,
    Scope,
    check_id,
    check_int,
)

MAX_HOPS = 8
"""Tombstones followed at most by one read: a user moved more often than this between
two reads of the directory is read again by the caller."""


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
            raise ScopeConflict(
                f"team {team_id!r} belongs to another organisation than {org_id!r}; a team "
                "cannot move",
                kind="org",
                name=org_id,
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
                raise UnknownScope(
                    f"team {team!r} does not exist: create_team first", kind="team", name=team
                )
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

    async def membership(self, user_id: str) -> Membership | None:
        """The user's team and organisation, whether or not it has a budget; None when
        the ledger holds no record of the user (no budget, membership or credits ever
        set). Plain reads: a stale directory entry is followed to where the user went."""
        check_id("user_id", user_id)
        slot = await self.slot_of(user_id)
        for _ in range(MAX_HOPS):
            label, raw_id, team, moved_to = await self.conn.command(
                "HMGET", slot.user(user_id) + "budget", "label", "user_id", "team", "moved_to"
            )
            if not moved_to:
                break
            slot = keys.Slot(text(moved_to))
            self._remember(keys.encode_id(user_id), slot)
        else:
            raise LedgerError(f"user {user_id!r} kept moving while its membership was read")
        if label is None and raw_id is None and team is None:
            return None
        org = await self._org_name(slot) if slot.is_org else None
        return Membership(team=await self._name("team", team or b""), org=org)

    async def members(self, scope: Scope, cursor: str | None = None, count: int = 100) -> Page:
        """One page of the users in a team, or directly in an organisation (in no team),
        sorted within the page; ``cursor`` as :meth:`list_scopes`. Raises
        :class:`UnknownScope` for a team never created or an organisation never named.
        Members who joined before the index existed appear once their membership is
        set again."""
        check_int("count", count, 1, 1000)
        if scope.kind == "team":
            slot, prefix = await self._locate(scope)
        elif scope.kind == "org":
            token = keys.encode_id(scope.id)
            if not await self.conn.command("HEXISTS", keys.ORGS_INDEX, token):
                raise UnknownScope(
                    f"organisation {scope.id!r} is not known", kind="org", name=scope.id
                )
            slot = keys.org_slot(token)
            prefix = slot.org
        else:
            raise ValueError(f"only a team or an organisation has members, not a {scope.kind}")
        following, flat = await self.conn.command(
            "HSCAN", keys.members(prefix), cursor or "0", "COUNT", str(count)
        )
        names = sorted(text(name) for _, name in pairs(flat))
        after = text(following) if isinstance(following, bytes) else str(following)
        return Page(items=names, cursor=None if after == "0" else after)

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
