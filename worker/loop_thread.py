"""An event loop in a daemon thread, for synchronous wrappers of async APIs.

``SyncJobClient`` and ``BudgetManager`` run their coroutines here, so they work from
plain threads and from notebooks, whose own event loop is already running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread; ``owner`` names the wrapper in errors."""

    def __init__(self, name: str, owner: str) -> None:
        self.owner = owner
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, args=(self.loop,), name=name, daemon=True)
        self.thread.start()

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # As asyncio.run ends: tasks others started on this loop (litellm's logging
            # worker) are cancelled and awaited, not left to die with the loop.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coroutine`` on the loop and block for its result (up to ``timeout_s``)."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError(f"{self.owner} cannot be called from its own event loop")
        if not self.thread.is_alive():
            coroutine.close()
            raise RuntimeError(f"this {self.owner} is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout_s)

    def stop(self) -> None:
        """Stop the loop (ending its tasks) and wait for the thread; idempotent."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
