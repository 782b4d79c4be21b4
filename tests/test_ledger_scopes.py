"""Scopes and credits against the real Redis and the real Redis Cluster: every limit on a
job's path (user, its limit on the model, team, organisation) in one step, all or
nothing; settle and release moving every scope; membership and limits changed while
jobs are in flight; grants, draws, expiries and adjustments as entries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support import Clock, ledger_on
from worker.errors import LimitReached, NoBudgetRecord, ScopeConflict, UnknownScope
from worker.ledger import (
    Adjustment,
    Budget,
    Finished,
    Grant,
    JobsInFlight,
    Ledger,
    Membership,
    NoBudget,
    Refused,
    Reserved,
    ReserveResult,
    Scope,
    Settled,
)

T0 = 1_900_000_000_000  # a fixed clock (ms): 2030-03-17, mid-day


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 12 * 3_600_000)


@pytest.fixture(params=["redis", "cluster"])
async def ledger(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Ledger]:
    async with ledger_on(request, clock) as book:
        yield book


@pytest.fixture
def ids() -> str:
    """A prefix that keeps each test's ids apart on the shared Cluster."""
    return uuid.uuid4().hex[:8]


async def reserve(
    ledger: Ledger, user: str, job: str, cost: int, *, model: str = "gpt-x", tokens: int = 0
) -> ReserveResult:
    return await ledger.reserve(
        user, job, cost_nanousd=cost, tokens=tokens, lease_ms=60_000, holder="w1", model=model
    )


async def settle(ledger: Ledger, user: str, job: str, cost: int, model: str = "gpt-x") -> Settled:
    return await ledger.settle(
        user, job, holder="w1", cost_nanousd=cost, tokens=0, model=model, outcome=b"ok"
    )


async def money(ledger: Ledger, scope: Scope | str) -> tuple[int, int]:
    """(spent, reserved) of the scope's current period."""
    state = await ledger.state(scope)
    assert state is not None, scope
    return state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd


async def org_of_two(ledger: Ledger, ids: str) -> tuple[Scope, Scope, Scope, str, str]:
    """An org with team eng (limit 1000 a day) and users alice and bob (800 each)."""
    org, team = Scope("org", f"{ids}-acme"), Scope("team", f"{ids}-eng")
    alice, bob = f"{ids}:alice", f"{ids}:bob"
    await ledger.create_team(team.id, org.id)
    await ledger.set_budget(team, Budget(1000, "daily"))
    for user in (alice, bob):
        await ledger.set_budget(user, Budget(800, "daily"))
        await ledger.set_membership(user, team=team.id)
    return org, team, Scope("user", alice), alice, bob


# -- all or nothing -----------------------------------------------------------------------


async def test_a_team_budget_refuses_a_member_who_has_room_of_their_own(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    _, team, _, alice, bob = await org_of_two(ledger, ids)
    assert isinstance(await reserve(ledger, alice, "j1", 600), Reserved)
    refused = await reserve(ledger, bob, "j2", 600)
    assert isinstance(refused, Refused)
    assert (refused.scope, refused.limit, refused.remaining) == (str(team), "usd", 400)
    day_end = (clock.now_ms // 86_400_000 + 1) * 86_400_000
    assert refused.retry_after_ms == day_end - clock.now_ms
    assert refused.snapshot.limit_nanousd == 1000 and refused.snapshot.remaining_nanousd == 400
    # Nothing changed anywhere on bob's path.
    assert await money(ledger, bob) == (0, 0)
    assert await money(ledger, team) == (0, 600)


async def test_an_org_limit_refuses_across_its_teams(ledger: Ledger, ids: str) -> None:
    org, _, _, alice, _ = await org_of_two(ledger, ids)
    await ledger.set_budget(org, Budget(700, "none"))
    other = Scope("team", f"{ids}-ops")
    await ledger.create_team(other.id, org.id)
    carol = f"{ids}:carol"
    await ledger.set_budget(carol, Budget(800, "daily"))
    await ledger.set_membership(carol, team=other.id)
    assert isinstance(await reserve(ledger, alice, "j1", 500), Reserved)
    refused = await reserve(ledger, carol, "j2", 300)
    assert isinstance(refused, Refused)
    assert (refused.scope, refused.remaining, refused.retry_after_ms) == (str(org), 200, None)
    assert await money(ledger, other) == (0, 0)


async def test_settle_and_release_move_every_scope_on_the_path(ledger: Ledger, ids: str) -> None:
    org, team, alice_scope, alice, _ = await org_of_two(ledger, ids)
    await ledger.set_budget(org, Budget(5000, "daily"))
    await reserve(ledger, alice, "j1", 400)
    await reserve(ledger, alice, "j2", 300)
    for scope in (alice_scope, team, org):
        assert await money(ledger, scope) == (0, 700)
    settled = await settle(ledger, alice, "j1", 250)
    assert settled.first and settled.snapshot.spent_nanousd == 250
    assert await ledger.release(alice, "j2", holder="w1", outcome=b"failed")
    for scope in (alice_scope, team, org):
        assert await money(ledger, scope) == (250, 0)
    state = await ledger.state(team)
    assert state is not None and state.model_spend_nanousd == {"gpt-x": 250}


async def test_a_per_model_limit_applies_to_that_model_only(ledger: Ledger, ids: str) -> None:
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(1000, "daily"))
    await ledger.set_model_budget(alice, "big-model", Budget(300, "daily"))
    refused = await reserve(ledger, alice, "j1", 400, model="big-model")
    assert isinstance(refused, Refused)
    assert refused.scope == f"model:{alice}/big-model" and refused.remaining == 300
    assert isinstance(await reserve(ledger, alice, "j2", 400, model="small-model"), Reserved)
    assert isinstance(await reserve(ledger, alice, "j3", 200, model="big-model"), Reserved)
    await settle(ledger, alice, "j3", 200, model="big-model")
    assert await money(ledger, alice) == (200, 400)


async def test_a_team_rate_limit_refuses_with_its_wait(ledger: Ledger, ids: str) -> None:
    _, team, _, alice, bob = await org_of_two(ledger, ids)
    await ledger.set_budget(team, Budget(10_000, "daily", rpm=1))
    assert isinstance(await reserve(ledger, alice, "j1", 1), Reserved)
    refused = await reserve(ledger, bob, "j2", 1)
    assert isinstance(refused, Refused)
    assert (refused.scope, refused.limit, refused.remaining) == (str(team), "rpm", 0)
    assert refused.retry_after_ms == 60_000  # the clock stands still: one full minute


async def test_a_member_without_a_budget_of_their_own_spends_on_the_team(
    ledger: Ledger, ids: str
) -> None:
    _, team, _, _, _ = await org_of_two(ledger, ids)
    dave = f"{ids}:dave"
    assert isinstance(await reserve(ledger, dave, "j0", 1), NoBudget)
    await ledger.set_membership(dave, team=team.id)
    assert isinstance(await reserve(ledger, dave, "j1", 900), Reserved)
    refused = await reserve(ledger, dave, "j2", 200)
    assert isinstance(refused, Refused) and refused.scope == str(team)


# -- changes while jobs are in flight -------------------------------------------------------


async def test_a_reservation_settles_into_the_team_it_was_made_against(
    ledger: Ledger, ids: str
) -> None:
    org, team, _, alice, _ = await org_of_two(ledger, ids)
    ops = Scope("team", f"{ids}-ops")
    await ledger.create_team(ops.id, org.id)
    await ledger.set_budget(ops, Budget(1000, "daily"))
    await reserve(ledger, alice, "j1", 500)
    await ledger.set_membership(alice, team=ops.id)  # same org: allowed in flight
    await reserve(ledger, alice, "j2", 100)
    await settle(ledger, alice, "j1", 400)
    await settle(ledger, alice, "j2", 50)
    assert await money(ledger, team) == (400, 0)
    assert await money(ledger, ops) == (50, 0)
    assert await money(ledger, alice) == (450, 0)


async def test_a_period_changed_in_flight_gives_the_reservation_back_where_it_was_held(
    ledger: Ledger, ids: str
) -> None:
    _, team, _, alice, _ = await org_of_two(ledger, ids)
    await reserve(ledger, alice, "j1", 500)
    await ledger.set_budget(team, Budget(1000, "none"))
    assert await money(ledger, team) == (0, 0)  # the new period holds nothing yet
    await reserve(ledger, alice, "j2", 900)
    await settle(ledger, alice, "j1", 300)
    await ledger.release(alice, "j2", holder="w1")
    assert await money(ledger, team) == (0, 0)
    # The daily period the first job was reserved in received its charge.
    await ledger.set_budget(team, Budget(1000, "daily"))
    assert await money(ledger, team) == (300, 0)


async def test_a_user_moves_to_another_org_only_without_jobs_in_flight(
    ledger: Ledger, ids: str
) -> None:
    _, _, _, alice, _ = await org_of_two(ledger, ids)
    elsewhere = Scope("team", f"{ids}-far")
    await ledger.create_team(elsewhere.id, f"{ids}-other-org")
    await ledger.grant(alice, Grant(f"{ids}-g1", 500))
    await reserve(ledger, alice, "j1", 1000)
    with pytest.raises(JobsInFlight):
        await ledger.set_membership(alice, team=elsewhere.id)
    await settle(ledger, alice, "j1", 1000)
    await ledger.set_membership(alice, team=elsewhere.id)
    state = await ledger.state(alice)
    assert state is not None and state.team == elsewhere.id
    assert state.org == f"{ids}-other-org"
    # Spend, credits and their history moved with the user.
    assert (state.snapshot.spent_nanousd, state.credits_nanousd) == (1000, 300)
    assert sum(e.amount_nanousd for e in await ledger.history(alice)) == 300
    # A job after the move counts in the new org's scopes, and still sees its spend.
    refused = await reserve(ledger, alice, "j2", 400)
    assert isinstance(refused, Refused) and refused.remaining == 300
    assert isinstance(await reserve(ledger, alice, "j3", 300), Reserved)


# -- credits ------------------------------------------------------------------------------


async def test_a_pure_prepaid_scope_spends_its_grants_and_then_refuses(
    ledger: Ledger, ids: str
) -> None:
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(None, "none"))
    assert isinstance(await reserve(ledger, alice, "j0", 1), NoBudget)
    await ledger.grant(alice, Grant(f"{ids}-g1", 1000))
    assert isinstance(await reserve(ledger, alice, "j1", 700), Reserved)
    refused = await reserve(ledger, alice, "j2", 400)
    assert isinstance(refused, Refused) and refused.remaining == 300
    await settle(ledger, alice, "j1", 600)
    state = await ledger.state(alice)
    assert state is not None and (state.credits_nanousd, state.drawn_nanousd) == (400, 600)


async def test_the_period_allowance_is_spent_before_credits(ledger: Ledger, ids: str) -> None:
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(500, "daily"))
    await ledger.grant(alice, Grant(f"{ids}-g1", 1000))
    await reserve(ledger, alice, "j1", 1500)
    await settle(ledger, alice, "j1", 800)
    state = await ledger.state(alice)
    assert state is not None
    assert (state.snapshot.spent_nanousd, state.drawn_nanousd, state.credits_nanousd) == (
        800,
        300,
        700,
    )
    assert state.snapshot.remaining_nanousd == 700


async def test_grants_draw_by_priority_then_earliest_expiry(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(None, "none"))
    later, sooner = clock.now_ms + 10_000, clock.now_ms + 5_000
    await ledger.grant(alice, Grant("late", 100, priority=1, expires_ms=sooner))
    await ledger.grant(alice, Grant("never", 100, priority=0))
    await ledger.grant(alice, Grant("later", 100, priority=0, expires_ms=later))
    await ledger.grant(alice, Grant("sooner", 100, priority=0, expires_ms=sooner))
    await reserve(ledger, alice, "j1", 350)
    await settle(ledger, alice, "j1", 350)
    draws = [(e.grant, e.amount_nanousd) for e in await ledger.history(alice) if e.kind == "draw"]
    assert draws == [("sooner", -100), ("later", -100), ("never", -100), ("late", -50)]


async def test_an_expired_grant_s_rest_is_gone(ledger: Ledger, ids: str, clock: Clock) -> None:
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(None, "none"))
    await ledger.grant(alice, Grant("trial", 1000, expires_ms=clock.now_ms + 60_000))
    await ledger.grant(alice, Grant("later", 200, effective_ms=clock.now_ms + 120_000))
    await reserve(ledger, alice, "j1", 300)
    await settle(ledger, alice, "j1", 300)
    clock.now_ms += 60_000
    refused = await reserve(ledger, alice, "j2", 1)
    assert isinstance(refused, Refused) and refused.remaining == 0
    entries = await ledger.history(alice)
    assert [(e.kind, e.grant, e.amount_nanousd) for e in entries][-1] == ("expiry", "trial", -700)
    clock.now_ms += 60_000  # "later" becomes usable
    assert isinstance(await reserve(ledger, alice, "j3", 200), Reserved)


async def test_grants_and_adjustments_are_idempotent_by_id(ledger: Ledger, ids: str) -> None:
    team = Scope("team", f"{ids}-eng")
    await ledger.create_team(team.id, f"{ids}-acme")
    created, first = await ledger.grant(team, Grant("topup-1", 1000, priority=2))
    again, second = await ledger.grant(team, Grant("topup-1", 5000))
    assert created and not again and second == first and first.remaining_nanousd == 1000
    assert await ledger.adjust(team, "fix-1", -300, note="refund reversed") == Adjustment(
        True, -300, -300
    )
    assert await ledger.adjust(team, "fix-1", -300) == Adjustment(False, -300, -300)
    # A reused id answers the stored adjustment, asked amount included; nothing changes.
    assert await ledger.adjust(team, "fix-1", 999) == Adjustment(False, -300, -300)
    assert await ledger.adjust(team, "fix-2", 50) == Adjustment(True, 50, 50)
    state = await ledger.state(team)
    assert state is not None and state.credits_nanousd == 750
    entries = await ledger.history(team)
    assert [(e.kind, e.amount_nanousd) for e in entries] == [
        ("grant", 1000),
        ("adjust", -300),
        ("adjust", 50),
    ]
    assert sum(e.amount_nanousd for e in entries) == state.credits_nanousd
    assert len({e.id for e in entries}) == len(entries)


async def test_team_credits_admit_members_past_the_team_allowance(ledger: Ledger, ids: str) -> None:
    _, team, _, alice, bob = await org_of_two(ledger, ids)
    await ledger.grant(team, Grant(f"{ids}-g", 400))
    await reserve(ledger, alice, "j1", 800)
    assert isinstance(await reserve(ledger, bob, "j2", 600), Reserved)
    await settle(ledger, alice, "j1", 800)
    await settle(ledger, bob, "j2", 500)
    state = await ledger.state(team)
    assert state is not None
    assert (state.snapshot.spent_nanousd, state.drawn_nanousd, state.credits_nanousd) == (
        1300,
        300,
        100,
    )


async def test_scopes_are_listed_page_by_page(ledger: Ledger, ids: str) -> None:
    teams = {f"{ids}-team-{i}" for i in range(5)}
    for team in teams:
        await ledger.create_team(team, f"{ids}-acme")
    found: set[str] = set()
    cursor = None
    for _ in range(100):
        page = await ledger.list_scopes("team", cursor, count=2)
        found |= set(page.items)
        cursor = page.cursor
        if cursor is None:
            break
    assert teams <= found
    orgs: set[str] = set()
    cursor = None
    for _ in range(100):
        page = await ledger.list_scopes("org", cursor, count=1000)
        orgs |= set(page.items)
        cursor = page.cursor
        if cursor is None:
            break
    assert f"{ids}-acme" in orgs
    with pytest.raises(ValueError):
        await ledger.list_scopes("galaxy")


async def test_a_process_with_a_stale_directory_follows_a_user_who_moved(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    other = Ledger(ledger.conn.client, clock_ms=clock)  # its own directory cache
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(1000, "none"))
    assert isinstance(await reserve(other, alice, "j0", 100), Reserved)  # caches the slot
    await settle(other, alice, "j0", 100)
    await ledger.create_team(f"{ids}-eng", f"{ids}-acme")
    await ledger.set_membership(alice, team=f"{ids}-eng")
    # The stale process's refusal, reserve and release all land in the new slot.
    finished = await other.finish(alice, "j1", outcome=b"refused")
    assert finished.outcome == b"refused"
    again = await ledger.reserve(
        alice, "j1", cost_nanousd=1, tokens=0, lease_ms=60_000, holder="w2"
    )
    assert isinstance(again, Finished) and again.outcome == b"refused"
    assert isinstance(await reserve(other, alice, "j2", 300), Reserved)
    assert await other.release(alice, "j2", holder="w1", outcome=b"failed")
    assert await money(ledger, alice) == (100, 0)
    assert await money(ledger, Scope("team", f"{ids}-eng")) == (0, 0)


async def test_a_job_that_ended_before_its_user_moved_is_final_after_the_move(
    ledger: Ledger, ids: str
) -> None:
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(1000, "none"))
    await reserve(ledger, alice, "j1", 300)
    settled = await settle(ledger, alice, "j1", 200)
    await ledger.finish(alice, "j2", outcome=b"refused")
    await ledger.create_team(f"{ids}-eng", f"{ids}-acme")
    await ledger.set_membership(alice, team=f"{ids}-eng")
    # Redelivered after the move: answered from the old slot, never run or charged again.
    assert await reserve(ledger, alice, "j1", 300) == Finished(b"ok", settled.snapshot)
    assert await reserve(ledger, alice, "j2", 300) == Finished(b"refused", None)
    assert isinstance(await reserve(ledger, alice, "j3", 300), Reserved)
    assert await money(ledger, alice) == (200, 300)
    assert await money(ledger, Scope("team", f"{ids}-eng")) == (0, 300)


async def test_a_debit_takes_what_the_credits_hold_and_remembers_what_it_asked(
    ledger: Ledger, ids: str
) -> None:
    user = f"{ids}:alice"
    await ledger.set_budget(user, Budget(None, "none"))
    await ledger.grant(user, Grant("g", 300))
    assert await ledger.adjust(user, "debit", -500) == Adjustment(True, -300, -500)
    assert await ledger.adjust(user, "debit", -300) == Adjustment(False, -300, -500)


async def test_an_adjustment_stored_without_its_asked_amount_still_answers(
    ledger: Ledger, ids: str
) -> None:
    """Adjustments stored before asked amounts were kept hold only what was applied."""
    user = f"{ids}:alice"
    await ledger.set_budget(user, Budget(None, "none"))
    await ledger.grant(user, Grant("g", 300))
    await ledger.adjust(user, "credit", 70)
    await ledger.adjust(user, "debit", -500)
    slot = await ledger.slot_of(user)
    key = slot.user(user) + "adjusted"
    await ledger.conn.command("HSET", key, "credit", "70", "debit", "-300")
    assert await ledger.adjust(user, "credit", 70) == Adjustment(False, 70, 70)
    assert await ledger.adjust(user, "debit", -500) == Adjustment(False, -300, None)


# -- typed refusals -----------------------------------------------------------------------


async def test_each_refusal_is_a_typed_value_error_naming_its_scope(
    ledger: Ledger, ids: str
) -> None:
    team, org = f"{ids}-eng", f"{ids}-acme"
    with pytest.raises(UnknownScope) as unknown:
        await ledger.set_membership(f"{ids}:alice", team=team)
    assert (unknown.value.kind, unknown.value.name) == ("team", team)
    with pytest.raises(UnknownScope):
        await ledger.set_budget(Scope("team", team), Budget(1000))
    with pytest.raises(NoBudgetRecord) as no_record:
        await ledger.grant(f"{ids}:alice", Grant("g", 1))
    assert (no_record.value.kind, no_record.value.name) == ("user", f"{ids}:alice")
    with pytest.raises(NoBudgetRecord):
        await ledger.adjust(f"{ids}:alice", "a", 1)
    await ledger.create_team(team, org)
    with pytest.raises(ScopeConflict) as conflict:
        await ledger.create_team(team, f"{ids}-other")
    assert (conflict.value.kind, conflict.value.name) == ("org", f"{ids}-other")
    for i in range(100):
        await ledger.grant(Scope("team", team), Grant(f"g{i}", 1))
    with pytest.raises(LimitReached):
        await ledger.grant(Scope("team", team), Grant("one-more", 1))
    with pytest.raises(ValueError):  # what callers of earlier versions caught
        await ledger.create_team(team, f"{ids}-other")


# -- membership reads and member listings -------------------------------------------------


async def test_membership_is_read_without_a_budget_or_credits(ledger: Ledger, ids: str) -> None:
    team, org = f"{ids}-eng", f"{ids}-acme"
    await ledger.create_team(team, org)
    await ledger.set_membership(f"{ids}:alice", team=team)
    await ledger.set_membership(f"{ids}:bob", org=org)
    await ledger.set_budget(f"{ids}:carol", Budget(10))
    assert await ledger.state(f"{ids}:alice") is None  # no budget of its own
    assert await ledger.membership(f"{ids}:alice") == Membership(team, org)
    assert await ledger.membership(f"{ids}:bob") == Membership(None, org)
    assert await ledger.membership(f"{ids}:carol") == Membership(None, None)
    assert await ledger.membership(f"{ids}:nobody") is None
    await ledger.set_membership(f"{ids}:alice")
    assert await ledger.membership(f"{ids}:alice") == Membership(None, None)


async def test_membership_read_by_a_stale_process_follows_the_move(
    ledger: Ledger, ids: str, clock: Clock
) -> None:
    other = Ledger(ledger.conn.client, clock_ms=clock)
    alice = f"{ids}:alice"
    await ledger.set_budget(alice, Budget(10))
    assert await other.membership(alice) == Membership(None, None)  # caches the slot
    await ledger.create_team(f"{ids}-eng", f"{ids}-acme")
    await ledger.set_membership(alice, team=f"{ids}-eng")
    assert await other.membership(alice) == Membership(f"{ids}-eng", f"{ids}-acme")


async def all_members(ledger: Ledger, scope: Scope, count: int = 2) -> list[str]:
    found: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await ledger.members(scope, cursor, count)
        found += page.items
        cursor = page.cursor
        if cursor is None:
            return sorted(found)
    raise AssertionError("the listing never ended")


async def test_members_follow_every_change_of_membership(ledger: Ledger, ids: str) -> None:
    org, eng, ops = (
        Scope("org", f"{ids}-acme"),
        Scope("team", f"{ids}-eng"),
        Scope("team", f"{ids}-ops"),
    )
    far = Scope("team", f"{ids}-far")
    await ledger.create_team(eng.id, org.id)
    await ledger.create_team(ops.id, org.id)
    await ledger.create_team(far.id, f"{ids}-other")
    users = [f"{ids}:u{i}" for i in range(5)]
    for user in users:
        await ledger.set_membership(user, team=eng.id)
    assert await all_members(ledger, eng) == sorted(users)
    await ledger.set_membership(users[0], team=ops.id)  # within the org: one step
    await ledger.set_membership(users[1], org=org.id)  # out of the team, still in the org
    await ledger.set_membership(users[2], team=far.id)  # to another org: a move
    await ledger.set_membership(users[3])  # out of every org: a move to its own slot
    await ledger.set_membership(users[4], team=eng.id)  # again: no change
    assert await all_members(ledger, eng) == [users[4]]
    assert await all_members(ledger, ops) == [users[0]]
    assert await all_members(ledger, org) == [users[1]]
    assert await all_members(ledger, far) == [users[2]]
    await ledger.set_membership(users[2], team=eng.id)  # and back
    assert await all_members(ledger, eng) == sorted([users[2], users[4]])
    assert await all_members(ledger, far) == []


async def test_members_of_an_unknown_team_or_org_are_refused(ledger: Ledger, ids: str) -> None:
    with pytest.raises(UnknownScope):
        await ledger.members(Scope("team", f"{ids}-nope"))
    with pytest.raises(UnknownScope):
        await ledger.members(Scope("org", f"{ids}-nope"))
    with pytest.raises(ValueError):
        await ledger.members(Scope("user", f"{ids}:alice"))


async def test_member_ids_are_stored_encoded_in_the_org_slot(ledger: Ledger, ids: str) -> None:
    from worker import keys

    team, odd = Scope("team", f"{ids}-eng"), f"{ids}:{{u:x}} a\nb"
    await ledger.create_team(team.id, f"{ids}-acme")
    await ledger.set_membership(odd, team=team.id)
    slot = keys.org_slot(keys.encode_id(f"{ids}-acme"))
    index = keys.members(slot.team(team.id))
    assert index.startswith(slot.prefix)  # the org's hash tag: one Cluster slot
    fields = await ledger.conn.command("HKEYS", index)
    assert fields == [keys.encode_id(odd).encode()]
    assert (await ledger.members(team)).items == [odd]
