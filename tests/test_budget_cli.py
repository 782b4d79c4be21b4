"""``budget-worker budget ...`` through typer's CliRunner against the real Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from worker import ledger
from worker.budget_cli import app, format_usd, parse_usd, rfc3339
from worker.dev.servers import EmbeddedRedis


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
    assert budget == ledger.Budget(10**9, "rolling", window_s=3600, rpm=60)  # rpm kept


def test_set_changes_only_what_is_given_and_keeps_spend(cli: Any, redis_url: str) -> None:
    cli("set", "alice", "--limit-usd", "5", "--period", "weekly", "--rpm", "60", "--tpm", "1000")
    charge(redis_url, "alice", "j1", 300_000, "gpt-4o-mini")
    result = cli("set", "alice", "--limit-usd", "10")
    assert result.exit_code == 0, result.output
    assert "$10 weekly, 60 rpm, 1000 tpm" in result.stdout
    state = on_ledger(redis_url, lambda book: book.state("alice"))
    assert state.budget == ledger.Budget(10 * 10**9, "weekly", rpm=60, tpm=1000)
    assert state.snapshot.spent_nanousd == 300_000
    assert cli("set", "alice", "--rpm", "30").exit_code == 0
    budget = on_ledger(redis_url, lambda book: book.get_budget("alice"))
    assert budget == ledger.Budget(10 * 10**9, "weekly", rpm=30, tpm=1000)


def test_no_rpm_and_no_tpm_remove_a_rate_limit(cli: Any, redis_url: str) -> None:
    cli("set", "u", "--limit-usd", "1", "--rpm", "5", "--tpm", "1000")
    result = cli("set", "u", "--no-rpm")
    assert result.exit_code == 0, result.output
    assert on_ledger(redis_url, lambda book: book.get_budget("u")) == ledger.Budget(
        10**9, "daily", tpm=1000
    )
    assert cli("set", "u", "--no-tpm", "--rpm", "9").exit_code == 0
    assert on_ledger(redis_url, lambda book: book.get_budget("u")) == ledger.Budget(
        10**9, "daily", rpm=9
    )


def test_a_rolling_window_is_kept_with_its_period_and_dropped_with_it(
    cli: Any, redis_url: str
) -> None:
    cli("set", "u", "--limit-usd", "1", "--period", "rolling", "--window-s", "3600")
    assert cli("set", "u", "--limit-usd", "2").exit_code == 0
    budget = on_ledger(redis_url, lambda book: book.get_budget("u"))
    assert budget == ledger.Budget(2 * 10**9, "rolling", window_s=3600)
    assert cli("set", "u", "--window-s", "60").exit_code == 0
    budget = on_ledger(redis_url, lambda book: book.get_budget("u"))
    assert budget == ledger.Budget(2 * 10**9, "rolling", window_s=60)
    assert cli("set", "u", "--period", "monthly").exit_code == 0
    budget = on_ledger(redis_url, lambda book: book.get_budget("u"))
    assert budget == ledger.Budget(2 * 10**9, "monthly")
    result = cli("set", "u", "--window-s", "60")
    assert result.exit_code == 2
    assert "rolling only, not monthly" in plain(result.stderr)


def test_a_new_budget_needs_a_limit_and_takes_the_defaults(cli: Any, redis_url: str) -> None:
    result = cli("set", "new", "--rpm", "5")
    assert result.exit_code == 2
    assert "'--limit-usd'" in result.stderr and "no budget yet" in plain(result.stderr)
    assert on_ledger(redis_url, lambda book: book.get_budget("new")) is None
    assert cli("set", "new", "--limit-usd", "3").exit_code == 0
    assert on_ledger(redis_url, lambda book: book.get_budget("new")) == ledger.Budget(3 * 10**9)


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (["--rpm", "5", "--no-rpm"], "--rpm", "cannot be given with --no-rpm"),
        (["--tpm", "5", "--no-tpm"], "--tpm", "cannot be given with --no-tpm"),
        (["--rpm", "0"], "--rpm", "--no-rpm removes it"),
        (["--tpm", "0"], "--tpm", "--no-tpm removes it"),
    ],
)
def test_contradicting_rate_options_exit_2_and_change_nothing(
    cli: Any, redis_url: str, args: list[str], option: str, says: str
) -> None:
    cli("set", "u", "--limit-usd", "1", "--rpm", "7", "--tpm", "70")
    result = cli("set", "u", *args)
    assert result.exit_code == 2
    assert f"'{option}'" in result.stderr
    assert says in plain(result.stderr)
    assert on_ledger(redis_url, lambda book: book.get_budget("u")) == ledger.Budget(
        10**9, rpm=7, tpm=70
    )


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
        "scope": "user:alice",
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
        "credits_nanousd": 0,
        "drawn_nanousd": 0,
        "rollover_cap_nanousd": None,
        "carried_nanousd": 0,
        "team": None,
        "org": None,
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


# --- delete -------------------------------------------------------------------------------


def test_delete_removes_the_budget_and_the_listing(cli: Any, redis_url: str) -> None:
    cli("set", "alice", "--limit-usd", "1", "--rpm", "5")
    cli("set", "bob", "--limit-usd", "2")
    result = cli("delete", "alice")
    assert result.exit_code == 0, result.output
    assert "'alice' deleted" in result.stdout
    assert on_ledger(redis_url, lambda book: book.get_budget("alice")) is None
    listed = json.loads(cli("list", "--json").stdout)["users"]
    assert [user["user_id"] for user in listed] == ["bob"]
    assert cli("show", "alice").exit_code == 1


def test_delete_of_an_unknown_user_exits_1(cli: Any) -> None:
    result = cli("delete", "ghost")
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


def test_a_refused_password_exits_2_saying_so_without_echoing_it(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, extra_args=["--requirepass", "right-pw-71c2"])
    server.start()
    try:
        url = f"redis://:wrong-pw-38ab@127.0.0.1:{server.port}/0"
        for args in (["show", "u"], ["set", "u", "--limit-usd", "1"], ["list"]):
            result = CliRunner().invoke(app, [*args, "--redis-url", url])
            assert result.exit_code == 2, result.output
            assert "refused" in result.stderr and "credentials" in result.stderr
            assert "unavailable" not in result.stderr
            assert "wrong-pw" not in result.output and "right-pw" not in result.output
            assert result.stderr.count("\n") == 1
        good = f"redis://:right-pw-71c2@127.0.0.1:{server.port}/0"
        assert (
            CliRunner().invoke(app, ["set", "u", "--limit-usd", "1", "--redis-url", good]).exit_code
            == 0
        )
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["http://x", "localhost:6380"])
def test_a_redis_url_of_the_wrong_form_exits_2_with_one_line(url: str) -> None:
    result = CliRunner().invoke(app, ["list", "--redis-url", url])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: invalid settings: --redis-url: must be a URL like "
        "redis://[[user]:password@]host:6379/0 (rediss:// for TLS, "
        "unix:///path/to/redis.sock for a socket)\n"
    )


def test_a_bad_bw_redis_url_is_named_as_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_REDIS_URL", "localhost:6380")
    result = CliRunner().invoke(app, ["show", "u"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid settings: BW_REDIS_URL: must be a URL")


def test_rfc3339() -> None:
    assert rfc3339(None) is None
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


# --- teams, orgs, membership, credits -----------------------------------------------------


def reserve(redis_url: str, user: str, job_id: str, cost_nanousd: int) -> Any:
    async def run(book: ledger.Ledger) -> Any:
        return await book.reserve(
            user, job_id, cost_nanousd=cost_nanousd, tokens=0, lease_ms=60_000, holder="test"
        )

    return on_ledger(redis_url, run)


def test_team_and_org_budgets_hold_while_members_have_room(cli: Any, redis_url: str) -> None:
    assert cli("team", "eng", "--org", "acme").exit_code == 0
    result = cli("set", "team:eng", "--limit-usd", "1", "--period", "none")
    assert result.exit_code == 0, result.output
    assert "budget of team:eng set: $1 none" in result.stdout
    assert cli("set", "org:acme", "--limit-usd", "5", "--rpm", "100").exit_code == 0
    for user in ("alice", "bob"):
        assert cli("set", user, "--limit-usd", "0.8").exit_code == 0
        result = cli("member", user, "--team", "eng")
        assert result.exit_code == 0, result.output
    assert isinstance(reserve(redis_url, "alice", "j1", 600_000_000), ledger.Reserved)
    refused = reserve(redis_url, "bob", "j2", 600_000_000)
    assert isinstance(refused, ledger.Refused) and refused.scope == "team:eng"
    team = json.loads(cli("show", "team:eng", "--json").stdout)
    assert (team["scope"], team["reserved_nanousd"], team["org"]) == ("team:eng", 6 * 10**8, "acme")
    alice = json.loads(cli("show", "alice", "--json").stdout)
    assert (alice["team"], alice["org"]) == ("eng", "acme")
    orgs = json.loads(cli("list", "--kind", "org", "--json").stdout)["orgs"]
    assert [(o["scope"], o["limit_nanousd"], o["rpm"]) for o in orgs] == [
        ("org:acme", 5 * 10**9, 100)
    ]
    teams = cli("list", "--kind", "team")
    assert teams.exit_code == 0 and "eng" in teams.stdout and "$1" in teams.stdout


def test_a_user_id_that_looks_like_a_scope_is_read_as_a_user_with_user(cli: Any) -> None:
    assert cli("set", "team:x", "--user", "--limit-usd", "1").exit_code == 0
    assert json.loads(cli("show", "team:x", "--user", "--json").stdout)["user_id"] == "team:x"
    result = cli("show", "team:x")
    assert result.exit_code == 1 and "team:x has no budget" in result.stderr
    assert cli("show", "user:7").exit_code == 1  # "user:" is part of a user id, as before


def test_a_team_budget_needs_the_team_first(cli: Any) -> None:
    result = cli("set", "team:ghost", "--limit-usd", "1")
    assert result.exit_code == 1 and "create it first" in result.stderr


def test_grant_adjust_and_history_show_where_each_nano_usd_went(cli: Any, redis_url: str) -> None:
    assert cli("set", "carol", "--no-limit", "--period", "none").exit_code == 0
    result = cli("grant", "carol", "--amount-usd", "2", "--id", "topup-1", "--priority", "1")
    assert result.exit_code == 0, result.output
    assert "granted $2 to 'carol'" in result.stdout
    again = cli("grant", "carol", "--amount-usd", "9", "--id", "topup-1")
    assert again.exit_code == 0 and "exists already" in again.stdout
    assert (
        cli(
            "grant",
            "carol",
            "--amount-usd",
            "1",
            "--id",
            "trial",
            "--expires",
            "2999-01-01T00:00:00Z",
        ).exit_code
        == 0
    )
    assert isinstance(reserve(redis_url, "carol", "j1", 1_500_000_000), ledger.Reserved)
    charge(redis_url, "carol", "j1", 1_250_000_000, "m")
    result = cli(
        "adjust", "carol", "--amount-usd=-0.25", "--id", "fix-1", "--note", "goodwill back"
    )
    assert result.exit_code == 0, result.output
    assert "adjusted -$0.25" in result.stdout
    retried = cli("adjust", "carol", "--amount-usd=-0.25", "--id", "fix-1")
    assert retried.exit_code == 0 and "exists already" in retried.stdout
    assert cli("adjust", "carol", "--amount-usd=0.5", "--id", "fix-1").exit_code == 1
    shown = json.loads(cli("history", "carol", "--json").stdout)
    rows = [(e["kind"], e["grant"], e["amount_nanousd"]) for e in shown["entries"]]
    assert rows == [
        ("grant", "topup-1", 2 * 10**9),
        ("grant", "trial", 10**9),
        ("draw", "trial", -(10**9)),  # priority 0 draws first
        ("draw", "topup-1", -250_000_000),
        ("adjust", "topup-1", -250_000_000),
    ]
    assert "j1" in shown["entries"][2]["id"]  # a draw names the job that spent it
    assert shown["balance_nanousd"] == 1_500_000_000
    state = json.loads(cli("show", "carol", "--json").stdout)
    assert state["credits_nanousd"] == shown["balance_nanousd"]
    table = cli("history", "carol")
    assert (
        table.exit_code == 0 and "balance $1.5" in table.stdout and "goodwill back" in table.stdout
    )


def test_membership_and_credit_options_are_checked(cli: Any) -> None:
    assert cli("member", "u", "--team", "a", "--none").exit_code == 2
    assert cli("member", "u", "--team", "nowhere").exit_code == 2
    assert cli("grant", "u", "--amount-usd", "1", "--id", "has space").exit_code == 2
    assert (
        cli("grant", "u", "--amount-usd", "1", "--id", "g", "--expires", "tomorrow").exit_code == 2
    )
    assert cli("adjust", "u", "--amount-usd", "0", "--id", "a").exit_code == 2
    result = cli("grant", "nobody", "--amount-usd", "1", "--id", "g")
    assert result.exit_code == 1 and "no budget record" in result.stderr


def test_set_with_model_gives_a_user_a_limit_on_one_model(cli: Any, redis_url: str) -> None:
    assert cli("set", "erin", "--limit-usd", "1").exit_code == 0
    result = cli("set", "erin", "--model", "gpt-4o", "--limit-usd", "0.000001")
    assert result.exit_code == 0, result.output
    assert "budget of 'erin' on 'gpt-4o' set" in result.stdout

    async def run(book: ledger.Ledger) -> Any:
        return await book.reserve(
            "erin", "j1", cost_nanousd=2000, tokens=0, lease_ms=60_000, holder="t", model="gpt-4o"
        )

    refused = on_ledger(redis_url, run)
    assert isinstance(refused, ledger.Refused) and refused.scope == "model:erin/gpt-4o"
    assert cli("set", "team:x", "--model", "m", "--limit-usd", "1").exit_code == 2


def test_run_shows_and_closes_a_run_and_the_hold_flows_back(cli: Any, redis_url: str) -> None:
    async def start(book: ledger.Ledger) -> None:
        await book.set_budget("runner", ledger.Budget(10**9, "daily"))
        await book.reserve(
            "runner",
            "run-cli-1",
            cost_nanousd=1000,
            tokens=0,
            lease_ms=60_000,
            holder="w1",
            run=ledger.RunRequest(id="t1", cap_nanousd=5000),
        )
        await book.settle(
            "runner", "run-cli-1", holder="w1", cost_nanousd=700, tokens=0, model="m", outcome=b"ok"
        )

    on_ledger(redis_url, start)
    shown = cli("run", "runner", "t1", "--json")
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.output)
    assert (view["state"], view["spent_nanousd"], view["hold_nanousd"]) == ("open", 700, 4300)
    assert view["scope"] == "run:runner/t1"
    closed = cli("close-run", "runner", "t1")
    assert closed.exit_code == 0, closed.output
    assert "run:runner/t1: done, spent $0.0000007 of $0.000005" in closed.output
    state = on_ledger(redis_url, lambda book: book.state("runner"))
    assert (state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd) == (700, 0)
    missing = cli("run", "runner", "nope")
    assert missing.exit_code == 1
    assert "user 'runner' has no run 'nope'" in missing.output


def test_set_rollover_is_kept_by_later_changes_and_shown(cli: Any) -> None:
    result = cli("set", "rolly", "--limit-usd", "1", "--rollover-cap-usd", "0.5")
    assert result.exit_code == 0, result.output
    assert cli("set", "rolly", "--rpm", "60").exit_code == 0  # keeps the rollover
    shown = json.loads(cli("show", "rolly", "--json").stdout)
    assert (shown["rollover_cap_nanousd"], shown["rpm"]) == (500_000_000, 60)
    assert "carried in" in cli("show", "rolly").output
    assert cli("set", "rolly", "--no-rollover").exit_code == 0
    assert json.loads(cli("show", "rolly", "--json").stdout)["rollover_cap_nanousd"] is None
    refused = cli("set", "rolly", "--period", "none", "--rollover-cap-usd", "1")
    assert refused.exit_code == 2
    assert "rollover needs a USD limit" in plain(refused.output)
