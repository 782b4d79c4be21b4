"""Every admin error as one JSON shape, ``{"error": {"code", "message", "field"}}``,
and the table that maps each exception to its status.

``field`` names what was wrong as a dotted path: ``limit_nanousd`` for a body field,
``path.kind`` for a URL part, ``query.cursor``, ``header.Idempotency-Key``; ``null``
when no one field is to blame. Exceptions are translated here, once, at the boundary;
handlers raise :class:`ApiError` or let a ledger error through.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from worker.errors import (
    BudgetWorkerError,
    ConfigError,
    LedgerError,
    LedgerRefusal,
    LedgerUnavailable,
    LimitReached,
    NoBudgetRecord,
    ScopeConflict,
    UnknownScope,
)
from worker.ledger import JobsInFlight, Scope

JSON = "application/json"


class ApiError(Exception):
    """An answer other than success: HTTP ``status``, a stable ``code``, the ``field``
    at fault (or None), and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(error: ApiError) -> web.Response:
    return web.Response(
        status=error.status,
        text=json.dumps(error_body(error.code, error.message, error.field)),
        content_type=JSON,
        headers=error.headers,
    )


def invalid(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first problem pydantic found, with its field as a dotted path."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(422, "invalid", message, field)


# aiohttp's own refusals (routing, body size), by status: the code each one gets.
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


# The ledger's refusals, most specific first: (status, code). A scope the ledger does
# not know is 404 whether the path or the body names it (``field`` says which).
_REFUSALS: dict[type[LedgerRefusal], tuple[int, str]] = {
    NoBudgetRecord: (404, "no_budget"),
    UnknownScope: (404, "unknown_scope"),
    ScopeConflict: (409, "conflict"),
    LimitReached: (409, "limit_reached"),
    LedgerRefusal: (409, "conflict"),
}


def refused(exc: LedgerRefusal, addressed: Scope | None = None) -> ApiError:
    """The answer to a refusal of the ledger, naming the field at fault: ``path.name``
    when the refusal is about the scope the path addresses, else the body field of the
    scope's kind (``team``, ``org``); none for a limit reached."""
    status, code = next(v for cls, v in _REFUSALS.items() if isinstance(exc, cls))
    field: str | None = None
    if not isinstance(exc, LimitReached):
        about_path = addressed is not None and (addressed.kind, addressed.id) == (
            exc.kind,
            exc.name,
        )
        field = "path.name" if about_path else exc.kind
    return ApiError(status, code, str(exc), field)


def translate(exc: BaseException) -> ApiError:
    """The error to answer for ``exc``, the most specific class first: a user with
    jobs in flight and Redis being down are worth retrying, a script answering
    something impossible is the server's fault."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return invalid(exc)
    if isinstance(exc, web.HTTPException):
        code = _HTTP_CODES.get(exc.status, "http_error")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return ApiError(exc.status, code, exc.reason, headers=allow)
    if isinstance(exc, LedgerRefusal):
        return refused(exc)
    for cls, (status, code) in _LEDGER_ERRORS.items():
        if isinstance(exc, cls):
            retry = {"Retry-After": "1"} if getattr(exc, "retryable", False) else {}
            return ApiError(status, code, str(exc), headers=retry)
    return ApiError(500, "internal", "internal error")


# The ledger's errors, most specific first: (status, code).
_LEDGER_ERRORS: dict[type[BaseException], tuple[int, str]] = {
    JobsInFlight: (409, "jobs_in_flight"),
    LedgerUnavailable: (503, "ledger_unavailable"),
    ConfigError: (503, "ledger_refused"),
    LedgerError: (500, "ledger_error"),
    BudgetWorkerError: (500, "internal"),
}
