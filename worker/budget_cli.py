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
    help="Budgets of users, teams and organisations; membership; credits and their history.",
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
ScopeArg = Annotated[
    str,
    typer.Argument(
        metavar="SCOPE",
        help="team:ID, org:ID, or a user id as jobs carry it.",
        show_default=False,
    ),
]
AsUser = Annotated[
    bool,
    typer.Option("--user", help="Read SCOPE as a user id even if it starts with team: or org:."),
]


def parse_scope(text: str, *, as_user: bool = False) -> ledger.Scope:
    """``team:ID`` and ``org:ID`` name a team and an organisation; anything else (or
    anything with ``as_user``) is a user id, verbatim: ``user:42`` is the user
    ``user:42``, as before scopes existed."""
    kind, sep, rest = text.partition(":")
    if not as_user and sep and rest and kind in ("team", "org"):
        return ledger.Scope(kind, rest)  # type: ignore[arg-type]  # one of the two kinds
    if not text:
        raise typer.BadParameter("is empty", param_hint="'SCOPE'")
    return ledger.Scope("user", text)


def label(scope: ledger.Scope) -> str:
    """How messages name a scope: a user as before (``'alice'``), others ``team:eng``."""
    return repr(scope.id) if scope.kind == "user" else str(scope)


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


def _no_budget(scope: ledger.Scope) -> NoReturn:
    _fail(f"user {scope.id!r} has no budget" if scope.kind == "user" else f"{scope} has no budget")


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
    no_limit: bool = False,
) -> ledger.Budget:
    """The budget ``budget set`` writes: ``current`` with only what was given changed.

    A new budget (``current`` is None) needs a limit and takes the defaults: period
    daily, no rate limits. An existing one keeps every limit not named; ``no_rpm`` /
    ``no_tpm`` remove a rate limit. A rolling window is kept while the period stays
    rolling and dropped when it changes. Raises ``typer.BadParameter`` naming the
    option."""
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
    return ledger.Budget(
        limit_nanousd=None
        if no_limit
        else (current.limit_nanousd if limit_nanousd is None else limit_nanousd),
        period=new_period,
        window_s=window_s,
        rpm=None if no_rpm else (current.rpm if rpm is None else rpm),
        tpm=None if no_tpm else (current.tpm if tpm is None else tpm),
    )


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
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="A user's own limit on this model (checked with the user's); give it whole.",
            show_default=False,
        ),
    ] = None,
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
        )
        try:
            if model is not None:
                await book.set_model_budget(scope.id, model, budget)
            else:
                await book.set_budget(scope, budget)
        except ValueError as exc:  # a team that was never created
            _fail(str(exc))
        return budget

    budget = _ledger_call(redis_url, run)
    words = f"{format_limit(budget.limit_nanousd)} {_period_words(budget)}"
    on = f" on {model!r}" if model is not None else ""
    typer.echo(f"budget of {label(scope)}{on} set: {words}" + _rates(budget))


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
    state = _ledger_call(redis_url, lambda book: book.state(scope))
    if state is None:
        _no_budget(scope)
    if as_json:
        typer.echo(json.dumps(state_json(state)))
        return
    Console().print(_state_table(state))


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

    states = _ledger_call(redis_url, run)
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
            _period(state.budget),
            rfc3339(snapshot.period_end_ms) or "-",
        )
    Console().print(table)


@app.command("reset")
def reset(scope_text: ScopeArg, as_user: AsUser = False, redis_url: RedisUrl = None) -> None:
    """Zero SCOPE's spend in the current period (calls in flight keep their reservations;
    credits already drawn stay drawn)."""
    scope = parse_scope(scope_text, as_user=as_user)
    if not _ledger_call(redis_url, lambda book: _or_none(book.reset(scope))):
        _no_budget(scope)
    typer.echo(f"spend of {label(scope)} in the current period reset to $0")


@app.command("delete")
def delete(scope_text: ScopeArg, as_user: AsUser = False, redis_url: RedisUrl = None) -> None:
    """Remove SCOPE's limits and rate limits.

    A user's next jobs are refused no_budget (or get BW_DEFAULT_BUDGET_USD where it is
    set) unless its team or organisation has money; the current period's spend,
    credits and reservations in flight stay and expire on their own.
    """
    scope = parse_scope(scope_text, as_user=as_user)
    if not _ledger_call(redis_url, lambda book: _or_none(book.delete(scope))):
        _no_budget(scope)
    typer.echo(f"budget of {label(scope)} deleted")


async def _or_none(step: Awaitable[bool]) -> bool:
    """A step on a team that was never created answers like a scope without budget."""
    try:
        return await step
    except ValueError:
        return False


# --- membership -------------------------------------------------------------------------


@app.command("team")
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
            _fail(str(exc), code=2)

    _ledger_call(redis_url, run)
    typer.echo(f"team:{team_id} is in org:{org}")


@app.command("member")
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
            _fail(str(exc), code=2)
        except ledger.JobsInFlight as exc:
            _fail(str(exc))

    _ledger_call(redis_url, run)
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
    return int((moment - _EPOCH) / timedelta(milliseconds=1))


IdOpt = Annotated[
    str,
    typer.Option("--id", help="An id of your choosing: the same id again changes nothing."),
]


@app.command("grant")
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
            _fail(str(exc))

    created, stored = _ledger_call(redis_url, run)
    if created:
        typer.echo(f"granted {format_usd(stored.amount_nanousd)} to {label(scope)} ({grant_id})")
    else:
        left = format_usd(stored.remaining_nanousd or 0)
        typer.echo(f"grant {grant_id} of {label(scope)} exists already ({left} left); unchanged")


@app.command("adjust")
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

    async def run(book: ledger.Ledger) -> int:
        try:
            return await book.adjust(scope, adjustment_id, amount, note)
        except ValueError as exc:
            _fail(str(exc))

    applied = _ledger_call(redis_url, run)
    sign = "-" if applied < 0 else "+"
    typer.echo(f"credits of {label(scope)} adjusted {sign}{format_usd(abs(applied))}")


@app.command("history")
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
            _fail(str(exc))

    entries = _ledger_call(redis_url, run)
    balance = sum(entry.amount_nanousd for entry in entries)
    if as_json:
        rows = [
            {
                "id": e.id,
                "kind": e.kind,
                "amount_nanousd": e.amount_nanousd,
                "grant": e.grant,
                "at": rfc3339(e.at_ms),
                "note": e.note,
            }
            for e in entries
        ]
        typer.echo(json.dumps({"scope": str(scope), "entries": rows, "balance_nanousd": balance}))
        return
    table = Table("at", "kind", "amount", "grant", "id", "note", title=Text(f"credits of {scope}"))
    for e in entries:
        sign = "-" if e.amount_nanousd < 0 else "+"
        table.add_row(
            rfc3339(e.at_ms) or "",
            e.kind,
            f"{sign}{format_usd(abs(e.amount_nanousd))}",
            Text(e.grant),
            Text(e.id),
            Text(e.note),
        )
    Console().print(table)
    typer.echo(f"balance {format_usd(balance)}")


# --- output -----------------------------------------------------------------------------


def state_json(state: ledger.BudgetState) -> dict[str, Any]:
    """``budget show --json``: money as integers of nano-USD, times in RFC 3339."""
    snapshot, budget = state.snapshot, state.budget
    return {
        "scope": str(state.scope),
        "user_id": state.user_id,
        "limit_nanousd": budget.limit_nanousd,
        "spent_nanousd": snapshot.spent_nanousd,
        "reserved_nanousd": snapshot.reserved_nanousd,
        "remaining_nanousd": snapshot.remaining_nanousd,
        "period": budget.period,
        "window_s": budget.window_s,
        "period_end": rfc3339(snapshot.period_end_ms),
        "model_spend_nanousd": dict(sorted(state.model_spend_nanousd.items())),
        "rpm": budget.rpm,
        "tpm": budget.tpm,
        "credits_nanousd": state.credits_nanousd,
        "drawn_nanousd": state.drawn_nanousd,
        "team": state.team,
        "org": state.org,
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
    name = state.user_id if state.scope.kind == "user" else str(state.scope)
    table = Table(title=Text(f"budget of {name}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("limit", format_limit(budget.limit_nanousd)),
        ("spent", format_usd(snapshot.spent_nanousd)),
        ("reserved", format_usd(snapshot.reserved_nanousd)),
        ("remaining", format_usd(snapshot.remaining_nanousd)),
        ("period", _period(budget)),
        ("period end", rfc3339(snapshot.period_end_ms) or "never"),
        ("rpm", str(budget.rpm) if budget.rpm is not None else "-"),
        ("tpm", str(budget.tpm) if budget.tpm is not None else "-"),
        ("credits", format_usd(state.credits_nanousd)),
        ("drawn from credits", format_usd(state.drawn_nanousd)),
        ("team", state.team or "-"),
        ("org", state.org or "-"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    for model, spent in sorted(state.model_spend_nanousd.items()):
        table.add_row(Text(f"spent on {model}"), format_usd(spent))
    return table
