"""``budget-worker dev`` end to end, as a person uses it: start it, paste its export
lines into "another shell" (the environment of the next commands), run a worker, set a
budget, submit and wait; then stop both and find nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from worker.dev.local import FAKE_MODELS, LocalSystem
from worker.dev.rig import models_yaml
from worker.dev.servers import free_port
from worker.metrics import wait_until_ready

SCRIPT = str(Path(sys.executable).with_name("budget-worker"))


def descendants(pid: int) -> dict[int, str]:
    """Live (not zombie) processes below ``pid``, with their command lines."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            commands[int(entry.name)] = command
    found: dict[int, str] = {}
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found[child] = commands[child]
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def exports_of(dev: asyncio.subprocess.Process, timeout_s: float = 60) -> dict[str, str]:
    """The ``export`` lines ``budget-worker dev`` prints, once it has printed them all."""
    assert dev.stdout is not None
    exported: dict[str, str] = {}
    async with asyncio.timeout(timeout_s):
        while True:
            line = (await dev.stdout.readline()).decode()
            if not line:
                raise AssertionError("budget-worker dev exited before printing its exports")
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exported[name] = shlex.split(value)[0]
            elif line.startswith("Ctrl-C"):
                return exported


async def command(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.timeout(240)
async def test_dev_then_run_budget_and_submit_work_and_nothing_is_left_running(
    tmp_path: Path,
) -> None:
    base = {key: value for key, value in os.environ.items() if not key.startswith("BW_")}
    dev = await asyncio.create_subprocess_exec(
        SCRIPT,
        "dev",
        "--partitions",
        "2",
        env=base,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    worker: asyncio.subprocess.Process | None = None
    seen: dict[int, str] = {}
    try:
        exported = await exports_of(dev)
        assert set(exported) >= {
            "BW_KAFKA_BOOTSTRAP",
            "BW_REDIS_URL",
            "BW_MODELS_FILE",
            "BW_JOBS_TOPIC",
            "BW_RESULTS_TOPIC",
            "BW_DLQ_TOPIC",
            "BW_BUDGET_EVENTS_TOPIC",
        }
        seen = descendants(dev.pid)
        assert any("tansu" in cmd for cmd in seen.values()), seen
        assert any("redis" in cmd or "valkey" in cmd for cmd in seen.values()), seen

        shell = {**base, **exported}  # the other shell, after pasting
        port = free_port()
        log = await asyncio.to_thread((tmp_path / "worker.log").open, "wb")
        try:
            worker = await asyncio.create_subprocess_exec(
                SCRIPT,
                "run",
                env={**shell, "BW_METRICS_PORT": str(port), "BW_METRICS_HOST": "127.0.0.1"},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()  # the worker has its own copy
        process = worker
        await wait_until_ready(port, lambda: process.returncode is None, 90)

        code, out, err = await command(shell, "budget", "set", "alice", "--limit-usd", "1")
        assert code == 0, err
        submit = ["submit", "--user", "alice", "--model", "gpt-4o-mini", "--prompt", "Hello"]
        code, out, err = await command(shell, *submit, "--wait", "--timeout", "60")
        assert code == 0, err + (tmp_path / "worker.log").read_text()
        event = json.loads(out.partition("\n")[2])
        assert event["type"] == "completion.succeeded"
        assert event["cost_nanousd"] > 0
        code, out, err = await command(shell, "budget", "show", "alice", "--json")
        assert json.loads(out)["spent_nanousd"] == event["cost_nanousd"]

        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 60) == 0
        dev.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(dev.communicate(), 60)
        assert dev.returncode == 0, rest.decode(errors="replace")
        assert b"stopped: nothing of budget-worker dev is left running" in rest
        assert not await asyncio.to_thread(Path(exported["BW_MODELS_FILE"]).exists)
    finally:
        for process in (worker, dev):
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        left = {pid: cmd for pid, cmd in seen.items() if alive(pid)}
        for pid in left:  # only when dev broke its promise: do not leak them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert left == {}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hangup"])
async def test_dev_stopped_by_a_signal_leaves_nothing_running(
    tmp_path: Path, sig: signal.Signals
) -> None:
    dev = await asyncio.create_subprocess_exec(
        SCRIPT,
        "dev",
        env=dict(os.environ),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    seen: dict[int, str] = {}
    try:
        await exports_of(dev)
        seen = descendants(dev.pid)
        assert len(seen) >= 2, seen
        dev.send_signal(sig)
        await asyncio.wait_for(dev.communicate(), 60)
        assert dev.returncode == 0
    finally:
        if dev.returncode is None:
            os.killpg(dev.pid, signal.SIGKILL)
            await dev.wait()
        left = {pid: cmd for pid, cmd in seen.items() if alive(pid)}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert left == {}


async def test_dev_refuses_a_models_file_that_does_not_exist() -> None:
    code, _, err = await command(
        dict(os.environ), "dev", "--models-file", "/nonexistent/models.yaml"
    )
    assert code == 2
    assert err == "error: --models-file /nonexistent/models.yaml is not a file\n"


def test_the_exports_are_quoted_for_a_shell_and_the_models_load(tmp_path: Path) -> None:
    from worker.models import load_models
    from worker.pricebook import price_of

    system = LocalSystem(
        kafka_bootstrap="127.0.0.1:1234",
        redis_url="redis://127.0.0.1:5678/0",
        models_file=tmp_path / "a dir" / "models.yaml",
        jobs_topic="llm.jobs",
        results_topic="llm.results",
        dlq_topic="llm.jobs.dlq",
        budget_events_topic="llm.budget-events",
        fake_provider_url="http://127.0.0.1:9/v1",
    )
    lines = system.exports()
    assert f"export BW_MODELS_FILE='{tmp_path}/a dir/models.yaml'" in lines
    assert "export BW_KAFKA_BOOTSTRAP=127.0.0.1:1234" in lines
    path = tmp_path / "models.yaml"
    path.write_text(models_yaml("http://127.0.0.1:9/v1", FAKE_MODELS))
    assert load_models(path, {}, price_of).names() == ["gpt-4o-mini", "fake"]
