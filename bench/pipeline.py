"""Pipeline overhead: jobs/s of one worker process end to end (Kafka in, Redis ledger,
litellm to the fake provider over HTTP, Kafka out) over calls/s of bare
``litellm.acompletion`` to the same fake provider at the same concurrency.

The fake provider answers at once (no latency) from a process of its own, so both sides
are bound by their own CPU: the ratio is what the worker's own work costs. The jobs
topic is filled first, then the worker starts; its rate is taken from the timestamps
of the events it produces, between the 10th and 90th percentile (start-up and the
drain left out). The bare client also runs in a fresh process of its own and is timed
the same way. Baseline and pipeline alternate, repetition by repetition, so noise from
a shared machine falls on both; each repetition's ratio pairs the two neighbours.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.harness import (
    Context,
    CpuSampler,
    EventReader,
    FakeProvider,
    Producer,
    Report,
    jobs_for,
    median,
    outcome_counts,
    run_bare_litellm,
    running_workers,
    set_budgets,
    spread,
    steady_rate,
    steady_window,
    worker_env,
    write_models_file,
)

NAME = "pipeline"
GOAL_RATIO = 0.95
USERS = 100
COLUMNS = {
    "bare_rate": "{:.0f}",
    "frozen_rate": "{:.0f}",
    "worker_rate": "{:.0f}",
    "ratio": "{:.2f}",
    "frozen_ratio": "{:.2f}",
    "bare_cpu": "{:.2f}",
    "frozen_cpu": "{:.2f}",
    "worker_cpu": "{:.2f}",
    "cpu_ratio": "{:.2f}",
    "servers_cpu": "{:.2f}",
}
"""Each repetition's figures and how they are printed, in table order."""
HEADERS = [
    "bare litellm calls/s",
    "bare, frozen calls/s",
    "worker jobs/s",
    "ratio",
    "ratio to frozen bare",
    "bare CPU ms/call",
    "frozen bare CPU ms/call",
    "worker CPU ms/job",
    "CPU ratio (bare/worker)",
    "Kafka + Redis CPU ms/job",
]


async def pipeline_rate(
    ctx: Context,
    fake: FakeProvider,
    *,
    jobs: int,
    concurrency: int,
    partitions: int = 3,
    workers: int = 1,
    users: int = USERS,
    extra_env: dict[str, Any] | None = None,
    on_started: Any = None,
) -> dict[str, Any]:
    """Fill a fresh jobs topic, start the worker(s), and time the events they publish.
    ``on_started(procs)`` (a coroutine function) runs once the workers are ready, e.g.
    to attach a profiler; its result is returned as ``"attached"``."""
    topics = ctx.infra.topics(partitions)
    batch = jobs_for(jobs, users)
    await set_budgets(ctx.infra.redis_url, [j["user_id"] for j in batch], 10**14)
    async with Producer(ctx.infra.bootstrap, linger_ms=5) as producer:
        await producer.send_many(topics.jobs, batch)
    models = write_models_file(ctx.workdir, fake.url)
    env = worker_env(ctx.infra, models, topics, max_in_flight=concurrency, **(extra_env or {}))
    attached = None
    async with EventReader(ctx.infra.bootstrap, topics.results) as reader:
        async with running_workers(env, ctx.workdir, workers) as procs:
            started = time.monotonic()
            pids = {f"worker{i}": p.pid for i, p in enumerate(procs)}
            pids.update(ctx.infra.pids())
            if fake.process is not None:
                pids["fake provider"] = fake.pid
            sampler = CpuSampler(pids)
            sampler.start()
            if on_started is not None:
                attached = await on_started(procs)
            try:
                await reader.wait_for(jobs, timeout_s=max(120, jobs / 20))
            finally:
                await sampler.stop()
            elapsed = time.monotonic() - started
            rss = [p.peak_rss_mb() for p in procs]
        events = list(reader.events.values())
    times = [e.produced_s for e in events]
    start, end, done = steady_window(times)
    cpu_ms_per_job = {name: 1000 * sampler.used(name, start, end) / done for name in pids if done}
    return {
        "cpu_ms_per_job": cpu_ms_per_job,
        "rate": steady_rate(times),
        "outcomes": outcome_counts(events),
        "duplicates": reader.duplicates,
        "wall_s": elapsed,
        "peak_rss_mb": rss,
        "attached": attached,
        "times": times,
    }


async def run(ctx: Context) -> Report:
    reps = ctx.pick(1, 2, 4)
    jobs = ctx.pick(40, 600, 1200)
    concurrency = 64  # BW_MAX_IN_FLIGHT's default
    report = Report(
        name=NAME,
        title="1. Pipeline overhead (one worker process vs bare litellm)",
        goal=f"worker jobs/s / bare litellm calls/s >= {GOAL_RATIO} at the same concurrency",
        headers=["repetition", *HEADERS],
    )
    fake = FakeProvider(ctx.workdir, latency_ms=0, output_tokens=16)
    fake.start()
    columns: dict[str, list[float]] = {key: [] for key in COLUMNS}
    try:
        for rep in range(reps):
            results: dict[str, dict[str, Any]] = {}
            steps = ("bare", "worker", "frozen") if rep % 2 == 0 else ("frozen", "worker", "bare")
            for step in steps:
                if step == "worker":
                    out = await pipeline_rate(ctx, fake, jobs=jobs, concurrency=concurrency)
                    if out["outcomes"] != {"completion.succeeded": jobs}:
                        report.notes.append(f"repetition {rep + 1}: outcomes {out['outcomes']}")
                else:
                    out = await asyncio.to_thread(
                        run_bare_litellm,
                        ctx.workdir,
                        fake.url,
                        concurrency,
                        jobs,
                        16,
                        freeze=step == "frozen",
                    )
                    if out["errors"]:
                        report.notes.append(f"repetition {rep + 1}: {out['errors']} call errors")
                results[step] = out
            bare, frozen, worker = results["bare"], results["frozen"], results["worker"]
            cpu = worker["cpu_ms_per_job"]
            # CPU times tick in 10 ms: a tiny (smoke) run may see none in its window.
            worker_ms = cpu.get("worker0", math.nan)
            row = {
                "bare_rate": bare["rate"],
                "frozen_rate": frozen["rate"],
                "worker_rate": worker["rate"],
                "ratio": worker["rate"] / bare["rate"],
                "frozen_ratio": worker["rate"] / frozen["rate"],
                "bare_cpu": bare["cpu_ms"],
                "frozen_cpu": frozen["cpu_ms"],
                "worker_cpu": worker_ms,
                "cpu_ratio": bare["cpu_ms"] / worker_ms if worker_ms > 0 else math.nan,
                "servers_cpu": cpu.get("kafka", 0.0) + cpu.get("redis", 0.0),
            }
            for key, value in row.items():
                columns[key].append(value)
            report.rows.append([str(rep + 1)] + [COLUMNS[k].format(v) for k, v in row.items()])
    finally:
        fake.stop()
    report.rows.append(
        ["**median (min-max)**"] + [spread(values, COLUMNS[k]) for k, values in columns.items()]
    )
    ratios, cpu_ratios = columns["ratio"], columns["cpu_ratio"]
    worker_rates = columns["worker_rate"]
    ctx.results["pipeline_rate"] = median(worker_rates)
    met = median(ratios) >= GOAL_RATIO
    report.verdict = (
        f"throughput ratio {median(ratios):.2f}, CPU ratio {median(cpu_ratios):.2f} "
        f"(medians of {reps}): goal {'met' if met else 'NOT met'}; against a bare client "
        f"that also freezes its start-up objects: {median(columns['frozen_ratio']):.2f}"
    )
    report.notes += [
        f"{jobs} jobs per repetition over {USERS} users (budgets far from their caps), "
        f"3 partitions, BW_MAX_IN_FLIGHT={concurrency}; the bare client runs {concurrency} "
        "concurrent callers with the same arguments (model, api_base, max_tokens=16, "
        "timeout, no retries), in a fresh process.",
        "Fake provider: its own process, no latency, 16 output tokens, `fast` token "
        "counting. Kafka (Tansu) and Redis run on the same 2 CPUs as the worker: their "
        "CPU is part of the pipeline's cost, and of no cost to the bare client.",
        "Rates are steady-state (10th to 90th percentile of completion times). CPU per "
        "job is user+system time of the process (all threads) over the same window, "
        "from /proc; the CPU ratio is the worker's own overhead, much less sensitive to "
        "other load on the machine than the throughput ratio.",
        "The worker hides its start-up objects (litellm's ~400,000) from the garbage "
        "collector (`gc.freeze()`, see docs/design.md); a plain program calling litellm "
        "does not, and that is the goal's baseline. The frozen bare client is the same "
        "program with the worker's freeze: the ratio to it is the worker's own cost alone.",
    ]
    return report
