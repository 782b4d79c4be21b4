"""The admin application and its lifetime (``budget-worker admin``).

Middlewares, outermost first: errors (every exception becomes the JSON error shape),
authentication (before anything reads the body or Redis), idempotency. The body limit
is aiohttp's ``client_max_size``: a larger body is refused 413 as it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from aiohttp.typedefs import Handler

from worker import ledger
from worker.admin.auth import MIN_TOKEN_CHARS, bearer_auth
from worker.admin.idempotency import IdempotencyStore, idempotent_writes
from worker.admin.problems import error_response, translate
from worker.admin.routes import LEDGER, routes
from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger("budget_worker.admin")


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every exception as the JSON error shape; and one log line per write, the audit
    trail of who changed money when (method, path, status: never a body)."""
    try:
        response = await handler(request)
    except Exception as exc:
        error = translate(exc)
        if error.status >= 500:
            log.error("admin request failed", exc_info=exc)
        response = error_response(error)
    if request.method in _WRITES and response.status != 401:
        log.info(
            "admin write",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "replayed": "Idempotent-Replayed" in response.headers,
            },
        )
    return response


def create_app(
    book: ledger.Ledger,
    *,
    token: str,
    max_body_bytes: int = 65_536,
    idempotency_ttl_s: int = 86_400,
) -> web.Application:
    """The admin API over ``book``, for callers that carry ``token``."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"BW_ADMIN_TOKEN: must be at least {MIN_TOKEN_CHARS} characters")
    store = IdempotencyStore(book.idempotency_records(), idempotency_ttl_s)
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[errors, bearer_auth(token), idempotent_writes(store)],
    )
    app[LEDGER] = book
    app.add_routes(routes)
    return app


def token_of(settings: Settings) -> str:
    """The admin token; a ``ConfigError`` naming the variable when it is not set."""
    token = "" if settings.admin_token is None else settings.admin_token.get_secret_value()
    if not token:
        raise ConfigError(
            "BW_ADMIN_TOKEN is not set: the admin API answers only callers with its bearer "
            f"token (at least {MIN_TOKEN_CHARS} characters; e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ConfigError(
            f"BW_ADMIN_TOKEN: must be at least {MIN_TOKEN_CHARS} characters, without "
            "leading or trailing spaces"
        )
    return token


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then finish requests under way and close."""
    token = token_of(settings)
    book = ledger.Ledger.from_settings(settings)
    try:
        await book.check_access()  # a wrong password is a ConfigError now, not per request
        app = create_app(
            book,
            token=token,
            max_body_bytes=settings.admin_max_body_bytes,
            idempotency_ttl_s=settings.admin_idempotency_ttl_s,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.admin_host, settings.admin_port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"BW_ADMIN_HOST/BW_ADMIN_PORT: cannot listen on "
                    f"{settings.admin_host}:{settings.admin_port}: {exc.strerror}"
                ) from None
            log.info("admin API listening", extra={"addresses": runner.addresses})
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        with contextlib.suppress(Exception):
            await book.close()


__all__ = ["create_app", "serve", "token_of"]
