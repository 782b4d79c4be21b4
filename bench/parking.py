"""Parking on and off, through a real worker: the same users, rolling budgets and jobs,
once refused when they do not fit (``on_budget_exceeded`` left out) and once waiting for
budget (``"wait"``). Overspend is the worst spend in one window over its cap, from the
charged events (each names its window's end); usability is the share of the first
window's cap a user spent. Parking must keep the one and may only raise the other, and
it answers every job that waits, where the refusing run answers most of them
``budget_exceeded``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.harness import (
    Context,
    EventReader,
    FakeProvider,
    Producer,
    Report,
    job_body,
    median,
    running_workers,
    worker_env,
    write_models_file,
)
from worker.ledger import Budget, Ledger

NAME = "parking"
WINDOW_S = 4
CALLS_PER_WINDOW = 4
"""Each user's rolling budget holds about this many calls a window."""


async def _budgets(redis_url: str, users: list[str], limit: int) -> None:
    ledger = Ledger.from_url(redis_url)
    try:
        for user in users:
            await ledger.set_budget(user, Budget(limit, "rolling", window_s=WINDOW_S))
    finally:
        await ledger.close()


async def _cost_of_one(ctx: Context, fake: FakeProvider) -> int:
    """What one job costs with the fake provider (a user with a large budget)."""
    figures = await _run(ctx, fake, mode="reject", users=1, jobs_each=1, limit=10**12)
    return int(figures["costs"][0])


async def _run(
    ctx: Context, fake: FakeProvider, *, mode: str, users: int, jobs_each: int, limit: int
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    names = [f"park-{mode}-{tag}-{u}" for u in range(users)]
    jobs = []
    for n in range(jobs_each):
        for user in names:
            body = job_body(f"{user}-{n}", user)
            if mode == "wait":
                body["on_budget_exceeded"] = "wait"
            jobs.append(body)
    topics = ctx.infra.topics(3)
    await _budgets(ctx.infra.redis_url, names, limit)
    models = write_models_file(ctx.workdir, fake.url)
    env = worker_env(ctx.infra, models, topics, max_in_flight=64, park_poll_max_s=1)
    started = time.monotonic()
    async with EventReader(ctx.infra.bootstrap, topics.results) as reader:
        async with running_workers(env, ctx.workdir, 1):
            async with Producer(ctx.infra.bootstrap) as producer:
                await producer.send_many(topics.jobs, jobs)
            await reader.wait_for(len(jobs), timeout_s=30 + jobs_each * WINDOW_S * 2)
        elapsed = time.monotonic() - started
    events = [e.body for e in reader.events.values()]
    by_window: dict[tuple[str, str], int] = {}
    for event in events:
        if event["type"] == "completion.succeeded":
            key = (event["user_id"], event["budget"]["period_end"])
            by_window[key] = by_window.get(key, 0) + event["cost_nanousd"]
    first: dict[str, tuple[str, int]] = {}
    for (user, end), spent in by_window.items():
        if user not in first or end < first[user][0]:
            first[user] = (end, spent)
    return {
        "succeeded": sum(e["type"] == "completion.succeeded" for e in events),
        "rejected": sum(e["type"] == "completion.rejected" for e in events),
        "jobs": len(jobs),
        "worst": max(by_window.values(), default=0) / limit,
        "first_share": median([spent / limit for _, spent in first.values()] or [0.0]),
        "costs": [e["cost_nanousd"] for e in events if e["type"] == "completion.succeeded"],
        "seconds": elapsed,
    }


async def run(ctx: Context) -> Report:
    users = ctx.pick(2, 10, 20)
    jobs_each = ctx.pick(6, 12, 12)
    report = Report(
        name=NAME,
        title="Parked jobs: waiting for budget instead of being refused, through a worker",
        goal="with parking on, worst window spend / cap <= 1.000 and first-window share "
        "spent no lower than with it off",
        headers=[
            "on_budget_exceeded",
            "jobs",
            "succeeded",
            "rejected",
            "worst window spend / cap",
            "first window: share spent (median)",
            "seconds",
        ],
    )
    fake = FakeProvider(ctx.workdir, latency_ms=20, output_tokens=16)
    fake.start()
    try:
        one = await _cost_of_one(ctx, fake)
        limit = one * CALLS_PER_WINDOW
        figures = {}
        for mode in ("reject", "wait"):
            got = await _run(ctx, fake, mode=mode, users=users, jobs_each=jobs_each, limit=limit)
            figures[mode] = got
            report.rows.append(
                [
                    "(absent: reject)" if mode == "reject" else "wait",
                    str(got["jobs"]),
                    str(got["succeeded"]),
                    str(got["rejected"]),
                    f"{got['worst']:.3f}",
                    f"{got['first_share']:.3f}",
                    f"{got['seconds']:.1f}",
                ]
            )
    finally:
        fake.stop()
    off, on = figures["reject"], figures["wait"]
    met = on["worst"] <= 1.0 and on["first_share"] >= off["first_share"]
    report.verdict = (
        f"{'met' if met else 'NOT met'}: worst window {on['worst']:.3f} with parking "
        f"({off['worst']:.3f} without); first-window share {on['first_share']:.3f} "
        f"({off['first_share']:.3f} without); {on['succeeded']} of {on['jobs']} waiting "
        f"jobs answered succeeded ({off['succeeded']} without parking)"
    )
    report.notes += [
        f"{users} users, {jobs_each} jobs each, all sent at once; each user's budget is a "
        f"rolling {WINDOW_S} s window holding {CALLS_PER_WINDOW} calls ({limit} nano-USD; "
        f"one call costs {one}); one worker, BW_MAX_IN_FLIGHT 64, BW_PARK_POLL_MAX_S 1, "
        "the fake provider at 20 ms per call.",
        "Windows are told apart by each charged event's budget.period_end; a window's "
        "spend is the sum of its events' cost_nanousd.",
    ]
    return report
