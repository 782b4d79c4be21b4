"""Per-run budgets against the real Redis and the real Redis Cluster: a run's cap is held
out of its user's, team's and organisation's budgets by its first job, all of the run's
jobs reserve against it, and what is unused flows back when the run is closed or its
expiry passes. Concurrent jobs of one run never exceed its cap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support import Clock, ledger_on
from worker.ledger import (
    Budget,
    JobsInFlight,
    Ledger,
    Refused,
    Reserved,
    ReserveResult,
    RunRequest,
    Scope,
)

T0 = 1_900_000_000_000 + 12 * 3_600_000  # a fixed clock (ms): 2030-03-17, mid-day
USD = 1_000_000_000


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(params=["redis", "cluster"])
async def ledger(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Ledger]:
    async with ledger_on(request, clock) as book:
        yield book


@pytest.fixture
def ids() -> str:
    return uuid.uuid4().hex[:8]


def run(run_id: str, cap: int = USD, ttl_s: int = 600) -> RunRequest:
    return RunRequest(id=run_id, cap_nanousd=cap, ttl_s=ttl_s)


async def reserve(
    ledger: Ledger,
    user: str,
    job: str,
    cost: int,
    the_run: RunRequest | None,
    *,
    holder: str = "w1",
    lease_ms: int = 60_000,
) -> ReserveResult:
    return await ledger.reserve(
        user,
        job,
        cost_nanousd=cost,
        tokens=0,
        lease_ms=lease_ms,
        holder=holder,
        model="gpt-x",
        run=the_run,
    )


async def settle(ledger: Ledger, user: str, job: str, cost: int, holder: str = "w1") -> None:
    await ledger.settle(
        user, job, holder=holder, cost_nanousd=cost, tokens=0, model="gpt-x", outcome=b"ok"
    )


async def money(ledger: Ledger, scope: Scope | str) -> tuple[int, int]:
    """(spent, reserved) of the scope's current period."""
    state = await ledger.state(scope)
    assert state is not None, scope
    return state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd


async def test_the_first_job_carves_the_cap_and_the_run_answers_its_own_snapshot(
    ledger: Ledger, ids: str
) -> None:
    user = f"{ids}-u"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    first = await reserve(ledger, user, f"{ids}-j1", USD // 10, run(f"{ids}-r", cap=2 * USD))
    assert isinstance(first, Reserved)
    # The snapshot is the run's: its cap, less what this job holds.
    assert first.snapshot.limit_nanousd == 2 * USD
    assert first.snapshot.remaining_nanousd == 2 * USD - USD // 10
    # The user holds the whole cap, not the job's estimate.
    assert await money(ledger, user) == (0, 2 * USD)
    state = await ledger.run_state(user, f"{ids}-r")
    assert state is not None
    assert (state.state, state.hold_nanousd, state.reserved_nanousd) == ("open", 2 * USD, USD // 10)
    assert state.label == f"run:{user}/{ids}-r"


async def test_settles_move_the_hold_into_spent_and_close_gives_the_rest_back(
    ledger: Ledger, ids: str
) -> None:
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    the_run = run(run_id, cap=3 * USD)
    assert isinstance(await reserve(ledger, user, f"{ids}-j1", USD, the_run), Reserved)
    await settle(ledger, user, f"{ids}-j1", USD // 2)
    assert await money(ledger, user) == (USD // 2, 3 * USD - USD // 2)
    assert isinstance(await reserve(ledger, user, f"{ids}-j2", USD, the_run), Reserved)
    # Closing with a job in flight: only what that job holds stays held.
    closed = await ledger.close_run(user, run_id)
    assert closed is not None and closed.state == "closed"
    assert closed.hold_nanousd == USD
    assert await money(ledger, user) == (USD // 2, USD)
    refused = await reserve(ledger, user, f"{ids}-j3", 1, the_run)
    assert isinstance(refused, Refused)
    assert refused.scope == f"run:{user}/{run_id}" and refused.retry_after_ms is None
    assert refused.run_closed
    await settle(ledger, user, f"{ids}-j2", USD // 4)
    done = await ledger.run_state(user, run_id)
    assert done is not None and done.state == "done" and done.hold_nanousd == 0
    assert done.spent_nanousd == USD // 2 + USD // 4
    assert await money(ledger, user) == (USD // 2 + USD // 4, 0)


async def test_a_run_whose_cap_does_not_fit_is_refused_by_the_scope_that_cannot_hold_it(
    ledger: Ledger, ids: str
) -> None:
    user, team, org = f"{ids}-u", f"{ids}-t", f"{ids}-o"
    await ledger.create_team(team, org)
    await ledger.set_budget(Scope("team", team), Budget(2 * USD, "daily"))
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    await ledger.set_membership(user, team=team)
    refused = await reserve(ledger, user, f"{ids}-j1", 1, run(f"{ids}-r", cap=3 * USD))
    assert isinstance(refused, Refused)
    assert refused.scope == f"team:{team}" and refused.limit == "usd"
    assert refused.remaining == 2 * USD
    # Nothing changed: no run, nothing held anywhere.
    assert await ledger.run_state(user, f"{ids}-r") is None
    assert await money(ledger, user) == (0, 0)
    assert await money(ledger, Scope("team", team)) == (0, 0)
    fits = await reserve(ledger, user, f"{ids}-j1", 1, run(f"{ids}-r", cap=2 * USD))
    assert isinstance(fits, Reserved)
    for scope in (user, Scope("team", team)):
        assert await money(ledger, scope) == (0, 2 * USD)
    # The hold is money the team's other members cannot take.
    other = f"{ids}-v"
    await ledger.set_budget(other, Budget(10 * USD, "daily"))
    await ledger.set_membership(other, team=team)
    blocked = await reserve(ledger, other, f"{ids}-k1", 1, None)
    assert isinstance(blocked, Refused) and blocked.scope == f"team:{team}"


async def test_the_expiry_closes_the_run_and_the_unused_hold_flows_back(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    the_run = run(run_id, cap=2 * USD, ttl_s=60)
    assert isinstance(await reserve(ledger, user, f"{ids}-j1", USD, the_run), Reserved)
    await settle(ledger, user, f"{ids}-j1", USD // 5)
    clock.now_ms += 61_000
    # Any step in the slot closes a run that is due; this one reads the user.
    assert await money(ledger, user) == (USD // 5, 0)
    state = await ledger.run_state(user, run_id)
    assert state is not None and state.state == "done"
    late = await reserve(ledger, user, f"{ids}-j2", 1, the_run)
    assert isinstance(late, Refused) and late.scope == f"run:{user}/{run_id}" and late.run_closed


async def test_a_lapsed_lease_of_a_closed_run_ends_it(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    the_run = run(run_id, cap=2 * USD)
    reply = await reserve(ledger, user, f"{ids}-j1", USD, the_run, lease_ms=1000)
    assert isinstance(reply, Reserved)
    await ledger.close_run(user, run_id)
    assert await money(ledger, user) == (0, USD)
    clock.now_ms += 2000  # the lease lapses: its job gives its hold up
    assert await money(ledger, user) == (0, 0)
    state = await ledger.run_state(user, run_id)
    assert state is not None and state.state == "done"
    # A late settle of the lapsed call is still charged, once, to the user.
    await settle(ledger, user, f"{ids}-j1", USD // 3)
    await settle(ledger, user, f"{ids}-j1", USD // 3)
    assert await money(ledger, user) == (USD // 3, 0)


async def test_a_release_gives_the_run_its_room_back_and_keeps_the_hold(
    ledger: Ledger, ids: str
) -> None:
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    the_run = run(run_id, cap=USD)
    assert isinstance(await reserve(ledger, user, f"{ids}-j1", USD, the_run), Reserved)
    full = await reserve(ledger, user, f"{ids}-j2", 1, the_run)
    assert isinstance(full, Refused) and not full.run_closed and full.remaining == 0
    assert await ledger.release(user, f"{ids}-j1", holder="w1", outcome=b"failed")
    assert await money(ledger, user) == (0, USD)
    assert isinstance(await reserve(ledger, user, f"{ids}-j2", USD, the_run), Reserved)


async def test_an_open_run_keeps_its_user_in_place(ledger: Ledger, ids: str) -> None:
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    assert isinstance(await reserve(ledger, user, f"{ids}-j1", 1, run(run_id)), Reserved)
    await settle(ledger, user, f"{ids}-j1", 1)
    await ledger.create_team(f"{ids}-t", f"{ids}-o")
    with pytest.raises(JobsInFlight):
        await ledger.set_membership(user, team=f"{ids}-t")
    await ledger.close_run(user, run_id)
    await ledger.set_membership(user, team=f"{ids}-t")
    assert await money(ledger, user) == (1, 0)


async def test_concurrent_jobs_of_one_run_never_exceed_its_cap(ledger: Ledger, ids: str) -> None:
    """200 jobs of 0.01 USD race for a 0.5 USD run inside a 100 USD budget; each one
    admitted is charged its full estimate. Exactly 50 fit; the run never holds more than
    its cap, and the user is charged what the run spent."""
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(100 * USD, "daily"))
    cost, cap = USD // 100, USD // 2
    the_run = run(run_id, cap=cap)

    async def job(i: int) -> bool:
        reply = await reserve(ledger, user, f"{ids}-j{i}", cost, the_run, holder=f"h{i}")
        if not isinstance(reply, Reserved):
            return False
        assert reply.snapshot.reserved_nanousd + reply.snapshot.spent_nanousd <= cap
        await settle(ledger, user, f"{ids}-j{i}", cost, holder=f"h{i}")
        return True

    admitted = await asyncio.gather(*(job(i) for i in range(200)))
    assert sum(admitted) == cap // cost
    state = await ledger.run_state(user, run_id)
    assert state is not None
    assert state.spent_nanousd == cap and state.reserved_nanousd == 0 and state.hold_nanousd == 0
    assert await money(ledger, user) == (cap, 0)


async def test_closing_a_run_whose_hold_late_settles_ate_keeps_what_is_left(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    """A late settle of a lapsed job takes from the hold, so the hold can end below what
    the run's live jobs reserve; closing then gives nothing back, and the last settle
    takes what is left and charges the rest (the documented late-settle overshoot)."""
    user, run_id = f"{ids}-u", f"{ids}-r"
    await ledger.set_budget(user, Budget(10 * USD, "daily"))
    the_run = run(run_id, cap=1000)
    assert isinstance(
        await reserve(ledger, user, f"{ids}-a", 500, the_run, lease_ms=1000), Reserved
    )
    assert isinstance(await reserve(ledger, user, f"{ids}-b", 400, the_run), Reserved)
    clock.now_ms += 2000  # a's lease lapses
    await settle(ledger, user, f"{ids}-a", 900)  # late: hold 1000 -> 100
    state = await ledger.close_run(user, run_id)
    assert state is not None
    assert (state.state, state.hold_nanousd, state.reserved_nanousd) == ("closed", 100, 400)
    assert await money(ledger, user) == (900, 100)
    await settle(ledger, user, f"{ids}-b", 400)
    done = await ledger.run_state(user, run_id)
    assert done is not None and (done.state, done.hold_nanousd, done.spent_nanousd) == (
        "done",
        0,
        1300,
    )
    assert await money(ledger, user) == (1300, 0)


async def test_a_runs_jobs_take_and_settle_their_users_tpm(ledger: Ledger, ids: str) -> None:
    """The hold covers USD only: each job of a run still takes the user's TPM at reserve
    and settles it to the actual tokens (a refund when fewer were used)."""
    user, the_run = f"{ids}-u", run(f"{ids}-r", cap=USD)
    await ledger.set_budget(user, Budget(10 * USD, "daily", tpm=100))

    async def job(n: int, tokens: int) -> ReserveResult:
        return await ledger.reserve(
            user,
            f"{ids}-{n}",
            cost_nanousd=1,
            tokens=tokens,
            lease_ms=60_000,
            holder="w1",
            model="gpt-x",
            run=the_run,
        )

    assert isinstance(await job(1, 80), Reserved)
    refused = await job(2, 80)
    assert isinstance(refused, Refused) and (refused.limit, refused.scope) == (
        "tpm",
        f"user:{user}",
    )
    await ledger.settle(
        user, f"{ids}-1", holder="w1", cost_nanousd=1, tokens=10, model="gpt-x", outcome=b"ok"
    )
    assert isinstance(await job(3, 80), Reserved)  # 10 used + 80 fits in 100
