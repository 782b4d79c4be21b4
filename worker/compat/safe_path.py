"""The safe completion path of the BudgetManager-compatible API: a call's arguments
made into a job, priced from the model list or litellm's cost map, and run through the
worker's spend path (reserve an upper bound, call, settle), so a budget is never spent
past however many processes share it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from schemas.jobs import CompletionJob, JobParams
from worker import spend
from worker.compat.errors import BudgetExceeded
from worker.compat.records import ledger_user
from worker.compat.usage import Usage, outcome
from worker.errors import BudgetWorkerError, ConfigError
from worker.estimate import estimate
from worker.models import ModelEntry, ModelList, tokenizer_family
from worker.pricebook import cost_map_price
from worker.prices import TokenUsage
from worker.provider import Completion

__all__ = ["ChargedCompletion", "job_of", "model_entry", "run"]

# Arguments of ``completion`` that choose where and how litellm connects. They are the
# caller's (trusted code), unlike a job's, which may only set ``JobParams``.
_CONNECTION_ARGS: Final = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "headers",
    }
)
_PARAM_ARGS: Final = frozenset(JobParams.model_fields)
# The estimate reads a job's messages and params only; the ledger is told the user.
_ESTIMATE_USER: Final = "compat"


class ChargedCompletion(dict[str, Any]):
    """A completion the safe path returned: the OpenAI-format chat completion (a plain
    ``dict`` to read), already charged to ``user`` at ``cost_nanousd``. ``update_cost``
    of it records nothing more."""

    __slots__ = ("cost_nanousd", "job_id", "user")

    def __init__(
        self, response: Mapping[str, Any], *, user: str, job_id: str, cost_nanousd: int
    ) -> None:
        super().__init__(response)
        self.user = user
        self.job_id = job_id
        self.cost_nanousd = cost_nanousd


def _split_args(
    kwargs: dict[str, Any],
) -> tuple[int | None, dict[str, Any], dict[str, Any]]:
    """``completion``'s keyword arguments as ``max_tokens``, connection arguments and
    job params; ``TypeError`` for any other."""
    connection: dict[str, Any] = {}
    params: dict[str, Any] = {}
    max_tokens = kwargs.pop("max_tokens", None)
    if max_tokens is None:
        max_tokens = kwargs.pop("max_completion_tokens", None)
    for key, value in kwargs.items():
        if key in _CONNECTION_ARGS:
            connection[key] = value
        elif key in _PARAM_ARGS:
            params[key] = value
        else:
            raise TypeError(
                f"completion() got an unsupported argument {key!r}; the safe path takes "
                f"OpenAI parameters ({', '.join(sorted(_PARAM_ARGS))}, max_tokens) and "
                f"connection arguments ({', '.join(sorted(_CONNECTION_ARGS))})"
            )
    return max_tokens, connection, params


def job_of(
    models: ModelList | None, model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]
) -> tuple[ModelEntry, CompletionJob]:
    """A ``completion`` call as the model entry to call and a job of a fresh id;
    ``ValueError`` saying which field is wrong when it is not a valid job."""
    max_tokens, connection, params = _split_args(kwargs)
    try:
        job = CompletionJob.model_validate(
            {
                "schema_version": 1,
                "job_id": f"compat-{uuid.uuid4().hex}",
                "user_id": _ESTIMATE_USER,
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "params": params,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ValueError(f"invalid completion request: {problems}") from None
    return model_entry(models, model, connection), job


def model_entry(models: ModelList | None, model: str, connection: dict[str, Any]) -> ModelEntry:
    """The model list's entry for ``model``, else litellm's model of that name,
    priced from litellm's cost map."""
    entry = models.get(model) if models is not None else None
    if entry is not None:
        if not connection:
            return entry
        return ModelEntry(
            name=entry.name,
            litellm_params={**entry.litellm_params, **connection},
            price=entry.price,
            max_output_tokens=entry.max_output_tokens,
            tokenizer_family=entry.tokenizer_family,
        )
    price = cost_map_price(model)
    if price is None:
        raise ConfigError(
            f"no price for model {model!r}: it is not in litellm's cost map; pass a "
            "model list (models=...) that prices it"
        )
    return ModelEntry(
        name=model,
        litellm_params={"model": model, **connection},
        price=price,
        max_output_tokens=None,
        tokenizer_family=tokenizer_family(model),
    )


class _Outcomes:
    """What the ledger stores for a safe-path call (there is no event to publish)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def succeeded(self, completion: Completion, charge: spend.Charge) -> bytes:
        tokens = TokenUsage(charge.prompt_tokens, charge.completion_tokens)
        return outcome(
            "compat.succeeded", charge.cost_nanousd, Usage(self.model, tokens, self.model)
        )

    def failed(self, failure: spend.Failure) -> bytes:
        return json.dumps({"type": "compat.failed", "error": failure.error_type}).encode()


async def run(
    path: spend.SpendPath,
    user: str,
    entry: ModelEntry,
    job: CompletionJob,
    *,
    default_max_tokens: int,
) -> ChargedCompletion:
    """Run ``job`` for ``user`` on ``path``: the charged completion, else
    :class:`BudgetExceeded` when refused (nothing spent, no call), or the call's error."""
    request = spend.Request(
        user_id=ledger_user(user),
        job_id=job.job_id,
        entry=entry,
        messages=[m.model_dump(exclude_none=True) for m in job.messages],
        params=job.params.model_dump(exclude_none=True),
        estimate=estimate(job, entry, default_max_tokens),
    )
    result = await path.run(request, _Outcomes(job.model))
    if isinstance(result, spend.Charged):
        return ChargedCompletion(
            result.completion.response,
            user=user,
            job_id=job.job_id,
            cost_nanousd=result.settled.charged_nanousd,
        )
    if isinstance(result, spend.CallFailed):
        if result.error is not None:
            raise result.error
        raise BudgetWorkerError(result.failure.message)
    if isinstance(result, spend.Refusal):
        refused = result.refused
        raise BudgetExceeded(
            user,
            result.reason,
            estimated_cost_nanousd=result.estimate.cost_nanousd,
            remaining=None if refused is None else refused.remaining,
            retry_after_s=result.retry_after_s,
        )
    raise BudgetWorkerError(f"job {job.job_id} is already finished")  # a fresh job id
