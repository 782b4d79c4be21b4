"""The rig that runs budget-worker on this machine: topics, a model list, worker
processes or in-process workers, jobs in and events out.

One rig serves the project's tests, its benchmarks and the demo alike (as structlog's
``testing`` module serves structlog's own tests and its users), so each of them starts
a worker the same way. The servers themselves (broker, Redis) are in
``worker.dev.servers``, the model in ``worker.dev.fake_provider``.

- :class:`WorkerProcess` / :func:`workers`: ``budget-worker run`` as child processes,
  for what is about processes (a SIGKILL, several processes in one group, exit codes).
- :class:`InProcessWorker` / :func:`in_process_workers`: the same ``serve()`` in an
  asyncio task of the caller's loop: no interpreter start, no litellm import, so a
  worker is ready in a fraction of a second.
- :func:`job`, :func:`produce`, :func:`read_all`, :func:`wait_for_events`: records in
  and events out, from offset 0.

Nothing here is imported by ``budget-worker run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.dev.servers import EmbeddedKafka, free_port
from worker.metrics import wait_until_ready
from worker.settings import Settings

MODEL = "gpt-4o-mini"
PRICE_IN = "0.00000015"  # USD per prompt token (gpt-4o-mini's list price)
PRICE_OUT = "0.0000006"  # USD per completion token
FAKE_API_KEY = "sk-fake-local"  # what the fake provider is given; never a real key
READY_TIMEOUT_S = 90.0


# --- topics and the model list -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """A worker's three topics."""

    jobs: str
    results: str
    dlq: str

    @classmethod
    def fresh(cls, kafka: EmbeddedKafka, partitions: int = 3, prefix: str = "") -> Topics:
        """New, uniquely named topics on ``kafka`` (results under ``llm.results.``, which
        the default ``reply_to`` pattern allows)."""
        suffix = uuid.uuid4().hex[:10]
        topics = cls(
            f"{prefix}jobs.{suffix}", f"llm.results.{prefix}{suffix}", f"{prefix}dlq.{suffix}"
        )
        topics.create(kafka, partitions)
        return topics

    def create(
        self, kafka: EmbeddedKafka, partitions: int = 3, results_partitions: int | None = None
    ) -> None:
        kafka.create_topic(self.jobs, partitions)
        kafka.create_topic(self.results, results_partitions or partitions)
        kafka.create_topic(self.dlq, 1)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of a model list: its name, litellm's model, and its prices per token
    (``None``: the cost map's)."""

    name: str
    model: str
    input_usd_per_token: Decimal | None = None
    output_usd_per_token: Decimal | None = None


# Priced explicitly, so that costs do not depend on the cost map.
GPT_4O_MINI = ModelSpec(MODEL, "openai/gpt-4o-mini", Decimal(PRICE_IN), Decimal(PRICE_OUT))


def models_yaml(
    api_base: str | None,
    models: Sequence[ModelSpec] = (GPT_4O_MINI,),
    api_key: str = FAKE_API_KEY,
) -> str:
    """A model list. With ``api_base`` every model is served there (the fake provider)
    with ``api_key``; without, by the real provider with ``OPENAI_API_KEY``."""
    lines = ["model_list:"]
    for spec in models:
        lines += [
            f"  - model_name: {spec.name}",
            "    litellm_params:",
            f"      model: {spec.model}",
        ]
        if api_base is None:
            lines.append("      api_key: os.environ/OPENAI_API_KEY")
        else:
            lines += [f"      api_base: {api_base}", f"      api_key: {api_key}"]
        if spec.input_usd_per_token is not None and spec.output_usd_per_token is not None:
            lines += [
                "    model_info:",
                f"      input_cost_per_token: {spec.input_usd_per_token}",
                f"      output_cost_per_token: {spec.output_usd_per_token}",
            ]
    return "\n".join(lines) + "\n"


def write_models_file(
    directory: Path,
    api_base: str | None,
    models: Sequence[ModelSpec] = (GPT_4O_MINI,),
    api_key: str = FAKE_API_KEY,
) -> Path:
    """``models_yaml`` in a new file of ``directory``."""
    path = directory / f"models-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(models_yaml(api_base, models, api_key))
    return path


# Short timeouts, so that a test's worker drains, retries and notices an outage in
# fractions of a second (``worker_env(..., **FAST)``).
FAST: dict[str, Any] = {
    "reply_to_pattern": r"^llm\.results(\.[A-Za-z0-9_-]{1,100})?$",
    "drain_timeout_s": 2,
    "shutdown_grace_s": 5,
    "model_timeout_s": 10,
    "retry_backoff_s": 0.05,
    "retry_backoff_max_s": 0.2,
    "redis_retry_s": 0.2,
    "redis_timeout_s": 0.5,
    "log_level": "INFO",
    # The embedded broker delays a new member's first assignment by about half of
    # it: 1.5 s instead of 5.
    "kafka_session_timeout_ms": 3_000,
}


def worker_env(
    kafka: EmbeddedKafka | str, redis_url: str, models_file: Path, topics: Topics, **settings: Any
) -> dict[str, str]:
    """The ``BW_`` variables of a worker on these servers and topics; ``settings`` as
    field names (``max_in_flight=100`` is ``BW_MAX_IN_FLIGHT=100``)."""
    env = {
        "BW_KAFKA_BOOTSTRAP": bootstrap_of(kafka),
        "BW_REDIS_URL": redis_url,
        "BW_MODELS_FILE": str(models_file),
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
        "BW_DLQ_TOPIC": topics.dlq,
        "BW_GROUP_ID": f"group-{topics.jobs}",
    }
    env.update({f"BW_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def bootstrap_of(kafka: EmbeddedKafka | str) -> str:
    return kafka if isinstance(kafka, str) else kafka.bootstrap


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings a worker reads from ``env`` (its ``BW_`` variables only: neither the
    caller's environment nor a ``.env`` file)."""
    values: dict[str, Any] = {
        key[3:].lower(): value for key, value in env.items() if key.startswith("BW_")
    }
    return Settings(_env_file=None, **values)


# --- workers ---------------------------------------------------------------------------------


class ChildProcess:
    """A child process in its own session, killed with its group on ``stop()``."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the process's group (the group outlives a leader that left children)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    async def wait(self, timeout_s: float = 30) -> int:
        """The exit code, once the process has exited."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[-1]!r} did not exit within {timeout_s} s")
            await asyncio.sleep(0.05)
        return code

    def stop(self, sig: signal.Signals = signal.SIGKILL, grace_s: float = 10) -> int | None:
        """Send ``sig`` to the group, SIGKILL it after ``grace_s``; always reaps. Safe
        to call twice."""
        process = self.process
        if process is None:
            return None
        self.send_signal(sig)
        try:
            code = process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            code = None
        self.send_signal(signal.SIGKILL)  # whatever the leader left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(timeout=10)
        self.process = None  # reaped: its group id may be reused
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class WorkerProcess(ChildProcess):
    """``budget-worker run`` (``python -m worker.cli run``) as a child process, with a
    metrics port of its own unless ``env`` names one. ``inherit``: the caller's
    environment under ``env``."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        worker_id: str,
        *,
        inherit: bool = True,
        cwd: Path | None = None,
    ) -> None:
        self.metrics_port = int(env.get("BW_METRICS_PORT") or free_port())
        full = {
            **(os.environ if inherit else {}),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            **env,
            "BW_WORKER_ID": worker_id,
            "BW_METRICS_PORT": str(self.metrics_port),
        }
        super().__init__([sys.executable, "-m", "worker.cli", "run"], log_path, full, cwd)
        self.worker_id = worker_id

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        try:
            await wait_until_ready(self.metrics_port, self.alive, timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{exc}:\n{self.log_tail()}") from None

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return await scrape(self.metrics_port, name, labels)

    def peak_rss_mb(self) -> float | None:
        """Peak resident set size (``VmHWM``) while it runs, in MB."""
        with contextlib.suppress(OSError, AssertionError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None


def stop_all(
    procs: Sequence[ChildProcess], sig: signal.Signals = signal.SIGKILL, grace_s: float = 10
) -> None:
    """``stop`` for many at once: each gets ``sig`` first, then they share ``grace_s``
    to exit before SIGKILL. Always reaps; safe to call twice."""
    for proc in procs:
        proc.send_signal(sig)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.stop(sig, grace_s=max(0.0, deadline - time.monotonic()))


@contextlib.asynccontextmanager
async def workers(
    env: Mapping[str, str],
    directory: Path,
    count: int = 1,
    *,
    ready: bool = True,
    prefix: str = "w",
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` worker processes (ids ``w0``, ``w1``...), each with a metrics port of
    its own, ready unless ``ready`` is false; killed on exit."""
    own_port = {**env, "BW_METRICS_PORT": ""}
    procs = [
        WorkerProcess(
            own_port, directory / f"worker-{prefix}{i}-{uuid.uuid4().hex[:6]}.log", f"{prefix}{i}"
        )
        for i in range(count)
    ]
    try:
        for proc in procs:
            proc.start()
        if ready:
            await asyncio.gather(*(proc.wait_ready() for proc in procs))
        yield procs
    finally:
        stop_all(procs)


class InProcessWorker:
    """``worker.service.serve`` in a task of the running loop: what ``budget-worker run``
    does, minus the process (and its seconds of interpreter start and litellm import).
    The settings are the worker's own (``settings_from(env)``)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        # Port 0 would be a free one the caller cannot know: pick it here instead.
        port = settings.metrics_port or free_port()
        self.settings = settings.model_copy(update={"metrics_port": port})
        self.metrics_port = port
        self.worker_id = self.settings.worker_id
        self.environ = dict(environ or {})
        self._stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> None:
        from worker.service import serve

        self.task = asyncio.create_task(serve(self.settings, self.environ, self._stop))

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        try:
            await wait_until_ready(self.metrics_port, self.alive, timeout_s)
        except RuntimeError:
            assert self.task is not None
            self.task.result()  # the reason it stopped
            raise

    async def stop(self, timeout_s: float = 30) -> int:
        """Stop as SIGTERM would (drain, commit) and wait; the exit code."""
        assert self.task is not None
        self._stop.set()
        try:
            return await asyncio.wait_for(self.task, timeout_s)
        finally:
            # serve() froze everything allocated so far, as a worker process does once;
            # the caller's process goes on, so its objects are collectable again.
            gc.unfreeze()

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return await scrape(self.metrics_port, name, labels)


@contextlib.asynccontextmanager
async def in_process_workers(
    env: Mapping[str, str], count: int = 1, *, prefix: str = "w"
) -> AsyncIterator[list[InProcessWorker]]:
    """``count`` in-process workers (ids ``w0``, ``w1``...), each with a metrics port of
    its own, ready; stopped on exit."""
    started = [
        InProcessWorker(
            settings_from({**env, "BW_WORKER_ID": f"{prefix}{i}", "BW_METRICS_PORT": "0"})
        )
        for i in range(count)
    ]
    try:
        for worker in started:
            await worker.start()
        await asyncio.gather(*(worker.wait_ready() for worker in started))
        yield started
    finally:
        # Every worker is stopped; the first that failed (a crash, a drain that raised)
        # fails the caller, as it would fail a process.
        failures: list[BaseException] = []
        for worker in started:
            if worker.task is not None:
                try:
                    await worker.stop()
                except Exception as exc:
                    failures.append(exc)
        if failures:
            raise failures[0]


async def scrape(port: int, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample of the worker's ``/metrics`` on ``port`` (None when it is not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    return None


async def until_assigned(
    procs: Sequence[WorkerProcess | InProcessWorker], partitions: int, timeout_s: float = 60
) -> None:
    """Wait until the group has settled: every worker consumes, all partitions taken."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = [await proc.metric("bw_partitions_assigned") or 0 for proc in procs]
        if sum(counts) == partitions and all(counts):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"partitions assigned {counts}, wanted {partitions} in all")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line written meanwhile, as ``budget-worker run`` writes it
    (``worker.logs.configure``: one JSON object per line with its extra fields, INFO and
    above, the chatty libraries at WARNING). For an in-process worker's log."""
    from worker.logs import NOISY, JsonFormatter

    lines: list[str] = []
    formatter = JsonFormatter()

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = _Lines(logging.INFO)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in NOISY)]
    levels = [logger.level for logger in loggers]
    loggers[0].addHandler(handler)
    loggers[0].setLevel(logging.INFO)
    for logger in loggers[1:]:
        logger.setLevel(logging.WARNING)
    try:
        yield lines
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def until_metric(
    worker: WorkerProcess | InProcessWorker,
    name: str,
    holds: Callable[[float], bool],
    labels: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> float:
    """Wait until ``holds(value)`` of a worker's metric (a missing one reads 0); the value."""
    deadline = time.monotonic() + timeout_s
    while not holds(value := await worker.metric(name, labels) or 0):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} of {worker.worker_id} still {value} after {timeout_s} s")
        await asyncio.sleep(0.05)
    return value


# --- jobs in, events out -----------------------------------------------------------------------


def job(
    job_id: str, user_id: str, prompt: str = "Hey, how's it going?", **fields: Any
) -> dict[str, Any]:
    """A job's JSON body for ``MODEL`` (``max_tokens`` 16 unless given)."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "job_id": job_id,
        "user_id": user_id,
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
    }
    body.update(fields)
    return body


async def produce(
    kafka: EmbeddedKafka | str,
    topic: str,
    records: Iterable[dict[str, Any] | tuple[bytes | None, bytes]],
) -> None:
    """Send job bodies (keyed by user id) or raw ``(key, value)`` records, and wait
    for the broker's acknowledgement of each."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_of(kafka), linger_ms=5, max_request_size=16_000_000
    )
    await producer.start()
    try:
        futures = []
        for record in records:
            if isinstance(record, dict):
                key, value = record["user_id"].encode(), json.dumps(record).encode()
            else:
                key, value = record
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(kafka: EmbeddedKafka | str, topic: str, *, timeout_s: float = 2.0) -> list[Any]:
    """Every record of ``topic`` from offset 0, once none arrived for ``timeout_s`` (a
    rescan: complete even where a live tailing consumer on this broker once missed a
    record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        idle_until = time.monotonic() + timeout_s
        while time.monotonic() < idle_until:
            batch = await consumer.getmany(timeout_ms=100)
            for items in batch.values():
                records.extend(items)
                idle_until = time.monotonic() + timeout_s
        return records
    finally:
        await consumer.stop()


async def wait_for_events(
    kafka: EmbeddedKafka | str,
    topic: str,
    job_ids: set[str],
    timeout_s: float = 60,
    *,
    each: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    """Events by job id (in topic order), once every id in ``job_ids`` has at least
    ``each``."""
    deadline = time.monotonic() + timeout_s
    while True:
        events: dict[str, list[dict[str, Any]]] = {}
        for record in await read_all(kafka, topic, timeout_s=0.3):
            event = json.loads(record.value)
            events.setdefault(event["job_id"], []).append(event)
        missing = {job_id for job_id in job_ids if len(events.get(job_id, ())) < each}
        if not missing:
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} jobs without an event, e.g. {sorted(missing)[:5]}")
        await asyncio.sleep(0.2)
