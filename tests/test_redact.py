"""redact and secrets_of: what is scrubbed out of a message before a log or an event."""

from __future__ import annotations

import json

import pytest

from worker.redact import MESSAGE_MAX_CHARS, redact, secrets_of

PROMPT = "Please keep this private: my secret diary entry of Tuesday"


@pytest.mark.parametrize(
    "key",
    [
        "sk-proj-abcDEF1234567890",
        "sk-ant-api03-abcdefghijklmnop",
        "pk-live-1234abcd",
        "rk-test_ABCdef-123",
        "AIzaSyA1234567890abcdefghijklmnopq",
    ],
)
def test_keys_of_known_shapes_are_removed(key: str) -> None:
    cleaned = redact(f"Incorrect API key provided: {key}. Check your key.")

    assert key not in cleaned
    assert "[redacted]" in cleaned
    assert cleaned.startswith("Incorrect API key provided:")


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "authorization=Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "header bearer eyJhbGciOiJIUzI1NiJ9.payload.sig was refused",
    ],
)
def test_bearer_tokens_are_removed(text: str) -> None:
    assert "eyJhbGciOiJIUzI1NiJ9" not in redact(text)


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("api_key=hunter2hunter2 was refused", "hunter2hunter2"),
        ('{"api-key": "hunter2hunter2"}', "hunter2hunter2"),
        ("x-api-key: hunter2hunter2", "hunter2hunter2"),
        ("token = 'abc123abc123'", "abc123abc123"),
        ("secret:s3cr3tvalue", "s3cr3tvalue"),
        ("password=correct-horse", "correct-horse"),
    ],
)
def test_named_credentials_lose_their_values(text: str, leaked: str) -> None:
    assert leaked not in redact(text)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("cannot connect to https://alice:pa55word@proxy.example.com/v1", "proxy.example.com/v1"),
        ("redis://default:pa55word@10.0.0.1:6379/0 refused", "10.0.0.1:6379/0"),
        ("http://pa55word@host.example/ timed out", "host.example/"),
    ],
)
def test_credentials_in_urls_are_removed_and_the_host_kept(text: str, kept: str) -> None:
    cleaned = redact(text)

    assert "pa55word" not in cleaned
    assert "alice" not in cleaned
    assert kept in cleaned
    assert "://[redacted]@" in cleaned


def test_a_url_without_credentials_is_kept_whole() -> None:
    text = "404 from https://api.example.com/v1/chat/completions?x=1 (see user@example.com)"

    assert redact(text) == text


def test_known_secrets_are_removed_verbatim_and_as_quoted() -> None:
    secret = 'a "quoted" secret\nwith a newline, é'
    for quoted in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]):
        cleaned = redact(f"the provider said: {quoted}!", [secret])

        assert "quoted" not in cleaned
        assert "newline" not in cleaned


def test_a_quoted_fragment_of_the_prompt_is_removed() -> None:
    cleaned = redact(f"Invalid content near '{PROMPT[10:40]}'", [PROMPT])

    assert "private" not in cleaned
    assert "[redacted]" in cleaned
    assert cleaned.startswith("Invalid content near")


def test_short_runs_shared_with_the_prompt_are_kept() -> None:
    assert redact("model not found: gpt-4o-mini", [PROMPT]) == "model not found: gpt-4o-mini"


def test_messages_are_folded_onto_one_line_and_capped() -> None:
    assert redact("line one\n\n  line   two\t") == "line one line two"
    capped = redact("x " * 10_000)
    assert len(capped) == MESSAGE_MAX_CHARS
    assert capped.endswith("...")


def test_secrets_of_an_entry_are_its_credentials_and_the_prompts_text() -> None:
    params = {
        "model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "api_key": "sk-the-entrys-key",
        "aws_secret_access_key": "aws-secret-value",
        "vertex_credentials": "{json credentials}",
        "timeout": 30,
    }
    messages = [
        {"role": "system", "content": "You are terse and helpful."},
        {"role": "user", "content": [{"type": "text", "text": PROMPT}, {"type": "image_url"}]},
        {"role": "user", "content": "short"},  # too short to search for
        "not a message",
    ]

    assert secrets_of(params, messages) == [
        "sk-the-entrys-key",
        "aws-secret-value",
        "{json credentials}",
        "You are terse and helpful.",
        PROMPT,
    ]
