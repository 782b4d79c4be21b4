"""Prometheus metrics and the health server (``/metrics``, ``/healthz``, ``/readyz``).

Metric names are part of what operators rely on (dashboards, alerts in ``deploy/``);
renaming one is a breaking change, so a new unit is a new metric beside the old one
(``bw_spend_usd`` beside ``bw_spend_nanousd``). Every metric is listed, with its type,
labels and meaning, in ``docs/operations.md``.

The exposition leaves out the ``*_created`` series that prometheus_client adds to each
counter and histogram: one more series per label set that no dashboard reads. They are
dropped from this registry's output only (prometheus_client's own switch is global to
the process, which may be a service embedding the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from schemas.money import nanousd_to_usd
from worker.errors import ConfigError

_FAST_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_PARK_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200)


class _WithoutCreated:
    """A view of a registry whose families carry no ``<name>_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        for family in self._registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family


class Metrics:
    """All metrics of one worker process, in a registry of their own, with the
    standard process (CPU, memory, file descriptors), Python GC and platform ones."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            r.register(collector)
        self.jobs = Counter(
            "bw_jobs", "Jobs finished, by outcome and reason.", ["outcome", "reason"], registry=r
        )
        self.dlq = Counter("bw_dlq_records", "Records sent to the dead-letter topic.", registry=r)
        self.in_flight = Gauge("bw_jobs_in_flight", "Jobs being processed now.", registry=r)
        self.waiting = Gauge(
            "bw_jobs_waiting_rate_limit", "Jobs waiting on an RPM/TPM limit.", registry=r
        )
        self.parked = Gauge(
            "bw_jobs_parked",
            "Jobs waiting for budget in the park (of every worker; sampled by this one).",
            registry=r,
        )
        self.park_moves = Counter(
            "bw_park_jobs",
            "Jobs into and out of the park: parked, resumed (answered after waiting), "
            "expired (rejected budget_exceeded: the wait ran out).",
            ["event"],
            registry=r,
        )
        self.park_wait_seconds = Histogram(
            "bw_park_wait_seconds",
            "How long jobs waited in the park, from parked to answered.",
            buckets=_PARK_BUCKETS,
            registry=r,
        )
        self.reserve_seconds = Histogram(
            "bw_reserve_seconds", "Ledger reserve round trip.", buckets=_FAST_BUCKETS, registry=r
        )
        self.settle_seconds = Histogram(
            "bw_settle_seconds", "Ledger settle round trip.", buckets=_FAST_BUCKETS, registry=r
        )
        self.model_seconds = Histogram(
            "bw_model_call_seconds",
            "Model call time including retries.",
            ["model"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.model_retries = Counter(
            "bw_model_retries", "Model call retries.", ["model"], registry=r
        )
        self.cut_off = Counter(
            "bw_model_calls_cut_off",
            "Model calls stopped mid-flight and released uncharged (the provider may still "
            "bill them): lease_lost, lease_expired (not renewable in time), cancelled.",
            ["reason"],
            registry=r,
        )
        # Both units: USD (Prometheus' convention is the base unit; dashboards chart it
        # as is) and nano-USD, the ledger's exact integers, kept for reconciliation
        # against events' cost_nanousd and for the dashboards already built on it.
        self.spend = Counter(
            "bw_spend_nanousd", "Nano-USD charged to budgets.", ["model"], registry=r
        )
        self.spend_usd = Counter("bw_spend_usd", "USD charged to budgets.", ["model"], registry=r)
        self.redis_up = Gauge("bw_redis_up", "1 when the ledger answered last time.", registry=r)
        self.kafka_lag = Gauge(
            "bw_consumer_lag",
            "Records behind the high watermark, per assigned partition.",
            ["partition"],
            registry=r,
        )
        self.assigned = Gauge(
            "bw_partitions_assigned", "Partitions this process consumes.", registry=r
        )
        self.budget_events = Counter(
            "bw_budget_events_published",
            "budget.threshold_crossed events published (copies of one event included).",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "bw_budget_outbox_slots",
            "Slots the outbox index listed at this process's last sweep.",
            registry=r,
        )
        self.redis_up.set(1)

    def charged(self, model: str, nanousd: int) -> None:
        """Count a charge of ``nanousd`` to a budget for ``model``, in both units."""
        self.spend.labels(model).inc(nanousd)
        self.spend_usd.labels(model).inc(nanousd_to_usd(nanousd))

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class HealthServer:
    """``/healthz``: the event loop answers. ``/readyz``: consuming and Redis reachable."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.started_at = time.time()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0: a free port, then in ``self.port``). A port that
        cannot be bound is a ``ConfigError`` naming the setting: on one host, every
        worker process needs a port of its own."""
        app = web.Application()
        app.router.add_get("/metrics", self._render_metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise _cannot_listen(host, port, exc) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _render_metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "uptime_s": round(time.time() - self.started_at)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)


def check_port(host: str, port: int) -> None:
    """Raise the ``ConfigError`` of :meth:`HealthServer.start` now if ``host:port``
    cannot be bound (most often: another worker on this host holds it).

    Called before the worker connects to anything, so that this common mistake stops
    it at once, with one line, before Kafka and Redis clients exist. The socket is
    bound as asyncio binds a server's (``SO_REUSEADDR``) and closed at once.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None


def _cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(
        f"cannot listen on {host}:{port} for /metrics, /healthz and /readyz "
        f"(BW_METRICS_HOST, BW_METRICS_PORT): {reason}. Give each worker process on one "
        "host its own BW_METRICS_PORT, or BW_METRICS_PORT=0 to pick a free one (the "
        "'worker started' log line names it)"
    )


async def wait_until_ready(
    port: int, alive: Callable[[], bool], timeout_s: float, host: str = "127.0.0.1"
) -> None:
    """Poll a worker's ``/readyz`` until it answers 200 (tests, demo, benchmarks).

    Raises ``RuntimeError`` as soon as ``alive()`` is false, ``TimeoutError`` at the
    deadline.
    """
    deadline = time.monotonic() + timeout_s
    url = f"http://{host}:{port}/readyz"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("worker exited before it was ready")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"worker not ready within {timeout_s} s")
