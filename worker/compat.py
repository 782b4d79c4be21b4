"""LiteLLM's ``BudgetManager`` API over the Redis ledger.

Code written for ``litellm.BudgetManager`` runs with its import line changed::

    from worker.compat import BudgetManager

and its budgets then live in the ledger: durable, shared by every process that points
at the same Redis, rolled over by the ledger itself, and the same budgets the worker
enforces on jobs. Amounts are floats of USD at this API, as in ``BudgetManager``;
inside they are integers of nano-USD.

What changes underneath:

- ``create_budget`` durations are rolling windows, as in ``BudgetManager`` (daily = 1
  day, weekly = 7, monthly = 28, yearly = 365 days, litellm's own constants), counted
  from when the budget is first created on the ledger's (Redis's) clock; without a
  duration the budget is a lifetime cap. Changing a budget never forgives spend: the
  current window's spend is kept (``reset_cost`` zeroes it).
- ``reset_on_duration``, ``update_budget_all_users``, ``save_data`` and ``load_data``
  have nothing left to do: windows roll over inside the ledger and every change is
  already stored.
- ``project_name``, ``client_type``, ``api_base`` and ``headers`` are accepted and
  ignored: the store is always the ledger at ``redis_url`` (``BW_REDIS_URL``), and the
  other ``BW_`` settings apply as in the worker (a ``BW_DEFAULT_BUDGET_USD`` budget is
  given to a user's first safe call, ``BW_ADMISSION_POLICY`` may clamp ``max_tokens``).

``BudgetManager``'s own pattern (check ``get_current_cost`` against the budget, call the
model, then ``update_cost``) still overspends, by up to the cost of every call that
passed the check at the same time; ``update_cost`` records that spend faithfully, past
the cap, as ``BudgetManager`` does. The safe path is ``completion`` / ``acompletion``:
estimate an upper bound, reserve it atomically, call, settle the actual cost (or
release on error). However many processes share a budget, it never spends past it
(as far as the estimate bounds the call: ``docs/estimation.md``), and it raises
:class:`BudgetExceeded` when the reservation is refused.

``AsyncBudgetManager`` is the API as coroutines; ``BudgetManager`` wraps it for
synchronous code (and notebooks, whose event loop is already running) by running the
coroutines on an event loop of its own, in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
import weakref
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from pydantic import ValidationError

from schemas.jobs import CompletionJob, JobParams
from schemas.money import nanousd_to_usd, usd_to_nanousd
from worker import ledger, spend
from worker.errors import BudgetWorkerError, ConfigError
from worker.estimate import estimate, framing_for, prompt_token_bound
from worker.gate import LedgerGate
from worker.leases import LeaseKeeper
from worker.metrics import Metrics
from worker.models import ModelEntry, ModelList, tokenizer_family
from worker.pricebook import cost_map_price
from worker.prices import TokenUsage
from worker.provider import Completion, Provider
from worker.settings import Settings

__all__ = [
    "AsyncBudgetManager",
    "BudgetExceeded",
    "BudgetManager",
    "Duration",
    "UnknownUser",
]

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


def _usd(nanousd: int) -> float:
    return nanousd_to_usd(nanousd)


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` or ``obj.name``: litellm's ModelResponse, a dict or a pydantic model."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


@dataclass(frozen=True, slots=True)
class _Usage:
    model: str
    prompt_tokens: int
    completion_tokens: int


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
    return _Usage(model, prompt, completion)


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
        names and cost map are used."""
        self.project_name = project_name
        self.client_type = client_type
        settings = settings if settings is not None else Settings()
        if redis_url is not None:
            settings = settings.model_copy(update={"redis_url": redis_url})
        self.settings = settings
        self.models = models
        self.ledger = ledger_ if ledger_ is not None else ledger.Ledger.from_settings(settings)
        self.provider = provider if provider is not None else Provider.from_settings(settings)
        self._owns_ledger = ledger_ is None
        self._spend: spend.SpendPath | None = None

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
                admission_policy=self.settings.admission_policy,
                clamp_min_tokens=self.settings.clamp_min_tokens,
            )
        return self._spend

    async def close(self) -> None:
        if self._spend is not None:
            await self._spend.leases.stop()
        if self._owns_ledger:
            await self.ledger.close()

    async def __aenter__(self) -> AsyncBudgetManager:
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
        ``duration`` (or for ever). ``created_at`` is accepted for compatibility; windows
        start on the ledger's clock when the budget is first created."""
        limit = usd_to_nanousd(total_budget, round_up=False)
        if duration is None:
            budget = ledger.Budget(limit_nanousd=limit, period="none")
        elif duration in DAYS:
            budget = ledger.Budget(
                limit_nanousd=limit, period="rolling", window_s=DAYS[duration] * _DAY_S
            )
        else:
            raise ValueError('duration needs to be one of ["daily", "weekly", "monthly", "yearly"]')
        await self.ledger.set_budget(user, budget)
        return await self._record(user)

    async def get_total_budget(self, user: str) -> float:
        return _usd((await self._state(user)).budget.limit_nanousd)

    async def get_current_cost(self, user: str) -> float:
        """Spent in the current window (reservations of calls in flight not included)."""
        return _usd((await self._state(user)).snapshot.spent_nanousd)

    async def get_model_cost(self, user: str) -> dict[str, float]:
        """Spent per model in the current window (``{}`` when nothing was spent)."""
        state = await self._state(user)
        return {model: _usd(n) for model, n in state.model_spend_nanousd.items()}

    async def is_valid_user(self, user: str) -> bool:
        return await self.ledger.get_budget(user) is not None

    async def get_users(self) -> list[str]:
        return await self.ledger.list_users()

    async def reset_cost(self, user: str) -> dict[str, Any]:
        """Zero the current window's spend (calls in flight keep their reservations)."""
        if not await self.ledger.reset(user):
            raise UnknownUser(user)
        return {"user": await self._record(user)}

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
        (its model and usage), or from ``model``, ``input_text`` and ``output_text``.

        The charge is recorded even past the budget, exactly once (it is a settle of a
        fresh job id, which the ledger charges to the current window).
        """
        if model and input_text and output_text:
            usage = _Usage(model, *_count_tokens(model, input_text, output_text))
        elif completion_obj is not None:
            usage = _usage_of(completion_obj)
        else:
            raise ValueError(
                "Either a chat completion object or the text response needs to be passed in."
            )
        if not await self.is_valid_user(user):
            raise UnknownUser(user)
        price = self._entry(usage.model, {}).price
        cost = price.cost_nanousd(TokenUsage(usage.prompt_tokens, usage.completion_tokens))
        await self.ledger.settle(
            user,
            f"compat-charge-{uuid.uuid4().hex}",
            holder="compat:update_cost",
            cost_nanousd=cost,
            tokens=usage.prompt_tokens + usage.completion_tokens,
            model=usage.model,
            outcome=_outcome("compat.charged", cost, usage),
        )
        return {"user": await self._record(user)}

    # --- the safe path -----------------------------------------------------------------

    async def acompletion(
        self, user: str, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Call ``model`` for ``user`` within the budget: reserve an upper bound of the
        cost, call, charge the actual cost. Returns the OpenAI-format completion as a
        dict; raises :class:`BudgetExceeded` when refused (nothing spent, no call).

        ``kwargs`` are OpenAI parameters (``max_tokens``, ``temperature``, ``n``, ...)
        and litellm's connection arguments (``api_base``, ``api_key``, ...).
        """
        entry, job = self._job(user, model, messages, kwargs)
        request = spend.Request(
            user_id=user,
            job_id=job.job_id,
            entry=entry,
            messages=[m.model_dump(exclude_none=True) for m in job.messages],
            params=job.params.model_dump(exclude_none=True),
            estimate=estimate(job, entry, self.settings.default_max_tokens),
        )
        result = await self._spend_path().run(request, _CompatOutcomes(model))
        if isinstance(result, spend.Charged):
            return result.completion.response
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
        self, user: str, model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]
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
                    "user_id": user,
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
        state = await self.ledger.state(user)
        if state is None:
            raise UnknownUser(user)
        return state

    async def _record(self, user: str) -> dict[str, Any]:
        """The user as ``BudgetManager`` keeps them in its ``user_dict``."""
        state = await self._state(user)
        budget = state.budget
        record: dict[str, Any] = {
            "total_budget": _usd(budget.limit_nanousd),
            "current_cost": _usd(state.snapshot.spent_nanousd),
            "model_cost": {m: _usd(n) for m, n in state.model_spend_nanousd.items()},
        }
        if budget.period == "rolling" and budget.window_s is not None:
            record["duration"] = budget.window_s / _DAY_S
            end_ms = state.snapshot.period_end_ms
            if end_ms is not None:
                record["last_updated_at"] = end_ms / 1000 - budget.window_s
        return record


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
    """Prompt and completion tokens of a one-message call, counted with tiktoken (the
    model's encoding when tiktoken knows it, else ``cl100k_base``) the way OpenAI counts
    a chat prompt: the text, the role, 3 per message and 3 priming the reply."""
    import tiktoken  # its BPE files are found offline once worker.provider is imported

    try:
        encoding = tiktoken.encoding_for_model(model.rsplit("/", 1)[-1])
    except KeyError:
        encoding = tiktoken.get_encoding("cl100k_base")
    prompt = len(encoding.encode_ordinary(input_text)) + 1 + 3 + 3
    return prompt, len(encoding.encode_ordinary(output_text))


class _CompatOutcomes:
    """What the ledger stores for a safe-path call (there is no event to publish)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def succeeded(self, completion: Completion, charge: spend.Charge) -> bytes:
        usage = _Usage(self.model, charge.prompt_tokens, charge.completion_tokens)
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
        self.project_name = project_name
        self.client_type = client_type
        self._loop = _LoopThread()

        async def build() -> AsyncBudgetManager:
            return AsyncBudgetManager(
                project_name,
                client_type,
                api_base,
                headers,
                redis_url=redis_url,
                settings=settings,
                models=models,
            )

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

    def create_budget(
        self,
        total_budget: float,
        user: str,
        duration: Duration | None = None,
        created_at: float | None = None,
    ) -> dict[str, Any]:
        return self._loop.run(self.manager.create_budget(total_budget, user, duration, created_at))

    def projected_cost(self, model: str, messages: list[dict[str, Any]], user: str) -> float:
        return self._loop.run(self.manager.projected_cost(model, messages, user))

    def get_total_budget(self, user: str) -> float:
        return self._loop.run(self.manager.get_total_budget(user))

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
        return self._loop.run(self.manager.get_current_cost(user))

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
    ) -> dict[str, Any]:
        """The safe path: see :meth:`AsyncBudgetManager.acompletion`."""
        return self._loop.run(self.manager.acompletion(user, model, messages, **kwargs))
