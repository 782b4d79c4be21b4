"""The same ledger, unchanged, on a real three-node Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from worker import keys
from worker.dev.servers import EmbeddedRedisCluster
from worker.ledger import Budget, Finished, LeaseRef, Ledger, Refused, Reserved


@pytest.fixture
def node_clients(redis_cluster: EmbeddedRedisCluster) -> Iterator[dict[int, redis.Redis]]:
    clients = {node.port: redis.Redis.from_url(node.url) for node in redis_cluster.nodes}
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()


@pytest.fixture
async def ledger(redis_cluster: EmbeddedRedisCluster) -> AsyncIterator[Ledger]:
    ledger = Ledger.from_url(redis_cluster.url, cluster=True)
    try:
        yield ledger
    finally:
        await ledger.close()


def owner_port(clients: dict[int, redis.Redis], key: str) -> int:
    """The port of the node that serves ``key``'s slot."""
    any_client = next(iter(clients.values()))
    slot = int(any_client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
    slots = any_client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    for start, end, primary, *_ in slots:
        if start <= slot <= end:
            return int(primary[1])
    raise AssertionError(f"no node serves slot {slot}")


def users_on_every_node(clients: dict[int, redis.Redis], count_per_node: int = 2) -> list[str]:
    run = uuid.uuid4().hex[:8]
    found: dict[int, list[str]] = {port: [] for port in clients}
    i = 0
    while any(len(users) < count_per_node for users in found.values()):
        user = f"{run}:user{{{i}}}\n"  # hostile on purpose: ':', braces, newline
        port = owner_port(clients, keys.user_keys(user).budget)
        if len(found[port]) < count_per_node:
            found[port].append(user)
        i += 1
    return [user for users in found.values() for user in users]


async def exercise_every_path(ledger: Ledger, user: str) -> None:
    await ledger.set_budget(user, Budget(1000, "daily", rpm=100, tpm=10_000))
    assert await ledger.get_budget(user) == Budget(1000, "daily", rpm=100, tpm=10_000)

    first = await ledger.reserve(
        user, "j1", cost_nanousd=400, tokens=50, lease_ms=60_000, holder="w"
    )
    again = await ledger.reserve(
        user, "j1", cost_nanousd=400, tokens=50, lease_ms=60_000, holder="w"
    )
    assert isinstance(first, Reserved) and isinstance(again, Reserved) and again.existing
    assert await ledger.extend(user, "j1", lease_ms=120_000, holder="w")
    settled = await ledger.settle(
        user, "j1", holder="w", cost_nanousd=300, tokens=20, model="gpt-x", outcome=b"done"
    )
    assert settled.first and settled.snapshot.spent_nanousd == 300
    assert await ledger.reserve(
        user, "j1", cost_nanousd=1, tokens=1, lease_ms=60_000, holder="w"
    ) == Finished(b"done", settled.snapshot)

    assert isinstance(
        await ledger.reserve(user, "j2", cost_nanousd=500, tokens=1, lease_ms=60_000, holder="w"),
        Reserved,
    )
    assert isinstance(
        await ledger.reserve(user, "j3", cost_nanousd=500, tokens=1, lease_ms=60_000, holder="w"),
        Refused,
    )
    assert await ledger.finish(user, "j3", outcome=b"refused") == Finished(b"refused", None)
    assert await ledger.release(user, "j2", holder="w", outcome=b"failed")

    state = await ledger.state(user)
    assert state is not None
    assert (state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd) == (300, 0)
    assert state.model_spend_nanousd == {"gpt-x": 300}
    assert await ledger.reset(user)
    state = await ledger.state(user)
    assert state is not None and state.snapshot.spent_nanousd == 0


async def test_every_path_works_for_users_on_all_three_nodes(
    ledger: Ledger, node_clients: dict[int, redis.Redis]
) -> None:
    users = users_on_every_node(node_clients)
    for user in users:
        await exercise_every_path(ledger, user)
    listed = await ledger.list_users()
    assert set(users) <= set(listed)
    assert await ledger.delete(users[0])
    assert users[0] not in await ledger.list_users()


async def test_all_keys_of_a_user_live_on_the_node_that_owns_its_tag(
    ledger: Ledger, node_clients: dict[int, redis.Redis]
) -> None:
    for user in users_on_every_node(node_clients, count_per_node=1):
        await exercise_every_path(ledger, user)
        tag = keys.user_keys(user).tag
        pattern = f"bw:{tag}:*".replace("{", "\\{").replace("}", "\\}")
        owner = owner_port(node_clients, keys.user_keys(user).budget)
        for port, client in node_clients.items():
            found = list(client.scan_iter(match=pattern, count=1000))
            if port == owner:
                assert len(found) >= 5  # budget, spend, job records, outcomes, buckets
            else:
                assert found == []


async def test_a_default_budget_is_created_and_listed_on_the_cluster(
    redis_cluster: EmbeddedRedisCluster, node_clients: dict[int, redis.Redis]
) -> None:
    ledger = Ledger.from_url(redis_cluster.url, cluster=True, default_budget=Budget(100, "none"))
    try:
        for user in users_on_every_node(node_clients, count_per_node=1):
            reserved = await ledger.reserve(
                user, "j1", cost_nanousd=60, tokens=0, lease_ms=60_000, holder="w"
            )
            assert isinstance(reserved, Reserved)
            assert user in await ledger.list_users()
    finally:
        await ledger.close()


async def test_a_flushed_script_cache_on_every_node_is_reloaded(
    ledger: Ledger, node_clients: dict[int, redis.Redis]
) -> None:
    users = users_on_every_node(node_clients, count_per_node=1)
    for user in users:
        await ledger.set_budget(user, Budget(1000, "none"))
    for client in node_clients.values():
        client.script_flush()
    for user in users:
        result = await ledger.reserve(
            user, "j1", cost_nanousd=1, tokens=0, lease_ms=1000, holder="w"
        )
        assert isinstance(result, Reserved)


async def test_one_renewal_reaches_leases_on_every_node(
    ledger: Ledger, node_clients: dict[int, redis.Redis]
) -> None:
    users = users_on_every_node(node_clients, count_per_node=1)
    for user in users:
        await ledger.set_budget(user, Budget(1000, "none"))
        await ledger.reserve(user, "j1", cost_nanousd=10, tokens=0, lease_ms=60_000, holder="w")
    refs = [LeaseRef(user, "j1", "w") for user in users]
    assert await ledger.renew(refs, lease_ms=60_000) == [True] * len(users)
    assert await ledger.renew([LeaseRef(users[0], "j1", "other")], lease_ms=60_000) == [False]
