"""Many OS processes reserving against one user's budget never admit past the cap."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from worker.ledger import Budget, Ledger, PeriodSnapshot

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 4
RESERVES_PER_PROCESS = 250

# Each process waits for a common start instant, then fires all its reserves at once
# and prints what was admitted as JSON.
CHILD = """
import asyncio, json, sys, time
from worker.ledger import Ledger, Reserved, Refused

url, user, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
start_at, costs = float(sys.argv[4]), json.loads(sys.argv[5])

async def main():
    ledger = Ledger.from_url(url, max_connections=64)
    await ledger.ping()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    results = await asyncio.gather(*(
        ledger.reserve(user, f"p{index}-j{i}", cost_nanousd=cost, tokens=0, lease_ms=60_000,
                       holder=f"p{index}")
        for i, cost in enumerate(costs)
    ))
    await ledger.close()
    admitted = {r.job_id: r.cost_nanousd for r in results if isinstance(r, Reserved)}
    refused = sum(isinstance(r, Refused) for r in results)
    print(json.dumps({"admitted": admitted, "refused": refused}))

asyncio.run(main())
"""


async def current(ledger: Ledger, user: str) -> PeriodSnapshot:
    state = await ledger.state(user)
    assert state is not None
    return state.snapshot


async def test_concurrent_reserves_from_four_processes_never_pass_the_cap(redis_url: str) -> None:
    rng = random.Random(7)
    cap = 200_000_000  # USD 0.20
    costs = [
        [rng.randrange(100_000, 1_000_000) for _ in range(RESERVES_PER_PROCESS)]
        for _ in range(PROCESSES)
    ]
    assert sum(map(sum, costs)) > 2 * cap  # far more asked than fits
    ledger = Ledger.from_url(redis_url)
    try:
        await ledger.set_budget("shared", Budget(cap, "daily"))
        start_at = time.time() + 2.0
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                redis_url,
                "shared",
                str(i),
                str(start_at),
                json.dumps(costs[i]),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            for i in range(PROCESSES)
        ]
        reports = []
        for child in children:
            out, err = await asyncio.wait_for(child.communicate(), timeout=60)
            assert child.returncode == 0, err.decode()
            reports.append(json.loads(out))

        admitted: dict[str, int] = {}
        for report in reports:
            admitted.update(report["admitted"])
        assert sum(r["refused"] for r in reports) + len(admitted) == 1000
        assert sum(admitted.values()) <= cap
        snapshot = await current(ledger, "shared")
        assert snapshot.reserved_nanousd == sum(admitted.values())
        # Refusals happened only because the budget was (nearly) full.
        assert cap - sum(admitted.values()) < 1_000_000

        charged = 0
        for job_id, cost in admitted.items():
            settled = await ledger.settle(
                "shared",
                job_id,
                holder=job_id.split("-", 1)[0],  # the process that reserved it
                cost_nanousd=cost,
                tokens=0,
                model="m",
                outcome=b"ok",
            )
            charged += settled.charged_nanousd
        after = await current(ledger, "shared")
        assert charged == after.spent_nanousd == sum(admitted.values())
        assert after.reserved_nanousd == 0
    finally:
        await ledger.close()
