"""``python -m bench [--quick] [--only NAME ...] [--write BENCHMARKS.md]``: run the
benchmarks, print each one's figures and the command that reproduces it, and with
``--write`` replace their sections of the given file."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import sys
import time
from pathlib import Path

from bench.harness import Context, Infra, Report, machine_line, now_iso, write_section

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BENCHMARKS = [
    "pipeline",
    "admission",
    "overspend",
    "usability",
    "scaling",
    "latency",
    "recovery",
    "scopes",
    "estimate",
    "parking",
]


def command_for(name: str, size: str) -> str:
    flag = {"quick": " --quick", "smoke": " --smoke", "full": ""}[size]
    return f"python -m bench{flag} --only {name}"


async def run_all(names: list[str], size: str, write: Path | None) -> list[Report]:
    infra = Infra()
    infra.start()
    reports = []
    failed = True
    try:
        ctx = Context(infra, size)  # type: ignore[arg-type]
        for name in names:
            module = importlib.import_module(f"bench.{name}")
            infra.flush_redis()
            started = time.monotonic()
            report: Report = await module.run(ctx)
            report.seconds = time.monotonic() - started
            report.command = command_for(name, size)
            report.machine = machine_line()
            report.date = now_iso()
            print(report.text(), flush=True)
            print(flush=True)
            if write is not None:
                write_section(write, report)
            reports.append(report)
        failed = False
    finally:
        infra.stop()
        if failed:  # the servers' and workers' logs are the evidence
            print(f"logs kept in {infra.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(infra.workdir, ignore_errors=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repetitions (~3 min)")
    size.add_argument("--smoke", action="store_true", help="tiny runs that only prove it works")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--write", type=Path, help="write the figures into this Markdown file")
    args = parser.parse_args(argv)
    chosen = "smoke" if args.smoke else "quick" if args.quick else "full"
    names = [n for n in BENCHMARKS if args.only is None or n in args.only]
    started = time.monotonic()
    asyncio.run(run_all(names, chosen, args.write))
    print(f"all done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
