"""``budget-worker dev``: what a worker needs, on this machine, in one command.

It starts the embedded Kafka-protocol broker (Tansu) and Redis-compatible server on
loopback ports, the fake model provider (unless a real model list is given), creates
the worker's topics with ``worker.topics`` (as ``budget-worker topics create`` would),
writes a model list, and prints the ``export BW_...=...`` lines to paste into another
shell. There ``budget-worker run``, ``budget ...`` and ``submit`` work exactly as they
would against production servers: nothing else differs.

It stays in the foreground until Ctrl-C, SIGTERM or SIGHUP, then stops every server it
started and removes its files. The broker and Redis keep everything in memory: a
restart starts from nothing. Each server runs in a process group of its own and is
killed with it, so nothing is left running after a clean stop (a SIGKILL of this
process cannot be caught: its servers would outlive it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from worker import topics
from worker.dev.rig import GPT_4O_MINI, ModelSpec, models_yaml
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis, scratch_dir
from worker.errors import ConfigError
from worker.settings import ExplicitSettings

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WATCH_S = 1.0  # how often the servers are checked while running

# Priced explicitly, so that costs do not depend on the cost map.
FAKE_MODELS = (
    GPT_4O_MINI,
    ModelSpec("fake", "openai/fake-model", Decimal("0.000001"), Decimal("0.000002")),
)


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """What ``budget-worker dev`` starts. Ports of 0 are picked free."""

    kafka_port: int = 0
    redis_port: int = 0
    partitions: int = 6
    models_file: Path | None = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")


@dataclass(frozen=True, slots=True)
class LocalSystem:
    """The running servers, as the settings that reach them."""

    kafka_bootstrap: str
    redis_url: str
    models_file: Path
    jobs_topic: str
    results_topic: str
    dlq_topic: str
    budget_events_topic: str
    fake_provider_url: str | None

    def environment(self) -> dict[str, str]:
        """The variables a worker, the CLI and a producing service need here."""
        return {
            "BW_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "BW_REDIS_URL": self.redis_url,
            "BW_MODELS_FILE": str(self.models_file),
            "BW_JOBS_TOPIC": self.jobs_topic,
            "BW_RESULTS_TOPIC": self.results_topic,
            "BW_DLQ_TOPIC": self.dlq_topic,
            "BW_BUDGET_EVENTS_TOPIC": self.budget_events_topic,
            # litellm reads its bundled cost map instead of fetching one at import.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }

    def exports(self) -> list[str]:
        """``export NAME=value`` lines, quoted for a POSIX shell."""
        return [f"export {name}={shlex.quote(value)}" for name, value in self.environment().items()]


def banner(system: LocalSystem) -> list[str]:
    """What ``budget-worker dev`` prints once everything runs."""
    model = "gpt-4o-mini" if system.fake_provider_url else "<a model_name of your list>"
    serving = (
        f"fake model provider on {system.fake_provider_url}"
        if system.fake_provider_url
        else f"model list {system.models_file}"
    )
    return [
        f"Kafka-protocol broker on {system.kafka_bootstrap}, Redis on {system.redis_url}, "
        f"{serving}; topics {system.jobs_topic}, {system.results_topic}, "
        f"{system.dlq_topic}, {system.budget_events_topic}. Everything is in memory.",
        "",
        "Paste into another shell:",
        "",
        *system.exports(),
        "",
        "then:",
        "",
        "  budget-worker run",
        "  budget-worker budget set alice --limit-usd 1 --rpm 60",
        f'  budget-worker submit --user alice --model {model} --prompt "Hello" --wait',
        "",
        "Ctrl-C here stops everything.",
    ]


async def run_local(options: LocalOptions, say: Callable[[str], None]) -> None:
    """Start everything, ``say`` the banner, run until a stop signal, stop everything.

    Raises ``ConfigError`` for options that cannot work (a model list that does not
    exist, port 6379) and ``RuntimeError`` when a server fails or exits while running;
    whatever had started is stopped either way."""
    if options.models_file is not None and not options.models_file.is_file():
        raise ConfigError(f"--models-file {options.models_file} is not a file")
    if 6379 in (options.kafka_port, options.redis_port):
        raise ConfigError("port 6379 is left to the machine's own Redis: choose another")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            workdir = scratch_dir("budget-worker-dev-")
            # Pushed first, so it runs last: after every server is gone.
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            system, servers = await _start(stack, options, workdir)
            if stop.is_set():
                return
            for line in banner(system):
                say(line)
            await _watch(servers, stop)
            say("stopping: broker, Redis and model provider")
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    say("stopped: nothing of budget-worker dev is left running")


async def _start(
    stack: contextlib.AsyncExitStack, options: LocalOptions, workdir: Path
) -> tuple[LocalSystem, list[tuple[str, EmbeddedKafka | EmbeddedRedis]]]:
    """Each stop is pushed on ``stack`` before its start, so whatever started is
    stopped whichever step fails."""
    kafka = EmbeddedKafka(workdir, port=options.kafka_port or None)
    stack.callback(kafka.stop)
    redis = EmbeddedRedis(workdir, port=options.redis_port or None)
    stack.callback(redis.stop)
    # Blocking starts (they wait for the port) run in threads: a stop signal that
    # arrives meanwhile is seen as soon as they return.
    await asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(redis.start))
    settings = ExplicitSettings(kafka_bootstrap=kafka.bootstrap, redis_url=redis.url)
    await topics.create_topics(settings, partitions=options.partitions)

    fake_url = None
    models_file = options.models_file
    if models_file is None:
        from worker.dev.fake_provider import FakeProviderConfig, start_fake_provider

        config = FakeProviderConfig(
            latency_s=options.latency_ms / 1000,
            models=tuple(spec.model.partition("/")[2] for spec in FAKE_MODELS),
        )
        fake = await start_fake_provider(config)
        stack.push_async_callback(fake.stop)
        fake_url = fake.url
        models_file = workdir / "models.yaml"
        models_file.write_text(models_yaml(fake.url, FAKE_MODELS))
    system = LocalSystem(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis.url,
        models_file=models_file.resolve(),
        jobs_topic=settings.jobs_topic,
        results_topic=settings.results_topic,
        dlq_topic=settings.dlq_topic,
        budget_events_topic=settings.budget_events_topic,
        fake_provider_url=fake_url,
    )
    return system, [("broker", kafka), ("Redis", redis)]


async def _watch(
    servers: list[tuple[str, EmbeddedKafka | EmbeddedRedis]], stop: asyncio.Event
) -> None:
    """Until ``stop``; a server that exits meanwhile ends the run with its log's tail."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _WATCH_S)
        for name, server in servers:
            if not server.server.running:
                log = server.server.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the embedded {name} exited:\n{log}")
