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

The modules: ``config`` (the config and the counters), ``tokens`` (counting),
``formats`` (each vendor's request and usage format), ``app`` (the handlers); this one
starts and serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from worker.dev.fake_provider.app import FakeProviderApp
from worker.dev.fake_provider.config import (
    MAX_TOKENS_LIMIT,
    CountTokens,
    FakeProviderConfig,
    FakeProviderStats,
    Vendor,
)
from worker.dev.fake_provider.tokens import (
    ENCODINGS,
    count_prompt_tokens,
    encoding_for,
    encoding_name_for_model,
)

__all__ = [
    "MAX_TOKENS_LIMIT",
    "CountTokens",
    "FakeProviderApp",
    "FakeProviderConfig",
    "FakeProviderServer",
    "FakeProviderStats",
    "Vendor",
    "count_prompt_tokens",
    "encoding_for",
    "encoding_name_for_model",
    "serve",
    "start_fake_provider",
]


class FakeProviderServer:
    """A running fake provider. ``url`` is the ``api_base`` to give litellm for ``openai/``
    and ``azure/`` models, ``root_url`` the one for ``anthropic/`` and ``gemini/`` models
    (litellm appends ``/v1/messages`` or ``/models/...`` itself)."""

    def __init__(self, app: FakeProviderApp, runner: web.AppRunner, host: str, port: int) -> None:
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
    app = FakeProviderApp(config)
    if config.count_tokens == "exact":
        # Build both encoders before the first request, not inside its handler.
        for name in ENCODINGS:
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
