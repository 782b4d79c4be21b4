"""Added latency: the time from enqueueing a job to its result event, minus the time the
provider itself took, p50/p99, at light load (one job at a time) and at half of the
worker's maximum throughput, for a few Kafka client settings.

The fake provider (20 ms per call) records when each request arrived and when its reply
left (wall clock, same machine), keyed by the completion id the event carries, so the
provider's time is measured rather than assumed. For each job:

- *to publish* = (event record timestamp - enqueue time) - provider time: the worker's
  own delay up to handing the event to its producer (ms resolution);
- *to receipt* = (time this driver received the event - enqueue time) - provider time:
  what a producing service sees, including the broker round trips and the reading
  consumer's fetch.

``BW_KAFKA_FETCH_MAX_WAIT_MS`` is how long a fetch may wait for data; ``BW_KAFKA_LINGER_MS``
how long the producer may wait to fill a batch. The half-load run sends jobs at random
(Poisson) times at half the rate measured for the same worker without pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    Context,
    EventReader,
    FakeProvider,
    Producer,
    Report,
    cpu_seconds,
    job_body,
    median,
    percentile,
    run_bare_litellm,
    running_workers,
    set_budgets,
    spread,
    worker_env,
    write_models_file,
)
from bench.pipeline import pipeline_rate

NAME = "latency"
GOAL_P99_MS = 10.0
PROVIDER_MS = 20
DEFAULTS = (10, 0)
SETTINGS = ((10, 0), (100, 0), (10, 5), (500, 0))
"""(BW_KAFKA_FETCH_MAX_WAIT_MS, BW_KAFKA_LINGER_MS); the first is the default."""


async def _measure(
    ctx: Context,
    fake: FakeProvider,
    fetch_ms: int,
    linger_ms: int,
    light_jobs: int,
    light_max_s: float,
    half_rate: float,
    half_s: float,
    seed: int,
) -> dict[str, list[float]]:
    topics = ctx.infra.topics(3)
    models = write_models_file(ctx.workdir, fake.url)
    env = worker_env(
        ctx.infra, models, topics, kafka_fetch_max_wait_ms=fetch_ms, kafka_linger_ms=linger_ms
    )
    run = f"lat{seed}-{fetch_ms}-{linger_ms}-{random.getrandbits(24):06x}"
    users = [f"{run}-u{i}" for i in range(50)]
    await set_budgets(ctx.infra.redis_url, users, 10**14)
    sent: dict[str, tuple[str, float]] = {}
    rng = random.Random(seed)
    async with (
        Producer(ctx.infra.bootstrap) as producer,
        EventReader(ctx.infra.bootstrap, topics.results) as reader,
        running_workers(env, ctx.workdir, 1) as procs,
    ):

        def worker_cpu() -> float:
            return cpu_seconds(procs[0].pid) or 0.0

        # What an idle worker costs with this fetch wait: it polls the broker all the time.
        idle_s = ctx.pick(1.0, 3.0, 5.0)
        await asyncio.sleep(ctx.pick(0.5, 1.0, 1.0))  # past joining the group
        idle_from = worker_cpu()
        await asyncio.sleep(idle_s)
        idle_cpu = (worker_cpu() - idle_from) / idle_s
        # Warm-up: connections, the first fetches, the first call.
        warm = ctx.pick(1, 5, 5)
        for n in range(warm):
            body = job_body(f"{run}-warm-{n}", users[0])
            await producer.send(topics.jobs, body)
            await reader.wait_for_job(body["job_id"], 60)
        await fake.timings()
        steps_before = await _step_seconds(procs[0].metrics_port)
        cpu_marks = [worker_cpu()]
        light_ids = []
        deadline = time.monotonic() + light_max_s
        for n in range(light_jobs):
            if time.monotonic() > deadline:
                break
            body = job_body(f"{run}-light-{n}", users[n % len(users)])
            sent[body["job_id"]] = ("light", await producer.send(topics.jobs, body))
            light_ids.append(body["job_id"])
            await reader.wait_for_job(body["job_id"], 60)
        steps_after = await _step_seconds(procs[0].metrics_port)
        cpu_marks.append(worker_cpu())
        tasks = []
        end = time.monotonic() + half_s
        n = 0
        while time.monotonic() < end:
            body = job_body(f"{run}-half-{n}", users[n % len(users)])
            job_id = body["job_id"]
            sent[job_id] = ("half", time.time())
            tasks.append(asyncio.create_task(producer.send(topics.jobs, body)))
            n += 1
            await asyncio.sleep(rng.expovariate(half_rate))
        for task in tasks:
            sent_at = await task
            # The enqueue time is when the send was asked for (a queued send is waiting too).
            del sent_at
        await reader.wait_for(len(sent) + warm, timeout_s=120)
        cpu_marks.append(worker_cpu())
        timings = await fake.timings()
        model_ms = _model_ms_by_job(procs[0].log_path)
    out: dict[str, list[float]] = {
        f"{phase}_{part}": [] for phase in ("light", "half") for part in PARTS
    }
    out["idle_cpu"] = [idle_cpu]
    light_count = len(light_ids)
    half_count = len(sent) - light_count
    out["light_cpu"] = [1000 * (cpu_marks[1] - cpu_marks[0]) / max(light_count, 1)]
    out["half_cpu"] = [1000 * (cpu_marks[2] - cpu_marks[1]) / max(half_count, 1)]
    jobs = steps_after["count"] - steps_before["count"]
    out["light_steps"] = [
        1000 * (steps_after[step] - steps_before[step]) / max(jobs, 1) for step in STEPS
    ]
    for job_id, (phase, sent_at) in sent.items():
        event = reader.events[job_id]
        if event.type != "completion.succeeded":
            continue
        arrived, replied = timings.get(event.body["response"]["id"], (0.0, 0.0))
        provider_s = replied - arrived
        out[f"{phase}_publish"].append((event.produced_s - sent_at - provider_s) * 1000)
        out[f"{phase}_receipt"].append((event.received_s - sent_at - provider_s) * 1000)
        out[f"{phase}_before"].append((arrived - sent_at) * 1000)
        out[f"{phase}_after"].append((event.produced_s - replied) * 1000)
        out[f"{phase}_delivery"].append((event.received_s - event.produced_s) * 1000)
        out[f"{phase}_total"].append((event.received_s - sent_at) * 1000)
        out[f"{phase}_provider"].append(provider_s * 1000)
        if job_id in model_ms:
            out[f"{phase}_own"].append((event.received_s - sent_at) * 1000 - model_ms[job_id])
    return out


def _model_ms_by_job(log_path: Path) -> dict[str, float]:
    """Each job's model-call time, from the ``model_ms`` of its line in the worker's log."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if '"model_ms"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            found[entry["job_id"]] = float(entry["model_ms"])
    return found


PARTS = ("publish", "receipt", "before", "after", "delivery", "total", "provider", "own")
"""Per-job figures kept for each phase (ms); see ``_measure``."""
STEPS = ("bw_model_call_seconds", "bw_reserve_seconds", "bw_settle_seconds")


async def _step_seconds(metrics_port: int) -> dict[str, float]:
    """Seconds spent so far in each of the worker's timed steps, and the model calls
    made, read from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    found = dict.fromkeys((*STEPS, "count"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.name[:-4] in STEPS:
                found[sample.name[:-4]] += sample.value
            elif sample.name == "bw_model_call_seconds_count":
                found["count"] += sample.value
    return found


async def _bare(ctx: Context, fake: FakeProvider, calls: int) -> dict[str, list[float]]:
    """The same split for bare litellm.acompletion calls, one at a time (the baseline)."""
    await fake.timings()
    out = await asyncio.to_thread(run_bare_litellm, ctx.workdir, fake.url, 1, calls, 16)
    timings = await fake.timings()
    added, before, after = [], [], []
    for sent_at, done_at, completion_id in out["calls"]:
        arrived, replied = timings.get(completion_id, (math.nan, math.nan))
        added.append((done_at - sent_at - (replied - arrived)) * 1000)
        before.append((arrived - sent_at) * 1000)
        after.append((done_at - replied) * 1000)
    return {"added": added, "before": before, "after": after}


async def _max_rate(ctx: Context, fake: FakeProvider) -> float:
    """The pipeline's throughput, jobs/s: measured by benchmark 2 if it ran, else here."""
    if ctx.size == "smoke":
        return 40.0  # no calibration run: this size only proves the code works
    if "pipeline_rate" in ctx.results:  # CPU-bound either way: 64 x 20 ms is far off
        return float(ctx.results["pipeline_rate"])
    calibration: dict[str, Any] = await pipeline_rate(
        ctx, fake, jobs=ctx.pick(0, 800, 1500), concurrency=64
    )
    await fake.timings()
    return float(calibration["rate"])


def _cell(results: list[dict[str, list[float]]], key: str, q: float) -> str:
    return spread([percentile(r[key], q) for r in results], "{:.1f}")


def _phase_row(
    fetch_ms: int, linger_ms: int, label: str, phase: str, results: list[dict[str, list[float]]]
) -> list[str]:
    """One setting's row for one load ``phase`` (light or half), over the repetitions."""
    count = sum(len(r[f"{phase}_receipt"]) for r in results)
    return [
        str(fetch_ms),
        str(linger_ms),
        label,
        str(count),
        _cell(results, f"{phase}_publish", 50),
        _cell(results, f"{phase}_publish", 99),
        _cell(results, f"{phase}_receipt", 50),
        _cell(results, f"{phase}_receipt", 99),
        _cell(results, f"{phase}_before", 50),
        _cell(results, f"{phase}_after", 50),
        _cell(results, f"{phase}_delivery", 50),
        _cell(results, f"{phase}_own", 50),
        _cell(results, f"{phase}_own", 99),
        spread([r[f"{phase}_cpu"][0] for r in results], "{:.1f}"),
    ]


async def run(ctx: Context) -> Report:
    reps = ctx.pick(1, 1, 2)
    light_jobs = ctx.pick(5, 60, 150)
    light_max_s = ctx.pick(3, 6, 6)
    half_s = ctx.pick(1, 4, 6)
    settings = ctx.pick(SETTINGS[:1], SETTINGS[:2], SETTINGS)
    report = Report(
        name=NAME,
        title="6. Added latency (enqueue to result event, minus the provider's own time)",
        goal=f"p99 <= {GOAL_P99_MS:.0f} ms at light load (to receipt, default settings)",
        headers=[
            "fetch_max_wait_ms",
            "linger_ms",
            "load",
            "jobs",
            "to publish p50 ms",
            "to publish p99 ms",
            "to receipt p50 ms",
            "to receipt p99 ms",
            "enqueue to call p50 ms",
            "reply to publish p50 ms",
            "publish to receipt p50 ms",
            "worker's own p50 ms",
            "worker's own p99 ms",
            "worker CPU ms/job",
        ],
    )
    fake = FakeProvider(ctx.workdir, latency_ms=PROVIDER_MS, output_tokens=16, timings=True)
    fake.start()
    light_p99_default: list[float] = []
    light_p50_default: list[float] = []
    split = ""
    own_default: list[tuple[float, float]] = []
    idle_notes: list[str] = []
    bare_p50 = math.nan
    try:
        max_rate = await _max_rate(ctx, fake)
        half_rate = max_rate / 2
        # Repetition by repetition: the bare baseline, then every setting, side by side.
        bare: list[dict[str, list[float]]] = []
        measured: dict[tuple[int, int], list[dict[str, list[float]]]] = {s: [] for s in settings}
        for r in range(reps):
            if ctx.size != "smoke":  # the pipeline's smoke run covers the bare client
                bare.append(await _bare(ctx, fake, light_jobs))
            for fetch_ms, linger_ms in settings:
                measured[(fetch_ms, linger_ms)].append(
                    await _measure(
                        ctx,
                        fake,
                        fetch_ms,
                        linger_ms,
                        light_jobs,
                        light_max_s,
                        half_rate,
                        half_s,
                        r,
                    )
                )
        for (fetch_ms, linger_ms), results in measured.items():
            for phase, label in (("light", "one at a time"), ("half", f"{half_rate:.0f} jobs/s")):
                report.rows.append(_phase_row(fetch_ms, linger_ms, label, phase, results))
                if phase == "light" and linger_ms == 0:
                    idle = median([r["idle_cpu"][0] for r in results])
                    idle_notes.append(f"{fetch_ms} ms: {100 * idle:.1f}%")
                if (fetch_ms, linger_ms) == DEFAULTS and phase == "light":
                    light_p99_default = [percentile(r["light_receipt"], 99) for r in results]
                    light_p50_default = [percentile(r["light_receipt"], 50) for r in results]
                    own_default = [
                        (percentile(r["light_own"], 50), percentile(r["light_own"], 99))
                        for r in results
                    ]
                    split = _light_split(results)

        report.rows.append(
            [
                "bare litellm",
                "-",
                "one at a time",
                str(sum(len(r["added"]) for r in bare)),
                "-",
                "-",
                _cell(bare, "added", 50),
                _cell(bare, "added", 99),
                _cell(bare, "before", 50),
                _cell(bare, "after", 50),
                "-",
                "-",
                "-",
                "-",
            ]
        )
        bare_p50 = median([percentile(r["added"], 50) for r in bare])
    finally:
        fake.stop()
    p99 = median(light_p99_default)
    report.verdict = (
        f"light-load p99 with the defaults {p99:.1f} ms: goal "
        f"{'met' if p99 <= GOAL_P99_MS else 'NOT met'}; p50 {median(light_p50_default):.1f} ms "
        f"against {bare_p50:.1f} ms for bare litellm (the worker adds "
        f"{median(light_p50_default) - bare_p50:.1f} ms to what litellm itself adds); "
        f"the worker's own share, per job: p50 {median([o[0] for o in own_default]):.1f} ms, "
        f"p99 {median([o[1] for o in own_default]):.1f} ms"
    )
    report.notes += [
        f"Fake provider latency {PROVIDER_MS} ms (its measured time is subtracted per job); "
        "maximum throughput (BW_MAX_IN_FLIGHT=64, default Kafka settings; from the pipeline "
        "benchmark when it ran first): "
        f"{max_rate:.0f} jobs/s, so half load is {half_rate:.0f} jobs/s "
        f"for {half_s} s. Light load: up to {light_jobs} jobs or {light_max_s} s. "
        f"{reps} repetition(s), each with a fresh worker; cells are median (min-max) "
        "of the repetitions' percentiles.",
        f"Baseline: bare litellm.acompletion to the same fake, one call at a time, in a "
        f"process of its own: litellm alone adds {bare_p50:.1f} ms (p50) to the provider's "
        "time; its last three columns are request sent to received by the provider, and "
        "reply sent to the call's return.",
        "The driver's producer uses linger_ms=0 and acks=all; its reader fetches with "
        "fetch_max_wait_ms=5. The last three columns split the time: enqueue to the "
        "provider's receipt of the request (Kafka delivery, decode, estimate, reserve, "
        "litellm's own set-up), the provider's reply to the event's record timestamp "
        "(litellm's response handling, settle, event), and that timestamp to receipt here "
        "(the worker's producer, the broker, this reader). The worker's own columns: "
        "enqueue to receipt minus the model call as the worker timed it (`model_ms` in "
        "its log line), i.e. everything but the provider and litellm's own time.",
        split,
        "CPU of an idle worker (no jobs, the seconds before the warm-up), in % of one core, "
        "by fetch wait: " + "; ".join(idle_notes) + ". An idle consumer sends a fetch per "
        "fetch wait; the broker answers each.",
    ]
    return report


def _light_split(results: list[dict[str, list[float]]]) -> str:
    """Where a light-load job's time goes, as means per job from the worker's own
    histograms: what is litellm's, what is the ledger's, and the rest."""
    total = median([sum(r["light_total"]) / len(r["light_total"]) for r in results])
    provider = median([sum(r["light_provider"]) / len(r["light_provider"]) for r in results])
    model, reserve, settle = (median([r["light_steps"][i] for r in results]) for i in range(3))
    rest = total - model - reserve - settle
    return (
        f"Light load with the defaults, means per job from the worker's histograms: "
        f"enqueue to receipt {total:.1f} ms = the litellm call {model:.1f} ms (the "
        f"provider's own {provider:.1f} ms, so litellm's own {model - provider:.1f} ms) + "
        f"reserve {reserve:.1f} ms + settle {settle:.1f} ms + the rest {rest:.1f} ms (Kafka "
        "both ways, decoding, estimating, building the event)."
    )
