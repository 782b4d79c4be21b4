"""Overspend under concurrency: max(spend / budget) over users, for one user and for 50,
with 1, 10, 100 and 1,000 concurrent callers spread over 1, 2 and 4 processes.

Every caller repeats one workload until it is refused: a one-message prompt, a
simulated model call of 1-4 ms, a realistic actual cost (the prompt's real token count,
an output of lognormal length around 150 tokens capped by ``max_tokens`` = 256),
always within the estimate. Three ways to guard the budget run the same workload:

- **ledger**: the worker's path: reserve the estimate (``worker.estimate``, an upper
  bound) with the ledger's Lua script, call, settle the actual cost. Stop at the first
  refusal.
- **BudgetManager**: litellm's own ``BudgetManager`` class, in the process, used as its
  documentation and notebook do: ``if get_current_cost(user) <= get_total_budget(user):``
  call, then ``update_cost(completion_obj=response)`` (litellm prices the response). Its
  file persistence is switched off (it writes the whole dict from a new thread on every
  update; that changes nothing in the check). One process only: its state lives in the
  process.
- **check-then-spend (shared)**: the same pattern with the state where several processes
  can share it, a Redis hash: ``HGET`` the spend, compare with the budget, call,
  ``HINCRBYFLOAT`` the cost. The best BudgetManager's pattern can do across processes
  (its own file store would also lose updates).

Callers are split evenly over the processes (a level below the process count is
skipped); every process starts at the same instant. Spend is read from each guard's own
store at the end, and checked against the sum of the costs the callers incurred.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import multiprocessing
import random
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bench.harness import PROMPT, Context, Report, spread
from schemas.money import nanousd_to_usd, to_nanousd, usd_to_nanousd
from worker.dev.rig import MODEL, PRICE_IN, PRICE_OUT

NAME = "overspend"
LEVELS = (1, 10, 100, 1000)
PROCESSES = (1, 2, 4)
USER_COUNTS = (1, 50)
MAX_TOKENS = 256
CALLS_PER_BUDGET = 20  # a budget holds about this many typical calls
CALL_S = (0.001, 0.004)
POOL = 256  # connections per process (BW_REDIS_MAX_CONNECTIONS' default)
TIMEOUT_S = 15.0  # generous: a thousand callers start at once on a shared machine


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int
    """The prompt's real token count (what a provider would report)."""
    estimate_nanousd: int
    estimate_tokens: int
    budget_nanousd: int


def workload() -> Workload:
    """The estimate the worker would reserve for the bench prompt, and a budget of about
    ``CALLS_PER_BUDGET`` typical calls."""
    from schemas.jobs import CompletionJob
    from worker.dev.fake_provider import count_prompt_tokens
    from worker.estimate import estimate
    from worker.models import ModelEntry
    from worker.prices import ModelPrice, TokenUsage

    price = ModelPrice(Decimal(PRICE_IN), Decimal(PRICE_OUT))
    entry = ModelEntry(
        name=MODEL,
        litellm_params={"model": f"openai/{MODEL}"},
        price=price,
        max_output_tokens=None,
        tokenizer_family="openai",
    )
    messages = [{"role": "user", "content": PROMPT}]
    job = CompletionJob.model_validate(
        {
            "schema_version": 1,
            "job_id": "w",
            "user_id": "u",
            "model": MODEL,
            "messages": messages,
            "max_tokens": MAX_TOKENS,
        }
    )
    bound = estimate(job, entry, MAX_TOKENS)
    prompt_tokens = count_prompt_tokens(messages, MODEL, "exact")
    typical = price.cost_nanousd(TokenUsage(prompt_tokens, 150))
    return Workload(prompt_tokens, bound.cost_nanousd, bound.tokens, typical * CALLS_PER_BUDGET)


def cost_nanousd(prompt_tokens: int, completion_tokens: int) -> int:
    cost = Decimal(PRICE_IN) * prompt_tokens + Decimal(PRICE_OUT) * completion_tokens
    return to_nanousd(cost, round_up=False)


def output_tokens(rng: random.Random) -> int:
    return max(1, min(MAX_TOKENS, round(rng.lognormvariate(math.log(150), 0.5))))


@dataclass(frozen=True)
class Spec:
    method: str
    redis_url: str
    run: str
    users: int
    callers: int
    """Callers in this process."""
    first_caller: int
    start_at: float
    work: Workload
    seed: int


async def _ledger_callers(spec: Spec) -> dict[str, Any]:
    from worker.ledger import Ledger, Reserved

    # The worker's own pool size: more callers wait for a connection, as jobs do there.
    ledger = Ledger.from_url(spec.redis_url, max_connections=POOL, timeout_s=TIMEOUT_S)
    await ledger.ping()
    incurred = [0] * spec.users
    calls = 0

    async def caller(index: int) -> None:
        nonlocal calls
        rng = random.Random(spec.seed * 100_003 + index)
        user = index % spec.users
        n = 0
        while True:
            job_id = f"os-{spec.run}-{index}-{n}"
            n += 1
            result = await ledger.reserve(
                f"os-{spec.run}-{user}",
                job_id,
                cost_nanousd=spec.work.estimate_nanousd,
                tokens=spec.work.estimate_tokens,
                lease_ms=60_000,
                holder="bench",
            )
            if not isinstance(result, Reserved):
                return
            await asyncio.sleep(rng.uniform(*CALL_S))
            out = output_tokens(rng)
            cost = cost_nanousd(spec.work.prompt_tokens, out)
            incurred[user] += cost
            calls += 1
            await ledger.settle(
                f"os-{spec.run}-{user}",
                job_id,
                holder="bench",
                cost_nanousd=cost,
                tokens=spec.work.prompt_tokens + out,
                model=MODEL,
                outcome=b"{}",
            )

    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    await asyncio.gather(*(caller(spec.first_caller + i) for i in range(spec.callers)))
    await ledger.close()
    return {"incurred": incurred, "calls": calls}


async def _shared_callers(spec: Spec) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(
            spec.redis_url,
            max_connections=POOL,
            timeout=TIMEOUT_S,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
        )
    )
    await client.ping()
    budget_usd = nanousd_to_usd(spec.work.budget_nanousd)
    incurred = [0] * spec.users
    calls = 0

    async def caller(index: int) -> None:
        nonlocal calls
        rng = random.Random(spec.seed * 100_003 + index)
        user = index % spec.users
        key = f"bm:{spec.run}:{user}"
        while True:
            spent = float(await client.hget(key, "current_cost") or 0)
            if not spent <= budget_usd:
                return
            await asyncio.sleep(rng.uniform(*CALL_S))
            cost = cost_nanousd(spec.work.prompt_tokens, output_tokens(rng))
            incurred[user] += cost
            calls += 1
            await client.hincrbyfloat(key, "current_cost", nanousd_to_usd(cost))

    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    await asyncio.gather(*(caller(spec.first_caller + i) for i in range(spec.callers)))
    await client.aclose()
    return {"incurred": incurred, "calls": calls}


async def _budget_manager_callers(spec: Spec) -> dict[str, Any]:
    # Set up as in the worker: offline (cost map, tokenizer files) and warmed up.
    from worker import startup

    startup.prepare()
    from worker.provider import litellm  # type: ignore[attr-defined]

    class QuietBudgetManager(litellm.BudgetManager):  # type: ignore[misc,name-defined]
        """litellm's class, without its file store (a new thread per update)."""

        def load_data(self) -> None:
            self.user_dict: dict[str, Any] = {}

        def _save_data_thread(self) -> None:
            pass

    manager = QuietBudgetManager(project_name=f"bench-{spec.run}")
    budget_usd = nanousd_to_usd(spec.work.budget_nanousd)
    for user in range(spec.users):
        manager.create_budget(total_budget=budget_usd, user=str(user))
    incurred = [0] * spec.users
    calls = 0

    async def caller(index: int) -> None:
        nonlocal calls
        rng = random.Random(spec.seed * 100_003 + index)
        user = index % spec.users
        while manager.get_current_cost(user=str(user)) <= manager.get_total_budget(str(user)):
            await asyncio.sleep(rng.uniform(*CALL_S))
            out = output_tokens(rng)
            response = litellm.ModelResponse(
                model=MODEL,
                usage=litellm.Usage(
                    prompt_tokens=spec.work.prompt_tokens,
                    completion_tokens=out,
                    total_tokens=spec.work.prompt_tokens + out,
                ),
            )
            incurred[user] += cost_nanousd(spec.work.prompt_tokens, out)
            calls += 1
            manager.update_cost(user=str(user), completion_obj=response)

    await asyncio.gather(*(caller(spec.first_caller + i) for i in range(spec.callers)))
    spent = [manager.get_current_cost(user=str(u)) / budget_usd for u in range(spec.users)]
    return {"incurred": incurred, "calls": calls, "ratios": spent}


def _child(spec: Spec) -> dict[str, Any]:
    """One process's callers (runs in a pool process)."""
    runner = {"ledger": _ledger_callers, "shared": _shared_callers}[spec.method]
    return asyncio.run(runner(spec))


async def _spend_ratios(
    method: str, redis_url: str, run: str, users: int, budget: int
) -> list[float]:
    if method == "ledger":
        from worker.ledger import Ledger

        ledger = Ledger.from_url(redis_url)
        try:
            spent = []
            for user in range(users):
                state = await ledger.state(f"os-{run}-{user}")
                assert state is not None
                spent.append(state.snapshot.spent_nanousd / budget)
            return spent
        finally:
            await ledger.close()
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        values = [await client.hget(f"bm:{run}:{u}", "current_cost") for u in range(users)]
    finally:
        await client.aclose()
    return [usd_to_nanousd(float(v or 0), round_up=False) / budget for v in values]


async def one_config(
    ctx: Context,
    pool: concurrent.futures.ProcessPoolExecutor,
    work: Workload,
    method: str,
    users: int,
    callers: int,
    processes: int,
    seed: int,
) -> tuple[float, float]:
    """``(max spend/budget over users, max incurred/budget)`` of one configuration."""
    run = uuid.uuid4().hex[:10]
    if method == "ledger":
        from worker.ledger import Budget, Ledger

        ledger = Ledger.from_url(ctx.infra.redis_url)
        try:
            budget = Budget(limit_nanousd=work.budget_nanousd, period="none")
            await asyncio.gather(
                *(ledger.set_budget(f"os-{run}-{u}", budget) for u in range(users))
            )
        finally:
            await ledger.close()
    # Pool processes are warm: a short head start lets each connect before the start.
    start_at = time.time() + 0.3 + 0.1 * processes
    specs = []
    for p in range(processes):
        share = callers // processes + (1 if p < callers % processes else 0)
        first = sum(callers // processes + (1 if q < callers % processes else 0) for q in range(p))
        specs.append(
            Spec(method, ctx.infra.redis_url, run, users, share, first, start_at, work, seed)
        )
    if method == "bm":
        results = [await _budget_manager_callers(specs[0])]
        ratios = results[0]["ratios"]
    else:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, _child, spec) for spec in specs)
        )
        ratios = await _spend_ratios(method, ctx.infra.redis_url, run, users, work.budget_nanousd)
    incurred = [sum(r["incurred"][u] for r in results) for u in range(users)]
    return max(ratios), max(i / work.budget_nanousd for i in incurred)


async def run(ctx: Context) -> Report:
    reps = ctx.pick(1, 1, 2)
    levels = ctx.pick((10,), (1, 100, 1000), LEVELS)
    processes = ctx.pick((1, 2), (1, 2), PROCESSES)
    work = workload()
    report = Report(
        name=NAME,
        title="3. Overspend under concurrency (max spend / budget over users)",
        goal="the ledger's max(spend / budget) <= 1.000 in every configuration",
        headers=[
            "users",
            "callers",
            "processes",
            "ledger",
            "BudgetManager (in process)",
            "check-then-spend (shared Redis hash)",
        ],
    )
    worst_ledger = 0.0
    mismatches = 0
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max(processes), mp_context=context) as pool:
        # Start the pool's processes (imports) before anything is timed.
        warm = Spec("shared", ctx.infra.redis_url, "warm", 1, 1, 0, 0.0, work, 0)
        await asyncio.gather(
            *(
                asyncio.get_running_loop().run_in_executor(pool, _child, warm)
                for _ in range(max(processes))
            )
        )
        for users in ctx.pick((50,), USER_COUNTS, USER_COUNTS):
            for callers in levels:
                for procs in processes:
                    if callers < procs:
                        continue
                    cells = []
                    for method in ("ledger", "bm", "shared"):
                        if method == "bm" and procs > 1:
                            cells.append("-")
                            continue
                        ratios = []
                        for rep in range(reps):
                            ratio, incurred = await one_config(
                                ctx, pool, work, method, users, callers, procs, rep
                            )
                            if abs(ratio - incurred) > 1e-6 * max(1.0, incurred):
                                mismatches += 1
                            ratios.append(ratio)
                        if method == "ledger":
                            worst_ledger = max(worst_ledger, *ratios)
                        cells.append(spread(ratios, "{:.3f}"))
                    report.rows.append([str(users), str(callers), str(procs), *cells])
    met = worst_ledger <= 1.0
    report.verdict = (
        f"ledger worst max(spend/budget) {worst_ledger:.3f} over every configuration and "
        f"repetition: goal {'met' if met else 'NOT met'}"
    )
    report.notes += [
        f"Budget {work.budget_nanousd} nano-USD per user (about {CALLS_PER_BUDGET} typical "
        f"calls); the ledger reserves {work.estimate_nanousd} nano-USD per call "
        f"(prompt bound + max_tokens {MAX_TOKENS}); actual calls: {work.prompt_tokens} "
        "prompt tokens and lognormal output around 150 tokens, capped at "
        f"{MAX_TOKENS}. Each cell: median (min-max) over {reps} repetitions of the worst "
        "user's spend / budget.",
        "BudgetManager's check is `current_cost <= total_budget` (its documented pattern), so "
        "even one caller overspends by up to one call; under concurrency every call that "
        "passed the check before the others' updates landed is spent.",
        f"Each process reaches Redis through a pool of {POOL} connections (the worker's "
        "default BW_REDIS_MAX_CONNECTIONS); callers beyond that wait for one.",
        "Spend as recorded by each store matched the sum of the callers' own costs"
        + ("." if mismatches == 0 else f", except in {mismatches} runs."),
    ]
    return report
