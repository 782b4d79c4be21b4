"""Budget events on ``llm.budget-events``: what happened to a budget, not to one job.

``budget.threshold_crossed`` says that a scope's spend in one period reached a
threshold (a percent of its USD limit). The ledger decides each (scope, period,
threshold) once, but the event may be delivered more than once (a worker that died
after publishing and before forgetting it, two workers publishing one leftover): every
copy carries the same ``event_id``, derived from the scope, the period and the
threshold, so a consumer keeps the first of each id. Like terminal events, budget
events ignore fields they do not know when parsed.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import AwareDatetime, Field, TypeAdapter, computed_field

from schemas.events import _DerivedUSD
from schemas.money import NanoUSD, nanousd_to_usd

__all__ = [
    "BUDGET_EVENT_ADAPTER",
    "BudgetThresholdCrossed",
    "encode_budget_event",
    "parse_budget_event",
]


class BudgetThresholdCrossed(_DerivedUSD):
    """A scope's spend in a period reached ``threshold_pct`` percent of its USD limit."""

    _usd_of = {
        "spent_usd": "spent_nanousd",
        "reserved_usd": "reserved_nanousd",
        "cap_usd": "cap_nanousd",
    }

    schema_version: Literal[1] = 1
    type: Literal["budget.threshold_crossed"] = "budget.threshold_crossed"
    event_id: str = Field(
        pattern=r"^[0-9a-f]{32}$",
        description=(
            "The same for every copy of one crossing (a hash of scope, period_id and "
            "threshold_pct): de-duplicate on it."
        ),
    )
    scope: str = Field(
        description=(
            "Whose budget: user:ID, team:ID, org:ID or model:USER/MODEL (a user's limit on "
            "one model)."
        )
    )
    limit: Literal["usd"] = Field(default="usd", description="Which limit: the USD limit.")
    period_id: str = Field(
        description="The period: 2025-01-31, 2025-W05, 2025-01, 2025, r<start ms>+<s>, all."
    )
    period_end: AwareDatetime | None = Field(
        default=None, description="When the period's spend resets; null for a lifetime budget."
    )
    threshold_pct: int = Field(ge=1, le=100, description="The threshold, percent of cap.")
    spent_nanousd: NanoUSD = Field(description="The period's spend right after the charge.")
    reserved_nanousd: NanoUSD = Field(description="Held by calls in flight at that moment.")
    cap_nanousd: NanoUSD = Field(description="The scope's USD limit for the period.")
    occurred_at: AwareDatetime = Field(description="When the charge landed (Redis's clock).")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def spent_usd(self) -> float:
        return nanousd_to_usd(self.spent_nanousd)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reserved_usd(self) -> float:
        return nanousd_to_usd(self.reserved_nanousd)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cap_usd(self) -> float:
        return nanousd_to_usd(self.cap_nanousd)


BUDGET_EVENT_ADAPTER: Final[TypeAdapter[BudgetThresholdCrossed]] = TypeAdapter(
    BudgetThresholdCrossed
)


def parse_budget_event(raw: bytes | str) -> BudgetThresholdCrossed:
    """Read one event from the budget events topic; ``pydantic.ValidationError`` (a
    ``ValueError``) for a bad one or a type this code does not know."""
    return BudgetThresholdCrossed.model_validate_json(raw)


def encode_budget_event(event: BudgetThresholdCrossed) -> bytes:
    """Compact UTF-8 JSON, as written to the budget events topic."""
    return event.model_dump_json().encode()
