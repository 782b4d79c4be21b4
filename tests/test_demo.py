"""The demo scenario, small, through the real broker, Redis and worker processes: its
numbers against the ledger, the check-then-spend half against LiteLLM's own
BudgetManager, and Ctrl-C / SIGTERM leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from worker.dev.demo import (
    CheckThenSpend,
    DemoOptions,
    DemoServers,
    litellm_float_cost,
    render_result,
    run_demo,
)
from worker.dev.servers import EmbeddedKafka
from worker.ledger import Ledger, Scope

SMALL = DemoOptions(
    users=3,
    concurrency=4,
    calls_per_user=10,  # 10 calls cost more than the budget: each user is refused at least once
    workers=1,
    latency_ms=20,
    jitter_ms=20,
    output_tokens=40,
    max_tokens=64,
)


@pytest.mark.timeout(90)
async def test_the_demo_numbers_are_the_ledgers_and_only_check_then_spend_overspends(
    kafka: EmbeddedKafka, redis_url: str
) -> None:
    result = await run_demo(SMALL, servers=DemoServers(kafka, redis_url))

    budget = SMALL.budget_nanousd
    assert budget == 200_000
    assert len(result.users) == len(result.check_then_spend) == 3
    ledger = Ledger.from_url(redis_url)
    try:
        for row in result.users:
            state = await ledger.state(row.user_id)
            assert state is not None
            assert row.spent_nanousd == state.snapshot.spent_nanousd == row.ledger_spent_nanousd
            assert state.snapshot.reserved_nanousd == 0
            assert state.snapshot.limit_nanousd == budget
            assert 0 < row.spent_nanousd <= budget
            assert row.succeeded >= 1 and row.refused >= 1
            assert row.lost == row.failed == 0
        team = result.team
        assert team is not None and team.held
        state = await ledger.state(Scope("team", team.team))
        assert state is not None and state.snapshot.limit_nanousd == 3 * budget // 2
        assert team.spent_nanousd == state.snapshot.spent_nanousd <= team.budget_nanousd
        assert team.spent_nanousd == sum(row.spent_nanousd for row in team.members)
        assert sum(row.refused_by[f"team:{team.team}"] for row in team.members) >= 1
        assert all(row.spent_nanousd < budget for row in team.members)
        assert all(row.lost == row.failed == 0 for row in team.members)
    finally:
        await ledger.close()
    assert result.ledger_mismatches == []
    assert result.ours_over == 0
    assert result.theirs_over >= 1
    assert any(row.spent_nanousd > budget for row in result.check_then_spend)
    assert result.events == sum(row.succeeded + row.refused for row in result.users)

    console = Console(record=True, width=160)
    console.print(render_result(result, console.width))
    text = console.export_text()
    assert f"0 of 3 users over budget with budget-worker vs {result.theirs_over} of 3" in text
    assert "equals the ledger's for every user" in text


def test_a_call_that_passed_the_check_is_charged_past_the_budget() -> None:
    manager = CheckThenSpend()
    manager.create_budget(0.0002, "u", created_at=0.0)
    for _ in range(8):
        assert manager.get_current_cost("u") <= manager.get_total_budget("u")
        manager.update_cost(
            "u", litellm_float_cost(Decimal("1.5e-7"), Decimal("6e-7"), 14, 40), "m"
        )
    assert manager.get_current_cost("u") > 0.0002
    assert not manager.get_current_cost("u") <= manager.get_total_budget("u")


def test_check_then_spend_keeps_budget_managers_books_to_the_last_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litellm

    from worker.pricebook import cost_map_price  # imports litellm offline

    monkeypatch.chdir(tmp_path)  # BudgetManager writes user_cost.json here
    price = cost_map_price("openai/gpt-4o-mini")
    assert price is not None
    theirs = litellm.BudgetManager(project_name="demo-test")
    ours = CheckThenSpend()
    theirs.create_budget(total_budget=0.0002, user="u", duration="daily")
    ours.create_budget(0.0002, "u", created_at=0.0)
    for prompt_tokens, completion_tokens in [(14, 40), (14, 33), (15, 64), (14, 1), (9, 17)] * 3:
        response = litellm.ModelResponse(
            model="gpt-4o-mini",
            usage=litellm.Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )
        theirs.update_cost(completion_obj=response, user="u")
        cost = litellm_float_cost(
            price.input_usd_per_token, price.output_usd_per_token, prompt_tokens, completion_tokens
        )
        ours.update_cost("u", cost, "gpt-4o-mini")
        assert ours.get_current_cost("u") == theirs.get_current_cost("u")
        assert ours.get_total_budget("u") == theirs.get_total_budget("u")


def _children_of(pid: int) -> dict[int, str]:
    """Live (not zombie) direct children of ``pid`` and their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _jobs_done(worker_pid: int) -> float:
    """Jobs a running worker has finished, from its /metrics (0 until it answers)."""
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
    port = next(e.split(b"=", 1)[1] for e in environ if e.startswith(b"BW_METRICS_PORT="))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port.decode()}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return 0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bw_jobs_total{")
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("sig", "code", "when"),
    [(signal.SIGINT, 130, "mid-scenario"), (signal.SIGTERM, 143, "while workers start")],
)
def test_an_interrupted_demo_leaves_no_process_behind(
    sig: signal.Signals, code: int, when: str, tmp_path: Path
) -> None:
    demo = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker.cli", "demo", "--users", "2", "--workers", "1"),
            *("--calls-per-user", "200", "--latency-ms", "300"),
        ],
        cwd=tmp_path,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: dict[int, str] = {}
    left: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 90
        worker = None
        while time.monotonic() < deadline and demo.poll() is None:
            seen.update(_children_of(demo.pid))
            worker = next((pid for pid, cmd in seen.items() if "worker.cli run" in cmd), None)
            if worker is not None and (when != "mid-scenario" or _jobs_done(worker) > 0):
                break
            time.sleep(0.2)
        assert worker is not None, seen
        assert when != "mid-scenario" or _jobs_done(worker) > 0
        assert any("tansu" in cmd for cmd in seen.values()), seen
        assert any("redis" in cmd or "valkey" in cmd for cmd in seen.values()), seen
        seen.update(_children_of(demo.pid))
        demo.send_signal(sig)
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        left = {pid: cmd for pid, cmd in seen.items() if _alive(pid)}
        for pid in left:  # only when the demo failed its promise: do not leak them
            os.killpg(pid, signal.SIGKILL)
    assert demo.returncode == code, output.decode(errors="replace")[-2000:]
    assert b"every server and worker was stopped" in output
    assert left == {}
