"""The ledger gate: open while Redis answers, closed during an outage.

Redis down means stop, not guess: no reservation, no model call. Every ledger call of
the spend path goes through :meth:`LedgerGate.call`, which waits out an outage and
tries again (every script is idempotent, so a call that may or may not have run is
safe to repeat). The consumer fetches nothing while the gate is closed, and
``/readyz`` answers 503; :meth:`LedgerGate.watch` keeps the gate true to Redis even
when no job touches it (a fresh process whose Redis never answered is not ready).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from worker.errors import LedgerUnavailable

log = logging.getLogger("budget_worker.gate")
T = TypeVar("T")

IDLE_PROBE_S = 5.0


class LedgerGate:
    """Whether the ledger answered last time, and waiting for it when it did not.

    ``on_change(open)`` is called whenever that changes (the ``bw_redis_up`` gauge).
    A gate starts closed: it opens on the first answer.
    """

    def __init__(self, retry_s: float, on_change: Callable[[bool], None] | None = None) -> None:
        self.retry_s = retry_s
        self._on_change = on_change
        self._open = asyncio.Event()
        if on_change is not None:
            on_change(False)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def opened(self) -> None:
        if not self._open.is_set():
            log.info("ledger reachable; resuming")
            self._open.set()
            if self._on_change is not None:
                self._on_change(True)

    def closed(self, error: LedgerUnavailable) -> None:
        if self._open.is_set():
            log.error("ledger unavailable; pausing", extra={"error": str(error)})
            self._open.clear()
            if self._on_change is not None:
                self._on_change(False)

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again every ``retry_s`` while the ledger is unavailable."""
        while True:
            try:
                result = await call()
            except LedgerUnavailable as exc:
                self.closed(exc)
                await asyncio.sleep(self.retry_s)
                continue
            self.opened()
            return result

    async def watch(self, ping: Callable[[], Awaitable[None]]) -> None:
        """Probe the ledger for ever: every ``retry_s`` while closed, every
        ``IDLE_PROBE_S`` while open (run it as a task; cancel it to stop)."""
        while True:
            try:
                await ping()
            except LedgerUnavailable as exc:
                self.closed(exc)
            else:
                self.opened()
            await asyncio.sleep(IDLE_PROBE_S if self.is_open else self.retry_s)
