"""``budget-worker budget ...``: create, change, show, list, reset and delete budgets.

Amounts are typed in USD as decimal text and stored as exact integers of nano-USD
(``0.0002`` is 200,000 nano-USD); an amount finer than one nano-USD is refused rather
than rounded, so what an operator types is what the ledger enforces. ``set`` changes
only what it is given: an operator raising a limit must not silently lose the user's
rate limits or period. Exit codes: 0 done, 1 the user has no budget or Redis could not
be reached, 2 a bad option or settings, or credentials Redis refused (the message
names which).

Each command is synchronous to the shell and runs its ledger calls with
``asyncio.run``; the Redis URL comes from ``--redis-url``, else ``BW_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker import ledger
from worker.errors import ConfigError, LedgerError, LedgerUnavailable
from worker.settings import load_settings

T = TypeVar("T")

app = typer.Typer(
    help="Create, change, show, list, reset and delete users' budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_NANO = Decimal(1_000_000_000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PeriodChoice(StrEnum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"
    yearly = "yearly"
    rolling = "rolling"
    none = "none"


def parse_usd(text: str) -> int:
    """USD as decimal text to nano-USD, exactly; ``typer.BadParameter`` when it is not
    a number, negative, finer than one nano-USD or beyond the ledger's limit."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not a decimal number of USD") from None
    if not amount.is_finite():
        raise typer.BadParameter(f"{text!r} is not a finite amount")
    if amount < 0:
        raise typer.BadParameter(f"{text} is negative; a limit is at least 0")
    nanousd = amount * _NANO
    if nanousd != nanousd.to_integral_value():
        raise typer.BadParameter(f"{text} is finer than 1 nano-USD (0.000000001 USD)")
    if nanousd > ledger.MAX_AMOUNT_NANOUSD:
        raise typer.BadParameter(
            f"{text} is over the largest limit, {format_usd(ledger.MAX_AMOUNT_NANOUSD)}"
        )
    return int(nanousd)


def format_usd(nanousd: int) -> str:
    """Nano-USD as exact decimal USD text: 200000 -> ``$0.0002``."""
    usd = (Decimal(nanousd) / _NANO).normalize()
    return f"${usd:f}"


def format_limit(nanousd: int | None) -> str:
    """A USD limit, or ``no USD limit`` for a scope that caps rates or credits only."""
    return "no USD limit" if nanousd is None else format_usd(nanousd)


def rfc3339(ms: int | None) -> str | None:
    """A time in ms since the epoch as RFC 3339 UTC (``2025-01-02T00:00:00Z``)."""
    if ms is None:
        return None
    moment = _EPOCH + timedelta(milliseconds=ms)
    timespec = "seconds" if ms % 1000 == 0 else "milliseconds"
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


# --- options ----------------------------------------------------------------------------

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="The ledger's Redis URL (default: BW_REDIS_URL, else redis://localhost:6379/0).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
UserArg = Annotated[str, typer.Argument(help="The user id, as jobs carry it.", show_default=False)]


def _ledger_call(redis_url: str | None, call: Callable[[ledger.Ledger], Awaitable[T]]) -> T:
    """Run ``call`` against a ledger for the configured Redis. Exit 2 on bad settings or
    credentials Redis refuses (retrying cannot help), 1 when Redis is unreachable."""
    try:
        settings = load_settings() if redis_url is None else load_settings(redis_url=redis_url)
    except ConfigError as exc:
        _fail(str(exc), code=2)

    async def main() -> T:
        book = ledger.Ledger.from_url(
            settings.redis_url,
            cluster=settings.redis_cluster,
            max_connections=16,
            timeout_s=settings.redis_timeout_s,
        )
        try:
            # A wrong password is told apart from an outage here, as the worker does.
            await book.check_access()
            return await call(book)
        finally:
            await book.close()

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        _fail(str(exc), code=2)
    except (LedgerUnavailable, LedgerError) as exc:
        _fail(str(exc))


def _fail(message: str, *, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _no_budget(user: str) -> NoReturn:
    _fail(f"user {user!r} has no budget")


# --- commands ---------------------------------------------------------------------------


def _rate_parser(remove: str) -> Callable[[str], int]:
    """An RPM/TPM limit: a whole number >= 1. Zero is refused rather than read as "no
    limit" (or as "block everything"); removing a limit is said with ``remove``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a whole number") from None
        if value < 1:
            raise typer.BadParameter(f"{value} is not a limit (at least 1); {remove} removes it")
        if value > ledger.MAX_RATE:
            raise typer.BadParameter(f"{value} is over the largest limit, {ledger.MAX_RATE}")
        return value

    return parse


def _refuse_contradictions(
    period: ledger.Period | None,
    window_s: int | None,
    rpm: int | None,
    tpm: int | None,
    *,
    no_rpm: bool,
    no_tpm: bool,
) -> None:
    """Options that contradict each other whatever the current budget is."""
    if rpm is not None and no_rpm:
        raise typer.BadParameter("cannot be given with --no-rpm", param_hint="'--rpm'")
    if tpm is not None and no_tpm:
        raise typer.BadParameter("cannot be given with --no-tpm", param_hint="'--tpm'")
    if period is not None and period != "rolling" and window_s is not None:
        raise typer.BadParameter(
            f"applies to --period rolling only, not {period}", param_hint="'--window-s'"
        )


def merge_budget(
    current: ledger.Budget | None,
    *,
    limit_nanousd: int | None = None,
    period: ledger.Period | None = None,
    window_s: int | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    no_rpm: bool = False,
    no_tpm: bool = False,
) -> ledger.Budget:
    """The budget ``budget set`` writes: ``current`` with only what was given changed.

    A new budget (``current`` is None) needs a limit and takes the defaults: period
    daily, no rate limits. An existing one keeps every limit not named; ``no_rpm`` /
    ``no_tpm`` remove a rate limit. A rolling window is kept while the period stays
    rolling and dropped when it changes. Raises ``typer.BadParameter`` naming the
    option."""
    _refuse_contradictions(period, window_s, rpm, tpm, no_rpm=no_rpm, no_tpm=no_tpm)
    if current is None:
        if limit_nanousd is None:
            raise typer.BadParameter(
                "is required for a user who has no budget yet", param_hint="'--limit-usd'"
            )
        current = ledger.Budget(limit_nanousd=limit_nanousd)
    new_period = period or current.period
    if window_s is not None and new_period != "rolling":
        raise typer.BadParameter(
            f"applies to --period rolling only, not {new_period}", param_hint="'--window-s'"
        )
    if window_s is None and new_period == "rolling":
        window_s = current.window_s  # None unless the budget was rolling already
        if window_s is None:
            raise typer.BadParameter(
                "must be given with --period rolling", param_hint="'--window-s'"
            )
    return ledger.Budget(
        limit_nanousd=current.limit_nanousd if limit_nanousd is None else limit_nanousd,
        period=new_period,
        window_s=window_s,
        rpm=None if no_rpm else (current.rpm if rpm is None else rpm),
        tpm=None if no_tpm else (current.tpm if tpm is None else tpm),
    )


@app.command("set")
def set_budget(
    user: UserArg,
    limit_usd: Annotated[
        int | None,
        typer.Option(
            "--limit-usd",
            parser=parse_usd,
            metavar="USD",
            help="The spend cap per period, in USD (e.g. 0.0002). Required for a new budget.",
            show_default=False,
        ),
    ] = None,
    period: Annotated[
        PeriodChoice | None,
        typer.Option(
            "--period",
            help=(
                "Calendar period in UTC, a rolling window (--window-s), or none (no reset). "
                "New budgets: daily; an existing budget keeps its own."
            ),
            show_default=False,
        ),
    ] = None,
    window_s: Annotated[
        int | None,
        typer.Option(
            "--window-s", min=1, max=10**9, help="Length of a rolling window, in seconds."
        ),
    ] = None,
    rpm: Annotated[
        int | None,
        typer.Option(
            "--rpm",
            parser=_rate_parser("--no-rpm"),
            metavar="N",
            help="Requests per minute (at least 1).",
            show_default=False,
        ),
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(
            "--tpm",
            parser=_rate_parser("--no-tpm"),
            metavar="N",
            help="Tokens per minute (at least 1).",
            show_default=False,
        ),
    ] = None,
    no_rpm: Annotated[
        bool, typer.Option("--no-rpm", help="Remove the requests-per-minute limit.")
    ] = False,
    no_tpm: Annotated[
        bool, typer.Option("--no-tpm", help="Remove the tokens-per-minute limit.")
    ] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Create USER's budget, or change what is given of it.

    A new budget needs --limit-usd and is daily with no rate limits unless told
    otherwise. An existing budget keeps every limit not named here (--rpm 60 alone
    changes only the rpm); --no-rpm and --no-tpm remove a rate limit. What USER spent
    in the current period is kept.
    """
    period_: ledger.Period | None = None if period is None else period.value
    # Refused before Redis is reached: wrong whatever the current budget is.
    _refuse_contradictions(period_, window_s, rpm, tpm, no_rpm=no_rpm, no_tpm=no_tpm)

    async def run(book: ledger.Ledger) -> ledger.Budget:
        # Read, then write: two operators changing one user at the same instant may
        # lose one change (the last write wins); the ledger's own steps stay atomic.
        budget = merge_budget(
            await book.get_budget(user),
            limit_nanousd=limit_usd,
            period=period_,
            window_s=window_s,
            rpm=rpm,
            tpm=tpm,
            no_rpm=no_rpm,
            no_tpm=no_tpm,
        )
        await book.set_budget(user, budget)
        return budget

    budget = _ledger_call(redis_url, run)
    typer.echo(
        f"budget of {user!r} set: {format_limit(budget.limit_nanousd)} {_period_words(budget)}"
        + _rates(budget)
    )


@app.command("show")
def show(user: UserArg, as_json: AsJson = False, redis_url: RedisUrl = None) -> None:
    """USER's limit, spend, reservations, remaining money, per-model spend and period end."""
    state = _ledger_call(redis_url, lambda book: book.state(user))
    if state is None:
        _no_budget(user)
    if as_json:
        typer.echo(json.dumps(state_json(state)))
        return
    Console().print(_state_table(state))


@app.command("list")
def list_budgets(as_json: AsJson = False, redis_url: RedisUrl = None) -> None:
    """Every user with a budget: limit, spent and remaining in the current period."""

    async def run(book: ledger.Ledger) -> list[ledger.BudgetState]:
        users = await book.list_users()
        states = await asyncio.gather(*(book.state(user) for user in users))
        # A budget deleted between the two reads is simply not listed.
        return [state for state in states if state is not None]

    states = _ledger_call(redis_url, run)
    if as_json:
        typer.echo(json.dumps({"users": [state_json(state) for state in states]}))
        return
    if not states:
        typer.echo("no budgets")
        return
    table = Table("user", "limit", "spent", "remaining", "period", "period end")
    for state in states:
        snapshot = state.snapshot
        table.add_row(
            Text(state.user_id),
            format_usd(snapshot.limit_nanousd),
            format_usd(snapshot.spent_nanousd),
            format_usd(snapshot.remaining_nanousd),
            _period(state.budget),
            rfc3339(snapshot.period_end_ms) or "-",
        )
    Console().print(table)


@app.command("reset")
def reset(user: UserArg, redis_url: RedisUrl = None) -> None:
    """Zero USER's spend in the current period (calls in flight keep their reservations)."""
    if not _ledger_call(redis_url, lambda book: book.reset(user)):
        _no_budget(user)
    typer.echo(f"spend of {user!r} in the current period reset to $0")


@app.command("delete")
def delete(user: UserArg, redis_url: RedisUrl = None) -> None:
    """Remove USER's budget and rate limits.

    USER's next jobs are refused no_budget (or get BW_DEFAULT_BUDGET_USD where it is
    set); the current period's spend and reservations in flight expire on their own.
    """
    if not _ledger_call(redis_url, lambda book: book.delete(user)):
        _no_budget(user)
    typer.echo(f"budget of {user!r} deleted")


# --- output -----------------------------------------------------------------------------


def state_json(state: ledger.BudgetState) -> dict[str, Any]:
    """``budget show --json``: money as integers of nano-USD, times in RFC 3339."""
    snapshot, budget = state.snapshot, state.budget
    return {
        "user_id": state.user_id,
        "limit_nanousd": snapshot.limit_nanousd,
        "spent_nanousd": snapshot.spent_nanousd,
        "reserved_nanousd": snapshot.reserved_nanousd,
        "remaining_nanousd": snapshot.remaining_nanousd,
        "period": budget.period,
        "window_s": budget.window_s,
        "period_end": rfc3339(snapshot.period_end_ms),
        "model_spend_nanousd": dict(sorted(state.model_spend_nanousd.items())),
        "rpm": budget.rpm,
        "tpm": budget.tpm,
    }


def _period_words(budget: ledger.Budget) -> str:
    return f"per {budget.window_s} s window" if budget.period == "rolling" else budget.period


def _period(budget: ledger.Budget) -> str:
    if budget.period == "rolling":
        return f"rolling {budget.window_s} s"
    return budget.period


def _rates(budget: ledger.Budget) -> str:
    rates = [f"{budget.rpm} rpm"] if budget.rpm is not None else []
    if budget.tpm is not None:
        rates.append(f"{budget.tpm} tpm")
    return f", {', '.join(rates)}" if rates else ""


def _state_table(state: ledger.BudgetState) -> Table:
    snapshot, budget = state.snapshot, state.budget
    table = Table(title=Text(f"budget of {state.user_id}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("limit", format_usd(snapshot.limit_nanousd)),
        ("spent", format_usd(snapshot.spent_nanousd)),
        ("reserved", format_usd(snapshot.reserved_nanousd)),
        ("remaining", format_usd(snapshot.remaining_nanousd)),
        ("period", _period(budget)),
        ("period end", rfc3339(snapshot.period_end_ms) or "never"),
        ("rpm", str(budget.rpm) if budget.rpm is not None else "-"),
        ("tpm", str(budget.tpm) if budget.tpm is not None else "-"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    for model, spent in sorted(state.model_spend_nanousd.items()):
        table.add_row(Text(f"spent on {model}"), format_usd(spent))
    return table
