"""The rig that runs budget-worker on this machine: topics, a model list, worker
processes or in-process workers, jobs in and events out.

One rig serves the project's tests, its benchmarks and the demo alike (as structlog's
``testing`` module serves structlog's own tests and its users), so each of them starts
a worker the same way. The servers themselves (broker, Redis) are in
``worker.dev.servers``, the model in ``worker.dev.fake_provider``.

- :class:`WorkerProcess` / :func:`workers`: ``budget-worker run`` as child processes,
  for what is about processes (a SIGKILL, several processes in one group, exit codes).
- :class:`InProcessWorker` / :func:`in_process_workers`: the same ``serve()`` in an
  asyncio task of the caller's loop: no interpreter start, no litellm import, so a
  worker is ready in a fraction of a second.
- :func:`job`, :func:`produce`, :func:`read_all`, :func:`wait_for_events`: records in
  and events out, from offset 0.

Nothing here is imported by ``budget-worker run``.

The package's modules: ``setup`` (topics, the model list, a worker's environment),
``runners`` (the two kinds of worker, and waiting on their metrics) and ``records``
(jobs in, events out).
"""

from __future__ import annotations

from worker.dev.rig.records import (
    job,
    produce,
    read_all,
    wait_for_events,
)
from worker.dev.rig.runners import (
    ChildProcess,
    InProcessWorker,
    WorkerProcess,
    captured_logs,
    in_process_workers,
    scrape,
    stop_all,
    until_assigned,
    until_metric,
    workers,
)
from worker.dev.rig.setup import (
    FAKE_API_KEY,
    FAST,
    GPT_4O_MINI,
    MODEL,
    PRICE_IN,
    PRICE_OUT,
    READY_TIMEOUT_S,
    ModelSpec,
    Topics,
    bootstrap_of,
    models_yaml,
    settings_from,
    worker_env,
    write_models_file,
)

__all__ = [
    "FAKE_API_KEY",
    "FAST",
    "GPT_4O_MINI",
    "MODEL",
    "PRICE_IN",
    "PRICE_OUT",
    "READY_TIMEOUT_S",
    "ChildProcess",
    "InProcessWorker",
    "ModelSpec",
    "Topics",
    "WorkerProcess",
    "bootstrap_of",
    "captured_logs",
    "in_process_workers",
    "job",
    "models_yaml",
    "produce",
    "read_all",
    "scrape",
    "settings_from",
    "stop_all",
    "until_assigned",
    "until_metric",
    "wait_for_events",
    "worker_env",
    "workers",
    "write_models_file",
]
