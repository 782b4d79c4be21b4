"""BudgetManager's API over the ledger: the seed notebook with only its import line
changed (and its overspend reproduced), the safe path that never overspends, and each
method against the real Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import linecache
import os
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support import spent
from worker import ledger
from worker.compat import AsyncBudgetManager, BudgetExceeded, BudgetManager, UnknownUser
from worker.dev.fake_provider import count_prompt_tokens
from worker.errors import ConfigError, ProviderError
from worker.prices import ModelPrice, TokenUsage
from worker.settings import Settings

# LiteLLM's BudgetManager notebook: a daily budget, then a loop of calls, each made after
# checking the spend so far and charged after it returns.
SEED_NOTEBOOK = """
from litellm import BudgetManager, completion
budget_manager = BudgetManager(project_name="test_project")
user = "1234"
if not budget_manager.is_valid_user(user):
    budget_manager.create_budget(total_budget=0.0002, user=user, duration="daily")
for _ in range(10):
    if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
        response = completion(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hey, how's it going?"}]
        )
        budget_manager.update_cost(completion_obj=response, user=user)
    else:
        response = "Sorry - no budget!"
"""
SEED_IMPORT = "from litellm import BudgetManager, completion"
OUR_IMPORT = "from worker.compat import BudgetManager\nfrom litellm import completion"

# The same ten calls through the safe path: one call, reserved, charged, never over.
SAFE_NOTEBOOK = """
from worker.compat import BudgetExceeded, BudgetManager
budget_manager = BudgetManager(project_name="test_project")
user = "1234"
if not budget_manager.is_valid_user(user):
    budget_manager.create_budget(total_budget=0.0002, user=user, duration="daily")
for _ in range(10):
    try:
        response = budget_manager.completion(
            user=user,
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Hey, how's it going?"}],
            **CALL_KWARGS,
        )
    except BudgetExceeded:
        response = "Sorry - no budget!"
"""

GPT35 = ModelPrice(Decimal("0.0000005"), Decimal("0.0000015"))  # litellm's cost map
LIMIT_NANOUSD = 200_000  # USD 0.0002
PROMPT = [{"role": "user", "content": "Hey, how's it going?"}]


def one_call_nanousd(output_tokens: int) -> int:
    prompt = count_prompt_tokens(PROMPT, "gpt-3.5-turbo")
    return GPT35.cost_nanousd(TokenUsage(prompt, output_tokens))


@pytest.fixture
def notebook_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, fake_provider: Any
) -> Iterator[Any]:
    """The notebook's environment: our Redis, and OpenAI's URL pointing at the fake."""
    monkeypatch.setenv("BW_REDIS_URL", redis_url)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-notebook")
    yield fake_provider


def run_notebook(code: str, **names: Any) -> dict[str, Any]:
    """Run ``code`` as a notebook cell; its source is registered so tracebacks show it."""
    filename = f"<notebook-{abs(hash(code))}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = dict(names)
    try:
        exec(compile(code, filename, "exec"), namespace)
    finally:
        manager = namespace.get("budget_manager")
        if isinstance(manager, BudgetManager):
            manager.close()
    return namespace


async def spent_nanousd(redis_url: str, user: str) -> int:
    book = ledger.Ledger.from_url(redis_url)
    try:
        return await spent(book, user)
    finally:
        await book.close()


# --- the seed notebook ------------------------------------------------------------------


async def test_seed_notebook_runs_with_only_its_import_changed_and_overspends_by_one_call(
    notebook_env: Any, redis_url: str
) -> None:
    code = SEED_NOTEBOOK.replace(SEED_IMPORT, OUR_IMPORT)
    assert code.replace(OUR_IMPORT, SEED_IMPORT) == SEED_NOTEBOOK

    namespace = await asyncio.to_thread(run_notebook, code)

    call = one_call_nanousd(notebook_env.config.output_tokens)
    spent = await spent_nanousd(redis_url, "1234")
    calls = notebook_env.stats.completions_succeeded
    assert spent == calls * call
    assert spent > LIMIT_NANOUSD  # the check passed while under, the charge went over
    assert spent - LIMIT_NANOUSD < call  # ... by exactly one call
    assert (calls - 1) * call <= LIMIT_NANOUSD
    assert calls < 10
    assert namespace["response"] == "Sorry - no budget!"


async def test_update_cost_charges_what_litellm_computes_for_the_response(
    notebook_env: Any, redis_url: str
) -> None:
    from worker.provider import litellm

    response = await litellm.acompletion(model="gpt-3.5-turbo", messages=PROMPT)
    litellm_usd = litellm.completion_cost(completion_response=response)

    async with AsyncBudgetManager("p", redis_url=redis_url) as manager:
        await manager.create_budget(1.0, "u", "daily")
        record = await manager.update_cost("u", completion_obj=response)

    charged = await spent_nanousd(redis_url, "u")
    assert charged == one_call_nanousd(notebook_env.config.output_tokens)
    assert abs(charged - litellm_usd * 1e9) < 1
    assert record["user"]["model_cost"] == {"gpt-3.5-turbo": charged / 1e9}


@pytest.mark.parametrize(
    ("policy", "call_kwargs"),
    [("reject", {"max_tokens": 20}), ("clamp", {})],
    ids=["reject-with-max-tokens", "clamp-the-default"],
)
async def test_the_same_ten_calls_through_the_safe_path_never_end_over_budget(
    notebook_env: Any,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    call_kwargs: dict[str, Any],
) -> None:
    monkeypatch.setenv("BW_ADMISSION_POLICY", policy)

    namespace = await asyncio.to_thread(run_notebook, SAFE_NOTEBOOK, CALL_KWARGS=call_kwargs)

    spent = await spent_nanousd(redis_url, "1234")
    calls = notebook_env.stats.completions_succeeded
    assert 0 < spent <= LIMIT_NANOUSD
    assert spent == calls * one_call_nanousd(notebook_env.config.output_tokens)
    assert 3 <= calls < 10
    assert namespace["response"] == "Sorry - no budget!"


async def test_concurrent_check_then_spend_overspends_but_acompletion_never_does(
    fake_provider: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    fake_provider.update_config(latency_s=0.05)
    from worker.provider import litellm

    async with AsyncBudgetManager("p", redis_url=redis_url) as manager:
        await manager.create_budget(0.0002, "seed", "daily")
        await manager.create_budget(0.0002, "safe", "daily")

        async def check_then_spend() -> None:
            if await manager.get_current_cost("seed") <= await manager.get_total_budget("seed"):
                response = await litellm.acompletion(model="gpt-3.5-turbo", messages=PROMPT)
                await manager.update_cost("seed", completion_obj=response)

        async def safe() -> bool:
            try:
                await manager.acompletion("safe", "gpt-3.5-turbo", PROMPT, max_tokens=20)
            except BudgetExceeded:
                return False
            return True

        await asyncio.gather(*(check_then_spend() for _ in range(20)))
        served = await asyncio.gather(*(safe() for _ in range(20)))

    call = one_call_nanousd(fake_provider.config.output_tokens)
    assert await spent_nanousd(redis_url, "seed") == 20 * call  # every check passed at once
    assert await spent_nanousd(redis_url, "safe") == sum(served) * call <= LIMIT_NANOUSD
    assert sum(served) >= 1


# --- the safe path's edges --------------------------------------------------------------


@pytest.fixture
async def manager(redis_url: str, fake_provider: Any) -> AsyncIterator[AsyncBudgetManager]:
    settings = Settings(redis_url=redis_url, model_max_retries=0, retry_backoff_s=0)
    async with AsyncBudgetManager("p", settings=settings) as budget_manager:
        yield budget_manager


def fake_args(fake_provider: Any) -> dict[str, Any]:
    return {"api_base": fake_provider.url, "api_key": "sk-fake"}


async def test_acompletion_returns_the_completion_and_charges_its_actual_cost(
    manager: AsyncBudgetManager, fake_provider: Any
) -> None:
    await manager.create_budget(0.01, "u")
    response = await manager.acompletion(
        "u", "gpt-3.5-turbo", PROMPT, max_tokens=8, temperature=0.0, **fake_args(fake_provider)
    )
    assert response["choices"][0]["message"]["content"]
    usage = response["usage"]
    state = await manager.ledger.state("u")
    assert state is not None
    cost = GPT35.cost_nanousd(TokenUsage(usage["prompt_tokens"], usage["completion_tokens"]))
    assert state.snapshot.spent_nanousd == cost
    assert state.snapshot.reserved_nanousd == 0
    assert state.model_spend_nanousd == {"gpt-3.5-turbo": cost}


async def test_acompletion_refuses_a_user_without_budget(
    manager: AsyncBudgetManager, fake_provider: Any
) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        await manager.acompletion("nobody", "gpt-3.5-turbo", PROMPT, **fake_args(fake_provider))
    assert refused.value.reason == "no_budget"
    assert fake_provider.stats.requests_total == 0


async def test_acompletion_refusal_says_what_it_needed_and_what_remains(
    redis_url: str, fake_provider: Any
) -> None:
    settings = Settings(redis_url=redis_url, admission_policy="reject")
    async with AsyncBudgetManager("p", settings=settings) as manager:
        await refuse_the_default_bound(manager, fake_provider)


async def test_under_clamp_a_refusal_says_so_too(
    manager: AsyncBudgetManager, fake_provider: Any
) -> None:
    await manager.create_budget(0.00003, "u")  # the prompt bound and 16 tokens do not fit
    with pytest.raises(BudgetExceeded) as refused:
        await manager.acompletion("u", "gpt-3.5-turbo", PROMPT, **fake_args(fake_provider))
    assert refused.value.reason == "budget_exceeded"
    assert refused.value.remaining == 30_000
    assert fake_provider.stats.requests_total == 0


async def refuse_the_default_bound(manager: AsyncBudgetManager, fake_provider: Any) -> None:
    await manager.create_budget(0.0001, "u")
    with pytest.raises(BudgetExceeded) as refused:
        await manager.acompletion("u", "gpt-3.5-turbo", PROMPT, **fake_args(fake_provider))
    assert refused.value.reason == "budget_exceeded"
    assert refused.value.remaining == 100_000
    assert refused.value.estimated_cost_nanousd > 100_000
    assert not refused.value.retryable
    assert fake_provider.stats.requests_total == 0


async def test_acompletion_is_rate_limited_by_the_users_rpm(
    manager: AsyncBudgetManager, fake_provider: Any
) -> None:
    await manager.ledger.set_budget("u", ledger.Budget(10**9, "daily", rpm=1))
    await manager.acompletion(
        "u", "gpt-3.5-turbo", PROMPT, max_tokens=4, **fake_args(fake_provider)
    )
    with pytest.raises(BudgetExceeded) as refused:
        await manager.acompletion(
            "u", "gpt-3.5-turbo", PROMPT, max_tokens=4, **fake_args(fake_provider)
        )
    assert refused.value.reason == "rate_limited"
    assert refused.value.retryable
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0


async def test_a_failed_call_is_released_and_charges_nothing(
    manager: AsyncBudgetManager, fake_provider: Any
) -> None:
    await manager.create_budget(0.01, "u")
    fake_provider.update_config(error_rate=1.0)
    with pytest.raises(ProviderError):
        await manager.acompletion(
            "u", "gpt-3.5-turbo", PROMPT, max_tokens=4, **fake_args(fake_provider)
        )
    state = await manager.ledger.state("u")
    assert state is not None
    assert (state.snapshot.spent_nanousd, state.snapshot.reserved_nanousd) == (0, 0)


async def test_acompletion_rejects_arguments_that_could_dodge_the_budget(
    manager: AsyncBudgetManager,
) -> None:
    await manager.create_budget(0.01, "u")
    with pytest.raises(TypeError, match="mock_response"):
        await manager.acompletion("u", "gpt-3.5-turbo", PROMPT, mock_response="free")
    with pytest.raises(ValueError, match="messages"):
        await manager.acompletion("u", "gpt-3.5-turbo", [])


async def test_a_model_without_a_price_is_a_config_error(manager: AsyncBudgetManager) -> None:
    await manager.create_budget(0.01, "u")
    with pytest.raises(ConfigError, match="no price"):
        await manager.acompletion("u", "openai/my-own-unpriced-model", PROMPT)


# --- each method against the real Redis -------------------------------------------------


@pytest.fixture
def sync_manager(redis_url: str) -> Iterator[BudgetManager]:
    with BudgetManager(project_name="test_project", redis_url=redis_url) as budget_manager:
        yield budget_manager


def budget_of(manager: BudgetManager, user: str) -> ledger.Budget | None:
    async def read() -> ledger.Budget | None:
        book = ledger.Ledger.from_url(manager.manager.settings.redis_url)
        try:
            return await book.get_budget(user)
        finally:
            await book.close()

    return asyncio.run(read())


def completion_dict(model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def test_create_budget_makes_a_rolling_window_of_the_duration(
    sync_manager: BudgetManager,
) -> None:
    record = sync_manager.create_budget(total_budget=0.0002, user="u", duration="weekly")
    assert record["total_budget"] == 0.0002
    assert record["duration"] == 7
    assert record["current_cost"] == 0
    assert budget_of(sync_manager, "u") == ledger.Budget(200_000, "rolling", window_s=7 * 86_400)


@pytest.mark.parametrize(("duration", "days"), [("daily", 1), ("monthly", 28), ("yearly", 365)])
def test_durations_are_litellms_days(sync_manager: BudgetManager, duration: Any, days: int) -> None:
    assert sync_manager.create_budget(1.0, "u", duration)["duration"] == days


def test_create_budget_without_duration_is_a_lifetime_cap(sync_manager: BudgetManager) -> None:
    record = sync_manager.create_budget(total_budget=10, user="u")
    assert record == {"total_budget": 10.0, "current_cost": 0.0, "model_cost": {}}
    assert budget_of(sync_manager, "u") == ledger.Budget(10 * 10**9, "none")


def test_create_budget_rejects_bad_amounts_and_durations(sync_manager: BudgetManager) -> None:
    with pytest.raises(ValueError, match="duration"):
        sync_manager.create_budget(1.0, "u", "hourly")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        sync_manager.create_budget(-1.0, "u")
    with pytest.raises(ValueError, match="finite"):
        sync_manager.create_budget(float("nan"), "u")
    assert not sync_manager.is_valid_user("u")


def test_changing_a_budget_keeps_what_was_spent(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(0.001, "u", "daily")
    sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 100, 100))
    sync_manager.create_budget(0.002, "u", "daily")
    assert sync_manager.get_total_budget("u") == 0.002
    assert sync_manager.get_current_cost("u") == 0.0002  # 100 * 0.5e-6 + 100 * 1.5e-6


def test_update_cost_from_a_completion_charges_exactly_and_per_model(
    sync_manager: BudgetManager,
) -> None:
    sync_manager.create_budget(1.0, "u", "daily")
    sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    record = sync_manager.update_cost("u", completion_dict("gpt-4o-mini", 1000, 100))
    # 14 * 500 + 16 * 1500 = 31,000 nano-USD; 1000 * 150 + 100 * 600 = 210,000 nano-USD
    assert record["user"]["model_cost"] == {"gpt-3.5-turbo": 31e-6, "gpt-4o-mini": 210e-6}
    assert sync_manager.get_current_cost("u") == 241e-6
    assert sync_manager.get_model_cost("u") == {"gpt-3.5-turbo": 31e-6, "gpt-4o-mini": 210e-6}


def test_update_cost_records_spend_past_the_budget(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(0.00001, "u", "daily")
    for _ in range(3):
        sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    assert sync_manager.get_current_cost("u") == 93e-6  # three calls, the cap is 10e-6


def test_update_cost_from_texts_counts_each_as_a_chat_message(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(1.0, "u")
    sync_manager.update_cost(
        "u", model="gpt-3.5-turbo", input_text="Hey, how's it going?", output_text="Fine."
    )
    # prompt: 7 tokens of text + role + 3 + 3 = 14; completion: "Fine." = 2 tokens, and as
    # BudgetManager counts it, as a message: 2 + role + 3 + 3 = 9
    assert sync_manager.get_current_cost("u") == (14 * 500 + 9 * 1500) / 1e9


def test_update_cost_needs_a_completion_or_texts(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(1.0, "u")
    with pytest.raises(ValueError, match="completion object"):
        sync_manager.update_cost("u")
    with pytest.raises(ValueError, match="usage"):
        sync_manager.update_cost("u", completion_obj={"model": "gpt-3.5-turbo"})


def test_unknown_users_raise_key_error_as_budget_manager_does(
    sync_manager: BudgetManager,
) -> None:
    calls = [
        lambda: sync_manager.get_total_budget("ghost"),
        lambda: sync_manager.get_current_cost("ghost"),
        lambda: sync_manager.get_model_cost("ghost"),
        lambda: sync_manager.reset_cost("ghost"),
        lambda: sync_manager.update_cost("ghost", completion_dict("gpt-3.5-turbo", 1, 1)),
        lambda: sync_manager.projected_cost("gpt-3.5-turbo", PROMPT, "ghost"),
    ]
    for call in calls:
        with pytest.raises(KeyError) as raised:
            call()
        assert isinstance(raised.value, UnknownUser)
        assert "'ghost' has no budget" in str(raised.value)
    assert sync_manager.get_users() == []


def test_is_valid_user_and_get_users(sync_manager: BudgetManager) -> None:
    assert not sync_manager.is_valid_user("a:{b}\n")
    sync_manager.create_budget(1.0, "a:{b}\n")
    sync_manager.create_budget(1.0, "c")
    assert sync_manager.is_valid_user("a:{b}\n")
    assert sync_manager.get_users() == ["a:{b}\n", "c"]


def test_reset_cost_zeroes_the_window(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(1.0, "u", "monthly")
    sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    record = sync_manager.reset_cost("u")
    assert record["user"]["current_cost"] == 0
    assert record["user"]["model_cost"] == {}
    assert sync_manager.get_current_cost("u") == 0


def test_housekeeping_methods_have_nothing_to_do(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(1.0, "u", "daily")
    sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    assert sync_manager.reset_on_duration("u") is None  # type: ignore[func-returns-value]
    assert sync_manager.update_budget_all_users() is None  # type: ignore[func-returns-value]
    assert sync_manager.save_data() == {"status": "success"}
    sync_manager.load_data()
    assert sync_manager.get_current_cost("u") == 31e-6  # nothing was reset
    with pytest.raises(KeyError):
        sync_manager.reset_on_duration("ghost")


def test_projected_cost_is_spend_plus_a_bound_of_the_prompt(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(1.0, "u")
    sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    projected = sync_manager.projected_cost("gpt-3.5-turbo", PROMPT, "u")
    exact_prompt_usd = count_prompt_tokens(PROMPT, "gpt-3.5-turbo") * 0.5e-6
    assert projected >= 31e-6 + exact_prompt_usd
    assert projected <= 31e-6 + 100 * 0.5e-6


def test_two_managers_share_the_ledger(redis_url: str, sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(1.0, "u", "daily")
    with BudgetManager(project_name="elsewhere", redis_url=redis_url) as other:
        assert other.is_valid_user("u")
        other.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    assert sync_manager.get_current_cost("u") == 31e-6


def test_records_are_json_like_budget_managers_user_dict(sync_manager: BudgetManager) -> None:
    sync_manager.create_budget(0.5, "u", "daily")
    record = sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))["user"]
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {
        "total_budget",
        "current_cost",
        "model_cost",
        "duration",
        "created_at",
        "last_updated_at",
    }


def test_a_closed_manager_says_so(redis_url: str) -> None:
    budget_manager = BudgetManager(project_name="p", redis_url=redis_url)
    budget_manager.close()
    budget_manager.close()
    with pytest.raises(RuntimeError, match="closed"):
        budget_manager.get_users()


def test_an_unclosed_manager_is_shut_down_when_collected(redis_url: str) -> None:
    budget_manager = BudgetManager(project_name="p", redis_url=redis_url)
    assert budget_manager.get_users() == []
    thread = budget_manager._loop.thread
    del budget_manager
    gc.collect()
    assert not thread.is_alive()


# --- the seed notebook's two cells, on the safe path ---------------------------------------

# LiteLLM's cookbook "LiteLLM_User_Based_Rate_Limits": its two BudgetManager cells as
# published, but for the import line (its other cells pip-install litellm and set an
# OpenAI key; the tests set OPENAI_BASE_URL and a key for the fake instead).
NOTEBOOK_CELL_1 = """\
from litellm import BudgetManager, completion

# Initializes a litellm.BudgetManager()
budget_manager = BudgetManager(project_name="liteLLM_project", client_type="hosted") # see https://docs.litellm.ai/docs/budget_manager

user_id = str(uuid.uuid4()) # create a new user id
daily_budget = 0.0002

# Checks if a budget exists for a user
if not budget_manager.is_valid_user(user_id):
    # Creates a $0.0002 budget if the user does not exisr
    print(f"No budget exists for user: {user_id}\\n")
    print(f"Creating a budget for user: {user_id}, daily budget ${daily_budget}\\n")
    budget_manager.create_budget(total_budget=daily_budget, user=user_id, duration="daily") # duration can be daily, weekly, monthly


# Makes a `litellm.completion()` request only if the user is under their budget
current_spend_for_user = budget_manager.get_current_cost(user=user_id)
budget_for_user = budget_manager.get_total_budget(user_id)
print(f"User: {user_id} has spent ${current_spend_for_user}, budget for user: ${budget_for_user}\\n")

if current_spend_for_user <= budget_for_user:
    response = completion(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hey, how's it going?"}])
    budget_manager.update_cost(completion_obj=response, user=user_id)
else:
    response = "Sorry - no budget!"

print(response)
"""  # noqa: E501
NOTEBOOK_CELL_2 = """\
user_id = "29af95f8-c3c6-4c8c-b080-8b2d18d25432" # set in the previous cell

for _ in range(10):
  # check if a given call can be made
  current_spend_for_user = budget_manager.get_current_cost(user=user_id)
  budget_for_user = budget_manager.get_total_budget(user_id)
  print(f"User: {user_id} has spent ${current_spend_for_user}, budget for user: ${budget_for_user}\\n")
  if current_spend_for_user <= budget_for_user:
      response = completion(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hey, how's it going?"}])
      budget_manager.update_cost(completion_obj=response, user=user_id)
  else:
      response = "Sorry - no budget!"
      print(f"User: {user_id} has exceeded budget, current spend ${current_spend_for_user}, budget for user: ${budget_for_user}\\n")
      break # no more requests

  # print(response)
"""  # noqa: E501
NOTEBOOK_IMPORT = "from litellm import BudgetManager, completion"
SAFE_IMPORT = "from worker.compat import BudgetManager, completion"
NOTEBOOK_USER = "29af95f8-c3c6-4c8c-b080-8b2d18d25432"


class _NotebookUuid:
    """The notebook's ``uuid`` as its recorded run saw it: cell 2 names the user id that
    cell 1 drew, so ``uuid4`` draws that one."""

    @staticmethod
    def uuid4() -> str:
        return NOTEBOOK_USER


def run_cell(code: str, namespace: dict[str, Any]) -> None:
    filename = f"<notebook-cell-{abs(hash(code))}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    exec(compile(code, filename, "exec"), namespace)


def used_share(spent_nanousd: int) -> float:
    return spent_nanousd / LIMIT_NANOUSD


async def test_the_notebooks_two_cells_with_only_the_import_changed_never_overspend(
    notebook_env: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cell_1 = NOTEBOOK_CELL_1.replace(NOTEBOOK_IMPORT, SAFE_IMPORT)
    assert cell_1.replace(SAFE_IMPORT, NOTEBOOK_IMPORT) == NOTEBOOK_CELL_1
    namespace: dict[str, Any] = {"uuid": _NotebookUuid}

    def run() -> None:
        try:
            run_cell(cell_1, namespace)
            with pytest.raises(BudgetExceeded) as refused:  # the call that would cross it
                run_cell(NOTEBOOK_CELL_2, namespace)
            assert refused.value.reason == "budget_exceeded"
        finally:
            namespace["budget_manager"].close()

    await asyncio.to_thread(run)

    spent = await spent_nanousd(redis_url, NOTEBOOK_USER)
    calls = notebook_env.stats.completions_succeeded
    assert spent == calls * one_call_nanousd(notebook_env.config.output_tokens)  # once each
    assert 0.9 <= used_share(spent) <= 1.0
    assert (
        f"User: {NOTEBOOK_USER} has spent $0, budget for user: $0.0002" in capsys.readouterr().out
    )


async def test_the_notebooks_loop_in_20_threads_on_the_safe_path_never_overspends(
    notebook_env: Any, redis_url: str
) -> None:
    notebook_env.update_config(latency_s=0.02)
    namespace: dict[str, Any] = {"uuid": _NotebookUuid}
    outcomes: list[str] = []

    def cell_2_in_a_thread() -> None:
        try:
            run_cell(NOTEBOOK_CELL_2, dict(namespace))
            outcomes.append("done")
        except BudgetExceeded:
            outcomes.append("refused")

    def run() -> None:
        try:
            run_cell(NOTEBOOK_CELL_1.replace(NOTEBOOK_IMPORT, SAFE_IMPORT), namespace)
            threads = [threading.Thread(target=cell_2_in_a_thread) for _ in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            namespace["budget_manager"].close()

    await asyncio.to_thread(run)

    spent = await spent_nanousd(redis_url, NOTEBOOK_USER)
    calls = notebook_env.stats.completions_succeeded
    assert len(outcomes) == 20
    assert spent == calls * one_call_nanousd(notebook_env.config.output_tokens)
    assert spent <= LIMIT_NANOUSD
    assert 0.9 <= used_share(spent) <= 1.0


async def test_the_notebooks_check_then_update_cost_loop_does_not_charge_twice(
    notebook_env: Any, redis_url: str
) -> None:
    """``completion`` from worker.compat has charged the call when ``update_cost`` gets
    its response: the notebook's ``update_cost`` records nothing more."""
    namespace: dict[str, Any] = {"uuid": _NotebookUuid}

    def run() -> None:
        try:
            run_cell(NOTEBOOK_CELL_1.replace(NOTEBOOK_IMPORT, SAFE_IMPORT), namespace)
        finally:
            namespace["budget_manager"].close()

    await asyncio.to_thread(run)
    assert notebook_env.stats.completions_succeeded == 1
    assert await spent_nanousd(redis_url, NOTEBOOK_USER) == one_call_nanousd(
        notebook_env.config.output_tokens
    )
    assert namespace["response"].user == NOTEBOOK_USER


def test_completion_without_a_checked_user_says_what_to_do(redis_url: str) -> None:
    from worker.compat import completion

    with pytest.raises(RuntimeError, match=r"get_current_cost\(user\).*budget_manager.completion"):
        completion(model="gpt-3.5-turbo", messages=PROMPT)


async def test_update_cost_of_a_response_charged_to_another_user_is_refused(
    sync_manager: BudgetManager, fake_provider: Any
) -> None:
    sync_manager.create_budget(1.0, "a")
    sync_manager.create_budget(1.0, "b")
    response = await asyncio.to_thread(
        sync_manager.completion, "a", "gpt-3.5-turbo", PROMPT, **fake_args(fake_provider)
    )
    charged = sync_manager.get_current_cost("a")
    assert sync_manager.update_cost("a", completion_obj=response)["user"]["current_cost"] == charged
    with pytest.raises(ValueError, match="already charged to user 'a'"):
        sync_manager.update_cost("b", completion_obj=response)
    assert (sync_manager.get_current_cost("a"), sync_manager.get_current_cost("b")) == (charged, 0)


async def test_acompletion_stand_in_charges_the_user_checked_in_the_same_task(
    redis_url: str, fake_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import compat

    monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    async with AsyncBudgetManager("p", redis_url=redis_url) as manager:
        await manager.create_budget(0.01, "a")
        await manager.create_budget(0.01, "b")

        async def call_for(user: str) -> Any:
            if await manager.get_current_cost(user) <= await manager.get_total_budget(user):
                return await compat.acompletion(model="gpt-3.5-turbo", messages=PROMPT)
            return None

        a, b = await asyncio.gather(call_for("a"), call_for("b"))
        assert (a.user, b.user) == ("a", "b")
        assert await manager.get_current_cost("a") == await manager.get_current_cost("b") > 0


# --- the safe path's admission policy -------------------------------------------------------


async def test_the_safe_path_clamps_by_default(
    redis_url: str, fake_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call without ``max_tokens`` (1024 by default) does not fit USD 0.0002; compat
    lowers it to what is left rather than refusing the user's first call."""
    monkeypatch.delenv("BW_ADMISSION_POLICY", raising=False)
    async with AsyncBudgetManager("p", redis_url=redis_url) as manager:
        await manager.create_budget(0.0002, "u")
        response = await manager.acompletion(
            "u", "gpt-3.5-turbo", PROMPT, **fake_args(fake_provider)
        )
    assert response["choices"][0]["message"]["content"]


async def test_bw_admission_policy_still_chooses_reject(
    redis_url: str, fake_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BW_ADMISSION_POLICY", "reject")
    async with AsyncBudgetManager("p", redis_url=redis_url) as manager:
        await manager.create_budget(0.0002, "u")
        with pytest.raises(BudgetExceeded, match="may cost up to"):
            await manager.acompletion("u", "gpt-3.5-turbo", PROMPT, **fake_args(fake_provider))
    assert fake_provider.stats.requests_total == 0


# --- user_dict ------------------------------------------------------------------------------


def test_user_dict_reads_the_ledger(sync_manager: BudgetManager, redis_url: str) -> None:
    user_dict = sync_manager.user_dict
    assert dict(user_dict) == {}
    sync_manager.create_budget(0.5, "u", "daily")
    assert "u" in user_dict and "v" not in user_dict
    with BudgetManager(project_name="elsewhere", redis_url=redis_url) as other:
        other.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    record = user_dict["u"]
    assert record["current_cost"] == 31e-6  # another process's charge, read through
    assert record["model_cost"] == {"gpt-3.5-turbo": 31e-6}
    assert list(user_dict) == ["u"] and len(user_dict) == 1
    assert json.loads(json.dumps(dict(user_dict))) == {"u": record}
    with pytest.raises(KeyError):
        user_dict["ghost"]


@pytest.mark.parametrize(
    ("change", "advice"),
    [
        (lambda d: d.__setitem__("u", {"total_budget": 1.0}), r"create_budget\(\)"),
        (lambda d: d.__delitem__("u"), "delete"),
        (lambda d: d["u"].__setitem__("last_updated_at", 0.0), r"reset_cost\(user\)"),
        (lambda d: d["u"].__setitem__("current_cost", 0.0), r"reset_cost\(user\)"),
        (lambda d: d["u"].__setitem__("total_budget", 9.0), r"create_budget\(\)"),
        (lambda d: d["u"].update(total_budget=9.0), r"create_budget\(\)"),
        (lambda d: d["u"]["model_cost"].clear(), r"reset_cost\(user\)"),
        (lambda d: d["u"].pop("duration"), r"create_budget\(\)"),
    ],
)
def test_changing_user_dict_raises_saying_what_to_call(
    sync_manager: BudgetManager, change: Any, advice: str
) -> None:
    sync_manager.create_budget(0.5, "u", "daily")
    sync_manager.update_cost("u", completion_dict("gpt-3.5-turbo", 14, 16))
    with pytest.raises(TypeError, match="read-only view of the ledger") as raised:
        change(sync_manager.user_dict)
    assert raised.match(advice)
    assert sync_manager.get_current_cost("u") == 31e-6
    assert sync_manager.get_total_budget("u") == 0.5


def test_a_copy_of_a_user_dict_record_is_a_plain_dict(sync_manager: BudgetManager) -> None:
    import copy

    sync_manager.create_budget(0.5, "u", "daily")
    record = copy.deepcopy(sync_manager.user_dict["u"])
    record["model_cost"]["x"] = 1.0  # the caller's own
    assert type(record) is dict and type(record["model_cost"]) is dict


# --- construction ---------------------------------------------------------------------------


def settings_as_if_unset(redis_url: str) -> Settings:
    """Settings whose ``redis_url`` reads as the default (not from BW_REDIS_URL), but
    points at ``redis_url``: the machine's own Redis on 6379 is never touched."""
    given = Settings(redis_url=redis_url)
    return Settings.model_construct(_fields_set=set(), **dict(given))


def test_settings_default_to_localhost_when_bw_redis_url_is_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("BW_REDIS_URL", raising=False)
    settings = Settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert "redis_url" not in settings.model_fields_set


def test_a_default_redis_url_is_logged_at_construction(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="budget_worker.compat"):
        BudgetManager(project_name="p", settings=settings_as_if_unset(redis_url)).close()
    assert f"BW_REDIS_URL is not set: budgets are kept in the Redis at {redis_url}" in caplog.text


def test_a_redis_url_that_was_given_is_not_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="budget_worker.compat"):
        BudgetManager(project_name="p", redis_url=redis_url).close()
    assert caplog.text == ""


def test_no_redis_answering_is_an_error_at_construction() -> None:
    from worker.dev.servers import free_port
    from worker.errors import LedgerUnavailable

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(LedgerUnavailable, match=r"no Redis answers at redis://127\.0\.0\.1:\d+/0"):
        BudgetManager(project_name="p", settings=settings_as_if_unset(url))
    with pytest.raises(LedgerUnavailable, match="BW_REDIS_URL"):
        BudgetManager(project_name="p", redis_url=url)


def test_a_refused_password_is_an_error_at_construction_without_the_password(
    redis_url: str,
) -> None:
    wrong = redis_url.replace("redis://", "redis://someone:hunter2@")
    with pytest.raises(ConfigError, match="refused the worker's credentials") as raised:
        BudgetManager(project_name="p", redis_url=wrong)
    assert "hunter2" not in str(raised.value)


def test_importing_compat_does_not_import_aiokafka() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import worker.compat"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert "worker.compat" in result.stderr
    assert "aiokafka" not in result.stderr
