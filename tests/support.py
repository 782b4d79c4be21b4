"""Test helpers beside the rig (``worker.dev.rig``, which starts workers and moves
records): the test defaults of a worker's environment, and the job path assembled
in-process over a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

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
    "captured_logs",
    "in_process",
    "in_process_workers",
    "job",
    "model_entry",
    "produce",
    "read_all",
    "settings_from",
    "spent",
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
