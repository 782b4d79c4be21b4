"""Settings: defaults that work, and errors that name the variable but not its value."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import Settings, load_settings


def test_the_defaults_are_valid_and_match_the_contract() -> None:
    settings = Settings(_env_file=None)
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert (settings.jobs_topic, settings.results_topic, settings.dlq_topic) == (
        "llm.jobs",
        "llm.results",
        "llm.jobs.dlq",
    )
    assert settings.group_id == "budget-worker"
    assert settings.default_budget_usd is None


def test_settings_are_read_from_bw_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("BW_DEFAULT_BUDGET_USD", "0.0002")
    settings = load_settings()
    assert settings.max_in_flight == 7
    assert str(settings.default_budget_usd) == "0.0002"


def test_a_lease_shorter_than_a_call_is_valid_because_leases_are_renewed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BW_LEASE_MS", "5000")
    monkeypatch.setenv("BW_MODEL_TIMEOUT_S", "120")
    assert load_settings().lease_ms == 5000


def test_a_lease_too_short_to_renew_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_LEASE_MS", "500")
    with pytest.raises(ConfigError, match="BW_LEASE_MS"):
        load_settings()


def test_a_bad_value_is_named_but_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_MAX_IN_FLIGHT", "sk-live-not-a-number")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "BW_MAX_IN_FLIGHT" in str(caught.value)
    assert "sk-live" not in str(caught.value)
