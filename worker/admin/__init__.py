"""The admin API: budgets, membership and credits of every scope over HTTP JSON, for
services written in any language (``budget-worker admin``).

- ``problems``: the one error shape (``{"error": {"code", "message", "field"}}``) and
  the table that turns every exception into a status;
- ``bodies``: what requests carry (pydantic models that name the wrong field) and
  how ledger values are written back;
- ``auth``: the bearer token, compared in constant time;
- ``idempotency``: the ``Idempotency-Key`` store, first answer replayed;
- ``routes``: one handler per operation, each one ledger step (the CLI's);
- ``server``: the application and its lifetime.

The contract is ``docs/admin-openapi.yaml``; ``tests/test_admin.py`` checks the running
server against it.
"""

from worker.admin.server import create_app, serve

__all__ = ["create_app", "serve"]
