"""Token counting as OpenAI counts chat prompts, with tiktoken encodings built from the
BPE files litellm ships (nothing is fetched)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import tiktoken

from worker.dev.fake_provider.config import CountTokens
from worker.startup import bundled_tokenizers_dir

# tiktoken's published definitions of the two chat encodings (tiktoken_ext.openai_public).
# They are restated here so the BPE ranks can be read from litellm's bundled copies
# instead of tiktoken's download-and-cache path, which is configured through os.environ.
_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
ENCODINGS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": (
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
            r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        "special_tokens": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
    "o200k_base": {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
}
_O200K_MODEL = re.compile(r"^(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|o\d)")
_encoders: dict[str, tiktoken.Encoding] = {}
_encoding_by_model: dict[str, str] = {}


def _bundled_tokenizers_dir() -> Path:
    found = bundled_tokenizers_dir()
    if found is None:
        raise RuntimeError("litellm is not installed; its bundled tiktoken files are needed")
    return Path(found)


def encoding_for(name: str) -> tiktoken.Encoding:
    """``cl100k_base`` or ``o200k_base``, built once from the BPE file litellm ships."""
    encoder = _encoders.get(name)
    if encoder is not None:
        return encoder
    definition = ENCODINGS[name]
    url = _ENCODING_URL.format(name=name)
    path = _bundled_tokenizers_dir() / hashlib.sha1(url.encode()).hexdigest()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != definition["sha256"]:
        raise RuntimeError(f"{path} is not the {name} BPE file (sha256 mismatch)")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    encoder = tiktoken.Encoding(
        name=name,
        pat_str=definition["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=definition["special_tokens"],
    )
    _encoders[name] = encoder
    return encoder


def encoding_name_for_model(model: str) -> str:
    """The encoding OpenAI uses for ``model`` (a ``provider/`` prefix is ignored)."""
    name = _encoding_by_model.get(model)
    if name is None:
        bare = model.rsplit("/", 1)[-1].lower()
        name = "o200k_base" if _O200K_MODEL.match(bare) else "cl100k_base"
        if len(_encoding_by_model) < 1024:
            _encoding_by_model[model] = name
    return name


def _text_of(value: Any) -> str:
    """The text of a message field: strings as they are, text parts joined, other values
    (tool calls, ...) as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"))


def count_prompt_tokens(
    messages: list[dict[str, Any]], model: str, mode: CountTokens = "exact"
) -> int:
    """Prompt tokens of a chat request as OpenAI counts them: every field of every message
    tokenized, plus 3 per message, 1 more per ``name``, and 3 priming the reply.
    ``mode="fast"`` estimates each field as ``len(text) // 4`` (benchmarks)."""
    encode = (
        encoding_for(encoding_name_for_model(model)).encode_ordinary if mode == "exact" else None
    )
    tokens = 3
    for message in messages:
        tokens += 3
        for key, value in message.items():
            text = _text_of(value)
            tokens += len(text) // 4 if encode is None else len(encode(text))
            if key == "name":
                tokens += 1
    return tokens
