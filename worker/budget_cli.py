"""``budget-worker budget ...``: budgets of users, teams and organisations, membership,
prepaid credits and their history.

A SCOPE argument is ``team:ID`` or ``org:ID`` for a team or an organisation; anything
else is a user id exactly as jobs carry it (``--user`` reads even ``team:x`` as a user
id).

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
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker import ledger
from worker.budget_args import (
    AsJson,
    AsUser,
    RedisUrl,
    ScopeArg,
    fail,
    label,
    ledger_call,
    no_budget,
    parse_scope,
    parse_usd,
)
from worker.budget_runs import runs
from worker.budget_scopes import members
from worker.budget_view import (
    format_limit,
    format_usd,
    period_text,
    period_words,
    rates_text,
    state_json,
    state_table,
)
from worker.timestamps import rfc3339

__all__ = ["app", "format_usd", "parse_usd", "rfc3339", "state_json"]

app = typer.Typer(
    help="Budgets of users, teams and organisations; membership; credits and their history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class PeriodChoice(StrEnum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"
    yearly = "yearly"
    rolling = "rolling"
    none = "none"


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


def parse_thresholds(text: str) -> tuple[int, ...]:
    """``50,80,95,100`` (sorted, duplicates dropped), or ``none``; refuses anything
    else naming the option."""
    if text.strip().lower() == "none":
        return ()
    try:
        percents = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
        ledger.types.check_thresholds(percents)
    except (TypeError, ValueError):
        raise typer.BadParameter(
            "must be percents from 1 to 100 separated by commas (at most 10), or none",
            param_hint="'--thresholds'",
        ) from None
    return percents


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
    no_limit: bool = False,
    rollover_cap_nanousd: int | None = None,
    no_rollover: bool = False,
    thresholds: tuple[int, ...] | None = None,
) -> ledger.Budget:
    """The budget ``budget set`` writes: ``current`` with only what was given changed.

    A new budget (``current`` is None) needs a limit and takes the defaults: period
    daily, no rate limits. An existing one keeps every limit not named; ``no_rpm`` /
    ``no_tpm`` remove a rate limit. A rolling window is kept while the period stays
    rolling and dropped when it changes; rollover is kept unless ``no_rollover``.
    Raises ``typer.BadParameter`` naming the option."""
    _refuse_contradictions(period, window_s, rpm, tpm, no_rpm=no_rpm, no_tpm=no_tpm)
    if limit_nanousd is not None and no_limit:
        raise typer.BadParameter("cannot be given with --no-limit", param_hint="'--limit-usd'")
    if current is None:
        if limit_nanousd is None and not no_limit:
            raise typer.BadParameter(
                "is required for a scope that has no budget yet (or --no-limit)",
                param_hint="'--limit-usd'",
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
    try:
        return ledger.Budget(
            limit_nanousd=_kept(current.limit_nanousd, limit_nanousd, no_limit),
            period=new_period,
            window_s=window_s,
            rpm=_kept(current.rpm, rpm, no_rpm),
            tpm=_kept(current.tpm, tpm, no_tpm),
            rollover_cap_nanousd=_kept(
                current.rollover_cap_nanousd, rollover_cap_nanousd, no_rollover
            ),
            thresholds=current.thresholds if thresholds is None else thresholds,
        )
    except ValueError as exc:  # rollover without a USD limit or a period
        raise typer.BadParameter(str(exc), param_hint="'--rollover-cap-usd'") from None


def _kept(current: int | None, given: int | None, remove: bool) -> int | None:
    """A limit as ``set`` leaves it: removed, changed to what was given, or kept."""
    if remove:
        return None
    return current if given is None else given


@app.command("set")
def set_budget(
    scope_text: ScopeArg,
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
    no_limit: Annotated[
        bool,
        typer.Option("--no-limit", help="No USD limit: rate limits or credits only."),
    ] = False,
    thresholds: Annotated[
        str | None,
        typer.Option(
            "--thresholds",
            metavar="PCTS",
            help=(
                "Percents of the USD limit whose crossing is published once per period "
                "(budget.threshold_crossed), e.g. 50,80,95,100 (the default); 'none' for none."
            ),
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A user's own limit on this model (checked with the user's); give it whole.",
            show_default=False,
        ),
    ] = None,
    rollover_cap_usd: Annotated[
        int | None,
        typer.Option(
            "--rollover-cap-usd",
            parser=parse_usd,
            metavar="USD",
            help="Carry a period's unused allowance into the next one, at most this much.",
            show_default=False,
        ),
    ] = None,
    no_rollover: Annotated[
        bool, typer.Option("--no-rollover", help="Carry nothing into the next period.")
    ] = False,
    as_user: AsUser = False,
    redis_url: RedisUrl = None,
) -> None:
    """Create SCOPE's budget, or change what is given of it.

    A new budget needs --limit-usd (or --no-limit) and is daily with no rate limits
    unless told otherwise. An existing budget keeps every limit not named here (--rpm 60
    alone changes only the rpm); --no-rpm and --no-tpm remove a rate limit. What SCOPE
    spent in the current period is kept. A team must exist first (budget team).
    """
    scope = parse_scope(scope_text, as_user=as_user)
    period_: ledger.Period | None = None if period is None else period.value
    percents = None if thresholds is None else parse_thresholds(thresholds)
    # Refused before Redis is reached: wrong whatever the current budget is.
    _refuse_contradictions(period_, window_s, rpm, tpm, no_rpm=no_rpm, no_tpm=no_tpm)

    if model is not None and scope.kind != "user":
        raise typer.BadParameter("applies to a user only", param_hint="'--model'")

    async def run(book: ledger.Ledger) -> ledger.Budget:
        # Read, then write: two operators changing one user at the same instant may
        # lose one change (the last write wins); the ledger's own steps stay atomic.
        budget = merge_budget(
            None if model is not None else await book.get_budget(scope),
            limit_nanousd=limit_usd,
            period=period_,
            window_s=window_s,
            rpm=rpm,
            tpm=tpm,
            no_rpm=no_rpm,
            no_tpm=no_tpm,
            no_limit=no_limit,
            rollover_cap_nanousd=rollover_cap_usd,
            no_rollover=no_rollover,
            thresholds=percents,
        )
        try:
            if model is not None:
                await book.set_model_budget(scope.id, model, budget)
            else:
                await book.set_budget(scope, budget)
        except ValueError as exc:  # a team that was never created
            fail(str(exc))
        return budget

    budget = ledger_call(redis_url, run)
    words = f"{format_limit(budget.limit_nanousd)} {period_words(budget)}"
    on = f" on {model!r}" if model is not None else ""
    typer.echo(f"budget of {label(scope)}{on} set: {words}" + rates_text(budget))


@app.command("show")
def show(
    scope_text: ScopeArg,
    as_json: AsJson = False,
    as_user: AsUser = False,
    redis_url: RedisUrl = None,
) -> None:
    """SCOPE's limit, spend, reservations, credits, remaining money, per-model spend,
    membership and period end."""
    scope = parse_scope(scope_text, as_user=as_user)
    state = ledger_call(redis_url, lambda book: book.state(scope))
    if state is None:
        no_budget(scope)
    if as_json:
        typer.echo(json.dumps(state_json(state)))
        return
    Console().print(state_table(state))


class KindChoice(StrEnum):
    user = "user"
    team = "team"
    org = "org"


@app.command("list")
def list_budgets(
    as_json: AsJson = False,
    kind: Annotated[KindChoice, typer.Option("--kind", help="Which scopes to list.")] = (
        KindChoice.user
    ),
    redis_url: RedisUrl = None,
) -> None:
    """Every user (or team, or org) with a budget: limit, spent and remaining now."""

    async def run(book: ledger.Ledger) -> list[ledger.BudgetState]:
        names: list[str] = []
        cursor: str | None = None
        while True:
            page = await book.list_scopes(kind.value, cursor)
            names += page.items
            cursor = page.cursor
            if cursor is None:
                break
        scopes = [ledger.Scope(kind.value, name) for name in sorted(set(names))]
        states = await asyncio.gather(*(book.state(scope) for scope in scopes))
        # A budget deleted between the two reads is simply not listed.
        return [state for state in states if state is not None]

    states = ledger_call(redis_url, run)
    if as_json:
        key = {"user": "users", "team": "teams", "org": "orgs"}[kind.value]
        typer.echo(json.dumps({key: [state_json(state) for state in states]}))
        return
    if not states:
        typer.echo("no budgets")
        return
    table = Table(kind.value, "limit", "spent", "remaining", "period", "period end")
    for state in states:
        snapshot = state.snapshot
        table.add_row(
            Text(state.user_id),
            format_limit(state.budget.limit_nanousd),
            format_usd(snapshot.spent_nanousd),
            format_usd(snapshot.remaining_nanousd),
            period_text(state.budget),
            rfc3339(snapshot.period_end_ms) or "-",
        )
    Console().print(table)


@app.command("reset")
def reset(scope_text: ScopeArg, as_user: AsUser = False, redis_url: RedisUrl = None) -> None:
    """Zero SCOPE's spend in the current period (calls in flight keep their reservations;
    credits already drawn stay drawn)."""
    scope = parse_scope(scope_text, as_user=as_user)
    if not ledger_call(redis_url, lambda book: _or_none(book.reset(scope))):
        no_budget(scope)
    typer.echo(f"spend of {label(scope)} in the current period reset to $0")


@app.command("delete")
def delete(scope_text: ScopeArg, as_user: AsUser = False, redis_url: RedisUrl = None) -> None:
    """Remove SCOPE's limits and rate limits.

    A user's next jobs are refused no_budget (or get BW_DEFAULT_BUDGET_USD where it is
    set) unless its team or organisation has money; the current period's spend,
    credits and reservations in flight stay and expire on their own.
    """
    scope = parse_scope(scope_text, as_user=as_user)
    if not ledger_call(redis_url, lambda book: _or_none(book.delete(scope))):
        no_budget(scope)
    typer.echo(f"budget of {label(scope)} deleted")


async def _or_none(step: Awaitable[bool]) -> bool:
    """A step on a team that was never created answers like a scope without budget."""
    try:
        return await step
    except ValueError:
        return False


# team, member, grant, adjust, history: worker/budget_scopes.py
app.registered_commands += members.registered_commands
app.registered_commands += runs.registered_commands
