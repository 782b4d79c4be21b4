"""A chat completion server of our own, for tests, the demo and benchmarks.

litellm reaches it over real HTTP, so every layer between the worker and a provider is
exercised: ``openai/`` and ``azure/`` models with ``api_base`` = its ``.url``, and
``anthropic/`` and ``gemini/`` models with ``api_base`` = its ``.root_url``, each answered
in that vendor's own format, so litellm parses a real Anthropic or Gemini body. Its usage
numbers follow OpenAI's rules, so costs computed from them are the costs a real call of
the same shape would report; ``usage_breakdown`` adds the cached, cache-written,
reasoning and audio counts each vendor reports in its own way.

Endpoints:

    POST /v1/chat/completions, /chat/completions   OpenAI chat (``stream`` is refused)
    POST /openai/deployments/{name}/chat/completions   the same, as Azure OpenAI serves it
    POST /v1/messages                               Anthropic's Messages API
    POST /models/{model}:generateContent            Gemini (also under /v1beta)
    GET  /v1/models                                 the configured model ids
    GET  /stats                                     counters (see ``FakeProviderStats``)
    POST /stats/reset                               zero the counters
    POST /config                                    change any ``FakeProviderConfig`` field

Behaviour is set by ``FakeProviderConfig`` and may change while the server runs (POST
/config, or ``server.update_config(...)`` in-process; both validate first), so a test can
start a 429 storm mid-run. Token counting needs tiktoken's BPE files; they are read from
the copies litellm ships, so nothing is fetched from the network and litellm itself is not
imported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tiktoken
from aiohttp import web

from worker.offline import bundled_tokenizers_dir

MAX_TOKENS_LIMIT = 1_000_000
"""Requests asking for more output tokens than this are answered 400, like a real provider."""

CountTokens = Literal["exact", "fast"]
Vendor = Literal["openai", "anthropic", "gemini"]


@dataclass(slots=True)
class FakeProviderConfig:
    """How the fake answers.

    Rates are fractions of requests in [0, 1]; a valid request draws one random number:
    below ``rate_429`` it gets a 429 (with Retry-After ``retry_after_s``), below
    ``rate_429 + error_rate`` a 500. Latency applies to every valid request, errors included.
    ``output_tokens`` is the natural length of a reply; a smaller ``max_tokens`` caps it.
    ``omit_usage`` leaves ``usage`` out of replies. When ``api_key`` is set, requests must
    send it (as a Bearer token, or in the header the vendor uses); others get a 401 that
    echoes the key they sent, unmasked, the way a careless provider might, so tests can
    check that error messages are redacted.

    ``usage_breakdown`` sets the parts of each reply's usage with rates of their own,
    in tokens (``cache_read_tokens``, ``cache_creation_tokens``, ``cache_creation_1h_tokens``
    and ``audio_prompt_tokens`` of the prompt; ``reasoning_tokens``, added to the output
    within ``max_tokens``, and ``audio_completion_tokens`` of it), each capped by what is
    left; ``report_prompt_tokens`` replaces the counted prompt tokens (a 300k-token prompt
    without sending one).
    """

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    output_tokens: int = 16
    seed: int | None = None
    count_tokens: CountTokens = "exact"
    omit_usage: bool = False
    api_key: str | None = None
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-3.5-turbo", "fake-model")
    usage_breakdown: dict[str, int] = field(default_factory=dict)
    report_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency_s", "latency_jitter_s", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("error_rate", "rate_429"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if (
            not isinstance(self.output_tokens, int)
            or isinstance(self.output_tokens, bool)
            or self.output_tokens < 0
        ):
            raise ValueError(f"output_tokens must be an integer >= 0, got {self.output_tokens!r}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool)
        ):
            raise ValueError(f"seed must be an integer or null, got {self.seed!r}")
        if self.count_tokens not in ("exact", "fast"):
            raise ValueError(f"count_tokens must be 'exact' or 'fast', got {self.count_tokens!r}")
        if not isinstance(self.omit_usage, bool):
            raise ValueError(f"omit_usage must be a boolean, got {self.omit_usage!r}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ValueError("api_key must be a string or null")
        self.models = tuple(self.models)
        if not isinstance(self.usage_breakdown, dict):
            raise ValueError("usage_breakdown must be an object of token counts")
        for key, value in self.usage_breakdown.items():
            if key not in USAGE_BREAKDOWN_KEYS:
                raise ValueError(
                    f"usage_breakdown.{key} is unknown; use {', '.join(USAGE_BREAKDOWN_KEYS)}"
                )
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"usage_breakdown.{key} must be an integer >= 0, got {value!r}")
        self.usage_breakdown = dict(self.usage_breakdown)
        report = self.report_prompt_tokens
        if report is not None and (
            not isinstance(report, int) or isinstance(report, bool) or report < 1
        ):
            raise ValueError(
                f"report_prompt_tokens must be an integer >= 1 or null, got {report!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        return data


USAGE_BREAKDOWN_KEYS: tuple[str, ...] = (
    "cache_read_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "audio_prompt_tokens",
    "reasoning_tokens",
    "audio_completion_tokens",
)


@dataclass(slots=True)
class FakeProviderStats:
    """Counters of chat completion requests (other endpoints are not counted). In JSON
    (GET /stats) the status codes of ``by_status`` are strings. ``requests_total`` counts
    requests answered; ``requests_received`` every request that arrived, including those
    whose client went away before the answer (a killed worker's calls in flight)."""

    requests_received: int = 0
    requests_total: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    completions_succeeded: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0

    def reset(self) -> None:
        self.requests_received = 0
        self.requests_total = 0
        self.by_status.clear()
        self.by_model.clear()
        self.completions_succeeded = 0
        self.prompt_tokens_total = 0
        self.completion_tokens_total = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_received": self.requests_received,
            "requests_total": self.requests_total,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "by_model": dict(sorted(self.by_model.items())),
            "completions_succeeded": self.completions_succeeded,
            "prompt_tokens_total": self.prompt_tokens_total,
            "completion_tokens_total": self.completion_tokens_total,
        }


# --- Token counting -------------------------------------------------------------------

# tiktoken's published definitions of the two chat encodings (tiktoken_ext.openai_public).
# They are restated here so the BPE ranks can be read from litellm's bundled copies
# instead of tiktoken's download-and-cache path, which is configured through os.environ.
_ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_ENCODINGS: dict[str, dict[str, Any]] = {
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
    definition = _ENCODINGS[name]
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


# --- HTTP ------------------------------------------------------------------------------

_CONTENT_WORD = " hello"  # one token in both cl100k_base and o200k_base
_content_cache: dict[int, str] = {}


def _content(tokens: int) -> str:
    text = _content_cache.get(tokens)
    if text is None:
        text = _CONTENT_WORD * tokens
        if len(_content_cache) < 4096:
            _content_cache[tokens] = text
    return text


def _error(
    status: int, message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.json_response(body, status=status)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _max_tokens(body: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _BadRequest(f"{key} must be an integer >= 1", key)
        if value > MAX_TOKENS_LIMIT:
            raise _BadRequest(
                f"{key} is too large: {value}. This model supports at most "
                f"{MAX_TOKENS_LIMIT} completion tokens.",
                key,
            )
        return value
    return None


@dataclass(frozen=True, slots=True)
class _Call:
    """A request, whatever its vendor's format: its messages as OpenAI's, for counting."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    n: int


def _openai_call(body: Any, model: str | None = None) -> _Call:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    if body.get("stream"):
        raise _BadRequest("stream is not supported by this server", "stream")
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise _BadRequest("messages must be a non-empty array of objects", "messages")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise _BadRequest("n must be an integer between 1 and 128", "n")
    return _Call(model, messages, _max_tokens(body, ("max_tokens", "max_completion_tokens")), n)


def _anthropic_call(body: Any) -> _Call:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model: Field required", "model")
    if body.get("stream"):
        raise _BadRequest("stream is not supported by this server", "stream")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise _BadRequest("messages: must be a non-empty list of objects", "messages")
    max_tokens = _max_tokens(body, ("max_tokens",))
    if max_tokens is None:
        raise _BadRequest("max_tokens: Field required", "max_tokens")
    messages = [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in raw]
    system = body.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return _Call(model, messages, max_tokens, 1)


def _gemini_call(body: Any, model: str) -> _Call:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest("contents is not specified", "contents")
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    for item in ([system] if isinstance(system, dict) else []) + contents:
        if not isinstance(item, dict):
            raise _BadRequest("contents must be a list of objects", "contents")
        parts = item.get("parts")
        if not isinstance(parts, list):
            parts = []
        text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        messages.append({"role": str(item.get("role", "user")), "content": text})
    config = body.get("generationConfig") or body.get("generation_config") or {}
    keys = ("maxOutputTokens", "max_output_tokens")
    max_tokens = _max_tokens(config, keys) if isinstance(config, dict) else None
    return _Call(model, messages, max_tokens, 1)


@dataclass(frozen=True, slots=True)
class _Usage:
    """One reply's token counts, the breakdown applied (see ``FakeProviderConfig``)."""

    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    audio_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    audio_completion_tokens: int = 0


def _usage(
    config: FakeProviderConfig, prompt_tokens: int, content_tokens: int, cap: int | None
) -> _Usage:
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
    return _Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=content_tokens + reasoning,
        cache_read_tokens=cached,
        cache_creation_tokens=written,
        cache_creation_1h_tokens=written_1h,
        audio_prompt_tokens=audio_in,
        reasoning_tokens=reasoning,
        audio_completion_tokens=audio_out,
    )


def _openai_usage(usage: _Usage) -> dict[str, Any]:
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


def _anthropic_usage(usage: _Usage) -> dict[str, Any]:
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


def _gemini_usage(usage: _Usage) -> dict[str, Any]:
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


class _App:
    """The request handlers; state is the config, the stats and one RNG."""

    def __init__(self, config: FakeProviderConfig) -> None:
        self.config = config
        self.stats = FakeProviderStats()
        self.rng = random.Random(config.seed)

    def _count(self, status: int, model: str | None) -> None:
        stats = self.stats
        stats.requests_total += 1
        stats.by_status[status] += 1
        if model is not None:
            stats.by_model[model] += 1

    async def chat_completions(self, request: web.Request) -> web.Response:
        deployment = request.match_info.get("deployment")
        return await self._serve(request, "openai", deployment)

    async def messages(self, request: web.Request) -> web.Response:
        return await self._serve(request, "anthropic", None)

    async def generate_content(self, request: web.Request) -> web.Response:
        model, _, action = request.match_info["model_action"].partition(":")
        if action != "generateContent":
            self._count(404, None)
            return _error(404, f"unknown method {action!r}", "not_found")
        return await self._serve(request, "gemini", model)

    def _sent_key(self, request: web.Request, vendor: Vendor) -> str:
        headers = request.headers
        if vendor == "anthropic":
            return headers.get("x-api-key", "")
        if vendor == "gemini":
            return headers.get("x-goog-api-key", request.query.get("key", ""))
        if "api-key" in headers:  # Azure OpenAI
            return headers["api-key"]
        return headers.get("Authorization", "").removeprefix("Bearer ")

    async def _serve(
        self, request: web.Request, vendor: Vendor, path_model: str | None
    ) -> web.Response:
        config = self.config
        self.stats.requests_received += 1
        if config.api_key is not None:
            sent = self._sent_key(request, vendor)
            if sent != config.api_key:
                self._count(401, None)
                return _error(
                    401,
                    f"Incorrect API key provided: {sent}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._count(400, None)
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        try:
            if vendor == "anthropic":
                call = _anthropic_call(body)
            elif vendor == "gemini":
                call = _gemini_call(body, path_model or "")
            else:
                call = _openai_call(body, path_model)
        except _BadRequest as exc:
            model_seen = body.get("model") if isinstance(body, dict) else None
            self._count(400, model_seen if isinstance(model_seen, str) else None)
            return _error(400, str(exc), "invalid_request_error", param=exc.param)
        model = call.model

        delay_s = config.latency_s
        if config.latency_jitter_s:
            delay_s += self.rng.random() * config.latency_jitter_s
        if delay_s > 0:
            await asyncio.sleep(delay_s)

        if config.rate_429 or config.error_rate:
            draw = self.rng.random()
            if draw < config.rate_429:
                self._count(429, model)
                response = _error(
                    429,
                    "Rate limit reached for requests. Please try again later.",
                    "requests",
                    code="rate_limit_exceeded",
                )
                response.headers["Retry-After"] = str(math.ceil(config.retry_after_s))
                response.headers["retry-after-ms"] = str(int(config.retry_after_s * 1000))
                return response
            if draw < config.rate_429 + config.error_rate:
                self._count(500, model)
                return _error(
                    500, "The server had an error processing your request.", "server_error"
                )

        prompt_tokens = config.report_prompt_tokens or count_prompt_tokens(
            call.messages, model, config.count_tokens
        )
        max_tokens = call.max_tokens
        per_choice = (
            config.output_tokens if max_tokens is None else min(max_tokens, config.output_tokens)
        )
        truncated = max_tokens is not None and max_tokens < config.output_tokens
        cap = None if max_tokens is None else max_tokens * call.n
        usage = _usage(config, prompt_tokens, per_choice * call.n, cap)
        content = _content(per_choice)
        if vendor == "anthropic":
            payload = self._anthropic_reply(model, content, truncated, usage)
        elif vendor == "gemini":
            payload = self._gemini_reply(model, content, truncated, usage)
        else:
            payload = self._openai_reply(model, content, truncated, call.n, usage)
        self._count(200, model)
        stats = self.stats
        stats.completions_succeeded += 1
        stats.prompt_tokens_total += usage.prompt_tokens
        stats.completion_tokens_total += usage.completion_tokens
        return web.json_response(payload)

    def _openai_reply(
        self, model: str, content: str, truncated: bool, n: int, usage: _Usage
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
                for i in range(n)
            ],
            "system_fingerprint": "fp_fake",
        }
        if not self.config.omit_usage:
            payload["usage"] = _openai_usage(usage)
        return payload

    def _anthropic_reply(
        self, model: str, content: str, truncated: bool, usage: _Usage
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": content}],
            "stop_reason": "max_tokens" if truncated else "end_turn",
            "stop_sequence": None,
        }
        if not self.config.omit_usage:
            payload["usage"] = _anthropic_usage(usage)
        return payload

    def _gemini_reply(
        self, model: str, content: str, truncated: bool, usage: _Usage
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": content}]},
                    "finishReason": "MAX_TOKENS" if truncated else "STOP",
                    "index": 0,
                }
            ],
            "modelVersion": model,
            "responseId": uuid.uuid4().hex,
        }
        if not self.config.omit_usage:
            payload["usageMetadata"] = _gemini_usage(usage)
        return payload

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "fake-provider"}
            for model in self.config.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_dict())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response(self.stats.to_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        if not isinstance(changes, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        try:
            self.update_config(**changes)
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc), "invalid_request_error")
        return web.json_response(self.config.to_dict())

    def update_config(self, **changes: Any) -> None:
        """Validate ``changes`` as a whole, then apply them to the live config in place."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(FakeProviderConfig)}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        updated = dataclasses.replace(self.config, **changes)
        for f in dataclasses.fields(FakeProviderConfig):
            setattr(self.config, f.name, getattr(updated, f.name))
        if "seed" in changes:
            self.rng.seed(updated.seed)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/chat/completions", self.chat_completions)
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self.chat_completions
        )
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/models/{model_action}", self.generate_content)
        app.router.add_post("/v1beta/models/{model_action}", self.generate_content)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stats/reset", self.reset_stats)
        app.router.add_post("/config", self.set_config)
        return app


class FakeProviderServer:
    """A running fake provider. ``url`` is the ``api_base`` to give litellm for ``openai/``
    and ``azure/`` models, ``root_url`` the one for ``anthropic/`` and ``gemini/`` models
    (litellm appends ``/v1/messages`` or ``/models/...`` itself)."""

    def __init__(self, app: _App, runner: web.AppRunner, host: str, port: int) -> None:
        self._app = app
        self._runner = runner
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}/v1"
        self.root_url = f"http://{host}:{port}"

    @property
    def config(self) -> FakeProviderConfig:
        return self._app.config

    @property
    def stats(self) -> FakeProviderStats:
        return self._app.stats

    def update_config(self, **changes: Any) -> None:
        """Change settings while the server runs (the in-process twin of POST /config)."""
        self._app.update_config(**changes)

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_fake_provider(
    config: FakeProviderConfig, host: str = "127.0.0.1", port: int = 0
) -> FakeProviderServer:
    """Start serving on ``host:port`` (``port=0`` picks a free port) and return at once."""
    app = _App(config)
    if config.count_tokens == "exact":
        # Build both encoders before the first request, not inside its handler.
        for name in _ENCODINGS:
            encoding_for(name)
    # In-flight replies (a slow fake's latency) get a short grace on stop, not 60 s.
    runner = web.AppRunner(
        app.application(), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    return FakeProviderServer(app, runner, host, bound_port)


def serve(config: FakeProviderConfig, host: str = "127.0.0.1", port: int = 8088) -> None:
    """Run the fake provider until interrupted (the ``budget-worker fake-provider`` command)."""

    async def main() -> None:
        server = await start_fake_provider(config, host, port)
        print(f"fake provider listening on {server.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def run_fake_provider_cli(
    *,
    host: str = "127.0.0.1",
    port: int = 8088,
    latency_ms: float = 0.0,
    latency_jitter_ms: float = 0.0,
    error_rate: float = 0.0,
    rate_429: float = 0.0,
    retry_after_s: float = 1.0,
    output_tokens: int = 16,
    seed: int | None = None,
    count_tokens: CountTokens = "exact",
) -> None:
    """``budget-worker fake-provider``: CLI flags (milliseconds) to a config, then serve."""
    config = FakeProviderConfig(
        latency_s=latency_ms / 1000,
        latency_jitter_s=latency_jitter_ms / 1000,
        error_rate=error_rate,
        rate_429=rate_429,
        retry_after_s=retry_after_s,
        output_tokens=output_tokens,
        seed=seed,
        count_tokens=count_tokens,
    )
    serve(config, host, port)
