"""The scenario: the same callers through budget-worker and then through
check-then-spend, on the same workload, and the run with a live progress view."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live

from schemas.events import CompletionRejected, CompletionSucceeded, TerminalEvent
from worker.client import JobClient, ResultWaiter, build_job
from worker.dev.demo.baseline import CheckThenSpend, litellm_float_cost
from worker.dev.demo.render import render_progress, usd
from worker.dev.demo.results import (
    CheckThenSpendRow,
    DemoOptions,
    DemoProgress,
    DemoResult,
    DemoServers,
    TeamResult,
    UserRow,
)
from worker.dev.demo.system import System, start_system
from worker.dev.servers import scratch_dir
from worker.errors import ProviderError
from worker.ledger import Budget, Ledger, Scope
from worker.settings import Settings

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class _Callers:
    """``concurrency`` callers per user share ``calls_per_user`` tickets; each caller
    calls until it is refused or the tickets run out."""

    concurrency: int
    calls_per_user: int

    async def run(self, users: int, call: Callable[[int, int], Awaitable[bool]]) -> None:
        """``call(user, number)`` answers whether its caller goes on."""
        tickets = [self.calls_per_user] * users

        async def caller(user: int) -> None:
            while tickets[user] > 0:
                tickets[user] -= 1
                if not await call(user, self.calls_per_user - tickets[user]):
                    return

        async with asyncio.TaskGroup() as group:
            for user in range(users):
                for _ in range(self.concurrency):
                    group.create_task(caller(user))


async def run_demo(
    options: DemoOptions,
    progress: DemoProgress | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    servers: DemoServers | None = None,
) -> DemoResult:
    """Run the scenario through budget-worker, then through check-then-spend, on the
    same workload; the numbers. Starts (and always stops) every server it needs:
    the broker and Redis unless ``servers`` are given, the fake provider unless
    ``options.provider`` is ``openai`` (which needs ``OPENAI_API_KEY`` in ``environ``)."""
    progress = progress if progress is not None else DemoProgress()
    environ = environ if environ is not None else {}
    if options.provider == "openai" and not environ.get("OPENAI_API_KEY"):
        raise ValueError("the openai provider needs OPENAI_API_KEY")
    progress.planned = options.users * options.calls_per_user
    run_id = uuid.uuid4().hex[:6]
    labels = [f"user-{i + 1:02d}" for i in range(options.users)]
    rows = [UserRow(f"{label}-{run_id}", label) for label in labels]
    setup_started = time.monotonic()
    workdir = scratch_dir("budget-worker-demo-")  # server and worker logs
    failed = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            system = await start_system(stack, options, environ, servers, run_id, workdir, progress)
            ledger = Ledger.from_url(system.redis_url)
            stack.push_async_callback(ledger.close)
            budget = Budget(limit_nanousd=options.budget_nanousd, period="daily")
            for row in rows:
                await ledger.set_budget(row.user_id, budget)
            progress.step(f"{options.users} new users, ${options.budget_usd} daily budget each")
            setup_s = time.monotonic() - setup_started

            progress.phase = "budget-worker"
            began = time.monotonic()
            events, duplicates = await _through_budget_worker(
                options, system, rows, run_id, progress
            )
            ours_s = time.monotonic() - began
            await _read_ledger(ledger, rows)
            progress.step(f"budget-worker: {progress.answered} jobs answered in {ours_s:.1f} s")

            progress.phase = "check-then-spend (BudgetManager)"
            began = time.monotonic()
            theirs = await _check_then_spend(options, rows, system, progress)
            compare_s = time.monotonic() - began
            progress.step(
                f"check-then-spend: {progress.compare_checks} checks in {compare_s:.1f} s"
            )
            team = None
            if options.team_members:
                progress.phase = "a team budget (budget-worker)"
                team = await _team(options, system, ledger, run_id, progress)
            progress.phase = "stopping the workers and servers"
    except Exception:
        failed = True
        progress.step(f"logs kept in {workdir}")
        raise
    finally:
        if not failed:  # a success or an interruption
            shutil.rmtree(workdir, ignore_errors=True)

    return DemoResult(
        options=options,
        provider=(
            f"fake provider over HTTP ({options.latency_ms:g} ms + up to {options.jitter_ms:g} ms)"
            if options.provider == "fake"
            else "OpenAI (real, paid calls)"
        ),
        users=rows,
        check_then_spend=theirs,
        setup_s=setup_s,
        ours_s=ours_s,
        compare_s=compare_s,
        events=events,
        duplicates=duplicates,
        team=team,
    )


async def _team(
    options: DemoOptions, system: System, ledger: Ledger, run_id: str, progress: DemoProgress
) -> TeamResult:
    """Members with a budget each, in a team whose budget is half of theirs together,
    through budget-worker; the team's spend from the ledger afterwards."""
    team_id, org_id = f"demo-team-{run_id}", f"demo-org-{run_id}"
    cap = options.budget_nanousd * options.team_members // 2
    await ledger.create_team(team_id, org_id)
    await ledger.set_budget(Scope("team", team_id), Budget(limit_nanousd=cap, period="daily"))
    members = [
        UserRow(f"member-{i + 1:02d}-{run_id}", f"member-{i + 1:02d}")
        for i in range(options.team_members)
    ]
    own = Budget(limit_nanousd=options.budget_nanousd, period="daily")
    for row in members:
        await ledger.set_budget(row.user_id, own)
        await ledger.set_membership(row.user_id, team=team_id)
    progress.planned += options.team_members * options.calls_per_user
    progress.step(
        f"team {team_id}: {options.team_members} members, ${options.budget_usd} each, "
        f"team budget {usd(cap)}"
    )
    await _through_budget_worker(options, system, members, f"{run_id}-team", progress)
    await _read_ledger(ledger, members)
    state = await ledger.state(Scope("team", team_id))
    result = TeamResult(team_id, cap, members, options.budget_nanousd)
    if state is not None:
        result.spent_nanousd = state.snapshot.spent_nanousd
        result.reserved_nanousd = state.snapshot.reserved_nanousd
    progress.step(f"team: spent {usd(result.spent_nanousd)} of {usd(cap)}")
    return result


async def _read_ledger(ledger: Ledger, rows: list[UserRow]) -> None:
    """What Redis holds for each user after the run, beside what the events said."""
    for row in rows:
        state = await ledger.state(row.user_id)
        if state is not None:
            row.ledger_spent_nanousd = state.snapshot.spent_nanousd
            row.ledger_reserved_nanousd = state.snapshot.reserved_nanousd


async def _through_budget_worker(
    options: DemoOptions,
    system: System,
    rows: list[UserRow],
    run_id: str,
    progress: DemoProgress,
) -> tuple[int, int]:
    """Every caller submits a job and waits for its event; events read, duplicates."""
    settings = Settings(
        kafka_bootstrap=system.kafka_bootstrap,
        kafka_security_protocol="PLAINTEXT",
        jobs_topic=system.topics.jobs,
        results_topic=system.topics.results,
        worker_id=f"demo-client-{run_id}",
        model_timeout_s=30,
        lease_ms=60_000,
    )
    async with ResultWaiter(settings) as waiter, JobClient(settings) as client:

        async def call(user: int, number: int) -> bool:
            row = rows[user]
            job = build_job(
                row.user_id,
                options.model,
                options.prompt,
                max_tokens=options.max_tokens,
                job_id=f"demo-{run_id}-{user + 1:02d}-{number:03d}",
            )
            await client.submit(job)
            progress.sent += 1
            try:
                event = await waiter.wait(job.job_id, options.event_timeout_s)
            except TimeoutError:
                row.lost += 1
                progress.outcomes["lost"] += 1
                return False
            progress.answered += 1
            return _tally(row, event, progress.outcomes)

        await _Callers(options.concurrency, options.calls_per_user).run(len(rows), call)
        return waiter.stats.events, waiter.stats.duplicates


def _tally(row: UserRow, event: TerminalEvent, outcomes: Counter[str]) -> bool:
    """Count one event; whether its caller goes on calling."""
    if isinstance(event, CompletionSucceeded):
        row.succeeded += 1
        row.spent_nanousd += event.cost_nanousd
        outcomes["succeeded"] += 1
        return True
    if isinstance(event, CompletionRejected):
        row.refused += 1
        row.refused_by[event.scope or event.reason] += 1
        outcomes[f"rejected: {event.reason}"] += 1
        return False
    row.failed += 1
    row.spent_nanousd += event.cost_nanousd
    outcomes[f"failed: {event.error_type}"] += 1
    return True


async def _check_then_spend(
    options: DemoOptions, users: list[UserRow], system: System, progress: DemoProgress
) -> list[CheckThenSpendRow]:
    """The same callers, the same model over HTTP, BudgetManager's bookkeeping."""
    manager = CheckThenSpend()
    now = time.time()
    rows = [CheckThenSpendRow(user.user_id, user.label) for user in users]
    for row in rows:
        manager.create_budget(float(options.budget_usd), row.user_id, now)
    messages = [{"role": "user", "content": options.prompt}]
    entry, price = system.entry, system.entry.price

    async def call(user: int, _: int) -> bool:
        row = rows[user]
        progress.compare_checks += 1
        if not manager.get_current_cost(row.user_id) <= manager.get_total_budget(row.user_id):
            row.refused += 1
            progress.compare_outcomes["refused"] += 1
            return False
        try:
            completion = await system.provider.complete(entry, messages, {}, options.max_tokens)
        except ProviderError:
            row.failed += 1
            progress.compare_outcomes["failed"] += 1
            return True
        cost = litellm_float_cost(
            price.input_usd_per_token,
            price.output_usd_per_token,
            completion.prompt_tokens,
            completion.completion_tokens,
        )
        manager.update_cost(row.user_id, cost, options.model)
        row.succeeded += 1
        if completion.usage is not None:
            row.spent_nanousd += price.cost_nanousd(completion.usage)
        progress.compare_outcomes["succeeded"] += 1
        return True

    await _Callers(options.concurrency, options.calls_per_user).run(len(rows), call)
    for row in rows:
        row.reported_usd = manager.get_current_cost(row.user_id)
    return rows


async def run_live(
    options: DemoOptions, environ: Mapping[str, str], console: Console
) -> DemoResult:
    """``run_demo`` with a live progress view; SIGTERM and SIGHUP stop it as Ctrl-C does."""
    # SIGTERM (and SIGHUP, a closed terminal) cancel the run as Ctrl-C does, so the
    # same finally blocks clean up.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    progress = DemoProgress()
    try:
        with Live(
            get_renderable=lambda: render_progress(progress),
            console=console,
            refresh_per_second=8,
            transient=False,
        ):
            return await run_demo(options, progress, environ=environ)
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
