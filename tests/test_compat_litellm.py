"""LiteLLM's own ``BudgetManager`` tests, written against ``worker.compat``, and the same
inputs given to LiteLLM's ``BudgetManager`` and to ours side by side.

The scenarios are those of LiteLLM's ``tests/local_testing/test_budget_manager.py``
(budget enough, budget not enough, saving, get_users, reset on duration, text-based
``update_cost``, ``created_at``). Where ours differs on purpose, the test is named for the
difference and asserts it; ``docs/contract.md`` ("The BudgetManager-compatible API") says
why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from worker import ledger
from worker.compat import BudgetExceeded, BudgetManager
from worker.provider import litellm

PROMPT = [{"role": "user", "content": "Hey, how's it going?"}]


@pytest.fixture
def budget_manager(redis_url: str) -> Iterator[BudgetManager]:
    with BudgetManager(project_name="test_project", redis_url=redis_url) as manager:
        yield manager


@pytest.fixture
def theirs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """LiteLLM's own BudgetManager, starting empty and never writing user_cost.json."""
    monkeypatch.chdir(tmp_path)  # it reads ./user_cost.json when it starts
    manager = litellm.BudgetManager(project_name="test_project")
    manager._save_data_thread = lambda: None  # its background thread writes ./user_cost.json
    return manager


@pytest.fixture
def openai_is_the_fake(fake_provider: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    return fake_provider


def nanousd(usd: float) -> int:
    return round(usd * 1e9)


# --- LiteLLM's scenarios -----------------------------------------------------------------


async def test_scenario_1_user_budget_enough(
    budget_manager: BudgetManager, openai_is_the_fake: Any
) -> None:
    user = "1234"

    def scenario() -> tuple[Any, dict[str, Any]]:
        budget_manager.create_budget(total_budget=10, user=user, duration="daily")
        data = {"model": "gpt-3.5-turbo", "messages": PROMPT}
        if budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user):
            response = litellm.completion(**data)
            return response, budget_manager.update_cost(completion_obj=response, user=user)
        return "Sorry - no budget!", {}

    response, record = await asyncio.to_thread(scenario)
    assert response != "Sorry - no budget!"
    charged = litellm.completion_cost(completion_response=response)
    assert record["user"]["current_cost"] == pytest.approx(charged, abs=1e-9)
    assert budget_manager.get_current_cost(user) == record["user"]["current_cost"]


async def test_scenario_1_on_the_safe_path(
    budget_manager: BudgetManager, openai_is_the_fake: Any
) -> None:
    budget_manager.create_budget(total_budget=10, user="1234", duration="daily")
    response = await asyncio.to_thread(
        budget_manager.completion, user="1234", model="gpt-3.5-turbo", messages=PROMPT
    )
    assert response["choices"][0]["message"]["content"]
    assert budget_manager.get_current_cost("1234") > 0


def test_scenario_2_user_budget_not_enough(
    budget_manager: BudgetManager, openai_is_the_fake: Any
) -> None:
    user = "12345"
    budget_manager.create_budget(total_budget=0, user=user, duration="daily")
    if budget_manager.get_current_cost(user=user) < budget_manager.get_total_budget(user=user):
        response: Any = litellm.completion(model="gpt-3.5-turbo", messages=PROMPT)
        budget_manager.update_cost(completion_obj=response, user=user)
    else:
        response = "Sorry - no budget!"
    assert response == "Sorry - no budget!"
    with pytest.raises(BudgetExceeded) as refused:  # and the safe path refuses, uncalled
        budget_manager.completion(user=user, model="gpt-3.5-turbo", messages=PROMPT)
    assert refused.value.reason == "budget_exceeded"
    assert openai_is_the_fake.stats.requests_total == 0
    assert budget_manager.get_current_cost(user) == 0


def test_scenario_3_save_user_budget(budget_manager: BudgetManager) -> None:
    response = budget_manager.save_data()
    assert response["status"] != "error"


def test_scenario_4_get_users(budget_manager: BudgetManager) -> None:
    assert budget_manager.get_users() == []
    budget_manager.create_budget(total_budget=10, user="1234", duration="daily")
    budget_manager.create_budget(total_budget=0, user="12345", duration="daily")
    assert budget_manager.get_users() == ["1234", "12345"]


def test_scenario_5_editing_user_dict_to_pass_time_says_what_to_call_instead(
    budget_manager: BudgetManager,
) -> None:
    """Differs on purpose: LiteLLM's test moves ``last_updated_at`` back a day in its
    in-memory ``user_dict`` and calls ``update_budget_all_users``. Here ``user_dict`` is a
    view of the ledger, whose windows run on Redis's clock: the edit raises, naming
    ``reset_cost``, instead of being silently lost."""
    user = "123456"
    budget_manager.create_budget(total_budget=10, user=user, duration="daily")
    budget_manager.update_cost(user, model="gpt-3.5-turbo", input_text="Hello!", output_text="Hi")
    assert budget_manager.get_current_cost(user) > 0
    one_day_in_seconds = 24 * 60 * 60
    with pytest.raises(TypeError, match=r"read-only view of the ledger.*reset_cost\(user\)"):
        budget_manager.user_dict[user]["last_updated_at"] -= one_day_in_seconds
    budget_manager.update_budget_all_users()
    assert budget_manager.get_current_cost(user) > 0  # nothing was reset
    budget_manager.reset_cost(user)  # what the scenario means to do
    assert budget_manager.get_current_cost(user) == 0


def test_scenario_5_reset_at_the_end_of_duration_happens_by_itself(
    budget_manager: BudgetManager, redis_url: str
) -> None:
    """The ledger rolls a window over when it ends; nobody has to call anything. (A one
    second window stands in for a day: compat's durations are whole days.)"""
    user = "123456"
    budget_manager.create_budget(total_budget=10, user=user, duration="daily")

    async def shorten() -> None:
        book = ledger.Ledger.from_url(redis_url)
        try:
            await book.set_budget(user, ledger.Budget(10 * 10**9, "rolling", window_s=1))
        finally:
            await book.close()

    asyncio.run(shorten())
    budget_manager.update_cost(user, model="gpt-3.5-turbo", input_text="Hello!", output_text="Hi")
    assert budget_manager.get_current_cost(user) > 0
    first_window = budget_manager.user_dict[user]["last_updated_at"]
    time.sleep(1.05)
    assert budget_manager.get_current_cost(user) == 0
    assert budget_manager.user_dict[user]["last_updated_at"] >= first_window + 1


def test_scenario_6_input_text_on_completion_charges_what_litellm_charges(
    budget_manager: BudgetManager, theirs: Any
) -> None:
    user = "12345"
    budget_manager.create_budget(total_budget=10, user=user, duration="daily")
    theirs.create_budget(total_budget=10, user=user, duration="daily")
    texts = {
        "model": "gpt-3.5-turbo",
        "input_text": "hello world",
        "output_text": "it's a sunny day in san francisco",
    }
    budget_manager.update_cost(user=user, **texts)
    theirs.update_cost(user=user, **texts)
    assert nanousd(budget_manager.get_current_cost(user)) == nanousd(theirs.get_current_cost(user))
    assert nanousd(budget_manager.get_current_cost(user)) == 28_500  # 9 x 500 + 16 x 1,500


def test_create_budget_uses_current_time(budget_manager: BudgetManager) -> None:
    budget1 = budget_manager.create_budget(total_budget=100.0, user="user1", duration="daily")
    time1 = budget1["created_at"]
    time.sleep(0.1)
    budget2 = budget_manager.create_budget(total_budget=100.0, user="user2", duration="daily")
    time2 = budget2["created_at"]
    assert time2 > time1
    assert abs(time2 - time.time()) < 5  # the ledger's (Redis's) clock: this machine's


def test_create_budget_does_not_take_a_custom_created_at(budget_manager: BudgetManager) -> None:
    """Differs on purpose: LiteLLM stores the ``created_at`` given (and starts its first
    window there); the ledger starts every budget's windows on its own clock when the
    budget is first created, so the record says when that was."""
    custom_time = 1234567890.0
    budget = budget_manager.create_budget(
        total_budget=100.0, user="user_custom", duration="daily", created_at=custom_time
    )
    assert budget["created_at"] != custom_time
    assert abs(budget["created_at"] - time.time()) < 5
    assert budget["last_updated_at"] == budget["created_at"]


# --- the same inputs, side by side ----------------------------------------------------------


def test_records_have_litellms_keys(budget_manager: BudgetManager, theirs: Any) -> None:
    ours = budget_manager.create_budget(total_budget=0.5, user="u", duration="weekly")
    their = theirs.create_budget(total_budget=0.5, user="u", duration="weekly")
    assert set(their) <= set(ours)
    assert (ours["total_budget"], ours["duration"]) == (their["total_budget"], their["duration"])
    assert type(ours["duration"]) is type(their["duration"])  # 7, not 7.0


def test_an_empty_user_id_is_a_user_like_any_other(
    budget_manager: BudgetManager, theirs: Any
) -> None:
    for manager in (budget_manager, theirs):
        assert manager.is_valid_user("") is False
        manager.create_budget(total_budget=1.0, user="")
        assert manager.is_valid_user("") is True
        assert manager.get_current_cost("") == 0
        assert manager.get_total_budget("") == 1.0
        assert manager.get_users() == [""]
        manager.update_cost(user="", model="gpt-3.5-turbo", input_text="a", output_text="b")
    assert budget_manager.get_current_cost("") == theirs.get_current_cost("")
    budget_manager.reset_cost("")
    assert budget_manager.get_current_cost("") == 0


def test_an_empty_user_id_is_kept_apart_from_every_other(budget_manager: BudgetManager) -> None:
    budget_manager.create_budget(total_budget=1.0, user="")
    assert not budget_manager.is_valid_user("\x00")
    budget_manager.create_budget(total_budget=2.0, user="\x00")
    budget_manager.create_budget(total_budget=3.0, user="\x00\x00")
    assert budget_manager.get_users() == ["", "\x00", "\x00\x00"]
    assert [budget_manager.get_total_budget(u) for u in ("", "\x00", "\x00\x00")] == [1, 2, 3]


async def test_update_cost_from_a_response_charges_what_litellm_charges(
    budget_manager: BudgetManager, theirs: Any, openai_is_the_fake: Any
) -> None:
    response = await litellm.acompletion(model="gpt-3.5-turbo", messages=PROMPT)
    for manager in (budget_manager, theirs):
        manager.create_budget(total_budget=1.0, user="u", duration="daily")
        manager.update_cost(completion_obj=response, user="u")
    assert nanousd(budget_manager.get_current_cost("u")) == nanousd(theirs.get_current_cost("u"))
    assert budget_manager.get_model_cost("u").keys() == theirs.get_model_cost("u").keys()


@pytest.mark.parametrize(
    ("model", "input_text", "output_text"),
    [
        ("gpt-3.5-turbo", "Hey, how's it going?", "Fine."),
        ("gpt-4o-mini", "hello world", "it's a sunny day in san francisco"),
        ("gpt-4o-mini", "Grüße, 世界! 🎉", "¿Qué tal? — très bien 👍"),
        ("claude-haiku-4-5", "hello world", "it's a sunny day in san francisco"),
        ("mistral/mistral-small-latest", "Grüße, 世界! 🎉", "¿Qué tal? — très bien 👍"),
    ],
)
def test_update_cost_from_texts_counts_tokens_as_litellm_does(
    budget_manager: BudgetManager, theirs: Any, model: str, input_text: str, output_text: str
) -> None:
    for manager in (budget_manager, theirs):
        manager.create_budget(total_budget=1.0, user="u")
        manager.update_cost(user="u", model=model, input_text=input_text, output_text=output_text)
    assert nanousd(budget_manager.get_current_cost("u")) == nanousd(theirs.get_current_cost("u"))


def test_azure_responses_are_priced_as_litellm_prices_them(
    budget_manager: BudgetManager, theirs: Any
) -> None:
    """Azure names models its own way (``gpt-35-turbo``); litellm prices the response from
    the provider it records with it."""
    response = litellm.ModelResponse(
        model="gpt-35-turbo", usage=litellm.Usage(prompt_tokens=1000, completion_tokens=100)
    )
    response._hidden_params = {"custom_llm_provider": "azure"}
    for manager in (budget_manager, theirs):
        manager.create_budget(total_budget=1.0, user="u")
        manager.update_cost(completion_obj=response, user="u")
    assert nanousd(budget_manager.get_current_cost("u")) == nanousd(theirs.get_current_cost("u"))
    assert budget_manager.get_model_cost("u") == {"gpt-35-turbo": theirs.get_current_cost("u")}


def test_cached_prompt_tokens_are_priced_as_litellm_prices_them(
    budget_manager: BudgetManager, theirs: Any
) -> None:
    response = litellm.ModelResponse(
        model="gpt-4o-mini",
        usage=litellm.Usage(
            prompt_tokens=1000, completion_tokens=100, prompt_tokens_details={"cached_tokens": 800}
        ),
    )
    for manager in (budget_manager, theirs):
        manager.create_budget(total_budget=1.0, user="u")
        manager.update_cost(completion_obj=response, user="u")
    assert nanousd(budget_manager.get_current_cost("u")) == nanousd(theirs.get_current_cost("u"))


def test_get_model_cost_before_any_spend_is_an_empty_dict(
    budget_manager: BudgetManager, theirs: Any
) -> None:
    """Differs on purpose: LiteLLM answers ``0`` (its ``.get`` default) until the first
    charge, then a dict; ours is a dict throughout."""
    for manager in (budget_manager, theirs):
        manager.create_budget(total_budget=1.0, user="u")
    assert theirs.get_model_cost("u") == 0
    assert budget_manager.get_model_cost("u") == {}


def test_recreating_a_budget_keeps_its_spend(budget_manager: BudgetManager, theirs: Any) -> None:
    """Differs on purpose: LiteLLM's ``create_budget`` replaces the whole record, so calling
    it again forgives what was spent; the ledger keeps spend across budget changes."""
    for manager in (budget_manager, theirs):
        manager.create_budget(total_budget=1.0, user="u", duration="daily")
        manager.update_cost(user="u", model="gpt-3.5-turbo", input_text="a", output_text="b")
        manager.create_budget(total_budget=2.0, user="u", duration="daily")
    assert theirs.get_current_cost("u") == 0
    assert budget_manager.get_current_cost("u") > 0
