"""Benchmark 8: what an estimate costs. Every job's upper bound (``worker.estimate``)
is computed on the event loop before its reservation, so its time is added to every
job's and taken from every other job in flight: per call, for a 2 KB prompt."""

from __future__ import annotations

import timeit
from decimal import Decimal
from pathlib import Path

from bench.harness import Context, Report
from schemas.jobs import CompletionJob
from worker.dev.rig import PRICE_IN, PRICE_OUT
from worker.estimate import estimate
from worker.models import ModelEntry
from worker.prices import ModelPrice

NAME = "estimate"
GOAL_US = 250.0  # "well under a millisecond"; typically about 10 us
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "token_corpus" / "english.txt"


async def run(ctx: Context) -> Report:
    text = (CORPUS.read_text(encoding="utf-8") * 2)[:2048]
    job = CompletionJob.model_validate(
        {
            "schema_version": 1,
            "job_id": "bench-estimate",
            "user_id": "u",
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": text},
            ],
        }
    )
    entry = ModelEntry(
        name="m",
        litellm_params={"model": "openai/gpt-4o-mini"},
        price=ModelPrice(Decimal(PRICE_IN), Decimal(PRICE_OUT)),
        max_output_tokens=None,
        tokenizer_family="openai",
    )
    runs = ctx.pick(200, 2000, 20_000)
    estimate(job, entry, 1024)  # the tokenizer's first load, outside the timing
    best_s = min(timeit.repeat(lambda: estimate(job, entry, 1024), number=runs, repeat=3))
    per_call_us = best_s / runs * 1e6
    report = Report(
        name=NAME,
        title="8. Estimate cost per job (the upper bound computed before each reservation)",
        goal=f"under {GOAL_US:.0f} us per estimate of a 2 KB prompt",
        headers=["prompt", "calls (best of 3 runs)", "us per estimate"],
        rows=[["2 KB English, system + user", str(runs), f"{per_call_us:.1f}"]],
    )
    met = per_call_us < GOAL_US
    report.verdict = f"{'met' if met else 'NOT met'}: {per_call_us:.1f} us per estimate"
    return report
