"""The fake provider's request handlers: authentication, faults (errors, 429s, latency),
the answer in the caller's vendor format, and the counters."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
import uuid
from typing import Any

from aiohttp import web

from worker.dev.fake_provider.config import FakeProviderConfig, FakeProviderStats, Vendor
from worker.dev.fake_provider.formats import (
    BadRequest,
    Call,
    Usage,
    anthropic_call,
    anthropic_usage,
    content_of,
    error_response,
    gemini_call,
    gemini_usage,
    openai_call,
    openai_usage,
    usage_for,
)
from worker.dev.fake_provider.tokens import count_prompt_tokens


class FakeProviderApp:
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
            return error_response(404, f"unknown method {action!r}", "not_found")
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
        self.stats.requests_received += 1
        refused = self._unauthorized(request, vendor)
        if refused is not None:
            return refused
        call = self._call(await request.read(), vendor, path_model)
        if isinstance(call, web.Response):
            return call
        await self._latency()
        fault = self._fault(call.model)
        if fault is not None:
            return fault
        return self._answer(vendor, call)

    def _unauthorized(self, request: web.Request, vendor: Vendor) -> web.Response | None:
        """A 401 when an API key is configured and the request sent another."""
        if self.config.api_key is None:
            return None
        sent = self._sent_key(request, vendor)
        if sent == self.config.api_key:
            return None
        self._count(401, None)
        return error_response(
            401,
            f"Incorrect API key provided: {sent}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            code="invalid_api_key",
        )

    def _call(self, raw: bytes, vendor: Vendor, path_model: str | None) -> Call | web.Response:
        """The request read in its vendor's format, else the 400 that says why not."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._count(400, None)
            return error_response(
                400, "The request body is not valid JSON.", "invalid_request_error"
            )
        try:
            if vendor == "anthropic":
                return anthropic_call(body)
            if vendor == "gemini":
                return gemini_call(body, path_model or "")
            return openai_call(body, path_model)
        except BadRequest as exc:
            model_seen = body.get("model") if isinstance(body, dict) else None
            self._count(400, model_seen if isinstance(model_seen, str) else None)
            return error_response(400, str(exc), "invalid_request_error", param=exc.param)

    async def _latency(self) -> None:
        delay_s = self.config.latency_s
        if self.config.latency_jitter_s:
            delay_s += self.rng.random() * self.config.latency_jitter_s
        if delay_s > 0:
            await asyncio.sleep(delay_s)

    def _fault(self, model: str) -> web.Response | None:
        """A drawn 429 or 500, at the configured rates; None for a normal answer."""
        config = self.config
        if not (config.rate_429 or config.error_rate):
            return None
        draw = self.rng.random()
        if draw < config.rate_429:
            self._count(429, model)
            response = error_response(
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
            return error_response(
                500, "The server had an error processing your request.", "server_error"
            )
        return None

    def _answer(self, vendor: Vendor, call: Call) -> web.Response:
        config, model = self.config, call.model
        prompt_tokens = config.report_prompt_tokens or count_prompt_tokens(
            call.messages, model, config.count_tokens
        )
        max_tokens = call.max_tokens
        per_choice = (
            config.output_tokens if max_tokens is None else min(max_tokens, config.output_tokens)
        )
        truncated = max_tokens is not None and max_tokens < config.output_tokens
        cap = None if max_tokens is None else max_tokens * call.n
        usage = usage_for(config, prompt_tokens, per_choice * call.n, cap)
        content = content_of(per_choice)
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
        self, model: str, content: str, truncated: bool, n: int, usage: Usage
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
            payload["usage"] = openai_usage(usage)
        return payload

    def _anthropic_reply(
        self, model: str, content: str, truncated: bool, usage: Usage
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
            payload["usage"] = anthropic_usage(usage)
        return payload

    def _gemini_reply(
        self, model: str, content: str, truncated: bool, usage: Usage
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
            payload["usageMetadata"] = gemini_usage(usage)
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
            return error_response(
                400, "The request body is not valid JSON.", "invalid_request_error"
            )
        if not isinstance(changes, dict):
            return error_response(
                400, "The request body must be a JSON object.", "invalid_request_error"
            )
        try:
            self.update_config(**changes)
        except (TypeError, ValueError) as exc:
            return error_response(400, str(exc), "invalid_request_error")
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
