"""Provider.complete through litellm.acompletion over real HTTP to the fake provider:
responses and usage, bounded retries, error translation, and no secret in an error
(redaction itself is tested in test_redact)."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import litellm.exceptions as litellm_exceptions
import openai
import pytest
from aiohttp import web

from worker import startup
from worker.dev.fake_provider import FakeProviderConfig, FakeProviderServer, start_fake_provider
from worker.errors import PermanentProviderError, ProviderError, RetryableProviderError
from worker.models import ModelEntry, load_models
from worker.pricebook import price_of
from worker.prices import TokenUsage
from worker.provider import (
    Completion,
    Provider,
    litellm,
    translate_error,
)

DATA = Path(__file__).parent / "data"
SECRET = "sk-live-SECRET123"
PROMPT = [{"role": "user", "content": f"Please keep this private: {SECRET} and my diary."}]


@pytest.fixture(autouse=True, scope="module")
def prepared() -> None:
    """litellm set up as the worker sets it up."""
    startup.prepare()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviderServer]:
    server = await start_fake_provider(FakeProviderConfig(output_tokens=12, retry_after_s=0))
    try:
        yield server
    finally:
        await server.stop()


def entry_for(url: str, *, api_key: str = "sk-fake", name: str = "gpt-4o-mini") -> ModelEntry:
    models = load_models(DATA / "models.yaml", {"BW_TEST_FAKE_API_BASE": url}, price_of)
    entry = models.get(name)
    assert entry is not None
    return ModelEntry(
        name=entry.name,
        litellm_params={**entry.litellm_params, "api_key": api_key},
        price=entry.price,
        max_output_tokens=entry.max_output_tokens,
        tokenizer_family=entry.tokenizer_family,
    )


def provider(max_retries: int = 2, *, timeout_s: float = 10.0) -> Provider:
    return Provider(timeout_s=timeout_s, max_retries=max_retries, backoff_s=0.0, backoff_max_s=5.0)


class Hook:
    """Records before_retry calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    async def __call__(self, attempt: int, delay_s: float) -> None:
        self.calls.append((attempt, delay_s))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_complete_returns_the_response_and_the_providers_usage(
    fake: FakeProviderServer,
) -> None:
    messages = [{"role": "user", "content": "Say hello."}]

    completion = await provider().complete(entry_for(fake.url), messages, {}, 5)

    assert isinstance(completion, Completion)
    assert completion.attempts == 1
    assert completion.completion_tokens == 5
    assert completion.prompt_tokens == fake.stats.prompt_tokens_total > 0
    response = completion.response
    assert isinstance(response, dict)
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"] == " hello" * 5
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["prompt_tokens"] == completion.prompt_tokens
    assert response["usage"]["completion_tokens"] == 5


async def test_cost_from_the_entry_price_matches_the_token_counts(
    fake: FakeProviderServer,
) -> None:
    entry = entry_for(fake.url)
    # gpt-4o-mini in litellm's map: 0.15 USD per 1M prompt tokens, 0.60 per 1M completion.
    assert entry.price.input_usd_per_token == Decimal("0.00000015")
    assert entry.price.output_usd_per_token == Decimal("0.0000006")

    completion = await provider().complete(entry, PROMPT, {}, 7)

    assert completion.usage == TokenUsage(completion.prompt_tokens, completion.completion_tokens)
    cost_nanousd = entry.price.cost_nanousd(completion.usage)
    assert cost_nanousd == completion.prompt_tokens * 150 + completion.completion_tokens * 600


async def test_job_params_reach_the_provider(fake: FakeProviderServer) -> None:
    completion = await provider().complete(
        entry_for(fake.url), PROMPT, {"n": 2, "temperature": 0.5}, 4
    )

    assert len(completion.response["choices"]) == 2
    assert completion.completion_tokens == 8


async def test_job_params_cannot_override_the_model_list(fake: FakeProviderServer) -> None:
    hostile = {"api_base": f"http://127.0.0.1:{free_port()}/v1", "model": "openai/other"}

    completion = await provider().complete(entry_for(fake.url), PROMPT, hostile, 4)

    assert completion.attempts == 1
    assert fake.stats.by_model == {"gpt-4o-mini": 1}


async def test_429_storm_is_retried_max_retries_times_then_raised(
    fake: FakeProviderServer,
) -> None:
    fake.update_config(rate_429=1.0)
    hook = Hook()

    with pytest.raises(RetryableProviderError) as caught:
        await provider(max_retries=3).complete(
            entry_for(fake.url), PROMPT, {}, 5, before_retry=hook
        )

    error = caught.value
    assert error.error_type == "rate_limited"
    assert error.status_code == 429
    assert error.retryable
    assert error.attempts == 4
    assert [attempt for attempt, _ in hook.calls] == [1, 2, 3]
    assert fake.stats.requests_total == 4  # litellm and openai retried nothing themselves


async def test_retry_after_of_a_429_sets_the_delay_capped(fake: FakeProviderServer) -> None:
    fake.update_config(rate_429=1.0, retry_after_s=0.05)
    hook = Hook()
    with pytest.raises(RetryableProviderError):
        await provider(max_retries=1).complete(
            entry_for(fake.url), PROMPT, {}, 5, before_retry=hook
        )
    assert hook.calls == [(1, 0.05)]

    fake.update_config(retry_after_s=60)
    hook = Hook()
    capped = Provider(timeout_s=10, max_retries=1, backoff_s=0, backoff_max_s=0.02)
    with pytest.raises(RetryableProviderError):
        await capped.complete(entry_for(fake.url), PROMPT, {}, 5, before_retry=hook)
    assert hook.calls == [(1, 0.02)]


async def test_500_is_retryable_server_error(fake: FakeProviderServer) -> None:
    fake.update_config(error_rate=1.0)

    with pytest.raises(RetryableProviderError) as caught:
        await provider(max_retries=2).complete(entry_for(fake.url), PROMPT, {}, 5)

    assert caught.value.error_type == "server_error"
    assert caught.value.status_code == 500
    assert caught.value.attempts == 3
    assert fake.stats.by_status == {500: 3}


async def test_a_retry_that_succeeds_reports_its_attempts(fake: FakeProviderServer) -> None:
    fake.update_config(error_rate=1.0)

    async def heal(attempt: int, delay_s: float) -> None:
        fake.update_config(error_rate=0.0)

    completion = await provider().complete(entry_for(fake.url), PROMPT, {}, 5, before_retry=heal)

    assert completion.attempts == 2
    assert fake.stats.by_status == {500: 1, 200: 1}


async def test_400_is_permanent_and_not_retried(fake: FakeProviderServer) -> None:
    hook = Hook()

    with pytest.raises(PermanentProviderError) as caught:
        await provider(max_retries=3).complete(
            entry_for(fake.url), PROMPT, {}, 2_000_000, before_retry=hook
        )

    assert caught.value.error_type == "bad_request"
    assert caught.value.status_code == 400
    assert caught.value.attempts == 1
    assert hook.calls == []
    assert fake.stats.requests_total == 1


async def test_a_stream_param_is_dropped_not_sent(fake: FakeProviderServer) -> None:
    completion = await provider().complete(entry_for(fake.url), PROMPT, {"stream": True}, 3)

    assert completion.completion_tokens == 3


async def test_authentication_failure_is_permanent(fake: FakeProviderServer) -> None:
    fake.update_config(api_key="sk-the-right-one")

    with pytest.raises(PermanentProviderError) as caught:
        await provider().complete(entry_for(fake.url, api_key=SECRET), PROMPT, {}, 5)

    assert caught.value.error_type == "authentication_error"
    assert caught.value.status_code == 401
    assert caught.value.attempts == 1


async def test_refused_connection_is_a_retryable_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    hook = Hook()

    with pytest.raises(RetryableProviderError) as caught:
        await provider(max_retries=1).complete(entry_for(url), PROMPT, {}, 5, before_retry=hook)

    assert caught.value.error_type == "connection_error"
    assert caught.value.status_code is None
    assert caught.value.attempts == 2
    assert len(hook.calls) == 1


async def test_slow_provider_is_a_retryable_timeout(fake: FakeProviderServer) -> None:
    fake.update_config(latency_s=2.0)

    with pytest.raises(RetryableProviderError) as caught:
        await provider(max_retries=0, timeout_s=0.2).complete(entry_for(fake.url), PROMPT, {}, 5)

    assert caught.value.error_type == "timeout"
    assert caught.value.status_code is None
    assert caught.value.attempts == 1


async def test_a_reply_trickled_byte_by_byte_still_ends_at_the_deadline() -> None:
    # litellm's timeout applies per read; a provider sending a byte now and then would
    # hold the call (and the reservation) indefinitely without the attempt's own deadline.
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(100):
            await response.write(b" ")
            await asyncio.sleep(0.1)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        started = time.monotonic()
        with pytest.raises(RetryableProviderError) as caught:
            await provider(max_retries=0, timeout_s=0.3).complete(
                entry_for(f"http://127.0.0.1:{port}/v1"), PROMPT, {}, 5
            )
        elapsed_s = time.monotonic() - started
    finally:
        await runner.cleanup()

    assert caught.value.error_type == "timeout"
    assert elapsed_s < 0.3 + 1.0 + 0.5


async def test_a_models_own_timeout_overrides_the_default(fake: FakeProviderServer) -> None:
    fake.update_config(latency_s=1.5)
    base = entry_for(fake.url)
    entry = ModelEntry(
        name=base.name,
        litellm_params={**base.litellm_params, "timeout": 0.2},
        price=base.price,
        max_output_tokens=None,
        tokenizer_family=base.tokenizer_family,
    )

    started = time.monotonic()
    with pytest.raises(RetryableProviderError) as caught:
        await provider(max_retries=0, timeout_s=30).complete(entry, PROMPT, {}, 5)

    assert caught.value.error_type == "timeout"
    assert time.monotonic() - started < 1.4


async def test_an_error_in_before_retry_stops_the_call(fake: FakeProviderServer) -> None:
    fake.update_config(error_rate=1.0)

    async def lease_lost(attempt: int, delay_s: float) -> None:
        raise LookupError("lease lost")

    with pytest.raises(LookupError):
        await provider(max_retries=3).complete(
            entry_for(fake.url), PROMPT, {}, 5, before_retry=lease_lost
        )

    assert fake.stats.requests_total == 1


async def test_missing_usage_is_reported_as_none_not_guessed(fake: FakeProviderServer) -> None:
    fake.update_config(omit_usage=True)

    completion = await provider().complete(entry_for(fake.url), PROMPT, {}, 5)

    assert completion.usage is None
    assert completion.prompt_tokens == completion.completion_tokens == 0
    assert completion.attempts == 1


async def test_cached_and_reasoning_tokens_reach_the_completions_usage(
    fake: FakeProviderServer,
) -> None:
    fake.update_config(usage_breakdown={"cache_read_tokens": 8, "reasoning_tokens": 3})

    completion = await provider().complete(entry_for(fake.url), PROMPT, {}, 20)

    assert completion.usage is not None
    assert completion.usage.cache_read_tokens == 8
    assert completion.usage.reasoning_tokens == 3
    assert completion.completion_tokens == 12 + 3  # the reply's 12, reasoning on top


@pytest.mark.parametrize(
    "fault",
    [
        {"rate_429": 1.0},
        {"error_rate": 1.0},
        {"api_key": "sk-the-right-one"},  # the fake's 401 echoes the key it was sent
        {},  # with max_tokens too large: 400
    ],
)
async def test_error_messages_hold_neither_the_key_nor_the_prompt(
    fake: FakeProviderServer, fault: dict[str, Any]
) -> None:
    fake.update_config(**fault)

    with pytest.raises(ProviderError) as caught:
        await provider(max_retries=0).complete(
            entry_for(fake.url, api_key=SECRET), PROMPT, {}, 2_000_000 if not fault else 5
        )

    text = f"{caught.value} {caught.value!r}"
    assert "SECRET123" not in text
    assert "diary" not in text
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def litellm_response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://provider.invalid/v1"))


@pytest.mark.parametrize(
    ("exception", "error_type", "retryable"),
    [
        (
            litellm.ContextWindowExceededError("too long", "gpt-4o-mini", "openai"),
            "context_window_exceeded",
            False,
        ),
        (litellm.BadRequestError("bad", "gpt-4o-mini", "openai"), "bad_request", False),
        (
            litellm.AuthenticationError("no", "openai", "gpt-4o-mini"),
            "authentication_error",
            False,
        ),
        (
            litellm.PermissionDeniedError(
                "no", "openai", "gpt-4o-mini", response=litellm_response(403)
            ),
            "permission_denied",
            False,
        ),
        (litellm.NotFoundError("gone", "gpt-4o-mini", "openai"), "not_found", False),
        (litellm.RateLimitError("slow down", "openai", "gpt-4o-mini"), "rate_limited", True),
        (litellm.Timeout("late", "gpt-4o-mini", "openai"), "timeout", True),
        (
            litellm.APIConnectionError("reset", "openai", "gpt-4o-mini"),
            "connection_error",
            True,
        ),
        (
            litellm.InternalServerError("boom", "openai", "gpt-4o-mini"),
            "server_error",
            True,
        ),
        (
            litellm.ServiceUnavailableError("down", "openai", "gpt-4o-mini"),
            "server_error",
            True,
        ),
        (litellm.BadGatewayError("gateway", "openai", "gpt-4o-mini"), "server_error", True),
        (
            litellm.APIError(503, "upstream", "openai", "gpt-4o-mini"),
            "server_error",
            True,
        ),
        (litellm.APIError(418, "teapot", "openai", "gpt-4o-mini"), "provider_error", False),
        (RuntimeError("something else"), "provider_error", False),
    ],
)
def test_litellm_errors_translate_to_the_most_specific_worker_error(
    exception: Exception, error_type: str, retryable: bool
) -> None:
    error = translate_error(exception)

    assert error.error_type == error_type
    assert error.retryable is retryable
    assert isinstance(error, RetryableProviderError if retryable else PermanentProviderError)
    assert type(exception).__name__ in str(error)


def test_attempt_limit_is_the_models_timeout_plus_a_grace() -> None:
    p = Provider(timeout_s=30, max_retries=0, backoff_s=0, backoff_max_s=0)
    base = entry_for("http://127.0.0.1:9/v1")
    own = ModelEntry(
        name=base.name,
        litellm_params={**base.litellm_params, "timeout": 5},
        price=base.price,
        max_output_tokens=None,
        tokenizer_family=base.tokenizer_family,
    )

    assert p.attempt_limit_s() == p.attempt_limit_s(base) == 31.0
    assert p.attempt_limit_s(own) == 6.0


def test_backoff_grows_exponentially_with_bounded_jitter_and_a_cap() -> None:
    p = Provider(timeout_s=1, max_retries=5, backoff_s=0.5, backoff_max_s=3.0)

    for _ in range(50):
        assert 0.5 <= p.retry_delay_s(1) <= 0.75
        assert 1.0 <= p.retry_delay_s(2) <= 1.5
        assert p.retry_delay_s(4) == 3.0
    assert p.retry_delay_s(1, retry_after_s=2.0) == 2.0
    assert p.retry_delay_s(1, retry_after_s=30.0) == 3.0


# --- Every foreign exception type, pinned ------------------------------------------------
# Each exception class litellm, openai and httpx export (and the built-ins a call can
# raise), as translate_error maps a bare instance of it: (error_type, retryable,
# status_code). A new class in a library upgrade, or a changed mapping, fails here.

ERROR_TABLE: list[tuple[type[Exception], str, bool, int | None]] = [
    (litellm_exceptions.APIConnectionError, "connection_error", True, None),
    (litellm_exceptions.APIError, "provider_error", False, None),
    (litellm_exceptions.APIResponseValidationError, "provider_error", False, None),
    (litellm_exceptions.AuthenticationError, "authentication_error", False, 401),
    (litellm_exceptions.BadGatewayError, "server_error", True, None),
    (litellm_exceptions.BadRequestError, "bad_request", False, 400),
    (litellm_exceptions.BlockedPiiEntityError, "provider_error", False, None),
    (litellm_exceptions.BudgetExceededError, "provider_error", False, None),
    (litellm_exceptions.CallerCredentialAuthenticationError, "authentication_error", False, 401),
    (litellm_exceptions.CallerCredentialRateLimitError, "rate_limited", True, 429),
    (litellm_exceptions.ContentPolicyViolationError, "bad_request", False, 400),
    (litellm_exceptions.ContextWindowExceededError, "context_window_exceeded", False, 400),
    (litellm_exceptions.EndpointNotSupportedByModelError, "bad_request", False, 400),
    (litellm_exceptions.GuardrailRaisedException, "provider_error", False, None),
    (litellm_exceptions.ImageFetchError, "bad_request", False, 400),
    (litellm_exceptions.InternalServerError, "server_error", True, None),
    (litellm_exceptions.InvalidRequestError, "provider_error", False, 400),
    (litellm_exceptions.JSONSchemaValidationError, "provider_error", False, None),
    (litellm_exceptions.LiteLLMUnknownProvider, "bad_request", False, 400),
    (litellm_exceptions.MalformedRequestFieldError, "bad_request", False, 400),
    (litellm_exceptions.MidStreamFallbackError, "server_error", True, None),
    (litellm_exceptions.MockException, "provider_error", False, None),
    (litellm_exceptions.ModelNotMappedError, "provider_error", False, None),
    (litellm_exceptions.ModifyResponseException, "provider_error", False, None),
    (litellm_exceptions.NotFoundError, "not_found", False, 404),
    (litellm_exceptions.OpenAIError, "provider_error", False, None),
    (litellm_exceptions.PaymentRequiredError, "bad_request", False, 400),
    (litellm_exceptions.PermissionDeniedError, "permission_denied", False, 403),
    (litellm_exceptions.RateLimitError, "rate_limited", True, 429),
    (litellm_exceptions.RejectedRequestError, "bad_request", False, 400),
    (litellm_exceptions.SensitiveDataRouteException, "provider_error", False, None),
    (litellm_exceptions.ServiceUnavailableError, "server_error", True, None),
    (litellm_exceptions.Timeout, "timeout", True, None),
    (litellm_exceptions.UnprocessableEntityError, "provider_error", False, 422),
    (litellm_exceptions.UnsupportedEndpointError, "bad_request", False, 400),
    (litellm_exceptions.UnsupportedParamsError, "bad_request", False, 400),
    (litellm_exceptions.VectorStoreSearchError, "bad_request", False, 400),
    (openai.APIConnectionError, "connection_error", True, None),
    (openai.APIError, "provider_error", False, None),
    (openai.APIResponseValidationError, "provider_error", False, None),
    (openai.APIStatusError, "provider_error", False, None),
    (openai.APITimeoutError, "timeout", True, None),
    (openai.AuthenticationError, "provider_error", False, 401),
    (openai.BadRequestError, "provider_error", False, 400),
    (openai.ConflictError, "provider_error", False, 409),
    (openai.ContentFilterFinishReasonError, "provider_error", False, None),
    (openai.InternalServerError, "provider_error", False, None),
    (openai.InvalidWebhookSignatureError, "provider_error", False, None),
    (openai.LengthFinishReasonError, "provider_error", False, None),
    (openai.NotFoundError, "provider_error", False, 404),
    (openai.OAuthError, "provider_error", False, 401),
    (openai.OpenAIError, "provider_error", False, None),
    (openai.PermissionDeniedError, "provider_error", False, 403),
    (openai.RateLimitError, "rate_limited", True, 429),
    (openai.UnprocessableEntityError, "provider_error", False, 422),
    (openai.WebSocketConnectionClosedError, "provider_error", False, None),
    (openai.WebSocketQueueFullError, "provider_error", False, None),
    (httpx.CloseError, "connection_error", True, None),
    (httpx.ConnectError, "connection_error", True, None),
    (httpx.ConnectTimeout, "timeout", True, None),
    (httpx.CookieConflict, "provider_error", False, None),
    (httpx.DecodingError, "provider_error", False, None),
    (httpx.HTTPError, "provider_error", False, None),
    (httpx.HTTPStatusError, "provider_error", False, None),
    (httpx.InvalidURL, "provider_error", False, None),
    (httpx.LocalProtocolError, "provider_error", False, None),
    (httpx.NetworkError, "connection_error", True, None),
    (httpx.PoolTimeout, "timeout", True, None),
    (httpx.ProtocolError, "provider_error", False, None),
    (httpx.ProxyError, "provider_error", False, None),
    (httpx.ReadError, "connection_error", True, None),
    (httpx.ReadTimeout, "timeout", True, None),
    (httpx.RemoteProtocolError, "provider_error", False, None),
    (httpx.RequestError, "provider_error", False, None),
    (httpx.RequestNotRead, "provider_error", False, None),
    (httpx.ResponseNotRead, "provider_error", False, None),
    (httpx.StreamClosed, "provider_error", False, None),
    (httpx.StreamConsumed, "provider_error", False, None),
    (httpx.StreamError, "provider_error", False, None),
    (httpx.TimeoutException, "timeout", True, None),
    (httpx.TooManyRedirects, "provider_error", False, None),
    (httpx.TransportError, "provider_error", False, None),
    (httpx.UnsupportedProtocol, "provider_error", False, None),
    (httpx.WriteError, "connection_error", True, None),
    (httpx.WriteTimeout, "timeout", True, None),
    (TimeoutError, "timeout", True, None),
    (ConnectionError, "provider_error", False, None),
    (OSError, "provider_error", False, None),
    (RuntimeError, "provider_error", False, None),
    (ValueError, "provider_error", False, None),
]


def bare(cls: type[Exception], status_code: int | None = None) -> Exception:
    """An instance of ``cls`` without its constructor (each library's takes other
    arguments): only what translate_error reads is set."""
    exc = cls.__new__(cls)
    exc.message = "boom"  # type: ignore[attr-defined]
    if status_code is not None:
        exc.status_code = status_code  # type: ignore[attr-defined]
    for name in ("num_retries", "max_retries", "litellm_debug_info", "llm_provider", "model"):
        setattr(exc, name, None)
    return exc


@pytest.mark.parametrize(
    ("cls", "error_type", "retryable", "status_code"),
    ERROR_TABLE,
    ids=[f"{cls.__module__}.{cls.__name__}" for cls, *_ in ERROR_TABLE],
)
def test_each_foreign_exception_type_translates_as_pinned(
    cls: type[Exception], error_type: str, retryable: bool, status_code: int | None
) -> None:
    error = translate_error(bare(cls))

    assert type(error) is (RetryableProviderError if retryable else PermanentProviderError)
    assert (error.error_type, error.retryable, error.status_code) == (
        error_type,
        retryable,
        status_code,
    )


def test_every_exception_class_of_litellm_openai_and_httpx_is_pinned() -> None:
    pinned = {cls for cls, *_ in ERROR_TABLE}
    exported = {
        value
        for module in (litellm_exceptions, openai, httpx)
        for name, value in list(vars(module).items())
        if inspect.isclass(value) and issubclass(value, Exception) and not name.startswith("_")
    }

    assert exported - pinned == set()


@pytest.mark.parametrize(
    ("exception", "error_type", "retryable", "status_code"),
    [
        (bare(litellm_exceptions.APIError, 429), "rate_limited", True, 429),
        (bare(litellm_exceptions.APIError, 500), "server_error", True, 500),
        (bare(litellm_exceptions.APIError, 503), "server_error", True, 503),
        (bare(litellm_exceptions.APIError, 418), "provider_error", False, 418),
        (bare(litellm_exceptions.APIError, 400), "provider_error", False, 400),
        (bare(openai.APIStatusError, 429), "rate_limited", True, 429),
        (bare(openai.InternalServerError, 500), "server_error", True, 500),
        (bare(openai.APIConnectionError, 502), "connection_error", True, None),
        (bare(litellm_exceptions.InternalServerError, 500), "server_error", True, 500),
        (bare(litellm_exceptions.ServiceUnavailableError, 503), "server_error", True, 503),
        (bare(litellm_exceptions.RateLimitError, 503), "rate_limited", True, 429),
        (bare(litellm_exceptions.Timeout, 408), "timeout", True, None),
        (bare(litellm_exceptions.APIConnectionError, 500), "connection_error", True, None),
        (bare(litellm_exceptions.BadRequestError, 422), "bad_request", False, 422),
        (bare(RuntimeError, 503), "provider_error", False, 503),
    ],
)
def test_status_codes_decide_for_api_errors_only(
    exception: Exception, error_type: str, retryable: bool, status_code: int | None
) -> None:
    error = translate_error(exception)

    assert (error.error_type, error.retryable, error.status_code) == (
        error_type,
        retryable,
        status_code,
    )


def caused_by(error: Exception, cause: BaseException, *, implicit: bool = False) -> Exception:
    if implicit:
        error.__context__ = cause
    else:
        error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exception", "error_type"),
    [
        (caused_by(bare(le_server), bare(cause)), expected)
        for le_server in (
            litellm_exceptions.InternalServerError,
            litellm_exceptions.ServiceUnavailableError,
            litellm_exceptions.BadGatewayError,
            litellm_exceptions.MidStreamFallbackError,
        )
        for cause, expected in (
            (openai.APITimeoutError, "timeout"),
            (litellm_exceptions.Timeout, "timeout"),
            (openai.APIConnectionError, "connection_error"),
            (litellm_exceptions.APIConnectionError, "connection_error"),
            (httpx.ConnectError, "server_error"),
            (TimeoutError, "server_error"),
        )
    ]
    + [
        (
            caused_by(
                bare(litellm_exceptions.InternalServerError),
                bare(openai.APITimeoutError),
                implicit=True,
            ),
            "timeout",
        ),
        (
            caused_by(
                bare(litellm_exceptions.InternalServerError),
                caused_by(bare(RuntimeError), bare(openai.APIConnectionError)),
            ),
            "connection_error",
        ),
        (
            caused_by(bare(litellm_exceptions.BadRequestError), bare(openai.APITimeoutError)),
            "bad_request",
        ),
        (caused_by(bare(RuntimeError), bare(openai.APIConnectionError)), "provider_error"),
    ],
)
def test_a_server_error_caused_by_a_timeout_or_lost_connection_is_named_for_its_cause(
    exception: Exception, error_type: str
) -> None:
    error = translate_error(exception)

    assert error.error_type == error_type
    assert error.retryable is (error_type != "bad_request" and error_type != "provider_error")
    if error_type in ("timeout", "connection_error"):
        assert error.status_code is None


def test_a_bare_timeout_says_the_attempt_ran_out_of_time() -> None:
    assert str(translate_error(TimeoutError())) == (
        "TimeoutError: no complete reply before the attempt's deadline"
    )


def test_the_translated_error_carries_the_calls_made() -> None:
    assert translate_error(RuntimeError("boom")).attempts == 1
    assert translate_error(bare(litellm_exceptions.RateLimitError), attempts=3).attempts == 3
