"""Leases: a reservation lives only while its owner keeps renewing it.

A lease is short (``BW_LEASE_MS``, 15 s by default), so a dead worker's money comes
back within seconds, however long its calls were. A live process renews every lease
it holds in one batched ledger call every ``lease / 5``; a call never has to fit in a
lease, only the gap between two renewals does.

Fencing: no model call runs outside a live reservation. A lease's *fence* is the
last moment its holder is sure Redis still keeps it (the send time of the last
renewal that succeeded, plus the lease, minus a margin). A call runs inside
``Lease.fenced()``: it is cancelled at the fence, so an owner that cannot renew
(Redis hung, unreachable, refusing writes) stops before the ledger could hand the
money to anyone else, and at once when a renewal learns that the lease is gone. The
default lease rides out a Redis outage of lease - lease/5 - margin = 11 s without
cancelling anything.

Every time here is the event loop's clock (monotonic). Redis computes its deadlines on
its own clock from the moment a script runs, which is after the request was sent, so a
fence computed from the send time is never later than Redis's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Literal

from worker import ledger
from worker.errors import LeaseLost, LedgerError, LedgerUnavailable

log = logging.getLogger("budget_worker.leases")

FenceReason = Literal["lost", "expired"]


class Lease:
    """One reservation's lease, as its holder sees it."""

    __slots__ = ("_scope", "fence_at", "lost", "ref")

    def __init__(self, ref: ledger.LeaseRef, fence_at: float) -> None:
        self.ref = ref
        self.fence_at = fence_at
        self.lost: FenceReason | None = None
        self._scope: asyncio.Timeout | None = None

    @property
    def alive(self) -> bool:
        return self.lost is None and asyncio.get_running_loop().time() < self.fence_at

    def extend(self, fence_at: float) -> None:
        if self.lost is None and fence_at > self.fence_at:
            self.fence_at = fence_at
            if self._scope is not None:
                self._scope.reschedule(fence_at)

    def fence(self, reason: FenceReason) -> None:
        """Stop whatever runs under the lease, now; it can never run again."""
        if self.lost is None:
            self.lost = reason
            if self._scope is not None:
                self._scope.reschedule(asyncio.get_running_loop().time())

    @contextlib.asynccontextmanager
    async def fenced(self) -> AsyncIterator[None]:
        """Run the block only while the lease is alive: it is cancelled at the fence (or
        at once when the lease is lost) and :class:`LeaseLost` is raised instead."""
        if not self.alive:
            raise LeaseLost(self.lost or "expired")
        scope = asyncio.timeout_at(self.fence_at)
        try:
            async with scope:
                self._scope = scope
                yield
        except TimeoutError:
            if scope.expired():
                self.lost = self.lost or "expired"
                raise LeaseLost(self.lost) from None
            raise
        finally:
            self._scope = None


class LeaseKeeper:
    """Renews every lease of one process in one ledger call every ``renew_every_s``."""

    def __init__(
        self,
        ledger_: ledger.Ledger,
        lease_ms: int,
        *,
        renew_every_s: float | None = None,
        margin_s: float | None = None,
    ) -> None:
        self.ledger = ledger_
        self.lease_ms = lease_ms
        self.lease_s = lease_ms / 1000
        self.renew_every_s = renew_every_s if renew_every_s is not None else self.lease_s / 5
        self.margin_s = margin_s if margin_s is not None else min(1.0, self.lease_s / 10)
        self._leases: set[Lease] = set()
        self._task: asyncio.Task[None] | None = None
        self.renewals_failed = 0

    def __len__(self) -> int:
        return len(self._leases)

    def hold(self, ref: ledger.LeaseRef, sent_at: float) -> Lease:
        """Keep the lease of a reservation whose reserve was sent at ``sent_at``."""
        lease = Lease(ref, sent_at + self.lease_s - self.margin_s)
        self._leases.add(lease)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._renew_forever(), name="lease-keeper")
        return lease

    def drop(self, lease: Lease) -> None:
        self._leases.discard(lease)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew(self) -> None:
        """One batched renewal of every lease held now."""
        leases = list(self._leases)
        if not leases:
            return
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        try:
            answers = await self.ledger.renew(
                [lease.ref for lease in leases], lease_ms=self.lease_ms
            )
        except (LedgerUnavailable, LedgerError) as exc:
            # Nothing is cancelled yet: each lease's fence stays where the last renewal
            # put it, and its call runs on until then.
            self.renewals_failed += 1
            log.warning("lease renewal failed", extra={"leases": len(leases), "error": str(exc)})
            return
        fence_at = sent_at + self.lease_s - self.margin_s
        for lease, answer in zip(leases, answers, strict=True):
            if answer is True:
                lease.extend(fence_at)
            elif answer is False and lease in self._leases:
                lease.fence("lost")

    async def _renew_forever(self) -> None:
        while self._leases:
            await asyncio.sleep(self.renew_every_s)
            await self.renew()
