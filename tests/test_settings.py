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


@pytest.mark.parametrize(
    "url",
    ["localhost:6380", "alice:s3cret@localhost:6380/0", "http://x", "redis:/localhost", ""],
)
def test_a_redis_url_without_a_redis_scheme_is_refused_showing_the_form(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BW_REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "BW_REDIS_URL: " in message
    assert "redis://" in message and "rediss://" in message and "unix://" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@redis.example:6380/1",
        "unix:///run/redis/redis.sock",
        "REDIS://localhost",
    ],
)
def test_redis_urls_of_every_supported_scheme_are_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BW_REDIS_URL", url)
    assert load_settings().redis_url == url


def test_messages_carry_no_pydantic_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_KAFKA_BOOTSTRAP", "  ")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings: BW_KAFKA_BOOTSTRAP: must name at least one host:port"
    )
    monkeypatch.delenv("BW_KAFKA_BOOTSTRAP")
    monkeypatch.setenv("BW_LEASE_MS", "500")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid settings: BW_LEASE_MS: Input should be greater than or equal to 3000"
    )


def test_an_override_is_named_as_its_command_line_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_MAX_IN_FLIGHT", "nope")
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url="http://x")
    message = str(caught.value)
    assert "--redis-url: must be a URL like redis://" in message
    assert "BW_MAX_IN_FLIGHT: " in message
    assert "BW_REDIS_URL" not in message
