"""What every benchmark shares beside the rig (``worker.dev.rig``: topics, model list,
worker processes): the servers of a run, a fake provider in a process of its own, a
tailing event reader, statistics, and the report each benchmark prints and writes.

Run as a module it is also the entry point of the helper processes the benchmarks
start, so that what is measured never shares a process with what drives it::

    python -m bench.harness fake-provider --port N [--latency-ms X] [--output-tokens N]
    python -m bench.harness bare-litellm --api-base URL --concurrency C --calls N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.dev import rig
from worker.dev.rig import (
    GPT_4O_MINI,
    ChildProcess,
    Topics,
    WorkerProcess,
)
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis, free_port, scratch_dir, wait_for_port

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LITELLM_MODEL = GPT_4O_MINI.model
API_KEY = "sk-bench-not-a-key"
PROMPT = "Summarise the plot of Hamlet in two sentences for a ten-year-old."

Size = Literal["smoke", "quick", "full"]


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``median (min-max)`` of repetitions, e.g. ``412 (398-430)``."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def steady_rate(times_s: Sequence[float], trim: float = 0.1) -> float:
    """Completions per second between the ``trim`` and ``1 - trim`` quantiles of the
    completion times: the start-up ramp and the draining tail are left out."""
    ordered = sorted(times_s)
    if len(ordered) < 3:
        return math.nan
    low = int(len(ordered) * trim)
    high = max(int(len(ordered) * (1 - trim)) - 1, low + 1)
    span = ordered[high] - ordered[low]
    return (high - low) / span if span > 0 else math.nan


# --- the machine --------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_line() -> str:
    load = ""
    with contextlib.suppress(OSError):
        load = ", load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"{os.cpu_count()} CPUs (`nproc`), {cpu_model()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}{load}"
    )


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a process (``VmHWM``), in kB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class CpuSampler:
    """Samples the CPU time of some processes every ``interval_s`` (in a task), so the
    CPU spent in any time window can be read afterwards."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.1) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        values = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.samples.append((time.time(), {k: v for k, v in values.items() if v is not None}))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._sample()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def used(self, name: str, start: float, end: float) -> float:
        """CPU seconds ``name`` used between two wall-clock times (sample resolution)."""

        def at(moment: float) -> float:
            best = None
            for when, values in self.samples:
                if name in values and (best is None or abs(when - moment) < abs(best[0] - moment)):
                    best = (when, values[name])
            return math.nan if best is None else best[1]

        return at(end) - at(start)


def steady_window(times_s: Sequence[float], trim: float = 0.1) -> tuple[float, float, int]:
    """``(start, end, completions)`` of the window ``steady_rate`` uses."""
    ordered = sorted(times_s)
    low = int(len(ordered) * trim)
    high = max(int(len(ordered) * (1 - trim)) - 1, low + 1)
    return ordered[low], ordered[high], high - low


# --- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    """One benchmark's figures: a table, the goal and whether it was met, notes."""

    name: str
    title: str
    goal: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: str = ""
    command: str = ""
    machine: str = ""
    date: str = ""
    seconds: float = 0.0

    def markdown(self) -> str:
        lines = [
            f"## {self.title}",
            "",
            f"- Goal: {self.goal}",
            f"- Result: {self.verdict}" if self.verdict else "- Result: (no verdict)",
            f"- Command: `{self.command}` ({self.seconds:.0f} s)",
            f"- Machine: {self.machine}",
            f"- Date: {self.date}",
            "",
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" for _ in self.headers) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
        out = [f"== {self.title}", f"goal: {self.goal}", f"result: {self.verdict}"]
        out.append("  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=False)))
        out += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in self.rows
        ]
        out += [f"* {note}" for note in self.notes]
        out.append(f"reproduce: {self.command}   ({self.seconds:.0f} s)")
        return "\n".join(out)


def write_section(path: Path, report: Report) -> None:
    """Replace (or append) the report's section of ``path``, between its markers; text
    outside the markers (the introduction, the log of changes) is kept as it is."""
    begin, end = f"<!-- bench:{report.name}:begin -->", f"<!-- bench:{report.name}:end -->"
    block = f"{begin}\n{report.markdown()}{end}\n"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    path.write_text(text)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Context:
    """What a benchmark is given: the shared servers, the run's size, a scratch directory."""

    infra: Infra
    size: Size
    results: dict[str, Any] = field(default_factory=dict)
    """Figures one benchmark leaves for a later one (the pipeline's rate)."""

    @property
    def workdir(self) -> Path:
        return self.infra.workdir

    def pick(self, smoke: Any, quick: Any, full: Any) -> Any:
        return {"smoke": smoke, "quick": quick, "full": full}[self.size]


# --- servers ------------------------------------------------------------------------------


class Infra:
    """One Kafka-protocol broker and one Redis for a whole benchmark run (fresh topics,
    group ids and users per measurement), plus a scratch directory for logs. Servers
    passed in (a test session's) are used as they are and left running."""

    def __init__(
        self,
        workdir: Path | None = None,
        kafka: EmbeddedKafka | None = None,
        redis: EmbeddedRedis | None = None,
    ) -> None:
        self.workdir = workdir or scratch_dir("budget-worker-bench-")
        self.owned = kafka is None and redis is None
        self.kafka = kafka or EmbeddedKafka(self.workdir)
        self.redis = redis or EmbeddedRedis(self.workdir)

    def start(self) -> None:
        if self.owned:
            self.kafka.start()
            self.redis.start()

    def stop(self) -> None:
        if self.owned:
            self.kafka.stop()
            self.redis.stop()

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def topics(self, partitions: int = 3) -> Topics:
        return Topics.fresh(self.kafka, partitions, prefix="bench.")

    def pids(self) -> dict[str, int]:
        found = {}
        for name, server in (("kafka", self.kafka.server), ("redis", self.redis.server)):
            if server.process is not None:
                found[name] = server.process.pid
        return found

    def flush_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            client.flushall()
        finally:
            client.close()


class FakeProvider(ChildProcess):
    """The project's OpenAI-compatible fake in a process of its own (``fast`` token
    counting, so its CPU stays small), optionally recording per-request timings."""

    def __init__(
        self,
        workdir: Path,
        *,
        latency_ms: float = 0.0,
        output_tokens: int = 16,
        timings: bool = False,
    ) -> None:
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.harness",
            "fake-provider",
            "--port",
            str(self.port),
            "--latency-ms",
            str(latency_ms),
            "--output-tokens",
            str(output_tokens),
        ]
        if timings:
            argv.append("--timings")
        super().__init__(argv, workdir / f"fake-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        super().start()
        wait_for_port(self.port, 30, self.process)

    async def configure(self, **changes: Any) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{self.port}/config", json=changes) as response,
        ):
            response.raise_for_status()

    async def timings(self) -> dict[str, tuple[float, float]]:
        """``{completion id: (arrival, reply)}`` wall-clock seconds since the last call."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{self.port}/timings/take") as response,
        ):
            data = await response.json()
        return {key: (value[0], value[1]) for key, value in data.items()}


def write_models_file(directory: Path, api_base: str) -> Path:
    return rig.write_models_file(directory, api_base, api_key=API_KEY)


def worker_env(
    infra: Infra, models_file: Path, topics: Topics, group: str | None = None, **extra: Any
) -> dict[str, str]:
    """The worker's environment: defaults except what a benchmark sets in ``extra``
    (``max_in_flight=100`` becomes ``BW_MAX_IN_FLIGHT=100``)."""
    if group is not None:
        extra["group_id"] = group
    settings = {"model_timeout_s": 30, "lease_ms": 60_000, **extra}
    return rig.worker_env(infra.kafka, infra.redis_url, models_file, topics, **settings)


def running_workers(
    env: dict[str, str], workdir: Path, count: int = 1, *, ready: bool = True
) -> contextlib.AbstractAsyncContextManager[list[WorkerProcess]]:
    """``count`` worker processes (ids ``bw0``, ``bw1``...), killed on exit."""
    return rig.workers(env, workdir, count, ready=ready, prefix="bw")


# --- jobs and events ----------------------------------------------------------------------


def job_body(
    job_id: str, user_id: str, *, max_tokens: int | None = 16, prompt: str = PROMPT
) -> dict[str, Any]:
    """The rig's job, ``max_tokens`` left out when ``None`` (the default bound applies)."""
    body = rig.job(job_id, user_id, prompt)
    if max_tokens is None:
        del body["max_tokens"]
    else:
        body["max_tokens"] = max_tokens
    return body


def jobs_for(count: int, users: int, *, max_tokens: int | None = 16) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    return [
        job_body(f"b-{run}-{i}", f"user-{run}-{i % users}", max_tokens=max_tokens)
        for i in range(count)
    ]


async def set_budgets(redis_url: str, users: Iterable[str], limit_nanousd: int) -> None:
    from worker.ledger import Budget, Ledger

    ledger = Ledger.from_url(redis_url)
    try:
        budget = Budget(limit_nanousd=limit_nanousd, period="none")
        await asyncio.gather(*(ledger.set_budget(user, budget) for user in set(users)))
    finally:
        await ledger.close()


class Producer:
    def __init__(self, bootstrap: str, linger_ms: int = 0) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", enable_idempotence=False
        )

    async def __aenter__(self) -> Producer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._producer.stop()

    async def send_many(self, topic: str, jobs: Iterable[dict[str, Any]]) -> None:
        futures = [
            await self._producer.send(topic, json.dumps(j).encode(), key=j["user_id"].encode())
            for j in jobs
        ]
        await asyncio.gather(*futures)

    async def send(self, topic: str, job: dict[str, Any]) -> float:
        """Send one job and wait for the broker's ack; the wall-clock time of the send."""
        sent_at = time.time()
        await self._producer.send_and_wait(
            topic, json.dumps(job).encode(), key=job["user_id"].encode()
        )
        return sent_at


@dataclass
class Event:
    job_id: str
    type: str
    produced_s: float
    """The record's timestamp: when the worker handed it to its producer (ms resolution)."""
    received_s: float
    """When this reader got it (wall clock)."""
    body: dict[str, Any]


class EventReader:
    """Tails a results topic from its beginning and keeps every event by job id."""

    def __init__(self, bootstrap: str, topic: str, fetch_max_wait_ms: int = 5) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self.events: dict[str, Event] = {}
        self.duplicates = 0
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventReader:
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self.topic) or {0}
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            received = time.time()
            for records in batch.values():
                for record in records:
                    body = json.loads(record.value)
                    job_id = body["job_id"]
                    if job_id in self.events:
                        self.duplicates += 1
                        continue
                    self.events[job_id] = Event(
                        job_id, body["type"], record.timestamp / 1000, received, body
                    )
            if batch:
                self._arrived.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.events)} of {count} events within {timeout_s} s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))

    async def wait_for_job(self, job_id: str, timeout_s: float) -> Event:
        deadline = time.monotonic() + timeout_s
        while job_id not in self.events:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no event for {job_id} within {timeout_s} s")
            self._arrived.clear()
            if job_id in self.events:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))
        return self.events[job_id]


def outcome_counts(events: Iterable[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type] = counts.get(event.type, 0) + 1
    return counts


# --- a bare litellm client at a given concurrency (the pipeline's baseline) -----------------


async def bare_litellm(
    api_base: str, concurrency: int, calls: int, max_tokens: int, freeze: bool = False
) -> dict[str, Any]:
    """``calls`` litellm.acompletion calls with ``concurrency`` in flight, the same
    arguments the worker's provider passes. Completion times are relative to the start.
    ``freeze``: hide the start-up objects from the garbage collector, as the worker does."""
    # Set up as in the worker: offline (cost map, tokenizer files) and warmed up.
    from worker import startup

    startup.prepare()
    from worker.provider import litellm  # type: ignore[attr-defined]

    if freeze:  # imported only here: the plain client must not carry the worker's objects
        from worker.service import freeze_start_up_objects

        freeze_start_up_objects()

    kwargs = {
        "model": LITELLM_MODEL,
        "api_base": api_base,
        "api_key": API_KEY,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "timeout": 30.0,
        "num_retries": 0,
        "max_retries": 0,
    }
    for _ in range(3):  # connections and first-call work, outside the timing
        await litellm.acompletion(**kwargs)
    done: list[float] = []
    cpu: list[float] = []
    errors = 0
    queue = iter(range(calls))
    started = time.perf_counter()

    records: list[tuple[float, float, str]] = []

    async def caller() -> None:
        nonlocal errors
        for _ in queue:
            sent_at = time.time()
            try:
                response = await asyncio.wait_for(litellm.acompletion(**kwargs), 31)
                records.append((sent_at, time.time(), str(response.id)))
            except Exception:
                errors += 1
            done.append(time.perf_counter() - started)
            cpu.append(time.process_time())

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    # CPU per call over the same steady window as the rate (completions are in order).
    low = int(len(done) * 0.1)
    high = max(int(len(done) * 0.9) - 1, low + 1)
    cpu_ms = 1000 * (cpu[high] - cpu[low]) / (high - low)
    return {
        "times_s": done,
        "errors": errors,
        "rate": steady_rate(done),
        "cpu_ms": cpu_ms,
        "calls": records,
    }


def run_bare_litellm(
    workdir: Path,
    api_base: str,
    concurrency: int,
    calls: int,
    max_tokens: int,
    *,
    freeze: bool = False,
) -> dict[str, Any]:
    """``bare_litellm`` in a fresh process of its own (as the worker has one)."""
    out = workdir / f"bare-{uuid.uuid4().hex[:8]}.json"
    argv = [
        sys.executable,
        "-m",
        "bench.harness",
        "bare-litellm",
        "--api-base",
        api_base,
        "--concurrency",
        str(concurrency),
        "--calls",
        str(calls),
        "--max-tokens",
        str(max_tokens),
        "--out",
        str(out),
        *(["--freeze"] if freeze else []),
    ]
    subprocess.run(argv, check=True, timeout=600, stdin=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --- entry points of the helper processes ----------------------------------------------------


def _serve_fake(port: int, latency_ms: float, output_tokens: int, timings: bool) -> None:
    from aiohttp import web

    from worker.dev.fake_provider import FakeProviderApp, FakeProviderConfig

    config = FakeProviderConfig(
        latency_s=latency_ms / 1000, output_tokens=output_tokens, count_tokens="fast", seed=1
    )
    app = FakeProviderApp(config).application()
    recorded: dict[str, tuple[float, float]] = {}

    if timings:

        @web.middleware
        async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
            arrived = time.time()
            response: web.StreamResponse = await handler(request)
            if request.path.endswith("/chat/completions") and isinstance(response, web.Response):
                with contextlib.suppress(Exception):
                    body = response.body
                    data = json.loads(body if isinstance(body, bytes) else b"{}")
                    recorded[data["id"]] = (arrived, time.time())
            return response

        app.middlewares.append(timing)

    async def take(_: web.Request) -> web.Response:
        data = dict(recorded)
        recorded.clear()
        return web.json_response(data)

    app.router.add_post("/timings/take", take)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=0.5,
        backlog=4096,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    fake = sub.add_parser("fake-provider")
    fake.add_argument("--port", type=int, required=True)
    fake.add_argument("--latency-ms", type=float, default=0.0)
    fake.add_argument("--output-tokens", type=int, default=16)
    fake.add_argument("--timings", action="store_true")
    bare = sub.add_parser("bare-litellm")
    bare.add_argument("--api-base", required=True)
    bare.add_argument("--concurrency", type=int, required=True)
    bare.add_argument("--calls", type=int, required=True)
    bare.add_argument("--max-tokens", type=int, default=16)
    bare.add_argument("--out", type=Path, required=True)
    bare.add_argument("--freeze", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "fake-provider":
        _serve_fake(args.port, args.latency_ms, args.output_tokens, args.timings)
    else:
        result = asyncio.run(
            bare_litellm(args.api_base, args.concurrency, args.calls, args.max_tokens, args.freeze)
        )
        args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
