"""Prepaid credits: grants, manual adjustments and the immutable entries that account
for every nano-USD of them (their sum is the balance)."""

from __future__ import annotations

import json

from worker.errors import LimitReached, NoBudgetRecord
from worker.ledger.scopes import (
    ScopeOps,
    as_scope,
    pairs,
    text,
    utf8,
)
from worker.ledger.types import (
    MAX_AMOUNT_NANOUSD,
    Adjustment,
    Entry,
    Grant,
    Scope,
    check_id,
    check_int,
)


class CreditOps(ScopeOps):
    """Grants, adjustments and their history."""

    async def grant(self, scope: Scope | str, grant: Grant) -> tuple[bool, Grant]:
        """Add prepaid credit to a scope, once per grant id: ``(created, the grant as
        stored)`` (a grant id used before answers the stored grant and changes nothing)."""
        scope = as_scope(scope)
        slot, prefix = await self._locate(scope)
        args = [
            *self._args(slot, prefix),
            grant.id,
            str(grant.amount_nanousd),
            str(grant.priority),
            str(grant.effective_ms),
            "-1" if grant.expires_ms is None else str(grant.expires_ms),
        ]
        reply = await self.conn.run("grant", [slot.leases], args)
        if reply[0] == 3:
            raise _no_record(scope)
        if reply[0] == 2:
            raise LimitReached(
                f"{scope} holds the most grants a scope may (100 active)",
                kind=scope.kind,
                name=scope.id,
            )
        remaining, amount, priority, effective, expires = (int(v) for v in reply[1:6])
        stored = Grant(
            id=grant.id,
            amount_nanousd=amount,
            priority=priority,
            effective_ms=effective,
            expires_ms=None if expires < 0 else expires,
            remaining_nanousd=remaining,
        )
        return bool(reply[0] == 1), stored

    async def adjust(
        self, scope: Scope | str, adjustment_id: str, amount_nanousd: int, note: str = ""
    ) -> Adjustment:
        """Change a scope's credits by hand, once per id: whether the id was new, and
        what was applied (a negative adjustment takes at most what the credits hold).
        An id used before changes nothing and answers the stored adjustment."""
        scope = as_scope(scope)
        check_id("adjustment id", adjustment_id)
        check_int("amount_nanousd", abs(amount_nanousd), 1, MAX_AMOUNT_NANOUSD)
        slot, prefix = await self._locate(scope)
        args = [*self._args(slot, prefix), adjustment_id, str(amount_nanousd), utf8(note[:500])]
        reply = await self.conn.run("adjust", [slot.leases], args)
        if reply[0] == 3:
            raise _no_record(scope)
        created, applied, asked = reply
        return Adjustment(
            created=created == 1,
            applied_nanousd=int(applied),
            amount_nanousd=int(asked) if asked else None,
        )

    async def grants(self, scope: Scope | str) -> list[Grant]:
        """Every grant of the scope, as stored (spent ones included)."""
        scope = as_scope(scope)
        _, prefix = await self._locate(scope)
        stored = pairs(await self.conn.command("HGETALL", prefix + "grants"))
        found = []
        for gid, value in stored:
            remaining, amount, priority, effective, expires = (int(v) for v in value.split())
            found.append(
                Grant(
                    id=text(gid),
                    amount_nanousd=amount,
                    priority=priority,
                    effective_ms=effective,
                    expires_ms=None if expires < 0 else expires,
                    remaining_nanousd=remaining,
                )
            )
        return sorted(found, key=lambda g: (g.priority, g.expires_ms or 2**62, g.id))

    async def history(self, scope: Scope | str, start: int = 0, count: int = 100) -> list[Entry]:
        """The scope's credit entries, oldest first, from ``start``."""
        scope = as_scope(scope)
        check_int("start", start, 0, 2**40)
        check_int("count", count, 1, 1000)
        _, prefix = await self._locate(scope)
        raw = await self.conn.command(
            "LRANGE", prefix + "entries", str(start), str(start + count - 1)
        )
        entries = []
        for item in raw:
            data = json.loads(item)
            entries.append(
                Entry(
                    id=data["id"],
                    kind=data["kind"],
                    amount_nanousd=int(data["amount"]),
                    grant=data["grant"],
                    at_ms=int(data["at"]),
                    note=data.get("note", ""),
                )
            )
        return entries


def _no_record(scope: Scope) -> NoBudgetRecord:
    return NoBudgetRecord(
        f"{scope} has no budget record: set its budget first", kind=scope.kind, name=scope.id
    )
