"""``budget-worker run`` and ``admin`` start-up refusals: one line each, naming the setting."""

from __future__ import annotations

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
