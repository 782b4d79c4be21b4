"""``budget-worker submit``: a job from the command line, its id, and with ``--wait`` its
event (a stand-in worker answers on the results topic); what it refuses, and an
unreachable broker, in one line each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.jobs import parse_job
from tests.support import Topics, answer, jobs_on, nowhere
from worker.cli import app
from worker.dev.servers import EmbeddedKafka

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def topics(kafka: EmbeddedKafka) -> Topics:
    return Topics.fresh(kafka)


async def test_submit_command_prints_the_job_id_and_the_event(
    kafka: EmbeddedKafka, topics: Topics
) -> None:
    env = {
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
        "BW_MODEL_TIMEOUT_S": "30",
    }
    args = ["submit", "--user", "heidi", "--model", "gpt-4o-mini", "--prompt", "Hi", "--wait"]
    run = asyncio.create_task(
        asyncio.to_thread(CliRunner().invoke, app, [*args, "--timeout", "30"], env=env)
    )
    await answer(kafka, topics, 1)
    result = await run
    assert result.exit_code == 0, result.output
    job_id, _, event_json = result.output.partition("\n")
    event = json.loads(event_json)
    assert event["job_id"] == job_id
    assert event["type"] == "completion.succeeded"


def test_submit_command_refuses_an_invalid_job_naming_the_field() -> None:
    result = CliRunner().invoke(
        app,
        ["submit", "--user", "ivan", "--model", "m", "--prompt", "hi", "--max-tokens", "0"],
        env={"BW_MODEL_TIMEOUT_S": "30", "BW_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
    )
    assert result.exit_code == 2
    assert "max_tokens" in result.output


@pytest.mark.parametrize("source", ["file", "stdin"])
async def test_submit_command_takes_a_prompt_too_long_for_an_argument(
    kafka: EmbeddedKafka, topics: Topics, tmp_path: Path, source: str
) -> None:
    # 300 KiB: over Linux's 128 KiB limit for one argument, under BW_MAX_PROMPT_CHARS.
    prompt = ("Grüße, ünïcode and a line break\n" * 10_000)[:300_000]
    path = tmp_path / "prompt.txt"
    path.write_bytes(prompt.encode("utf-8"))
    args = ["submit", "--user", "lee", "--model", "gpt-4o-mini", "--max-tokens", "8"]
    args += ["--prompt-file", str(path) if source == "file" else "-"]
    env = {
        **os.environ,
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
    }
    with path.open("rb") as stdin:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "worker.cli", *args],
            stdin=stdin if source == "stdin" else subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    [record] = await jobs_on(kafka, topics.jobs, 1)
    job = parse_job(record.value)
    assert job.job_id == result.stdout.decode().strip()
    assert job.messages[-1].content == prompt


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "exactly one of --prompt and --prompt-file"),
        (["--prompt", "hi", "--prompt-file", "-"], "exactly one of --prompt and --prompt-file"),
        (["--prompt-file", "/nonexistent/prompt.txt"], "cannot read /nonexistent/prompt.txt"),
        (["--prompt-file", "-"], "standard input is not UTF-8 text (byte 1)"),
    ],
)
def test_submit_command_refuses_a_prompt_it_cannot_take(args: list[str], says: str) -> None:
    result = CliRunner().invoke(
        app,
        ["submit", "--user", "mo", "--model", "m", *args],
        input=b"h\xffi",
        env={"BW_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
    )
    assert result.exit_code == 2
    assert says in " ".join(result.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
def test_submit_command_with_an_unreachable_broker_prints_one_line(wait: bool) -> None:
    bootstrap = nowhere()
    args = ["submit", "--user", "kim", "--model", "gpt-4o-mini", "--prompt", "Hi"]
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args, *(["--wait"] if wait else [])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BW_KAFKA_BOOTSTRAP": bootstrap},
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot reach Kafka at {bootstrap} "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


async def test_submit_command_puts_the_job_in_a_run(kafka: EmbeddedKafka, topics: Topics) -> None:
    env = {
        "BW_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BW_JOBS_TOPIC": topics.jobs,
        "BW_RESULTS_TOPIC": topics.results,
    }
    args = ["submit", "--user", "nia", "--model", "gpt-4o-mini", "--prompt", "Hi"]
    args += ["--run", "task-7", "--run-cap-usd", "0.25"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    [record] = await jobs_on(kafka, topics.jobs, 1)
    job = parse_job(record.value)
    assert job.run is not None
    assert (job.run.id, job.run.cap_nanousd, job.run.ttl_s) == ("task-7", 250_000_000, 3600)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--run", "task-7"], "--run and --run-cap-usd go together"),
        (["--run-cap-usd", "1"], "--run and --run-cap-usd go together"),
        (["--run", "task 7", "--run-cap-usd", "1"], "run.id"),
        (["--run", "task-7", "--run-cap-usd", "0"], "run.cap_nanousd"),
    ],
)
def test_submit_command_refuses_a_run_it_cannot_send(args: list[str], says: str) -> None:
    result = CliRunner().invoke(
        app,
        ["submit", "--user", "mo", "--model", "m", "--prompt", "hi", *args],
        env={"BW_KAFKA_BOOTSTRAP": "127.0.0.1:9"},
    )
    assert result.exit_code == 2
    assert says in result.output
