"""Secrets and prompt text scrubbed out of a message before it reaches a log or an event.

A provider's error message may quote what it was sent: the API key (a 401 that echoes
it), the prompt (a 400 that quotes the offending message), a base URL with credentials in
it. The worker builds every error message it reports from such text through ``redact``,
with the call's own secrets (``secrets_of``); the patterns catch keys and tokens it was
not told about. Redaction errs towards removing too much: a message is a diagnosis, and
the class and status code it starts with survive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["MESSAGE_MAX_CHARS", "redact", "secrets_of"]

MESSAGE_MAX_CHARS: Final = 300
"""A redacted message is cut to this length (the cut marked with ``...``)."""

# Credentials in a URL (``scheme://user:password@host``): the user info goes, the rest stays.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@\"']+@")
_KEY_PATTERN = re.compile(
    r"(?i)(?:sk|pk|rk)-[A-Za-z0-9_\-]{3,}"  # OpenAI/Anthropic-style keys
    r"|bearer\s+[^\s\"',;]+"  # Authorization header values
    r"|(?:api[_-]?key|x-api-key|authorization|token|secret|password)\s*[\"']?\s*[:=]\s*[\"']?"
    r"(?:bearer\s+)?[^\s\"',;}]+"
    r"|AIza[0-9A-Za-z_\-]{20,}"  # Google API keys
)
_SECRET_PARAM = re.compile(r"(?i)key|token|secret|password|credential")
_MIN_PROMPT_FRAGMENT: Final = 8  # shorter secrets and prompts are not searched for
_FRAGMENT_CHARS: Final = 16  # quoted runs of a secret's text from about this long are removed


def secrets_of(litellm_params: Mapping[str, Any], messages: Iterable[Any]) -> list[str]:
    """Strings that must not appear in an error message: the credentials of a model-list
    entry (every string parameter whose name says key, token, secret, password or
    credential) and the prompt's text (string contents and text parts); those shorter
    than ``_MIN_PROMPT_FRAGMENT`` are left out, as they would match by chance."""
    found = [
        value
        for key, value in litellm_params.items()
        if isinstance(value, str) and _SECRET_PARAM.search(key) and value
    ]
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, str):
            found.append(content)
        elif isinstance(content, list):
            found.extend(
                part["text"]
                for part in content
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            )
    return [s for s in found if len(s) >= _MIN_PROMPT_FRAGMENT]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without known secrets, anything shaped like a key or a bearer token, the
    credentials of any URL in it, folded onto one line and capped at
    ``MESSAGE_MAX_CHARS``.

    A provider may quote a secret in another form than it was sent: cut short, or
    escaped as JSON or as a Python repr. Each secret is removed verbatim and in those
    escaped forms, and then every run of ``_FRAGMENT_CHARS`` or more characters that
    also occurs in one of those forms is removed as well.
    """
    forms = sorted(
        {form for secret in secrets for form in _quoted_forms(secret)}, key=len, reverse=True
    )
    for form in forms:
        if form in text:
            text = text.replace(form, "[redacted]")
    # Fragments are searched in a bounded prefix: the message is capped below anyway.
    text = _without_fragments(text[: 2 * MESSAGE_MAX_CHARS], "\0".join(forms))
    text = _URL_CREDENTIALS.sub(r"\1[redacted]@", text)
    text = _KEY_PATTERN.sub("[redacted]", text)
    text = " ".join(text.split())
    if len(text) > MESSAGE_MAX_CHARS:
        text = text[: MESSAGE_MAX_CHARS - 3] + "..."
    return text


def _quoted_forms(secret: str) -> set[str]:
    """``secret`` as it may be quoted back: as sent, JSON-escaped (ASCII or not), repr."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }
    return {form for form in forms if len(form) >= _MIN_PROMPT_FRAGMENT}


def _without_fragments(text: str, haystack: str) -> str:
    """``text`` with the runs of characters that also occur in ``haystack`` replaced by
    ``[redacted]``: every such run of 23 characters or more (``_FRAGMENT_CHARS`` plus
    the probe step, less one), and shorter ones down to ``_FRAGMENT_CHARS`` found next
    to a probe. Windows are probed every ``_FRAGMENT_CHARS // 2`` characters and refined
    only around a hit: a few dozen substring searches for a prompt of the largest
    allowed size."""
    width, step = _FRAGMENT_CHARS, _FRAGMENT_CHARS // 2
    if not haystack or len(text) < width:
        return text
    last = len(text) - width
    hidden = [False] * len(text)
    for aligned in range(0, last + 1, step):
        if text[aligned : aligned + width] not in haystack:
            continue
        for start in range(max(0, aligned - step + 1), min(last, aligned + step - 1) + 1):
            if text[start : start + width] in haystack:
                hidden[start : start + width] = [True] * width
    if not any(hidden):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if not hidden[index]:
            out.append(char)
        elif index == 0 or not hidden[index - 1]:
            out.append("[redacted]")
    return "".join(out)
