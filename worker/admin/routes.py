"""One handler per admin operation; each is the ledger step the CLI runs, no more.

Scopes are addressed as ``/v1/scopes/{kind}/{name}`` with ``kind`` one of ``users``,
``teams``, ``orgs`` and ``name`` the id, percent-encoded (``%2F`` for ``/``). A scope
"exists" when the ledger has a state for it (``state`` is not None); operations on
what a scope holds (grants, history, reset) answer 404 for one that does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from worker import ledger
from worker.admin import bodies
from worker.admin.problems import JSON, ApiError, invalid

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


async def _step(call: Awaitable[T]) -> T:
    """A ledger step whose ``ValueError`` is a refusal of this request (a team not
    created, a scope without a budget record, too many grants), not a server fault."""
    try:
        return await call
    except ValueError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


async def _or_none(step: Awaitable[bool]) -> bool:
    """A delete or reset of a team never created answers like one without a budget (as
    ``budget delete`` does): there is nothing of it to remove."""
    try:
        return await step
    except ValueError:
        return False


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
    cursor = request.query.get("cursor") or None
    if cursor is not None and not (_CURSOR.fullmatch(cursor) and int(cursor) < 2**64):
        raise ApiError(422, "invalid", "is not a cursor this API gave", "query.cursor")
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
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
    await _step(_book(request).set_budget(scope, budget))
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
    budget = body.budget()
    await _step(book.set_budget(scope, budget))
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
    await _step(_book(request).set_model_budget(user, model, budget))
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
    await _step(_book(request).create_team(team, body.org))
    return _json({"scope": {"kind": "teams", "name": team}, "org": body.org})


@routes.get(f"/v1/scopes/users/{_NAME}/membership")
async def show_membership(request: web.Request) -> web.Response:
    user = _name(request)
    state = await _existing(_book(request), ledger.Scope("user", user))
    return _json({"user": user, "team": state.team, "org": state.org})


@routes.put(f"/v1/scopes/users/{_NAME}/membership")
async def set_membership(request: web.Request) -> web.Response:
    """Put the user in a team (and its org), directly in an org, or in neither ({})."""
    user = _name(request)
    body = await _body(request, bodies.MembershipBody)
    book = _book(request)
    await _step(book.set_membership(user, team=body.team, org=body.org))
    # A team's organisation is the ledger's to say; a user without a budget has no state.
    state = await book.state(ledger.Scope("user", user))
    team, org = (body.team, body.org) if state is None else (state.team, state.org)
    return _json({"user": user, "team": team, "org": org})


@routes.delete(f"/v1/scopes/users/{_NAME}/membership")
async def leave(request: web.Request) -> web.Response:
    """Take the user out of its team and org (its budget goes with it)."""
    await _step(_book(request).set_membership(_name(request)))
    return web.Response(status=204)


# --- credits ----------------------------------------------------------------------------


@routes.get(_SCOPE + "/grants")
async def list_grants(request: web.Request) -> web.Response:
    book, scope = _book(request), _scope(request)
    start = _int_query(request, "cursor", 0, 0, 2**40)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    await _existing(book, scope)
    # The ledger answers every grant at once (a scope holds at most 100 active ones,
    # and the spent ones); pages are cut here, in the ledger's stable order.
    grants = (await _step(book.grants(scope)))[start : start + limit]
    following = str(start + limit) if len(grants) == limit else None
    return _json({"items": [bodies.grant_json(g) for g in grants], "next_cursor": following})


@routes.post(_SCOPE + "/grants")
async def add_grant(request: web.Request) -> web.Response:
    """Add credit once per grant id: 201 the first time, 200 with the stored grant for
    a retry, 409 when the id was used for other terms."""
    book, scope = _book(request), _scope(request)
    body = await _body(request, bodies.GrantBody)
    created, stored = await _step(book.grant(scope, body.grant()))
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
    """Change credits by hand, once per id (a retry answers what was applied)."""
    book, scope = _book(request), _scope(request)
    body = await _body(request, bodies.AdjustmentBody)
    applied = await _step(book.adjust(scope, body.id, body.amount_nanousd, body.note))
    if not _could_apply(body.amount_nanousd, applied):
        raise ApiError(
            409, "adjustment_id_reused", f"adjustment {body.id!r} exists with another amount", "id"
        )
    return _json({"id": body.id, "applied_nanousd": applied})


def _could_apply(asked: int, applied: int) -> bool:
    """Whether ``applied`` can be this request's own answer: a credit is applied whole,
    a debit takes between nothing and what was asked. Anything else is the answer of
    an earlier adjustment with this id and another amount (the ledger answers the
    stored one without saying so; a reused id whose amount fits goes unnoticed)."""
    return applied == asked if asked > 0 else asked <= applied <= 0


@routes.get(_SCOPE + "/history")
async def history(request: web.Request) -> web.Response:
    """The scope's credit entries, oldest first; ``cursor`` is where a page starts."""
    book, scope = _book(request), _scope(request)
    start = _int_query(request, "cursor", 0, 0, 2**40)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    await _existing(book, scope)
    entries = await _step(book.history(scope, start, limit))
    following = str(start + len(entries)) if len(entries) == limit else None
    return _json({"items": [bodies.entry_json(e) for e in entries], "next_cursor": following})
