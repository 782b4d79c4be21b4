"""Workers of two kinds: ``budget-worker run`` child processes and ``serve()`` in a task
of the caller's loop; waiting on their metrics and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import aiohttp

from worker.dev.rig.setup import READY_TIMEOUT_S, settings_from
from worker.dev.servers import free_port
from worker.metrics import wait_until_ready
from worker.settings import Settings

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
