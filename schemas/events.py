"""Terminal events on ``llm.results``: the one outcome of each job, told by ``type``.

Events and jobs deliberately differ in how they treat fields they do not know.
A job *forbids* them: a field the worker does not understand would be silently not
honoured, and a producer must learn that at once. An event *ignores* them when parsed:
the contract grows by new optional fields, and a consumer built against an older
``schemas`` must keep reading events from a newer worker. A new event ``type`` cannot be
read that way, so ``parse_event`` raises ``UnknownEventType`` for it, which a consumer
may skip.

Money is the ``*_nanousd`` integers. Each ``*_usd`` float beside one is computed from it
when an event is written, and only checked (then dropped) when one is read, so the two
can never disagree.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    computed_field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.money import NanoUSD, nanousd_to_usd

__all__ = [
    "EVENT_ADAPTER",
    "BudgetSnapshot",
    "CompletionFailed",
    "CompletionRejected",
    "CompletionSucceeded",
    "EventBase",
    "RejectReason",
    "TerminalEvent",
    "UnknownEventType",
    "Usage",
    "encode_event",
    "parse_event",
    "rejection_retryable",
]

RejectReason = Literal[
    "budget_exceeded", "rate_limited", "no_budget", "invalid_job", "unknown_model", "expired"
]


class _Outbound(BaseModel):
    model_config = ConfigDict(
        extra="ignore", frozen=True, json_schema_serialization_defaults_required=True
    )


class _DerivedUSD(_Outbound):
    """Checks each given ``*_usd`` against its ``*_nanousd`` and drops it; subclasses
    define the ``*_usd`` as computed fields."""

    _usd_of: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _check_usd(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(name in data for name in cls._usd_of):
            return data
        data = dict(data)
        for usd_name, nanousd_name in cls._usd_of.items():
            if usd_name not in data:
                continue
            given, nanousd = data.pop(usd_name), data.get(nanousd_name)
            if isinstance(nanousd, bool) or not isinstance(nanousd, int | None):
                continue  # the nanousd field's own validation reports it
            if not _same_usd(given, None if nanousd is None else nanousd_to_usd(nanousd)):
                raise PydanticCustomError(
                    "derived_mismatch",
                    "{usd} must equal {nanousd} / 1e9",
                    {"usd": usd_name, "nanousd": nanousd_name},
                )
        return data


def _same_usd(given: Any, expected: float | None) -> bool:
    if expected is None or given is None:
        return given is expected
    if isinstance(given, bool) or not isinstance(given, int | float):
        return False
    # Another language may divide differently in the last bits; more is a real mismatch.
    return math.isclose(given, expected, rel_tol=1e-12, abs_tol=0.0)


class Usage(_Outbound):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class BudgetSnapshot(_DerivedUSD):
    """The user's budget right after this job was decided."""

    _usd_of = {
        "limit_usd": "limit_nanousd",
        "spent_usd": "spent_nanousd",
        "remaining_usd": "remaining_nanousd",
    }

    limit_nanousd: NanoUSD
    spent_nanousd: NanoUSD
    remaining_nanousd: int = Field(
        description="Below zero only by what a settle charged beyond its estimate."
    )
    period_end: AwareDatetime | None = Field(
        default=None, description="When the spend resets; null for a budget with no period."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def limit_usd(self) -> float:
        return nanousd_to_usd(self.limit_nanousd)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def spent_usd(self) -> float:
        return nanousd_to_usd(self.spent_nanousd)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def remaining_usd(self) -> float:
        return nanousd_to_usd(self.remaining_nanousd)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_event_id() -> str:
    return uuid.uuid4().hex


class EventBase(_DerivedUSD):
    """Fields every terminal event has; ``job_id``, ``user_id``, ``model`` and
    ``metadata`` are copied from the job so a consumer needs no state to route it."""

    schema_version: Literal[1] = 1
    type: str
    event_id: str = Field(default_factory=_new_event_id)
    job_id: str
    user_id: str
    model: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    worker_id: str
    occurred_at: AwareDatetime = Field(default_factory=_utc_now)


class CompletionSucceeded(EventBase):
    _usd_of = {"cost_usd": "cost_nanousd"}

    type: Literal["completion.succeeded"] = "completion.succeeded"
    response: dict[str, Any] = Field(description="The OpenAI-format chat completion.")
    usage: Usage
    cost_nanousd: NanoUSD = Field(description="What this job was charged.")
    cost_basis: Literal["usage", "reservation"] = Field(
        default="usage",
        description=(
            "What the charge was computed from: the provider's reported usage, or, when "
            "the response carried none, the job's reservation (its cost upper bound)."
        ),
    )
    budget: BudgetSnapshot
    attempts: int = Field(ge=1, description="Provider calls made, retries included.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_usd(self) -> float:
        return nanousd_to_usd(self.cost_nanousd)


def rejection_retryable(reason: object, retry_after_s: object) -> bool:
    """Whether a rejection lifts by itself: a budget or rate limit that resets (its
    retry time is known); never a job larger than the limit itself, nor any other
    reason."""
    return reason in ("budget_exceeded", "rate_limited") and retry_after_s is not None


class CompletionRejected(EventBase):
    """The job was not run, and nothing was charged."""

    _usd_of = {"estimated_cost_usd": "estimated_cost_nanousd"}

    type: Literal["completion.rejected"] = "completion.rejected"
    reason: RejectReason
    detail: str = Field(description="Why, for people; it never holds prompt text.")
    retry_after_s: float | None = Field(
        default=None, ge=0, description="When trying again may succeed, if known."
    )
    estimated_cost_nanousd: NanoUSD | None = None
    budget: BudgetSnapshot | None = None
    scope: str | None = Field(
        default=None,
        max_length=300,
        description=(
            "For budget_exceeded and rate_limited: the scope whose limit refused "
            "(user:ID, team:ID, org:ID, or model:USER/MODEL for a user's limit on one "
            "model); budget is that scope's."
        ),
    )
    limit: Literal["usd", "rpm", "tpm"] | None = Field(
        default=None, description="For budget_exceeded and rate_limited: which limit refused."
    )
    retryable: bool = Field(
        description=(
            "Whether sending the same job again after retry_after_s, unchanged, may "
            "succeed without an operator's help: true for budget_exceeded and "
            "rate_limited when the limit resets (retry_after_s is set); false otherwise "
            "(a job larger than the whole limit, a lifetime budget spent, a closed run, "
            "no budget, a bad job). Events written before this field existed get it "
            "from these rules."
        ),
    )
    remaining_nanousd: NanoUSD | None = Field(
        default=None,
        description="For budget_exceeded: what the refusing scope could still take.",
    )
    resets_at: AwareDatetime | None = Field(
        default=None,
        description="When the refusing limit lifts (occurred_at + retry_after_s), if it does.",
    )

    @model_validator(mode="before")
    @classmethod
    def _retryable_by_rule(cls, data: Any) -> Any:
        if isinstance(data, dict) and "retryable" not in data:
            reason = data.get("reason")
            data = {**data, "retryable": rejection_retryable(reason, data.get("retry_after_s"))}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def estimated_cost_usd(self) -> float | None:
        if self.estimated_cost_nanousd is None:
            return None
        return nanousd_to_usd(self.estimated_cost_nanousd)


class CompletionFailed(EventBase):
    """The job was started but no answer came; ``retryable`` says whether sending the
    job again (with a new ``job_id``) may help."""

    _usd_of = {"cost_usd": "cost_nanousd"}

    type: Literal["completion.failed"] = "completion.failed"
    error_type: str = Field(description="A stable short name for the kind of failure.")
    error: str = Field(description="A message with no secrets and no prompt text.")
    retryable: bool
    attempts: int = Field(ge=0)
    cost_nanousd: NanoUSD = Field(default=0, description="What was charged; 0 when nothing was.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_usd(self) -> float:
        return nanousd_to_usd(self.cost_nanousd)


TerminalEvent = Annotated[
    CompletionSucceeded | CompletionRejected | CompletionFailed, Field(discriminator="type")
]

EVENT_ADAPTER: Final[TypeAdapter[TerminalEvent]] = TypeAdapter(TerminalEvent)


class UnknownEventType(ValueError):
    """The event's ``type`` is newer than this code; a consumer may skip it."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type[:64]!r}")
        self.event_type = event_type


def parse_event(raw: bytes | str) -> TerminalEvent:
    """Read one event from ``llm.results``. Raises ``UnknownEventType`` for a type this
    code does not know, ``pydantic.ValidationError`` (a ``ValueError``) for a bad event."""
    try:
        return EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] != "union_tag_invalid":
            raise
        event_type = str(first.get("ctx", {}).get("tag", ""))
    raise UnknownEventType(event_type)


def encode_event(event: TerminalEvent) -> bytes:
    """Compact UTF-8 JSON, as written to ``llm.results``."""
    return EVENT_ADAPTER.dump_json(event)
