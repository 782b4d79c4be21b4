"""Budget usability: how much of a tight budget a user can actually spend before the
first refusal, with the ``reject`` and ``clamp`` admission policies and a default
``max_tokens`` of 256, 1,024 and 4,096, through the real ledger.

Each user sends jobs without ``max_tokens`` (so the default applies) one after another
until the first refusal, the way the worker admits them: estimate (``worker.estimate``),
reserve; on a ``usd`` refusal with money left, ``clamp`` asks ``worker.admission.admit``
for the largest ``max_tokens`` that fits and reserves again; ``reject`` refuses. The
simulated reply has a lognormal length around 150 tokens (sigma 0.6), cut at the
call's ``max_tokens``; the actual cost is settled. "Cut short" counts replies that
``max_tokens`` truncated.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from decimal import Decimal
from typing import Any

from bench.harness import PROMPT, Context, Report, median, percentile
from schemas.jobs import CompletionJob
from worker import admission
from worker.dev.fake_provider import count_prompt_tokens
from worker.dev.rig import MODEL, PRICE_IN, PRICE_OUT
from worker.estimate import Estimate, estimate
from worker.ledger import Budget, Ledger, Refused, Reserved, ReserveResult
from worker.models import ModelEntry
from worker.prices import ModelPrice, TokenUsage

NAME = "usability"
GOAL = 0.95
DEFAULTS = (256, 1024, 4096)
POLICIES = ("reject", "clamp")
CLAMP_MIN_TOKENS = 16  # BW_CLAMP_MIN_TOKENS' default
PRICE = ModelPrice(Decimal(PRICE_IN), Decimal(PRICE_OUT))
ENTRY = ModelEntry(
    name=MODEL,
    litellm_params={"model": f"openai/{MODEL}"},
    price=PRICE,
    max_output_tokens=16384,
    tokenizer_family="openai",
)
MESSAGES = [{"role": "user", "content": PROMPT}]
PROMPT_TOKENS = count_prompt_tokens(MESSAGES, MODEL, "exact")
TYPICAL_NANOUSD = PRICE.cost_nanousd(TokenUsage(PROMPT_TOKENS, 150))
BUDGETS = (10, 100)
"""Budgets, in typical calls (about 0.95 and 9.5 thousandths of a dollar)."""


async def _reserve(ledger: Ledger, user: str, job_id: str, wanted: Estimate) -> ReserveResult:
    return await ledger.reserve(
        user,
        job_id,
        cost_nanousd=wanted.cost_nanousd,
        tokens=wanted.tokens,
        lease_ms=60_000,
        holder="bench",
    )


async def _one_user(
    ledger: Ledger, user: str, policy: str, default_max_tokens: int, budget: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    await ledger.set_budget(user, Budget(limit_nanousd=budget, period="none"))
    calls = cut = 0
    for n in range(100_000):
        job = CompletionJob.model_validate(
            {
                "schema_version": 1,
                "job_id": f"{user}-{n}",
                "user_id": user,
                "model": MODEL,
                "messages": MESSAGES,
            }
        )
        wanted = estimate(job, ENTRY, default_max_tokens)
        result = await _reserve(ledger, user, job.job_id, wanted)
        if isinstance(result, Refused) and policy == "clamp" and result.remaining > 0:
            clamped = admission.admit(wanted, result.remaining, PRICE, "clamp", CLAMP_MIN_TOKENS)
            if clamped is not None:
                wanted = clamped
                result = await _reserve(ledger, user, job.job_id, wanted)
        if not isinstance(result, Reserved):
            break
        natural = max(1, round(rng.lognormvariate(math.log(150), 0.6)))
        out = min(natural, wanted.max_output_tokens)
        cut += out < natural
        calls += 1
        await ledger.settle(
            user,
            job.job_id,
            holder="bench",
            cost_nanousd=PRICE.cost_nanousd(TokenUsage(PROMPT_TOKENS, out)),
            tokens=PROMPT_TOKENS + out,
            model=MODEL,
            outcome=b"{}",
        )
    state = await ledger.state(user)
    assert state is not None
    return {"share": state.snapshot.spent_nanousd / budget, "calls": calls, "cut": cut}


async def run(ctx: Context) -> Report:
    users = ctx.pick(10, 50, 100)
    report = Report(
        name=NAME,
        title="4. Budget usability (share of a tight budget spent before the first refusal)",
        goal=f"median share >= {GOAL} with clamp",
        headers=[
            "budget (typical calls)",
            "policy",
            "default max_tokens",
            "share spent: median",
            "p10",
            "min",
            "calls before refusal (median)",
            "replies cut short",
        ],
    )
    ledger = Ledger.from_url(ctx.infra.redis_url)
    clamp_medians = []
    try:
        for calls_in_budget in BUDGETS:
            budget = TYPICAL_NANOUSD * calls_in_budget
            for policy in POLICIES:
                for default in DEFAULTS:
                    run_id = uuid.uuid4().hex[:8]
                    results = []
                    results += await asyncio.gather(  # users side by side
                        *(
                            _one_user(ledger, f"us-{run_id}-{u}", policy, default, budget, u)
                            for u in range(users)
                        )
                    )
                    shares = [r["share"] for r in results]
                    total_calls = sum(r["calls"] for r in results)
                    cut = sum(r["cut"] for r in results)
                    if policy == "clamp":
                        clamp_medians.append(median(shares))
                    report.rows.append(
                        [
                            str(calls_in_budget),
                            policy,
                            str(default),
                            f"{median(shares):.3f}",
                            f"{percentile(shares, 10):.3f}",
                            f"{min(shares):.3f}",
                            f"{median([r['calls'] for r in results]):.0f}",
                            f"{cut / total_calls:.1%}" if total_calls else "n/a",
                        ]
                    )
    finally:
        await ledger.close()
    worst = min(clamp_medians)
    report.verdict = (
        f"clamp: lowest median share {worst:.3f}: goal {'met' if worst >= GOAL else 'NOT met'}"
    )
    report.notes += [
        f"{users} users per row, each with its own budget; prompt {PROMPT_TOKENS} tokens; "
        f"gpt-4o-mini prices; a typical call (150 output tokens) costs {TYPICAL_NANOUSD} "
        f"nano-USD; BW_CLAMP_MIN_TOKENS={CLAMP_MIN_TOKENS}.",
        "With reject, a user is refused as soon as the remainder is below one full "
        "estimate (prompt bound + default max_tokens), so a larger default strands more "
        "of the budget; a default above the whole budget refuses the first job.",
    ]
    return report
