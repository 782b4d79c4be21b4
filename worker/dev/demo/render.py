"""The demo's results and progress drawn with rich."""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from schemas.money import nanousd_to_decimal
from worker.dev.demo.results import DemoProgress, DemoResult, TeamResult


def usd(nanousd: int) -> str:
    """Exact USD from nano-USD, nine decimals: ``$0.000156600``."""
    sign = "-" if nanousd < 0 else ""
    return f"{sign}${nanousd_to_decimal(abs(nanousd)):.9f}"


def render_progress(progress: DemoProgress) -> RenderableType:
    lines: list[RenderableType] = [Text(step, style="dim") for step in progress.steps]
    elapsed = time.monotonic() - progress.started
    lines.append(Text(f"{elapsed:5.1f} s  {progress.phase} ...", style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right")
    grid.add_column()
    grid.add_row(
        "budget-worker",
        f"jobs sent {progress.sent} (at most {progress.planned}), answered {progress.answered}",
    )
    if progress.outcomes:
        grid.add_row("", _counts(progress.outcomes))
    if progress.compare_checks:
        grid.add_row(
            "check-then-spend",
            f"checks {progress.compare_checks}, " + _counts(progress.compare_outcomes),
        )
    lines.append(grid)
    return Group(*lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


def render_result(result: DemoResult, width: int = 150) -> RenderableType:
    """The per-user tables (budget-worker, and beside it check-then-spend; one above
    the other when ``width`` is too narrow), the totals and the verdict."""
    options = result.options
    budget = result.budget_nanousd
    ours = _side_table(
        "budget-worker",
        [(r.label, r.succeeded, r.refused, r.spent_nanousd) for r in result.users],
        budget,
    )
    theirs = _side_table(
        "check-then-spend (LiteLLM BudgetManager's loop)",
        [(r.label, r.succeeded, r.refused, r.spent_nanousd) for r in result.check_then_spend],
        budget,
    )
    heading = Text(
        f"{options.users} new users, ${options.budget_usd} daily budget each, {options.model} "
        f"via {result.provider}; {options.concurrency} concurrent callers per user, at most "
        f"{options.calls_per_user} calls per user, max_tokens {options.max_tokens}",
        style="bold",
    )
    tables: RenderableType = Group(ours, theirs)
    if width >= _SIDE_BY_SIDE_WIDTH:
        tables = grid = Table.grid(padding=(0, 2))
        grid.add_row(ours, theirs)
    users = options.users
    verdict = Text()
    verdict.append(f"{result.ours_over} of {users} users over budget", style="bold green")
    verdict.append(" with budget-worker vs ")
    verdict.append(
        f"{result.theirs_over} of {users} with check-then-spend",
        style="bold red" if result.theirs_over else "bold",
    )
    over = sum(max(0, row.spent_nanousd - budget) for row in result.check_then_spend)
    if over:
        verdict.append(f" (overspent {usd(over)} in total)")
    parts: list[RenderableType] = [heading, tables, verdict]
    example = next((row for row in result.check_then_spend if row.spent_nanousd > budget), None)
    if example is not None:
        parts.append(
            Text(
                f"BudgetManager's own float total for {example.label}: "
                f"{example.reported_usd!r} against total_budget {float(options.budget_usd)!r}.",
                style="dim",
            )
        )
    mismatches = result.ledger_mismatches
    if mismatches:
        parts.append(
            Text(
                f"The events and the ledger DISAGREE for {', '.join(mismatches)}.",
                style="bold red",
            )
        )
    if result.team is not None:
        parts += _team_parts(result.team, budget)
    agreement = "" if mismatches else " equals the ledger's for every user"
    parts.append(
        Text(
            "Spend is exact (integer nano-USD); budget-worker's spend (the sum of each user's "
            f"events){agreement}. {result.events} events read, {result.duplicates} "
            f"duplicates dropped. Setup {result.setup_s:.1f} s, budget-worker "
            f"{result.ours_s:.1f} s, check-then-spend {result.compare_s:.1f} s.",
            style="dim",
        )
    )
    return Group(*parts)


_SIDE_BY_SIDE_WIDTH = 124


def _team_parts(team: TeamResult, budget: int) -> list[RenderableType]:
    members = _side_table(
        f"budget-worker: team {team.team}, budget {usd(team.budget_nanousd)} a day",
        [(r.label, r.succeeded, r.refused, r.spent_nanousd) for r in team.members],
        budget,
    )
    by_team = sum(row.refused_by[f"team:{team.team}"] for row in team.members)
    line = Text()
    line.append(
        f"The team spent {usd(team.spent_nanousd)} of its {usd(team.budget_nanousd)}",
        style="bold green" if team.spent_nanousd <= team.budget_nanousd else "bold red",
    )
    room = "while each member had room of their own" if team.held else "(see the table)"
    line.append(
        f"; {by_team} jobs were refused by team:{team.team} {room}: the team's budget is "
        "checked in the same Lua step as each member's."
    )
    return [members, line]


def _side_table(title: str, rows: list[tuple[str, int, int, int]], budget: int) -> Table:
    table = Table(title=title, show_footer=True)
    over = sum(1 for *_, spent in rows if spent > budget)
    table.add_column("user", footer="total")
    table.add_column("ok", justify="right", footer=str(sum(row[1] for row in rows)))
    table.add_column("refused", justify="right", footer=str(sum(row[2] for row in rows)))
    table.add_column("spend", justify="right", footer=usd(sum(row[3] for row in rows)))
    table.add_column("outcome", no_wrap=True, footer=f"{over} over budget")
    for label, succeeded, refused, spent in rows:
        table.add_row(label, str(succeeded), str(refused), usd(spent), _outcome(spent, budget))
    return table


def _outcome(spent_nanousd: int, budget_nanousd: int) -> Text:
    if spent_nanousd > budget_nanousd:
        return Text(f"OVER +{usd(spent_nanousd - budget_nanousd)}", style="bold red")
    used = 100 * spent_nanousd // budget_nanousd if budget_nanousd else 100
    return Text(f"within, {used}% used", style="green")
