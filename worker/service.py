"""One worker process, assembled: settings -> model list, ledger, provider, Kafka
clients, health server -> consume until SIGTERM/SIGINT -> drain, commit, exit 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Mapping
from decimal import Decimal

from worker import ledger
from worker.connections import check_kafka
from worker.consumer import JobConsumer
from worker.errors import ConfigError, LedgerUnavailable
from worker.job import JobRunner
from worker.metrics import HealthServer, Metrics
from worker.models import ModelList, load_models
from worker.pricebook import price_of
from worker.provider import Provider
from worker.publisher import KafkaPublisher
from worker.settings import Settings

log = logging.getLogger("budget_worker")


def default_budget(settings: Settings) -> ledger.Budget | None:
    """The budget given to users who have none, when ``BW_DEFAULT_BUDGET_USD`` is set."""
    if settings.default_budget_usd is None:
        return None
    limit = int(settings.default_budget_usd * Decimal(1_000_000_000))
    return ledger.Budget(limit_nanousd=limit, period=settings.default_budget_period)


def model_list(settings: Settings, environ: Mapping[str, str]) -> ModelList:
    if settings.models_file is None:
        raise ConfigError("BW_MODELS_FILE is not set: the worker needs a model list")
    return load_models(settings.models_file, environ, price_of)


def build_ledger(settings: Settings) -> ledger.Ledger:
    return ledger.Ledger.from_url(
        settings.redis_url,
        cluster=settings.redis_cluster,
        max_connections=settings.redis_max_connections,
        timeout_s=settings.redis_timeout_s,
        default_budget=default_budget(settings),
        outcome_ttl_s=settings.outcome_ttl_s,
    )


def build_provider(settings: Settings) -> Provider:
    return Provider(
        timeout_s=settings.model_timeout_s,
        max_retries=settings.model_max_retries,
        backoff_s=settings.retry_backoff_s,
        backoff_max_s=settings.retry_backoff_max_s,
    )


async def serve(
    settings: Settings, environ: Mapping[str, str], stop: asyncio.Event | None = None
) -> int:
    """Run one worker until SIGTERM/SIGINT (or ``stop``, for embedding); the exit code."""
    if settings.debug_log_prompts:
        log.warning("BW_DEBUG_LOG_PROMPTS is on: prompt text may be logged. Never in production.")
    models = model_list(settings, environ)
    # A wrong address, protocol, certificate or password stops the worker here, with
    # the reason, rather than leaving the Kafka client retrying in the dark.
    await check_kafka(settings)
    metrics = Metrics()
    ledger_ = build_ledger(settings)
    await _check_ledger(ledger_)
    publisher = KafkaPublisher(settings)
    runner = JobRunner(settings, ledger_, models, build_provider(settings), publisher, metrics)
    consumer = JobConsumer(settings, runner, metrics)
    health = HealthServer(metrics, ready=lambda: consumer.started and runner.ledger_ok.is_set())
    if stop is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
    else:
        watcher = asyncio.create_task(_stop_when_set(stop, consumer))
    await health.start(settings.metrics_host, settings.metrics_port)
    await publisher.start()
    freeze_start_up_objects()
    log.info(
        "worker started",
        extra={
            "worker_id": settings.worker_id,
            "topic": settings.jobs_topic,
            "group": settings.group_id,
            "models": models.names(),
            "metrics_port": health.port,
        },
    )
    try:
        await consumer.run()
    finally:
        if stop is not None:
            watcher.cancel()
        await publisher.stop()
        await ledger_.close()
        await health.stop()
        log.info("worker stopped")
    return 0


def freeze_start_up_objects() -> None:
    """Move everything allocated so far out of the garbage collector's sight.

    litellm leaves about 400,000 long-lived objects behind at import; every full
    collection walks all of them, which stalls the event loop for about 0.2 s on the
    development machine (every job in flight waits). They live as long as the process,
    so scanning them finds nothing: frozen, a full collection scans only what jobs
    allocate."""
    gc.collect()
    gc.freeze()


async def _check_ledger(ledger_: ledger.Ledger) -> None:
    """Refuse to start with credentials Redis rejects; start when Redis is only
    unreachable (jobs wait for it, as they do in an outage later)."""
    try:
        await ledger_.check_access()
    except ConfigError:
        await ledger_.close()
        raise
    except LedgerUnavailable as exc:
        log.warning(
            "Redis unreachable at start-up; jobs wait until it answers",
            extra={"error": str(exc)},
        )


async def _stop_when_set(stop: asyncio.Event, consumer: JobConsumer) -> None:
    await stop.wait()
    consumer.stop()
