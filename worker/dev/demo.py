"""``budget-worker demo``: the whole system on this machine, and what it prevents.

The scenario is LiteLLM's BudgetManager example at scale: new users, each with a daily
budget of $0.0002, say "Hey, how's it going?" again and again, several calls at once,
until they are refused. It runs twice on the same workload against the same model:

1. through budget-worker: an embedded Kafka-protocol broker (Tansu), an embedded
   Redis-compatible server, ``--workers`` worker processes (``budget-worker run``) and
   jobs submitted with :class:`worker.client.JobClient`, answered on the results topic;
2. through BudgetManager's check-then-spend loop (:class:`CheckThenSpend`): check
   ``get_current_cost <= get_total_budget``, call the model, then ``update_cost``.

Then a team: ``team_members`` more users, each with the same budget of their own, in a
team whose daily budget is half of what they hold together. Their jobs go through
budget-worker too: the team's budget holds (its jobs are refused naming ``team:...``)
while each member still has room of their own.

The model is the project's OpenAI-compatible fake, reached over HTTP, unless a real
provider is chosen (``OPENAI_API_KEY`` set): then both halves make real, paid calls.

:func:`run_demo` returns the numbers (:class:`DemoResult`); :func:`render_result` and
:func:`render_progress` draw them; :func:`demo_command` is the CLI. Every child process
(broker, Redis, workers) runs in its own process group and is killed, with its group,
in a ``finally``: on success, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from schemas.events import CompletionRejected, CompletionSucceeded, TerminalEvent
from schemas.money import NANOUSD_PER_USD, usd_to_nanousd
from worker.client import JobClient, ResultWaiter, build_job
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis, free_port, scratch_dir
from worker.errors import ProviderError
from worker.ledger import Budget, Ledger, Scope
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.dev.fake_provider import FakeProviderServer
    from worker.models import ModelEntry
    from worker.provider import Provider

ProviderKind = Literal["fake", "openai"]
T = TypeVar("T")

_WORKER_READY_TIMEOUT_S = 90.0
_WORKER_STOP_GRACE_S = 5.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


# --- options and results ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The scenario. Latency, jitter and output length apply to the fake provider."""

    users: int = 20
    concurrency: int = 8
    calls_per_user: int = 12
    budget_usd: Decimal = Decimal("0.0002")
    model: str = "gpt-4o-mini"
    workers: int = 2
    latency_ms: float = 400.0
    jitter_ms: float = 200.0
    output_tokens: int = 40
    max_tokens: int = 64
    prompt: str = "Hey, how's it going?"
    provider: ProviderKind = "fake"
    input_usd_per_token: Decimal | None = None
    output_usd_per_token: Decimal | None = None
    event_timeout_s: float = 60.0
    team_members: int = 3
    """Members of the team scenario (0: none); the team's budget is half of theirs."""

    def __post_init__(self) -> None:
        for name in ("users", "concurrency", "calls_per_user", "workers", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.team_members < 0:
            raise ValueError("team_members must be >= 0")
        if self.output_tokens < 0 or self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("output_tokens, latency_ms and jitter_ms must be >= 0")
        if (self.input_usd_per_token is None) != (self.output_usd_per_token is None):
            raise ValueError("give both prices per token, or neither")
        if self.budget_nanousd <= 0:  # also raises ValueError for NaN, negatives, huge
            raise ValueError("budget_usd must be at least 0.000000001")

    @property
    def budget_nanousd(self) -> int:
        return usd_to_nanousd(self.budget_usd, round_up=False)


@dataclass(frozen=True, slots=True)
class DemoServers:
    """Servers to use instead of starting embedded ones (tests)."""

    kafka: EmbeddedKafka
    redis_url: str


@dataclass(slots=True)
class UserRow:
    """One user through budget-worker. ``spent_nanousd`` adds up the user's events;
    ``ledger_*`` is what Redis holds after the run (they must agree)."""

    user_id: str
    label: str
    succeeded: int = 0
    refused: int = 0
    failed: int = 0
    lost: int = 0
    spent_nanousd: int = 0
    ledger_spent_nanousd: int = 0
    ledger_reserved_nanousd: int = 0
    refused_by: Counter[str] = field(default_factory=Counter)
    """Refusals by the scope that refused (``user:...``, ``team:...``)."""


@dataclass(slots=True)
class TeamResult:
    """The team scenario: its members through budget-worker, and the team's own spend
    and reservations in the ledger after the run."""

    team: str
    budget_nanousd: int
    members: list[UserRow]
    member_budget_nanousd: int
    spent_nanousd: int = 0
    reserved_nanousd: int = 0

    @property
    def held(self) -> bool:
        """The team's budget held: within its cap, jobs refused by it, and every member
        below their own budget when it did."""
        return (
            self.spent_nanousd <= self.budget_nanousd
            and sum(row.refused_by[f"team:{self.team}"] for row in self.members) > 0
            and all(row.spent_nanousd < self.member_budget_nanousd for row in self.members)
        )


@dataclass(slots=True)
class CheckThenSpendRow:
    """One user through the check-then-spend loop. ``spent_nanousd`` is exact (the sum
    of each call's cost); ``reported_usd`` is BudgetManager's own float total."""

    user_id: str
    label: str
    succeeded: int = 0
    refused: int = 0
    failed: int = 0
    spent_nanousd: int = 0
    reported_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class DemoResult:
    options: DemoOptions
    provider: str
    users: list[UserRow]
    check_then_spend: list[CheckThenSpendRow]
    setup_s: float
    ours_s: float
    compare_s: float
    events: int
    duplicates: int
    team: TeamResult | None = None

    @property
    def budget_nanousd(self) -> int:
        return self.options.budget_nanousd

    @property
    def ours_over(self) -> int:
        return sum(1 for row in self.users if row.spent_nanousd > self.budget_nanousd)

    @property
    def theirs_over(self) -> int:
        return sum(1 for row in self.check_then_spend if row.spent_nanousd > self.budget_nanousd)

    @property
    def ledger_mismatches(self) -> list[str]:
        """Users whose events do not add up to the ledger's spend, or who still hold a
        reservation after the run: empty, unless something is broken."""
        return [
            row.label
            for row in self.users
            if row.spent_nanousd != row.ledger_spent_nanousd or row.ledger_reserved_nanousd
        ]


@dataclass(slots=True)
class DemoProgress:
    """Live counters, mutated by :func:`run_demo` and read by :func:`render_progress`."""

    phase: str = "starting"
    steps: list[str] = field(default_factory=list)
    planned: int = 0
    sent: int = 0
    answered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    compare_checks: int = 0
    compare_outcomes: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        self.steps.append(f"{time.monotonic() - self.started:5.1f} s  {text}")


# --- BudgetManager's check-then-spend, in memory ------------------------------------------


class CheckThenSpend:
    """LiteLLM ``BudgetManager``'s bookkeeping, in memory: the same ``user_dict`` and the
    same float arithmetic as ``litellm/budget_manager.py`` (``client_type="local"``
    without its JSON file). The loop around it is BudgetManager's documented one::

        if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
            response = await litellm.acompletion(...)
            budget_manager.update_cost(completion_obj=response, user=user)
        else:
            response = "Sorry - no budget!"

    ``update_cost`` takes the cost that ``litellm.completion_cost`` computes from the
    response (:func:`litellm_float_cost`), since the check and the charge are what matter.
    """

    def __init__(self) -> None:
        self.user_dict: dict[str, dict[str, Any]] = {}

    def create_budget(self, total_budget: float, user: str, created_at: float) -> dict[str, Any]:
        """``create_budget(total_budget, user, duration="daily")``."""
        self.user_dict[user] = {
            "total_budget": total_budget,
            "duration": 1,
            "created_at": created_at,
            "last_updated_at": created_at,
        }
        return self.user_dict[user]

    def get_total_budget(self, user: str) -> float:
        total: float = self.user_dict[user]["total_budget"]
        return total

    def get_current_cost(self, user: str) -> float:
        current: float = self.user_dict[user].get("current_cost", 0)
        return current

    def update_cost(self, user: str, cost: float, model: str) -> dict[str, Any]:
        self.user_dict[user]["current_cost"] = cost + self.user_dict[user].get("current_cost", 0)
        if "model_cost" in self.user_dict[user]:
            model_cost = self.user_dict[user]["model_cost"]
            model_cost[model] = cost + model_cost.get(model, 0)
        else:
            self.user_dict[user]["model_cost"] = {model: cost}
        return {"user": self.user_dict[user]}


def litellm_float_cost(
    input_usd_per_token: Decimal,
    output_usd_per_token: Decimal,
    prompt_tokens: int,
    completion_tokens: int,
) -> float:
    """A call's cost as ``litellm.completion_cost`` computes it: float price per token
    times tokens, prompt plus completion."""
    prompt_cost = float(prompt_tokens) * float(input_usd_per_token)
    completion_cost = float(completion_tokens) * float(output_usd_per_token)
    return prompt_cost + completion_cost


# --- child processes --------------------------------------------------------------------


class _Children:
    """Worker processes, each the leader of its own process group."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, env: Mapping[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"],
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop(self, grace_s: float) -> None:
        """SIGTERM every group (workers drain and exit 0), SIGKILL what is left after
        ``grace_s``; always reaps. Safe to call twice."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for process in self.processes:
                _signal_group(process, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The group outlives its leader when the leader left children behind, so the group
    # is signalled even after the leader exited (until it has been reaped).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


async def _wait_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + _WORKER_READY_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited early:\n{_tail(log_path)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                    if reply.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(
        f"a worker was not ready in {_WORKER_READY_TIMEOUT_S:.0f} s:\n{_tail(log_path)}"
    )


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Topics:
    jobs: str
    results: str
    dlq: str


def _models_yaml(options: DemoOptions, api_base: str | None) -> str:
    lines = ["model_list:", f"  - model_name: {options.model}", "    litellm_params:"]
    lines.append(f"      model: openai/{options.model}")
    if api_base is None:
        lines.append("      api_key: os.environ/OPENAI_API_KEY")
    else:
        lines += [f"      api_base: {api_base}", "      api_key: sk-fake-demo"]
    if options.input_usd_per_token is not None and options.output_usd_per_token is not None:
        lines += [
            "    model_info:",
            f"      input_cost_per_token: {options.input_usd_per_token}",
            f"      output_cost_per_token: {options.output_usd_per_token}",
        ]
    return "\n".join(lines) + "\n"


def _worker_env(
    environ: Mapping[str, str],
    options: DemoOptions,
    kafka_bootstrap: str,
    redis_url: str,
    models_file: Path,
    topics: _Topics,
    group_id: str,
) -> dict[str, str]:
    # The caller's own BW_ settings (an admission policy, TLS for another broker...)
    # would change the scenario: the workers get exactly the demo's.
    env = {key: value for key, value in environ.items() if not key.startswith("BW_")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        BW_KAFKA_BOOTSTRAP=kafka_bootstrap,
        BW_REDIS_URL=redis_url,
        BW_MODELS_FILE=str(models_file),
        BW_JOBS_TOPIC=topics.jobs,
        BW_RESULTS_TOPIC=topics.results,
        BW_DLQ_TOPIC=topics.dlq,
        BW_GROUP_ID=group_id,
        BW_METRICS_HOST="127.0.0.1",
        BW_MAX_IN_FLIGHT=str(max(64, options.users * options.concurrency)),
        BW_MODEL_TIMEOUT_S="30",
        BW_LEASE_MS="60000",
        BW_DRAIN_TIMEOUT_S="2",
        BW_SHUTDOWN_GRACE_S="3",
        BW_LOG_LEVEL="WARNING",
    )
    return env


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


@dataclass(frozen=True, slots=True)
class _System:
    """What is running: the broker, Redis, the model, the workers."""

    kafka_bootstrap: str
    redis_url: str
    topics: _Topics
    entry: ModelEntry
    provider: Provider


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
            system = await _start_system(
                stack, options, environ, servers, run_id, workdir, progress
            )
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
    options: DemoOptions, system: _System, ledger: Ledger, run_id: str, progress: DemoProgress
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


async def _start_system(
    stack: contextlib.AsyncExitStack,
    options: DemoOptions,
    environ: Mapping[str, str],
    servers: DemoServers | None,
    run_id: str,
    workdir: Path,
    progress: DemoProgress,
) -> _System:
    """Broker, Redis, topics, the model and ready workers. Each stop is pushed on
    ``stack`` before its start, so whatever started is stopped, whichever step fails or
    is interrupted; they run in reverse order: workers first."""
    if servers is None:
        kafka = EmbeddedKafka(workdir)
        stack.callback(kafka.stop)
        kafka.start()
        progress.step(f"Kafka-protocol broker (Tansu) on {kafka.bootstrap}")
        redis = EmbeddedRedis(workdir)
        stack.callback(redis.stop)
        redis.start()
        redis_url = redis.url
        progress.step(f"Redis-compatible server on {redis_url}")
        topics = _Topics("llm.jobs", "llm.results", "llm.jobs.dlq")
    else:
        kafka, redis_url = servers.kafka, servers.redis_url
        topics = _Topics(f"demo.jobs.{run_id}", f"llm.results.demo-{run_id}", f"demo.dlq.{run_id}")
    kafka.create_topic(topics.jobs, partitions=max(6, 2 * options.workers))
    kafka.create_topic(topics.results, partitions=3)
    kafka.create_topic(topics.dlq, partitions=1)
    progress.step(f"topics {topics.jobs}, {topics.results}, {topics.dlq}")

    api_base = None
    if options.provider == "fake":
        fake = await _start_fake(options)
        stack.push_async_callback(fake.stop)
        api_base = fake.url
        progress.step(
            f"fake model provider on {fake.url} ({options.latency_ms:g} ms"
            f" + up to {options.jitter_ms:g} ms, {options.output_tokens} output tokens)"
        )
    models_file = workdir / "models.yaml"
    models_file.write_text(_models_yaml(options, api_base))

    workers = f"{options.workers} worker process" + ("es" if options.workers > 1 else "")
    progress.phase = f"starting {workers}"
    children = _Children()
    stack.callback(children.stop, _WORKER_STOP_GRACE_S)
    env = _worker_env(
        environ, options, kafka.bootstrap, redis_url, models_file, topics, f"demo-{run_id}"
    )
    started = []
    for index in range(options.workers):
        port = free_port()
        log_path = workdir / f"worker-{index + 1}.log"
        worker_env = {**env, "BW_METRICS_PORT": str(port), "BW_WORKER_ID": f"demo-w{index + 1}"}
        started.append((children.start(worker_env, log_path, workdir), port, log_path))
    # Loaded while the workers boot (litellm takes seconds to import); a model the cost
    # map cannot price fails here, with the model list's own message.
    entry, provider = await _in_daemon_thread(
        lambda: _model_and_provider(models_file, environ, options.model)
    )
    for process, port, log_path in started:
        await _wait_ready(process, port, log_path)
    progress.step(f"{workers} ready")
    return _System(kafka.bootstrap, redis_url, topics, entry, provider)


async def _through_budget_worker(
    options: DemoOptions,
    system: _System,
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


async def _in_daemon_thread(function: Callable[[], T]) -> T:
    """``function()`` in a daemon thread: unlike ``asyncio.to_thread``, an interrupted
    demo exits without waiting for it (an import of litellm takes seconds)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def main() -> None:
        try:
            result = function()
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=main, name="budget-worker-demo", daemon=True).start()
    return await future


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


async def _start_fake(options: DemoOptions) -> FakeProviderServer:
    from worker.dev.fake_provider import FakeProviderConfig, start_fake_provider

    config = FakeProviderConfig(
        latency_s=options.latency_ms / 1000,
        latency_jitter_s=options.jitter_ms / 1000,
        output_tokens=options.output_tokens,
        models=(options.model,),
    )
    return await start_fake_provider(config)


def _model_and_provider(
    models_file: Path, environ: Mapping[str, str], model: str
) -> tuple[ModelEntry, Provider]:
    """The model as the workers will load it (a bad name or a missing price fails here,
    before any worker starts) and a provider for the check-then-spend half."""
    from worker.models import load_models
    from worker.pricebook import price_of
    from worker.provider import Provider

    entry = load_models(models_file, environ, price_of).get(model)
    assert entry is not None
    return entry, Provider(timeout_s=30, max_retries=2, backoff_s=0.2, backoff_max_s=2.0)


async def _check_then_spend(
    options: DemoOptions, users: list[UserRow], system: _System, progress: DemoProgress
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


# --- rendering ------------------------------------------------------------------------------


def usd(nanousd: int) -> str:
    """Exact USD from nano-USD, nine decimals: ``$0.000156600``."""
    sign = "-" if nanousd < 0 else ""
    return f"{sign}${Decimal(abs(nanousd)) / NANOUSD_PER_USD:.9f}"


def render_progress(progress: DemoProgress) -> RenderableType:
    lines: list[RenderableType] = [Text(step, style="dim") for step in progress.steps]
    elapsed = time.monotonic() - progress.started
    lines.append(Text(f"{elapsed:5.1f} s  {progress.phase} ...", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right")
    grid.add_column()
    grid.add_row(
        "budget-worker",
        f"jobs sent {progress.sent} (at most {progress.planned}), answered {progress.answered}",
    )
    if progress.outcomes:
        grid.add_row("", _counts(progress.outcomes))
    if progress.compare_checks:
        grid.add_row(
            "check-then-spend",
            f"checks {progress.compare_checks}, " + _counts(progress.compare_outcomes),
        )
    lines.append(grid)
    return Group(*lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def render_result(result: DemoResult, width: int = 150) -> RenderableType:
    """The per-user tables (budget-worker, and beside it check-then-spend; one above
    the other when ``width`` is too narrow), the totals and the verdict."""
    options = result.options
    budget = result.budget_nanousd
    ours = _side_table(
        "budget-worker",
        [(r.label, r.succeeded, r.refused, r.spent_nanousd) for r in result.users],
        budget,
    )
    theirs = _side_table(
        "check-then-spend (LiteLLM BudgetManager's loop)",
        [(r.label, r.succeeded, r.refused, r.spent_nanousd) for r in result.check_then_spend],
        budget,
    )
    heading = Text(
        f"{options.users} new users, ${options.budget_usd} daily budget each, {options.model} "
        f"via {result.provider}; {options.concurrency} concurrent callers per user, at most "
        f"{options.calls_per_user} calls per user, max_tokens {options.max_tokens}",
        style="bold",
    )
    tables: RenderableType = Group(ours, theirs)
    if width >= _SIDE_BY_SIDE_WIDTH:
        tables = grid = Table.grid(padding=(0, 2))
        grid.add_row(ours, theirs)
    users = options.users
    verdict = Text()
    verdict.append(f"{result.ours_over} of {users} users over budget", style="bold green")
    verdict.append(" with budget-worker vs ")
    verdict.append(
        f"{result.theirs_over} of {users} with check-then-spend",
        style="bold red" if result.theirs_over else "bold",
    )
    over = sum(max(0, row.spent_nanousd - budget) for row in result.check_then_spend)
    if over:
        verdict.append(f" (overspent {usd(over)} in total)")
    parts: list[RenderableType] = [heading, tables, verdict]
    example = next((row for row in result.check_then_spend if row.spent_nanousd > budget), None)
    if example is not None:
        parts.append(
            Text(
                f"BudgetManager's own float total for {example.label}: "
                f"{example.reported_usd!r} against total_budget {float(options.budget_usd)!r}.",
                style="dim",
            )
        )
    mismatches = result.ledger_mismatches
    if mismatches:
        parts.append(
            Text(
                f"The events and the ledger DISAGREE for {', '.join(mismatches)}.",
                style="bold red",
            )
        )
    if result.team is not None:
        parts += _team_parts(result.team, budget)
    agreement = "" if mismatches else " equals the ledger's for every user"
    parts.append(
        Text(
            "Spend is exact (integer nano-USD); budget-worker's spend (the sum of each user's "
            f"events){agreement}. {result.events} events read, {result.duplicates} "
            f"duplicates dropped. Setup {result.setup_s:.1f} s, budget-worker "
            f"{result.ours_s:.1f} s, check-then-spend {result.compare_s:.1f} s.",
            style="dim",
        )
    )
    return Group(*parts)


_SIDE_BY_SIDE_WIDTH = 124


def _team_parts(team: TeamResult, budget: int) -> list[RenderableType]:
    members = _side_table(
        f"budget-worker: team {team.team}, budget {usd(team.budget_nanousd)} a day",
        [(r.label, r.succeeded, r.refused, r.spent_nanousd) for r in team.members],
        budget,
    )
    by_team = sum(row.refused_by[f"team:{team.team}"] for row in team.members)
    line = Text()
    line.append(
        f"The team spent {usd(team.spent_nanousd)} of its {usd(team.budget_nanousd)}",
        style="bold green" if team.spent_nanousd <= team.budget_nanousd else "bold red",
    )
    room = "while each member had room of their own" if team.held else "(see the table)"
    line.append(
        f"; {by_team} jobs were refused by team:{team.team} {room}: the team's budget is "
        "checked in the same Lua step as each member's."
    )
    return [members, line]


def _side_table(title: str, rows: list[tuple[str, int, int, int]], budget: int) -> Table:
    table = Table(title=title, show_footer=True)
    over = sum(1 for *_, spent in rows if spent > budget)
    table.add_column("user", footer="total")
    table.add_column("ok", justify="right", footer=str(sum(row[1] for row in rows)))
    table.add_column("refused", justify="right", footer=str(sum(row[2] for row in rows)))
    table.add_column("spend", justify="right", footer=usd(sum(row[3] for row in rows)))
    table.add_column("outcome", no_wrap=True, footer=f"{over} over budget")
    for label, succeeded, refused, spent in rows:
        table.add_row(label, str(succeeded), str(refused), usd(spent), _outcome(spent, budget))
    return table


def _outcome(spent_nanousd: int, budget_nanousd: int) -> Text:
    if spent_nanousd > budget_nanousd:
        return Text(f"OVER +{usd(spent_nanousd - budget_nanousd)}", style="bold red")
    used = 100 * spent_nanousd // budget_nanousd if budget_nanousd else 100
    return Text(f"within, {used}% used", style="green")


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
