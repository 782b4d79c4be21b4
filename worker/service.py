"""One worker process, assembled: settings -> model list, ledger, provider, Kafka
clients, health server -> consume (and resume parked jobs) until SIGTERM/SIGINT ->
drain, commit, exit 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Mapping

from worker import ledger, startup, tracing
from worker.connections import check_kafka
from worker.consumer import JobConsumer
from worker.errors import ConfigError, LedgerUnavailable
from worker.gate import LedgerGate
from worker.job import JobPath
from worker.leases import LeaseKeeper
from worker.metrics import HealthServer, Metrics
from worker.models import ModelList, load_models
from worker.parking import Parker
from worker.pricebook import price_of
from worker.provider import Provider
from worker.publisher import KafkaPublisher
from worker.relay import OutboxRelay
from worker.settings import Settings
from worker.spend import SpendPath
from worker.topics import check_topics

log = logging.getLogger("budget_worker")


def model_list(settings: Settings, environ: Mapping[str, str]) -> ModelList:
    if settings.models_file is None:
        raise ConfigError("BW_MODELS_FILE is not set: the worker needs a model list")
    return load_models(settings.models_file, environ, price_of)


async def serve(
    settings: Settings, environ: Mapping[str, str], stop: asyncio.Event | None = None
) -> int:
    """Run one worker until SIGTERM/SIGINT (or ``stop``, for embedding); the exit code."""
    startup.prepare()
    if settings.debug_log_prompts:
        log.warning("BW_DEBUG_LOG_PROMPTS is on: prompt text may be logged. Never in production.")
    models = model_list(settings, environ)
    # A wrong address, protocol, certificate or password stops the worker here, with
    # the reason, rather than leaving the Kafka client retrying in the dark.
    await check_kafka(settings)
    await check_topics(settings)
    tracing.configure(settings.tracing_exporter, "budget-worker", settings.worker_id)
    metrics = Metrics()
    ledger_ = ledger.Ledger.from_settings(settings)
    await _check_ledger(ledger_)
    gate = LedgerGate(settings.redis_retry_s, on_change=lambda up: metrics.redis_up.set(int(up)))
    watcher_of_ledger = asyncio.create_task(gate.watch(ledger_.ping), name="ledger-gate")
    leases = LeaseKeeper(ledger_, settings.lease_ms)
    publisher = KafkaPublisher(settings)
    parker = Parker(settings, ledger_.park_list(), gate, metrics)
    relay = OutboxRelay(
        ledger_,
        publisher,
        settings.budget_events_topic,
        metrics,
        sweep_s=settings.outbox_sweep_s,
    )
    spend = spend_path(
        settings, ledger_, Provider.from_settings(settings), leases, gate, metrics, relay.kick
    )
    consumer = JobConsumer(
        settings,
        JobPath(settings, spend, models, metrics),
        publisher,
        gate,
        metrics,
        park=parker.park,
    )
    health = HealthServer(metrics, ready=lambda: consumer.started and gate.is_open)
    if stop is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, consumer.stop)
    else:
        watcher = asyncio.create_task(_stop_when_set(stop, consumer))
    await health.start(settings.metrics_host, settings.metrics_port)
    await publisher.start()
    sweeper = asyncio.create_task(relay.run(), name="outbox-sweeper")
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
    # Beside the consumer: resumes parked jobs (of any worker) within its in-flight cap.
    resumer = asyncio.create_task(parker.run(consumer), name="parker")
    try:
        await consumer.run()
    finally:
        consumer.stop()
        await resumer
        if stop is not None:
            watcher.cancel()
        watcher_of_ledger.cancel()
        sweeper.cancel()
        await leases.stop()
        await relay.stop()
        await publisher.stop()
        await ledger_.close()
        await health.stop()
        tracing.shutdown()
        log.info("worker stopped")
    return 0


def spend_path(
    settings: Settings,
    ledger_: ledger.Ledger,
    provider: Provider,
    leases: LeaseKeeper,
    gate: LedgerGate,
    metrics: Metrics,
    on_thresholds: Callable[[str], None] | None = None,
) -> SpendPath:
    return SpendPath(
        ledger_,
        provider,
        leases,
        gate,
        metrics,
        holder_prefix=settings.worker_id,
        admission_policy=settings.admission_policy,
        clamp_min_tokens=settings.clamp_min_tokens,
        on_thresholds=on_thresholds,
    )


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
