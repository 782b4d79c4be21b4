"""``budget-worker run`` and ``admin`` start-up refusals: one line each, naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from worker.cli import app


@pytest.mark.parametrize("url", ["localhost:6380", "http://redis:6379/0"])
def test_run_refuses_a_redis_url_without_a_redis_scheme(url: str) -> None:
    result = CliRunner().invoke(
        app, ["run"], env={"BW_REDIS_URL": url, "BW_MODELS_FILE": "/nonexistent.yaml"}
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: invalid settings: BW_REDIS_URL: must be a URL like "
        "redis://[[user]:password@]host:6379/0 (rediss:// for TLS, "
        "unix:///path/to/redis.sock for a socket)\n"
    )


def test_run_words_a_settings_error_without_pydantics_prefix() -> None:
    result = CliRunner().invoke(app, ["run"], env={"BW_KAFKA_BOOTSTRAP": " "})
    assert result.exit_code == 2
    assert result.stderr == (
        "error: invalid settings: BW_KAFKA_BOOTSTRAP: must name at least one host:port\n"
    )


def test_admin_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BW_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["admin", "--port", "0"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: BW_ADMIN_TOKEN is not set: the admin API answers")


def test_admin_names_a_bad_port_flag() -> None:
    result = CliRunner().invoke(app, ["admin", "--port", "70000"], env={"BW_ADMIN_TOKEN": "x" * 20})
    assert result.exit_code == 2
    assert "--port" in result.stderr


def test_what_budget_worker_run_imports_holds_no_dev_rig() -> None:
    """The demo, the fake provider, the embedded servers and the rig stay out of the
    worker's process: ``run`` imports the console script, then the service."""
    script = (
        "import sys\n"
        "import worker.cli, worker.service\n"
        "print(sorted(m for m in sys.modules if m.startswith('worker.dev')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    # worker.dev.commands holds the dev commands' options; it imports its rig when run.
    assert result.stdout.strip() == "['worker.dev', 'worker.dev.commands']"
