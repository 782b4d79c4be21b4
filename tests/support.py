"""Helpers for tests that run the whole pipeline through the real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from worker.dev.servers import EmbeddedKafka, free_port
from worker.gate import LedgerGate
from worker.job import JobPath
from worker.leases import LeaseKeeper
from worker.ledger import Ledger
from worker.metrics import Metrics, wait_until_ready
from worker.models import ModelEntry, ModelList
from worker.prices import ModelPrice
from worker.settings import Settings
from worker.spend import SpendPath

MODEL = "gpt-4o-mini"
PRICE_IN = "0.00000015"  # USD per prompt token
PRICE_OUT = "0.0000006"  # USD per completion token


@dataclass(frozen=True)
class Topics:
    jobs: str
    results: str
    dlq: str

    @classmethod
    def fresh(cls, kafka: EmbeddedKafka, partitions: int = 3) -> Topics:
        suffix = uuid.uuid4().hex[:10]
        topics = cls(f"jobs.{suffix}", f"llm.results.{suffix}", f"dlq.{suffix}")
        kafka.create_topic(topics.jobs, partitions)
        kafka.create_topic(topics.results, partitions)
        kafka.create_topic(topics.dlq, 1)
        return topics


def write_models_file(directory: Path, api_base: str) -> Path:
    path = directory / "models.yaml"
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {api_base}\n"
        "      api_key: sk-fake-test-key\n"
        "    model_info:\n"
        f"      input_cost_per_token: {PRICE_IN}\n"
        f"      output_cost_per_token: {PRICE_OUT}\n"
    )
    return path


def worker_env(
    kafka: EmbeddedKafka,
    redis_url: str,
    models_file: Path,
    topics: Topics,
    **extra: Any,
) -> dict[str, str]:
    env = {
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_REDIS_URL": redis_url,
        "BW_MODELS_FILE": str(models_file),
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
        "BW_DLQ_TOPIC": topics.dlq,
        "BW_GROUP_ID": f"group-{topics.jobs}",
        "BW_METRICS_PORT": str(free_port()),
        "BW_REPLY_TO_PATTERN": r"^llm\.results(\.[A-Za-z0-9_-]{1,100})?$",
        "BW_DRAIN_TIMEOUT_S": "2",
        "BW_SHUTDOWN_GRACE_S": "5",
        "BW_MODEL_TIMEOUT_S": "10",
        "BW_RETRY_BACKOFF_S": "0.05",
        "BW_RETRY_BACKOFF_MAX_S": "0.2",
        "BW_REDIS_RETRY_S": "0.2",
        "BW_REDIS_TIMEOUT_S": "0.5",
        "BW_LOG_LEVEL": "INFO",
    }
    env.update({f"BW_{key.upper()}": str(value) for key, value in extra.items()})
    return env


def settings_from(env: dict[str, str]) -> Settings:
    return Settings(**{key[3:].lower(): value for key, value in env.items()})  # type: ignore[arg-type]


class WorkerProcess:
    """``budget-worker run`` as a real child process (for kill and restart tests)."""

    def __init__(self, env: dict[str, str], log_path: Path, worker_id: str) -> None:
        self.env = {**os.environ, **env, "BW_WORKER_ID": worker_id}
        self.log_path = log_path
        self.metrics_port = int(env["BW_METRICS_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, timeout_s: float = 60) -> None:
        def alive() -> bool:
            return self.process is not None and self.process.poll() is None

        try:
            await wait_until_ready(self.metrics_port, alive, timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{exc}:\n{self.log()[-3000:]}") from None

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    async def wait(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not exit")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample of the worker's /metrics (None when it is not there)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return float(sample.value)
        return None


async def until_assigned(procs: list[WorkerProcess], partitions: int) -> None:
    """Wait until the group has settled: every worker consumes, all partitions taken."""
    deadline = time.monotonic() + 60
    while True:
        counts = [await proc.metric("bw_partitions_assigned") or 0 for proc in procs]
        if sum(counts) == partitions and all(counts):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"partitions assigned {counts}, wanted {partitions} in all")
        await asyncio.sleep(0.2)


async def until_busy(proc: WorkerProcess, jobs: int = 1) -> None:
    """Wait until the worker runs at least ``jobs`` jobs at once."""
    deadline = time.monotonic() + 60
    while (await proc.metric("bw_jobs_in_flight") or 0) < jobs:
        if time.monotonic() > deadline:
            raise AssertionError("the worker never got busy")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def workers(
    env: dict[str, str], directory: Path, count: int = 1
) -> AsyncIterator[list[WorkerProcess]]:
    """Start ``count`` worker processes (each its own metrics port) and kill them after."""
    procs = []
    for index in range(count):
        proc_env = {**env, "BW_METRICS_PORT": str(free_port())}
        procs.append(WorkerProcess(proc_env, directory / f"worker-{index}.log", f"w{index}"))
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            await proc.wait_ready()
        yield procs
    finally:
        for proc in procs:
            proc.kill()


def job(
    job_id: str, user_id: str, prompt: str = "Hey, how's it going?", **fields: Any
) -> dict[str, Any]:
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
    kafka: EmbeddedKafka, topic: str, records: Iterable[dict[str, Any] | tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, linger_ms=5, max_request_size=16_000_000
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


async def read_all(kafka: EmbeddedKafka, topic: str, *, timeout_s: float = 2.0) -> list[Any]:
    """Every record of ``topic`` from offset 0 (a rescan: complete even where a live
    tailing consumer on this broker once missed a record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
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
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
                idle_until = time.monotonic() + timeout_s
        return records
    finally:
        await consumer.stop()


async def wait_for_events(
    kafka: EmbeddedKafka, topic: str, job_ids: set[str], timeout_s: float = 60
) -> dict[str, list[dict[str, Any]]]:
    """Events by job id, once every id in ``job_ids`` has at least one."""
    deadline = time.monotonic() + timeout_s
    while True:
        events: dict[str, list[dict[str, Any]]] = {}
        for record in await read_all(kafka, topic, timeout_s=0.5):
            event = json.loads(record.value)
            events.setdefault(event["job_id"], []).append(event)
        missing = job_ids - events.keys()
        if not missing:
            return events
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} jobs without an event, e.g. {sorted(missing)[:5]}")
        await asyncio.sleep(0.5)


async def spent(ledger: Ledger, user: str) -> int:
    """What ``user`` has spent in the current period (0 without a budget)."""
    state = await ledger.state(user)
    return 0 if state is None else state.snapshot.spent_nanousd


def model_entry(
    name: str = MODEL, price_in: str = PRICE_IN, price_out: str = PRICE_OUT, **params: Any
) -> ModelEntry:
    """A model-list entry priced per token (the fake provider's default model)."""
    return ModelEntry(
        name=name,
        litellm_params={"model": f"openai/{name}", "api_key": "sk-fake-test-key", **params},
        price=ModelPrice(Decimal(price_in), Decimal(price_out)),
        max_output_tokens=None,
        tokenizer_family="openai",
    )


@dataclass
class InProcess:
    """The job path of one worker process, assembled in this process over a real Redis,
    with a scripted provider: every outcome in milliseconds, no broker."""

    settings: Settings
    ledger: Ledger
    provider: Any
    leases: LeaseKeeper
    gate: LedgerGate
    metrics: Metrics
    spend: SpendPath
    jobs: JobPath

    async def close(self) -> None:
        await self.leases.stop()
        await self.ledger.close()


def in_process(
    redis_url: str, provider: Any, entry: ModelEntry | None = None, **settings: Any
) -> InProcess:
    """Assemble the job path as ``worker.service`` does (settings as keyword arguments,
    e.g. ``lease_ms=3000``)."""
    from worker.service import spend_path

    values: dict[str, Any] = {
        "redis_url": redis_url,
        "worker_id": "w-test",
        "redis_retry_s": 0.05,
        "redis_timeout_s": 0.5,
        **settings,
    }
    config = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    ledger = Ledger.from_settings(config)
    metrics = Metrics()
    gate = LedgerGate(config.redis_retry_s)
    leases = LeaseKeeper(ledger, config.lease_ms)
    spend = spend_path(config, ledger, provider, leases, gate, metrics)
    models = ModelList([entry or model_entry()])
    return InProcess(
        config,
        ledger,
        provider,
        leases,
        gate,
        metrics,
        spend,
        JobPath(config, spend, models, metrics),
    )


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait until ``predicate()`` holds: observable state, polled, never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        await asyncio.sleep(0.01)


# Prepended to a script run by ``run_without_network``: every socket lookup and connect
# is recorded and refused, and the script prints ``attempts [...]`` at its end.
_REFUSE_NETWORK = """
import socket

attempts = []

def refuse(*args, **kwargs):
    attempts.append(args[:1])
    raise OSError("network disabled in this test")

socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
"""


def run_without_network(
    script: str, cwd: Path, *, unset: tuple[str, ...] = ("LITELLM_LOCAL_MODEL_COST_MAP",)
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter whose every socket is refused, without the
    environment variables ``unset``; it ends printing ``attempts`` (empty: no network)."""
    code = _REFUSE_NETWORK + textwrap.dedent(script) + '\nprint("attempts", attempts)\n'
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
