"""Stand-ins for the two things outside the worker's own code that a job path touches,
so every outcome of the job and spend paths can be tested in-process, in milliseconds,
beside the end-to-end tests through real servers (httpx's ``MockTransport`` is the
model: one function decides each answer).

- :class:`ScriptedProvider`: a model whose answer to each call is a function of it.
- :class:`MemoryPublisher`: a broker that keeps what it was sent.

The ledger is never faked: tests run these against a real Redis.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from worker.models import ModelEntry
from worker.prices import TokenUsage
from worker.provider import Completion


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the spend path made it."""

    entry: ModelEntry
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    max_tokens: int


Handler = Callable[[Call], Completion | Awaitable[Completion]]


def answer(
    prompt_tokens: int = 10, completion_tokens: int = 5, text: str = "ok", attempts: int = 1
) -> Completion:
    """A successful completion with this usage."""
    response = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Completion(
        response=response, usage=TokenUsage(prompt_tokens, completion_tokens), attempts=attempts
    )


class ScriptedProvider:
    """Answers each call with ``handler(call)`` (a completion, or raises). Records every
    call, and how many are running now (``running``) or were cancelled (``cancelled``)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda call: answer())
        self.calls: list[Call] = []
        self.running = 0
        self.cancelled = 0
        self.started = asyncio.Event()

    async def complete(
        self,
        entry: ModelEntry,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        max_tokens: int,
        *,
        before_retry: Callable[[int, float], Awaitable[None]] | None = None,
    ) -> Completion:
        call = Call(entry, messages, params, max_tokens)
        self.calls.append(call)
        self.running += 1
        self.started.set()
        try:
            result = self.handler(call)
            if inspect.isawaitable(result):
                result = await result
            assert isinstance(result, Completion)
            return result
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


@dataclass
class MemoryPublisher:
    """Keeps every published record; ``fail`` raises instead, for as long as it is set."""

    records: list[tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]] = field(
        default_factory=list
    )
    dead_letters: list[tuple[bytes | None, bytes, dict[str, Any]]] = field(default_factory=list)
    fail: BaseException | None = None

    async def publish(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        if self.fail is not None:
            raise self.fail
        self.records.append((topic, key, value, headers))

    async def dead_letter(self, key: bytes | None, value: bytes, **headers: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.dead_letters.append((key, value, headers))
