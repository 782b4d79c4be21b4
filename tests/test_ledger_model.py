"""A pure-Python reference model of the ledger, and a stateful property test that drives
the real Redis ledger and the model with the same random steps and checks, after every
step, that they agree and that spend stays within the cap but for documented overshoot.

The model covers one period (``none``) and the USD limit: leases, reclaim, settle,
release, finish, redelivery, reset and budget changes. Calendar periods and rate limits
have their own tests in test_ledger.py.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from worker.ledger import (
    Budget,
    Busy,
    Finished,
    Ledger,
    NoBudget,
    PeriodSnapshot,
    Refused,
    Reserved,
    ReserveResult,
    Settled,
)

# -- the model ---------------------------------------------------------------------------


@dataclass
class ModelJob:
    state: str  # reserved | lapsed | settled | released
    cost: int = 0
    holder: str = ""
    due: bool = False  # lease deadline passed: the next step touching the user reclaims it
    outcome: bytes | None = None
    charges: dict[str, int] = field(default_factory=dict)  # holder -> its call's charge
    snapshot: tuple[int, int, int] | None = None  # (limit, spent, reserved) at settle
    reserved_ever: bool = False  # it has a period to charge even without a budget


@dataclass
class ModelUser:
    limit: int | None = None  # None: no budget
    spent: int = 0
    reserved: int = 0
    jobs: dict[str, ModelJob] = field(default_factory=dict)
    # How far spent + reserved may exceed the limit, by the documented causes only: a
    # settle above its reservation, a settle of a job whose reservation was already
    # gone, a limit lowered below what is already spent or held.
    overshoot: int = 0

    def snapshot(self) -> tuple[int, int, int]:
        return (self.limit or 0, self.spent, self.reserved)


# What the model answers, in a form comparable with the ledger's answers.
Answer = tuple[Any, ...]


class LedgerModel:
    """The ledger's contract for one lifetime (``none``) period, in plain Python."""

    def __init__(self) -> None:
        self.users: dict[str, ModelUser] = {}

    def user(self, name: str) -> ModelUser:
        return self.users.setdefault(name, ModelUser())

    def touch(self, name: str) -> ModelUser:
        """Every ledger step starts by reclaiming the user's expired leases."""
        user = self.user(name)
        for job in user.jobs.values():
            if job.state == "reserved" and job.due:
                user.reserved -= job.cost
                job.state, job.due = "lapsed", False
        return user

    def set_budget(self, name: str, limit: int) -> None:
        user = self.touch(name)
        user.limit = limit
        user.overshoot = max(user.overshoot, user.spent + user.reserved - limit)

    def reserve(self, name: str, job_id: str, cost: int, holder: str) -> Answer:
        user = self.touch(name)
        job = user.jobs.get(job_id)
        if job is not None and job.state in ("settled", "released"):
            return ("finished", job.outcome, job.snapshot)
        if job is not None and job.state == "reserved":
            return ("reserved", True, job.holder, job.cost, user.snapshot())
        if user.limit is None:
            return ("no_budget",)
        if user.spent + user.reserved + cost > user.limit:
            return ("refused", "usd", max(0, user.limit - user.spent - user.reserved))
        user.reserved += cost
        job = user.jobs.setdefault(job_id, ModelJob("reserved"))
        job.state, job.cost, job.holder, job.due, job.reserved_ever = (
            "reserved",
            cost,
            holder,
            False,
            True,
        )
        return ("reserved", False, holder, cost, user.snapshot())

    def settle(self, name: str, job_id: str, holder: str, cost: int, outcome: bytes) -> Answer:
        """Each holder's call is charged once; only the live holder's reservation becomes
        spend, any other call is charged on its own."""
        user = self.touch(name)
        job = user.jobs.get(job_id)
        if job is not None and holder in job.charges:
            return (False, job.charges[holder], job.outcome, job.snapshot or (0, 0, 0))
        new = job is None
        job = user.jobs.setdefault(job_id, ModelJob("none"))
        own = job.holder == holder
        if job.state == "reserved" and own:
            user.reserved -= job.cost
            user.overshoot += max(0, cost - job.cost)
        else:
            user.overshoot += cost  # charged with no reservation of its own
        charged = user.limit is not None or job.reserved_ever
        if charged:
            user.spent += cost
        job.charges[holder] = cost
        job.outcome = job.outcome or outcome
        snapshot = user.snapshot() if charged else (user.limit or 0, 0, 0)
        if job.state != "reserved" or own:
            job.state, job.snapshot = "settled", snapshot
            if new:
                job.holder = holder
        return (True, cost, job.outcome, snapshot)

    def release(self, name: str, job_id: str, holder: str, outcome: bytes | None) -> bool:
        user = self.touch(name)
        job = user.jobs.get(job_id)
        if job is not None and job.state in ("settled", "released"):
            return False
        if job is not None and job.state == "reserved" and job.holder != holder:
            return False  # another holder's live reservation is never touched
        dropped = job is not None and job.state == "reserved"
        if job is not None and dropped:
            user.reserved -= job.cost
            job.state = "lapsed"
        if outcome is not None:
            job = user.jobs.setdefault(job_id, ModelJob("released"))
            job.state, job.outcome = "released", job.outcome or outcome
        return dropped

    def finish(self, name: str, job_id: str, outcome: bytes) -> Answer:
        user = self.touch(name)
        job = user.jobs.get(job_id)
        if job is not None and job.state == "reserved":
            return ("busy", job.holder)
        job = user.jobs.setdefault(job_id, ModelJob("released"))
        job.outcome = job.outcome or outcome
        if job.state == "settled":
            return ("finished", job.outcome, job.snapshot)
        job.state = "released"
        return ("finished", job.outcome, None)

    def expire(self, name: str, job_id: str, holder: str) -> bool:
        """extend(lease_ms=0): the lease falls due at once."""
        user = self.touch(name)
        job = user.jobs.get(job_id)
        if job is None or job.state != "reserved" or job.holder != holder:
            return False
        job.due = True
        return True

    def reset(self, name: str) -> bool:
        user = self.touch(name)
        if user.limit is None:
            return False
        user.spent = 0
        return True


# -- the real ledger, in the model's terms ---------------------------------------------------


def _snap(snapshot: PeriodSnapshot) -> tuple[int, int, int]:
    return (snapshot.limit_nanousd, snapshot.spent_nanousd, snapshot.reserved_nanousd)


def reserve_answer(result: ReserveResult) -> Answer:
    if isinstance(result, Reserved):
        return (
            "reserved",
            result.existing,
            result.holder,
            result.cost_nanousd,
            _snap(result.snapshot),
        )
    if isinstance(result, Refused):
        return ("refused", result.limit, result.remaining)
    if isinstance(result, NoBudget):
        return ("no_budget",)
    assert isinstance(result, Finished)
    return (
        "finished",
        result.outcome,
        None if result.snapshot is None else _snap(result.snapshot),
    )


def finish_answer(result: Finished | Busy) -> Answer:
    if isinstance(result, Busy):
        return ("busy", result.holder)
    snapshot = None if result.snapshot is None else _snap(result.snapshot)
    return ("finished", result.outcome, snapshot)


def settle_answer(result: Settled) -> Answer:
    return (result.first, result.charged_nanousd, result.outcome, _snap(result.snapshot))


# -- the state machine ------------------------------------------------------------------------

USERS = ["u0", "u:1", "{u2}"]  # the last one starts with no budget
HOLDERS = ["w1", "w2"]
users = st.sampled_from(USERS)
holders = st.sampled_from(HOLDERS)
costs = st.integers(0, 400) | st.sampled_from([0, 100, 500, 1000])
limits = st.sampled_from([0, 300, 500, 1000, 2000])
UserJob = tuple[str, str]
# A job no reserve has named: settles, releases and finishes of unknown jobs.
unknown_jobs = st.tuples(users, st.sampled_from(["ghost-1", "ghost-2"]))


class LedgerMachine(RuleBasedStateMachine):
    redis_url = ""  # set by the test
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.ledger = Ledger.from_url(self.redis_url)
        self.model = LedgerModel()
        self.prefix = uuid.uuid4().hex[:8] + "/"  # fresh users for every example
        self.next_job = 0
        self.redeliveries: list[tuple[str, tuple[Any, ...]]] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.ledger.close())
        self.loop.close()

    def real(self, user: str) -> str:
        return self.prefix + user

    def check_reserve(self, user: str, job: str, cost: int, holder: str) -> None:
        self.redeliveries.append(("reserve", (user, job, cost, holder)))
        result = self.run(
            self.ledger.reserve(
                self.real(user), job, cost_nanousd=cost, tokens=0, lease_ms=60_000, holder=holder
            )
        )
        assert reserve_answer(result) == self.model.reserve(user, job, cost, holder)

    def check_settle(self, user: str, job: str, holder: str, cost: int) -> None:
        outcome = f"settled {job} {holder} {cost}".encode()
        self.redeliveries.append(("settle", (user, job, holder, cost)))
        result = self.run(
            self.ledger.settle(
                self.real(user),
                job,
                holder=holder,
                cost_nanousd=cost,
                tokens=0,
                model="m",
                outcome=outcome,
            )
        )
        assert settle_answer(result) == self.model.settle(user, job, holder, cost, outcome)

    # -- steps --

    @initialize(first=limits, second=limits)
    def budgets(self, first: int, second: int) -> None:
        self.set_budget(USERS[0], first)
        self.set_budget(USERS[1], second)

    @rule(user=users, limit=limits)
    def set_budget(self, user: str, limit: int) -> None:
        self.run(self.ledger.set_budget(self.real(user), Budget(limit, "none")))
        self.model.set_budget(user, limit)

    @rule(target=jobs, user=users, cost=costs, holder=holders)
    def reserve_new_job(self, user: str, cost: int, holder: str) -> UserJob:
        job = f"j{self.next_job}"
        self.next_job += 1
        self.check_reserve(user, job, cost, holder)
        return (user, job)

    @rule(job=jobs, cost=costs, holder=holders)
    def reserve_known_job(self, job: UserJob, cost: int, holder: str) -> None:
        """A retry, another worker's redelivery, or a re-reserve after the lease lapsed."""
        self.check_reserve(*job, cost, holder)

    @rule(job=jobs | unknown_jobs, holder=holders, cost=costs)
    def settle(self, job: UserJob, holder: str, cost: int) -> None:
        """The holder's own settle, or a stale one (its lease lapsed, maybe re-reserved
        by the other holder)."""
        user, job_id = job
        self.check_settle(user, job_id, holder, cost)

    @rule(job=jobs | unknown_jobs, holder=holders, with_outcome=st.booleans())
    def release(self, job: UserJob, holder: str, with_outcome: bool) -> None:
        user, job_id = job
        outcome = f"released {job_id}".encode() if with_outcome else None
        got = self.run(self.ledger.release(self.real(user), job_id, holder=holder, outcome=outcome))
        assert got == self.model.release(user, job_id, holder, outcome)

    @rule(job=jobs | unknown_jobs)
    def finish(self, job: UserJob) -> None:
        user, job_id = job
        outcome = f"finished {job_id}".encode()
        got = self.run(self.ledger.finish(self.real(user), job_id, outcome=outcome))
        assert finish_answer(got) == self.model.finish(user, job_id, outcome)

    @rule(job=jobs, holder=holders)
    def expire(self, job: UserJob, holder: str) -> None:
        """The lease runs out (extend to zero: due at once)."""
        user, job_id = job
        got = self.run(self.ledger.extend(self.real(user), job_id, lease_ms=0, holder=holder))
        assert got == self.model.expire(user, job_id, holder)

    @rule(user=users)
    def reset(self, user: str) -> None:
        assert self.run(self.ledger.reset(self.real(user))) == self.model.reset(user)

    @precondition(lambda self: bool(self.redeliveries))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """The same reserve or settle again, as a redelivered message would send it."""
        kind, args = data.draw(st.sampled_from(self.redeliveries))
        if kind == "reserve":
            self.check_reserve(*args)
        else:
            self.check_settle(*args)

    # -- checks after every step --

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        for user in USERS:
            state = self.run(self.ledger.state(self.real(user)))
            model = self.model.touch(user)  # state() reclaims due leases too
            if model.limit is None:
                assert state is None
                continue
            assert state is not None
            assert _snap(state.snapshot) == model.snapshot()

    @invariant()
    def spend_stays_within_the_cap_but_for_documented_overshoot(self) -> None:
        for user in USERS:
            model = self.model.user(user)
            if model.limit is not None:
                assert model.spent + model.reserved <= model.limit + model.overshoot
                assert model.reserved >= 0


def test_ledger_agrees_with_the_reference_model(redis_url: str) -> None:
    class Machine(LedgerMachine):
        pass

    Machine.redis_url = redis_url
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=80,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_model_refuses_past_the_cap() -> None:
    """The oracle itself: a sanity check that it is not vacuous."""
    model = LedgerModel()
    model.set_budget("u", 100)
    assert model.reserve("u", "a", 60, "w")[0] == "reserved"
    assert model.reserve("u", "b", 60, "w") == ("refused", "usd", 40)
    model.expire("u", "a", "w")
    assert model.reserve("u", "b", 60, "w")[0] == "reserved"
    assert model.settle("u", "a", "w", 50, b"x")[:3] == (True, 50, b"x")
    assert model.user("u").snapshot() == (100, 50, 60)
