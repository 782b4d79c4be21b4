"""Test helpers beside the rig (``worker.dev.rig``, which starts workers and moves
records): the test defaults of a worker's environment, and the job path assembled
in-process over a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.events import BudgetSnapshot as EventBudget
from schemas.events import CompletionSucceeded, Usage, encode_event
from schemas.jobs import CompletionJob, parse_job
from worker.dev import rig
from worker.dev.rig import (
    MODEL,
    PRICE_IN,
    PRICE_OUT,
    InProcessWorker,
    Topics,
    WorkerProcess,
    captured_logs,
    in_process_workers,
    job,
    produce,
    read_all,
    settings_from,
    until_assigned,
    until_metric,
    wait_for_events,
    workers,
    write_models_file,
)
from worker.dev.servers import EmbeddedKafka, free_port
from worker.gate import LedgerGate
from worker.job import JobPath
from worker.leases import LeaseKeeper
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.models import ModelEntry, ModelList
from worker.prices import ModelPrice
from worker.settings import Settings
from worker.spend import SpendPath

__all__ = [
    "MODEL",
    "PRICE_IN",
    "PRICE_OUT",
    "InProcess",
    "InProcessWorker",
    "Topics",
    "WorkerProcess",
    "answer",
    "captured_logs",
    "in_process",
    "in_process_workers",
    "job",
    "jobs_on",
    "model_entry",
    "nowhere",
    "produce",
    "publish",
    "read_all",
    "settings_from",
    "spent",
    "succeeded",
    "until",
    "until_assigned",
    "until_metric",
    "wait_for_events",
    "worker_env",
    "workers",
    "write_models_file",
]


def worker_env(
    kafka: EmbeddedKafka, redis_url: str, models_file: Path, topics: Topics, **extra: Any
) -> dict[str, str]:
    """A worker's environment with the rig's short test timeouts (``rig.FAST``) and a
    metrics port of its own; ``extra`` as setting names (``lease_ms=4000``)."""
    return rig.worker_env(
        kafka, redis_url, models_file, topics, **{**rig.FAST, "metrics_port": free_port(), **extra}
    )


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


# --- a stand-in worker, for the client and the submit command -------------------------------


def succeeded(job: CompletionJob, worker_id: str = "stand-in") -> CompletionSucceeded:
    return CompletionSucceeded(
        job_id=job.job_id,
        user_id=job.user_id,
        model=job.model,
        metadata=job.metadata,
        worker_id=worker_id,
        response={"id": "chatcmpl-1", "object": "chat.completion", "choices": []},
        usage=Usage(prompt_tokens=14, completion_tokens=40, total_tokens=54),
        cost_nanousd=26_100,
        budget=EventBudget(limit_nanousd=200_000, spent_nanousd=26_100, remaining_nanousd=173_900),
        attempts=1,
    )


async def publish(kafka: EmbeddedKafka, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def jobs_on(kafka: EmbeddedKafka, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of the jobs topic, waiting for them."""
    deadline = time.monotonic() + 20
    while True:
        records = await read_all(kafka, topic, timeout_s=0.3)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.1)


async def answer(kafka: EmbeddedKafka, topics: Topics, count: int, copies: int = 1) -> None:
    """A stand-in worker: publish each job's event ``copies`` times (a redelivery)."""
    records = await jobs_on(kafka, topics.jobs, count)
    events = [succeeded(parse_job(record.value)) for record in records]
    await publish(
        kafka,
        topics.results,
        [(e.job_id.encode(), encode_event(e)) for e in events for _ in range(copies)],
    )


def nowhere() -> str:
    """A loopback address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


class Clock:
    """A fixed clock for ``Ledger(clock_ms=...)`` that a test moves by hand (grant
    expiry, period ends, lease lapses)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@contextlib.asynccontextmanager
async def ledger_on(request: Any, clock: Clock) -> AsyncIterator[Ledger]:
    """A ledger on the real Redis or the real Redis Cluster, by the fixture's param
    (``"redis"`` or ``"cluster"``), keeping time by ``clock``."""
    if request.param == "redis":
        url, cluster = request.getfixturevalue("redis_url"), False
    else:
        url, cluster = request.getfixturevalue("redis_cluster").url, True
    book = Ledger.from_url(url, cluster=cluster, clock_ms=clock)
    try:
        yield book
    finally:
        await book.close()
