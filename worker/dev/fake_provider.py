"""An OpenAI-compatible chat completion server of our own, for tests, the demo and benchmarks.

litellm reaches it over real HTTP (``api_base`` = its ``.url``), so every layer between the
worker and a provider is exercised. Its usage numbers follow OpenAI's rules, so costs
computed from them are the costs a real call of the same shape would report.

Endpoints:

    POST /v1/chat/completions, /chat/completions   a completion (``stream`` is refused)
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
import importlib.util
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

MAX_TOKENS_LIMIT = 1_000_000
"""Requests asking for more output tokens than this are answered 400, like a real provider."""

CountTokens = Literal["exact", "fast"]


@dataclass(slots=True)
class FakeProviderConfig:
    """How the fake answers.

    Rates are fractions of requests in [0, 1]; a valid request draws one random number:
    below ``rate_429`` it gets a 429 (with Retry-After ``retry_after_s``), below
    ``rate_429 + error_rate`` a 500. Latency applies to every valid request, errors included.
    ``output_tokens`` is the natural length of a reply; a smaller ``max_tokens`` caps it.
    ``omit_usage`` leaves ``usage`` out of replies. When ``api_key`` is set, requests must
    send it as a Bearer token; others get a 401 that echoes the key they sent, unmasked,
    the way a careless provider might, so tests can check that error messages are redacted.
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

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        return data


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
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("litellm is not installed; its bundled tiktoken files are needed")
    return Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"


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


def _max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
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


def _validate(body: Any) -> tuple[str, list[dict[str, Any]], int | None, int]:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
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
    return model, messages, _max_tokens(body), n


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
        config = self.config
        self.stats.requests_received += 1
        if config.api_key is not None:
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
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
            model, messages, max_tokens, n = _validate(body)
        except _BadRequest as exc:
            model_seen = body.get("model") if isinstance(body, dict) else None
            self._count(400, model_seen if isinstance(model_seen, str) else None)
            return _error(400, str(exc), "invalid_request_error", param=exc.param)

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

        prompt_tokens = count_prompt_tokens(messages, model, config.count_tokens)
        per_choice = (
            config.output_tokens if max_tokens is None else min(max_tokens, config.output_tokens)
        )
        finish_reason = (
            "length" if max_tokens is not None and max_tokens < config.output_tokens else "stop"
        )
        content = _content(per_choice)
        completion_tokens = per_choice * n
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
                    "finish_reason": finish_reason,
                }
                for i in range(n)
            ],
            "system_fingerprint": "fp_fake",
        }
        if not config.omit_usage:
            payload["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        self._count(200, model)
        stats = self.stats
        stats.completions_succeeded += 1
        stats.prompt_tokens_total += prompt_tokens
        stats.completion_tokens_total += completion_tokens
        return web.json_response(payload)

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
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stats/reset", self.reset_stats)
        app.router.add_post("/config", self.set_config)
        return app


class FakeProviderServer:
    """A running fake provider. ``url`` is the base URL to give litellm as ``api_base``."""

    def __init__(self, app: _App, runner: web.AppRunner, host: str, port: int) -> None:
        self._app = app
        self._runner = runner
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}/v1"

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
