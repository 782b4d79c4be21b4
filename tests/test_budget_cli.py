"""``budget-worker budget ...`` through typer's CliRunner against the real Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from worker import ledger
from worker.budget_cli import app, format_usd, parse_usd, rfc3339


@pytest.fixture
def cli(redis_url: str) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args, "--redis-url", redis_url])

    return invoke


def plain(text: str) -> str:
    """Text without the box rich draws around errors, on one line."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def on_ledger(redis_url: str, call: Any) -> Any:
    async def main() -> Any:
        book = ledger.Ledger.from_url(redis_url)
        try:
            return await call(book)
        finally:
            await book.close()

    return asyncio.run(main())


def charge(redis_url: str, user: str, job_id: str, cost_nanousd: int, model: str) -> None:
    async def run(book: ledger.Ledger) -> None:
        await book.settle(
            user,
            job_id,
            holder="test",
            cost_nanousd=cost_nanousd,
            tokens=10,
            model=model,
            outcome=b"{}",
        )

    on_ledger(redis_url, run)


# --- set ----------------------------------------------------------------------------------


def test_set_stores_the_limit_exactly_in_nano_usd(cli: Any, redis_url: str) -> None:
    result = cli("set", "alice", "--limit-usd", "0.0002", "--period", "daily")
    assert result.exit_code == 0, result.output
    assert "alice" in result.stdout and "$0.0002" in result.stdout
    budget = on_ledger(redis_url, lambda book: book.get_budget("alice"))
    assert budget == ledger.Budget(200_000, "daily")


def test_set_takes_rate_limits_and_every_period(cli: Any, redis_url: str) -> None:
    for period in ("weekly", "monthly", "yearly", "none"):
        result = cli("set", "u", "--limit-usd", "12.5", "--period", period, "--rpm", "60")
        assert result.exit_code == 0, result.output
        budget = on_ledger(redis_url, lambda book: book.get_budget("u"))
        assert budget == ledger.Budget(12_500_000_000, period, rpm=60)
    result = cli("set", "u", "--limit-usd", "1", "--period", "rolling", "--window-s", "3600")
    assert result.exit_code == 0, result.output
    budget = on_ledger(redis_url, lambda book: book.get_budget("u"))
    assert budget == ledger.Budget(10**9, "rolling", window_s=3600)


def test_set_replaces_limits_and_keeps_spend(cli: Any, redis_url: str) -> None:
    cli("set", "u", "--limit-usd", "1", "--rpm", "5", "--tpm", "1000")
    charge(redis_url, "u", "j1", 300_000, "gpt-4o-mini")
    assert cli("set", "u", "--limit-usd", "2").exit_code == 0
    state = on_ledger(redis_url, lambda book: book.state("u"))
    assert state.budget == ledger.Budget(2 * 10**9, "daily")
    assert state.snapshot.spent_nanousd == 300_000


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (["--limit-usd", "-0.01"], "--limit-usd", "negative"),
        (["--limit-usd", "NaN"], "--limit-usd", "finite"),
        (["--limit-usd", "Infinity"], "--limit-usd", "finite"),
        (["--limit-usd", "ten"], "--limit-usd", "not a decimal number"),
        (["--limit-usd", "0.0000000001"], "--limit-usd", "finer than 1 nano-USD"),
        (["--limit-usd", "1000000.000000001"], "--limit-usd", "over the largest limit"),
        (["--limit-usd", "1", "--period", "hourly"], "--period", "hourly"),
        (["--limit-usd", "1", "--period", "rolling"], "--window-s", "rolling"),
        (["--limit-usd", "1", "--window-s", "60"], "--window-s", "rolling only"),
        (["--limit-usd", "1", "--rpm", "0"], "--rpm", ""),
        (["--limit-usd", "1", "--tpm", "x"], "--tpm", ""),
    ],
)
def test_bad_values_exit_2_naming_the_option(
    cli: Any, redis_url: str, args: list[str], option: str, says: str
) -> None:
    result = cli("set", "u", *args)
    assert result.exit_code == 2
    assert f"'{option}'" in result.stderr
    assert says in plain(result.stderr)
    assert on_ledger(redis_url, lambda book: book.get_budget("u")) is None


def test_a_missing_limit_exits_2(cli: Any) -> None:
    result = cli("set", "u")
    assert result.exit_code == 2
    assert "--limit-usd" in result.stderr


@pytest.mark.parametrize(
    ("text", "nanousd"),
    [("0.0002", 200_000), ("0", 0), ("1", 10**9), ("1e-9", 1), (" 12.50 ", 12_500_000_000)],
)
def test_parse_usd_is_exact(text: str, nanousd: int) -> None:
    assert parse_usd(text) == nanousd


def test_format_usd_is_exact() -> None:
    assert format_usd(200_000) == "$0.0002"
    assert format_usd(0) == "$0"
    assert format_usd(12_500_000_000) == "$12.5"
    assert format_usd(1) == "$0.000000001"


# --- show ---------------------------------------------------------------------------------


def test_show_json_prints_one_object_with_nano_usd_fields(cli: Any, redis_url: str) -> None:
    cli("set", "alice", "--limit-usd", "0.0002", "--period", "monthly", "--tpm", "1000")
    charge(redis_url, "alice", "j1", 31_000, "gpt-3.5-turbo")
    charge(redis_url, "alice", "j2", 62_000, "gpt-4o-mini")

    async def hold(book: ledger.Ledger) -> Any:
        return await book.reserve(
            "alice", "j3", cost_nanousd=50_000, tokens=10, lease_ms=60_000, holder="h"
        )

    assert isinstance(on_ledger(redis_url, hold), ledger.Reserved)

    result = cli("show", "alice", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    now = datetime.now(UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert shown == {
        "user_id": "alice",
        "limit_nanousd": 200_000,
        "spent_nanousd": 93_000,
        "reserved_nanousd": 50_000,
        "remaining_nanousd": 57_000,
        "period": "monthly",
        "window_s": None,
        "period_end": next_month.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_spend_nanousd": {"gpt-3.5-turbo": 31_000, "gpt-4o-mini": 62_000},
        "rpm": None,
        "tpm": 1000,
    }
    assert result.stdout.count("\n") == 1


def test_show_json_of_a_lifetime_budget_has_no_period_end(cli: Any) -> None:
    cli("set", "u", "--limit-usd", "5", "--period", "none")
    shown = json.loads(cli("show", "u", "--json").stdout)
    assert shown["period_end"] is None
    assert shown["remaining_nanousd"] == 5 * 10**9


def test_show_prints_a_table(cli: Any, redis_url: str) -> None:
    cli("set", "bob [red]x[/red]", "--limit-usd", "0.5", "--rpm", "10")
    charge(redis_url, "bob [red]x[/red]", "j1", 1_000_000, "gpt-4o-mini")
    result = cli("show", "bob [red]x[/red]")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "bob [red]x[/red]" in out  # user ids are text, never markup
    for expected in ("$0.5", "$0.001", "$0.499", "daily", "gpt-4o-mini", "10"):
        assert expected in out


def test_show_of_an_unknown_user_exits_1(cli: Any) -> None:
    for args in (["show", "ghost"], ["show", "ghost", "--json"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert "'ghost' has no budget" in result.stderr
        assert result.stdout == ""


# --- list and reset -----------------------------------------------------------------------


def test_list_shows_every_user_with_limit_and_spent(cli: Any, redis_url: str) -> None:
    assert "no budgets" in cli("list").stdout
    cli("set", "alice", "--limit-usd", "1")
    cli("set", "a:{b}", "--limit-usd", "2", "--period", "weekly")
    charge(redis_url, "alice", "j1", 250_000_000, "m")
    result = cli("list")
    assert result.exit_code == 0, result.output
    assert "alice" in result.stdout and "a:{b}" in result.stdout
    assert "$0.25" in result.stdout and "$0.75" in result.stdout
    listed = json.loads(cli("list", "--json").stdout)["users"]
    assert [(u["user_id"], u["limit_nanousd"], u["spent_nanousd"]) for u in listed] == [
        ("a:{b}", 2 * 10**9, 0),
        ("alice", 10**9, 250_000_000),
    ]


def test_reset_zeroes_the_current_period(cli: Any, redis_url: str) -> None:
    cli("set", "u", "--limit-usd", "1")
    charge(redis_url, "u", "j1", 400_000, "m")
    result = cli("reset", "u")
    assert result.exit_code == 0, result.output
    assert json.loads(cli("show", "u", "--json").stdout)["spent_nanousd"] == 0


def test_reset_of_an_unknown_user_exits_1(cli: Any) -> None:
    result = cli("reset", "ghost")
    assert result.exit_code == 1
    assert "'ghost' has no budget" in result.stderr


# --- connection ---------------------------------------------------------------------------


def test_redis_url_defaults_to_bw_redis_url(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BW_REDIS_URL", redis_url)
    result = CliRunner().invoke(app, ["set", "u", "--limit-usd", "3"])
    assert result.exit_code == 0, result.output
    assert on_ledger(redis_url, lambda book: book.get_budget("u")) == ledger.Budget(3 * 10**9)


def test_unreachable_redis_exits_1_with_a_message() -> None:
    result = CliRunner().invoke(app, ["show", "u", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    assert "Redis unavailable" in result.stderr


def test_rfc3339() -> None:
    assert rfc3339(None) is None
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
