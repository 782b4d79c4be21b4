"""Bearer-token authentication of every admin request but ``/healthz``.

The token is compared with :func:`hmac.compare_digest`, so the time an answer takes
says nothing about how much of a guess was right. Missing and wrong tokens get the same
401 (with ``WWW-Authenticate``), before routing: an anonymous caller cannot even tell
which paths exist.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from worker.admin.problems import ApiError

OPEN_PATHS = frozenset({"/healthz"})
MIN_TOKEN_CHARS = 16
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="budget-worker admin"'}


def bearer_auth(token: str) -> Middleware:
    """A middleware that lets through requests carrying ``Authorization: Bearer
    <token>``, and ``OPEN_PATHS``."""
    expected = token.encode("utf-8")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "a bearer token is required", headers=_CHALLENGE)
        candidate = given.strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(candidate, expected):
            raise ApiError(401, "unauthorized", "the bearer token is wrong", headers=_CHALLENGE)
        return await handler(request)

    return authenticate
