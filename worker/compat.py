"""LiteLLM's ``BudgetManager`` API over the Redis ledger.

Code written for ``litellm.BudgetManager`` runs with its import line changed::

    from worker.compat import BudgetManager, completion   # was: from litellm import ...

and its budgets then live in the ledger: durable, shared by every process that points
at the same Redis, rolled over by the ledger itself, and the same budgets the worker
enforces on jobs. Amounts are floats of USD at this API, as in ``BudgetManager``;
inside they are integers of nano-USD. What differs from LiteLLM, and why, is in
``docs/contract.md`` ("The BudgetManager-compatible API") and ``docs/migration.md``.

**The safe path.** ``BudgetManager``'s own pattern (check ``get_current_cost`` against
the budget, call the model, then ``update_cost``) overspends, by up to the cost of every
call that passed the check at the same time. The safe path estimates an upper bound,
reserves it atomically, calls, and settles the actual cost (or releases on error), so a
budget is never spent past, however many processes share it (as far as the estimate
bounds the call: ``docs/estimation.md``). It is reached two ways:

- ``budget_manager.completion(user, model, messages, ...)`` (``acompletion`` on
  ``AsyncBudgetManager``);
- the module's :func:`completion` (and :func:`acompletion`), stand-ins for litellm's,
  so the notebook pattern needs only its import changed: they charge the user whose
  budget the calling thread (or task) last checked with ``get_current_cost``,
  ``get_total_budget`` or ``projected_cost``, and the ``update_cost`` that follows
  records nothing more, since the call is already charged.

Both raise :class:`BudgetExceeded` when the reservation is refused. Their admission
policy is ``clamp`` unless ``BW_ADMISSION_POLICY`` says otherwise: a call without
``max_tokens`` gets what the budget has left instead of being refused for the 1,024
tokens of the default bound.

``AsyncBudgetManager`` is the API as coroutines; ``BudgetManager`` wraps it for
synchronous code (and notebooks, whose event loop is already running) by running the
coroutines on an event loop of its own, in a background thread, and adds
``user_dict``, a read-only view of the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
import weakref
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from schemas.jobs import CompletionJob, JobParams
from schemas.money import nanousd_to_usd, usd_to_nanousd
from worker import ledger, spend
from worker.errors import BudgetWorkerError, ConfigError, LedgerUnavailable
from worker.estimate import estimate, framing_for, prompt_token_bound
from worker.gate import LedgerGate
from worker.leases import LeaseKeeper
from worker.metrics import Metrics
from worker.models import ModelEntry, ModelList, tokenizer_family
from worker.pricebook import cost_map_price, usage_of
from worker.prices import TokenUsage
from worker.provider import Completion, Provider
from worker.settings import AdmissionPolicy, Settings

__all__ = [
    "AsyncBudgetManager",
    "BudgetExceeded",
    "BudgetManager",
    "BudgetRecord",
    "ChargedCompletion",
    "Duration",
    "UnknownUser",
    "UserDict",
    "acompletion",
    "completion",
]

log = logging.getLogger("budget_worker.compat")
T = TypeVar("T")
Duration = Literal["daily", "weekly", "monthly", "yearly"]

DAYS: Final[dict[str, int]] = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}
"""``BudgetManager``'s durations in days (litellm's ``DAYS_IN_A_WEEK``, ``..._MONTH``,
``..._YEAR``)."""
_DAY_S: Final = 86_400


# Arguments of ``completion`` that choose where and how litellm connects. They are the
# caller's (trusted code), unlike a job's, which may only set ``JobParams``.
_CONNECTION_ARGS: Final = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "headers",
    }
)
_PARAM_ARGS: Final = frozenset(JobParams.model_fields)
# The estimate reads a job's messages and params only; the ledger is told the user.
_ESTIMATE_USER: Final = "compat"

# The ledger refuses an empty user id; BudgetManager takes one like any other. "" is kept
# as "\0" and every id that starts with "\0" gets one more, so no two ids meet. Jobs
# cannot name either (their user ids have no control characters).
_EMPTY_USER: Final = "\x00"


def _ledger_user(user: str) -> str:
    if user == "" or user.startswith(_EMPTY_USER):
        return _EMPTY_USER + user
    return user


def _compat_user(name: str) -> str:
    return name[1:] if name.startswith(_EMPTY_USER) else name


class BudgetExceeded(BudgetWorkerError):
    """The safe path refused a call: nothing was spent and the model was not called.

    ``reason`` is the contract's rejection reason: ``budget_exceeded`` (the estimate does
    not fit what remains), ``rate_limited`` (RPM/TPM; ``retryable``, after
    ``retry_after_s``) or ``no_budget`` (the user has none).
    """

    def __init__(
        self,
        user: str,
        reason: Literal["budget_exceeded", "rate_limited", "no_budget"],
        *,
        estimated_cost_nanousd: int,
        remaining: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        if reason == "budget_exceeded":
            message = (
                f"budget exceeded for user {user!r}: the call may cost up to "
                f"{estimated_cost_nanousd} nano-USD and {remaining} nano-USD remain"
            )
        elif reason == "rate_limited":
            message = f"rate limit reached for user {user!r}; retry after {retry_after_s} s"
        else:
            message = f"user {user!r} has no budget"
        super().__init__(message)
        self.user = user
        self.reason = reason
        self.estimated_cost_nanousd = estimated_cost_nanousd
        self.remaining = remaining
        self.retry_after_s = retry_after_s
        self.retryable = reason == "rate_limited"


class UnknownUser(BudgetWorkerError, KeyError):
    """The user has no budget. A ``KeyError``, as ``BudgetManager``'s dict lookups raise."""

    def __init__(self, user: str) -> None:
        super().__init__(user)
        self.user = user

    def __str__(self) -> str:
        return f"user {self.user!r} has no budget (create_budget first)"


class ChargedCompletion(dict[str, Any]):
    """A completion the safe path returned: the OpenAI-format chat completion (a plain
    ``dict`` to read), already charged to ``user`` at ``cost_nanousd``. ``update_cost``
    of it records nothing more."""

    __slots__ = ("cost_nanousd", "job_id", "user")

    def __init__(
        self, response: Mapping[str, Any], *, user: str, job_id: str, cost_nanousd: int
    ) -> None:
        super().__init__(response)
        self.user = user
        self.job_id = job_id
        self.cost_nanousd = cost_nanousd


# --- records: what BudgetManager keeps per user --------------------------------------------

_READ_ONLY: Final = "user_dict is a read-only view of the ledger"
_ADVICE: Final = {
    "total_budget": "to change a budget, call create_budget()",
    "duration": "to change a budget, call create_budget()",
    "created_at": (
        "windows start on the ledger's clock and roll over by themselves (reset_on_duration "
        "has nothing to do); to zero a user's spend now, call reset_cost(user)"
    ),
    "last_updated_at": (
        "windows start on the ledger's clock and roll over by themselves (reset_on_duration "
        "has nothing to do); to zero a user's spend now, call reset_cost(user)"
    ),
    "current_cost": "to charge a call, call update_cost(); to zero spend, call reset_cost(user)",
    "model_cost": "to charge a call, call update_cost(); to zero spend, call reset_cost(user)",
}


def _refuse_change(key: object) -> NoReturn:
    advice = _ADVICE.get(key, _ADVICE["model_cost"]) if isinstance(key, str) else None
    if advice is None:
        advice = "call create_budget(), update_cost() or reset_cost(user) instead"
    raise TypeError(f"{_READ_ONLY}: {key!r} cannot be changed here; {advice}")


class BudgetRecord(dict[str, Any]):
    """One user as ``BudgetManager`` keeps them in ``user_dict``, read from the ledger.

    Read-only: a change here would change nothing in the ledger, so it raises a
    ``TypeError`` naming the method to call instead. ``copy.copy``, ``copy.deepcopy``,
    ``dict(record)`` and ``json`` give plain dicts.
    """

    __slots__ = ("_field",)

    def __init__(self, data: Mapping[str, Any], field: str | None = None) -> None:
        super().__init__(data)
        self._field = field

    def _refuse(self, key: object = None) -> NoReturn:
        _refuse_change(self._field if self._field is not None else key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse(key)

    def __delitem__(self, key: str) -> None:
        self._refuse(key)

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        self._refuse(next(iter(other), None))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._refuse(next(iter(dict(*args, **kwargs)), None))

    def pop(self, key: str, *default: Any) -> Any:
        self._refuse(key)

    def popitem(self) -> tuple[str, Any]:
        self._refuse()

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._refuse(key)

    def clear(self) -> None:
        self._refuse()

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (dict, (dict(self),))


def _usd(nanousd: int) -> float:
    return nanousd_to_usd(nanousd)


def _spent_usd(nanousd: int) -> float:
    """Spend as ``BudgetManager`` reports it: the int ``0`` while nothing is spent (its
    default), so ``f"${cost}"`` reads ``$0`` as it does there."""
    return 0 if nanousd == 0 else nanousd_to_usd(nanousd)


def _days(window_s: int) -> int | float:
    """A window in days, as ``BudgetManager`` records ``duration`` (an int of days)."""
    days, rest = divmod(window_s, _DAY_S)
    return days if rest == 0 else window_s / _DAY_S


def _record(state: ledger.BudgetState) -> dict[str, Any]:
    """The user as ``BudgetManager`` keeps them: ``total_budget``, ``current_cost`` and
    ``model_cost`` (both of the current window), and for a budget with a duration
    ``duration`` (days), ``created_at`` and ``last_updated_at`` (seconds since the epoch,
    on the ledger's clock). ``last_updated_at`` is when the current window started (when
    ``BudgetManager`` last reset the spend); ``created_at`` is when the budget's windows
    began, which the ledger's state does not yet tell apart from the current window's
    start: the two are equal in the budget's first window, which is when
    ``create_budget`` reports it."""
    budget = state.budget
    record: dict[str, Any] = {
        "total_budget": _usd(budget.limit_nanousd or 0),
        "current_cost": _spent_usd(state.snapshot.spent_nanousd),
        "model_cost": {m: _usd(n) for m, n in state.model_spend_nanousd.items()},
    }
    end_ms = state.snapshot.period_end_ms
    if budget.period == "rolling" and budget.window_s is not None and end_ms is not None:
        window_start_s = end_ms / 1000 - budget.window_s
        record["duration"] = _days(budget.window_s)
        record["created_at"] = window_start_s
        record["last_updated_at"] = window_start_s
    return record


def _read_only(record: Mapping[str, Any]) -> BudgetRecord:
    return BudgetRecord(
        {
            key: BudgetRecord(value, key) if isinstance(value, Mapping) else value
            for key, value in record.items()
        }
    )


# --- usage of a completion -------------------------------------------------------------------


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` or ``obj.name``: litellm's ModelResponse, a dict or a pydantic model."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


@dataclass(frozen=True, slots=True)
class _Usage:
    model: str
    tokens: TokenUsage
    """Every kind of token the provider reported (cached, reasoning, ...), as priced."""
    priced_as: str
    """The model to price: ``model`` under the provider litellm recorded with the
    response (``azure/gpt-35-turbo`` for Azure's ``gpt-35-turbo``), as litellm's
    ``completion_cost`` looks it up."""

    @property
    def prompt_tokens(self) -> int:
        return self.tokens.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.tokens.completion_tokens


def _usage_of(completion_obj: Any) -> _Usage:
    usage = _field(completion_obj, "usage")
    model = _field(completion_obj, "model")
    prompt = _field(usage, "prompt_tokens") if usage is not None else None
    completion = _field(usage, "completion_tokens") if usage is not None else None
    if not isinstance(model, str) or not isinstance(prompt, int) or not isinstance(completion, int):
        raise ValueError(
            "completion_obj must be a chat completion with 'model' and 'usage' "
            "(prompt_tokens, completion_tokens)"
        )
    hidden = getattr(completion_obj, "_hidden_params", None)
    provider = hidden.get("custom_llm_provider") if isinstance(hidden, Mapping) else None
    priced_as = model
    if isinstance(provider, str) and provider and not model.startswith(f"{provider}/"):
        priced_as = f"{provider}/{model}"
    tokens = usage_of(completion_obj) or TokenUsage(prompt, completion)
    return _Usage(model, tokens, priced_as)


# --- the user a thread last checked, for the module's completion() ----------------------------

_checked: ContextVar[tuple[weakref.ref[Any], str] | None] = ContextVar(
    "budget_worker_compat_checked", default=None
)


def _check(manager: BudgetManager | AsyncBudgetManager, user: str) -> None:
    """Remember that this thread (or task) checked ``user``'s budget with ``manager``."""
    _checked.set((weakref.ref(manager), user))


def _checked_by(kind: type[T]) -> tuple[T, str]:
    checked = _checked.get()
    manager = checked[0]() if checked is not None else None
    if checked is None or not isinstance(manager, kind):
        verb = "completion" if kind is BudgetManager else "acompletion"
        raise RuntimeError(
            f"worker.compat.{verb}() charges the user whose budget this "
            f"{'thread' if kind is BudgetManager else 'task'} last checked with a "
            f"{kind.__name__} (get_current_cost(user), get_total_budget(user) or "
            f"projected_cost(...)), and none was checked; check first, or call "
            f"budget_manager.{verb}(user=..., model=..., messages=...)"
        )
    return manager, checked[1]


def completion(model: str, messages: list[dict[str, Any]], **kwargs: Any) -> ChargedCompletion:
    """``litellm.completion`` on the safe path, for code written against
    ``BudgetManager``: the call is reserved, made and charged for the user whose budget
    this thread last checked with a :class:`BudgetManager` (``get_current_cost``,
    ``get_total_budget`` or ``projected_cost``), exactly as
    ``budget_manager.completion(user, model, messages, **kwargs)``. Raises
    :class:`BudgetExceeded` when the budget cannot take the call (nothing spent, no
    call made), ``RuntimeError`` when no budget was checked."""
    manager, user = _checked_by(BudgetManager)
    return manager.completion(user, model, messages, **kwargs)


async def acompletion(
    model: str, messages: list[dict[str, Any]], **kwargs: Any
) -> ChargedCompletion:
    """``litellm.acompletion`` on the safe path: :func:`completion` for the user this
    task last checked with an :class:`AsyncBudgetManager`."""
    manager, user = _checked_by(AsyncBudgetManager)
    return await manager.acompletion(user, model, messages, **kwargs)


# --- the asynchronous API --------------------------------------------------------------------


def _display_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class AsyncBudgetManager:
    """``BudgetManager``'s API as coroutines, over the ledger. See the module docstring."""

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
        ledger_: ledger.Ledger | None = None,
        provider: Provider | None = None,
    ) -> None:
        """``redis_url`` defaults to ``settings.redis_url`` (``BW_REDIS_URL``); ``models``
        (a model list) names and prices the models of ``completion``, else litellm's
        names and cost map are used. Nothing is connected yet: ``async with`` (or
        :meth:`check`) finds out whether Redis answers."""
        self.project_name = project_name
        self.client_type = client_type
        settings = settings if settings is not None else Settings()
        self.redis_url_is_default = redis_url is None and "redis_url" not in (
            settings.model_fields_set
        )
        if redis_url is not None:
            settings = settings.model_copy(update={"redis_url": redis_url})
        self.settings = settings
        self.admission_policy: AdmissionPolicy = settings.admission_policy
        self.models = models
        if self.redis_url_is_default and ledger_ is None:
            log.warning(
                "BW_REDIS_URL is not set: budgets are kept in the Redis at %s",
                _display_url(settings.redis_url),
            )
        self.ledger = ledger_ if ledger_ is not None else ledger.Ledger.from_settings(settings)
        self.provider = provider if provider is not None else Provider.from_settings(settings)
        self._owns_ledger = ledger_ is None
        self._spend: spend.SpendPath | None = None

    async def check(self) -> None:
        """Raise unless the ledger's Redis answers: :class:`LedgerUnavailable` naming the
        URL (and saying when it is the default), or ``ConfigError`` when Redis refuses
        the URL's credentials."""
        try:
            await self.ledger.check_access()
        except LedgerUnavailable as exc:
            where = _display_url(self.settings.redis_url)
            how = (
                "the default, as BW_REDIS_URL is not set: set BW_REDIS_URL or pass redis_url="
                if self.redis_url_is_default
                else "from redis_url= or BW_REDIS_URL"
            )
            raise LedgerUnavailable(f"no Redis answers at {where} ({how}): {exc}") from None

    def _spend_path(self) -> spend.SpendPath:
        """The worker's spend path, made on first use (inside the running event loop)."""
        if self._spend is None:
            self._spend = spend.SpendPath(
                self.ledger,
                self.provider,
                LeaseKeeper(self.ledger, self.settings.lease_ms),
                LedgerGate(self.settings.redis_retry_s),
                Metrics(),
                holder_prefix="compat",
                admission_policy=self.admission_policy,
                clamp_min_tokens=self.settings.clamp_min_tokens,
            )
        return self._spend

    async def close(self) -> None:
        if self._spend is not None:
            await self._spend.leases.stop()
        if self._owns_ledger:
            await self.ledger.close()

    async def __aenter__(self) -> AsyncBudgetManager:
        try:
            await self.check()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- budgets ---------------------------------------------------------------------

    async def create_budget(
        self,
        total_budget: float,
        user: str,
        duration: Duration | None = None,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        """Create or change ``user``'s budget: ``total_budget`` USD per rolling
        ``duration`` (or for ever). The spend of the current window is kept.
        ``created_at`` is accepted and not used: windows start on the ledger's clock
        when the budget is first created, and the record's ``created_at`` says when."""
        limit = usd_to_nanousd(total_budget, round_up=False)
        if duration is None:
            budget = ledger.Budget(limit_nanousd=limit, period="none")
        elif duration in DAYS:
            budget = ledger.Budget(
                limit_nanousd=limit, period="rolling", window_s=DAYS[duration] * _DAY_S
            )
        else:
            raise ValueError('duration needs to be one of ["daily", "weekly", "monthly", "yearly"]')
        await self.ledger.set_budget(_ledger_user(user), budget)
        return await self.record(user)

    async def get_total_budget(self, user: str) -> float:
        total = _usd((await self._state(user)).budget.limit_nanousd or 0)
        _check(self, user)
        return total

    async def get_current_cost(self, user: str) -> float:
        """Spent in the current window (reservations of calls in flight not included)."""
        spent = _spent_usd((await self._state(user)).snapshot.spent_nanousd)
        _check(self, user)
        return spent

    async def get_model_cost(self, user: str) -> dict[str, float]:
        """Spent per model in the current window (``{}`` when nothing was spent)."""
        state = await self._state(user)
        return {model: _usd(n) for model, n in state.model_spend_nanousd.items()}

    async def is_valid_user(self, user: str) -> bool:
        return await self.ledger.get_budget(_ledger_user(user)) is not None

    async def get_users(self) -> list[str]:
        return [_compat_user(name) for name in await self.ledger.list_users()]

    async def record(self, user: str) -> dict[str, Any]:
        """The user as ``BudgetManager`` keeps them in its ``user_dict`` (see
        ``_record``); :class:`UnknownUser` when they have no budget."""
        return _record(await self._state(user))

    async def reset_cost(self, user: str) -> dict[str, Any]:
        """Zero the current window's spend (calls in flight keep their reservations)."""
        if not await self.ledger.reset(_ledger_user(user)):
            raise UnknownUser(user)
        return {"user": await self.record(user)}

    async def reset_on_duration(self, user: str) -> None:
        """Nothing to do: a window's spend starts from zero when the window does."""
        await self._state(user)

    async def update_budget_all_users(self) -> None:
        """Nothing to do: the ledger rolls every user's window over by itself."""

    async def save_data(self) -> dict[str, str]:
        """Nothing to do: every change is stored in Redis when it is made."""
        return {"status": "success"}

    async def load_data(self) -> None:
        """Nothing to do: every read goes to Redis."""

    # --- spend -----------------------------------------------------------------------

    async def projected_cost(self, model: str, messages: list[dict[str, Any]], user: str) -> float:
        """The current spend plus an upper bound of the prompt's cost (output not
        included, as in ``BudgetManager``)."""
        entry = self._entry(model, {})
        texts: list[str] = []
        for message in messages:
            texts.extend(_message_texts(message))
        bound = prompt_token_bound(
            texts, len(messages), framing=framing_for(entry.tokenizer_family)
        )
        prompt_nanousd = entry.price.bound_nanousd(bound, 0)
        spent = (await self._state(user)).snapshot.spent_nanousd
        _check(self, user)
        return _usd(spent + prompt_nanousd)

    async def update_cost(
        self,
        user: str,
        completion_obj: Any = None,
        model: str | None = None,
        input_text: str | None = None,
        output_text: str | None = None,
    ) -> dict[str, Any]:
        """Charge ``user`` for a call made outside the safe path: from a chat completion
        (its model and usage), or from ``model``, ``input_text`` and ``output_text``,
        each counted as a one-message chat, as ``BudgetManager`` counts them.

        The charge is recorded even past the budget, exactly once (it is a settle of a
        fresh job id, which the ledger charges to the current window). A completion the
        safe path returned (:class:`ChargedCompletion`) is already charged: nothing more
        is recorded for it, and naming another user than the one it was charged to is a
        ``ValueError``.
        """
        if model and input_text and output_text:
            usage = _Usage(model, TokenUsage(*_count_tokens(model, input_text, output_text)), model)
        elif isinstance(completion_obj, ChargedCompletion):
            if completion_obj.user != user:
                raise ValueError(
                    f"this completion was already charged to user {completion_obj.user!r} "
                    f"on the safe path; update_cost would charge it again to {user!r}"
                )
            return {"user": await self.record(user)}
        elif completion_obj is not None:
            usage = _usage_of(completion_obj)
        else:
            raise ValueError(
                "Either a chat completion object or the text response needs to be passed in."
            )
        if not await self.is_valid_user(user):
            raise UnknownUser(user)
        price = self._entry(usage.priced_as, {}).price
        cost = price.cost_nanousd(usage.tokens)
        await self.ledger.settle(
            _ledger_user(user),
            f"compat-charge-{uuid.uuid4().hex}",
            holder="compat:update_cost",
            cost_nanousd=cost,
            tokens=usage.prompt_tokens + usage.completion_tokens,
            model=usage.model,
            outcome=_outcome("compat.charged", cost, usage),
        )
        return {"user": await self.record(user)}

    # --- the safe path -----------------------------------------------------------------

    async def acompletion(
        self, user: str, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> ChargedCompletion:
        """Call ``model`` for ``user`` within the budget: reserve an upper bound of the
        cost, call, charge the actual cost. Returns the OpenAI-format completion (a
        ``dict``); raises :class:`BudgetExceeded` when refused (nothing spent, no call).

        ``kwargs`` are OpenAI parameters (``max_tokens``, ``temperature``, ``n``, ...)
        and litellm's connection arguments (``api_base``, ``api_key``, ...). Without
        ``max_tokens`` the call is bounded by ``BW_DEFAULT_MAX_TOKENS``, lowered to what
        the budget has left under the ``clamp`` policy (compat's default).
        """
        entry, job = self._job(model, messages, kwargs)
        request = spend.Request(
            user_id=_ledger_user(user),
            job_id=job.job_id,
            entry=entry,
            messages=[m.model_dump(exclude_none=True) for m in job.messages],
            params=job.params.model_dump(exclude_none=True),
            estimate=estimate(job, entry, self.settings.default_max_tokens),
        )
        result = await self._spend_path().run(request, _CompatOutcomes(model))
        if isinstance(result, spend.Charged):
            return ChargedCompletion(
                result.completion.response,
                user=user,
                job_id=job.job_id,
                cost_nanousd=result.settled.charged_nanousd,
            )
        if isinstance(result, spend.CallFailed):
            if result.error is not None:
                raise result.error
            raise BudgetWorkerError(result.failure.message)
        if isinstance(result, spend.Refusal):
            refused = result.refused
            raise BudgetExceeded(
                user,
                result.reason,
                estimated_cost_nanousd=result.estimate.cost_nanousd,
                remaining=None if refused is None else refused.remaining,
                retry_after_s=result.retry_after_s,
            )
        raise BudgetWorkerError(f"job {job.job_id} is already finished")  # a fresh job id

    def _job(
        self, model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]
    ) -> tuple[ModelEntry, CompletionJob]:
        connection: dict[str, Any] = {}
        params: dict[str, Any] = {}
        max_tokens = kwargs.pop("max_tokens", None)
        if max_tokens is None:
            max_tokens = kwargs.pop("max_completion_tokens", None)
        for key, value in kwargs.items():
            if key in _CONNECTION_ARGS:
                connection[key] = value
            elif key in _PARAM_ARGS:
                params[key] = value
            else:
                raise TypeError(
                    f"completion() got an unsupported argument {key!r}; the safe path takes "
                    f"OpenAI parameters ({', '.join(sorted(_PARAM_ARGS))}, max_tokens) and "
                    f"connection arguments ({', '.join(sorted(_CONNECTION_ARGS))})"
                )
        try:
            job = CompletionJob.model_validate(
                {
                    "schema_version": 1,
                    "job_id": f"compat-{uuid.uuid4().hex}",
                    "user_id": _ESTIMATE_USER,
                    "model": model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "params": params,
                }
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)
            )
            raise ValueError(f"invalid completion request: {problems}") from None
        return self._entry(model, connection), job

    def _entry(self, model: str, connection: dict[str, Any]) -> ModelEntry:
        """The model list's entry for ``model``, else litellm's model of that name,
        priced from litellm's cost map."""
        if self.models is not None:
            entry = self.models.get(model)
            if entry is not None:
                if not connection:
                    return entry
                params = {**entry.litellm_params, **connection}
                return ModelEntry(
                    name=entry.name,
                    litellm_params=params,
                    price=entry.price,
                    max_output_tokens=entry.max_output_tokens,
                    tokenizer_family=entry.tokenizer_family,
                )
        price = cost_map_price(model)
        if price is None:
            raise ConfigError(
                f"no price for model {model!r}: it is not in litellm's cost map; pass a "
                "model list (models=...) that prices it"
            )
        return ModelEntry(
            name=model,
            litellm_params={"model": model, **connection},
            price=price,
            max_output_tokens=None,
            tokenizer_family=tokenizer_family(model),
        )

    # --- reading ---------------------------------------------------------------------

    async def _state(self, user: str) -> ledger.BudgetState:
        state = await self.ledger.state(_ledger_user(user))
        if state is None:
            raise UnknownUser(user)
        return state


def _message_texts(message: Mapping[str, Any]) -> Iterable[str]:
    """Every text of a loosely typed message (its role, content parts, name, ...)."""
    for value in message.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for part in value:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    yield part["text"]
                else:
                    yield json.dumps(part)
        elif value is not None:
            yield json.dumps(value)


def _count_tokens(model: str, input_text: str, output_text: str) -> tuple[int, int]:
    """Prompt and completion tokens of ``update_cost``'s texts, counted as
    ``BudgetManager`` counts them: each text as a one-message chat
    (``litellm.token_counter(messages=[{"role": "user", "content": text}])``), the output
    too. That is 7 tokens more than the output's own (its role, 3 per message, 3 priming
    a reply), kept so that a migrated user is charged what LiteLLM charged.

    Counted with tiktoken, as litellm counts these models: the model's encoding when
    tiktoken knows it, else ``cl100k_base``."""
    import tiktoken  # its BPE files are found offline once worker.provider is imported

    try:
        encoding = tiktoken.encoding_for_model(model.rsplit("/", 1)[-1])
    except KeyError:
        encoding = tiktoken.get_encoding("cl100k_base")

    def as_chat(text: str) -> int:  # the text, the role "user", 3 per message, 3 priming
        return len(encoding.encode_ordinary(text)) + len(encoding.encode_ordinary("user")) + 6

    return as_chat(input_text), as_chat(output_text)


class _CompatOutcomes:
    """What the ledger stores for a safe-path call (there is no event to publish)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def succeeded(self, completion: Completion, charge: spend.Charge) -> bytes:
        tokens = TokenUsage(charge.prompt_tokens, charge.completion_tokens)
        usage = _Usage(self.model, tokens, self.model)
        return _outcome("compat.succeeded", charge.cost_nanousd, usage)

    def failed(self, failure: spend.Failure) -> bytes:
        return json.dumps({"type": "compat.failed", "error": failure.error_type}).encode()


def _outcome(kind: str, cost_nanousd: int, usage: _Usage) -> bytes:
    return json.dumps(
        {
            "type": kind,
            "model": usage.model,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_nanousd": cost_nanousd,
        }
    ).encode()


# --- the synchronous API ---------------------------------------------------------------


class _LoopThread:
    """An event loop running in a daemon thread, for coroutines called from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._main, args=(self.loop,), name="budget-manager-loop", daemon=True
        )
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

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread or not self.thread.is_alive():
            coroutine.close()
            raise RuntimeError(
                "this BudgetManager is closed"
                if not self.thread.is_alive()
                else "BudgetManager cannot be called from its own event loop"
            )
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


def _shut_down(loop: _LoopThread, manager: AsyncBudgetManager) -> None:
    """Close the manager's connections on its loop, then stop the loop. Runs once, from
    ``close()`` or when the ``BudgetManager`` is collected (or at exit)."""
    if loop.thread.is_alive():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(manager.close(), loop.loop).result(timeout=10)
    loop.stop()


class UserDict(Mapping[str, BudgetRecord]):
    """``BudgetManager.user_dict`` as a read-through view of the ledger: every lookup
    reads Redis, so it shows what every process sharing the ledger has spent. Records
    are :class:`BudgetRecord` (read-only); assigning or deleting a user raises a
    ``TypeError`` naming the method to call instead."""

    def __init__(self, manager: BudgetManager) -> None:
        self._manager = manager

    def __getitem__(self, user: str) -> BudgetRecord:
        return _read_only(self._manager._loop.run(self._manager.manager.record(user)))

    def __iter__(self) -> Iterator[str]:
        return iter(self._manager.get_users())

    def __len__(self) -> int:
        return len(self._manager.get_users())

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self._manager.is_valid_user(user)

    def __setitem__(self, user: str, record: Any) -> None:
        raise TypeError(f"{_READ_ONLY}: to create or change a budget, call create_budget()")

    def __delitem__(self, user: str) -> None:
        raise TypeError(
            f"{_READ_ONLY}: budgets are deleted with `budget-worker budget delete USER`"
        )

    def __repr__(self) -> str:
        return f"UserDict({dict(self)!r})"


class BudgetManager:
    """``litellm.BudgetManager``'s synchronous API over the ledger (see the module
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
        self._loop = _LoopThread()

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
        raise TypeError(f"{_READ_ONLY}: budgets are created with create_budget()")

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
        _check(self, user)
        return projected

    def get_total_budget(self, user: str) -> float:
        total = self._loop.run(self.manager.get_total_budget(user))
        _check(self, user)
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
        _check(self, user)
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
