"""No secret and no prompt or response text leaks into logs, events or error messages.

Secret-looking values are planted everywhere a worker sees one: the provider key in
the model list, the Redis password in ``BW_REDIS_URL``, the Kafka SASL password (a
real SCRAM login), the prompt in every kind of message, and the response text in the
provider's answers. A provider that echoes what it was sent (the prompt, the key) in
its error messages is the worst case, and the one used here. The worker then runs
every path: success, provider 500 and 429 storms, bad request, bad key, a refused
budget, no budget, an invalid job, an unknown model and an undecodable record.

By design a succeeded event carries the response (and nothing else does), and a
dead-letter record carries the original bytes (its headers do not).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.gateway import SecureKafka
from tests.support import PRICE_IN, PRICE_OUT, captured_logs, in_process_workers, settings_from
from worker.connections import kafka_options
from worker.dev.servers import EmbeddedRedis, free_port
from worker.errors import ConfigError, PermanentProviderError
from worker.ledger import Budget, Ledger
from worker.models import load_models
from worker.pricebook import price_of
from worker.provider import Provider
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(150)


def _random() -> str:
    return uuid.uuid4().hex


PROVIDER_KEY = f"sk-live-PLANTED{_random()}"
REDIS_PASSWORD = f"PLANTED-REDIS-{_random()}"
KAFKA_PASSWORD = f"PLANTED-KAFKA-{_random()}"
PROMPT = f"PLANTED-PROMPT-{_random()}"
RESPONSE = f"PLANTED-RESPONSE-{_random()}"
SECRETS = {
    "provider key": PROVIDER_KEY,
    "redis password": REDIS_PASSWORD,
    "kafka password": KAFKA_PASSWORD,
    "prompt": PROMPT,
    "response": RESPONSE,
}
MODES = ("ok", "e500", "e429", "e400", "e401", "e400cut", "e400json")
KAFKA_USER = "bw-worker"


def leaks(text: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Which planted values occur in ``text``, whole or as any 12 characters of their
    random part (so a value cut short or split by a line break is still caught)."""
    found = []
    for name, value in SECRETS.items():
        if name in allowed:
            continue
        random_part = value[-32:]
        windows = {random_part[i : i + 12] for i in range(len(random_part) - 11)}
        if value in text or any(window in text for window in windows):
            found.append(name)
    return found


# --- a provider that answers with planted text and echoes what it is sent --------------


@dataclass
class EchoingProvider:
    """OpenAI-compatible; ``/<mode>/v1/chat/completions`` answers by mode: ``ok`` with the
    planted response, the others with errors that quote the request's prompt and key,
    as a careless provider might."""

    requests: dict[str, int] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        mode = request.match_info["mode"]
        self.requests[mode] = self.requests.get(mode, 0) + 1
        body = await request.json()
        sent_key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        prompt = json.dumps(body.get("messages"))
        if mode == "ok":
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "m"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"Sure. {RESPONSE}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
                }
            )
        content = str(body["messages"][-1].get("content"))
        status, message = {
            "e500": (500, f"The server had an error while processing {prompt}"),
            "e429": (429, f"Rate limit reached for key {sent_key} on request {prompt}"),
            "e400": (400, f"Invalid value for 'messages': {prompt}; key {sent_key}"),
            "e401": (401, f"Incorrect API key provided: {sent_key}."),
            # Quoting the prompt cut short, or JSON-escaped: no longer the prompt verbatim.
            "e400cut": (400, f"Invalid content starting with {content[:48]}"),
            "e400json": (400, f"Invalid content: {json.dumps(content)}"),
        }[mode]
        response = web.json_response(
            {"error": {"message": message, "type": "invalid_request_error", "code": None}},
            status=status,
        )
        if status == 429:
            response.headers["Retry-After"] = "0"
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{mode}/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def models_file(self, directory: Path) -> Path:
        entries = "".join(
            f"  - model_name: {mode}\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            f"      api_base: http://127.0.0.1:{self.port}/{mode}/v1\n"
            f"      api_key: {PROVIDER_KEY}\n"
            "    model_info:\n"
            f"      input_cost_per_token: {PRICE_IN}\n"
            f"      output_cost_per_token: {PRICE_OUT}\n"
            for mode in MODES
        )
        path = directory / "models.yaml"
        path.write_text("model_list:\n" + entries)
        return path


@pytest.fixture
async def provider() -> AsyncIterator[EchoingProvider]:
    server = EchoingProvider()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path, extra_args=["--requirepass", REDIS_PASSWORD])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def sasl_kafka(tmp_path: Path) -> AsyncIterator[SecureKafka]:
    broker = SecureKafka(tmp_path, users={KAFKA_USER: KAFKA_PASSWORD})
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- the run --------------------------------------------------------------------------------


def a_job(job_id: str, user_id: str, model: str = "ok", **fields: Any) -> dict[str, Any]:
    """The prompt in a system message, a user message and a text part."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "job_id": job_id,
        "user_id": user_id,
        "model": model,
        "messages": [
            {"role": "system", "content": f"Context: {PROMPT}"},
            {"role": "user", "content": PROMPT},
            {"role": "user", "content": [{"type": "text", "text": f"again {PROMPT}"}]},
        ],
        "max_tokens": 16,
    }
    body.update(fields)
    return body


async def read_topic(settings: Settings, topic: str, at_least: int, timeout_s: float) -> list[Any]:
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kafka_options(settings))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < at_least and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def test_no_secret_prompt_or_response_leaks_on_any_path(
    sasl_kafka: SecureKafka,
    secret_redis: EmbeddedRedis,
    provider: EchoingProvider,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    topics = {
        "jobs": "leak.jobs",
        "results": "llm.results.leak",
        "dlq": "leak.dlq",
        "budget": "leak.budget",
    }
    for name in topics.values():
        sasl_kafka.create_topic(name, partitions=2)
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{secret_redis.port}/0"
    env = {
        "BW_KAFKA_BOOTSTRAP": sasl_kafka.bootstrap,
        "BW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "BW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "BW_KAFKA_SASL_USERNAME": KAFKA_USER,
        "BW_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        "BW_REDIS_URL": redis_url,
        "BW_MODELS_FILE": str(provider.models_file(tmp_path)),
        "BW_JOBS_TOPIC": topics["jobs"],
        "BW_RESULTS_TOPIC": topics["results"],
        "BW_DLQ_TOPIC": topics["dlq"],
        "BW_BUDGET_EVENTS_TOPIC": topics["budget"],
        "BW_GROUP_ID": "leak-group",
        "BW_METRICS_PORT": str(free_port()),
        "BW_MODEL_TIMEOUT_S": "10",
        "BW_MODEL_MAX_RETRIES": "2",
        "BW_RETRY_BACKOFF_S": "0.01",
        "BW_RETRY_BACKOFF_MAX_S": "0.05",
        "BW_KAFKA_SESSION_TIMEOUT_MS": "3000",
    }
    settings = settings_from(env)
    ledger = Ledger.from_url(redis_url)
    try:
        await ledger.set_budget("rich", Budget(limit_nanousd=10_000_000_000))
        await ledger.set_budget("poor", Budget(limit_nanousd=1))
    finally:
        await ledger.close()
    jobs = [
        a_job("leak-ok", "rich"),
        a_job("leak-500", "rich", model="e500"),
        a_job("leak-429", "rich", model="e429"),
        a_job("leak-400", "rich", model="e400"),
        a_job("leak-401", "rich", model="e401"),
        a_job("leak-budget", "poor"),
        a_job("leak-nobudget", "stranger"),
        a_job("leak-unknown-model", "rich", model="no-such-model"),
        a_job("leak-invalid-param", "rich", params={"api_base": f"http://{PROMPT}.example"}),
        a_job(
            "leak-invalid-message",
            "rich",
            messages=[{"role": "user", "content": PROMPT, "api_key": PROMPT}],
        ),
    ]
    undecodable = f'{{"job_id": "leak-dlq", "messages": "{PROMPT}"'.encode()
    expected = {
        "leak-ok": ("completion.succeeded", None),
        "leak-500": ("completion.failed", "server_error"),
        "leak-429": ("completion.failed", "rate_limited"),
        "leak-400": ("completion.failed", "bad_request"),
        "leak-401": ("completion.failed", "authentication_error"),
        "leak-budget": ("completion.rejected", "budget_exceeded"),
        "leak-nobudget": ("completion.rejected", "no_budget"),
        "leak-unknown-model": ("completion.rejected", "unknown_model"),
        "leak-invalid-param": ("completion.rejected", "invalid_job"),
        "leak-invalid-message": ("completion.rejected", "invalid_job"),
    }
    capfd.readouterr()
    with captured_logs() as lines:
        async with in_process_workers(env):
            producer = AIOKafkaProducer(**kafka_options(settings))
            await producer.start()
            try:
                for body in jobs:
                    await producer.send_and_wait(
                        topics["jobs"], json.dumps(body).encode(), key=body["user_id"].encode()
                    )
                await producer.send_and_wait(topics["jobs"], undecodable, key=b"rich")
            finally:
                await producer.stop()
            results = await read_topic(settings, topics["results"], len(jobs), timeout_s=60)
            dead = await read_topic(settings, topics["dlq"], 1, timeout_s=20)
    printed = capfd.readouterr()
    # Everything the worker wrote: its log lines, and anything printed to stdout/stderr.
    log = "\n".join([*lines, printed.out, printed.err])

    events = {event["job_id"]: event for event in (json.loads(r.value) for r in results)}
    outcomes = {
        job_id: (event["type"], event.get("error_type") or event.get("reason"))
        for job_id, event in events.items()
    }
    assert outcomes == expected
    assert provider.requests == {"ok": 1, "e500": 3, "e429": 3, "e400": 1, "e401": 1}

    # Logs: nothing at all, on any path.
    assert "job succeeded" in log and "job sent to the DLQ" in log, "the log was captured"
    assert leaks(log) == []
    # Each job's one line says how long its model call took (retries included).
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    model_ms = {
        line["job_id"]: line.get("model_ms")
        for line in lines
        if line["msg"].startswith("job ") and "job_id" in line
    }
    assert model_ms["leak-ok"] > 0 and model_ms["leak-500"] > 0
    assert model_ms["leak-budget"] is None  # refused: no model call

    # Events: the response in the succeeded event's response field, nothing elsewhere.
    for job_id, event in events.items():
        rest = {k: v for k, v in event.items() if k != "response"}
        assert leaks(json.dumps(rest)) == [], job_id
        assert leaks(json.dumps(event.get("response")), allowed=frozenset({"response"})) == []
    assert RESPONSE in json.dumps(events["leak-ok"]["response"])
    for record in results:  # the raw bytes too (escaping aside)
        text = record.value.decode()
        allowed = (
            frozenset({"response"}) if b"completion.succeeded" in record.value else frozenset()
        )
        assert leaks(text, allowed) == []

    # Dead letters: the original bytes, untouched; headers that quote none of them.
    assert [record.value for record in dead] == [undecodable]
    headers = "\n".join(f"{k}={v.decode(errors='replace')}" for k, v in dead[0].headers)
    assert "error.message=" in headers and leaks(headers) == []

    # The detector finds what it looks for.
    assert leaks(undecodable.decode()) == ["prompt"]
    assert leaks(log + PROVIDER_KEY[:19]) == []  # the fixed prefix alone is no leak
    assert leaks(log + PROVIDER_KEY[-14:]) == ["provider key"]

    # The failures' messages say what failed without repeating what the provider quoted.
    for job_id in ("leak-429", "leak-400", "leak-401"):
        assert "[redacted]" in events[job_id]["error"], events[job_id]["error"]
    assert "api_base" in events["leak-invalid-param"]["detail"]
    assert "messages.0.api_key" in events["leak-invalid-message"]["detail"]


# --- start-up errors --------------------------------------------------------------------------


def test_invalid_settings_are_reported_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A settings error names the rule that failed, never the values it was given (a
    pydantic report quotes every input of a model-wide rule, passwords included).
    ``budget-worker run`` prints this message and exits 2."""
    monkeypatch.chdir(tmp_path)  # no .env file
    for name in [k for k in os.environ if k.startswith("BW_")]:
        monkeypatch.delenv(name)
    short_password = "pw-" + _random()[:6]
    monkeypatch.setenv("BW_KAFKA_SASL_PASSWORD", short_password)
    monkeypatch.setenv("BW_REDIS_URL", f"redis://u:{REDIS_PASSWORD}@127.0.0.1:1/0")
    monkeypatch.setenv("BW_LEASE_MS", "1000")  # shorter than a model call: refused
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "BW_LEASE_MS" in message
    assert short_password not in message
    assert leaks(message) == []


# --- a provider quoting the prompt in another form ---------------------------------------------


@pytest.mark.parametrize("mode", ["e400cut", "e400json"])
async def test_a_prompt_quoted_cut_short_or_escaped_is_redacted_too(
    provider: EchoingProvider, tmp_path: Path, mode: str
) -> None:
    """Replacing the prompt verbatim is not enough: a provider may quote the first
    characters of it, or its JSON form (other quotes, ``\\u00e9`` for ``é``)."""
    models = load_models(provider.models_file(tmp_path), {}, price_of)
    entry = models.get(mode)
    assert entry is not None
    caller = Provider(timeout_s=5, max_retries=0, backoff_s=0, backoff_max_s=0)
    prompt = f'Résumé «{PROMPT}» and "more" text'
    with pytest.raises(PermanentProviderError) as caught:
        await caller.complete(entry, [{"role": "user", "content": prompt}], {}, 16)
    assert caught.value.error_type == "bad_request"
    assert leaks(str(caught.value)) == [], str(caught.value)
