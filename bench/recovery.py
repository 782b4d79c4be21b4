"""Recovery: three worker processes under load, one SIGKILLed mid-call. How long from
the kill until every job it held is answered elsewhere (its reservations lapse when
nobody renews them, after at most ``BW_LEASE_MS``), with the default lease.

The goal (the exact-money issue): every job the killed worker held gets its terminal
event within 20 s of the kill; nobody over budget; the ledger equals the charged
events.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from bench.harness import (
    Context,
    EventReader,
    FakeProvider,
    Producer,
    Report,
    jobs_for,
    median,
    running_workers,
    set_budgets,
    spread,
    worker_env,
    write_models_file,
)

NAME = "recovery"
GOAL_S = 20.0
LATENCY_MS = 500
BUDGET_NANOUSD = 10**12


async def held_by(redis_url: str, worker_id: str) -> set[str]:
    """Job ids whose live reservation ``worker_id`` holds now."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        held = set()
        async for key in client.scan_iter("bw:*:job:*", count=1000):
            state, holder = await client.hmget(key, "state", "holder")
            mine = isinstance(holder, bytes) and holder.startswith(worker_id.encode() + b":")
            if state == b"reserved" and mine:
                held.add(key.decode().rsplit(":job:", 1)[1])
        return held
    finally:
        await client.aclose()


async def one_kill(ctx: Context, fake: FakeProvider, jobs: int) -> dict[str, float]:
    infra = ctx.infra
    topics = infra.topics(partitions=6)
    env = worker_env(infra, write_models_file(ctx.workdir, fake.url), topics)
    env.pop("BW_LEASE_MS", None)  # the default lease is what is measured
    batch = jobs_for(jobs, users=30, max_tokens=16)
    await set_budgets(infra.redis_url, {j["user_id"] for j in batch}, BUDGET_NANOUSD)
    async with (
        running_workers(env, ctx.workdir, count=3) as procs,
        EventReader(infra.bootstrap, topics.results) as reader,
        Producer(infra.bootstrap) as producer,
    ):
        await asyncio.sleep(5)  # the group settles on three members
        victim = procs[0]
        victim_id = victim.env["BW_WORKER_ID"]
        await producer.send_many(topics.jobs, batch)
        held: set[str] = set()
        for _ in range(400):
            held = await held_by(infra.redis_url, victim_id)
            if len(held) >= 3:
                break
            await asyncio.sleep(0.01)
        victim.stop()
        killed_at = time.time()
        await reader.wait_for(len(batch), timeout_s=120)
        answered = [reader.events[job_id].received_s - killed_at for job_id in held]
        last = max(event.received_s for event in reader.events.values()) - killed_at
        outcomes = {e.type for e in reader.events.values()}
    return {
        "held": float(len(held)),
        "held_last_s": max(answered) if answered else float("nan"),
        "held_median_s": median(answered),
        "all_last_s": last,
        "ok": float(outcomes == {"completion.succeeded"}),
    }


async def run(ctx: Context) -> Report:
    reps = ctx.pick(1, 2, 4)
    jobs = ctx.pick(120, 600, 1200)
    report = Report(
        name=NAME,
        title="7. Recovery: a worker SIGKILLed mid-call, 3 workers, default lease",
        goal=f"every job the killed worker held answered within {GOAL_S:.0f} s of the kill",
        headers=[
            "jobs",
            "jobs the killed worker held",
            "kill to its last job's answer (s)",
            "kill to its median job's answer (s)",
            "kill to the last answer of all (s)",
        ],
    )
    fake = FakeProvider(ctx.workdir, latency_ms=LATENCY_MS, output_tokens=16)
    fake.start()
    runs = []
    try:
        for _ in range(reps):
            runs.append(await one_kill(ctx, fake, jobs))
    finally:
        fake.stop()
    report.rows.append(
        [
            str(jobs),
            spread([r["held"] for r in runs]),
            spread([r["held_last_s"] for r in runs], "{:.1f}"),
            spread([r["held_median_s"] for r in runs], "{:.1f}"),
            spread([r["all_last_s"] for r in runs], "{:.1f}"),
        ]
    )
    worst = max(r["held_last_s"] for r in runs)
    all_ok = all(r["ok"] for r in runs)
    report.verdict = (
        f"worst kill-to-answer {worst:.1f} s over {reps} kill(s): goal "
        f"{'met' if worst <= GOAL_S and all_ok else 'NOT met'}"
        + ("" if all_ok else " (some jobs did not succeed)")
    )
    report.notes += [
        f"Fake provider {LATENCY_MS} ms per call, 30 users, 6 partitions, {reps} "
        "repetition(s), median (min-max). The killed worker's jobs are those whose live "
        "reservation it held in the ledger at the kill. They wait, at their new owner, for "
        "the old reservation to lapse (BW_LEASE_MS, 15 s, not renewed by anyone), then run "
        "again; the consumer group notices the dead member after the session timeout "
        "(aiokafka's 10 s), inside that lapse.",
    ]
    return report
