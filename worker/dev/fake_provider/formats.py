"""Each vendor's wire format: a request read into one ``Call`` (OpenAI's, Anthropic's,
Gemini's), and a usage written back the way that vendor reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from worker.dev.fake_provider.config import MAX_TOKENS_LIMIT, FakeProviderConfig

_CONTENT_WORD = " hello"  # one token in both cl100k_base and o200k_base
_content_cache: dict[int, str] = {}


def content_of(tokens: int) -> str:
    text = _content_cache.get(tokens)
    if text is None:
        text = _CONTENT_WORD * tokens
        if len(_content_cache) < 4096:
            _content_cache[tokens] = text
    return text


def error_response(
    status: int, message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.json_response(body, status=status)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _max_tokens(body: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"{key} must be an integer >= 1", key)
        if value > MAX_TOKENS_LIMIT:
            raise BadRequest(
                f"{key} is too large: {value}. This model supports at most "
                f"{MAX_TOKENS_LIMIT} completion tokens.",
                key,
            )
        return value
    return None


@dataclass(frozen=True, slots=True)
class Call:
    """A request, whatever its vendor's format: its messages as OpenAI's, for counting."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    n: int


def openai_call(body: Any, model: str | None = None) -> Call:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    if body.get("stream"):
        raise BadRequest("stream is not supported by this server", "stream")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise BadRequest("messages must be a non-empty array of objects", "messages")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise BadRequest("n must be an integer between 1 and 128", "n")
    return Call(model, messages, _max_tokens(body, ("max_tokens", "max_completion_tokens")), n)


def anthropic_call(body: Any) -> Call:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required", "model")
    if body.get("stream"):
        raise BadRequest("stream is not supported by this server", "stream")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise BadRequest("messages: must be a non-empty list of objects", "messages")
    max_tokens = _max_tokens(body, ("max_tokens",))
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required", "max_tokens")
    messages = [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in raw]
    system = body.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return Call(model, messages, max_tokens, 1)


def gemini_call(body: Any, model: str) -> Call:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("contents is not specified", "contents")
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    for item in ([system] if isinstance(system, dict) else []) + contents:
        if not isinstance(item, dict):
            raise BadRequest("contents must be a list of objects", "contents")
        parts = item.get("parts")
        if not isinstance(parts, list):
            parts = []
        text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        messages.append({"role": str(item.get("role", "user")), "content": text})
    config = body.get("generationConfig") or body.get("generation_config") or {}
    keys = ("maxOutputTokens", "max_output_tokens")
    max_tokens = _max_tokens(config, keys) if isinstance(config, dict) else None
    return Call(model, messages, max_tokens, 1)


@dataclass(frozen=True, slots=True)
class Usage:
    """One reply's token counts, the breakdown applied (see ``FakeProviderConfig``)."""

    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    audio_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    audio_completion_tokens: int = 0


def usage_for(
    config: FakeProviderConfig, prompt_tokens: int, content_tokens: int, cap: int | None
) -> Usage:
    """Counts for a reply of ``content_tokens`` visible output tokens; reasoning comes on
    top, within ``cap`` (``max_tokens`` times ``n``), as a reasoning model's does."""
    wanted = config.usage_breakdown
    left = prompt_tokens
    cached = min(wanted.get("cache_read_tokens", 0), left)
    left -= cached
    written = min(wanted.get("cache_creation_tokens", 0), left)
    left -= written
    written_1h = min(wanted.get("cache_creation_1h_tokens", 0), written)
    audio_in = min(wanted.get("audio_prompt_tokens", 0), left)
    reasoning = wanted.get("reasoning_tokens", 0)
    if cap is not None:
        reasoning = min(reasoning, max(cap - content_tokens, 0))
    audio_out = min(wanted.get("audio_completion_tokens", 0), content_tokens)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=content_tokens + reasoning,
        cache_read_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written_1h,
        audio_prompt_tokens=audio_in,
        reasoning_tokens=reasoning,
        audio_completion_tokens=audio_out,
    )


def openai_usage(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    prompt_details = {
        key: value
        for key, value in (
            ("cached_tokens", usage.cache_read_tokens),
            ("cache_write_tokens", usage.cache_creation_tokens),
            ("audio_tokens", usage.audio_prompt_tokens),
        )
        if value
    }
    completion_details = {
        key: value
        for key, value in (
            ("reasoning_tokens", usage.reasoning_tokens),
            ("audio_tokens", usage.audio_completion_tokens),
        )
        if value
    }
    if prompt_details:
        body["prompt_tokens_details"] = prompt_details
    if completion_details:
        body["completion_tokens_details"] = completion_details
    return body


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` excludes cache reads and writes."""
    written = usage.cache_creation_tokens
    return {
        "input_tokens": usage.prompt_tokens - usage.cache_read_tokens - written,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": written,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - usage.cache_creation_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_creation_1h_tokens,
        },
        "service_tier": "standard",
    }


def gemini_usage(usage: Usage) -> dict[str, Any]:
    """Gemini's usageMetadata: thoughts apart from the candidates, modalities listed."""
    text_in = usage.prompt_tokens - usage.audio_prompt_tokens
    prompt_details = [{"modality": "TEXT", "tokenCount": text_in}]
    if usage.audio_prompt_tokens:
        prompt_details.append({"modality": "AUDIO", "tokenCount": usage.audio_prompt_tokens})
    body: dict[str, Any] = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.completion_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
        "promptTokensDetails": prompt_details,
    }
    if usage.cache_read_tokens:
        body["cachedContentTokenCount"] = usage.cache_read_tokens
    if usage.reasoning_tokens:
        body["thoughtsTokenCount"] = usage.reasoning_tokens
    return body
