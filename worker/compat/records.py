"""What ``BudgetManager`` keeps per user, read from the ledger: the records of
``user_dict`` (read-only, since a change to them would change nothing in Redis), the
view itself, and the mapping of its user ids to the ledger's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

from schemas.money import nanousd_to_usd
from worker import ledger

if TYPE_CHECKING:
    from worker.compat.wrapper import BudgetManager

__all__ = ["DAYS", "DAY_S", "BudgetRecord", "Duration", "UserDict", "record_of"]

Duration = Literal["daily", "weekly", "monthly", "yearly"]

DAYS: Final[dict[str, int]] = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}
"""``BudgetManager``'s durations in days (litellm's ``DAYS_IN_A_WEEK``, ``..._MONTH``,
``..._YEAR``)."""
DAY_S: Final = 86_400

# The ledger refuses an empty user id; BudgetManager takes one like any other. "" is kept
# as "\0" and every id that starts with "\0" gets one more, so no two ids meet. Jobs
# cannot name either (their user ids have no control characters).
_EMPTY_USER: Final = "\x00"


def ledger_user(user: str) -> str:
    """The ledger's id of a ``BudgetManager`` user."""
    if user == "" or user.startswith(_EMPTY_USER):
        return _EMPTY_USER + user
    return user


def compat_user(name: str) -> str:
    """The ``BudgetManager`` user of a ledger id (the inverse of :func:`ledger_user`)."""
    return name[1:] if name.startswith(_EMPTY_USER) else name


READ_ONLY: Final = "user_dict is a read-only view of the ledger"
_BUDGET_ADVICE: Final = "to change a budget, call create_budget()"
_WINDOW_ADVICE: Final = (
    "windows start on the ledger's clock and roll over by themselves (reset_on_duration "
    "has nothing to do); to zero a user's spend now, call reset_cost(user)"
)
_SPEND_ADVICE: Final = "to charge a call, call update_cost(); to zero spend, call reset_cost(user)"
_ADVICE: Final = {
    "total_budget": _BUDGET_ADVICE,
    "duration": _BUDGET_ADVICE,
    "created_at": _WINDOW_ADVICE,
    "last_updated_at": _WINDOW_ADVICE,
    "current_cost": _SPEND_ADVICE,
    "model_cost": _SPEND_ADVICE,
}


def _refuse_change(key: object) -> NoReturn:
    advice = _ADVICE.get(key, _SPEND_ADVICE) if isinstance(key, str) else None
    if advice is None:
        advice = "call create_budget(), update_cost() or reset_cost(user) instead"
    raise TypeError(f"{READ_ONLY}: {key!r} cannot be changed here; {advice}")


class BudgetRecord(dict[str, Any]):
    """One user as ``BudgetManager`` keeps them in ``user_dict``, read from the ledger.

    Read-only: a change here would change nothing in the ledger, so it raises a
    ``TypeError`` naming the method to call instead. ``copy.copy``, ``copy.deepcopy``,
    ``dict(record)`` and ``json`` give plain dicts.
    """

    __slots__ = ("_field",)

    def __init__(self, data: Mapping[str, Any], field: str | None = None) -> None:
        super().__init__(data)
        self._field = field

    def _refuse(self, key: object = None) -> NoReturn:
        _refuse_change(self._field if self._field is not None else key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse(key)

    def __delitem__(self, key: str) -> None:
        self._refuse(key)

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        self._refuse(next(iter(other), None))

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._refuse(next(iter(dict(*args, **kwargs)), None))

    def pop(self, key: str, *default: Any) -> Any:
        self._refuse(key)

    def popitem(self) -> tuple[str, Any]:
        self._refuse()

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._refuse(key)

    def clear(self) -> None:
        self._refuse()

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (dict, (dict(self),))


def spent_usd(nanousd: int) -> float:
    """Spend as ``BudgetManager`` reports it: the int ``0`` while nothing is spent (its
    default), so ``f"${cost}"`` reads ``$0`` as it does there."""
    return 0 if nanousd == 0 else nanousd_to_usd(nanousd)


def _days(window_s: int) -> int | float:
    """A window in days, as ``BudgetManager`` records ``duration`` (an int of days)."""
    days, rest = divmod(window_s, DAY_S)
    return days if rest == 0 else window_s / DAY_S


def record_of(state: ledger.BudgetState) -> dict[str, Any]:
    """The user as ``BudgetManager`` keeps them: ``total_budget``, ``current_cost`` and
    ``model_cost`` (both of the current window), and for a budget with a duration
    ``duration`` (days), ``created_at`` and ``last_updated_at`` (seconds since the epoch,
    on the ledger's clock). ``last_updated_at`` is when the current window started (when
    ``BudgetManager`` last reset the spend); ``created_at`` is when the budget's windows
    began, which the ledger's state does not yet tell apart from the current window's
    start: the two are equal in the budget's first window, which is when
    ``create_budget`` reports it."""
    budget = state.budget
    record: dict[str, Any] = {
        "total_budget": nanousd_to_usd(budget.limit_nanousd or 0),
        "current_cost": spent_usd(state.snapshot.spent_nanousd),
        "model_cost": {m: nanousd_to_usd(n) for m, n in state.model_spend_nanousd.items()},
    }
    end_ms = state.snapshot.period_end_ms
    if budget.period == "rolling" and budget.window_s is not None and end_ms is not None:
        window_start_s = end_ms / 1000 - budget.window_s
        record["duration"] = _days(budget.window_s)
        record["created_at"] = window_start_s
        record["last_updated_at"] = window_start_s
    return record


def read_only(record: Mapping[str, Any]) -> BudgetRecord:
    """``record`` as a :class:`BudgetRecord`, its nested dicts (``model_cost``) too."""
    return BudgetRecord(
        {
            key: BudgetRecord(value, key) if isinstance(value, Mapping) else value
            for key, value in record.items()
        }
    )


class UserDict(Mapping[str, BudgetRecord]):
    """``BudgetManager.user_dict`` as a read-through view of the ledger: every lookup
    reads Redis, so it shows what every process sharing the ledger has spent. Records
    are :class:`BudgetRecord` (read-only); assigning or deleting a user raises a
    ``TypeError`` naming the method to call instead."""

    def __init__(self, manager: BudgetManager) -> None:
        self._manager = manager

    def __getitem__(self, user: str) -> BudgetRecord:
        return read_only(self._manager._loop.run(self._manager.manager.record(user)))

    def __iter__(self) -> Iterator[str]:
        return iter(self._manager.get_users())

    def __len__(self) -> int:
        return len(self._manager.get_users())

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self._manager.is_valid_user(user)

    def __setitem__(self, user: str, record: Any) -> None:
        raise TypeError(f"{READ_ONLY}: to create or change a budget, call create_budget()")

    def __delitem__(self, user: str) -> None:
        raise TypeError(f"{READ_ONLY}: budgets are deleted with `budget-worker budget delete USER`")

    def __repr__(self) -> str:
        return f"UserDict({dict(self)!r})"
