"""The demo's options, and what it measures: per user, for each half, and as it runs."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from schemas.money import usd_to_nanousd
from worker.dev.servers import EmbeddedKafka

ProviderKind = Literal["fake", "openai"]


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
