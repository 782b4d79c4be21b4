"""What the ledger takes and answers: limits, scopes, snapshots and the results of each
step. Expected outcomes (a refusal, no budget, a finished job) are values here, not
exceptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias, get_args

Period = Literal["daily", "weekly", "monthly", "yearly", "rolling", "none"]
PERIODS: frozenset[str] = frozenset(get_args(Period))
ScopeKind = Literal["user", "team", "org"]
SCOPE_KINDS: frozenset[str] = frozenset(get_args(ScopeKind))

# Lua numbers are doubles, exact below 2**53. These bounds keep every sum a script
# compares (spent + reserved + cost, credits, a bucket level) exact. (schemas.money's
# MAX_NANOUSD is another bound: what Redis can hold at all.)
MAX_AMOUNT_NANOUSD = 10**15  # USD 1,000,000 per limit, grant or job
MAX_TOKENS = 10**9
MAX_RATE = 10**9  # per minute
MAX_LEASE_MS = 10**10
MAX_WINDOW_S = 10**9
MAX_TIME_MS = 10**14  # year 5138: effective and expiry times of grants
DEFAULT_THRESHOLDS = (50, 80, 95, 100)  # common.lua's DEFAULT_THRESHOLDS
MAX_THRESHOLDS = 10


def check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")


def check_thresholds(values: tuple[int, ...]) -> None:
    """At most ``MAX_THRESHOLDS`` distinct percents of 1-100 in ascending order, so each
    settle does bounded work and a scope's events arrive in the order they are crossed."""
    if not isinstance(values, tuple):
        raise TypeError("thresholds must be a tuple of ints")
    for value in values:
        check_int("threshold", value, 1, 100)
    if list(values) != sorted(set(values)):
        raise ValueError("thresholds must be distinct and ascending")
    if len(values) > MAX_THRESHOLDS:
        raise ValueError(f"at most {MAX_THRESHOLDS} thresholds")


def check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose money: a user, a team or an organisation, by id. ``Scope.parse`` reads
    ``user:alice``, ``team:eng``, ``org:acme``, and a bare ``alice`` as a user."""

    kind: ScopeKind
    id: str

    def __post_init__(self) -> None:
        if self.kind not in SCOPE_KINDS:
            raise ValueError(f"scope kind must be one of {sorted(SCOPE_KINDS)}, not {self.kind!r}")
        check_id(f"{self.kind} id", self.id)

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, sep, rest = text.partition(":")
        if sep and kind in SCOPE_KINDS and rest:
            return cls(kind, rest)  # type: ignore[arg-type]  # checked just above
        return cls("user", text)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class Budget:
    """A scope's limits. ``limit_nanousd`` of ``None`` means no USD limit (a team with a
    rate limit only; a prepaid scope that spends its credits only); ``window_s`` is
    required for ``rolling`` and ``None`` otherwise; ``rpm``/``tpm`` of ``None`` mean
    no such limit. ``thresholds`` are the percents of the USD limit whose crossing in
    a period is published once (``budget.threshold_crossed``); ``None`` means
    ``DEFAULT_THRESHOLDS``, ``()`` none."""

    limit_nanousd: int | None
    period: Period = "daily"
    window_s: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    rollover_cap_nanousd: int | None = None
    """Unused allowance of a period carried into the next one, at most this much
    (``None``: none carries). Needs a USD limit and a period other than ``none``."""
    thresholds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.limit_nanousd is not None:
            check_int("limit_nanousd", self.limit_nanousd, 0, MAX_AMOUNT_NANOUSD)
        if self.period not in PERIODS:
            raise ValueError(f"period must be one of {sorted(PERIODS)}, not {self.period!r}")
        if self.period == "rolling":
            if self.window_s is None:
                raise ValueError("a rolling budget needs window_s")
            check_int("window_s", self.window_s, 1, MAX_WINDOW_S)
        elif self.window_s is not None:
            raise ValueError(f"window_s applies to rolling budgets only, not {self.period!r}")
        if self.rpm is not None:
            check_int("rpm", self.rpm, 1, MAX_RATE)
        if self.tpm is not None:
            check_int("tpm", self.tpm, 1, MAX_RATE)
        if self.rollover_cap_nanousd is not None:
            self._check_rollover(self.rollover_cap_nanousd)
        if self.thresholds is not None:
            check_thresholds(self.thresholds)

    def _check_rollover(self, cap: int) -> None:
        check_int("rollover_cap_nanousd", cap, 1, MAX_AMOUNT_NANOUSD)
        if self.limit_nanousd is None or self.period == "none":
            raise ValueError("rollover needs a USD limit and a period other than none")


@dataclass(frozen=True, slots=True)
class PeriodSnapshot:
    """One period of a scope's money at one instant (what events carry)."""

    limit_nanousd: int
    spent_nanousd: int
    reserved_nanousd: int
    remaining_nanousd: int  # max(0, limit + credits - (spent - drawn) - reserved)
    period_end_ms: int | None  # None for period "none"


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A scope's limits and current period (what ``budget show`` prints)."""

    scope: Scope
    budget: Budget
    snapshot: PeriodSnapshot
    period_id: str
    model_spend_nanousd: dict[str, int]
    drawn_nanousd: int = 0
    """Of ``spent``, what was charged to credits rather than the period allowance."""
    carried_nanousd: int = 0
    """Allowance carried from the previous period (rollover), on top of the limit."""
    credits_nanousd: int = 0
    """Credits usable now: the grants' remaining amounts."""
    team: str | None = None
    """A user's team, by id."""
    org: str | None = None
    """A user's or team's organisation, by id."""

    @property
    def user_id(self) -> str:
        return self.scope.id


@dataclass(frozen=True, slots=True)
class Grant:
    """Prepaid credit of a scope. ``id`` makes it idempotent (a retried grant is one
    grant); lower ``priority`` draws first, then the earliest expiry; usable from
    ``effective_ms`` to ``expires_ms`` (``None``: never expires), both Unix ms."""

    id: str
    amount_nanousd: int
    priority: int = 0
    effective_ms: int = 0
    expires_ms: int | None = None
    remaining_nanousd: int | None = None
    """What is left (answers only)."""

    def __post_init__(self) -> None:
        check_id("grant id", self.id)
        if any(c.isspace() for c in self.id) or len(self.id) > 128:
            raise ValueError("grant id must be at most 128 characters without spaces")
        check_int("amount_nanousd", self.amount_nanousd, 1, MAX_AMOUNT_NANOUSD)
        check_int("priority", self.priority, -(2**31 - 1), 2**31 - 1)
        check_int("effective_ms", self.effective_ms, 0, MAX_TIME_MS)
        if self.expires_ms is not None:
            check_int("expires_ms", self.expires_ms, 0, MAX_TIME_MS)


MAX_RUN_TTL_S = 86400


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A job's run: ``id`` names it within its user, ``cap_nanousd`` is the most all of
    its jobs may spend together, held from the user's (and team's and organisation's)
    budget when its first job arrives; ``ttl_s`` is how long it stays open (from that
    first job; at most a day). The first job's cap and ttl hold for the run."""

    id: str
    cap_nanousd: int
    ttl_s: int = 3600

    def __post_init__(self) -> None:
        check_id("run id", self.id)
        check_int("cap_nanousd", self.cap_nanousd, 1, MAX_AMOUNT_NANOUSD)
        check_int("ttl_s", self.ttl_s, 1, MAX_RUN_TTL_S)


@dataclass(frozen=True, slots=True)
class RunState:
    """A run as the ledger holds it. ``state``: ``open`` (takes jobs), ``closed`` (takes
    none; its live jobs still hold), ``done`` (its hold flowed back). ``hold_nanousd`` is
    what it still holds in the scopes above it; ``live_jobs`` its reservations now."""

    run_id: str
    label: str
    state: Literal["open", "closed", "done"]
    cap_nanousd: int
    spent_nanousd: int
    reserved_nanousd: int
    hold_nanousd: int
    expires_ms: int
    live_jobs: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One immutable change to a scope's credits: ``grant`` (+), ``draw`` (-, a call
    charged beyond the period allowance), ``expiry`` (-, a grant's rest at its expiry),
    ``adjust`` (+ or -, by hand). The credit balance is the sum of the amounts."""

    id: str
    kind: Literal["grant", "draw", "expiry", "adjust"]
    amount_nanousd: int
    grant: str
    at_ms: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class Adjustment:
    """What one adjustment id did. ``created`` is False when the id was used before
    (nothing changed now): ``applied_nanousd`` and ``amount_nanousd`` are then the
    stored adjustment's, so a caller tells its own retry from a reused id by the
    amount. ``amount_nanousd`` is what was asked (a debit may apply less); None only for
    a debit stored before asked amounts were kept."""

    created: bool
    applied_nanousd: int
    amount_nanousd: int | None


@dataclass(frozen=True, slots=True)
class Membership:
    """Where a user belongs: its team and organisation (None: none). A user directly in
    an organisation has an org and no team."""

    team: str | None
    org: str | None


@dataclass(frozen=True, slots=True)
class Reserved:
    """The job holds a reservation. ``existing`` when it already held it before this
    call; ``holder`` then tells the caller's own retry from another worker's hold."""

    job_id: str
    cost_nanousd: int
    tokens: int
    lease_deadline_ms: int
    existing: bool
    holder: str
    snapshot: PeriodSnapshot


@dataclass(frozen=True, slots=True)
class Refused:
    """A limit would be exceeded; nothing changed. ``scope`` names the scope that
    refused (``user:alice``, ``team:eng``, ...) and ``snapshot`` is its period;
    ``remaining`` is in the limit's unit (nano-USD, requests, tokens);
    ``retry_after_ms`` is when the limit lifts (the period end for ``usd``), ``None``
    when it never does for this amount."""

    limit: Literal["usd", "rpm", "tpm"]
    remaining: int
    retry_after_ms: int | None
    snapshot: PeriodSnapshot
    scope: str = ""
    run_closed: bool = False
    """The job's run is closed (by hand or at its expiry): it takes no job any more."""


@dataclass(frozen=True, slots=True)
class NoBudget:
    """The user has no budget (and the ledger has no default)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The job is already final. ``outcome`` is its first stored outcome (``None`` once
    expired); ``snapshot`` is the one taken when it was settled (``None`` if it was not)."""

    outcome: bytes | None
    snapshot: PeriodSnapshot | None


@dataclass(frozen=True, slots=True)
class Settled:
    """The job is charged. ``first`` is False when an earlier settle had charged it: then
    ``charged_nanousd``, ``outcome`` and ``snapshot`` are that settle's, unchanged.
    ``outcome`` is the first stored outcome, which may predate this settle.
    ``thresholds_crossed`` is how many spend thresholds this settle crossed: each is an
    event waiting in the slot's outbox (see ``worker.ledger.outbox``)."""

    charged_nanousd: int
    first: bool
    outcome: bytes | None
    snapshot: PeriodSnapshot
    thresholds_crossed: int = 0


@dataclass(frozen=True, slots=True)
class Busy:
    """Another delivery of the job holds a live reservation (it is being run)."""

    holder: str


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """A reservation's lease, as its holder renews it."""

    user_id: str
    job_id: str
    holder: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``cursor`` is where the next one starts (None: the end)."""

    items: list[str] = field(default_factory=list)
    cursor: str | None = None


ReserveResult: TypeAlias = Reserved | Refused | NoBudget | Finished
