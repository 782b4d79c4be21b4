"""``BudgetManager``: the API for synchronous code (and notebooks, whose event loop is
already running), each method running its coroutine on a loop of its own in a
background thread, and ``user_dict``, a read-only view of the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from worker.compat.checked import check, checked_by
from worker.compat.manager import AsyncBudgetManager
from worker.compat.records import READ_ONLY, Duration, UserDict
from worker.compat.safe_path import ChargedCompletion
from worker.loop_thread import LoopThread
from worker.models import ModelList
from worker.settings import Settings

__all__ = ["BudgetManager", "completion"]


def _shut_down(loop: LoopThread, manager: AsyncBudgetManager) -> None:
    """Close the manager's connections on its loop, then stop the loop. Runs once, from
    ``close()`` or when the ``BudgetManager`` is collected (or at exit)."""
    if loop.thread.is_alive():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(manager.close(), loop.loop).result(timeout=10)
    loop.stop()


class BudgetManager:
    """``litellm.BudgetManager``'s synchronous API over the ledger (see ``worker.compat``'s
    docstring); every method blocks until Redis has answered. Safe to share between
    threads. ``close()`` (or ``with``) releases its connections."""

    def __init__(
        self,
        project_name: str,
        client_type: str = "local",
        api_base: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        redis_url: str | None = None,
        settings: Settings | None = None,
        models: ModelList | None = None,
    ) -> None:
        """Connects at once, as ``BudgetManager`` loads its data at once: raises
        :class:`LedgerUnavailable` naming the URL when no Redis answers there (and
        logs which one it is when ``BW_REDIS_URL`` is not set)."""
        self.project_name = project_name
        self.client_type = client_type
        self._loop = LoopThread("budget-manager-loop", "BudgetManager")

        async def build() -> AsyncBudgetManager:
            manager = AsyncBudgetManager(
                project_name,
                client_type,
                api_base,
                headers,
                redis_url=redis_url,
                settings=settings,
                models=models,
            )
            try:
                await manager.check()
            except BaseException:
                await manager.close()
                raise
            return manager

        try:
            self.manager = self._loop.run(build())
        except BaseException:
            self._loop.stop()
            raise
        # The finalizer holds the loop and the manager, never self, so an unclosed
        # BudgetManager (a notebook's) is still collected and its connections closed.
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self.manager)

    def close(self) -> None:
        """Close the Redis connections and stop the background loop; idempotent."""
        self._finalizer()

    def __enter__(self) -> BudgetManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def user_dict(self) -> UserDict:
        """Every user's record, read from the ledger on each lookup (see :class:`UserDict`)."""
        return UserDict(self)

    @user_dict.setter
    def user_dict(self, value: Any) -> None:
        raise TypeError(f"{READ_ONLY}: budgets are created with create_budget()")

    def create_budget(
        self,
        total_budget: float,
        user: str,
        duration: Duration | None = None,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        return self._loop.run(self.manager.create_budget(total_budget, user, duration, created_at))

    def projected_cost(self, model: str, messages: list[dict[str, Any]], user: str) -> float:
        projected = self._loop.run(self.manager.projected_cost(model, messages, user))
        check(self, user)
        return projected

    def get_total_budget(self, user: str) -> float:
        total = self._loop.run(self.manager.get_total_budget(user))
        check(self, user)
        return total

    def update_cost(
        self,
        user: str,
        completion_obj: Any = None,
        model: str | None = None,
        input_text: str | None = None,
        output_text: str | None = None,
    ) -> dict[str, Any]:
        return self._loop.run(
            self.manager.update_cost(user, completion_obj, model, input_text, output_text)
        )

    def get_current_cost(self, user: str) -> float:
        spent = self._loop.run(self.manager.get_current_cost(user))
        check(self, user)
        return spent

    def get_model_cost(self, user: str) -> dict[str, float]:
        return self._loop.run(self.manager.get_model_cost(user))

    def is_valid_user(self, user: str) -> bool:
        return self._loop.run(self.manager.is_valid_user(user))

    def get_users(self) -> list[str]:
        return self._loop.run(self.manager.get_users())

    def reset_cost(self, user: str) -> dict[str, Any]:
        return self._loop.run(self.manager.reset_cost(user))

    def reset_on_duration(self, user: str) -> None:
        self._loop.run(self.manager.reset_on_duration(user))

    def update_budget_all_users(self) -> None:
        self._loop.run(self.manager.update_budget_all_users())

    def save_data(self) -> dict[str, str]:
        return self._loop.run(self.manager.save_data())

    def load_data(self) -> None:
        self._loop.run(self.manager.load_data())

    def completion(
        self, user: str, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> ChargedCompletion:
        """The safe path: see :meth:`AsyncBudgetManager.acompletion`."""
        return self._loop.run(self.manager.acompletion(user, model, messages, **kwargs))


def completion(model: str, messages: list[dict[str, Any]], **kwargs: Any) -> ChargedCompletion:
    """``litellm.completion`` on the safe path, for code written against
    ``BudgetManager``: the call is reserved, made and charged for the user whose budget
    this thread last checked with a :class:`BudgetManager` (``get_current_cost``,
    ``get_total_budget`` or ``projected_cost``), exactly as
    ``budget_manager.completion(user, model, messages, **kwargs)``. Raises
    :class:`BudgetExceeded` when the budget cannot take the call (nothing spent, no
    call made), ``RuntimeError`` when no budget was checked."""
    manager, user = checked_by(BudgetManager, "completion", "thread")
    return manager.completion(user, model, messages, **kwargs)
