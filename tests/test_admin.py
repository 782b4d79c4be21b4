"""The admin API (worker/admin) against the real Redis: in process through aiohttp's
test client, and as the ``budget-worker admin`` process, checked against
docs/admin-openapi.yaml with schemathesis."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from worker import ledger
from worker.admin import create_app
from worker.dev.servers import EmbeddedRedis, EmbeddedRedisCluster, free_port, wait_for_port

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "docs" / "admin-openapi.yaml"


@pytest.fixture
async def book(redis_url: str) -> AsyncIterator[ledger.Ledger]:
    book = ledger.Ledger.from_url(redis_url)
    try:
        yield book
    finally:
        await book.close()


@pytest.fixture
async def api(book: ledger.Ledger) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(book, token=TOKEN, max_body_bytes=8192)
    async with TestClient(TestServer(app)) as client:
        yield client


async def call(
    api: TestClient[Any, Any], method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    response = await api.request(method, path, json=body, headers={**AUTH, **headers})
    data = await response.json() if response.content_type == "application/json" else None
    return response.status, data


def error_of(data: Any) -> tuple[str, str | None]:
    return data["error"]["code"], data["error"]["field"]


# --- auth -----------------------------------------------------------------------------


async def test_healthz_answers_without_a_token(api: TestClient[Any, Any]) -> None:
    response = await api.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "path", ["/v1/scopes", "/v1/scopes/users/alice", "/v1/scopes/users/alice/grants", "/nope"]
)
async def test_a_request_without_a_token_is_401_with_a_challenge(
    api: TestClient[Any, Any], path: str
) -> None:
    response = await api.get(path)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(await response.json()) == ("unauthorized", None)


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN]
)
async def test_a_wrong_token_is_401(api: TestClient[Any, Any], header: str) -> None:
    response = await api.get("/v1/scopes", headers={"Authorization": header})
    assert response.status == 401


async def test_a_write_without_a_token_changes_nothing(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    response = await api.put("/v1/scopes/users/alice/budget", json={"limit_nanousd": 5})
    assert response.status == 401
    assert await book.state("alice") is None


async def test_a_large_body_without_a_token_is_401_not_413(api: TestClient[Any, Any]) -> None:
    response = await api.put("/v1/scopes/users/alice/budget", data=b"x" * 10_000)  # > 8192
    assert response.status == 401


async def test_a_method_a_path_does_not_have_is_405_with_allow(
    api: TestClient[Any, Any],
) -> None:
    response = await api.post("/v1/scopes/users/alice/budget", headers=AUTH)
    assert response.status == 405
    assert "PUT" in response.headers["Allow"]
    assert error_of(await response.json()) == ("method_not_allowed", None)


def test_the_app_refuses_a_short_token(book: ledger.Ledger) -> None:
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="BW_ADMIN_TOKEN"):
        create_app(book, token="short")


# --- size and shape of requests ----------------------------------------------------------


async def test_a_body_over_the_limit_is_413(api: TestClient[Any, Any]) -> None:
    big = {"limit_nanousd": 5, "note": "x" * 9000}
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/budget", big)
    assert status == 413
    assert error_of(data)[0] == "too_large"


@pytest.mark.parametrize("body", [b"{nope", b"\xff", b"[" * 3000 + b"]" * 3000, b"[1]"])
async def test_a_body_that_is_not_a_json_object_is_422(
    api: TestClient[Any, Any], body: bytes
) -> None:
    headers = {**AUTH, "Idempotency-Key": "k-json"}
    response = await api.put("/v1/scopes/users/alice/budget", data=body, headers=headers)
    assert response.status == 422
    assert error_of(await response.json()) == ("invalid_json", None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit_nanousd": -1}, "limit_nanousd"),
        ({"limit_nanousd": "5"}, "limit_nanousd"),
        ({"limit_nanousd": 10**16}, "limit_nanousd"),
        ({"limit_nanousd": 5, "period": "hourly"}, "period"),
        ({"limit_nanousd": 5, "period": "rolling"}, "window_s"),
        ({"limit_nanousd": 5, "window_s": 60}, "window_s"),
        ({"limit_nanousd": 5, "rpm": 0}, "rpm"),
        ({"limit_nanousd": 5, "tpm": 1.5}, "tpm"),
        ({"limit_nanousd": 5, "colour": "red"}, "colour"),
    ],
)
async def test_a_bad_budget_is_422_naming_the_field(
    api: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/budget", body)
    assert status == 422
    assert error_of(data) == ("invalid", field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_nanousd": 5}, "id"),
        ({"id": "g 1", "amount_nanousd": 5}, "id"),
        ({"id": "g1", "amount_nanousd": 0}, "amount_nanousd"),
        ({"id": "g1", "amount_nanousd": 5, "expires_ms": -1}, "expires_ms"),
        ({"id": "g1", "amount_nanousd": 5, "priority": 10**7}, "priority"),
    ],
)
async def test_a_bad_grant_is_422_naming_the_field(
    api: TestClient[Any, Any], body: dict[str, Any], field: str
) -> None:
    status, data = await call(api, "POST", "/v1/scopes/users/alice/grants", body)
    assert status == 422
    assert error_of(data) == ("invalid", field)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("kind=planets", "query.kind"),
        ("limit=0", "query.limit"),
        ("limit=1001", "query.limit"),
        ("cursor=x", "query.cursor"),
        ("limit=%2B5", "query.limit"),
        ("limit=%D9%A5", "query.limit"),
        (f"cursor={2**64}", "query.cursor"),
    ],
)
async def test_a_bad_listing_query_is_422_naming_the_parameter(
    api: TestClient[Any, Any], query: str, field: str
) -> None:
    status, data = await call(api, "GET", f"/v1/scopes?{query}")
    assert status == 422
    assert error_of(data) == ("invalid", field)


@pytest.mark.parametrize("name", ["a%0Ab", "x" * 257, "%E2%80%A8"])
async def test_a_name_a_job_could_not_carry_is_422(api: TestClient[Any, Any], name: str) -> None:
    status, data = await call(api, "PUT", f"/v1/scopes/users/{name}/budget", {"limit_nanousd": 1})
    assert status == 422
    assert error_of(data) == ("invalid", "path.name")


async def test_an_unknown_scope_kind_is_422_naming_it(api: TestClient[Any, Any]) -> None:
    status, data = await call(api, "GET", "/v1/scopes/planets/mars")
    assert status == 422
    assert error_of(data) == ("invalid", "path.kind")


# --- budgets ----------------------------------------------------------------------------


async def test_put_budget_then_show_the_scope(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    body = {"limit_nanousd": 200_000, "period": "daily", "rpm": 60}
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/budget", body)
    assert status == 200
    assert data["budget"] == {
        **body,
        "window_s": None,
        "tpm": None,
        "rollover_cap_nanousd": None,
        "thresholds": None,
    }
    assert await book.get_budget("alice") == ledger.Budget(200_000, "daily", rpm=60)
    status, data = await call(api, "GET", "/v1/scopes/users/alice")
    assert status == 200
    assert data["scope"] == {"kind": "users", "name": "alice"}
    assert data["limit_nanousd"] == 200_000
    assert data["remaining_nanousd"] == 200_000
    assert data["spent_nanousd"] == 0


async def test_patch_changes_only_what_it_names(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(100, "rolling", window_s=3600, rpm=60, tpm=9))
    path = "/v1/scopes/users/alice/budget"
    status, _ = await call(api, "PATCH", path, {"limit_nanousd": 500, "tpm": None})
    assert status == 200
    assert await book.get_budget("alice") == ledger.Budget(500, "rolling", 3600, rpm=60)
    status, _ = await call(api, "PATCH", path, {"period": "weekly"})  # the window goes
    assert status == 200
    assert await book.get_budget("alice") == ledger.Budget(500, "weekly", rpm=60)
    status, data = await call(api, "PATCH", path, {"period": "rolling"})
    assert status == 422
    assert error_of(data) == ("invalid", "window_s")
    status, data = await call(api, "PATCH", path, {"rpm": 0})
    assert (status, error_of(data)) == (422, ("invalid", "rpm"))
    status, data = await call(api, "PATCH", path, [1])
    assert (status, error_of(data)[0]) == (422, "invalid_json")


async def test_a_scope_without_a_budget_is_404(api: TestClient[Any, Any]) -> None:
    status, data = await call(api, "GET", "/v1/scopes/users/nobody")
    assert status == 404
    assert error_of(data) == ("no_budget", "path.name")


@pytest.mark.parametrize("name", ["team/bob:1", "{u:x}", "a b%c", "ünï ✓", "a?b#c"])
async def test_any_name_is_one_percent_encoded_path_segment(
    api: TestClient[Any, Any], book: ledger.Ledger, name: str
) -> None:
    path = f"/v1/scopes/users/{quote(name, safe='')}"
    status, _ = await call(api, "PUT", path + "/budget", {"limit_nanousd": 7})
    assert status == 200
    assert await book.get_budget(name) == ledger.Budget(7)
    status, data = await call(api, "GET", path)
    assert (status, data["scope"]["name"]) == (200, name)


async def test_delete_budget_then_it_is_gone(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(5))
    status, _ = await call(api, "DELETE", "/v1/scopes/users/alice/budget")
    assert status == 204
    assert await book.state("alice") is None
    status, _ = await call(api, "DELETE", "/v1/scopes/users/alice/budget")
    assert status == 404


@pytest.mark.parametrize(("method", "part"), [("DELETE", "budget"), ("POST", "reset")])
async def test_a_team_never_created_has_no_budget_to_remove(
    api: TestClient[Any, Any], method: str, part: str
) -> None:
    status, data = await call(api, method, f"/v1/scopes/teams/nope/{part}")
    assert (status, error_of(data)) == (404, ("no_budget", "path.name"))


async def test_reset_zeroes_the_spend(api: TestClient[Any, Any], book: ledger.Ledger) -> None:
    await book.set_budget("alice", ledger.Budget(100_000))
    await book.settle(
        "alice", "j1", holder="t", cost_nanousd=40_000, tokens=1, model="m", outcome=b"{}"
    )
    status, _ = await call(api, "POST", "/v1/scopes/users/alice/reset")
    assert status == 200
    state = await book.state("alice")
    assert state is not None
    assert state.snapshot.spent_nanousd == 0


async def test_a_users_limit_on_a_model_named_with_a_slash(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(100_000))
    status, data = await call(
        api, "PUT", "/v1/scopes/users/alice/models/openai%2Fgpt-4o/budget", {"limit_nanousd": 9}
    )
    assert status == 200
    assert data["model"] == "openai/gpt-4o"


# --- membership -------------------------------------------------------------------------


async def test_a_team_in_an_org_with_a_member(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    status, data = await call(api, "PUT", "/v1/scopes/teams/eng", {"org": "acme"})
    assert status == 200
    status, _ = await call(api, "PUT", "/v1/scopes/teams/eng/budget", {"limit_nanousd": 1000})
    assert status == 200
    await call(api, "PUT", "/v1/scopes/users/alice/budget", {"limit_nanousd": 500})
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/membership", {"team": "eng"})
    assert status == 200
    status, data = await call(api, "GET", "/v1/scopes/users/alice/membership")
    assert (status, data) == (200, {"user": "alice", "team": "eng", "org": "acme"})
    status, data = await call(api, "GET", "/v1/scopes/teams/eng")
    assert status == 200
    assert data["limit_nanousd"] == 1000
    status, data = await call(api, "GET", "/v1/scopes/orgs/acme")
    assert (status, data["limit_nanousd"]) == (200, None)  # created with the team, no cap
    status, _ = await call(api, "DELETE", "/v1/scopes/users/alice/membership")
    assert status == 204
    state = await book.state("alice")
    assert state is not None
    assert (state.team, state.org) == (None, None)


async def test_a_move_while_jobs_are_in_flight_is_409_with_retry_after(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(100_000))
    held = await book.reserve(
        "alice", "job-1", cost_nanousd=10, tokens=1, lease_ms=60_000, holder="worker-1"
    )
    assert isinstance(held, ledger.Reserved)
    response = await api.put(
        "/v1/scopes/users/alice/membership", json={"org": "acme"}, headers=AUTH
    )
    assert response.status == 409
    assert response.headers["Retry-After"] == "1"
    assert error_of(await response.json())[0] == "jobs_in_flight"
    await book.release("alice", "job-1", holder="worker-1")
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/membership", {"org": "acme"})
    assert (status, data) == (200, {"user": "alice", "team": None, "org": "acme"})


async def test_a_team_cannot_change_org(api: TestClient[Any, Any]) -> None:
    await call(api, "PUT", "/v1/scopes/teams/eng", {"org": "acme"})
    status, data = await call(api, "PUT", "/v1/scopes/teams/eng", {"org": "other"})
    assert (status, error_of(data)) == (409, ("conflict", "org"))


async def test_membership_of_a_team_not_created_is_404_naming_the_team(
    api: TestClient[Any, Any],
) -> None:
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/membership", {"team": "nope"})
    assert (status, error_of(data)) == (404, ("unknown_scope", "team"))


async def test_a_budget_of_a_team_not_created_is_404(api: TestClient[Any, Any]) -> None:
    for method in ("PUT", "PATCH"):
        status, data = await call(api, method, "/v1/scopes/teams/nope/budget", {"rpm": 5})
        assert (status, error_of(data)) == (404, ("unknown_scope", "path.name"))


async def test_membership_answers_for_a_user_without_a_budget(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.create_team("eng", "acme")
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/membership", {"team": "eng"})
    assert (status, data) == (200, {"user": "alice", "team": "eng", "org": "acme"})
    assert await book.state("alice") is None  # no USD limit, no credits
    status, data = await call(api, "GET", "/v1/scopes/users/alice/membership")
    assert (status, data) == (200, {"user": "alice", "team": "eng", "org": "acme"})
    status, data = await call(api, "PUT", "/v1/scopes/users/bob/membership", {"org": "acme"})
    assert (status, data) == (200, {"user": "bob", "team": None, "org": "acme"})
    status, data = await call(api, "GET", "/v1/scopes/users/nobody/membership")
    assert (status, error_of(data)) == (404, ("unknown_scope", "path.name"))


async def test_rollover_is_set_kept_by_a_patch_and_refused_without_a_period(
    api: TestClient[Any, Any],
) -> None:
    path = "/v1/scopes/users/rolly/budget"
    body = {"limit_nanousd": 1000, "period": "daily", "rollover_cap_nanousd": 300}
    status, data = await call(api, "PUT", path, body)
    assert (status, data["budget"]["rollover_cap_nanousd"]) == (200, 300)
    status, data = await call(api, "PATCH", path, {"rpm": 5})
    assert (status, data["budget"]["rollover_cap_nanousd"]) == (200, 300)
    status, data = await call(api, "GET", "/v1/scopes/users/rolly")
    assert (status, data["carried_nanousd"]) == (200, 0)
    status, data = await call(api, "PATCH", path, {"period": "none"})
    assert (status, error_of(data)) == (422, ("invalid", "rollover_cap_nanousd"))


async def test_thresholds_are_set_kept_by_a_patch_and_checked(
    api: TestClient[Any, Any],
) -> None:
    path = "/v1/scopes/users/thresh/budget"
    body = {"limit_nanousd": 1000, "period": "daily", "thresholds": [80, 100]}
    status, data = await call(api, "PUT", path, body)
    assert (status, data["budget"]["thresholds"]) == (200, [80, 100])
    status, data = await call(api, "PATCH", path, {"rpm": 5})
    assert (status, data["budget"]["thresholds"]) == (200, [80, 100])
    status, data = await call(api, "PATCH", path, {"thresholds": [90, 50]})
    assert (status, error_of(data)) == (422, ("invalid", "thresholds"))


async def test_a_run_is_shown_and_closed_and_its_hold_flows_back(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(10**9, "daily"))
    reply = await book.reserve(
        "alice",
        "run-job-1",
        cost_nanousd=100,
        tokens=0,
        lease_ms=60_000,
        holder="w1",
        run=ledger.RunRequest(id="task-1", cap_nanousd=5000),
    )
    assert isinstance(reply, ledger.Reserved)
    status, data = await call(api, "GET", "/v1/scopes/users/alice/runs/task-1")
    assert status == 200
    assert (data["state"], data["hold_nanousd"], data["live_jobs"]) == ("open", 5000, 1)
    assert data["scope"] == "run:alice/task-1"
    status, data = await call(api, "POST", "/v1/scopes/users/alice/runs/task-1/close")
    assert status == 200
    # Closed with one job in flight: only its estimate stays held.
    assert (data["state"], data["hold_nanousd"]) == ("closed", 100)
    state = await book.state("alice")
    assert state is not None and state.snapshot.reserved_nanousd == 100
    status, again = await call(api, "POST", "/v1/scopes/users/alice/runs/task-1/close")
    assert (status, again) == (200, data)
    status, data = await call(api, "GET", "/v1/scopes/users/alice/runs/nope")
    assert (status, error_of(data)) == (404, ("unknown_run", "path.run"))
    status, data = await call(api, "GET", "/v1/scopes/users/alice/runs/bad%20id")
    assert (status, error_of(data)) == (422, ("invalid", "path.run"))


async def test_team_members_page_through_every_member_once(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.create_team("eng", "acme")
    config = await book.conn.command("CONFIG", "GET", "hash-max-listpack-entries")
    count = int(dict(config.items())[b"hash-max-listpack-entries"]) + 20  # HSCAN really pages
    users = {f"user/{i:04}" for i in range(count)}
    for user in users:
        await book.set_membership(user, team="eng")
    await book.set_membership("direct", org="acme")
    seen: list[str] = []
    cursor = ""
    for _ in range(1000):
        status, page = await call(
            api, "GET", f"/v1/scopes/teams/eng/members?limit=50&cursor={cursor}"
        )
        assert status == 200
        assert page["scope"] == {"kind": "teams", "name": "eng"}
        seen += [item["name"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(users)
    status, page = await call(api, "GET", "/v1/scopes/orgs/acme/members")
    assert (status, page["items"], page["next_cursor"]) == (200, [{"name": "direct"}], None)


@pytest.mark.parametrize("path", ["/v1/scopes/teams/nope/members", "/v1/scopes/orgs/nope/members"])
async def test_members_of_a_scope_never_created_is_404(
    api: TestClient[Any, Any], path: str
) -> None:
    status, data = await call(api, "GET", path)
    assert (status, error_of(data)) == (404, ("unknown_scope", "path.name"))


async def test_a_bad_members_cursor_is_422(api: TestClient[Any, Any], book: ledger.Ledger) -> None:
    await book.create_team("eng", "acme")
    status, data = await call(api, "GET", "/v1/scopes/teams/eng/members?cursor=x")
    assert (status, error_of(data)) == (422, ("invalid", "query.cursor"))


async def test_membership_names_team_or_org_not_both(api: TestClient[Any, Any]) -> None:
    body = {"team": "eng", "org": "acme"}
    status, data = await call(api, "PUT", "/v1/scopes/users/alice/membership", body)
    assert status == 422
    assert error_of(data) == ("invalid", "org")


# --- credits ----------------------------------------------------------------------------


async def test_a_grant_then_its_retry_grants_once(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    grant = {"id": "topup-1", "amount_nanousd": 5_000}
    status, data = await call(api, "POST", "/v1/scopes/users/alice/grants", grant)
    assert status == 201
    assert data["created"] is True
    status, data = await call(api, "POST", "/v1/scopes/users/alice/grants", grant)
    assert status == 200
    assert data["created"] is False
    state = await book.state("alice")
    assert state is not None
    assert state.credits_nanousd == 5_000


async def test_grants_lists_each_grant_with_what_is_left(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    await book.grant("alice", ledger.Grant(id="topup-1", amount_nanousd=5_000, priority=2))
    status, data = await call(api, "GET", "/v1/scopes/users/alice/grants")
    assert status == 200
    assert data["items"] == [
        {
            "id": "topup-1",
            "amount_nanousd": 5_000,
            "remaining_nanousd": 5_000,
            "priority": 2,
            "effective_ms": 0,
            "expires_ms": None,
            "effective": "1970-01-01T00:00:00Z",
            "expires": None,
        }
    ]
    assert data["next_cursor"] is None


async def test_grants_page_in_drawing_order(api: TestClient[Any, Any], book: ledger.Ledger) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    for i in range(5):
        await book.grant("alice", ledger.Grant(id=f"g{i}", amount_nanousd=1, priority=5 - i))
    seen: list[str] = []
    cursor: str | None = "0"
    while cursor is not None:
        status, data = await call(
            api, "GET", f"/v1/scopes/users/alice/grants?limit=2&cursor={cursor}"
        )
        assert status == 200
        seen += [grant["id"] for grant in data["items"]]
        cursor = data["next_cursor"]
    assert seen == ["g4", "g3", "g2", "g1", "g0"]


async def test_a_grant_id_reused_for_another_amount_is_409(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    await call(api, "POST", "/v1/scopes/users/alice/grants", {"id": "g", "amount_nanousd": 5})
    status, data = await call(
        api, "POST", "/v1/scopes/users/alice/grants", {"id": "g", "amount_nanousd": 6}
    )
    assert status == 409
    assert error_of(data) == ("grant_id_reused", "id")


async def test_credits_of_a_scope_without_a_record_are_404(api: TestClient[Any, Any]) -> None:
    for part, body in [("grants", {"id": "g", "amount_nanousd": 5}), ("adjustments", None)]:
        body = body or {"id": "a", "amount_nanousd": 5}
        status, data = await call(api, "POST", f"/v1/scopes/users/alice/{part}", body)
        assert (status, error_of(data)) == (404, ("no_budget", "path.name"))


async def test_a_grant_past_the_most_a_scope_holds_is_409(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    for i in range(100):
        await book.grant("alice", ledger.Grant(id=f"g{i}", amount_nanousd=1))
    status, data = await call(
        api, "POST", "/v1/scopes/users/alice/grants", {"id": "more", "amount_nanousd": 1}
    )
    assert (status, error_of(data)) == (409, ("limit_reached", None))


async def test_an_adjustment_applies_once(api: TestClient[Any, Any], book: ledger.Ledger) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    body = {"id": "fix-1", "amount_nanousd": 700, "note": "goodwill"}
    for status_wanted, created in [(201, True), (200, False)]:
        status, data = await call(api, "POST", "/v1/scopes/users/alice/adjustments", body)
        assert status == status_wanted
        assert data == {"id": "fix-1", "created": created, "applied_nanousd": 700}
    state = await book.state("alice")
    assert state is not None
    assert state.credits_nanousd == 700


async def test_an_adjustment_id_reused_for_another_amount_is_409(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    path = "/v1/scopes/users/alice/adjustments"
    await call(api, "POST", path, {"id": "fix-1", "amount_nanousd": 700})
    status, data = await call(api, "POST", path, {"id": "fix-1", "amount_nanousd": 800})
    assert (status, error_of(data)) == (409, ("adjustment_id_reused", "id"))
    state = await book.state("alice")
    assert state is not None
    assert state.credits_nanousd == 700


async def test_a_debit_takes_at_most_what_the_credits_hold(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    await book.grant("alice", ledger.Grant(id="g", amount_nanousd=300))
    body = {"id": "debit-1", "amount_nanousd": -500}
    status, data = await call(api, "POST", "/v1/scopes/users/alice/adjustments", body)
    assert (status, data["applied_nanousd"]) == (201, -300)
    status, data = await call(api, "POST", "/v1/scopes/users/alice/adjustments", body)
    assert (status, data["applied_nanousd"]) == (200, -300)


async def test_a_debit_id_reused_with_an_amount_that_could_fit_is_409(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    """The ledger keeps what each id asked: -400 is not a retry of -500, though -300
    applied would fit either."""
    await book.set_budget("alice", ledger.Budget(None, "none"))
    await book.grant("alice", ledger.Grant(id="g", amount_nanousd=300))
    path = "/v1/scopes/users/alice/adjustments"
    await call(api, "POST", path, {"id": "debit-1", "amount_nanousd": -500})
    status, data = await call(api, "POST", path, {"id": "debit-1", "amount_nanousd": -400})
    assert (status, error_of(data)) == (409, ("adjustment_id_reused", "id"))


async def test_history_pages_through_every_entry(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    for i in range(5):
        await book.grant("alice", ledger.Grant(id=f"g{i}", amount_nanousd=10 + i))
    seen: list[str] = []
    cursor: str | None = "0"
    while cursor is not None:
        status, data = await call(
            api, "GET", f"/v1/scopes/users/alice/history?limit=2&cursor={cursor}"
        )
        assert status == 200
        seen += [entry["grant"] for entry in data["items"]]
        cursor = data["next_cursor"]
    assert seen == [f"g{i}" for i in range(5)]


# --- listing ----------------------------------------------------------------------------


async def test_listing_pages_through_every_scope_once(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    # More than a listpack holds, so that HSCAN really pages (it answers a listpack whole).
    config = await book.conn.command("CONFIG", "GET", "hash-max-listpack-entries")
    names = {
        f"user-{i:04}" for i in range(int(dict(config.items())[b"hash-max-listpack-entries"]) + 50)
    }
    await asyncio.gather(*(book.set_budget(name, ledger.Budget(1)) for name in names))
    seen: list[str] = []
    query = "kind=users&limit=50"
    pages = 0
    while True:
        status, data = await call(api, "GET", f"/v1/scopes?{query}")
        assert status == 200
        seen += [item["name"] for item in data["items"]]
        pages += 1
        if data["next_cursor"] is None:
            break
        query = f"kind=users&limit=50&cursor={data['next_cursor']}"
    assert sorted(seen) == sorted(names)
    assert pages > 1


# --- idempotency ----------------------------------------------------------------------


async def test_the_same_key_replays_the_first_answer(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    path, key = "/v1/scopes/users/alice/budget", {"Idempotency-Key": "k-1"}
    first = await api.put(path, json={"limit_nanousd": 5}, headers={**AUTH, **key})
    assert first.status == 200
    await book.set_budget("alice", ledger.Budget(9))  # changed by someone else since
    again = await api.put(path, json={"limit_nanousd": 5}, headers={**AUTH, **key})
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert await book.get_budget("alice") == ledger.Budget(9)  # not written again


async def test_each_write_leaves_one_log_line_without_its_body(
    api: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="budget_worker.admin")
    await call(api, "PUT", "/v1/scopes/users/alice/budget", {"limit_nanousd": 123_456_789})
    await call(api, "GET", "/v1/scopes/users/alice")
    writes = [r for r in caplog.records if r.getMessage() == "admin write"]
    facts = [(vars(r)["method"], vars(r)["path"], vars(r)["status"]) for r in writes]
    assert facts == [("PUT", "/v1/scopes/users/alice/budget", 200)]
    assert "123456789" not in caplog.text
    assert TOKEN not in caplog.text


async def test_the_same_key_with_another_body_is_422(api: TestClient[Any, Any]) -> None:
    path, key = "/v1/scopes/users/alice/budget", {"Idempotency-Key": "k-2"}
    await call(api, "PUT", path, {"limit_nanousd": 5}, **key)
    status, data = await call(api, "PUT", path, {"limit_nanousd": 6}, **key)
    assert status == 422
    assert error_of(data) == ("idempotency_key_reused", "header.Idempotency-Key")


async def test_a_kept_answer_has_the_ttl_and_replays_a_204(
    book: ledger.Ledger, redis_url: str
) -> None:
    app = create_app(book, token=TOKEN, idempotency_ttl_s=600)
    async with TestClient(TestServer(app)) as api:
        status, _ = await call(
            api, "DELETE", "/v1/scopes/users/alice/membership", **{"Idempotency-Key": "k-4"}
        )
        assert status == 204
        names = await book.conn.command("KEYS", "bw:{admin:idem:*")
        assert len(names) == 1
        assert 60 < await book.conn.command("TTL", names[0]) <= 600  # the answer's, not the claim's
        again = await api.delete(
            "/v1/scopes/users/alice/membership", headers={**AUTH, "Idempotency-Key": "k-4"}
        )
        assert again.status == 204
        assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "ünï"])
async def test_a_malformed_idempotency_key_is_422(api: TestClient[Any, Any], key: str) -> None:
    response = await api.post(
        "/v1/scopes/users/alice/reset", headers={**AUTH, "Idempotency-Key": key}
    )
    assert response.status == 422
    assert error_of(await response.json()) == ("invalid", "header.Idempotency-Key")


async def test_a_failed_write_gives_its_key_up(
    api: TestClient[Any, Any], book: ledger.Ledger
) -> None:
    path, key = "/v1/scopes/users/alice/grants", {"Idempotency-Key": "k-3"}
    grant = {"id": "g", "amount_nanousd": 5}
    status, _ = await call(api, "POST", path, grant, **key)
    assert status == 404  # no budget record yet
    await book.set_budget("alice", ledger.Budget(None, "none"))
    status, _ = await call(api, "POST", path, grant, **key)
    assert status == 201


# --- the process, against the OpenAPI document -------------------------------------------


@pytest.fixture
def admin_process(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "BW_REDIS_URL": redis_url,
        "BW_ADMIN_TOKEN": TOKEN,
        "BW_ADMIN_PORT": str(port),
        "BW_ADMIN_HOST": "127.0.0.1",
    }
    log = (tmp_path / "admin.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.console", "admin"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, port, process)
        yield base
        process.terminate()
        assert process.wait(timeout=30) == 0, "SIGTERM: finish and exit 0"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def _wait_healthy(base: str, port: int, process: subprocess.Popen[bytes]) -> None:
    wait_for_port(port, 30, process)  # raises if the process exits first
    assert httpx.get(base + "/healthz", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("token", "says"),
    [(None, "BW_ADMIN_TOKEN is not set"), ("short", "BW_ADMIN_TOKEN: must be at least 16")],
)
def test_admin_refuses_to_start_without_a_good_token(
    redis_url: str, tmp_path: Path, token: str | None, says: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BW_ADMIN_TOKEN"}
    if token is not None:
        env["BW_ADMIN_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-m", "worker.console", "admin"],
        env={**env, "BW_REDIS_URL": redis_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert says in result.stderr
    assert token is None or token not in result.stderr


async def test_concurrent_retries_of_a_grant_grant_once_through_the_process(
    admin_process: str, book: ledger.Ledger
) -> None:
    await book.set_budget("alice", ledger.Budget(None, "none"))
    grant = {"id": "signup-bonus", "amount_nanousd": 1_000_000}
    async with httpx.AsyncClient(base_url=admin_process, headers=AUTH) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/scopes/users/alice/grants", json=grant) for _ in range(20))
        )
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [200] * 19 + [201]
        keyed = await asyncio.gather(
            *(
                client.post(
                    "/v1/scopes/users/alice/grants",
                    json={"id": "second", "amount_nanousd": 1},
                    headers={"Idempotency-Key": "retry-me"},
                )
                for _ in range(5)
            )
        )
        assert {answer.status_code for answer in keyed} <= {201, 200, 409}
    state = await book.state("alice")
    assert state is not None
    assert state.credits_nanousd == 1_000_001
    entries = await book.history("alice")
    assert sorted(e.grant for e in entries) == ["second", "signup-bonus"]


def test_the_server_matches_its_openapi_document(admin_process: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            str(OPENAPI),
            "--url",
            admin_process,
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            "5",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance,"
            "negative_data_rejection,use_after_free,ensure_resource_availability,"
            "ignored_auth",
            "--no-color",
        ],
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=110,
    )
    report = result.stdout
    failures = report[report.find("FAILURES") :][:8000] if "FAILURES" in report else report[-4000:]
    assert result.returncode == 0, failures + result.stderr[-2000:]


def test_every_route_of_the_app_is_in_the_document_and_back() -> None:
    import yaml

    from worker.admin.routes import routes

    document = yaml.safe_load(OPENAPI.read_text("utf-8"))
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }
    served = {
        (route.method, re.sub(r"\{(\w+):[^}]*\}+", r"{\1}", route.path))
        for route in routes
        if isinstance(route, web.RouteDef)
    }
    assert served == documented


async def test_concurrent_retries_with_one_key_run_once_through_the_process(
    admin_process: str, book: ledger.Ledger
) -> None:
    headers = {"Idempotency-Key": "create-team-eng"}
    async with httpx.AsyncClient(base_url=admin_process, headers=AUTH) as client:
        answers = await asyncio.gather(
            *(
                client.put("/v1/scopes/teams/eng", json={"org": "acme"}, headers=headers)
                for _ in range(10)
            )
        )
    first = [a for a in answers if a.status_code == 200 and "Idempotent-Replayed" not in a.headers]
    assert len(first) == 1
    for answer in answers:
        assert answer.status_code in (200, 409)
        if answer.status_code == 200:
            assert answer.json() == first[0].json()
        else:
            assert answer.json()["error"]["code"] == "idempotency_in_progress"
            assert answer.headers["Retry-After"] == "1"


async def test_redis_down_is_503_with_retry_after(private_redis: EmbeddedRedis) -> None:
    book = ledger.Ledger.from_url(private_redis.url, timeout_s=0.5)
    try:
        app = create_app(book, token=TOKEN)
        async with TestClient(TestServer(app)) as api:
            status, _ = await call(api, "PUT", "/v1/scopes/users/a/budget", {"limit_nanousd": 1})
            assert status == 200
            private_redis.stop()
            response = await api.get("/v1/scopes/users/a", headers=AUTH)
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert error_of(await response.json())[0] == "ledger_unavailable"
    finally:
        await book.close()


def test_admin_refuses_a_port_in_use(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "worker.console", "admin", "--port", str(port)],
            env={**os.environ, "BW_REDIS_URL": redis_url, "BW_ADMIN_TOKEN": TOKEN},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


async def test_a_claim_of_a_request_that_never_finished_lapses_soon(book: ledger.Ledger) -> None:
    from worker.admin.idempotency import CLAIM_TTL_S, IdempotencyStore
    from worker.admin.problems import ApiError

    store = IdempotencyStore(book.idempotency_records(), ttl_s=86_400)
    assert await store.claim("k", "fingerprint") is None  # and then the process dies
    names = await book.conn.command("KEYS", "bw:{admin:idem:*")
    assert 0 < await book.conn.command("TTL", names[0]) <= CLAIM_TTL_S
    with pytest.raises(ApiError) as refused:
        await store.claim("k", "fingerprint")
    assert (refused.value.status, refused.value.code) == (409, "idempotency_in_progress")


def test_the_cli_and_the_api_change_the_same_budgets(admin_process: str, redis_url: str) -> None:
    from typer.testing import CliRunner

    from worker.budget_cli import app as budget_app

    def cli(*args: str) -> str:
        result = CliRunner().invoke(budget_app, [*args, "--redis-url", redis_url])
        assert result.exit_code == 0, result.output
        return result.stdout

    with httpx.Client(base_url=admin_process, headers=AUTH) as api:
        budget = {"limit_nanousd": 200_000, "period": "weekly", "rpm": 60}
        assert api.put("/v1/scopes/users/carol/budget", json=budget).status_code == 200
        shown = json.loads(cli("show", "carol", "--json"))
        assert (shown["limit_nanousd"], shown["period"], shown["rpm"]) == (200_000, "weekly", 60)

        cli("grant", "carol", "--amount-usd", "0.5", "--id", "topup-1")
        grant = {"id": "topup-1", "amount_nanousd": 500_000_000}
        again = api.post("/v1/scopes/users/carol/grants", json=grant)
        assert (again.status_code, again.json()["created"]) == (200, False)
        state = api.get("/v1/scopes/users/carol").json()
        assert (
            state["credits_nanousd"]
            == json.loads(cli("show", "carol", "--json"))["credits_nanousd"]
            == 500_000_000
        )


async def test_the_api_on_redis_cluster(redis_cluster: EmbeddedRedisCluster) -> None:
    """Every kind of step on Cluster: the directory and indexes, an org's slot, a
    grant, a replayed key. The Cluster is shared and never flushed: ids are fresh."""
    run = uuid.uuid4().hex[:8]
    team, org, user = f"eng-{run}", f"acme-{run}", f"alice-{run}"
    book = ledger.Ledger.from_url(redis_cluster.url, cluster=True)
    try:
        async with TestClient(TestServer(create_app(book, token=TOKEN))) as api:
            assert (await call(api, "PUT", f"/v1/scopes/teams/{team}", {"org": org}))[0] == 200
            budget = {"limit_nanousd": 1000}
            assert (await call(api, "PUT", f"/v1/scopes/teams/{team}/budget", budget))[0] == 200
            key = {"Idempotency-Key": f"user-{run}"}
            for _ in range(2):
                status, _ = await call(
                    api, "PUT", f"/v1/scopes/users/{user}/budget", {"limit_nanousd": 500}, **key
                )
                assert status == 200
            status, data = await call(
                api, "PUT", f"/v1/scopes/users/{user}/membership", {"team": team}
            )
            assert (status, data["org"]) == (200, org)
            grant = {"id": f"g-{run}", "amount_nanousd": 70}
            assert (await call(api, "POST", f"/v1/scopes/users/{user}/grants", grant))[0] == 201
            assert (await call(api, "POST", f"/v1/scopes/users/{user}/grants", grant))[0] == 200
            status, data = await call(api, "GET", f"/v1/scopes/users/{user}")
            assert (status, data["credits_nanousd"], data["team"]) == (200, 70, team)
            teams: list[str] = []
            cursor = ""
            while True:
                _, page = await call(api, "GET", f"/v1/scopes?kind=teams&cursor={cursor}")
                teams += [item["name"] for item in page["items"]]
                if page["next_cursor"] is None:
                    break
                cursor = page["next_cursor"]
            assert team in teams
    finally:
        await book.close()


async def test_every_admin_operation_runs_under_the_workers_acl(tmp_path: Path) -> None:
    """The operations guide says the worker's ACL line covers the admin process."""
    from tests.test_security_redis import start_acl_redis

    server = start_acl_redis(tmp_path)
    book = ledger.Ledger.from_url(server.worker_url)
    try:
        async with TestClient(TestServer(create_app(book, token=TOKEN))) as api:
            key = {"Idempotency-Key": "acl-1"}
            steps: list[tuple[str, str, Any, dict[str, str]]] = [
                ("PUT", "/v1/scopes/teams/eng", {"org": "acme"}, key),
                ("PUT", "/v1/scopes/teams/eng", {"org": "acme"}, key),  # replayed
                ("PUT", "/v1/scopes/teams/eng/budget", {"limit_nanousd": 1000}, {}),
                ("PATCH", "/v1/scopes/users/alice/budget", {"limit_nanousd": 500}, {}),
                ("PUT", "/v1/scopes/users/alice/models/m/budget", {"limit_nanousd": 5}, {}),
                ("PUT", "/v1/scopes/users/alice/membership", {"team": "eng"}, {}),
                ("GET", "/v1/scopes/users/alice/membership", None, {}),
                ("GET", "/v1/scopes/teams/eng/members", None, {}),
                ("GET", "/v1/scopes/orgs/acme/members", None, {}),
                ("POST", "/v1/scopes/users/alice/grants", {"id": "g", "amount_nanousd": 9}, {}),
                (
                    "POST",
                    "/v1/scopes/users/alice/adjustments",
                    {"id": "a", "amount_nanousd": 1},
                    {},
                ),
                ("GET", "/v1/scopes/users/alice/grants", None, {}),
                ("GET", "/v1/scopes/users/alice/history", None, {}),
                ("GET", "/v1/scopes?kind=teams", None, {}),
                ("GET", "/v1/scopes/users/alice", None, {}),
                ("POST", "/v1/scopes/users/alice/reset", None, {}),
                ("DELETE", "/v1/scopes/users/alice/membership", None, {}),
                ("DELETE", "/v1/scopes/users/alice/budget", None, {}),
            ]
            for method, path, body, headers in steps:
                status, data = await call(api, method, path, body, **headers)
                assert status in (200, 201, 204), (method, path, data)
        assert server.denied_log() == []
    finally:
        await book.close()
        server.server.stop()
