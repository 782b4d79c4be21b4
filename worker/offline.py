"""litellm's offline settings, applied on import; import this before litellm.

litellm fetches its cost map from GitHub when it is first imported, and tiktoken downloads
its encodings on first use, unless told otherwise. Both are told here, with ``setdefault``
so an operator's explicit choice wins: the cost map is litellm's bundled copy and tiktoken
reads the BPE files litellm ships. ``worker.provider`` and ``worker.pricebook``, the two
modules that import litellm, import this first; it imports nothing of litellm itself.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def bundled_tokenizers_dir() -> str | None:
    """litellm's copy of tiktoken's BPE files, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return str(root / "litellm_core_utils" / "tokenizers")


os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
_tokenizers_dir = bundled_tokenizers_dir()
if _tokenizers_dir is not None:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", _tokenizers_dir)
