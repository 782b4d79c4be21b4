"""A reference model of scopes and credits, and a stateful property test that drives the
real Redis ledger and the model with the same random steps: reserves, settles (at, under
and over the estimate, and after the lease lapsed), releases, lease expiry, grants,
adjustments, limit changes, members moving between teams, and a clock that moves
(grants become effective and expire).

One organisation with two teams and three users, every period ``none``. After every
step: each scope's spent, reserved, drawn and usable credits agree with the model; the
credit balance equals the sum of the scope's entries; no scope's spend plus reservations
exceeds its cap (allowance plus usable credits) but by the documented overshoot. The
model charges a job to the path recorded at its reserve, so agreement also shows that a
reservation settles into the scopes it was made against.
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

from worker.ledger import Adjustment, Budget, Grant, Ledger, NoBudget, Refused, Reserved, Scope

T0 = 1_900_000_000_000
LEASE_MS = 60_000
USERS = ["u0", "u1", "u2"]
TEAMS = ["t1", "t2"]
ORG = "acme"
SCOPES = [("user", u) for u in USERS] + [("team", t) for t in TEAMS] + [("org", ORG)]
NEVER = float("inf")
ADJUST_PRIORITY = 2_147_483_647  # a positive adjustment draws last, never expires


@dataclass
class MGrant:
    remaining: int
    priority: int
    effective: int
    expires: int | None


@dataclass
class MScope:
    limit: int | None = None
    spent: int = 0
    reserved: int = 0
    drawn: int = 0
    grants: dict[str, MGrant] = field(default_factory=dict)
    entries: int = 0  # the sum of the entries' amounts
    overshoot: int = 0  # how far the cap may be passed, by the documented causes only

    def has_money(self) -> bool:
        return self.limit is not None or bool(self.grants)


@dataclass
class MJob:
    state: str  # reserved | lapsed | settled | released
    cost: int = 0
    path: list[tuple[str, str]] | None = None  # recorded at reserve
    deadline: int = 0
    charged: int | None = None


class ScopesModel:
    def __init__(self) -> None:
        self.now = T0
        self.scopes = {s: MScope() for s in SCOPES}
        self.team_of = {"u0": "t1", "u1": "t1", "u2": "t2"}
        self.jobs: dict[str, MJob] = {}

    def path(self, user: str) -> list[tuple[str, str]]:
        return [("user", user), ("team", self.team_of[user]), ("org", ORG)]

    def usable(self, s: MScope) -> list[tuple[str, MGrant]]:
        found = [
            (gid, g) for gid, g in s.grants.items() if g.remaining > 0 and g.effective <= self.now
        ]
        return sorted(
            found,
            key=lambda item: (
                item[1].priority,
                NEVER if item[1].expires is None else item[1].expires,
                item[0],
            ),
        )

    def credits(self, s: MScope) -> int:
        return sum(g.remaining for _, g in self.usable(s))

    def excess(self, s: MScope) -> int:
        """How far spend (beyond what credits paid) plus reservations pass the cap."""
        cap = (s.limit or 0) + self.credits(s)
        return (s.spent - s.drawn) + s.reserved - cap

    def mark_overshoot(self) -> None:
        """A cap lowered (limit, expiry, negative adjustment) may leave a scope past it."""
        for s in self.scopes.values():
            if s.has_money():
                s.overshoot = max(s.overshoot, self.excess(s))

    def touch(self) -> None:
        """Every step reclaims due leases and writes off expired grants."""
        for s in self.scopes.values():
            for g in s.grants.values():
                if g.expires is not None and g.expires <= self.now and g.remaining > 0:
                    s.entries -= g.remaining
                    g.remaining = 0
        for job in self.jobs.values():
            if job.state == "reserved" and job.deadline <= self.now:
                assert job.path is not None
                for name in job.path:
                    self.scopes[name].reserved -= job.cost
                job.state = "lapsed"
        self.mark_overshoot()

    def take(self, s: MScope, amount: int) -> int:
        taken = 0
        for _, g in self.usable(s):
            step = min(g.remaining, amount - taken)
            g.remaining -= step
            taken += step
        s.entries -= taken
        return taken

    def reserve(self, user: str, job_id: str, cost: int) -> tuple[Any, ...]:
        self.touch()
        job = self.jobs.get(job_id)
        if job is not None and job.state in ("settled", "released"):
            return ("finished",)
        if job is not None and job.state == "reserved":
            return ("reserved", True)
        path = self.path(user)
        if not any(self.scopes[name].has_money() for name in path):
            return ("no_budget",)
        for name in path:
            s = self.scopes[name]
            if s.has_money():
                room = (s.limit or 0) - (s.spent - s.drawn) + self.credits(s) - s.reserved
                if cost > room:
                    return ("refused", name, max(0, room))
        for name in path:
            self.scopes[name].reserved += cost
        self.jobs[job_id] = MJob("reserved", cost, path, self.now + LEASE_MS)
        return ("reserved", False)

    def settle(self, user: str, job_id: str, actual: int) -> tuple[bool, int]:
        self.touch()
        job = self.jobs.setdefault(job_id, MJob("none"))
        if job.charged is not None:
            return (False, job.charged)
        own = job.state == "reserved"
        path = job.path or self.path(user)
        for name in path:
            s = self.scopes[name]
            if own:
                s.reserved -= job.cost
            allowance = max(0, (s.limit or 0) - (s.spent - s.drawn))
            s.spent += actual
            if self.usable(s):
                s.drawn += self.take(s, actual - min(actual, allowance))
            s.overshoot += max(0, actual - job.cost) if own else actual
        job.state, job.charged, job.path = "settled", actual, path
        return (True, actual)

    def release(self, job_id: str, with_outcome: bool) -> bool:
        self.touch()
        job = self.jobs.get(job_id)
        if job is not None and job.state in ("settled", "released"):
            return False
        dropped = job is not None and job.state == "reserved"
        if job is not None and dropped:
            assert job.path is not None
            for name in job.path:
                self.scopes[name].reserved -= job.cost
            job.state = "lapsed"
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

    def grant(self, name: tuple[str, str], gid: str, g: MGrant) -> bool:
        self.touch()
        s = self.scopes[name]
        if gid in s.grants:
            return False
        s.grants[gid] = g
        s.entries += g.remaining
        return True

    def adjust(self, name: tuple[str, str], aid: str, amount: int) -> int:
        self.touch()
        s = self.scopes[name]
        if amount > 0:
            s.grants["adjust:" + aid] = MGrant(amount, ADJUST_PRIORITY, 0, None)
            s.entries += amount
            return amount
        applied = -self.take(s, -amount)
        self.mark_overshoot()
        return applied


limits = st.sampled_from([None, 0, 300, 1000, 3000])
costs = st.integers(0, 500)
actuals = st.integers(0, 600)
scopes = st.sampled_from(SCOPES)


class ScopesMachine(RuleBasedStateMachine):
    redis_url = ""
    cluster = False
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.model = ScopesModel()
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

    def scope(self, name: tuple[str, str]) -> Scope:
        kind, ident = name
        return Scope(kind, self.prefix + ident)  # type: ignore[arg-type]

    def fresh(self, kind: str) -> str:
        self.next_id += 1
        return f"{kind}{self.next_id}"

    @initialize(user_limits=st.lists(limits, min_size=3, max_size=3), team=limits, org=limits)
    def world(self, user_limits: list[int | None], team: int | None, org: int | None) -> None:
        for t in TEAMS:
            self.run(self.ledger.create_team(self.prefix + t, self.prefix + ORG))
        for user, limit in zip(USERS, user_limits, strict=True):
            self.run(
                self.ledger.set_membership(
                    self.prefix + user, team=self.prefix + self.model.team_of[user]
                )
            )
            self.set_limit(("user", user), limit)
        self.set_limit(("team", "t1"), team)
        self.set_limit(("org", ORG), org)

    @rule(name=scopes, limit=limits)
    def set_limit(self, name: tuple[str, str], limit: int | None) -> None:
        self.run(self.ledger.set_budget(self.scope(name), Budget(limit, "none")))
        self.model.touch()
        self.model.scopes[name].limit = limit
        self.model.mark_overshoot()

    @rule(target=jobs, user=st.sampled_from(USERS), cost=costs)
    def reserve_new(self, user: str, cost: int) -> tuple[str, str]:
        job = self.fresh("j")
        self.check_reserve(user, job, cost)
        return (user, job)

    @rule(job=jobs, cost=costs)
    def reserve_again(self, job: tuple[str, str], cost: int) -> None:
        self.check_reserve(*job, cost)

    def check_reserve(self, user: str, job: str, cost: int) -> None:
        got = self.run(
            self.ledger.reserve(
                self.prefix + user,
                job,
                cost_nanousd=cost,
                tokens=0,
                lease_ms=LEASE_MS,
                holder="w1",
                model="m",
            )
        )
        want = self.model.reserve(user, job, cost)
        if isinstance(got, Reserved):
            assert want == ("reserved", got.existing)
        elif isinstance(got, Refused):
            assert want[0] == "refused", want
            assert (got.scope, got.remaining) == (str(self.scope(want[1])), want[2])
        elif isinstance(got, NoBudget):
            assert want == ("no_budget",)
        else:
            assert want == ("finished",)

    @rule(job=jobs, actual=actuals)
    def settle(self, job: tuple[str, str], actual: int) -> None:
        user, job_id = job
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
    def release(self, job: tuple[str, str], with_outcome: bool) -> None:
        user, job_id = job
        outcome = b"released" if with_outcome else None
        got = self.run(
            self.ledger.release(self.prefix + user, job_id, holder="w1", outcome=outcome)
        )
        assert got == self.model.release(job_id, with_outcome)

    @rule(job=jobs)
    def expire(self, job: tuple[str, str]) -> None:
        user, job_id = job
        got = self.run(self.ledger.extend(self.prefix + user, job_id, lease_ms=0, holder="w1"))
        assert got == self.model.expire(job_id)

    @rule(
        name=scopes,
        amount=st.integers(1, 800),
        priority=st.integers(0, 2),
        starts_in=st.sampled_from([0, 0, 5_000]),
        lasts=st.sampled_from([None, 1_000, 30_000, 120_000]),
    )
    def grant(
        self, name: tuple[str, str], amount: int, priority: int, starts_in: int, lasts: int | None
    ) -> None:
        gid = self.fresh("g")
        effective = self.model.now + starts_in
        expires = None if lasts is None else self.model.now + lasts
        created, _ = self.run(
            self.ledger.grant(
                self.scope(name),
                Grant(gid, amount, priority=priority, effective_ms=effective, expires_ms=expires),
            )
        )
        assert created == self.model.grant(name, gid, MGrant(amount, priority, effective, expires))
        # The same grant again, as a retried call sends it: nothing changes.
        again, _ = self.run(self.ledger.grant(self.scope(name), Grant(gid, amount)))
        assert not again and not self.model.grant(name, gid, MGrant(amount, 0, 0, None))

    @rule(name=scopes, amount=st.integers(-900, 500).filter(bool))
    def adjust(self, name: tuple[str, str], amount: int) -> None:
        aid = self.fresh("a")
        got = self.run(self.ledger.adjust(self.scope(name), aid, amount))
        assert got.created and got.amount_nanousd == amount
        assert got.applied_nanousd == self.model.adjust(name, aid, amount)
        again = self.run(self.ledger.adjust(self.scope(name), aid, amount))
        assert again == Adjustment(False, got.applied_nanousd, amount)

    @rule(user=st.sampled_from(USERS), team=st.sampled_from(TEAMS))
    def move(self, user: str, team: str) -> None:
        """A member changes teams with jobs in flight: they settle where they were made."""
        self.run(self.ledger.set_membership(self.prefix + user, team=self.prefix + team))
        self.model.touch()
        self.model.team_of[user] = team

    @rule(ms=st.sampled_from([1_000, 5_000, 30_000, 61_000]))
    def advance(self, ms: int) -> None:
        self.model.now += ms

    # -- after every step --

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        self.model.touch()  # state() reclaims and writes off, too
        for name in SCOPES:
            state = self.run(self.ledger.state(self.scope(name)))
            s = self.model.scopes[name]
            if state is None:
                assert name[0] == "user" and not s.has_money() and self.model.credits(s) == 0
                continue
            got = (
                state.snapshot.spent_nanousd,
                state.snapshot.reserved_nanousd,
                state.drawn_nanousd,
                state.credits_nanousd,
            )
            assert got == (s.spent, s.reserved, s.drawn, self.model.credits(s)), name

    @invariant()
    def balance_equals_the_sum_of_entries(self) -> None:
        for name in SCOPES:
            entries = []
            while True:
                page = self.run(self.ledger.history(self.scope(name), len(entries), 1000))
                entries += page
                if len(page) < 1000:
                    break
            grants = self.run(self.ledger.grants(self.scope(name)))
            balance = sum(g.remaining_nanousd or 0 for g in grants)
            assert (
                sum(e.amount_nanousd for e in entries) == balance == self.model.scopes[name].entries
            )
            assert len({e.id for e in entries}) == len(entries)  # every entry once

    @invariant()
    def no_scope_passes_its_cap_but_by_documented_overshoot(self) -> None:
        for s in self.model.scopes.values():
            assert s.reserved >= 0
            if s.has_money():
                assert self.model.excess(s) <= s.overshoot


@pytest.mark.parametrize("server", ["redis", "cluster"])
def test_scopes_and_credits_agree_with_the_reference_model(
    server: str, request: pytest.FixtureRequest
) -> None:
    """On a single Redis, and (fewer examples) on the real Cluster, where the org's keys
    and the users' own slots live on different nodes."""

    class Machine(ScopesMachine):
        pass

    if server == "redis":
        Machine.redis_url = request.getfixturevalue("redis_url")
    else:
        Machine.redis_url = request.getfixturevalue("redis_cluster").url
        Machine.cluster = True
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40 if server == "redis" else 12,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_scopes_model_refuses_at_the_tightest_scope() -> None:
    """The oracle itself is not vacuous."""
    model = ScopesModel()
    model.scopes[("user", "u0")].limit = 1000
    model.scopes[("team", "t1")].limit = 500
    assert model.reserve("u0", "a", 400) == ("reserved", False)
    assert model.reserve("u1", "b", 200) == ("refused", ("team", "t1"), 100)
    model.scopes[("team", "t1")].grants["g"] = MGrant(100, 0, T0, T0 + 10)
    assert model.reserve("u1", "b", 200) == ("reserved", False)
    assert model.settle("u0", "a", 500) == (True, 500)
    assert model.scopes[("team", "t1")].drawn == 0  # allowance 500 covered it
    model.now += 10
    assert model.reserve("u1", "c", 1)[0] == "refused"
