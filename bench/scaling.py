"""Scaling with latency: the fake provider takes 200 ms per call; throughput of one worker
at ``BW_MAX_IN_FLIGHT`` 10, 100 and 1,000, and of one against two worker processes
(same total in-flight cap), with the peak RSS (``VmHWM``) of the worker processes.

With 200 ms per call a worker can finish at most in_flight / 0.2 s jobs per second;
"of ideal" is the measured rate over that bound. Past the bound set by the worker's own
CPU (see the pipeline benchmark) more in flight only adds waiting.
"""

from __future__ import annotations

from typing import Any

from bench.harness import Context, FakeProvider, Report, spread
from bench.pipeline import pipeline_rate

NAME = "scaling"
LATENCY_MS = 200
GOAL_RSS_MB = 300


async def run(ctx: Context) -> Report:
    reps = ctx.pick(1, 1, 2)
    # (label, workers, BW_MAX_IN_FLIGHT per worker, jobs, partitions)
    configs: list[tuple[str, int, int, int, int]] = ctx.pick(
        [("1 worker", 1, 1000, 100, 4)],
        [
            ("1 worker", 1, 10, 200, 4),
            ("1 worker", 1, 1000, 2000, 4),
            ("2 workers", 2, 500, 2000, 4),
        ],
        [
            ("1 worker", 1, 10, 200, 4),
            ("1 worker", 1, 100, 700, 4),
            ("1 worker", 1, 1000, 3500, 4),
            ("2 workers", 2, 50, 700, 4),
            ("2 workers", 2, 500, 3500, 4),
        ],
    )
    report = Report(
        name=NAME,
        title=f"5. Scaling with provider latency ({LATENCY_MS} ms per call)",
        goal=f"peak RSS of a worker at 1000 in flight <= {GOAL_RSS_MB} MB",
        headers=[
            "processes",
            "in flight (total)",
            "jobs",
            "jobs/s",
            "of ideal",
            "worker CPU ms/job",
            "CPU cores used by workers",
            "peak RSS per worker MB",
        ],
    )
    fake = FakeProvider(ctx.workdir, latency_ms=LATENCY_MS, output_tokens=16)
    fake.start()
    rss_at_1000: list[float] = []
    try:
        for label, workers, in_flight, jobs, partitions in configs:
            rates, rss, cpu, cores = [], [], [], []
            for _ in range(reps):
                out: dict[str, Any] = await pipeline_rate(
                    ctx,
                    fake,
                    jobs=jobs,
                    concurrency=in_flight,
                    workers=workers,
                    partitions=partitions,
                )
                if out["outcomes"] != {"completion.succeeded": jobs}:
                    report.notes.append(f"{label} x {in_flight}: outcomes {out['outcomes']}")
                rates.append(out["rate"])
                per_job = [v for k, v in out["cpu_ms_per_job"].items() if k.startswith("worker")]
                cpu.append(sum(per_job))
                cores.append(out["rate"] * sum(per_job) / 1000)
                rss += [r for r in out["peak_rss_mb"] if r is not None]
            total = in_flight * workers
            if workers == 1 and in_flight == 1000:
                rss_at_1000 = rss
            ideal = total / (LATENCY_MS / 1000)
            report.rows.append(
                [
                    label,
                    str(total),
                    str(jobs),
                    spread(rates),
                    spread([r / ideal for r in rates], "{:.0%}"),
                    spread(cpu, "{:.2f}"),
                    spread(cores, "{:.2f}"),
                    spread(rss),
                ]
            )
    finally:
        fake.stop()
    peak = max(rss_at_1000) if rss_at_1000 else float("nan")
    report.verdict = (
        f"peak RSS at 1000 in flight {peak:.0f} MB: goal "
        f"{'met' if peak <= GOAL_RSS_MB else 'NOT met'}"
    )
    report.notes += [
        f"Jobs per run as listed, {reps} repetition(s), 4 partitions, 100 users; rates are "
        "steady-state (10th to 90th percentile of event times). The two-worker rows split the "
        "same total in-flight cap over two processes of one consumer group.",
        "Every process (workers, fake provider, Kafka, Redis, this driver) shares the "
        "machine's 2 CPUs. Worker CPU per job is summed over the workers (user+system from "
        "/proc over the steady window); cores used = jobs/s x CPU per job. At 1000 in flight "
        "a run needs several times 1000 jobs: the first 1000 start together and finish in "
        "a burst that a short run would mistake for throughput.",
    ]
    return report
