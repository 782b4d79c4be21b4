"""The console script's development commands: ``dev``, ``demo`` and ``fake-provider``.

Only the options live here; each command imports its rig when it runs, so the
service's own commands (``budget-worker run``) never load the demo, the fake
provider or the embedded servers.
"""

from __future__ import annotations

import asyncio
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer


def demo_command(
    users: Annotated[int, typer.Option(min=1, help="New users in the scenario.")] = 20,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent callers per user.")] = 8,
    calls_per_user: Annotated[int, typer.Option(min=1, help="Calls each user tries.")] = 12,
    budget_usd: Annotated[str, typer.Option(help="Each user's daily budget, USD.")] = "0.0002",
    model: Annotated[str, typer.Option(help="Model name (priced by litellm's cost map).")] = (
        "gpt-4o-mini"
    ),
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    latency_ms: Annotated[float, typer.Option(min=0, help="Fake provider latency.")] = 400.0,
    jitter_ms: Annotated[float, typer.Option(min=0, help="Fake provider extra latency.")] = 200.0,
    output_tokens: Annotated[int, typer.Option(min=0, help="Fake reply length, tokens.")] = 40,
    max_tokens: Annotated[int, typer.Option(min=1, help="Each job's max_tokens.")] = 64,
    input_usd_per_token: Annotated[
        str | None, typer.Option(help="Price for a model the cost map lacks.")
    ] = None,
    output_usd_per_token: Annotated[
        str | None, typer.Option(help="Price for a model the cost map lacks.")
    ] = None,
    fake: Annotated[
        bool, typer.Option("--fake", help="Use the fake provider even if OPENAI_API_KEY is set.")
    ] = False,
) -> None:
    """Run the per-user budget scenario on this machine, against check-then-spend.

    Starts an embedded Kafka-protocol broker, an embedded Redis-compatible server, a
    fake model (or OpenAI when OPENAI_API_KEY is set) and worker processes; stops them
    all at the end, on Ctrl-C and on SIGTERM.
    """
    from rich.console import Console

    from worker.dev.demo import DemoOptions, render_result, run_live
    from worker.errors import BudgetWorkerError, ConfigError

    environ = dict(os.environ)
    real = bool(environ.get("OPENAI_API_KEY")) and not fake
    try:
        options = DemoOptions(
            users=users,
            concurrency=concurrency,
            calls_per_user=calls_per_user,
            budget_usd=Decimal(budget_usd),
            model=model,
            workers=workers,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            output_tokens=output_tokens,
            max_tokens=max_tokens,
            provider="openai" if real else "fake",
            input_usd_per_token=Decimal(input_usd_per_token) if input_usd_per_token else None,
            output_usd_per_token=Decimal(output_usd_per_token) if output_usd_per_token else None,
        )
    except (ValueError, ArithmeticError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console = Console() if sys.stdout.isatty() else Console(width=150)
    try:
        result = asyncio.run(run_live(options, environ, console))
    except ConfigError as exc:
        console.print()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except (BudgetWorkerError, RuntimeError, TimeoutError) as exc:
        console.print()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("\ninterrupted: every server and worker was stopped")
        raise typer.Exit(130) from None
    except asyncio.CancelledError:
        console.print("\nterminated: every server and worker was stopped")
        raise typer.Exit(143) from None
    console.print()
    console.print(render_result(result, console.width))


def dev_command(
    models_file: Annotated[
        Path | None,
        typer.Option(
            "--models-file",
            help="A real model list (LiteLLM model_list YAML) instead of the fake provider.",
            show_default=False,
        ),
    ] = None,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions of the jobs and results topics.")
    ] = 6,
    kafka_port: Annotated[int, typer.Option(min=0, help="Broker port (0: a free one).")] = 0,
    redis_port: Annotated[int, typer.Option(min=0, help="Redis port (0: a free one).")] = 0,
    latency_ms: Annotated[float, typer.Option(min=0, help="Fake provider latency.")] = 0.0,
) -> None:
    """Run a broker, Redis and a fake model on this machine, for `run` in another shell.

    Creates the topics, writes a model list and prints the export lines to paste into
    another shell; stays in the foreground and stops everything on Ctrl-C or SIGTERM.
    Everything is kept in memory.
    """
    from worker.dev.local import LocalOptions, run_local
    from worker.errors import BudgetWorkerError, ConfigError

    def say(line: str) -> None:
        typer.echo(line)
        sys.stdout.flush()  # read line by line when piped

    options = LocalOptions(
        kafka_port=kafka_port,
        redis_port=redis_port,
        partitions=partitions,
        models_file=models_file,
        latency_ms=latency_ms,
    )
    try:
        asyncio.run(run_local(options, say))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (BudgetWorkerError, RuntimeError, TimeoutError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def fake_provider_command(
    port: int = typer.Option(8088, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    latency_ms: float = typer.Option(0.0, help="Fixed latency per request."),
    jitter_ms: float = typer.Option(0.0, help="Random extra latency, up to this."),
    error_rate: float = typer.Option(0.0, help="Share of requests answered 500."),
    rate_429: float = typer.Option(0.0, help="Share of requests answered 429."),
    output_tokens: int = typer.Option(64, help="Completion length (capped by max_tokens)."),
) -> None:
    """An OpenAI-compatible fake model server for tests, demos and benchmarks."""
    from worker.dev.fake_provider import FakeProviderConfig, serve

    config = FakeProviderConfig(
        latency_s=latency_ms / 1000,
        latency_jitter_s=jitter_ms / 1000,
        error_rate=error_rate,
        rate_429=rate_429,
        output_tokens=output_tokens,
    )
    serve(config, host, port)
