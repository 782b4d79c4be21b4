"""The console script ``budget-worker``: run, budget, submit, demo, fake-provider."""

from __future__ import annotations

import asyncio
import os

import typer

from worker import logs
from worker.budget_cli import app as budget_app
from worker.demo import demo_command
from worker.errors import ConfigError
from worker.settings import load_settings
from worker.submit_cli import submit

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
    from worker.service import serve

    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, json_lines=settings.log_json)
    try:
        code = asyncio.run(serve(settings, os.environ))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command("fake-provider")
def fake_provider(
    port: int = typer.Option(8088, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    latency_ms: float = typer.Option(0.0, help="Fixed latency per request."),
    jitter_ms: float = typer.Option(0.0, help="Random extra latency, up to this."),
    error_rate: float = typer.Option(0.0, help="Share of requests answered 500."),
    rate_429: float = typer.Option(0.0, help="Share of requests answered 429."),
    output_tokens: int = typer.Option(64, help="Completion length (capped by max_tokens)."),
) -> None:
    """An OpenAI-compatible fake model server for tests, demos and benchmarks."""
    from worker.fake_provider import FakeProviderConfig, serve

    config = FakeProviderConfig(
        latency_s=latency_ms / 1000,
        latency_jitter_s=jitter_ms / 1000,
        error_rate=error_rate,
        rate_429=rate_429,
        output_tokens=output_tokens,
    )
    serve(config, host, port)


app.command("demo")(demo_command)
app.command("submit")(submit)


app.add_typer(budget_app, name="budget", help="Create, show, list and reset budgets.")


def main() -> None:
    app(prog_name="budget-worker")


if __name__ == "__main__":
    main()
