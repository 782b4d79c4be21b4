"""``budget-worker budget run|close-run``: per-run budgets, the cap one run's jobs share
(a job names its run; the run's first job creates it)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from worker import ledger
from worker.budget_args import AsJson, RedisUrl, UserArg, fail, ledger_call
from worker.budget_view import format_usd, run_json
from worker.timestamps import rfc3339

runs = typer.Typer()
"""The commands of this module; ``worker.budget_cli`` adds them to its own."""

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="The run id, as the jobs name it.")]


def _print(state: ledger.RunState, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(run_json(state)))
        return
    typer.echo(
        f"{state.label}: {state.state}, spent {format_usd(state.spent_nanousd)} of "
        f"{format_usd(state.cap_nanousd)}, reserved {format_usd(state.reserved_nanousd)}, "
        f"holding {format_usd(state.hold_nanousd)} of its user's budget, "
        f"{state.live_jobs} job(s) in flight"
        + (f", open until {rfc3339(state.expires_ms)}" if state.state == "open" else "")
    )


@runs.command("run")
def show_run(
    user_id: UserArg, run_id: RunArg, as_json: AsJson = False, redis_url: RedisUrl = None
) -> None:
    """A run of USER: its cap, spend, what it holds of the user's budget, and its state
    (open, closed, done)."""
    state = ledger_call(redis_url, lambda book: book.run_state(user_id, run_id))
    if state is None:
        fail(f"user {user_id!r} has no run {run_id!r}")
    _print(state, as_json)


@runs.command("close-run")
def close_run(
    user_id: UserArg, run_id: RunArg, as_json: AsJson = False, redis_url: RedisUrl = None
) -> None:
    """Close a run of USER: it takes no new job, and what it holds beyond its jobs in
    flight flows back to the user's budget now (the rest as they end). Idempotent."""
    state = ledger_call(redis_url, lambda book: book.close_run(user_id, run_id))
    if state is None:
        fail(f"user {user_id!r} has no run {run_id!r}")
    _print(state, as_json)
