"""Model calls through ``litellm.acompletion``: timeouts, bounded retries, error translation.

This module and ``worker.pricebook`` (prices and usage) are the only ones that import
litellm, and only where its cost map is read from its bundled copy (see
``worker.startup``). Importing this module changes nothing in litellm: the start-up step
calls ``configure_litellm``, which turns litellm's own retries, callbacks and debug
banners off (the worker retries itself, so that it can extend its reservation's lease
before each retry and report how many attempts a job took) and warms it up.

litellm exceptions are translated here, once, into ``worker.errors``; the translated
message is built from the exception's class, status code and a short, redacted provider
message, never from the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

from worker import startup
from worker.errors import PermanentProviderError, ProviderError, RetryableProviderError
from worker.pricebook import usage_of
from worker.prices import TokenUsage
from worker.redact import redact, secrets_of

# A check, not a setting: litellm reads its cost map when imported, and must read its own.
startup.require_local_cost_map()

import httpx  # what litellm and openai call providers with
import litellm
import openai  # litellm's dependency; its connection/timeout errors are chained
from litellm.exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    ContextWindowExceededError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    Timeout,
)

if TYPE_CHECKING:
    from worker.models import ModelEntry
    from worker.settings import Settings


def configure_litellm() -> None:
    """litellm's process-wide settings for the worker, and its first-use work done now.
    Called once, by ``worker.startup.prepare``."""
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.num_retries = None
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.input_callback = []
    litellm.service_callback = []
    _warm_up()


def _warm_up() -> None:
    """One offline call (litellm's ``mock_response``), so litellm's first-use work, lazy
    imports and pydantic schema builds (~0.3 s), is done at start-up rather than inside the
    first job. Those builds warn about litellm's own TypedDicts (UserWarning, "ReadOnly
    qualifier"); silenced here, where they happen, rather than in every caller."""
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        litellm.completion(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "warm-up"}],
            mock_response="ok",
            api_key="sk-warm-up",
            max_tokens=1,
            num_retries=0,
        )


RetryHook = Callable[[int, float], Awaitable[None]]
"""``before_retry(attempt, delay_s)``: called after failed attempt ``attempt`` (1-based),
before sleeping ``delay_s`` and trying again."""

_DEADLINE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful call: the OpenAI-format chat completion as a plain dict, the provider's
    own usage (the actual cost is computed from it, never guessed; None when the response
    reports none) and how many attempts it took."""

    response: dict[str, Any]
    usage: TokenUsage | None
    attempts: int

    @property
    def prompt_tokens(self) -> int:
        """The usage's prompt tokens; 0 when the response reports no usage."""
        return self.usage.prompt_tokens if self.usage is not None else 0

    @property
    def completion_tokens(self) -> int:
        """The usage's completion tokens; 0 when the response reports no usage."""
        return self.usage.completion_tokens if self.usage is not None else 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Provider:
    """Calls models with bounded retries.

    A call is tried at most ``max_retries + 1`` times. Only retryable failures (429, 5xx,
    timeouts, connection errors) are retried, after ``backoff_s * 2**(attempt - 1)`` plus up
    to 50% jitter, capped at ``backoff_max_s``; a 429's Retry-After, when the provider sends
    one, replaces that delay (still capped). ``timeout_s`` (or a model's own ``timeout`` in
    its litellm_params) bounds each attempt: litellm applies it per connect and per read,
    so a hard deadline a little later bounds the attempt as a whole, which keeps the
    worst case of a call computable for the reservation's lease.
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> Provider:
        """The worker's provider: ``BW_MODEL_TIMEOUT_S``, ``BW_MODEL_MAX_RETRIES`` and
        the backoff settings."""
        return cls(
            timeout_s=settings.model_timeout_s,
            max_retries=settings.model_max_retries,
            backoff_s=settings.retry_backoff_s,
            backoff_max_s=settings.retry_backoff_max_s,
        )

    def __init__(
        self,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        backoff_max_s: float,
    ) -> None:
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0; max_retries and backoffs must be >= 0")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._random = random.Random()

    async def complete(
        self,
        entry: ModelEntry,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        max_tokens: int,
        *,
        before_retry: RetryHook | None = None,
    ) -> Completion:
        """Call ``entry``'s model. Raises ``RetryableProviderError`` (retries exhausted) or
        ``PermanentProviderError``; either carries ``attempts``, the number of calls
        made. An exception from ``before_retry`` ends the call
        and propagates as it is (the worker's lease could not be extended: stop)."""
        # The model list's litellm_params win over the job's params, and the worker's own
        # settings win over both: a job can never redirect a call or change its retries.
        kwargs: dict[str, Any] = {
            **params,
            "timeout": self.timeout_s,
            **entry.litellm_params,
            "messages": messages,
            "max_tokens": max_tokens,
            "num_retries": 0,
            "max_retries": 0,
        }
        kwargs.pop("stream", None)
        deadline_s = self.attempt_limit_s(entry)
        attempt = 1
        while True:
            try:
                async with asyncio.timeout(deadline_s):
                    response = await litellm.acompletion(**kwargs)
            except Exception as exc:
                secrets = secrets_of(entry.litellm_params, messages)
                error = translate_error(exc, secrets=secrets, attempts=attempt)
                if not error.retryable or attempt > self.max_retries:
                    raise error from None
                delay_s = self.retry_delay_s(attempt, _retry_after_s(exc))
                if before_retry is not None:
                    await before_retry(attempt, delay_s)
                await asyncio.sleep(delay_s)
                attempt += 1
                continue
            return _completion(response, attempt)

    def attempt_limit_s(self, entry: ModelEntry | None = None) -> float:
        """The longest one attempt at ``entry``'s model can last: its timeout plus a grace."""
        timeout_s = self.timeout_s if entry is None else entry.litellm_params.get("timeout")
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool):
            timeout_s = self.timeout_s
        return float(timeout_s) + _DEADLINE_GRACE_S

    def retry_delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.backoff_max_s)
        base_s = self.backoff_s * 2.0 ** (attempt - 1)
        return min(base_s * (1 + 0.5 * self._random.random()), self.backoff_max_s)


def _completion(response: Any, attempts: int) -> Completion:
    """The plain-dict completion and its usage (``pricebook.usage_of``: None when the
    response carries none, which the job path settles at the reservation)."""
    return Completion(response=response.model_dump(), usage=usage_of(response), attempts=attempts)


# --- Error translation ------------------------------------------------------------------

_LITELLM_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*)?(?:\w+Error:\s*)?(?:\w+Exception\s*-\s*)?")


def _provider_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        message = str(exc)
    return _LITELLM_PREFIX.sub("", message, count=1)


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    return None


# Each foreign exception type a call can raise, and the ``error_type`` it is reported as.
# An exception takes the entry of the first class of its MRO found here, so the most
# specific class wins: ContextWindowExceededError is a BadRequestError, Timeout an
# APIConnectionError, litellm's CallerCredentialRateLimitError a RateLimitError.
# ``_BY_STATUS``: the status code decides (openai's errors, litellm's bare APIError).
_BY_STATUS: Final = "by status"
_ERROR_TYPES: Final[Mapping[type, str]] = {
    ContextWindowExceededError: "context_window_exceeded",
    BadRequestError: "bad_request",
    AuthenticationError: "authentication_error",
    PermissionDeniedError: "permission_denied",
    NotFoundError: "not_found",
    RateLimitError: "rate_limited",
    Timeout: "timeout",
    openai.APITimeoutError: "timeout",
    TimeoutError: "timeout",  # the attempt's own deadline (asyncio.timeout)
    APIConnectionError: "connection_error",
    openai.APIConnectionError: "connection_error",
    # Raw transport errors, should one escape litellm's own wrapping: as litellm's twins.
    httpx.TimeoutException: "timeout",
    httpx.NetworkError: "connection_error",
    InternalServerError: "server_error",
    ServiceUnavailableError: "server_error",
    BadGatewayError: "server_error",
    APIError: _BY_STATUS,
    openai.APIError: _BY_STATUS,
}
# litellm reports a refused connection or a timeout as an InternalServerError (or another
# server error) whose cause is openai's error: the first such cause in the chain names it.
_CAUSE_TYPES: Final[Mapping[type, str]] = {
    openai.APITimeoutError: "timeout",
    openai.APIConnectionError: "connection_error",
}
_RETRYABLE: Final = frozenset({"rate_limited", "timeout", "connection_error", "server_error"})
_UNKNOWN: Final = "provider_error"


def _most_specific(exc: BaseException, table: Mapping[type, str]) -> str | None:
    """The entry of the first class of ``exc``'s MRO that ``table`` has."""
    for cls in type(exc).__mro__:
        found = table.get(cls)
        if found is not None:
            return found
    return None


def _by_status(status: int | None) -> str:
    if status == 429:
        return "rate_limited"
    if status is not None and status >= 500:
        return "server_error"
    return _UNKNOWN


def _cause_type(exc: BaseException) -> str | None:
    for cause in _chain(exc):
        found = _most_specific(cause, _CAUSE_TYPES)
        if found is not None:
            return found
    return None


def _classify(exc: BaseException) -> str:
    """The ``error_type`` of ``exc`` (see ``_ERROR_TYPES``)."""
    error_type = _most_specific(exc, _ERROR_TYPES) or _UNKNOWN
    if error_type == _BY_STATUS:
        return _by_status(_status_code(exc))
    if error_type == "server_error":
        return _cause_type(exc) or error_type
    return error_type


def translate_error(
    exc: BaseException, *, secrets: Iterable[str] = (), attempts: int = 1
) -> ProviderError:
    """The ``worker.errors`` twin of a litellm (or other) exception, after ``attempts``
    calls, with a message made of the class name, the status code and a redacted,
    truncated provider message."""
    error_type = _classify(exc)
    retryable = error_type in _RETRYABLE
    status = _status_code(exc)
    if error_type == "rate_limited":
        status = 429
    elif error_type in ("timeout", "connection_error"):
        status = None  # no response arrived; litellm's 408/500 would mislead
    head = type(exc).__name__ if status is None else f"{type(exc).__name__} (status {status})"
    detail = redact(_provider_message(exc), secrets)
    if not detail and isinstance(exc, TimeoutError):
        detail = "no complete reply before the attempt's deadline"
    message = f"{head}: {detail}" if detail else head
    cls = RetryableProviderError if retryable else PermanentProviderError
    return cls(error_type, message, status_code=status, attempts=attempts)


def _retry_after_s(exc: BaseException) -> float | None:
    """A 429's Retry-After (``retry-after-ms`` first, then seconds or an HTTP date)."""
    if not isinstance(exc, RateLimitError):
        return None
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    seconds = headers.get("retry-after")
    try:
        if millis is not None:
            delay_s = float(millis) / 1000
        elif seconds is None:
            return None
        elif seconds.strip().replace(".", "", 1).isdigit():
            delay_s = float(seconds)
        else:
            delay_s = (parsedate_to_datetime(seconds) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return max(delay_s, 0.0) if math.isfinite(delay_s) else None
