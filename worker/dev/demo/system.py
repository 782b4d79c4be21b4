"""The system the demo runs: broker, Redis, topics, the model (fake or real) and
ready workers, every one of them stopped whichever step fails."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from worker.dev.rig import ModelSpec, Topics, WorkerProcess, models_yaml, stop_all, worker_env
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis, free_port

if TYPE_CHECKING:
    from worker.dev.fake_provider import FakeProviderServer
    from worker.models import ModelEntry
    from worker.provider import Provider
from worker.dev.demo.results import DemoOptions, DemoProgress, DemoServers

T = TypeVar("T")


_WORKER_STOP_GRACE_S = 5.0
_WORKER_READY_TIMEOUT_S = 90.0


def _models_yaml(options: DemoOptions, api_base: str | None) -> str:
    spec = ModelSpec(
        options.model,
        f"openai/{options.model}",
        options.input_usd_per_token,
        options.output_usd_per_token,
    )
    return models_yaml(api_base, [spec], api_key="sk-fake-demo")


def _worker_env(
    environ: Mapping[str, str],
    options: DemoOptions,
    kafka: EmbeddedKafka,
    redis_url: str,
    models_file: Path,
    topics: Topics,
    group_id: str,
) -> dict[str, str]:
    # The caller's own BW_ settings (an admission policy, TLS for another broker...)
    # would change the scenario: the workers get exactly the demo's.
    env = {key: value for key, value in environ.items() if not key.startswith("BW_")}
    env.update(
        worker_env(
            kafka,
            redis_url,
            models_file,
            topics,
            group_id=group_id,
            metrics_host="127.0.0.1",
            max_in_flight=max(64, options.users * options.concurrency),
            model_timeout_s=30,
            lease_ms=60_000,
            drain_timeout_s=2,
            shutdown_grace_s=3,
            log_level="WARNING",
        )
    )
    return env


@dataclass(frozen=True, slots=True)
class System:
    """What is running: the broker, Redis, the model, the workers."""

    kafka_bootstrap: str
    redis_url: str
    topics: Topics
    entry: ModelEntry
    provider: Provider


async def start_system(
    stack: contextlib.AsyncExitStack,
    options: DemoOptions,
    environ: Mapping[str, str],
    servers: DemoServers | None,
    run_id: str,
    workdir: Path,
    progress: DemoProgress,
) -> System:
    """Broker, Redis, topics, the model and ready workers. Each stop is pushed on
    ``stack`` before its start, so whatever started is stopped, whichever step fails or
    is interrupted; they run in reverse order: workers first."""
    if servers is None:
        kafka = EmbeddedKafka(workdir)
        stack.callback(kafka.stop)
        kafka.start()
        progress.step(f"Kafka-protocol broker (Tansu) on {kafka.bootstrap}")
        redis = EmbeddedRedis(workdir)
        stack.callback(redis.stop)
        redis.start()
        redis_url = redis.url
        progress.step(f"Redis-compatible server on {redis_url}")
        topics = Topics("llm.jobs", "llm.results", "llm.jobs.dlq", "llm.budget-events")
    else:
        kafka, redis_url = servers.kafka, servers.redis_url
        topics = Topics(
            f"demo.jobs.{run_id}",
            f"llm.results.demo-{run_id}",
            f"demo.dlq.{run_id}",
            f"demo.budget-events.{run_id}",
        )
    topics.create(kafka, partitions=max(6, 2 * options.workers), results_partitions=3)
    progress.step(f"topics {topics.jobs}, {topics.results}, {topics.dlq}")

    api_base = None
    if options.provider == "fake":
        fake = await _start_fake(options)
        stack.push_async_callback(fake.stop)
        api_base = fake.url
        progress.step(
            f"fake model provider on {fake.url} ({options.latency_ms:g} ms"
            f" + up to {options.jitter_ms:g} ms, {options.output_tokens} output tokens)"
        )
    models_file = workdir / "models.yaml"
    models_file.write_text(_models_yaml(options, api_base))

    workers = f"{options.workers} worker process" + ("es" if options.workers > 1 else "")
    progress.phase = f"starting {workers}"
    env = _worker_env(environ, options, kafka, redis_url, models_file, topics, f"demo-{run_id}")
    procs = [
        WorkerProcess(
            {**env, "BW_METRICS_PORT": str(free_port())},
            workdir / f"worker-{index + 1}.log",
            f"demo-w{index + 1}",
            inherit=False,
            cwd=workdir,
        )
        for index in range(options.workers)
    ]
    # SIGTERM first: the workers drain and exit 0.
    stack.callback(stop_all, procs, signal.SIGTERM, _WORKER_STOP_GRACE_S)
    for proc in procs:
        proc.start()
    # Loaded while the workers boot (litellm takes seconds to import); a model the cost
    # map cannot price fails here, with the model list's own message.
    entry, provider = await _in_daemon_thread(
        lambda: _model_and_provider(models_file, environ, options.model)
    )
    for proc in procs:
        await proc.wait_ready(_WORKER_READY_TIMEOUT_S)
    progress.step(f"{workers} ready")
    return System(kafka.bootstrap, redis_url, topics, entry, provider)


async def _in_daemon_thread(function: Callable[[], T]) -> T:
    """``function()`` in a daemon thread: unlike ``asyncio.to_thread``, an interrupted
    demo exits without waiting for it (an import of litellm takes seconds)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def main() -> None:
        try:
            result = function()
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=main, name="budget-worker-demo", daemon=True).start()
    return await future


async def _start_fake(options: DemoOptions) -> FakeProviderServer:
    from worker.dev.fake_provider import FakeProviderConfig, start_fake_provider

    config = FakeProviderConfig(
        latency_s=options.latency_ms / 1000,
        latency_jitter_s=options.jitter_ms / 1000,
        output_tokens=options.output_tokens,
        models=(options.model,),
    )
    return await start_fake_provider(config)


def _model_and_provider(
    models_file: Path, environ: Mapping[str, str], model: str
) -> tuple[ModelEntry, Provider]:
    """The model as the workers will load it (a bad name or a missing price fails here,
    before any worker starts) and a provider for the check-then-spend half."""
    from worker import startup

    startup.prepare()  # before litellm's first import in this process
    from worker.models import load_models
    from worker.pricebook import price_of
    from worker.provider import Provider

    entry = load_models(models_file, environ, price_of).get(model)
    assert entry is not None
    return entry, Provider(timeout_s=30, max_retries=2, backoff_s=0.2, backoff_max_s=2.0)
