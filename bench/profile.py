"""Where one worker process spends its CPU under the pipeline benchmark's load.

``python -m bench.profile [--jobs N] [--in-flight C] [--latency-ms X]`` fills a jobs
topic, starts a worker, attaches ``py-spy`` (sampling, non-blocking) to it for the
steady part of the run, and prints the share of the worker's CPU samples spent in each
area (inclusive) and the hottest functions. ``--svg`` also writes a flame graph.
py-spy is not a dependency of the worker: ``pip install py-spy`` (or the ``bench``
extra) first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Context, FakeProvider, Infra
from bench.pipeline import pipeline_rate

# Each sample is charged to the first rule one of its frames matches (so the shares add
# up to 100%); the order puts the worker's own steps before the libraries they call.
# A needle ending in ">" matches only work that function does in its own body (a
# model_dump or a comprehension it calls directly), not what it awaits.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("litellm: completion() set-up in executor threads, loop wake-ups", ("Thread._bootstrap",)),
    ("worker: response.model_dump() after the call", ("_completion (worker/provider.py>",)),
    ("worker: events (build, validate, encode, with_budget)", ("worker/outcome.py",)),
    ("worker: decode + validate job (parse_job)", ("parse_job (",)),
    ("worker: estimate", ("worker/estimate.py",)),
    ("worker: messages/params model_dump before the call", ("_call_and_settle (worker/job.py>",)),
    (
        "litellm: acompletion (same work as the bare client)",
        (
            "site-packages/litellm/",
            "site-packages/openai/",
            "site-packages/httpx",
            "site-packages/httpcore/",
            "aiohttp/client",
            "aiohttp/connector",
        ),
    ),
    ("worker: ledger (redis-py, Lua round trips)", ("worker/ledger/", "site-packages/redis/")),
    ("worker: logging (stdlib + JSON formatter)", ("/logging/__init__", "worker/logs.py")),
    ("worker: prometheus metrics", ("prometheus_client/",)),
    ("worker: Kafka producer (aiokafka send)", ("aiokafka/producer",)),
    (
        "worker: Kafka consumer + commits (aiokafka)",
        (
            "aiokafka/",
            "JobConsumer.run (",
            "JobConsumer._commit",
            "JobConsumer._observe_lag",
            "JobConsumer._pause_unless_ready",
        ),
    ),
    ("worker: job path, other", ("worker/job.py", "worker/consumer.py")),
    ("event loop, not attributable (transports, scheduling)", ("asyncio/",)),
    ("other", ("",)),
]


def summarize(raw: Path, top: int = 20, jobs: float | None = None, rate_hz: int = 250) -> str:
    """Shares of the worker's CPU samples by rule, and the hottest functions, of a py-spy
    raw profile. With ``jobs`` (jobs finished while sampling) also CPU ms per job."""
    total = 0
    by_rule: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for name, needles in RULES:
            if any(_matches(frames, n) for n in needles):
                by_rule[name] += count
                break
        if frames:
            self_time[_short(frames[-1])] += count

    def per_job(samples: int) -> str:
        return f"  {1000 * samples / rate_hz / jobs:6.2f} ms/job" if jobs else ""

    lines = [f"{total} samples ({total / rate_hz:.1f} CPU s) of the worker", ""]
    for name, _ in RULES:
        share = 100 * by_rule[name] / max(total, 1)
        lines.append(f"  {share:5.1f}%{per_job(by_rule[name])}  {name}")
    lines += ["", f"top {top} functions by self time"]
    for name, count in self_time.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)


def _matches(frames: list[str], needle: str) -> bool:
    if not needle.endswith(">"):
        return any(needle in frame for frame in frames)
    head = needle[:-1]
    for i, frame in enumerate(frames):
        if head in frame:
            callee = frames[i + 1] if i + 1 < len(frames) else ""
            if "model_dump" in callee or "<listcomp>" in callee or "<dictcomp>" in callee:
                return True
    return False


def _short(frame: str) -> str:
    """``function (path:line)`` -> ``function (package/module.py)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "python3.11" in parts:
        parts = parts[parts.index("python3.11") + 1 :]
    else:
        parts = parts[-2:]
    return f"{name} ({'/'.join(parts)})"


async def profile(
    jobs: int, in_flight: int, latency_ms: float, out_dir: Path, svg: bool
) -> dict[str, Any]:
    py_spy = _py_spy()
    infra = Infra()
    infra.start()
    fake = FakeProvider(infra.workdir, latency_ms=latency_ms, output_tokens=16)
    fake.start()
    raw = out_dir / "worker-profile.txt"
    spies: list[asyncio.subprocess.Process] = []
    window: list[float] = []
    duration_s = max(5, jobs // 150)

    async def attach(procs: list[Any]) -> None:
        await asyncio.sleep(3)  # past the group join and the first fetches
        argv = [
            py_spy,
            "record",
            "--pid",
            str(procs[0].pid),
            "--rate",
            "250",
            "--nonblocking",
            "--gil",
            "--full-filenames",
            "--format",
            "raw",
            "-o",
            str(raw),
            "--duration",
            str(duration_s),
        ]
        window[:] = [time.time(), time.time() + duration_s]
        spies.append(await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL))
        if svg:
            argv_svg = [
                *argv[:-6],
                "--format",
                "flamegraph",
                "-o",
                str(out_dir / "worker.svg"),
                "--duration",
                argv[-1],
            ]
            spies.append(await asyncio.create_subprocess_exec(*argv_svg, stdout=subprocess.DEVNULL))

    try:
        ctx = Context(infra, "full")
        out = await pipeline_rate(ctx, fake, jobs=jobs, concurrency=in_flight, on_started=attach)
        for spy in spies:
            await asyncio.wait_for(spy.wait(), 120)
    finally:
        fake.stop()
        infra.stop()
    out["profile"] = raw
    out["profiled_jobs"] = sum(1 for t in out["times"] if window[0] <= t <= window[1])
    return out


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--svg", action="store_true")
    parser.add_argument("--raw", type=Path, help="summarize an existing raw profile and exit")
    args = parser.parse_args(argv)
    if args.raw:
        print(summarize(args.raw))
        return
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    args.out.mkdir(parents=True, exist_ok=True)
    out = asyncio.run(profile(args.jobs, args.in_flight, args.latency_ms, args.out, args.svg))
    print(
        f"worker: {out['rate']:.0f} jobs/s; outcomes {out['outcomes']}; "
        f"{out['profiled_jobs']} jobs while sampling"
    )
    print(summarize(out["profile"], jobs=out["profiled_jobs"]))
    print(f"\nraw profile: {out['profile']}")


if __name__ == "__main__":
    main()
