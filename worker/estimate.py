"""An upper bound of a job's cost, from the job's text alone, in microseconds.

A reservation must never be smaller than the call's real cost, or a budget can be
overspent; it must also be cheap, because every job pays for it before its call. Exact
tokenizing costs far more CPU than the call is worth, so the bound counts bytes:

- **Text.** A byte-level BPE (OpenAI's ``cl100k_base`` and ``o200k_base``, the tokenizers
  of Llama 3, DeepSeek and many newer open models) turns a text into tokens that each
  stand for at least one byte of its UTF-8 form and together spell exactly those bytes,
  so it never makes more tokens than the text has bytes. A tokenizer that first applies
  NFKC (the Claude tokenizer litellm ships does) sees the *normalised* text, which can be
  up to eleven times longer in bytes (``U+FDFA`` is 3 bytes and 33 after NFKC), so for
  those families the bound counts the larger of both forms.
- **Framing.** OpenAI adds 3 tokens per message, 1 per ``name`` and 3 priming the reply,
  and tokenizes each role; roles are counted as text here, and each message gets
  ``per_message_tokens`` on top (more than the 3 + 1 it can need).
- **Tool calls** of assistant messages are counted a second time as their ASCII JSON,
  which covers the JSON some servers tokenize (every byte again at most one token) and
  the few framing tokens OpenAI adds around a call. Tool definitions and a response
  format arrive as compact JSON from ``CompletionJob.text_parts``; a fixed allowance
  covers the wrapper a provider renders them into.
- **Images** are not text; each one is bounded by the provider's published worst case
  for the model (see ``image_token_bound``).
- **Output** is ``max_tokens`` (the job's, else the configured default, capped by the
  model's ``max_output_tokens``) times ``n``: the provider never returns more.

Which of this is proven and which argued, family by family, is written up in
``docs/estimation.md``; ``tests/test_estimate.py`` checks the proven parts against the
real tokenizers.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from schemas.jobs import CompletionJob, ImagePart
from worker.prices import ModelPrice

if TYPE_CHECKING:
    from worker.models import ModelEntry, TokenizerFamily


@dataclass(frozen=True, slots=True)
class Framing:
    """The tokens a provider adds around the text of a chat request, bounded from above."""

    per_message_tokens: int
    """Per message, beyond the tokens of its texts (OpenAI: 3, plus 1 for a ``name``)."""
    base_tokens: int
    """Once per request (OpenAI: 3 priming the reply)."""
    tools_tokens: int
    """Once when the request carries tools or a response format (their rendered wrapper)."""
    per_text_tokens: int
    """Per text, for tokenizers that add a marker to each text (SentencePiece's prefix)."""
    nfkc: bool
    """Whether the tokenizer may NFKC-normalise text first (then both forms are counted)."""


OPENAI_FRAMING: Final = Framing(
    per_message_tokens=4, base_tokens=8, tools_tokens=64, per_text_tokens=0, nfkc=False
)
"""Proven for ``cl100k_base`` and ``o200k_base``; tools and images are argued."""

ANTHROPIC_FRAMING: Final = Framing(
    per_message_tokens=16, base_tokens=32, tools_tokens=1024, per_text_tokens=1, nfkc=True
)
"""Claude: the published tool-use system prompt is at most ~530 tokens; the rest is argued
from the legacy Claude tokenizer (NFKC, then byte-level BPE), the only one published."""

OTHER_FRAMING: Final = Framing(
    per_message_tokens=16, base_tokens=64, tools_tokens=1024, per_text_tokens=1, nfkc=True
)
"""Any other model: byte-level BPE or SentencePiece with byte fallback, chat templates
of a few tokens per message and a short default system prompt."""

_FRAMINGS: Final[dict[str, Framing]] = {
    "openai": OPENAI_FRAMING,
    "anthropic": ANTHROPIC_FRAMING,
    "other": OTHER_FRAMING,
}


def framing_for(family: TokenizerFamily | str) -> Framing:
    """The framing of a tokenizer family; an unknown family gets the most generous one."""
    return _FRAMINGS.get(family, OTHER_FRAMING)


def utf8_length(text: str) -> int:
    """Bytes of ``text`` as UTF-8, without copying ASCII text.

    A lone surrogate (JSON can carry one) counts 3 bytes, as much as the U+FFFD that
    tokenizers put in its place.
    """
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _nfkc_utf8_length(text: str) -> int:
    """The larger of the UTF-8 lengths of ``text`` and of its NFKC form.

    NFKC is NFKD followed by canonical composition, and composition never lengthens
    UTF-8 (a composite is never longer than the pair it replaces). So NFKC can only be
    longer than ``text`` if some character of it is longer after NFKD; text without one
    needs no normalising, which is slow (tens of microseconds per hundred characters).
    """
    if text.isascii():  # ASCII is NFKC-stable
        return len(text)
    raw = len(text.encode("utf-8", "surrogatepass"))
    if unicodedata.is_normalized("NFKC", text) or not _nfkd_growing().search(text):
        return raw
    normal = unicodedata.normalize("NFKC", text)
    return max(raw, len(normal.encode("utf-8", "surrogatepass")))


@functools.cache
def _nfkd_growing() -> re.Pattern[str]:
    """A character class of every character whose NFKD form has more UTF-8 bytes than
    the character (12,915 in Unicode 14: precomposed letters, Hangul syllables,
    compatibility forms such as U+FDFA). Built from the running Python's Unicode tables
    on first use, in about 0.1 s: blocks of 256 code points that NFKD leaves alone are
    skipped whole."""
    ranges: list[list[int]] = []
    for start in range(0, 0x110000, 256):
        if 0xD800 <= start < 0xE000:  # surrogates
            continue
        block = "".join(map(chr, range(start, start + 256)))
        if unicodedata.is_normalized("NFKD", block):
            continue
        for code in range(start, start + 256):
            char = chr(code)
            if len(unicodedata.normalize("NFKD", char).encode()) > len(char.encode()):
                if ranges and ranges[-1][1] == code - 1:
                    ranges[-1][1] = code
                else:
                    ranges.append([code, code])
    members = "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges)
    return re.compile(f"[{members}]")


def prompt_token_bound(
    texts: Iterable[str], message_count: int, *, framing: Framing = OPENAI_FRAMING
) -> int:
    """An upper bound of the prompt tokens of a chat request whose every tokenized text
    (contents, roles, names, tool call ids and arguments, tool definitions) is in
    ``texts`` and that has ``message_count`` messages.

    With the default ``OPENAI_FRAMING`` it is at least OpenAI's count for
    ``cl100k_base`` and ``o200k_base``: UTF-8 bytes bound the text's tokens, and
    ``per_message_tokens`` and ``base_tokens`` bound the framing.
    """
    total = framing.base_tokens + framing.per_message_tokens * message_count
    count = 0
    if framing.nfkc:
        for text in texts:
            total += _nfkc_utf8_length(text)
            count += 1
    else:
        for text in texts:
            # utf8_length, inlined: this loop is the estimate's hot path.
            total += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            count += 1
    return total + framing.per_text_tokens * count


# --- images ------------------------------------------------------------------------------

# (model name pattern, tokens at detail "high"/"auto", tokens at detail "low"), first match
# wins. OpenAI's published rules: tile models scale an image into 2048x2048, then its short
# side to 768, so at most 8 tiles of 512 px; patch models count at most 1536 32-px patches
# times a per-model multiplier (at most 2.46), whatever the detail.
_OPENAI_IMAGES: Final = (
    (re.compile(r"gpt-4o-mini"), 2833 + 8 * 5667, 2833),
    (re.compile(r"gpt-4\.1-(?:mini|nano)|o4-mini|gpt-5(?:\.\d+)?-(?:mini|nano)"), 3780, 3780),
    (re.compile(r""), 85 + 8 * 170, 85),
)
_ANTHROPIC_IMAGE_TOKENS: Final = 5000
"""Claude: width * height / 750 after resizing to its size limit (about 1,600 tokens),
with room for models that accept larger images."""
_OTHER_IMAGE_TOKENS: Final = 8192


def image_token_bound(family: TokenizerFamily | str, litellm_model: str, detail: str | None) -> int:
    """An upper bound of the prompt tokens one image costs on ``litellm_model``."""
    if family == "openai":
        name = litellm_model.rsplit("/", 1)[-1].lower()
        for pattern, high, low in _OPENAI_IMAGES:
            if pattern.search(name):
                return low if detail == "low" else high
    if family == "anthropic":
        return _ANTHROPIC_IMAGE_TOKENS
    return _OTHER_IMAGE_TOKENS


# --- the estimate ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a job may cost at most; the reservation it holds while its model runs."""

    prompt_tokens_bound: int
    max_output_tokens: int
    """Per choice; the call is made with exactly this ``max_tokens``."""
    n: int
    tokens: int
    """``prompt_tokens_bound + max_output_tokens * n``: the TPM reservation."""
    cost_nanousd: int
    """An upper bound in nano-USD (rounded up)."""


def priced(prompt_tokens_bound: int, max_output_tokens: int, n: int, price: ModelPrice) -> Estimate:
    """The estimate of a call with these bounds at ``price``."""
    completion_tokens = max_output_tokens * n
    return Estimate(
        prompt_tokens_bound=prompt_tokens_bound,
        max_output_tokens=max_output_tokens,
        n=n,
        tokens=prompt_tokens_bound + completion_tokens,
        cost_nanousd=price.bound_nanousd(prompt_tokens_bound, completion_tokens),
    )


def output_cap(job: CompletionJob, entry: ModelEntry, default_max_tokens: int) -> int:
    """The ``max_tokens`` the call is made with: the job's, else the default capped by the
    model's ``max_output_tokens``."""
    if job.max_tokens is not None:
        return job.max_tokens
    if entry.max_output_tokens is not None:
        return min(default_max_tokens, entry.max_output_tokens)
    return default_max_tokens


def job_prompt_bound(job: CompletionJob, entry: ModelEntry) -> int:
    """``prompt_token_bound`` of a job: its texts, roles, tool calls and images."""
    framing = framing_for(entry.tokenizer_family)
    bound = prompt_token_bound(job.text_parts(), len(job.messages), framing=framing)
    params = job.params
    if params.tools or params.response_format:
        bound += framing.tools_tokens
    for message in job.messages:
        bound += len(message.role)  # ASCII
        if message.tool_calls:
            calls = [call.model_dump() for call in message.tool_calls]
            bound += len(json.dumps(calls, separators=(",", ":")))  # ensure_ascii: 1 char, 1 byte
        if isinstance(message.content, list):
            for part in message.content:
                if isinstance(part, ImagePart):
                    bound += image_token_bound(
                        entry.tokenizer_family, entry.litellm_model, part.image_url.detail
                    )
    return bound


def estimate(job: CompletionJob, entry: ModelEntry, default_max_tokens: int) -> Estimate:
    """An upper bound of what ``job`` can cost on ``entry``'s model."""
    return priced(
        job_prompt_bound(job, entry),
        output_cap(job, entry, default_max_tokens),
        job.params.n or 1,
        entry.price,
    )
