"""What the ``budget-worker budget`` commands share: the SCOPE argument, exact USD
amounts, the common options, and one ledger call per command with its exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, NoReturn, TypeVar

import typer

from schemas.money import nanousd_to_decimal, to_nanousd
from worker import ledger
from worker.budget_view import format_usd
from worker.errors import ConfigError, LedgerError, LedgerUnavailable
from worker.settings import load_settings

T = TypeVar("T")


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
    if amount > nanousd_to_decimal(ledger.MAX_AMOUNT_NANOUSD):
        raise typer.BadParameter(
            f"{text} is over the largest limit, {format_usd(ledger.MAX_AMOUNT_NANOUSD)}"
        )
    nanousd = to_nanousd(amount, round_up=False)
    if nanousd_to_decimal(nanousd) != amount:
        raise typer.BadParameter(f"{text} is finer than 1 nano-USD (0.000000001 USD)")
    return nanousd


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


def ledger_call(redis_url: str | None, call: Callable[[ledger.Ledger], Awaitable[T]]) -> T:
    """Run ``call`` against a ledger for the configured Redis. Exit 2 on bad settings or
    credentials Redis refuses (retrying cannot help), 1 when Redis is unreachable."""
    try:
        settings = load_settings() if redis_url is None else load_settings(redis_url=redis_url)
    except ConfigError as exc:
        fail(str(exc), code=2)

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
        fail(str(exc), code=2)
    except (LedgerUnavailable, LedgerError) as exc:
        fail(str(exc))


def fail(message: str, *, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def no_budget(scope: ledger.Scope) -> NoReturn:
    fail(f"user {scope.id!r} has no budget" if scope.kind == "user" else f"{scope} has no budget")
