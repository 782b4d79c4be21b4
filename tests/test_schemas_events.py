import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import (
    EVENT_ADAPTER,
    BudgetSnapshot,
    CompletionFailed,
    CompletionRejected,
    CompletionSucceeded,
    TerminalEvent,
    UnknownEventType,
    Usage,
    encode_event,
    parse_event,
)
from schemas.money import MAX_NANOUSD

EXAMPLES = Path(__file__).parent.parent / "schemas" / "examples"
COMMON: dict[str, Any] = {
    "job_id": "job-1",
    "user_id": "alice",
    "model": "gpt-4o-mini",
    "metadata": {"ticket": 7},
    "worker_id": "worker-1",
}
PERIOD_END = datetime(2025, 3, 2, tzinfo=UTC)


def budget(spent_nanousd: int = 160_000) -> BudgetSnapshot:
    return BudgetSnapshot(
        limit_nanousd=200_000,
        spent_nanousd=spent_nanousd,
        remaining_nanousd=200_000 - spent_nanousd,
        period_end=PERIOD_END,
    )


def succeeded(**changes: Any) -> CompletionSucceeded:
    fields: dict[str, Any] = {
        **COMMON,
        "response": {"id": "chatcmpl-1", "choices": []},
        "usage": Usage(prompt_tokens=600, completion_tokens=116, total_tokens=716),
        "cost_nanousd": 159_600,
        "budget": budget(),
        "attempts": 1,
    }
    return CompletionSucceeded(**(fields | changes))


def rejected(**changes: Any) -> CompletionRejected:
    fields: dict[str, Any] = {
        **COMMON,
        "reason": "budget_exceeded",
        "detail": "the estimate exceeds the remaining budget",
        "retry_after_s": 3600.0,
        "estimated_cost_nanousd": 181_500,
        "budget": budget(),
    }
    return CompletionRejected(**(fields | changes))


def failed(**changes: Any) -> CompletionFailed:
    fields: dict[str, Any] = {
        **COMMON,
        "error_type": "provider_timeout",
        "error": "no answer within 60 s",
        "retryable": True,
        "attempts": 3,
    }
    return CompletionFailed(**(fields | changes))


def as_dict(event: TerminalEvent) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(encode_event(event))
    return decoded


@pytest.mark.parametrize("event", [succeeded(), rejected(), failed()], ids=lambda e: e.type)
def test_event_round_trips_through_encode_and_parse(event: TerminalEvent) -> None:
    assert parse_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("event", "cls"),
    [
        (succeeded(), CompletionSucceeded),
        (rejected(), CompletionRejected),
        (failed(), CompletionFailed),
    ],
    ids=["succeeded", "rejected", "failed"],
)
def test_discriminator_picks_the_class_named_by_type(event: TerminalEvent, cls: type) -> None:
    assert type(parse_event(encode_event(event).decode())) is cls


@pytest.mark.parametrize(
    "name", ["completion_succeeded", "completion_rejected", "completion_failed"]
)
def test_example_event_parses_and_encodes_to_the_same_json(name: str) -> None:
    raw = (EXAMPLES / f"{name}.json").read_bytes()
    event = parse_event(raw)
    assert event.type == name.replace("_", ".", 1)
    assert as_dict(event) == json.loads(raw)


def test_event_is_compact_utf8_json() -> None:
    raw = encode_event(failed(error="café"))
    assert b"\n" not in raw and b", " not in raw and b'": ' not in raw
    assert "café".encode() in raw


def test_event_has_every_common_field() -> None:
    encoded = as_dict(failed())
    common = ["schema_version", "type", "event_id", "job_id", "user_id", "model", "metadata"]
    for name in [*common, "worker_id", "occurred_at"]:
        assert name in encoded
    assert encoded["schema_version"] == 1


def test_new_events_get_distinct_ids_and_an_aware_utc_time() -> None:
    first, second = failed(), failed()
    assert first.event_id != second.event_id and len(first.event_id) == 32
    assert first.occurred_at.utcoffset() is not None
    assert as_dict(first)["occurred_at"].endswith("Z")


def test_unknown_event_fields_are_ignored() -> None:
    event = succeeded()
    data = as_dict(event)
    data["region"] = "eu-west-1"
    data["budget"]["reserved_nanousd"] = 5
    data["usage"]["reasoning_tokens"] = 3
    assert parse_event(json.dumps(data)) == event


def test_unknown_event_type_is_reported_as_such() -> None:
    data = as_dict(failed()) | {"type": "completion.cancelled"}
    with pytest.raises(UnknownEventType) as caught:
        parse_event(json.dumps(data))
    assert caught.value.event_type == "completion.cancelled"


def test_event_without_type_is_a_validation_error() -> None:
    data = as_dict(failed())
    del data["type"]
    with pytest.raises(ValidationError):
        parse_event(json.dumps(data))


def test_cost_usd_is_derived_from_cost_nanousd() -> None:
    encoded = as_dict(succeeded(cost_nanousd=160_000))
    assert encoded["cost_nanousd"] == 160_000
    assert encoded["cost_usd"] == 0.00016


def test_budget_usd_floats_are_derived_from_nanousd() -> None:
    encoded = as_dict(succeeded(budget=budget(spent_nanousd=159_600)))["budget"]
    assert encoded["limit_usd"] == 0.0002
    assert encoded["spent_usd"] == 0.0001596
    assert encoded["remaining_usd"] == 0.0000404


def test_estimated_cost_usd_is_null_when_there_is_no_estimate() -> None:
    encoded = as_dict(rejected(estimated_cost_nanousd=None, budget=None))
    assert encoded["estimated_cost_usd"] is None and encoded["budget"] is None
    assert as_dict(rejected())["estimated_cost_usd"] == 0.0001815


def test_failed_event_charges_nothing_by_default() -> None:
    encoded = as_dict(failed())
    assert (encoded["cost_nanousd"], encoded["cost_usd"]) == (0, 0.0)


def test_usd_float_that_disagrees_with_nanousd_is_rejected() -> None:
    data = as_dict(succeeded()) | {"cost_usd": 0.5}
    with pytest.raises(ValidationError, match="cost_usd must equal cost_nanousd / 1e9"):
        parse_event(json.dumps(data))


def test_budget_usd_float_that_disagrees_with_nanousd_is_rejected() -> None:
    data = as_dict(succeeded())
    data["budget"]["spent_usd"] = 0.0
    with pytest.raises(ValidationError, match="spent_usd must equal spent_nanousd"):
        parse_event(json.dumps(data))


def test_usd_float_given_for_a_null_amount_is_rejected() -> None:
    data = as_dict(rejected(estimated_cost_nanousd=None)) | {"estimated_cost_usd": 0.1}
    with pytest.raises(ValidationError, match="estimated_cost_usd"):
        parse_event(json.dumps(data))


def test_usd_float_cannot_be_set_when_building_an_event() -> None:
    event = succeeded(cost_nanousd=1_000_000_000)
    with pytest.raises(ValidationError):
        CompletionSucceeded(**(event.model_dump() | {"cost_usd": 2.0}))


def test_negative_cost_is_rejected() -> None:
    with pytest.raises(ValidationError, match="cost_nanousd"):
        failed(cost_nanousd=-1)


def test_remaining_may_go_below_zero_after_an_overshooting_settle() -> None:
    snapshot = BudgetSnapshot(limit_nanousd=100, spent_nanousd=130, remaining_nanousd=-30)
    assert snapshot.remaining_usd == -3e-08


def test_unknown_reject_reason_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="reason"):
        rejected(reason="too_expensive")


def test_succeeded_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValidationError, match="attempts"):
        succeeded(attempts=0)


def test_one_adapter_serves_the_union() -> None:
    assert EVENT_ADAPTER.validate_python(as_dict(failed())).type == "completion.failed"


@given(st.integers(min_value=0, max_value=MAX_NANOUSD))
def test_derived_usd_survives_a_round_trip_for_any_amount(cost_nanousd: int) -> None:
    event = failed(cost_nanousd=cost_nanousd)
    parsed = parse_event(encode_event(event))
    assert isinstance(parsed, CompletionFailed)
    assert parsed.cost_nanousd == cost_nanousd
    assert parsed.cost_usd == cost_nanousd / 1_000_000_000


@pytest.mark.parametrize(
    ("reason", "retry_after_s", "retryable"),
    [
        ("rate_limited", 2.0, True),
        ("rate_limited", None, False),
        ("budget_exceeded", 3600.0, True),
        ("budget_exceeded", None, False),
        ("no_budget", None, False),
        ("invalid_job", None, False),
        ("unknown_model", None, False),
        ("expired", None, False),
    ],
)
def test_a_rejection_written_before_retryable_existed_gets_it_by_rule(
    reason: str, retry_after_s: float | None, retryable: bool
) -> None:
    raw = json.loads((EXAMPLES / "completion_rejected.json").read_text())
    for field in ("retryable", "remaining_nanousd", "resets_at"):
        del raw[field]
    raw.update(reason=reason, retry_after_s=retry_after_s)
    event = parse_event(json.dumps(raw))
    assert isinstance(event, CompletionRejected)
    assert event.retryable is retryable
    assert event.resets_at is None


def test_a_rejection_keeps_the_retryable_it_was_sent_with() -> None:
    raw = json.loads((EXAMPLES / "completion_rejected.json").read_text())
    raw["retryable"] = False
    event = parse_event(json.dumps(raw))
    assert isinstance(event, CompletionRejected) and event.retryable is False
