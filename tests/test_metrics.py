"""Metrics and the health server: what the exposition holds, what the docs say it
holds, and a metrics port that cannot be bound (in-process and with real workers)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase

from tests.support import (
    InProcessWorker,
    Topics,
    WorkerProcess,
    captured_logs,
    in_process_workers,
    settings_from,
    worker_env,
    write_models_file,
)
from worker.dev.servers import EmbeddedKafka
from worker.errors import ConfigError
from worker.metrics import HealthServer, Metrics, check_port, wait_until_ready
from worker.service import serve

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def samples(metrics: Metrics) -> dict[str, float]:
    """``name{labels}`` -> value, from the exposition text."""
    values = {}
    for line in metrics.render().decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_the_exposition_has_no_created_series() -> None:
    metrics = Metrics()
    metrics.charged("gpt-4o-mini", 26_100)
    metrics.jobs.labels("succeeded", "").inc()
    metrics.reserve_seconds.observe(0.001)
    metrics.model_seconds.labels("gpt-4o-mini").observe(0.4)
    text = metrics.render().decode()
    assert "bw_jobs_total" in text and "bw_reserve_seconds_count" in text
    assert "_created" not in text
    # Only this registry's view: prometheus_client's own global switch is untouched.
    other = CollectorRegistry()
    Counter("other_things", "A counter of a host application.", registry=other).inc()
    assert any(s.name == "other_things_created" for f in other.collect() for s in f.samples)


def test_metrics_include_process_and_gc_collectors() -> None:
    text = Metrics().render().decode()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "bw_jobs_in_flight",
    ):
        assert name in text


def test_a_charge_is_counted_in_usd_and_in_nano_usd() -> None:
    metrics = Metrics()
    metrics.charged("gpt-4o-mini", 26_100)
    metrics.charged("gpt-4o-mini", 1_000_000_000)
    metrics.charged("gpt-4.1-mini", 1)
    values = samples(metrics)
    assert values['bw_spend_nanousd_total{model="gpt-4o-mini"}'] == 1_000_026_100
    assert values['bw_spend_usd_total{model="gpt-4o-mini"}'] == pytest.approx(1.0000261)
    assert values['bw_spend_usd_total{model="gpt-4.1-mini"}'] == pytest.approx(1e-9)


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metrics table of docs/operations.md: exposed name -> (type, labels)."""
    text = OPERATIONS.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(bw_\w+)` \| (\w+) \|([^|]*)\|", line)
        if match:
            labels = tuple(re.findall(r"`(\w+)`", match.group(3)))
            rows[match.group(1)] = (match.group(2), labels)
    return rows


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    registered = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            registered[name] = (metric._type, tuple(metric._labelnames))
    assert registered, "no metric found"
    assert documented_metrics() == registered


async def test_a_port_in_use_is_a_config_error_naming_the_setting() -> None:
    first = HealthServer(Metrics(), ready=lambda: True)
    await first.start("127.0.0.1", 0)
    assert first.port > 0
    try:
        second = HealthServer(Metrics(), ready=lambda: True)
        with pytest.raises(ConfigError) as caught:
            await second.start("127.0.0.1", first.port)
        message = str(caught.value)
        assert f"127.0.0.1:{first.port}" in message
        assert "BW_METRICS_PORT" in message and "BW_METRICS_PORT=0" in message
        await second.stop()  # safe after a failed start
        with pytest.raises(ConfigError, match="Address already in use") as checked:
            check_port("127.0.0.1", first.port)
        assert str(checked.value) == message
    finally:
        await first.stop()
    check_port("127.0.0.1", first.port)  # free again


@pytest.mark.timeout(120)
async def test_a_second_worker_on_the_same_metrics_port_exits_with_one_line(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> None:
    """The first worker holds the port (in-process); the second, a ``budget-worker run``
    process, exits 2 with one line and leaves the first running."""
    topics = Topics.fresh(kafka)
    env = worker_env(kafka, redis_url, write_models_file(tmp_path, fake_provider.url), topics)
    first = InProcessWorker(settings_from({**env, "BW_WORKER_ID": "w-first"}))
    second = WorkerProcess(env, tmp_path / "second.log", "w-second")
    await first.start()
    try:
        await first.wait_ready()
        second.start()
        assert await second.wait(timeout_s=60) == 2
        (error,) = second.log().splitlines()  # one line, nothing else
        assert error.startswith(f"error: cannot listen on 0.0.0.0:{env['BW_METRICS_PORT']} ")
        assert "Address already in use" in error
        assert "BW_METRICS_PORT=0 to pick a free one" in error
        assert first.alive()
        await wait_until_ready(first.metrics_port, first.alive, 10)
    finally:
        second.kill()
        await first.stop()


async def test_metrics_port_0_picks_a_free_port_named_in_the_start_up_line(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> None:
    """In-process (the start-up line is the same log record a process writes)."""
    topics = Topics.fresh(kafka)
    models = write_models_file(tmp_path, fake_provider.url)
    env = {**worker_env(kafka, redis_url, models, topics), "BW_METRICS_HOST": "127.0.0.1"}
    settings = settings_from({**env, "BW_METRICS_PORT": "0", "BW_WORKER_ID": "w-zero"})
    stop = asyncio.Event()
    with captured_logs() as lines:
        worker = asyncio.create_task(serve(settings, {}, stop))
        try:
            port = await started_port(lines, worker)
            assert port > 0
            async with in_process_workers(env) as (other,):  # and a second worker beside it
                assert other.metrics_port != port
                await wait_until_ready(port, lambda: not worker.done(), 60)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)
            gc.unfreeze()


async def started_port(lines: list[str], worker: asyncio.Task[int], timeout_s: float = 60) -> int:
    """The metrics port from the worker's 'worker started' log line, once it is there."""
    async with asyncio.timeout(timeout_s):
        while True:
            for line in lines:
                if '"worker started"' in line:
                    port: int = json.loads(line)["metrics_port"]
                    return port
            assert not worker.done(), worker
            await asyncio.sleep(0.05)
