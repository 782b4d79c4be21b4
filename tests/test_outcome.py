"""worker/outcome.py: every terminal event built through the schema, stored events
rebuilt (never patched), and the answer to an event too large for the broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.events import (
    CompletionFailed,
    CompletionRejected,
    CompletionSucceeded,
    encode_event,
    parse_event,
)
from schemas.jobs import CompletionJob
from worker import ledger, outcome

JOB = CompletionJob.model_validate(
    {
        "schema_version": 1,
        "job_id": "job-1",
        "user_id": "alice",
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello"}],
        "metadata": {"ticket": "T-1"},
    }
)
SETTLED = ledger.PeriodSnapshot(
    limit_nanousd=200_000,
    spent_nanousd=30_000,
    reserved_nanousd=5_000,
    remaining_nanousd=165_000,
    period_end_ms=1_767_225_600_000,  # 2026-01-01T00:00:00Z
)
OUTCOMES = outcome.Outcomes("w-1")


def success() -> CompletionSucceeded:
    return OUTCOMES.succeeded(
        JOB,
        response={"id": "chatcmpl-1", "object": "chat.completion", "choices": []},
        prompt_tokens=8,
        completion_tokens=16,
        cost_nanousd=10_800,
        attempts=2,
    )


def test_every_event_carries_the_jobs_common_fields_and_the_worker() -> None:
    events = [
        success(),
        OUTCOMES.reject_job(JOB, "budget_exceeded", "no room"),
        OUTCOMES.failed(JOB, error_type="timeout", error="slow", retryable=True, attempts=3),
    ]

    for event in events:
        assert (event.job_id, event.user_id, event.model) == ("job-1", "alice", "gpt-4o-mini")
        assert event.metadata == {"ticket": "T-1"}
        assert event.worker_id == "w-1"
        assert parse_event(encode_event(event)) == event  # valid against the schema


def test_a_success_is_unsettled_until_its_settle_fills_the_budget() -> None:
    event = success()

    assert event.budget == outcome.UNSETTLED
    assert event.usage.total_tokens == 24
    settled = outcome.with_budget(event, SETTLED)
    assert isinstance(settled, CompletionSucceeded)
    assert settled.budget.spent_nanousd == 30_000
    assert settled.budget.remaining_nanousd == 165_000
    assert settled.budget.period_end == datetime(2026, 1, 1, tzinfo=UTC)
    assert event.budget == outcome.UNSETTLED  # the original is not changed


def test_a_stored_event_is_rebuilt_through_the_schema_with_the_budget_of_its_settle() -> None:
    raw = encode_event(success())

    rebuilt = outcome.stored(raw, SETTLED)

    assert isinstance(rebuilt, CompletionSucceeded)
    assert rebuilt.budget.limit_nanousd == 200_000
    assert rebuilt.cost_nanousd == 10_800
    assert rebuilt.attempts == 2


def test_a_stored_event_that_is_not_an_event_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError):
        outcome.stored(b'{"type": "completion.succeeded", "job_id": "x"}', SETTLED)


def test_only_successes_take_a_budget_and_a_missing_one_changes_nothing() -> None:
    refusal = OUTCOMES.reject_job(JOB, "expired", "past its deadline")

    assert outcome.with_budget(refusal, SETTLED) is refusal
    event = success()
    assert outcome.with_budget(event, None) is event
    assert outcome.snapshot(None) is None


def test_a_refusal_names_its_scope_and_limit_from_the_ledger() -> None:
    refused = ledger.Refused(
        limit="usd", remaining=1_000, retry_after_ms=None, snapshot=SETTLED, scope="team:eng"
    )

    event = OUTCOMES.reject_job(
        JOB,
        "budget_exceeded",
        "team:eng has 1000 nano-USD left",
        estimated_cost_nanousd=5_000,
        budget=SETTLED,
        refused=refused,
    )

    assert isinstance(event, CompletionRejected)
    assert (event.scope, event.limit) == ("team:eng", "usd")
    assert event.estimated_cost_nanousd == 5_000
    assert event.budget is not None and event.budget.remaining_nanousd == 165_000


def test_an_event_too_large_for_the_broker_becomes_a_failure_that_says_what_was_charged() -> None:
    answer = outcome.too_large(success(), size_bytes=2_000_000, limit_bytes=1_000_000)

    assert isinstance(answer, CompletionFailed)
    assert answer.error_type == "event_too_large"
    assert answer.retryable is False
    assert answer.cost_nanousd == 10_800 and answer.attempts == 2
    assert "2000000 bytes" in answer.error and "Charged: 10800 nano-USD" in answer.error
    assert answer.job_id == "job-1" and answer.worker_id == "w-1"


def test_a_refusal_too_large_is_answered_as_charging_nothing() -> None:
    refusal = OUTCOMES.reject_job(JOB, "budget_exceeded", "no room")

    answer = outcome.too_large(refusal, size_bytes=2_000_000, limit_bytes=1_000_000)

    assert answer.cost_nanousd == 0 and answer.attempts == 0
