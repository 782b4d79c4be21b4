"""The process's start-up step: what the libraries under the worker must be told before
they run, done once and explicitly, never as a side effect of importing a module.

``prepare()`` keeps litellm and tiktoken offline and sets litellm up for the worker:

- ``LITELLM_LOCAL_MODEL_COST_MAP=True``: litellm fetches its cost map from GitHub when it
  is *imported*, unless this is set. It is set here before litellm's first import.
- ``TIKTOKEN_CACHE_DIR``: tiktoken downloads its encodings on first use unless it finds
  them there; litellm ships them. Both with ``setdefault``: an operator's choice wins.
- litellm's process-wide settings and a warm-up call (``worker.provider.configure_litellm``).

It is idempotent and thread-safe, and is called by ``budget-worker run`` (before it
imports the service), ``worker.service.serve``, the BudgetManager-compatible API's
constructor, and the dev rigs and benchmarks. This module and ``worker.settings`` are the
only ones that touch ``os.environ``: settings read the worker's own variables; this
module writes the variables of the libraries that read them themselves.

One module does something when imported, on purpose: ``worker.compat`` calls
``keep_offline`` first, because code written for LiteLLM's ``BudgetManager`` changes only
its import line and must not need a set-up call to stay offline. It sets nothing else;
litellm's settings and the warm-up wait for the first manager, which calls ``prepare``.

Because litellm reads its cost-map setting at import, a module that imports litellm
(``worker.provider``, ``worker.pricebook``, and so everything that imports them) cannot be
imported into a process where neither has happened: ``require_local_cost_map`` refuses,
naming the variable, rather than let the import reach the internet.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from worker.errors import ConfigError

__all__ = [
    "bundled_tokenizers_dir",
    "keep_offline",
    "library_environment",
    "prepare",
    "require_local_cost_map",
]

_COST_MAP_VARIABLE = "LITELLM_LOCAL_MODEL_COST_MAP"
_lock = threading.Lock()
_prepared = False


def prepare() -> None:
    """Make litellm and tiktoken read only their bundled files, import litellm and set it
    up for the worker. Does nothing after its first call in the process."""
    global _prepared
    with _lock:  # two threads (BudgetManager users) must not warm litellm up twice
        if _prepared:
            return
        keep_offline()
        from worker import provider  # litellm's first import, after the variables

        provider.configure_litellm()
        _prepared = True


def keep_offline() -> None:
    """Set the variables that keep litellm and tiktoken on their bundled files, unless
    set already: the part of ``prepare`` that must precede litellm's first import."""
    for name, value in library_environment().items():
        os.environ.setdefault(name, value)


def library_environment() -> dict[str, str]:
    """The variables ``prepare`` sets unless already set (deployments may set them
    themselves, as ``deploy/Dockerfile`` does)."""
    environment = {_COST_MAP_VARIABLE: "True"}
    tokenizers = bundled_tokenizers_dir()
    if tokenizers is not None:
        environment["TIKTOKEN_CACHE_DIR"] = tokenizers
    return environment


def require_local_cost_map(environ: Mapping[str, str] = os.environ) -> None:
    """Raise ``ConfigError`` unless importing litellm now reads its bundled cost map: it
    is already imported, or the environment says so. Called by the modules that import
    litellm, before they do; it changes nothing."""
    if "litellm" in sys.modules or _is_true(environ.get(_COST_MAP_VARIABLE)):
        return
    if _is_true(environ.get("LITELLM_OFFLINE_MODE")):
        return
    raise ConfigError(
        f"{_COST_MAP_VARIABLE} is not set, so importing litellm would fetch its cost map "
        f"from the internet: set {_COST_MAP_VARIABLE}=True in the environment, or call "
        "worker.startup.prepare() before importing worker.provider, worker.pricebook, "
        "worker.compat or worker.service"
    )


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() == "true"  # as litellm reads them


def bundled_tokenizers_dir() -> str | None:
    """litellm's copy of tiktoken's BPE files, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return str(root / "litellm_core_utils" / "tokenizers")
