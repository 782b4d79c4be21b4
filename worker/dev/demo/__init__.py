"""``budget-worker demo``: the whole system on this machine, and what it prevents.

The scenario is LiteLLM's BudgetManager example at scale: new users, each with a daily
budget of $0.0002, say "Hey, how's it going?" again and again, several calls at once,
until they are refused. It runs twice on the same workload against the same model:

1. through budget-worker: an embedded Kafka-protocol broker (Tansu), an embedded
   Redis-compatible server, ``--workers`` worker processes (``budget-worker run``) and
   jobs submitted with :class:`worker.client.JobClient`, answered on the results topic;
2. through BudgetManager's check-then-spend loop (:class:`CheckThenSpend`): check
   ``get_current_cost <= get_total_budget``, call the model, then ``update_cost``.

Then a team: ``team_members`` more users, each with the same budget of their own, in a
team whose daily budget is half of what they hold together. Their jobs go through
budget-worker too: the team's budget holds (its jobs are refused naming ``team:...``)
while each member still has room of their own.

The model is the project's OpenAI-compatible fake, reached over HTTP, unless a real
provider is chosen (``OPENAI_API_KEY`` set): then both halves make real, paid calls.

:func:`run_demo` returns the numbers (:class:`DemoResult`); :func:`render_result` and
:func:`render_progress` draw them; :func:`run_live` runs it under a live view, for the
``budget-worker demo`` command. Every child process (broker, Redis, workers) runs in
its own process group and is killed, with its group, in a ``finally``: on success, on
error, on Ctrl-C and on SIGTERM.

The modules: ``results`` (options and numbers), ``baseline`` (check-then-spend),
``system`` (everything the run starts, workers through ``worker.dev.rig``), ``run`` (the
scenario) and ``render`` (the tables).
"""

from __future__ import annotations

from worker.dev.demo.baseline import CheckThenSpend, litellm_float_cost
from worker.dev.demo.render import render_progress, render_result, usd
from worker.dev.demo.results import (
    CheckThenSpendRow,
    DemoOptions,
    DemoProgress,
    DemoResult,
    DemoServers,
    ProviderKind,
    UserRow,
)
from worker.dev.demo.run import run_demo, run_live

__all__ = [
    "CheckThenSpend",
    "CheckThenSpendRow",
    "DemoOptions",
    "DemoProgress",
    "DemoResult",
    "DemoServers",
    "ProviderKind",
    "UserRow",
    "litellm_float_cost",
    "render_progress",
    "render_result",
    "run_demo",
    "run_live",
    "usd",
]
