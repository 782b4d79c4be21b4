"""A reference model of per-run budgets, and a stateful property test that drives the
real Redis ledger and the model with the same random steps: plain jobs and jobs of runs
(new runs and later jobs, some over the cap), settles (under, at and over the estimate,
and late settles of lapsed or released jobs), releases, lease lapses, a clock that moves
(runs expire), closing runs by hand, credits on the organisation, a member moving
between its team and the organisation directly, and users trying to leave the slot
(refused while a live job or a run not yet done holds them).

One organisation, one team, two users, every period ``none``. After every step: each
scope's spent, reserved, drawn and credits, and each run's state, spent, reserved, hold
and live jobs agree with the model; no scope and no run passes its cap but by the
documented overshoot (settles above the estimate, late settles). The model is written
from the semantics of runs, not from the scripts, so agreement checks both.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from worker.ledger import (
    Budget,
    Grant,
    JobsInFlight,
    Ledger,
    NoBudget,
    Refused,
    Reserved,
    RunRequest,
    Scope,
)

T0 = 1_900_000_000_000
LEASE_MS = 60_000
USERS = ["u0", "u1"]  # u0 in the team; u1 in the team or directly in the organisation
TEAM = "t"
ORG = "acme"
RUNS = ["r0", "r1", "r2"]
SCOPES = [("user", u) for u in USERS] + [("team", TEAM), ("org", ORG)]

Name = tuple[str, str]
RunKey = tuple[str, str]  # (user, run id)


@dataclass
class MScope:
    limit: int | None = None
    spent: int = 0
    reserved: int = 0
    drawn: int = 0
    grants: dict[str, int] = field(default_factory=dict)  # id -> remaining
    overshoot: int = 0  # how far the cap may be passed, by the documented causes only

    def has_money(self) -> bool:
        return self.limit is not None or bool(self.grants)

    def credits(self) -> int:
        return sum(self.grants.values())

    def room(self) -> int:
        return (self.limit or 0) - (self.spent - self.drawn) + self.credits() - self.reserved


@dataclass
class MRun:
    cap: int
    expires: int
    hold_path: list[Name]
    state: str = "open"  # open | closed | done
    spent: int = 0
    reserved: int = 0
    hold: int = 0
    overshoot: int = 0


@dataclass
class MJob:
    state: str  # none | reserved | lapsed | settled | released
    cost: int = 0
    path: list[Name] | None = None  # a plain job's scopes, recorded at reserve
    run: RunKey | None = None  # a run's job: charged through the run
    deadline: int = 0
    charged: int | None = None


class RunsModel:
    def __init__(self) -> None:
        self.now = T0
        self.scopes = {s: MScope() for s in SCOPES}
        self.in_team = {"u0": True, "u1": False}
        self.runs: dict[RunKey, MRun] = {}
        self.jobs: dict[str, MJob] = {}

    def path(self, user: str) -> list[Name]:
        if self.in_team[user]:
            return [("user", user), ("team", TEAM), ("org", ORG)]
        return [("user", user), ("org", ORG)]

    def live(self, key: RunKey) -> int:
        return sum(1 for j in self.jobs.values() if j.state == "reserved" and j.run == key)

    def pinned(self, user: str) -> bool:
        """A live plain job, or a run not done, keeps the user in its slot."""
        plain = any(
            j.state == "reserved" and j.path is not None and j.path[0] == ("user", user)
            for j in self.jobs.values()
        )
        return plain or any(k[0] == user and r.state != "done" for k, r in self.runs.items())

    # -- runs --

    def unhold(self, run: MRun, amount: int) -> None:
        for name in run.hold_path:
            self.scopes[name].reserved -= amount
        run.hold -= amount

    def close(self, key: RunKey) -> None:
        run = self.runs[key]
        if run.state != "open":
            return
        run.state = "closed"
        if run.hold > run.reserved:
            self.unhold(run, run.hold - run.reserved)
        self.job_ended(key)

    def job_ended(self, key: RunKey) -> None:
        run = self.runs[key]
        if run.state == "closed" and self.live(key) == 0:
            self.unhold(run, run.hold)
            run.state = "done"

    def drop(self, job: MJob) -> None:
        """A live reservation given up (release, lapse): nothing charged."""
        job.state = "lapsed"
        if job.run is not None:
            self.runs[job.run].reserved -= job.cost
            self.job_ended(job.run)
        else:
            assert job.path is not None
            for name in job.path:
                self.scopes[name].reserved -= job.cost

    def touch(self) -> None:
        """Every script reclaims due leases, then closes the runs due."""
        for job in self.jobs.values():
            if job.state == "reserved" and job.deadline <= self.now:
                self.drop(job)
        for key, run in self.runs.items():
            if run.state == "open" and run.expires <= self.now:
                self.close(key)

    # -- money --

    def charge(self, s: MScope, amount: int) -> None:
        allowance = max(0, (s.limit or 0) - (s.spent - s.drawn))
        s.spent += amount
        want = amount - min(amount, allowance)
        for gid in sorted(s.grants):
            step = min(s.grants[gid], want)
            s.grants[gid] -= step
            s.drawn += step
            want -= step

    def refusal(self, path: list[Name], amount: int) -> tuple[Any, ...] | None:
        for name in path:
            s = self.scopes[name]
            if s.has_money() and amount > s.room():
                return ("refused", name, max(0, s.room()))
        return None

    # -- steps --

    def reserve(self, user: str, job_id: str, cost: int, run: RunRequest | None) -> tuple[Any, ...]:
        self.touch()
        job = self.jobs.get(job_id)
        if job is not None and job.state in ("settled", "released"):
            return ("finished",)
        if job is not None and job.state == "reserved":
            return ("reserved", True)
        path = self.path(user)
        if not any(self.scopes[name].has_money() for name in path):
            return ("no_budget",)
        deadline = self.now + LEASE_MS
        if run is None:
            refused = self.refusal(path, cost)
            if refused:
                return refused
            for name in path:
                self.scopes[name].reserved += cost
            self.jobs[job_id] = MJob("reserved", cost, path=path, deadline=deadline)
            return ("reserved", False)
        return self.reserve_in_run(user, job_id, cost, run, path, deadline)

    def reserve_in_run(
        self, user: str, job_id: str, cost: int, run: RunRequest, path: list[Name], deadline: int
    ) -> tuple[Any, ...]:
        """A new run's first job carves the cap from every scope on the path; later jobs
        answer to the run alone."""
        key = (user, run.id)
        found = self.runs.get(key)
        if found is not None and found.state != "open":
            return ("refused", key, 0)
        if found is None:
            if cost > run.cap_nanousd:
                return ("refused", key, run.cap_nanousd)
            refused = self.refusal(path, run.cap_nanousd)
            if refused:
                return refused
            found = MRun(run.cap_nanousd, self.now + run.ttl_s * 1000, path, hold=run.cap_nanousd)
            for name in path:
                self.scopes[name].reserved += run.cap_nanousd
            self.runs[key] = found
        else:
            room = found.cap - found.spent - found.reserved
            if cost > room:
                return ("refused", key, max(0, room))
        found.reserved += cost
        self.jobs[job_id] = MJob("reserved", cost, run=key, deadline=deadline)
        return ("reserved", False)

    def settle(self, user: str, job_id: str, actual: int) -> tuple[bool, int]:
        self.touch()
        job = self.jobs.setdefault(job_id, MJob("none"))
        if job.charged is not None:
            return (False, job.charged)
        own = job.state == "reserved"
        over = max(0, actual - job.cost) if own else actual
        if job.run is not None:
            run = self.runs[job.run]
            if own:
                run.reserved -= job.cost
            run.spent += actual
            run.overshoot += over
            take = min(actual, run.hold)
            for name in run.hold_path:
                s = self.scopes[name]
                s.reserved -= take
                self.charge(s, actual)
                s.overshoot += over
            run.hold -= take
            job.state, job.charged = "settled", actual
            if own:
                self.job_ended(job.run)
            return (True, actual)
        path = job.path or self.path(user)
        for name in path:
            s = self.scopes[name]
            if own:
                s.reserved -= job.cost
            self.charge(s, actual)
            s.overshoot += over
        job.state, job.charged, job.path = "settled", actual, path
        return (True, actual)

    def release(self, job_id: str, with_outcome: bool) -> bool:
        self.touch()
        job = self.jobs.get(job_id)
        if job is not None and job.state in ("settled", "released"):
            return False
        dropped = job is not None and job.state == "reserved"
        if job is not None and dropped:
            self.drop(job)
        if with_outcome:
            self.jobs.setdefault(job_id, MJob("released")).state = "released"
        return dropped

    def expire(self, job_id: str) -> bool:
        self.touch()
        job = self.jobs.get(job_id)
        if job is None or job.state != "reserved":
            return False
        job.deadline = self.now
        return True

    def close_run(self, key: RunKey) -> MRun | None:
        self.touch()
        if key not in self.runs:
            return None
        self.close(key)
        return self.runs[key]


limits = st.sampled_from([None, 0, 1000, 3000, 8000])
user_limits = st.sampled_from([None, 1000, 3000, 8000])
costs = st.integers(0, 500)
actuals = st.integers(0, 700)
caps = st.integers(1, 1000)
ttls = st.sampled_from([30, 300, 3600])
users = st.sampled_from(USERS)
runs = st.sampled_from(RUNS)


class RunsMachine(RuleBasedStateMachine):
    redis_url = ""
    cluster = False
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.model = RunsModel()
        self.ledger = Ledger.from_url(
            self.redis_url, cluster=self.cluster, clock_ms=lambda: self.model.now
        )
        self.prefix = uuid.uuid4().hex[:8] + "/"
        self.next_id = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.ledger.close())
        self.loop.close()

    def scope(self, name: Name) -> Scope:
        kind, ident = name
        return Scope(kind, self.prefix + ident)  # type: ignore[arg-type]

    def label(self, name: Name | RunKey) -> str:
        if name[0] in USERS:
            return f"run:{self.prefix}{name[0]}/{name[1]}"
        return str(self.scope(name))

    def fresh(self, kind: str) -> str:
        self.next_id += 1
        return f"{kind}{self.next_id}"

    @initialize(
        user_limits=st.lists(user_limits, min_size=2, max_size=2),
        team=limits,
        org=limits,
        u1_in_team=st.booleans(),
    )
    def world(
        self, user_limits: list[int | None], team: int | None, org: int | None, u1_in_team: bool
    ) -> None:
        self.run(self.ledger.create_team(self.prefix + TEAM, self.prefix + ORG))
        self.run(self.ledger.set_membership(self.prefix + "u0", team=self.prefix + TEAM))
        self.join(u1_in_team)
        for user, limit in zip(USERS, user_limits, strict=True):
            self.set_limit(("user", user), limit)
        self.set_limit(("team", TEAM), team)
        self.set_limit(("org", ORG), org)

    def set_limit(self, name: Name, limit: int | None) -> None:
        self.run(self.ledger.set_budget(self.scope(name), Budget(limit, "none")))
        self.model.touch()
        s = self.model.scopes[name]
        s.limit = limit
        s.overshoot = max(s.overshoot, -s.room())  # a cap set below what is held

    @rule(in_team=st.booleans())
    def join(self, in_team: bool) -> None:
        """u1 changes between the team and the organisation directly (one slot): its
        runs keep the scopes their hold was carved from."""
        if in_team:
            self.run(self.ledger.set_membership(self.prefix + "u1", team=self.prefix + TEAM))
        else:
            self.run(self.ledger.set_membership(self.prefix + "u1", org=self.prefix + ORG))
        self.model.touch()
        self.model.in_team["u1"] = in_team

    @rule(target=jobs, user=users, cost=costs)
    def reserve_plain(self, user: str, cost: int) -> tuple[str, str, RunRequest | None]:
        job = self.fresh("j")
        self.check_reserve(user, job, cost, None)
        return (user, job, None)

    @rule(target=jobs, user=users, run_id=runs, cap=caps, cost=costs, ttl=ttls)
    def reserve_in_run(
        self, user: str, run_id: str, cap: int, cost: int, ttl: int
    ) -> tuple[str, str, RunRequest | None]:
        """A new run's first job (its cap and ttl hold), or a later job (they do not)."""
        job = self.fresh("j")
        request = RunRequest(id=run_id, cap_nanousd=cap, ttl_s=ttl)
        self.check_reserve(user, job, cost, request)
        return (user, job, request)

    @rule(job=jobs, cost=costs)
    def reserve_again(self, job: tuple[str, str, RunRequest | None], cost: int) -> None:
        """A redelivery: the same job and run again (a lapsed job reserves afresh)."""
        self.check_reserve(job[0], job[1], cost, job[2])

    def check_reserve(self, user: str, job: str, cost: int, request: RunRequest | None) -> None:
        got = self.run(
            self.ledger.reserve(
                self.prefix + user,
                job,
                cost_nanousd=cost,
                tokens=0,
                lease_ms=LEASE_MS,
                holder="w1",
                model="m",
                run=request,
            )
        )
        want = self.model.reserve(user, job, cost, request)
        if isinstance(got, Reserved):
            assert want == ("reserved", got.existing), want
            if request is not None and not got.existing:
                run = self.model.runs[(user, request.id)]
                snap = got.snapshot  # a run's job answers the run's snapshot
                assert (snap.limit_nanousd, snap.spent_nanousd, snap.reserved_nanousd) == (
                    run.cap,
                    run.spent,
                    run.reserved,
                )
        elif isinstance(got, Refused):
            assert want[0] == "refused", (want, got)
            assert (got.scope, got.remaining) == (self.label(want[1]), want[2]), (want, got)
            assert got.limit == "usd" and got.retry_after_ms is None
        elif isinstance(got, NoBudget):
            assert want == ("no_budget",), want
        else:
            assert want == ("finished",), (want, got)

    @rule(job=jobs, data=st.data())
    def settle(self, job: tuple[str, str, RunRequest | None], data: st.DataObject) -> None:
        """Under, at or over the estimate; after a lapse or release, a late settle."""
        user, job_id, _ = job
        known = self.model.jobs.get(job_id)
        estimate = known.cost if known is not None else 0
        actual = data.draw(
            st.one_of(st.just(estimate), st.integers(0, estimate), actuals), label="actual"
        )
        got = self.run(
            self.ledger.settle(
                self.prefix + user,
                job_id,
                holder="w1",
                cost_nanousd=actual,
                tokens=0,
                model="m",
                outcome=b"ok",
            )
        )
        assert (got.first, got.charged_nanousd) == self.model.settle(user, job_id, actual)

    @rule(job=jobs, with_outcome=st.booleans())
    def release(self, job: tuple[str, str, RunRequest | None], with_outcome: bool) -> None:
        user, job_id, _ = job
        outcome = b"released" if with_outcome else None
        got = self.run(
            self.ledger.release(self.prefix + user, job_id, holder="w1", outcome=outcome)
        )
        assert got == self.model.release(job_id, with_outcome)

    @rule(job=jobs)
    def lapse(self, job: tuple[str, str, RunRequest | None]) -> None:
        """The lease falls due now: the next script reclaims it."""
        user, job_id, _ = job
        got = self.run(self.ledger.extend(self.prefix + user, job_id, lease_ms=0, holder="w1"))
        assert got == self.model.expire(job_id)

    @rule(ms=st.sampled_from([1_000, 15_000, 61_000, 200_000]))
    def advance(self, ms: int) -> None:
        self.model.now += ms

    @rule(user=users, run_id=runs)
    def close_run(self, user: str, run_id: str) -> None:
        got = self.run(self.ledger.close_run(self.prefix + user, run_id))
        want = self.model.close_run((user, run_id))
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert got.state == want.state and got.hold_nanousd == want.hold

    @rule(amount=st.integers(1, 800))
    def grant(self, amount: int) -> None:
        """Credits on the organisation: drawn when its allowance is used up."""
        gid = self.fresh("g")
        created, _ = self.run(self.ledger.grant(self.scope(("org", ORG)), Grant(gid, amount)))
        assert created
        self.model.touch()
        org = self.model.scopes[("org", ORG)]
        gains_money = not org.has_money()
        org.grants[gid] = amount
        if gains_money:
            # A scope that capped nothing held what it was asked (a run's hold with no
            # check): its first credits may find it past its new cap.
            org.overshoot = max(org.overshoot, -org.room())

    @rule(user=users)
    def move_away(self, user: str) -> None:
        """A user with a live job or a run not done cannot leave the slot; one with
        neither can (and comes back: what it spent comes with it, its runs stay)."""
        self.model.touch()
        leave = self.ledger.set_membership(self.prefix + user, org=self.prefix + "other")
        if self.model.pinned(user):
            with pytest.raises(JobsInFlight):
                self.run(leave)
            return
        self.run(leave)
        if self.model.in_team[user]:
            self.run(self.ledger.set_membership(self.prefix + user, team=self.prefix + TEAM))
        else:
            self.run(self.ledger.set_membership(self.prefix + user, org=self.prefix + ORG))

    # -- after every step --

    @invariant()
    def scopes_agree_with_the_model(self) -> None:
        self.model.touch()  # state() reclaims leases and closes runs due, too
        for name in SCOPES:
            state = self.run(self.ledger.state(self.scope(name)))
            s = self.model.scopes[name]
            if state is None:
                assert name[0] == "user" and not s.has_money(), name
                continue
            got = (
                state.snapshot.spent_nanousd,
                state.snapshot.reserved_nanousd,
                state.drawn_nanousd,
                state.credits_nanousd,
            )
            assert got == (s.spent, s.reserved, s.drawn, s.credits()), name

    @invariant()
    def runs_agree_with_the_model(self) -> None:
        self.model.touch()  # run_state() reclaims and closes too, whichever check runs first
        for user in USERS:
            for run_id in RUNS:
                got = self.run(self.ledger.run_state(self.prefix + user, run_id))
                want = self.model.runs.get((user, run_id))
                if want is None:
                    assert got is None, (user, run_id)
                    continue
                assert got is not None, (user, run_id)
                assert got.label == self.label((user, run_id))
                assert (
                    got.state,
                    got.cap_nanousd,
                    got.spent_nanousd,
                    got.reserved_nanousd,
                    got.hold_nanousd,
                    got.live_jobs,
                ) == (
                    want.state,
                    want.cap,
                    want.spent,
                    want.reserved,
                    want.hold,
                    self.model.live((user, run_id)),
                ), (user, run_id)

    @invariant()
    def nothing_passes_its_cap_but_by_documented_overshoot(self) -> None:
        self.model.touch()
        for s in self.model.scopes.values():
            assert s.reserved >= 0
            if s.has_money():
                assert -s.room() <= s.overshoot
        for run in self.model.runs.values():
            assert run.reserved >= 0 and run.hold >= 0
            assert run.spent + run.reserved - run.cap <= run.overshoot
            if run.state == "done":
                assert run.hold == 0


@pytest.mark.parametrize("server", ["redis", "cluster"])
def test_runs_agree_with_the_reference_model(server: str, request: pytest.FixtureRequest) -> None:
    """On a single Redis, and (fewer examples) on the real Cluster."""

    class Machine(RunsMachine):
        pass

    if server == "redis":
        Machine.redis_url = request.getfixturevalue("redis_url")
    else:
        Machine.redis_url = request.getfixturevalue("redis_cluster").url
        Machine.cluster = True
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=150 if server == "redis" else 60,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_runs_model_holds_the_cap_and_gives_it_back() -> None:
    """The oracle itself is not vacuous."""
    model = RunsModel()
    model.scopes[("user", "u0")].limit = 1000
    model.scopes[("team", TEAM)].limit = 600
    big = RunRequest(id="r0", cap_nanousd=700)
    assert model.reserve("u0", "a", 10, big) == ("refused", ("team", TEAM), 600)
    assert model.runs == {}
    fits = RunRequest(id="r0", cap_nanousd=500)
    assert model.reserve("u0", "a", 600, fits) == ("refused", ("u0", "r0"), 500)
    assert model.reserve("u0", "a", 300, fits) == ("reserved", False)
    assert model.scopes[("team", TEAM)].reserved == 500
    assert model.reserve("u0", "b", 300, fits) == ("refused", ("u0", "r0"), 200)
    assert model.settle("u0", "a", 100) == (True, 100)
    assert model.scopes[("team", TEAM)].reserved == 400
    assert model.reserve("u0", "b", 300, fits) == ("reserved", False)
    model.close_run(("u0", "r0"))
    assert model.scopes[("team", TEAM)].reserved == 300  # what job b holds
    assert model.release("b", True)
    assert model.runs[("u0", "r0")].state == "done"
    assert model.scopes[("team", TEAM)].reserved == 0
