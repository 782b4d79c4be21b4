"""``budget-worker budget team|member|grant|adjust|history``: who belongs where, and
prepaid credits with the entries that account for every nano-USD of them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console

from worker import ledger
from worker.budget_args import (
    AsJson,
    AsUser,
    RedisUrl,
    ScopeArg,
    UserArg,
    fail,
    label,
    ledger_call,
    parse_scope,
    parse_usd,
)
from worker.budget_view import format_usd, history_json, history_table
from worker.timestamps import epoch_ms

members = typer.Typer()
"""The commands of this module; ``worker.budget_cli`` adds them to its own."""


# --- membership -------------------------------------------------------------------------


@members.command("team")
def team(
    team_id: Annotated[str, typer.Argument(metavar="TEAM", help="The team id.")],
    org: Annotated[
        str, typer.Option("--org", help="The organisation the team belongs to (fixed).")
    ],
    redis_url: RedisUrl = None,
) -> None:
    """Create TEAM in organisation ORG (idempotent). Its budget is set with
    ``budget set team:TEAM``; members join with ``budget member``."""

    async def run(book: ledger.Ledger) -> None:
        try:
            await book.create_team(team_id, org)
        except ValueError as exc:
            fail(str(exc), code=2)

    ledger_call(redis_url, run)
    typer.echo(f"team:{team_id} is in org:{org}")


@members.command("member")
def member(
    user: UserArg,
    team_id: Annotated[
        str | None, typer.Option("--team", help="Put USER in this team.", show_default=False)
    ] = None,
    org: Annotated[
        str | None,
        typer.Option(
            "--org", help="Put USER in this organisation, in no team.", show_default=False
        ),
    ] = None,
    none: Annotated[bool, typer.Option("--none", help="Take USER out of any team and org.")] = (
        False
    ),
    redis_url: RedisUrl = None,
) -> None:
    """Set USER's team (and so its organisation), or organisation, or neither.

    Jobs in flight settle into the scopes they were reserved against. Moving to another
    organisation moves USER's limits, current spend and credits with it, and waits for
    USER's jobs in flight to end (exit 1 until they have)."""
    if sum((team_id is not None, org is not None, none)) != 1:
        raise typer.BadParameter("give exactly one of --team, --org, --none")

    async def run(book: ledger.Ledger) -> None:
        try:
            await book.set_membership(user, team=team_id, org=org)
        except ValueError as exc:
            fail(str(exc), code=2)
        except ledger.JobsInFlight as exc:
            fail(str(exc))

    ledger_call(redis_url, run)
    where = f"team:{team_id}" if team_id else f"org:{org}" if org else "no team or org"
    typer.echo(f"user {user!r} is in {where}")


# --- credits ----------------------------------------------------------------------------


def parse_signed_usd(text: str) -> int:
    """Like ``parse_usd``, but an adjustment may be negative (never zero)."""
    stripped = text.strip()
    negative = stripped.startswith("-")
    amount = parse_usd(stripped[1:] if negative else stripped)
    if amount == 0:
        raise typer.BadParameter("an adjustment of $0 changes nothing")
    return -amount if negative else amount


def parse_time_ms(text: str) -> int:
    """RFC 3339 (``2026-01-01T00:00:00Z``) to ms since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no time zone (add Z for UTC)")
    return epoch_ms(moment)


IdOpt = Annotated[
    str,
    typer.Option("--id", help="An id of your choosing: the same id again changes nothing."),
]


@members.command("grant")
def grant(
    scope_text: ScopeArg,
    amount: Annotated[
        int,
        typer.Option("--amount-usd", parser=parse_usd, metavar="USD", help="Credit, in USD."),
    ],
    grant_id: IdOpt,
    priority: Annotated[
        int, typer.Option("--priority", help="Lower draws first.", min=-(10**6), max=10**6)
    ] = 0,
    effective: Annotated[
        int | None,
        typer.Option("--effective", parser=parse_time_ms, metavar="TIME", help="Usable from."),
    ] = None,
    expires: Annotated[
        int | None,
        typer.Option(
            "--expires", parser=parse_time_ms, metavar="TIME", help="Gone at (default: never)."
        ),
    ] = None,
    as_user: AsUser = False,
    redis_url: RedisUrl = None,
) -> None:
    """Add prepaid credit to SCOPE (a top-up is a new grant). Spend beyond the period's
    allowance draws from grants by priority, then earliest expiry."""
    scope = parse_scope(scope_text, as_user=as_user)
    try:
        wanted = ledger.Grant(
            grant_id, amount, priority=priority, effective_ms=effective or 0, expires_ms=expires
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def run(book: ledger.Ledger) -> tuple[bool, ledger.Grant]:
        try:
            return await book.grant(scope, wanted)
        except ValueError as exc:
            fail(str(exc))

    created, stored = ledger_call(redis_url, run)
    if created:
        typer.echo(f"granted {format_usd(stored.amount_nanousd)} to {label(scope)} ({grant_id})")
    else:
        left = format_usd(stored.remaining_nanousd or 0)
        typer.echo(f"grant {grant_id} of {label(scope)} exists already ({left} left); unchanged")


@members.command("adjust")
def adjust(
    scope_text: ScopeArg,
    amount: Annotated[
        int,
        typer.Option(
            "--amount-usd",
            parser=parse_signed_usd,
            metavar="USD",
            help="Credit to add, or with a minus sign to take (e.g. --amount-usd=-0.5).",
        ),
    ],
    adjustment_id: IdOpt,
    note: Annotated[str, typer.Option("--note", help="Why, kept in the history.")] = "",
    as_user: AsUser = False,
    redis_url: RedisUrl = None,
) -> None:
    """Change SCOPE's credits by hand, once per id."""
    scope = parse_scope(scope_text, as_user=as_user)

    async def run(book: ledger.Ledger) -> ledger.Adjustment:
        try:
            return await book.adjust(scope, adjustment_id, amount, note)
        except ValueError as exc:
            fail(str(exc))

    done = ledger_call(redis_url, run)
    applied = done.applied_nanousd
    sign = "-" if applied < 0 else "+"
    if done.created:
        typer.echo(f"credits of {label(scope)} adjusted {sign}{format_usd(abs(applied))}")
        return
    if done.amount_nanousd not in (None, amount):
        fail(f"adjustment {adjustment_id} of {label(scope)} exists with another amount")
    typer.echo(
        f"adjustment {adjustment_id} of {label(scope)} exists already "
        f"({sign}{format_usd(abs(applied))}); unchanged"
    )


@members.command("history")
def history(
    scope_text: ScopeArg,
    as_json: AsJson = False,
    as_user: AsUser = False,
    redis_url: RedisUrl = None,
) -> None:
    """Every credit entry of SCOPE, oldest first: grants, draws (which job, which grant),
    expiries and adjustments. The balance is their sum."""
    scope = parse_scope(scope_text, as_user=as_user)

    async def run(book: ledger.Ledger) -> list[ledger.Entry]:
        found: list[ledger.Entry] = []
        try:
            while True:
                page = await book.history(scope, len(found), 1000)
                found += page
                if len(page) < 1000:
                    return found
        except ValueError as exc:
            fail(str(exc))

    entries = ledger_call(redis_url, run)
    if as_json:
        typer.echo(json.dumps(history_json(scope, entries)))
        return
    Console().print(history_table(scope, entries))
    typer.echo(f"balance {format_usd(sum(entry.amount_nanousd for entry in entries))}")
