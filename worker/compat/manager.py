"""``BudgetManager``'s API as coroutines over the ledger: budgets, reads, charges made
outside the safe path (``update_cost``), and the safe path itself (``acompletion``)."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from schemas.money import nanousd_to_usd, usd_to_nanousd
from worker import ledger, spend, startup
from worker.compat import safe_path
from worker.compat.checked import check, checked_by
from worker.compat.errors import UnknownUser
from worker.compat.records import (
    DAY_S,
    DAYS,
    Duration,
    compat_user,
    ledger_user,
    record_of,
    spent_usd,
)
from worker.compat.safe_path import ChargedCompletion
from worker.compat.usage import Usage, count_tokens, message_texts, outcome, usage_of_completion
from worker.errors import LedgerUnavailable
from worker.estimate import framing_for, prompt_token_bound
from worker.gate import LedgerGate
from worker.leases import LeaseKeeper
from worker.metrics import Metrics
from worker.models import ModelList
from worker.prices import TokenUsage
from worker.provider import Provider
from worker.settings import AdmissionPolicy, Settings

__all__ = ["AsyncBudgetManager", "acompletion"]

log = logging.getLogger("budget_worker.compat")


def _display_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class AsyncBudgetManager:
    """``BudgetManager``'s API as coroutines, over the ledger. See ``worker.compat``."""

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
        startup.prepare()
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
                limit_nanousd=limit, period="rolling", window_s=DAYS[duration] * DAY_S
            )
        else:
            raise ValueError('duration needs to be one of ["daily", "weekly", "monthly", "yearly"]')
        await self.ledger.set_budget(ledger_user(user), budget)
        return await self.record(user)

    async def get_total_budget(self, user: str) -> float:
        total = nanousd_to_usd((await self._state(user)).budget.limit_nanousd or 0)
        check(self, user)
        return total

    async def get_current_cost(self, user: str) -> float:
        """Spent in the current window (reservations of calls in flight not included)."""
        spent = spent_usd((await self._state(user)).snapshot.spent_nanousd)
        check(self, user)
        return spent

    async def get_model_cost(self, user: str) -> dict[str, float]:
        """Spent per model in the current window (``{}`` when nothing was spent)."""
        state = await self._state(user)
        return {model: nanousd_to_usd(n) for model, n in state.model_spend_nanousd.items()}

    async def is_valid_user(self, user: str) -> bool:
        return await self.ledger.get_budget(ledger_user(user)) is not None

    async def get_users(self) -> list[str]:
        return [compat_user(name) for name in await self.ledger.list_users()]

    async def record(self, user: str) -> dict[str, Any]:
        """The user as ``BudgetManager`` keeps them in its ``user_dict`` (see
        ``records.record_of``); :class:`UnknownUser` when they have no budget."""
        return record_of(await self._state(user))

    async def reset_cost(self, user: str) -> dict[str, Any]:
        """Zero the current window's spend (calls in flight keep their reservations)."""
        if not await self.ledger.reset(ledger_user(user)):
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
        entry = safe_path.model_entry(self.models, model, {})
        texts: list[str] = []
        for message in messages:
            texts.extend(message_texts(message))
        bound = prompt_token_bound(
            texts, len(messages), framing=framing_for(entry.tokenizer_family)
        )
        prompt_nanousd = entry.price.bound_nanousd(bound, 0)
        spent = (await self._state(user)).snapshot.spent_nanousd
        check(self, user)
        return nanousd_to_usd(spent + prompt_nanousd)

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
            usage = Usage(model, TokenUsage(*count_tokens(model, input_text, output_text)), model)
        elif isinstance(completion_obj, ChargedCompletion):
            if completion_obj.user != user:
                raise ValueError(
                    f"this completion was already charged to user {completion_obj.user!r} "
                    f"on the safe path; update_cost would charge it again to {user!r}"
                )
            return {"user": await self.record(user)}
        elif completion_obj is not None:
            usage = usage_of_completion(completion_obj)
        else:
            raise ValueError(
                "Either a chat completion object or the text response needs to be passed in."
            )
        if not await self.is_valid_user(user):
            raise UnknownUser(user)
        price = safe_path.model_entry(self.models, usage.priced_as, {}).price
        cost = price.cost_nanousd(usage.tokens)
        await self.ledger.settle(
            ledger_user(user),
            f"compat-charge-{uuid.uuid4().hex}",
            holder="compat:update_cost",
            cost_nanousd=cost,
            tokens=usage.prompt_tokens + usage.completion_tokens,
            model=usage.model,
            outcome=outcome("compat.charged", cost, usage),
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
        entry, job = safe_path.job_of(self.models, model, messages, kwargs)
        return await safe_path.run(
            self._spend_path(),
            user,
            entry,
            job,
            default_max_tokens=self.settings.default_max_tokens,
        )

    # --- reading ---------------------------------------------------------------------

    async def _state(self, user: str) -> ledger.BudgetState:
        state = await self.ledger.state(ledger_user(user))
        if state is None:
            raise UnknownUser(user)
        return state


async def acompletion(
    model: str, messages: list[dict[str, Any]], **kwargs: Any
) -> ChargedCompletion:
    """``litellm.acompletion`` on the safe path: :func:`completion` for the user this
    task last checked with an :class:`AsyncBudgetManager`."""
    manager, user = checked_by(AsyncBudgetManager, "acompletion", "task")
    return await manager.acompletion(user, model, messages, **kwargs)
