"""The job path, in-process: every outcome of a decoded job, over a real Redis, with a
scripted provider (no broker, no HTTP). End-to-end runs through real servers are in
test_pipeline.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.events import CompletionFailed, CompletionRejected, CompletionSucceeded, encode_event
from schemas.jobs import CompletionJob, parse_job
from schemas.money import NANOUSD_PER_USD
from tests.support import MODEL, InProcess, in_process, job, spent
from worker.dev.doubles import Call, ScriptedProvider, answer
from worker.errors import RetryableProviderError
from worker.ledger import Budget, Reserved, Scope

USD = NANOUSD_PER_USD


def decoded(job_id: str, user: str = "alice", **fields: Any) -> CompletionJob:
    return parse_job(json.dumps(job(job_id, user, **fields), default=str).encode())


@pytest.fixture
async def rig(redis_url: str) -> AsyncIterator[InProcess]:
    path = in_process(redis_url, ScriptedProvider())
    await path.ledger.set_budget("alice", Budget(USD, "none"))
    try:
        yield path
    finally:
        await path.close()


async def test_a_job_is_charged_its_usage_and_answered_with_the_budget_it_left(
    rig: InProcess,
) -> None:
    rig.provider.handler = lambda call: answer(prompt_tokens=100, completion_tokens=10)
    outcome = await rig.jobs.run(decoded("j1"))
    event = outcome.event
    assert isinstance(event, CompletionSucceeded)
    cost = 100 * 150 + 10 * 600  # nano-USD per token: 0.15 and 0.60 USD per million
    assert event.cost_nanousd == cost == await spent(rig.ledger, "alice")
    assert event.budget.spent_nanousd == cost
    assert event.budget.remaining_nanousd == USD - cost
    assert outcome.reply_to is None


async def test_the_jobs_metadata_is_never_handed_to_the_provider(rig: InProcess) -> None:
    """``metadata`` is also a litellm parameter (it reaches callbacks and loggers); the
    job's own metadata is only echoed on events."""
    outcome = await rig.jobs.run(decoded("j1", metadata={"secret-ish": "tenant-7"}))
    assert outcome.event.metadata == {"secret-ish": "tenant-7"}
    (call,) = rig.provider.calls
    assert "metadata" not in call.params
    assert "tenant-7" not in json.dumps([call.params, call.messages])


async def test_a_redelivery_after_the_deadline_answers_the_stored_success(
    rig: InProcess,
) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    first = await rig.jobs.run(decoded("j1", deadline=deadline.isoformat()))
    assert isinstance(first.event, CompletionSucceeded)
    late = decoded("j1", deadline=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    again = await rig.jobs.run(late)
    assert encode_event(again.event) == encode_event(first.event)
    assert len(rig.provider.calls) == 1


async def test_a_redelivery_after_the_model_left_the_list_answers_the_stored_success(
    rig: InProcess,
) -> None:
    first = await rig.jobs.run(decoded("j1"))
    rig.jobs.models = type(rig.jobs.models)([])  # the model list changed
    again = await rig.jobs.run(decoded("j1"))
    assert encode_event(again.event) == encode_event(first.event)


async def test_an_unknown_model_is_refused_naming_the_models_the_worker_has(
    rig: InProcess,
) -> None:
    outcome = await rig.jobs.run(decoded("j1", model="gpt-5-unknown"))
    assert isinstance(outcome.event, CompletionRejected)
    assert outcome.event.reason == "unknown_model"
    assert f"it has {MODEL!r}" in outcome.event.detail
    assert rig.provider.calls == []


async def test_by_default_a_job_too_large_for_the_budget_runs_with_fewer_tokens(
    rig: InProcess,
) -> None:
    """Today (reject by default) the first job on a fresh $0.0001 budget is refused."""
    await rig.ledger.set_budget("bob", Budget(100_000, "daily"))
    outcome = await rig.jobs.run(decoded("j1", "bob", max_tokens=1024))
    assert isinstance(outcome.event, CompletionSucceeded)
    (call,) = rig.provider.calls
    assert 16 <= call.max_tokens < 1024
    assert await spent(rig.ledger, "bob") <= 100_000


async def test_an_estimate_larger_than_the_whole_budget_says_it_can_never_fit(
    redis_url: str,
) -> None:
    rig = in_process(redis_url, ScriptedProvider(), admission_policy="reject")
    try:
        await rig.ledger.set_budget("bob", Budget(100_000, "daily"))
        outcome = await rig.jobs.run(decoded("j1", "bob", max_tokens=1024))
    finally:
        await rig.close()
    event = outcome.event
    assert isinstance(event, CompletionRejected) and event.reason == "budget_exceeded"
    assert "can never fit" in event.detail
    assert not event.retryable and event.resets_at is None  # waiting cannot help
    for fix in ("max_tokens", "BW_DEFAULT_MAX_TOKENS", "BW_ADMISSION_POLICY=clamp"):
        assert fix in event.detail
    assert rig.provider.calls == []


async def test_a_refusal_that_lifts_says_when_and_how_much_remains(redis_url: str) -> None:
    """A job that would fit a fresh period is refused retryable, with what remains and
    when the day ends."""
    rig = in_process(redis_url, ScriptedProvider(), admission_policy="reject")
    try:
        await rig.ledger.set_budget("erin", Budget(100_000, "daily"))
        held = await rig.ledger.reserve(
            "erin", "other", cost_nanousd=90_000, tokens=0, lease_ms=60_000, holder="h"
        )
        assert isinstance(held, Reserved)
        event = (await rig.jobs.run(decoded("j1", "erin", max_tokens=64))).event
    finally:
        await rig.close()
    assert isinstance(event, CompletionRejected) and event.reason == "budget_exceeded"
    assert event.retryable and event.remaining_nanousd == 10_000
    assert event.estimated_cost_nanousd is not None and event.estimated_cost_nanousd > 10_000
    assert event.retry_after_s is not None and event.resets_at is not None
    midnight = (event.occurred_at + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert abs((event.resets_at - midnight).total_seconds()) < 2


async def test_a_refusal_names_the_scope_and_limit_that_refused(redis_url: str) -> None:
    """A team's cap refuses a member with room of their own; a user's limit on the job's
    model refuses though the user's own budget has room."""
    rig = in_process(redis_url, ScriptedProvider(), admission_policy="reject")
    try:
        await rig.ledger.create_team("eng", "acme")
        await rig.ledger.set_budget(Scope("team", "eng"), Budget(1000, "daily"))
        await rig.ledger.set_budget("carol", Budget(USD, "daily"))
        await rig.ledger.set_membership("carol", team="eng")
        by_team = (await rig.jobs.run(decoded("j1", "carol", max_tokens=64))).event
        await rig.ledger.set_budget("dan", Budget(USD, "daily"))
        await rig.ledger.set_model_budget("dan", MODEL, Budget(1000, "daily"))
        by_model = (await rig.jobs.run(decoded("j2", "dan", max_tokens=64))).event
    finally:
        await rig.close()
    assert isinstance(by_team, CompletionRejected) and by_team.reason == "budget_exceeded"
    assert (by_team.scope, by_team.limit) == ("team:eng", "usd")
    # The estimate is more than the team's whole cap: waiting cannot help.
    assert not by_team.retryable and by_team.remaining_nanousd == 1000
    assert by_team.budget is not None and by_team.budget.limit_nanousd == 1000
    assert "team:eng" in by_team.detail
    assert isinstance(by_model, CompletionRejected)
    assert by_model.scope == f"model:dan/{MODEL}"
    assert rig.provider.calls == []


async def test_a_failed_call_is_released_and_answered_failed(rig: InProcess) -> None:
    def fail(call: Call) -> Any:
        raise RetryableProviderError("server_error", "InternalServerError (status 500)")

    rig.provider.handler = fail
    outcome = await rig.jobs.run(decoded("j1"))
    assert isinstance(outcome.event, CompletionFailed)
    assert outcome.event.error_type == "server_error" and outcome.event.cost_nanousd == 0
    state = await rig.ledger.state("alice")
    assert state is not None and (
        state.snapshot.spent_nanousd,
        state.snapshot.reserved_nanousd,
    ) == (
        0,
        0,
    )


async def test_a_failed_event_reports_the_calls_its_error_counted(rig: InProcess) -> None:
    def fail(call: Call) -> Any:
        raise RetryableProviderError("rate_limited", "RateLimitError (status 429)", attempts=3)

    rig.provider.handler = fail
    outcome = await rig.jobs.run(decoded("j1"))

    assert isinstance(outcome.event, CompletionFailed)
    assert (outcome.event.error_type, outcome.event.attempts) == ("rate_limited", 3)
    assert outcome.event.retryable


async def test_a_delivery_waits_for_another_that_runs_the_job_and_answers_its_outcome(
    rig: InProcess,
) -> None:
    release = asyncio.Event()

    async def slow(call: Call) -> Any:
        await release.wait()
        return answer()

    rig.provider.handler = slow
    first = asyncio.create_task(rig.jobs.run(decoded("j1")))
    await rig.provider.started.wait()
    second = asyncio.create_task(rig.jobs.run(decoded("j1")))  # a redelivery elsewhere
    await asyncio.sleep(0.3)
    assert not second.done() and len(rig.provider.calls) == 1
    release.set()
    one, two = await asyncio.gather(first, second)
    assert encode_event(one.event) == encode_event(two.event)
    assert len(rig.provider.calls) == 1


async def test_a_defect_answers_the_job_internal_error(rig: InProcess) -> None:
    def broken(call: Call) -> Any:
        raise KeyError("a bug")

    rig.provider.handler = broken
    outcome = await rig.jobs.run(decoded("j1"))
    assert isinstance(outcome.event, CompletionFailed)
    assert outcome.event.error_type == "internal_error"
    state = await rig.ledger.state("alice")
    assert state is not None and state.snapshot.reserved_nanousd == 0


async def test_a_response_without_usage_is_charged_its_reservation(rig: InProcess) -> None:
    """Today such a call costs the user nothing; its real cost is unknown, so the
    reservation, an upper bound of it, is charged."""
    no_usage = answer()
    rig.provider.handler = lambda call: type(no_usage)(no_usage.response, None, 1)
    outcome = await rig.jobs.run(decoded("j1", max_tokens=16))
    event = outcome.event
    assert isinstance(event, CompletionSucceeded) and event.cost_basis == "reservation"
    assert event.cost_nanousd > 0
    assert event.cost_nanousd == await spent(rig.ledger, "alice")
    assert event.usage.completion_tokens == 16  # the bound it was charged at


async def test_each_job_logs_one_line_with_its_model_cost_tokens_and_a_reason_if_any(
    rig: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    rig.provider.handler = lambda call: answer(prompt_tokens=100, completion_tokens=10)
    with caplog.at_level(logging.INFO, logger="budget_worker.job"):
        await rig.jobs.run(decoded("ok", prompt="PROMPT-TEXT-91"))
        await rig.jobs.run(decoded("no", "nobody"))
    ok, refused = (r for r in caplog.records if r.name == "budget_worker.job")
    assert ok.getMessage() == "job succeeded"
    assert (ok.model, ok.cost_nanousd, ok.prompt_tokens, ok.completion_tokens) == (  # type: ignore[attr-defined]
        MODEL,
        100 * 150 + 10 * 600,
        100,
        10,
    )
    assert ok.model_ms >= 0 and not hasattr(ok, "reason")  # type: ignore[attr-defined]
    assert refused.getMessage() == "job rejected" and refused.reason == "no_budget"  # type: ignore[attr-defined]
    assert "PROMPT-TEXT-91" not in caplog.text
