"""The user whose budget a thread (or task) last checked, whom the module's
``completion()`` and ``acompletion()`` charge."""

from __future__ import annotations

import weakref
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = ["check", "checked_by"]

T = TypeVar("T")

_checked: ContextVar[tuple[weakref.ref[Any], str] | None] = ContextVar(
    "budget_worker_compat_checked", default=None
)


def check(manager: object, user: str) -> None:
    """Remember that this thread (or task) checked ``user``'s budget with ``manager``."""
    _checked.set((weakref.ref(manager), user))


def checked_by(kind: type[T], verb: str, scope: str) -> tuple[T, str]:
    """The manager of type ``kind`` and the user this ``scope`` (thread or task) last
    checked; ``RuntimeError`` naming ``verb`` (the function called) when there is none."""
    checked = _checked.get()
    manager = checked[0]() if checked is not None else None
    if checked is None or not isinstance(manager, kind):
        raise RuntimeError(
            f"worker.compat.{verb}() charges the user whose budget this "
            f"{scope} last checked with a "
            f"{kind.__name__} (get_current_cost(user), get_total_budget(user) or "
            f"projected_cost(...)), and none was checked; check first, or call "
            f"budget_manager.{verb}(user=..., model=..., messages=...)"
        )
    return manager, checked[1]
