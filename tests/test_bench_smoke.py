"""A tiny run of every benchmark, so that they keep working as the worker changes.

Nothing here checks speed: each benchmark runs at its ``smoke`` size (seconds) and must
produce its table and a verdict.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS
from bench.harness import Context, Infra, Report, write_section
from worker.dev.servers import EmbeddedKafka, EmbeddedRedis

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bench_context(
    kafka: EmbeddedKafka, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Context]:
    if not redis_server.server.running:
        redis_server.start()
    infra = Infra(tmp_path_factory.mktemp("bench"), kafka=kafka, redis=redis_server)
    yield Context(infra, "smoke")


# Every benchmark but recovery, which SIGKILLs worker processes and waits out their
# 15 s lease by design: the kill test in test_pipeline.py covers that path.
SMOKED = [name for name in BENCHMARKS if name != "recovery"]


@pytest.mark.parametrize("name", SMOKED)
async def test_benchmark_runs_and_reports(
    name: str, bench_context: Context, tmp_path: Path
) -> None:
    module = importlib.import_module(f"bench.{name}")
    report: Report = await module.run(bench_context)
    assert report.name == name
    assert report.rows and all(len(row) == len(report.headers) for row in report.rows)
    assert report.verdict
    report.command = f"python -m bench --only {name}"
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("intro kept\n")
    write_section(path, report)
    write_section(path, report)  # a second write replaces the section
    text = path.read_text()
    assert text.startswith("intro kept\n")
    assert text.count(f"<!-- bench:{name}:begin -->") == 1
