"""How ``budget-worker budget`` shows a scope: exact USD text of nano-USD, times in
RFC 3339 UTC, the JSON of ``--json`` and the tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from schemas.money import nanousd_to_decimal
from worker import ledger
from worker.timestamps import rfc3339


def format_usd(nanousd: int) -> str:
    """Nano-USD as exact decimal USD text: 200000 -> ``$0.0002``."""
    usd = nanousd_to_decimal(nanousd).normalize()
    return f"${usd:f}"


def format_limit(nanousd: int | None) -> str:
    """A USD limit, or ``no USD limit`` for a scope that caps rates or credits only."""
    return "no USD limit" if nanousd is None else format_usd(nanousd)


def state_json(state: ledger.BudgetState) -> dict[str, Any]:
    """``budget show --json``: money as integers of nano-USD, times in RFC 3339."""
    snapshot, budget = state.snapshot, state.budget
    return {
        "scope": str(state.scope),
        "user_id": state.user_id,
        "limit_nanousd": budget.limit_nanousd,
        "spent_nanousd": snapshot.spent_nanousd,
        "reserved_nanousd": snapshot.reserved_nanousd,
        "remaining_nanousd": snapshot.remaining_nanousd,
        "period": budget.period,
        "window_s": budget.window_s,
        "period_end": rfc3339(snapshot.period_end_ms),
        "model_spend_nanousd": dict(sorted(state.model_spend_nanousd.items())),
        "rpm": budget.rpm,
        "tpm": budget.tpm,
        "credits_nanousd": state.credits_nanousd,
        "drawn_nanousd": state.drawn_nanousd,
        "rollover_cap_nanousd": budget.rollover_cap_nanousd,
        "carried_nanousd": state.carried_nanousd,
        "team": state.team,
        "org": state.org,
    }


def period_words(budget: ledger.Budget) -> str:
    return f"per {budget.window_s} s window" if budget.period == "rolling" else budget.period


def period_text(budget: ledger.Budget) -> str:
    if budget.period == "rolling":
        return f"rolling {budget.window_s} s"
    return budget.period


def rates_text(budget: ledger.Budget) -> str:
    rates = [f"{budget.rpm} rpm"] if budget.rpm is not None else []
    if budget.tpm is not None:
        rates.append(f"{budget.tpm} tpm")
    return f", {', '.join(rates)}" if rates else ""


def state_table(state: ledger.BudgetState) -> Table:
    snapshot, budget = state.snapshot, state.budget
    name = state.user_id if state.scope.kind == "user" else str(state.scope)
    table = Table(title=Text(f"budget of {name}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("limit", format_limit(budget.limit_nanousd)),
        ("carried in", _carried(state)),
        ("spent", format_usd(snapshot.spent_nanousd)),
        ("reserved", format_usd(snapshot.reserved_nanousd)),
        ("remaining", format_usd(snapshot.remaining_nanousd)),
        ("period", period_text(budget)),
        ("period end", rfc3339(snapshot.period_end_ms) or "never"),
        ("rpm", str(budget.rpm) if budget.rpm is not None else "-"),
        ("tpm", str(budget.tpm) if budget.tpm is not None else "-"),
        ("credits", format_usd(state.credits_nanousd)),
        ("drawn from credits", format_usd(state.drawn_nanousd)),
        ("team", state.team or "-"),
        ("org", state.org or "-"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    for model, spent in sorted(state.model_spend_nanousd.items()):
        table.add_row(Text(f"spent on {model}"), format_usd(spent))
    return table


def _carried(state: ledger.BudgetState) -> str:
    """Rollover: what this period carried in, beside the cap on it."""
    cap = state.budget.rollover_cap_nanousd
    if cap is None:
        return "- (no rollover)"
    return f"{format_usd(state.carried_nanousd)} (at most {format_usd(cap)})"


def history_json(scope: ledger.Scope, entries: list[ledger.Entry]) -> dict[str, Any]:
    """``budget history --json``: every entry, and the balance (their sum)."""
    rows = [
        {
            "id": e.id,
            "kind": e.kind,
            "amount_nanousd": e.amount_nanousd,
            "grant": e.grant,
            "at": rfc3339(e.at_ms),
            "note": e.note,
        }
        for e in entries
    ]
    balance = sum(entry.amount_nanousd for entry in entries)
    return {"scope": str(scope), "entries": rows, "balance_nanousd": balance}


def history_table(scope: ledger.Scope, entries: list[ledger.Entry]) -> Table:
    table = Table("at", "kind", "amount", "grant", "id", "note", title=Text(f"credits of {scope}"))
    for e in entries:
        sign = "-" if e.amount_nanousd < 0 else "+"
        table.add_row(
            rfc3339(e.at_ms) or "",
            e.kind,
            f"{sign}{format_usd(abs(e.amount_nanousd))}",
            Text(e.grant),
            Text(e.id),
            Text(e.note),
        )
    return table


def run_json(state: ledger.RunState) -> dict[str, Any]:
    """A run as ``--json`` prints it (and the admin API answers it)."""
    return {
        "run_id": state.run_id,
        "scope": state.label,
        "state": state.state,
        "cap_nanousd": state.cap_nanousd,
        "spent_nanousd": state.spent_nanousd,
        "reserved_nanousd": state.reserved_nanousd,
        "hold_nanousd": state.hold_nanousd,
        "expires_at": rfc3339(state.expires_ms),
        "live_jobs": state.live_jobs,
    }
