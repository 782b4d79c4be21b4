"""``budget-worker submit``: put one job on the jobs topic, optionally wait for its event.

The prompt is ``--prompt TEXT`` or, for text too long for one argument (Linux allows
128 KiB), ``--prompt-file PATH`` (``-`` reads standard input), taken byte for byte as
UTF-8. Prints the job id; with ``--wait``, then the job's terminal event as JSON. Exit
codes:
0 the job was sent (and, with ``--wait``, succeeded); 1 the job was rejected or failed,
no event came within ``--timeout``, or the broker could not be reached; 2 a bad option
or a job the worker would refuse as invalid (the message names the field; nothing is
sent). Kafka settings come from the ``BW_`` environment, as for the worker.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.events import CompletionSucceeded, TerminalEvent, encode_event
from schemas.jobs import CompletionJob, JobError
from worker.budget_args import parse_usd
from worker.client import JobClient, ResultWaiter, build_job, limits_of
from worker.errors import BudgetWorkerError, ConfigError
from worker.logs import quiet_kafka_client
from worker.settings import Settings, load_settings


def submit(
    user: Annotated[str, typer.Option("--user", help="The user the job is charged to.")],
    model: Annotated[str, typer.Option("--model", help="A model_name from the model list.")],
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="The user message (or --prompt-file).", show_default=False),
    ] = None,
    prompt_file: Annotated[
        str | None,
        typer.Option(
            "--prompt-file",
            metavar="PATH",
            help="Read the user message from PATH as UTF-8; - reads standard input.",
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Output cap (default: the worker's).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the job's event and print it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the event.", min=0)
    ] = 60.0,
    job_id: Annotated[
        str | None, typer.Option("--job-id", help="The job id (default: a fresh one).")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run", metavar="RUN", help="The run the job spends from (with --run-cap-usd)."
        ),
    ] = None,
    run_cap_usd: Annotated[
        int | None,
        typer.Option(
            "--run-cap-usd",
            metavar="USD",
            parser=parse_usd,
            help="The run's cap in USD, held from the user's budget by its first job.",
        ),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option("--kafka-bootstrap", help="Kafka bootstrap servers (default: BW_ setting)."),
    ] = None,
) -> None:
    """Submit one completion job for a user; with --wait, print its terminal event.

    The prompt is --prompt TEXT, or --prompt-file PATH for long text (- reads stdin).
    """
    text = _prompt(prompt, prompt_file)
    try:
        overrides = {} if kafka_bootstrap is None else {"kafka_bootstrap": kafka_bootstrap}
        settings = load_settings(**overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        job = build_job(
            user,
            model,
            text,
            max_tokens=max_tokens,
            job_id=job_id,
            system=system,
            limits=limits_of(settings),
            **_run_field(run, run_cap_usd),
        )
    except JobError as exc:
        typer.echo(f"error: invalid job: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        with quiet_kafka_client():
            event = asyncio.run(_send(settings, job, wait, timeout))
    except (BudgetWorkerError, TimeoutError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if event is not None:
        typer.echo(json.dumps(json.loads(encode_event(event)), indent=2, ensure_ascii=False))
        if not isinstance(event, CompletionSucceeded):
            raise typer.Exit(1)


def _run_field(run: str | None, cap_nanousd: int | None) -> dict[str, Any]:
    """The job's ``run`` field from --run and --run-cap-usd (both or neither)."""
    if run is None and cap_nanousd is None:
        return {}
    if run is None or cap_nanousd is None:
        typer.echo("error: --run and --run-cap-usd go together", err=True)
        raise typer.Exit(2)
    return {"run": {"id": run, "cap_nanousd": cap_nanousd}}


def _prompt(prompt: str | None, prompt_file: str | None) -> str:
    """The prompt from exactly one of the two options; exit 2 naming the option."""
    if (prompt is None) == (prompt_file is None):
        raise typer.BadParameter(
            "give the prompt with exactly one of --prompt and --prompt-file",
            param_hint="'--prompt' / '--prompt-file'",
        )
    if prompt is not None:
        return prompt
    assert prompt_file is not None
    try:
        if prompt_file == "-":
            data = typer.get_binary_stream("stdin").read()
        else:
            data = Path(prompt_file).read_bytes()
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {prompt_file}: {exc.strerror or exc}", param_hint="'--prompt-file'"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(
            f"{'standard input' if prompt_file == '-' else prompt_file} is not UTF-8 text "
            f"(byte {exc.start})",
            param_hint="'--prompt-file'",
        ) from None


async def _send(
    settings: Settings, job: CompletionJob, wait: bool, timeout_s: float
) -> TerminalEvent | None:
    waiter = ResultWaiter(settings) if wait else None
    if waiter is not None:
        # Started first: its positions are fixed before the job can be answered.
        await waiter.start()
    try:
        async with JobClient(settings) as client:
            job_id = await client.submit(job)
        typer.echo(job_id)
        return None if waiter is None else await waiter.wait(job_id, timeout_s)
    finally:
        if waiter is not None:
            await waiter.stop()
