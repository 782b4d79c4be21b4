"""Two ledger reads, done here until the ledger's own answer them: ``Ledger.grants``
and ``Ledger.list_scopes`` read redis-py's answers to ``HGETALL`` and ``HSCAN`` as
flat lists, but redis-py parses both into dicts, so both raise ``KeyError`` today.
These read the same keys through the ledger's connection and take either shape.
Each is a stand-in: when the ledger's own reads work, the routes call them again and
this module goes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker import keys, ledger

_INDEX = {"user": keys.USERS_INDEX, "team": keys.TEAMS_INDEX, "org": keys.ORGS_INDEX}


def _pairs(answer: Any) -> Iterable[tuple[bytes, bytes]]:
    if isinstance(answer, dict):
        return answer.items()
    return zip(answer[0::2], answer[1::2], strict=True)


def _text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", "surrogatepass")


async def scope_page(book: ledger.Ledger, kind: str, cursor: str | None, count: int) -> ledger.Page:
    """What ``Ledger.list_scopes`` answers: one page of the ids of every scope of
    ``kind``, sorted within the page."""
    following, found = await book.conn.command(
        "HSCAN", _INDEX[kind], cursor or "0", "COUNT", str(count)
    )
    names = sorted(_text(name) for _, name in _pairs(found))
    following = _text(following) if isinstance(following, bytes | str) else str(following)
    return ledger.Page(items=names, cursor=None if following == "0" else following)


async def scope_grants(book: ledger.Ledger, scope: ledger.Scope) -> list[ledger.Grant]:
    """What ``Ledger.grants`` answers: every grant of the scope, in drawing order."""
    _, prefix = await book._locate(scope)  # the stand-in needs the key layout
    found = []
    for grant_id, value in _pairs(await book.conn.command("HGETALL", prefix + "grants")):
        remaining, amount, priority, effective, expires = (int(v) for v in value.split())
        found.append(
            ledger.Grant(
                id=_text(grant_id),
                amount_nanousd=amount,
                priority=priority,
                effective_ms=effective,
                expires_ms=None if expires < 0 else expires,
                remaining_nanousd=remaining,
            )
        )
    return sorted(found, key=lambda g: (g.priority, g.expires_ms or 2**62, g.id))
