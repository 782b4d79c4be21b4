"""Hostile input: every input limit refuses by name, no job field reaches litellm's
own parameters, and fuzzed payloads (bytes, broken JSON, deep nesting, huge numbers,
invalid UTF-8, lone surrogates, very long strings) only ever end as a job, an
``UndecodableJob`` or an ``InvalidJob``: through ``parse_job`` (10,000 examples) and
through the broker to a running worker (1,000 records, none charged, the worker
still serving afterwards).

One payload generator serves both: ``payload(draw, index)`` takes its choices from a
``Draw``, which Hypothesis drives in the property test (and shrinks) and a seeded
``random.Random`` drives for the broker run.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.jobs import CompletionJob, InvalidJob, JobLimits, UndecodableJob, parse_job
from tests.support import (
    Topics,
    in_process_workers,
    job,
    produce,
    read_all,
    spent,
    wait_for_events,
    worker_env,
    write_models_file,
)
from worker.dev.servers import EmbeddedKafka
from worker.keys import OUTBOX_SWEEP
from worker.ledger import Ledger

T = TypeVar("T")

LIMITS = JobLimits(max_job_bytes=65_536, max_messages=8, max_prompt_chars=20_000)
MARK = "QZXVALUEMARKQZX"  # planted in values; an error message must never repeat it

# Everything litellm.acompletion takes that would let a job redirect a call, swap its
# key or provider, fake or skip it, change its cost or attach code. None is a field.
LITELLM_CONTROLS = [
    "api_base", "base_url", "api_key", "api_version", "organization", "custom_llm_provider",
    "model", "messages", "mock_response", "mock_tool_calls", "mock_timeout", "callbacks",
    "success_callback", "failure_callback", "input_callback", "litellm_logging_obj",
    "logger_fn", "metadata", "litellm_metadata", "extra_body", "extra_headers", "headers",
    "timeout", "stream", "num_retries", "max_retries", "fallbacks", "context_window_fallbacks",
    "input_cost_per_token", "output_cost_per_token", "custom_cost_per_token",
    "aws_access_key_id", "aws_secret_access_key", "vertex_credentials", "vertex_project",
    "azure_ad_token", "client", "proxy", "cache", "caching", "no-log", "litellm_params",
    "model_list", "deployment_id", "user_api_key", "max_budget", "drop_params",
]  # fmt: skip


# --- the payload generator ---------------------------------------------------------------


class Draw(Protocol):
    def integer(self, low: int, high: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def text(self, max_size: int) -> str: ...
    def binary(self, max_size: int) -> bytes: ...


_INTEGERS: dict[tuple[int, int], st.SearchStrategy[int]] = {}
_TEXTS: dict[int, st.SearchStrategy[str]] = {}
_BINARIES: dict[int, st.SearchStrategy[bytes]] = {}


@dataclass
class HypothesisDraw:
    """Choices drawn by Hypothesis (strategies built once: building them is the cost)."""

    data: st.DataObject

    def integer(self, low: int, high: int) -> int:
        strategy = _INTEGERS.get((low, high))
        if strategy is None:
            strategy = _INTEGERS[low, high] = st.integers(low, high)
        return self.data.draw(strategy)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def text(self, max_size: int) -> str:
        strategy = _TEXTS.get(max_size)
        if strategy is None:
            # Every code point, lone surrogates included (a JSON decoder may produce them).
            alphabet = st.characters(exclude_categories=())
            strategy = _TEXTS[max_size] = st.text(alphabet, max_size=max_size)
        return self.data.draw(strategy)

    def binary(self, max_size: int) -> bytes:
        strategy = _BINARIES.get(max_size)
        if strategy is None:
            strategy = _BINARIES[max_size] = st.binary(max_size=max_size)
        return self.data.draw(strategy)


@dataclass
class SeededDraw:
    rng: random.Random

    _ALPHABET = 'abc XYZ 019 :{}[]",\\\n\t\x00\x7f\u0085\u2028é中😀\ud800\udfff\ufeff\uffff'

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def text(self, max_size: int) -> str:
        size = self.rng.randint(0, max_size)
        return "".join(self.rng.choice(self._ALPHABET) for _ in range(size))

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


def json_value(draw: Draw, depth: int = 0) -> Any:
    kind = draw.integer(0, 8 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return draw.choice([True, False])
    if kind == 2:
        return draw.choice([0, -1, 1, 2**53 + 1, -(2**63), 10**30, 1_000_001])
    if kind == 3:
        return draw.choice([0.5, -0.0, 1e308, 5e-324, 2.0, -1e-7])
    if kind in (4, 5, 6):
        return draw.text(12) + draw.choice(["", MARK])
    if kind == 7:
        return [json_value(draw, depth + 1) for _ in range(draw.integer(0, 3))]
    return {draw.text(6): json_value(draw, depth + 1) for _ in range(draw.integer(0, 3))}


def base_job(index: int) -> dict[str, Any]:
    """A valid job using every optional field, for a model no worker knows (a payload
    that stays valid is refused ``unknown_model``, so the fuzz never calls a model)."""
    return {
        "schema_version": 1,
        "job_id": f"fz{index}-{uuid.uuid4().hex[:10]}",
        "user_id": f"fuzz user {index % 7}",
        "model": "fuzz-model",
        "messages": [
            {"role": "system", "content": f"system {MARK}"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"look {MARK}"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
                "name": "amy",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": f'{{"q": "{MARK}"}}'},
                    }
                ],
            },
            {"role": "tool", "content": f"result {MARK}", "tool_call_id": "call_1"},
        ],
        "max_tokens": 64,
        "params": {
            "temperature": 0.5,
            "stop": ["\n\n", MARK],
            "seed": 7,
            "user": MARK,
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "logit_bias": {"50256": -100},
        },
        "metadata": {"trace": MARK, "n": 1},
        "created_at": "2030-01-01T00:00:00Z",
        "deadline": "2999-01-01T00:00:00+00:00",
        "max_wait_s": 1.5,
    }


# Where in a job an extra key or a replacement goes: a path of keys and indexes.
PLACES: list[tuple[Any, ...]] = [
    (),
    ("params",),
    ("metadata",),
    ("messages", 0),
    ("messages", 1),
    ("messages", 1, "content", 0),
    ("messages", 1, "content", 1),
    ("messages", 1, "content", 1, "image_url"),
    ("messages", 2, "tool_calls", 0),
    ("messages", 2, "tool_calls", 0, "function"),
]
STRING_FIELDS: list[tuple[Any, ...]] = [
    ("job_id",),
    ("user_id",),
    ("model",),
    ("reply_to",),
    ("messages", 0, "content"),
    ("messages", 1, "name"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 1, "content", 1, "image_url", "url"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("params", "user"),
    ("metadata", "trace"),
]
NUMBER_FIELDS: list[tuple[Any, ...]] = [
    ("schema_version",),
    ("max_tokens",),
    ("max_wait_s",),
    ("params", "temperature"),
    ("params", "seed"),
    ("params", "n"),
    ("params", "logit_bias", "50256"),
]
NUMBERS = [
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400, "-" + "9" * 5000,
    "1e-400", "-0", "0.1e1", "01", "1.", ".5", "0x10", "1_000", "+1", "2e308", "1E+2",
]  # fmt: skip
ESCAPES = [
    "\\ud800", "\\udfff", "\\ud800\\ud800", "\\udbff\\udfff", "\\ud83d\\ude00", "\\u0000",
    "\\u001f", "\\u2028", "\\ufeff", "\\uffff", "\\x41", "\\u12", "\\", '\\"', "\\/",
]  # fmt: skip
TOKENS = [
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\x00", b"\xff", b"\xc0\x80",
    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xef\xbb\xbf", b"NaN", b"1e999", b"null",
    b'"job_id": 1, ', b'"extra": {}, ', b"\\ud800", b"\n", b"\xe2\x80",
]  # fmt: skip


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value


def _get(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def _dumps(body: Any, ascii_only: bool) -> bytes:
    text = json.dumps(body, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes CESU bytes


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@dataclass(frozen=True)
class Payload:
    raw: bytes
    kind: str
    structural: bool  # built as JSON by field: no value may be quoted in an error


def _inserted(draw: Draw, body: dict[str, Any], kind: str, ascii_only: bool) -> Payload:
    """A valid job with raw JSON text put in place of one value: a number of any form, a
    long string, a deep nesting or escapes."""
    placeholder = "QZXPLACEHOLDERQZX"
    if kind == "number":
        path, inserted = draw.choice(NUMBER_FIELDS), draw.choice(NUMBERS)
        _set(body, path, placeholder)
        target = f'"{placeholder}"'
    else:
        path = draw.choice(STRING_FIELDS)
        if kind == "long":
            inserted = json.dumps("é" * draw.integer(0, 12_000) + MARK)[1:-1]
        elif kind == "nest":
            path = draw.choice([("metadata", "trace"), ("params", "user"), ("params", "tools")])
            inserted = _nested(draw.integer(1, 20_000), draw.choice(["list", "dict"]))
        else:
            inserted = draw.choice(ESCAPES) + MARK + draw.choice(ESCAPES)
        _set(body, path, placeholder)
        target = placeholder
        if kind == "nest":
            target = f'"{placeholder}"'
    text = json.dumps(body, ensure_ascii=ascii_only).replace(target, inserted)
    return Payload(text.encode("utf-8", "surrogatepass"), kind, True)


def payload(draw: Draw, index: int) -> Payload:
    """One hostile record: bytes, JSON, or a valid job broken in one way."""
    kind = draw.choice(
        ["bytes", "json", "replace", "extra", "number", "long", "nest", "escape",
         "splice", "nesting", "oversize", "duplicate"]
    )  # fmt: skip
    body = base_job(index)
    ascii_only = draw.choice([True, False])
    if kind == "bytes":
        return Payload(draw.binary(300), kind, False)
    if kind == "json":
        return Payload(_dumps(json_value(draw), ascii_only), kind, False)
    if kind == "replace":
        path = draw.choice([*PLACES[1:], *STRING_FIELDS, *NUMBER_FIELDS, ("messages",)])
        if draw.integer(0, 3) == 0 and len(path) == 1:
            body.pop(path[0], None)
        else:
            _set(body, path, json_value(draw))
        return Payload(_dumps(body, ascii_only), kind, True)
    if kind == "extra":
        place = draw.choice(PLACES)
        name = draw.choice([*LITELLM_CONTROLS, draw.text(10) or "x"])
        _get(body, place)[name] = draw.choice([f"http://{MARK}.example", MARK, {"k": MARK}])
        return Payload(_dumps(body, ascii_only), kind, True)
    if kind in ("number", "long", "nest", "escape"):
        return _inserted(draw, body, kind, ascii_only)
    raw = _dumps(body, ascii_only)
    if kind == "splice":
        at = draw.integer(0, len(raw))
        cut = draw.integer(0, 8)
        return Payload(raw[:at] + draw.choice(TOKENS) + raw[at + cut :], kind, False)
    if kind == "nesting":
        depth = draw.integer(1, 15_000)
        return Payload(_nested(depth, draw.choice(["list", "dict"])).encode(), kind, False)
    if kind == "oversize":
        body["metadata"] = {"pad": "x" * (LIMITS.max_job_bytes + draw.integer(0, 1000))}
        return Payload(_dumps(body, True), kind, True)
    # duplicate: a key given twice, the second time with another value
    text = raw.decode("utf-8", "surrogatepass")
    key = draw.choice(["job_id", "user_id", "model", "max_tokens", "messages"])
    text = text.replace("{", '{"' + key + '": ' + json.dumps(json_value(draw)) + ", ", 1)
    return Payload(text.encode("utf-8", "surrogatepass"), kind, False)


# --- the property: parse_job only ever answers in its own terms ---------------------------


def check_outcome(item: Payload, limits: JobLimits = LIMITS) -> tuple[str, str | None]:
    """Parse one payload; assert the answer is a job or one of the two job errors, each
    fit to be published. The outcome's name, and the job id an event would carry."""
    try:
        parsed = parse_job(item.raw, limits)
    except UndecodableJob as exc:
        message, outcome, job_id = str(exc), "undecodable", None
    except InvalidJob as exc:
        message, outcome, job_id = str(exc), "invalid", exc.job_id
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", exc.job_id)
        assert exc.user_id and exc.user_id.isprintable() and len(exc.user_id) <= 256
        assert len(exc.model) <= 256
        json.dumps(exc.metadata, allow_nan=False).encode("utf-8")  # fit for an event
        assert exc.errors
    else:
        assert isinstance(parsed, CompletionJob)
        # What the worker writes of a job into events and keys must encode.
        for text in (parsed.job_id, parsed.user_id, parsed.model):
            text.encode("utf-8")
        json.dumps(parsed.metadata, allow_nan=False).encode("utf-8")
        return "job", parsed.job_id
    assert message, "an error must say what is wrong"
    assert len(message) <= 4000 and "\n" not in message, message[:200]
    if item.structural:
        assert MARK not in message, f"{item.kind}: the error quotes a value: {message[:300]}"
    return outcome, job_id


@settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(st.data())
def test_fuzzed_payloads_end_as_a_job_or_a_job_error(data: st.DataObject) -> None:
    check_outcome(payload(HypothesisDraw(data), index=0))


NASTY: list[bytes] = [
    b"",
    b"\xef\xbb\xbf{}",
    json.dumps(job("j", "u")).encode("utf-16"),
    b'{"job_id": "\\ud800", "user_id": "u"}',
    b'{"job_id": "j", "user_id": "\\udfff"}',
    json.dumps(job("j", "u", model="\ud800")).encode("utf-8", "surrogatepass"),
    json.dumps(job("j", "u", prompt="\ud83d\ude00 ok")).encode(),
    json.dumps(job("j", "u", prompt="😀 ok"), ensure_ascii=False).encode(),
    json.dumps(job("j", "u", max_tokens=10**4000)).encode(),
    json.dumps(job("j", "u", metadata={"x": float("nan")})).encode(),
    json.dumps(job("j", "u", metadata={"x": "\ud800"})).encode(),
    json.dumps(job("j", "u", metadata={"\ud800": 1})).encode(),
    json.dumps(job("j", "u", params={"temperature": float("inf")})).encode(),
    json.dumps(job("j", "u", messages=[{"role": "user", "content": "x"}] * 100_000)).encode(),
    b"[" * 200_000,
    b'{"a":' * 200_000,
    b'{"job_id": "j", "user_id": "u", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"job_id": "j", "job_id": "k", "user_id": "u"}',
    b'{"job_id": "j", "user_id": "u", "max_tokens": 1' + b"0" * 100_000 + b"}",
]


@pytest.mark.parametrize("raw", NASTY, ids=range(len(NASTY)))
def test_nasty_payloads_end_as_a_job_or_a_job_error(raw: bytes) -> None:
    started = time.perf_counter()
    check_outcome(Payload(raw, "nasty", False), JobLimits())
    assert time.perf_counter() - started < 1.0


# --- input limits: each refusal names its rule ---------------------------------------------


def rejected(body: dict[str, Any], limits: JobLimits = LIMITS) -> str:
    with pytest.raises(InvalidJob) as caught:
        parse_job(json.dumps(body).encode(), limits)
    return str(caught.value)


def test_a_job_over_the_byte_limit_is_refused_before_it_is_read() -> None:
    raw = json.dumps(job("j", "u", metadata={"pad": "x" * 70_000})).encode()
    with pytest.raises(UndecodableJob, match=f"{len(raw)} bytes; at most 65536 are allowed"):
        parse_job(raw, LIMITS)


def test_too_many_messages_are_refused_by_rule() -> None:
    body = job("j", "u", messages=[{"role": "user", "content": "x"}] * 9)
    assert rejected(body) == "messages: at most 8 messages are allowed, got 9"


def test_too_much_prompt_text_is_refused_by_rule() -> None:
    body = job("j", "u", messages=[{"role": "user", "content": "x" * 20_001}])
    assert rejected(body) == (
        "messages: the messages hold 20001 characters of text; at most 20000 are allowed"
    )


def test_prompt_text_counts_names_parts_and_tool_calls() -> None:
    """The limit is on everything the provider reads, not only ``content`` strings."""
    body = base_job(0)
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] = "x" * 20_000
    assert "characters of text; at most 20000 are allowed" in rejected(body)


def test_metadata_over_4_kib_is_refused_by_rule() -> None:
    body = job("j", "u", metadata={"k": "x" * 4096})
    assert re.fullmatch(
        r"metadata: 4104 bytes as compact JSON; at most 4096 bytes are allowed", rejected(body)
    )


@pytest.mark.parametrize("name", LITELLM_CONTROLS)
def test_no_litellm_control_is_a_parameter(name: str) -> None:
    body = job("j", "u", params={name: f"http://{MARK}.example"})
    message = rejected(body)
    assert message == f"params.{name}: not an allowed parameter"


@pytest.mark.parametrize("place", PLACES[:1] + PLACES[3:], ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize("name", ["api_base", "api_key", "mock_response", "extra_body"])
def test_no_litellm_control_hides_in_a_message_part_or_call(
    place: tuple[Any, ...], name: str
) -> None:
    body = base_job(0)
    _get(body, place)[name] = {"url": f"http://{MARK}.example"}
    message = rejected(body)
    where = ".".join(str(part) for part in (*place, name))
    assert message == f"{where}: not a field of this object"


def test_litellm_keeps_its_ssrf_guard_for_image_urls() -> None:
    """For providers that need image bytes, litellm downloads a job's image URL itself;
    its URL validation (no private, loopback or link-local addresses, every redirect
    checked) must stay on in the worker."""
    import litellm

    import worker.provider  # noqa: F401  (sets litellm up as the worker runs it)

    assert getattr(litellm, "user_url_validation", True) is True


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gs://private-bucket/secret.png",
        "s3://private-bucket/secret.png",
        "ftp://example.com/a.png",
    ],
)
def test_image_urls_are_https_or_data_only(url: str) -> None:
    """An image URL is fetched by the provider or by litellm on the worker's behalf,
    with the worker's network position and, for ``gs://``/``s3://``, its cloud
    credentials: only ``https:`` and ``data:image/`` URLs are taken."""
    body = job("j", "u")
    body["messages"] = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    ]
    message = rejected(body)
    assert message.startswith("messages.0.content.0.image_url.url: ")
    assert url not in message


# --- through the broker to a running worker -------------------------------------------------


@pytest.fixture
async def hostile_run(
    kafka: EmbeddedKafka, redis_url: str, fake_provider: Any, tmp_path: Path
) -> Any:
    topics = Topics.fresh(kafka, partitions=3)
    env = worker_env(
        kafka,
        redis_url,
        write_models_file(tmp_path, fake_provider.url),
        topics,
        max_job_bytes=LIMITS.max_job_bytes,
        max_messages=LIMITS.max_messages,
        max_prompt_chars=LIMITS.max_prompt_chars,
        default_budget_usd="1",
        max_in_flight=128,
    )
    return topics, env


async def test_a_running_worker_names_the_rule_of_each_refusal(
    kafka: EmbeddedKafka, hostile_run: Any, fake_provider: Any, redis_url: str, tmp_path: Path
) -> None:
    topics, env = hostile_run
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "many": (
            job("lim-many", "u", messages=[{"role": "user", "content": "x"}] * 9),
            "invalid_job",
            "messages: at most 8 messages are allowed, got 9",
        ),
        "long": (
            job("lim-long", "u", prompt="x" * 20_001),
            "invalid_job",
            "messages: the messages hold 20001 characters of text; at most 20000 are allowed",
        ),
        "meta": (
            job("lim-meta", "u", metadata={"k": "x" * 4096}),
            "invalid_job",
            "metadata: 4104 bytes as compact JSON; at most 4096 bytes are allowed",
        ),
        "param": (
            job("lim-param", "u", params={"api_base": "http://evil.example", "mock_response": "x"}),
            "invalid_job",
            "params.api_base: not an allowed parameter; "
            "params.mock_response: not an allowed parameter",
        ),
        "nested": (
            job(
                "lim-nested",
                "u",
                messages=[{"role": "user", "content": [{**image, "api_key": "sk-evil"}]}],
            ),
            "invalid_job",
            "messages.0.content.0.api_key: not a field of this object",
        ),
        "reply": (
            job("lim-reply", "u", reply_to="payments.commands"),
            "invalid_job",
            "reply_to: topic is not allowed by the worker's reply_to pattern",
        ),
        "model": (
            job("lim-model", "u", model="gpt-4o"),
            "unknown_model",
            "model: 'gpt-4o' is not in the worker's model list; it has 'gpt-4o-mini'",
        ),
    }
    oversize = json.dumps(job("lim-big", "u", prompt="x" * 70_000)).encode()
    async with in_process_workers(env):
        await produce(kafka, topics.jobs, [body for body, _, _ in cases.values()])
        await produce(kafka, topics.jobs, [(b"u", oversize)])
        events = await wait_for_events(
            kafka, topics.results, {body["job_id"] for body, _, _ in cases.values()}
        )
        dead = await read_all(kafka, topics.dlq)
    for name, (body, reason, detail) in cases.items():
        event = events[body["job_id"]][0]
        assert (event["type"], event["reason"], event["detail"]) == (
            "completion.rejected",
            reason,
            detail,
        ), name
    assert len(dead) == 1 and dead[0].value == oversize
    headers = dict(dead[0].headers)
    assert headers["error.type"] == b"undecodable"
    assert (
        headers["error.message"]
        == f"the job is {len(oversize)} bytes; at most 65536 are allowed".encode()
    )
    assert fake_provider.stats.requests_total == 0
    assert await _ledger_keys(redis_url) == []


async def _ledger_keys(redis_url: str) -> list[bytes]:
    """Every ledger key that holds money or limits. A refused job leaves only its job
    record and stored outcome (so a redelivery is answered the same): no budget, spend,
    reservation or rate bucket (the outbox sweeper's claim holds none of those)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return [
            key
            async for key in client.scan_iter("bw:*")
            if b":job:" not in key and b":outcome:" not in key and key != OUTBOX_SWEEP.encode()
        ]
    finally:
        await client.aclose()


FUZZ_RECORDS = 1000
FUZZ_SEED = 20_240_601


async def test_a_thousand_fuzzed_records_are_each_refused_and_the_worker_serves_on(
    kafka: EmbeddedKafka, hostile_run: Any, fake_provider: Any, redis_url: str, tmp_path: Path
) -> None:
    topics, env = hostile_run
    draw = SeededDraw(random.Random(FUZZ_SEED))
    payloads = [payload(draw, index) for index in range(FUZZ_RECORDS)]
    expected = [check_outcome(item) for item in payloads]  # what parse_job says of each
    undecodable = [
        item.raw
        for item, (outcome, _) in zip(payloads, expected, strict=True)
        if outcome == "undecodable"
    ]
    addressed = Counter(job_id for _, job_id in expected if job_id is not None)
    async with in_process_workers(env) as (worker,):
        started = time.monotonic()
        await produce(kafka, topics.jobs, [(None, item.raw) for item in payloads])
        events: list[dict[str, Any]] = []
        dead: list[Any] = []
        while time.monotonic() - started < 60:
            records = await read_all(kafka, topics.results, timeout_s=0.3)
            events = [json.loads(record.value) for record in records]
            dead = await read_all(kafka, topics.dlq, timeout_s=0.3)
            if len(events) + len(dead) >= FUZZ_RECORDS:
                break
            await asyncio.sleep(0.5)
        assert await _ledger_keys(redis_url) == [], "a fuzzed record reached the ledger"
        assert fake_provider.stats.requests_total == 0, "a fuzzed record called a model"
        # Still serving: ready, and a valid job after the fuzz succeeds and is charged.
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{worker.metrics_port}/readyz"
            async with session.get(url) as response:
                assert response.status == 200
        await produce(kafka, topics.jobs, [job("after-fuzz", "survivor")])
        after = await wait_for_events(kafka, topics.results, {"after-fuzz"})
        assert worker.alive()
    assert after["after-fuzz"][0]["type"] == "completion.succeeded"
    ledger = Ledger.from_url(redis_url)
    try:
        assert await spent(ledger, "survivor") == after["after-fuzz"][0]["cost_nanousd"] > 0
    finally:
        await ledger.close()

    # One outcome per record: a dead letter for each undecodable one, an event for each
    # other one (a fuzzed job that stays valid names a model no worker has).
    assert len(dead) + len(events) == FUZZ_RECORDS
    assert sorted(record.value for record in dead) == sorted(undecodable)
    assert all(dict(record.headers)["error.message"] for record in dead)
    assert Counter(event["job_id"] for event in events) == addressed
    assert {event["type"] for event in events} == {"completion.rejected"}
    assert {event["reason"] for event in events} <= {"invalid_job", "unknown_model", "expired"}
    assert all(event["detail"] for event in events)
