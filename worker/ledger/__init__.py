"""The ledger: hard spend budgets, rate limits and prepaid credits of users, teams and
organisations, kept in Redis.

Every step that changes the ledger is one Lua script (``lua/*.lua``), so each step is
atomic and one round trip, and every step is idempotent (by job id, holder, grant or
adjustment id). A job's reservation checks every limit of every scope on its path
(user, the user's limit on its model, team, organisation) in one script, all or
nothing. The design, its invariant and its key layout are in ``docs/ledger.md``.

- ``types``: what the ledger takes and answers;
- ``connection``: the only module that imports redis, and translates its errors;
- ``scopes``: limits, credits (``credits``), membership (``membership``), and where each
  user's keys live;
- ``runs``: per-run budgets (a cap shared by one run's jobs, held from its user's);
- ``book``: the job steps, and :class:`Ledger`, which has them all;
- ``idempotency``: the admin API's records per ``Idempotency-Key``, in the same Redis;
- ``park``: jobs waiting for budget (``on_budget_exceeded: wait``), and their claims.
"""

from worker.ledger.book import Ledger
from worker.ledger.connection import RedisClient
from worker.ledger.membership import JobsInFlight
from worker.ledger.park import ParkedJob, ParkList
from worker.ledger.types import (
    MAX_AMOUNT_NANOUSD,
    MAX_RATE,
    MAX_TOKENS,
    PERIODS,
    Adjustment,
    Budget,
    BudgetState,
    Busy,
    Entry,
    Finished,
    Grant,
    LeaseRef,
    Membership,
    NoBudget,
    Page,
    Period,
    PeriodSnapshot,
    Refused,
    Reserved,
    ReserveResult,
    RunRequest,
    RunState,
    Scope,
    Settled,
)

__all__ = [
    "MAX_AMOUNT_NANOUSD",
    "MAX_RATE",
    "MAX_TOKENS",
    "PERIODS",
    "Adjustment",
    "Budget",
    "BudgetState",
    "Busy",
    "Entry",
    "Finished",
    "Grant",
    "JobsInFlight",
    "LeaseRef",
    "Ledger",
    "Membership",
    "NoBudget",
    "Page",
    "ParkList",
    "ParkedJob",
    "Period",
    "PeriodSnapshot",
    "RedisClient",
    "Refused",
    "ReserveResult",
    "Reserved",
    "RunRequest",
    "RunState",
    "Scope",
    "Settled",
]
