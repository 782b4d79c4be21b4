"""One handler per admin operation; each is the ledger step the CLI runs, no more.

Scopes are addressed as ``/v1/scopes/{kind}/{name}`` with ``kind`` one of ``users``,
``teams``, ``orgs`` and ``name`` the id, percent-encoded (``%2F`` for ``/``). A scope
"exists" when the ledger has a state for it (``state`` is not None); operations on
what a scope holds (grants, history, reset) answer 404 for one that does not.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from worker import ledger
from worker.admin import bodies
from worker.admin.problems import JSON, ApiError, invalid, refused
from worker.budget_view import run_json
from worker.errors import LedgerRefusal, UnknownScope

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

LEDGER: web.AppKey[ledger.Ledger] = web.AppKey("ledger", ledger.Ledger)
MAX_PAGE = 1000
# Any text but "/" (aiohttp's default pattern also refuses braces, which ids may hold).
_NAME = "{name:[^/]+}"
_SCOPE = "/v1/scopes/{kind:[^/]+}/" + _NAME
_CURSOR = re.compile(r"[0-9]{1,20}")
_DIGITS = re.compile(r"[0-9]{1,13}")

routes = web.RouteTableDef()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type=JSON)


def _book(request: web.Request) -> ledger.Ledger:
    return request.app[LEDGER]


def _name(request: web.Request, part: str = "name") -> str:
    try:
        return bodies.NAME.validate_python(request.match_info[part])
    except ValidationError as exc:
        raise invalid(exc, f"path.{part}") from None


def _scope(request: web.Request) -> ledger.Scope:
    kind = bodies.KINDS.get(request.match_info["kind"])
    if kind is None:
        raise ApiError(422, "invalid", f"must be one of {sorted(bodies.KINDS)}", "path.kind")
    return ledger.Scope(kind, _name(request))


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read())
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's
        raise ApiError(422, "invalid_json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_json", "the body must be a JSON object")
    return data


async def _body(request: web.Request, model: type[M]) -> M:
    data = await _json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text):  # int() also takes "+5", " 5", "5_0" and non-ASCII digits
        raise ApiError(422, "invalid", "must be a whole number", f"query.{name}")
    value = int(text)
    if not low <= value <= high:
        raise ApiError(422, "invalid", f"must be between {low} and {high}", f"query.{name}")
    return value


async def _step(call: Awaitable[T], addressed: ledger.Scope | None = None) -> T:
    """A ledger step whose refusal (a team not created, a scope without a budget record,
    too many grants) is an answer to this request, naming the field at fault against
    the scope the path ``addressed``; any other ``ValueError`` is input the ledger
    would not take (422), not a server fault."""
    try:
        return await call
    except LedgerRefusal as exc:
        raise refused(exc, addressed) from None
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from None


async def _or_none(step: Awaitable[bool]) -> bool:
    """A delete or reset of a team never created answers like one without a budget (as
    ``budget delete`` does): there is nothing of it to remove."""
    try:
        return await step
    except UnknownScope:
        return False


def _scan_page(request: web.Request) -> tuple[str | None, int]:
    """``cursor`` and ``limit`` of a listing that pages with Redis's SCAN cursors: the
    cursor is opaque digits the last page gave, absent or empty for the first."""
    cursor = request.query.get("cursor") or None
    if cursor is not None and not (_CURSOR.fullmatch(cursor) and int(cursor) < 2**64):
        raise ApiError(422, "invalid", "is not a cursor this API gave", "query.cursor")
    return cursor, _int_query(request, "limit", 100, 1, MAX_PAGE)


async def _existing(book: ledger.Ledger, scope: ledger.Scope) -> ledger.BudgetState:
    state = await book.state(scope)
    if state is None:
        raise ApiError(404, "no_budget", f"{scope} has no budget", "path.name")
    return state


# --- health -----------------------------------------------------------------------------


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process answers (it does not ask Redis: that is every other call's answer)."""
    return _json({"status": "ok"})


# --- scopes and budgets -----------------------------------------------------------------


@routes.get("/v1/scopes")
async def list_scopes(request: web.Request) -> web.Response:
    kind = request.query.get("kind", "users")
    if kind not in bodies.KINDS:
        raise ApiError(422, "invalid", f"must be one of {sorted(bodies.KINDS)}", "query.kind")
    cursor, limit = _scan_page(request)
    page = await _book(request).list_scopes(bodies.KINDS[kind], cursor, limit)
    return _json(
        {"kind": kind, "items": [{"name": n} for n in page.items], "next_cursor": page.cursor}
    )


@routes.get(_SCOPE)
async def show_scope(request: web.Request) -> web.Response:
    state = await _existing(_book(request), _scope(request))
    return _json(bodies.state_json(state))


@routes.put(_SCOPE + "/budget")
async def set_budget(request: web.Request) -> web.Response:
    """Replace the scope's limits (what is not given is no limit); spend is kept."""
    scope = _scope(request)
    body = await _body(request, bodies.BudgetBody)
    budget = body.budget()
    await _step(_book(request).set_budget(scope, budget), scope)
    return _json({"scope": bodies.scope_json(scope), "budget": bodies.budget_json(budget)})


@routes.patch(_SCOPE + "/budget")
async def change_budget(request: web.Request) -> web.Response:
    """Change only what is given (a JSON merge patch: null removes a limit); what the
    scope spent this period is kept. A rolling window goes when the period changes
    to another kind, unless the patch names it."""
    book, scope = _book(request), _scope(request)
    patch = await _json_object(request)
    # Read, then write, as `budget set` does: two changes of one scope at the same
    # instant may lose one (the last write wins); each ledger step stays atomic.
    current = await book.get_budget(scope)
    merged = {} if current is None else bodies.budget_json(current)
    if "period" in patch and patch["period"] != "rolling" and "window_s" not in patch:
        merged.pop("window_s", None)
    merged.update(patch)
    try:
        body = bodies.BudgetBody.model_validate(merged)
    except ValidationError as exc:
        raise invalid(exc) from None
    # Spend thresholds are not in the API's bodies yet (set with `budget set
    # --thresholds`): a patch keeps them.
    budget = dataclasses.replace(
        body.budget(), thresholds=None if current is None else current.thresholds
    )
    await _step(book.set_budget(scope, budget), scope)
    return _json({"scope": bodies.scope_json(scope), "budget": bodies.budget_json(budget)})


@routes.delete(_SCOPE + "/budget")
async def delete_budget(request: web.Request) -> web.Response:
    scope = _scope(request)
    if not await _or_none(_book(request).delete(scope)):
        raise ApiError(404, "no_budget", f"{scope} has no budget", "path.name")
    return web.Response(status=204)


@routes.post(_SCOPE + "/reset")
async def reset_spend(request: web.Request) -> web.Response:
    """Zero the current period's spend; reservations in flight stay."""
    scope = _scope(request)
    if not await _or_none(_book(request).reset(scope)):
        raise ApiError(404, "no_budget", f"{scope} has no budget", "path.name")
    return _json({"scope": bodies.scope_json(scope), "reset": True})


@routes.put(f"/v1/scopes/users/{_NAME}/models/{{model:[^/]+}}/budget")
async def set_model_budget(request: web.Request) -> web.Response:
    user, model = _name(request), _name(request, "model")
    body = await _body(request, bodies.BudgetBody)
    budget = body.budget()
    await _step(_book(request).set_model_budget(user, model, budget), ledger.Scope("user", user))
    return _json(
        {
            "scope": {"kind": "users", "name": user},
            "model": model,
            "budget": bodies.budget_json(budget),
        }
    )


# --- membership -------------------------------------------------------------------------


@routes.put("/v1/scopes/teams/" + _NAME)
async def create_team(request: web.Request) -> web.Response:
    """Create a team in its organisation (idempotent; a team never changes org)."""
    team = _name(request)
    body = await _body(request, bodies.TeamBody)
    await _step(_book(request).create_team(team, body.org), ledger.Scope("team", team))
    return _json({"scope": {"kind": "teams", "name": team}, "org": body.org})


@routes.get(f"/v1/scopes/users/{_NAME}/membership")
async def show_membership(request: web.Request) -> web.Response:
    """The user's team and org, with or without a budget; 404 only for a user the
    ledger has no record of."""
    user = _name(request)
    return _json(_membership_json(user, await _membership(_book(request), user)))


async def _membership(book: ledger.Ledger, user: str) -> ledger.Membership:
    found = await book.membership(user)
    if found is None:
        raise ApiError(404, "unknown_scope", f"user {user!r} is not known", "path.name")
    return found


def _membership_json(user: str, found: ledger.Membership) -> dict[str, Any]:
    return {"user": user, "team": found.team, "org": found.org}


@routes.put(f"/v1/scopes/users/{_NAME}/membership")
async def set_membership(request: web.Request) -> web.Response:
    """Put the user in a team (and its org), directly in an org, or in neither ({})."""
    user = _name(request)
    body = await _body(request, bodies.MembershipBody)
    book = _book(request)
    await _step(book.set_membership(user, team=body.team, org=body.org), ledger.Scope("user", user))
    # A team's organisation is the ledger's to say.
    return _json(_membership_json(user, await _membership(book, user)))


@routes.get("/v1/scopes/teams/" + _NAME + "/members")
async def team_members(request: web.Request) -> web.Response:
    """One page of a team's members (404 for a team never created)."""
    return await _members(request, ledger.Scope("team", _name(request)))


@routes.get("/v1/scopes/orgs/" + _NAME + "/members")
async def org_members(request: web.Request) -> web.Response:
    """One page of the users directly in an organisation, in none of its teams."""
    return await _members(request, ledger.Scope("org", _name(request)))


async def _members(request: web.Request, scope: ledger.Scope) -> web.Response:
    cursor, limit = _scan_page(request)
    page = await _step(_book(request).members(scope, cursor, limit), scope)
    return _json(
        {
            "scope": bodies.scope_json(scope),
            "items": [{"name": n} for n in page.items],
            "next_cursor": page.cursor,
        }
    )


@routes.delete(f"/v1/scopes/users/{_NAME}/membership")
async def leave(request: web.Request) -> web.Response:
    """Take the user out of its team and org (its budget goes with it)."""
    user = _name(request)
    await _step(_book(request).set_membership(user), ledger.Scope("user", user))
    return web.Response(status=204)


# --- runs -------------------------------------------------------------------------------

_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run"]
    if not _RUN_ID.fullmatch(run_id):
        raise ApiError(422, "invalid", "must be 1-128 characters of [A-Za-z0-9._:-]", "path.run")
    return run_id


@routes.get(f"/v1/scopes/users/{_NAME}/runs/{{run:[^/]+}}")
async def show_run(request: web.Request) -> web.Response:
    """A run of the user: its cap, spend, hold and state (404 when it has no such run)."""
    return await _run_step(request, "show")


@routes.post(f"/v1/scopes/users/{_NAME}/runs/{{run:[^/]+}}/close")
async def close_run(request: web.Request) -> web.Response:
    """Close a run (idempotent): no new jobs; its unused hold flows back."""
    return await _run_step(request, "close")


async def _run_step(request: web.Request, op: str) -> web.Response:
    book, user, run_id = _book(request), _name(request), _run_id(request)
    step = book.close_run if op == "close" else book.run_state
    state = await _step(step(user, run_id), ledger.Scope("user", user))
    if state is None:
        raise ApiError(404, "unknown_run", f"user {user!r} has no run {run_id!r}", "path.run")
    return _json(run_json(state))


# --- credits ----------------------------------------------------------------------------


@routes.get(_SCOPE + "/grants")
async def list_grants(request: web.Request) -> web.Response:
    book, scope = _book(request), _scope(request)
    start = _int_query(request, "cursor", 0, 0, 2**40)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    await _existing(book, scope)
    # The ledger answers every grant at once (a scope holds at most 100 active ones,
    # and the spent ones); pages are cut here, in the ledger's stable order.
    grants = (await _step(book.grants(scope), scope))[start : start + limit]
    following = str(start + limit) if len(grants) == limit else None
    return _json({"items": [bodies.grant_json(g) for g in grants], "next_cursor": following})


@routes.post(_SCOPE + "/grants")
async def add_grant(request: web.Request) -> web.Response:
    """Add credit once per grant id: 201 the first time, 200 with the stored grant for
    a retry, 409 when the id was used for other terms."""
    book, scope = _book(request), _scope(request)
    body = await _body(request, bodies.GrantBody)
    created, stored = await _step(book.grant(scope, body.grant()), scope)
    if not created and not _same_terms(body, stored):
        raise ApiError(409, "grant_id_reused", f"grant {body.id!r} exists with other terms", "id")
    return _json({"created": created, "grant": bodies.grant_json(stored)}, 201 if created else 200)


def _same_terms(body: bodies.GrantBody, stored: ledger.Grant) -> bool:
    return (
        body.amount_nanousd,
        body.priority,
        body.effective_ms,
        body.expires_ms,
    ) == (stored.amount_nanousd, stored.priority, stored.effective_ms, stored.expires_ms)


@routes.post(_SCOPE + "/adjustments")
async def adjust(request: web.Request) -> web.Response:
    """Change credits by hand, once per id: 201 the first time, 200 with what was
    applied for a retry, 409 when the id was used with another amount."""
    book, scope = _book(request), _scope(request)
    body = await _body(request, bodies.AdjustmentBody)
    done = await _step(book.adjust(scope, body.id, body.amount_nanousd, body.note), scope)
    # None: a debit stored before asked amounts were kept; its retry cannot be told
    # from a reuse, and is answered as a retry.
    if not done.created and done.amount_nanousd not in (None, body.amount_nanousd):
        raise ApiError(
            409, "adjustment_id_reused", f"adjustment {body.id!r} exists with another amount", "id"
        )
    answer = {"id": body.id, "created": done.created, "applied_nanousd": done.applied_nanousd}
    return _json(answer, 201 if done.created else 200)


@routes.get(_SCOPE + "/history")
async def history(request: web.Request) -> web.Response:
    """The scope's credit entries, oldest first; ``cursor`` is where a page starts."""
    book, scope = _book(request), _scope(request)
    start = _int_query(request, "cursor", 0, 0, 2**40)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    await _existing(book, scope)
    entries = await _step(book.history(scope, start, limit), scope)
    following = str(start + len(entries)) if len(entries) == limit else None
    return _json({"items": [bodies.entry_json(e) for e in entries], "next_cursor": following})
