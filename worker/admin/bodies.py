"""What admin requests carry and what they are answered with.

Inbound models reject what the ledger would refuse, before it is reached, and name the
field: a rolling budget without ``window_s`` is an error of ``window_s``, not of the
body. Money is an integer of nano-USD, as everywhere in the contract; times of grants
are Unix milliseconds, answered beside RFC 3339 text.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

from schemas.jobs import UserId
from worker import ledger
from worker.ledger.types import MAX_THRESHOLDS, MAX_TIME_MS, MAX_WINDOW_S
from worker.timestamps import rfc3339

KINDS: dict[str, ledger.types.ScopeKind] = {"users": "user", "teams": "team", "orgs": "org"}
"""A scope kind as it is spelled in URLs, and as the ledger spells it."""
PLURAL = {kind: plural for plural, kind in KINDS.items()}

MAX_NOTE_CHARS = 500

Amount = Annotated[int, Field(ge=0, le=ledger.MAX_AMOUNT_NANOUSD, strict=True)]
Rate = Annotated[int, Field(ge=1, le=ledger.MAX_RATE, strict=True)]
EntryId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
Name = UserId
"""A user's, team's or organisation's id: what a job may carry as ``user_id`` (1-256
characters of printable text), so that every scope the API creates can be reached."""
NAME = TypeAdapter(Name)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetBody(_Body):
    """A scope's limits, whole: what is not given is no limit (``PUT`` replaces)."""

    limit_nanousd: Amount | None = None
    period: ledger.Period = "daily"
    window_s: Annotated[int, Field(ge=1, le=MAX_WINDOW_S, strict=True)] | None = Field(
        default=None, validate_default=True
    )
    rpm: Rate | None = None
    tpm: Rate | None = None
    rollover_cap_nanousd: (
        Annotated[int, Field(ge=1, le=ledger.MAX_AMOUNT_NANOUSD, strict=True)] | None
    ) = None

    thresholds: list[Annotated[int, Field(ge=1, le=100, strict=True)]] | None = Field(
        default=None, max_length=MAX_THRESHOLDS
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds_ascend(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and value != sorted(set(value)):
            raise ValueError("must be distinct and ascending")
        return value

    @field_validator("rollover_cap_nanousd")
    @classmethod
    def _rollover_needs_a_period(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and (
            info.data.get("limit_nanousd") is None or info.data.get("period") == "none"
        ):
            raise ValueError("needs a limit_nanousd and a period other than none")
        return value

    @field_validator("window_s")
    @classmethod
    def _window_goes_with_rolling(cls, value: int | None, info: ValidationInfo) -> int | None:
        period = info.data.get("period")  # validated first: it is declared before
        if period == "rolling" and value is None:
            raise ValueError("is required with period rolling")
        if period is not None and period != "rolling" and value is not None:
            raise ValueError(f"applies to period rolling only, not {period}")
        return value

    def budget(self) -> ledger.Budget:
        return ledger.Budget(
            limit_nanousd=self.limit_nanousd,
            period=self.period,
            window_s=self.window_s,
            rpm=self.rpm,
            tpm=self.tpm,
            rollover_cap_nanousd=self.rollover_cap_nanousd,
            thresholds=None if self.thresholds is None else tuple(self.thresholds),
        )


class TeamBody(_Body):
    """The organisation a new team belongs to (fixed once created)."""

    org: Name


class GrantBody(_Body):
    """Prepaid credit. ``id`` is the idempotency key: the same id twice is one grant."""

    id: EntryId
    amount_nanousd: Annotated[int, Field(ge=1, le=ledger.MAX_AMOUNT_NANOUSD, strict=True)]
    priority: Annotated[int, Field(ge=-(10**6), le=10**6, strict=True)] = 0
    effective_ms: Annotated[int, Field(ge=0, le=MAX_TIME_MS, strict=True)] = 0
    expires_ms: Annotated[int, Field(ge=0, le=MAX_TIME_MS, strict=True)] | None = None

    def grant(self) -> ledger.Grant:
        return ledger.Grant(
            id=self.id,
            amount_nanousd=self.amount_nanousd,
            priority=self.priority,
            effective_ms=self.effective_ms,
            expires_ms=self.expires_ms,
        )


class AdjustmentBody(_Body):
    """A change of credits by hand, once per ``id``; negative takes credit away."""

    id: EntryId
    amount_nanousd: Annotated[
        int, Field(ge=-ledger.MAX_AMOUNT_NANOUSD, le=ledger.MAX_AMOUNT_NANOUSD, strict=True)
    ]
    note: Annotated[str, Field(max_length=MAX_NOTE_CHARS)] = ""

    @field_validator("amount_nanousd")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be 0")
        return value


# --- answers ----------------------------------------------------------------------------


def scope_json(scope: ledger.Scope) -> dict[str, str]:
    return {"kind": PLURAL[scope.kind], "name": scope.id}


def budget_json(budget: ledger.Budget) -> dict[str, Any]:
    return {
        "limit_nanousd": budget.limit_nanousd,
        "period": budget.period,
        "window_s": budget.window_s,
        "rpm": budget.rpm,
        "tpm": budget.tpm,
        "rollover_cap_nanousd": budget.rollover_cap_nanousd,
        "thresholds": None if budget.thresholds is None else list(budget.thresholds),
    }


def state_json(state: ledger.BudgetState) -> dict[str, Any]:
    snapshot = state.snapshot
    return {
        "scope": scope_json(state.scope),
        "budget": budget_json(state.budget),
        "limit_nanousd": state.budget.limit_nanousd,  # None: no USD cap (as budget show)
        "spent_nanousd": snapshot.spent_nanousd,
        "reserved_nanousd": snapshot.reserved_nanousd,
        "remaining_nanousd": snapshot.remaining_nanousd,
        "drawn_nanousd": state.drawn_nanousd,
        "credits_nanousd": state.credits_nanousd,
        "carried_nanousd": state.carried_nanousd,
        "period_id": state.period_id,
        "period_end": rfc3339(snapshot.period_end_ms),
        "model_spend_nanousd": dict(sorted(state.model_spend_nanousd.items())),
        "team": state.team,
        "org": state.org,
    }


def grant_json(grant: ledger.Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "amount_nanousd": grant.amount_nanousd,
        "remaining_nanousd": grant.remaining_nanousd,
        "priority": grant.priority,
        "effective_ms": grant.effective_ms,
        "expires_ms": grant.expires_ms,
        "effective": rfc3339(grant.effective_ms),
        "expires": rfc3339(grant.expires_ms),
    }


def entry_json(entry: ledger.Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "amount_nanousd": entry.amount_nanousd,
        "grant": entry.grant,
        "at_ms": entry.at_ms,
        "at": rfc3339(entry.at_ms),
        "note": entry.note,
    }


class MembershipBody(_Body):
    """Where a user belongs: a team (its org follows), an org directly, or neither."""

    team: Name | None = None
    org: Name | None = Field(default=None, validate_default=True)

    @field_validator("org")
    @classmethod
    def _team_or_org(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("team") is not None:
            raise ValueError("give team or org, not both: a team's org is fixed")
        return value
