"""Per-run budgets: a cap shared by every job of one run (an agent's task), held out of
its user's budget while the run is open. Jobs join a run by naming it in ``reserve``;
here a run is read and closed. The semantics live in ``lua/common.lua`` ("per-run
budgets") and ``docs/ledger.md``."""

from __future__ import annotations

from typing import Any

from worker import keys
from worker.ledger.scopes import ScopeOps, text
from worker.ledger.types import RunState, check_id


class RunOps(ScopeOps):
    """Reading and closing runs."""

    async def run_state(self, user_id: str, run_id: str) -> RunState | None:
        """The run as it is now (after closing it, when its expiry has passed); None
        when the user has no such run, or it ended longer ago than the keep time."""
        return await self._run(user_id, run_id, "show")

    async def close_run(self, user_id: str, run_id: str) -> RunState | None:
        """Close the run (idempotent): it takes no new job, and the part of its hold
        that its live jobs do not need flows back at once, the rest as they end."""
        return await self._run(user_id, run_id, "close")

    async def _run(self, user_id: str, run_id: str, op: str) -> RunState | None:
        check_id("user_id", user_id)
        check_id("run id", run_id)

        async def step(slot: keys.Slot) -> Any:
            args = [*self._args(slot, slot.user(user_id)), keys.encode_id(run_id), op]
            return await self.conn.run("run", [slot.leases], args)

        reply = await self._in_slot(user_id, step)
        if reply[0] == 0:
            return None
        _, state, cap, spent, reserved, hold, expires, label, live = reply
        return RunState(
            run_id=run_id,
            label=text(label),
            state=text(state),  # type: ignore[arg-type]  # the script writes only these
            cap_nanousd=int(cap),
            spent_nanousd=int(spent),
            reserved_nanousd=int(reserved),
            hold_nanousd=int(hold),
            expires_ms=int(expires),
            live_jobs=int(live),
        )
