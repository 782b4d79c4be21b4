"""The model list: which ``model`` names jobs may use, how litellm reaches each, and its price.

The file (``BW_MODELS_FILE``) uses LiteLLM proxy's ``model_list`` YAML format, so one file
can serve both::

    model_list:
      - model_name: gpt-4o-mini                  # what jobs put in "model"
        litellm_params:                          # passed to litellm.acompletion as they are
          model: openai/gpt-4o-mini
          api_key: os.environ/OPENAI_API_KEY     # read from the environment at load time
        model_info:                              # optional
          max_output_tokens: 16384
          # any price key of litellm's cost map, over the map's entry (null drops one):
          cache_read_input_token_cost: 0.000000075
          # base_model: azure/gpt-4o             # price a custom deployment name as this

Prices come from litellm's bundled cost map unless ``model_info`` sets them; a model with
neither, or one priced in a way the worker cannot reproduce exactly, is a configuration
error, because the worker never calls a model it cannot price (``worker.pricebook``
resolves and checks each price once, here, at start-up).
Unlike the proxy, a ``model_name`` may appear once only (no load balancing), and the
proxy's routing-only keys (``rpm``, ``tpm``, ``weight``, ``order``, ...) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from worker.errors import ConfigError
from worker.prices import ModelPrice

TokenizerFamily = Literal["openai", "anthropic", "other"]
PriceResolver = Callable[[Mapping[str, Any], Mapping[str, Any]], ModelPrice]
"""``(litellm_params, model_info) -> ModelPrice``, raising ``ConfigError`` when the model
cannot be priced; the worker passes ``pricebook.price_of``."""

ENV_REFERENCE_PREFIX: Final = "os.environ/"

# Keys the LiteLLM proxy reads for routing and budgets; litellm.acompletion has no use for them.
_ROUTER_ONLY_PARAMS: Final = frozenset(
    {"rpm", "tpm", "weight", "order", "max_parallel_requests", "max_budget", "budget_duration"}
)
# Set per call by the worker; a model list setting them would break estimates or retries.
_WORKER_PARAMS: Final = {
    "messages": "the job supplies the messages",
    "stream": "the worker does not stream",
    "n": "the job may set n",
    "max_tokens": "set model_info.max_output_tokens to cap output instead",
    "max_completion_tokens": "set model_info.max_output_tokens to cap output instead",
    "num_retries": "retries are set by BW_MODEL_MAX_RETRIES",
    "max_retries": "retries are set by BW_MODEL_MAX_RETRIES",
}

_OPENAI_PROVIDERS: Final = frozenset({"", "openai", "azure", "text-completion-openai"})
_OPENAI_NAME = re.compile(r"^(?:gpt-|chatgpt-|o\d|text-|davinci|babbage|ft:gpt-)")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One usable model. ``litellm_params`` is resolved (no ``os.environ/`` references left)
    and holds secrets: never log it."""

    name: str
    litellm_params: dict[str, Any] = field(hash=False, repr=False)
    price: ModelPrice
    max_output_tokens: int | None
    tokenizer_family: TokenizerFamily

    @property
    def litellm_model(self) -> str:
        """The model as litellm names it, e.g. ``openai/gpt-4o-mini``."""
        model: str = self.litellm_params["model"]
        return model


class ModelList:
    """The loaded models by ``model_name``, in file order."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._entries = {entry.name: entry for entry in entries}

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())


def tokenizer_family(litellm_model: str) -> TokenizerFamily:
    """Which tokenizer a litellm model uses, from its provider prefix and name.

    ``openai/`` also fronts OpenAI-compatible servers of other models, so the name must look
    like an OpenAI model as well; anything unrecognised is ``other``.
    """
    provider, _, rest = litellm_model.rpartition("/")
    provider = provider.split("/", 1)[0].lower()
    name = rest.lower()
    if provider == "anthropic" or "claude" in name:
        return "anthropic"
    if provider in _OPENAI_PROVIDERS and _OPENAI_NAME.match(name):
        return "openai"
    return "other"


def load_models(path: Path, environ: Mapping[str, str], price_of: PriceResolver) -> ModelList:
    """Read and check the model list at ``path``.

    ``os.environ/NAME`` values in ``litellm_params`` are resolved from ``environ``;
    ``price_of`` prices each entry from its resolved ``litellm_params`` and ``model_info``
    (the worker passes ``pricebook.price_of``). Raises ``ConfigError`` naming the file and
    what to fix.
    """
    document = _read_yaml(path)
    if not isinstance(document, Mapping) or "model_list" not in document:
        raise ConfigError(
            f"{path}: no top-level 'model_list:' key; the file must be a LiteLLM model list "
            "(model_list: [{model_name: ..., litellm_params: {model: ...}}])"
        )
    raw_entries = document["model_list"]
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ConfigError(f"{path}: 'model_list' must be a non-empty list of models")

    entries: list[ModelEntry] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(raw_entries, start=1):
        entry = _entry(path, number, raw, environ, price_of)
        if entry.name in first_seen:
            raise ConfigError(
                f"{path}: model_name {entry.name!r} appears twice (entries {first_seen[entry.name]}"
                f" and {number}); each model_name must be unique"
            )
        first_seen[entry.name] = number
        entries.append(entry)
    return ModelList(entries)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: model list file not found (BW_MODELS_FILE must name a LiteLLM "
            "model_list YAML file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the model list: {reason}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def _entry(
    path: Path,
    number: int,
    raw: Any,
    environ: Mapping[str, str],
    price_of: PriceResolver,
) -> ModelEntry:
    where = f"{path}: model_list entry {number}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with model_name and litellm_params")
    name = raw.get("model_name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where} has no model_name (the name jobs use in 'model')")
    where = f"{path}: model {name!r}"

    params = _litellm_params(raw.get("litellm_params"), where, environ)
    litellm_model = params["model"]

    info = raw.get("model_info")
    if info is None:
        info = {}
    if not isinstance(info, Mapping):
        raise ConfigError(f"{where}: model_info must be a mapping")

    return ModelEntry(
        name=name,
        litellm_params=params,
        price=_price(where, params, info, price_of),
        max_output_tokens=_max_output_tokens(where, info),
        tokenizer_family=tokenizer_family(litellm_model),
    )


def _litellm_params(raw_params: Any, where: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """An entry's ``litellm_params`` as litellm is given them: router-only keys dropped,
    the worker's own refused, ``os.environ/NAME`` references resolved."""
    if not isinstance(raw_params, Mapping):
        raise ConfigError(f"{where} has no litellm_params mapping (it needs at least 'model')")
    litellm_model = raw_params.get("model")
    if not isinstance(litellm_model, str) or not litellm_model.strip():
        raise ConfigError(
            f"{where} has no litellm_params.model (litellm's model name, e.g. openai/gpt-4o-mini)"
        )
    params: dict[str, Any] = {}
    for key, value in raw_params.items():
        key = str(key)
        if key in _ROUTER_ONLY_PARAMS:
            continue
        if key in _WORKER_PARAMS:
            raise ConfigError(
                f"{where}: litellm_params.{key} is not allowed ({_WORKER_PARAMS[key]})"
            )
        params[key] = _resolve(value, f"litellm_params.{key}", where, environ)
    resolved = params["model"]
    if not isinstance(resolved, str) or not resolved.strip():
        raise ConfigError(f"{where}: litellm_params.model resolved to an empty value")
    return params


def _resolve(value: Any, key: str, where: str, environ: Mapping[str, str]) -> Any:
    """``value`` with every ``os.environ/NAME`` string replaced by that variable's value."""
    if isinstance(value, str) and value.startswith(ENV_REFERENCE_PREFIX):
        variable = value[len(ENV_REFERENCE_PREFIX) :]
        if not variable:
            raise ConfigError(f"{where}: {key} is {value!r}, which names no variable")
        if variable not in environ:
            raise ConfigError(
                f"{where}: {key} refers to environment variable {variable}, which is not set"
            )
        return environ[variable]
    if isinstance(value, Mapping):
        return {str(k): _resolve(v, f"{key}.{k}", where, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{key}[{i}]", where, environ) for i, v in enumerate(value)]
    return value


def _price(
    where: str, params: Mapping[str, Any], info: Mapping[str, Any], price_of: PriceResolver
) -> ModelPrice:
    try:
        return price_of(params, info)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _max_output_tokens(where: str, info: Mapping[str, Any]) -> int | None:
    value = info.get("max_output_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}: model_info.max_output_tokens must be a positive integer, got {value!r}"
        )
    return value
