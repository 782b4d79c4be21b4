"""``budget-worker reconcile``: the ledger against the charged events on the results
topic (``worker.reconcile``), reported per scope, and with ``--fix`` corrected."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from worker import ledger, reconcile
from worker.budget_args import RedisUrl, fail, ledger_call
from worker.budget_view import format_usd
from worker.errors import ConfigError, KafkaUnavailable
from worker.logs import quiet_kafka_client
from worker.settings import load_settings


def reconcile_command(
    users: Annotated[
        list[str] | None,
        typer.Option("--user", help="Only this user (repeatable; default: every user)."),
    ] = None,
    topics: Annotated[
        list[str] | None,
        typer.Option("--topic", help="A topic of events (repeatable; default BW_RESULTS_TOPIC)."),
    ] = None,
    fix: Annotated[
        bool, typer.Option("--fix", help="Write each user's drift back (idempotent).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    idle_s: Annotated[
        float, typer.Option("--idle-s", min=0.1, help="Stop reading after this quiet time.")
    ] = 2.0,
    kafka_bootstrap: Annotated[
        str | None, typer.Option("--kafka-bootstrap", help="Default: BW_KAFKA_BOOTSTRAP.")
    ] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Compare each scope's spend this period with the charged events on the results
    topic (read from the start). Exit 0: no drift (or all of it corrected with --fix);
    1: drift found, or Redis or Kafka unreachable; 2: bad settings."""
    try:
        overrides = {} if kafka_bootstrap is None else {"kafka_bootstrap": kafka_bootstrap}
        settings = load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc), code=2)
    names = topics or [settings.results_topic]
    try:
        with quiet_kafka_client():
            charges = asyncio.run(reconcile.read_charges(settings, names, idle_s))
    except KafkaUnavailable as exc:
        fail(str(exc))

    async def run(book: ledger.Ledger) -> tuple[list[reconcile.Drift], dict[str, str | None]]:
        drifts = await reconcile.compare(book, charges, users or ())
        fixes = {str(d.scope): await reconcile.correct(book, d) for d in drifts} if fix else {}
        return drifts, fixes

    drifts, fixes = ledger_call(redis_url, run)
    if as_json:
        typer.echo(json.dumps(reconcile.report_json(drifts, fixes)))
    else:
        Console().print(_table(drifts, fixes))
    # With --fix, a team's or organisation's drift is corrected through its members.
    left = [d for d in drifts if d.drift_nanousd and not (fix and d.scope.kind != "user")]
    if any(not fixes.get(str(d.scope)) for d in left):
        raise typer.Exit(1)


def _table(drifts: list[reconcile.Drift], fixes: dict[str, str | None]) -> Table:
    table = Table("scope", "period", "events", "ledger", "drift", "correction")
    for d in drifts:
        sign = "+" if d.drift_nanousd > 0 else "-" if d.drift_nanousd < 0 else ""
        table.add_row(
            str(d.scope),
            d.period_id,
            format_usd(d.events_nanousd),
            format_usd(d.ledger_nanousd),
            sign + format_usd(abs(d.drift_nanousd)),
            fixes.get(str(d.scope)) or "",
        )
    return table
