"""The console script ``budget-worker``: run, admin, budget, topics, submit, dev, demo,
fake-provider."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer

from worker import logs
from worker.budget_cli import app as budget_app
from worker.dev.commands import demo_command, dev_command, fake_provider_command
from worker.errors import ConfigError, KafkaUnavailable, LedgerUnavailable
from worker.reconcile_cli import reconcile_command
from worker.settings import load_settings
from worker.submit_cli import submit
from worker.topics_cli import app as topics_app

app = typer.Typer(
    name="budget-worker",
    help="Hard per-user spend budgets and rate limits in front of LLM calls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def run() -> None:
    """Run one worker process: consume jobs, enforce budgets, call models, publish."""
    from worker import startup

    startup.prepare()  # before the service's modules import litellm
    from worker.metrics import check_port

    try:
        settings = load_settings()
        check_port(settings.metrics_host, settings.metrics_port)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # Imported only now (it loads litellm, seconds): bad settings or a taken port are
    # refused at once.
    from worker.service import serve

    logs.configure(settings.log_level, json_lines=settings.log_json)
    try:
        code = asyncio.run(serve(settings, os.environ))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KafkaUnavailable as exc:  # reached by check_kafka a moment before, then lost
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def admin(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Bind address (default BW_ADMIN_HOST, else 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="Port (default BW_ADMIN_PORT, else 8470).", min=0, max=65535),
    ] = None,
) -> None:
    """Serve the admin HTTP JSON API (budgets, membership, credits); needs BW_ADMIN_TOKEN."""
    from worker.admin import serve
    from worker.admin.server import token_of

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["admin_host"] = host
    if port is not None:
        overrides["admin_port"] = port
    try:
        settings = load_settings(**overrides)
        token_of(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, json_lines=settings.log_json)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except LedgerUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


app.command("dev")(dev_command)
app.command("demo")(demo_command)
app.command("fake-provider")(fake_provider_command)
app.command("submit")(submit)
app.command("reconcile")(reconcile_command)


app.add_typer(
    budget_app, name="budget", help="Create, change, show, list, reset and delete budgets."
)
app.add_typer(topics_app, name="topics", help="Create the worker's Kafka topics.")


def main() -> None:
    app(prog_name="budget-worker")


if __name__ == "__main__":
    main()
