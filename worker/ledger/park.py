"""The park: jobs that wait for budget (``on_budget_exceeded: wait``), kept in Redis.

A sorted set orders parked jobs by when to check them next, and a hash per job holds
its bytes, when its wait runs out and its latest refusal (``worker.keys``: the slot
``{bw:park}``). Workers claim due jobs with a lease: a claimed job's score becomes
the claim's lapse, so two workers never hold it at once, and a dead worker's claim
lapses by itself. Each step is one standalone script (``lua/park*.lua``), idempotent
by the job's member, and claim-checked: a worker whose claim lapsed changes nothing.

Parked jobs are not ledger money: nothing is reserved while a job waits. A job's one
charge and one outcome stay the ledger's (by job id), so a job the park hands out
twice is still charged at most once and answered its first outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker import keys
from worker.ledger.connection import Connection

_ENTRY_PREFIX = keys.park_entry("")
_FIELDS_PER_CLAIM = 6


@dataclass(frozen=True, slots=True)
class ParkedJob:
    """A parked job as a worker claimed it."""

    member: str
    job: bytes
    until_ms: int
    """When its wait runs out (Unix ms)."""
    parked_ms: int
    """When it was first parked (Unix ms, Redis's clock)."""
    refusal: bytes
    """The budget refusal it got at its latest check: its answer if the wait runs out."""
    poll_ms: int
    """The pause before the check after the next one (doubles up to a bound)."""


class ParkList:
    """Park, claim, re-park and remove waiting jobs."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def park(
        self,
        user_id: str,
        job_id: str,
        *,
        job: bytes,
        delay_ms: int,
        until_ms: int,
        refusal: bytes,
        poll_ms: int,
    ) -> tuple[bool, int]:
        """Park a job, first checked ``delay_ms`` from now; whether it was parked now
        (False: it was parked already, and nothing changed) and when it was first
        parked (Unix ms)."""
        member = keys.park_member(user_id, job_id)
        args: list[str | bytes] = [
            member,
            str(max(0, delay_ms)),
            str(until_ms),
            job,
            refusal,
            str(poll_ms),
        ]
        new, parked = await self.conn.run("park", [keys.PARK_DUE, keys.park_entry(member)], args)
        return bool(new), int(parked)

    async def claim(self, count: int, *, lease_ms: int, token: str) -> list[ParkedJob]:
        """Up to ``count`` due jobs, each held by ``token`` for ``lease_ms``."""
        args = [_ENTRY_PREFIX, str(count), str(lease_ms), token]
        reply = await self.conn.run("park_claim", [keys.PARK_DUE], args)
        claimed = []
        for i in range(0, len(reply), _FIELDS_PER_CLAIM):
            member, job, until, parked, refusal, poll = reply[i : i + _FIELDS_PER_CLAIM]
            claimed.append(
                ParkedJob(
                    member=member.decode(),
                    job=bytes(job),
                    until_ms=int(until),
                    parked_ms=int(parked),
                    refusal=bytes(refusal),
                    poll_ms=int(poll),
                )
            )
        return claimed

    async def again(
        self, member: str, *, token: str, delay_ms: int, refusal: bytes, poll_ms: int
    ) -> bool:
        """Give a claimed job back, next checked ``delay_ms`` from now (``refusal`` b""
        keeps the stored one). False when the claim is no longer ``token``'s."""
        args: list[str | bytes] = [member, token, str(max(0, delay_ms)), refusal, str(poll_ms)]
        return bool(await self.conn.run("park_again", self._keys(member), args))

    async def done(self, member: str, *, token: str) -> bool:
        """Remove a claimed job whose event is out. False when another claim holds it."""
        return bool(await self.conn.run("park_done", self._keys(member), [member, token]))

    async def extend(self, members: Sequence[str], *, token: str, lease_ms: int) -> int:
        """Renew ``token``'s claims on ``members``; how many were still its own."""
        if not members:
            return 0
        args = [_ENTRY_PREFIX, token, str(lease_ms), *members]
        return int(await self.conn.run("park_extend", [keys.PARK_DUE], args))

    async def count(self) -> int:
        """Jobs in the park now, claimed ones included."""
        return int(await self.conn.command("ZCARD", keys.PARK_DUE))

    @staticmethod
    def _keys(member: str) -> list[str]:
        return [keys.PARK_DUE, keys.park_entry(member)]
