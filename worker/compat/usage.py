"""The usage a charge is priced from: a chat completion's own, or counted from text as
``BudgetManager`` counts it, and the outcome the ledger stores for the charge."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.pricebook import usage_of
from worker.prices import TokenUsage

__all__ = ["Usage", "count_tokens", "message_texts", "outcome", "usage_of_completion"]


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` or ``obj.name``: litellm's ModelResponse, a dict or a pydantic model."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


@dataclass(frozen=True, slots=True)
class Usage:
    model: str
    tokens: TokenUsage
    """Every kind of token the provider reported (cached, reasoning, ...), as priced."""
    priced_as: str
    """The model to price: ``model`` under the provider litellm recorded with the
    response (``azure/gpt-35-turbo`` for Azure's ``gpt-35-turbo``), as litellm's
    ``completion_cost`` looks it up."""

    @property
    def prompt_tokens(self) -> int:
        return self.tokens.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.tokens.completion_tokens


def usage_of_completion(completion_obj: Any) -> Usage:
    """The usage of a chat completion made outside the safe path, for ``update_cost``;
    ``ValueError`` when it has no model or token counts."""
    usage = _field(completion_obj, "usage")
    model = _field(completion_obj, "model")
    prompt = _field(usage, "prompt_tokens") if usage is not None else None
    completion = _field(usage, "completion_tokens") if usage is not None else None
    if not isinstance(model, str) or not isinstance(prompt, int) or not isinstance(completion, int):
        raise ValueError(
            "completion_obj must be a chat completion with 'model' and 'usage' "
            "(prompt_tokens, completion_tokens)"
        )
    hidden = getattr(completion_obj, "_hidden_params", None)
    provider = hidden.get("custom_llm_provider") if isinstance(hidden, Mapping) else None
    priced_as = model
    if isinstance(provider, str) and provider and not model.startswith(f"{provider}/"):
        priced_as = f"{provider}/{model}"
    tokens = usage_of(completion_obj) or TokenUsage(prompt, completion)
    return Usage(model, tokens, priced_as)


def message_texts(message: Mapping[str, Any]) -> Iterable[str]:
    """Every text of a loosely typed message (its role, content parts, name, ...)."""
    for value in message.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for part in value:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    yield part["text"]
                else:
                    yield json.dumps(part)
        elif value is not None:
            yield json.dumps(value)


def count_tokens(model: str, input_text: str, output_text: str) -> tuple[int, int]:
    """Prompt and completion tokens of ``update_cost``'s texts, counted as
    ``BudgetManager`` counts them: each text as a one-message chat
    (``litellm.token_counter(messages=[{"role": "user", "content": text}])``), the output
    too. That is 7 tokens more than the output's own (its role, 3 per message, 3 priming
    a reply), kept so that a migrated user is charged what LiteLLM charged.

    Counted with tiktoken, as litellm counts these models: the model's encoding when
    tiktoken knows it, else ``cl100k_base``."""
    import tiktoken  # its BPE files are found offline: worker.compat sets TIKTOKEN_CACHE_DIR

    try:
        encoding = tiktoken.encoding_for_model(model.rsplit("/", 1)[-1])
    except KeyError:
        encoding = tiktoken.get_encoding("cl100k_base")

    def as_chat(text: str) -> int:  # the text, the role "user", 3 per message, 3 priming
        return len(encoding.encode_ordinary(text)) + len(encoding.encode_ordinary("user")) + 6

    return as_chat(input_text), as_chat(output_text)


def outcome(kind: str, cost_nanousd: int, usage: Usage) -> bytes:
    """What the ledger stores for a compat charge (there is no event to publish)."""
    return json.dumps(
        {
            "type": kind,
            "model": usage.model,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_nanousd": cost_nanousd,
        }
    ).encode()
